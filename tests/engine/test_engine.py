"""Engine behaviour on tiny real models: loading, image-oriented generation, TI + LoRA fine-tuning, resume."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from bench.grain_bands import lost_in_resize
from engine.adapters import read_adapter
from engine.batch import finetune_folder, generate_to_folder
from engine.config import DEFAULT_GUIDANCE, PURE_NOISE_GUIDANCE, GenerationConfig, TrainConfig, finetune_config
from engine.data import load_rgb
from engine.generation.generate import carry_colour, generate, png_with_metadata, read_png_parameters
from engine.generation.pipeline import load_pipeline, resolve_model
from engine.training.loop import latest_checkpoint
from tests.support import make_steel_like, slab


def test_resolve_model_refuses_a_folder_that_is_not_a_diffusers_model(tmp_path):
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        resolve_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_model(tmp_path / "missing")


def test_load_rgb_names_a_file_it_cannot_read_and_leaves_a_missing_one_not_found(tmp_path):
    Image.new("I;16", (6, 4), 300).save(tmp_path / "deep.png")
    assert load_rgb(tmp_path / "deep.png").mode == "RGB"
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(f"Cannot read image {tmp_path / 'notes.png'}")):
        load_rgb(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "missing.png")


def test_guidance_defaults_higher_where_the_token_draws_from_noise():
    assert GenerationConfig("x").guidance() == DEFAULT_GUIDANCE
    assert GenerationConfig("x", strength=1.0).guidance() == PURE_NOISE_GUIDANCE > DEFAULT_GUIDANCE
    assert GenerationConfig("x", strength=0.9).guidance(masked=True) == PURE_NOISE_GUIDANCE
    assert GenerationConfig("x", strength=1.0).guidance(masked=True) == PURE_NOISE_GUIDANCE
    assert GenerationConfig("x", strength=1.0, guidance_scale=2.0).guidance() == 2.0
    with pytest.raises(ValueError, match="Guidance scale must be between 0 and 30"):
        GenerationConfig("x", guidance_scale=31)


def test_generation_config_guards_steps_times_strength():
    with pytest.raises(ValueError, match="steps × strength"):
        GenerationConfig(class_name="x", steps=3, strength=0.2)
    with pytest.raises(ValueError, match="Strength"):
        GenerationConfig(class_name="x", strength=1.5)


def test_generate_writes_candidates_with_full_metadata(tiny_model, tiny_adapter):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    config = GenerationConfig(class_name="scratches", num_candidates=2, strength=0.5, steps=4, seed=7)
    result = generate(pipe, slab(48, 48), config)
    assert [c.seed for c in result.candidates] == [7, 8]
    first, second = result.candidates
    assert first.image.size == (48, 48) and first.image.mode == "L"
    assert not np.array_equal(np.asarray(first.image), np.asarray(second.image))
    params = read_png_parameters(first.png_bytes()).as_dict()
    assert params["token"] == "<scratches>"
    assert params["strength"] == 0.5 and params["steps"] == 4 and params["seed"] == 7
    assert params["model_hash"] == pipe.model_hash and len(params["model_hash"]) == 12
    assert params["adapter_version"] == tiny_adapter.name
    assert len(params["source_sha256"]) == 64
    with Image.open(__import__("io").BytesIO(first.png_bytes())) as im:
        assert "Denoising strength: 0.5" in im.text["parameters"]


def test_same_seed_reproduces_the_same_candidate(tiny_model, tiny_adapter):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    config = GenerationConfig(class_name="inclusion", num_candidates=1, strength=0.75, steps=4, seed=3)
    a = generate(pipe, slab(32, 32), config).candidates[0].image
    b = generate(pipe, slab(32, 32), config).candidates[0].image
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_large_slab_is_processed_in_a_window_and_pasted_back(tiny_model, tiny_adapter):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    source = slab(400, 64, seed=1)
    config = GenerationConfig(
        class_name="scratches", num_candidates=1, strength=1.0, steps=2, window_x=100, window_y=0, window_size=64
    )
    out = np.asarray(generate(pipe, source, config).candidates[0].image, dtype=np.int16)
    original = np.asarray(source, dtype=np.int16)
    assert out.shape == original.shape
    assert np.array_equal(out[:, :100], original[:, :100])
    assert np.array_equal(out[:, 164:], original[:, 164:])
    assert np.abs(out[:, 110:154] - original[:, 110:154]).mean() > 1


def test_the_default_window_of_a_strip_is_the_strip_up_to_four_times_its_height():
    config = GenerationConfig("scratches")
    assert config.repainted_box(200, 100) == (0, 0, 200, 100)
    assert config.repainted_box(100, 300) == (0, 0, 100, 300)
    assert config.repainted_box(1600, 256) == (288, 0, 1024, 256), "at most 4:1, centred"
    assert config.repainted_box(200, 200) == (0, 0, 200, 200)
    assert config.repainted_box(400, 400) == (72, 72, 256, 256), "a large slab: the centred square as before"
    assert config.repainted_box(600, 300) == (172, 22, 256, 256)
    assert GenerationConfig("scratches", window_x=0).repainted_box(200, 100) == (0, 0, 100, 100), "a chosen square"


def test_a_strip_is_redrawn_whole_on_a_canvas_of_its_shape(tiny_model, tiny_adapter):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    source = slab(96, 32, seed=4)
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=1.0, steps=2)
    candidate = generate(pipe, source, config).candidates[0]
    out, original = (np.asarray(image, dtype=np.int16) for image in (candidate.image, source))
    assert out.shape == original.shape
    assert min(np.abs(out[:, part] - original[:, part]).mean() for part in (slice(0, 32), slice(64, 96))) > 1
    assert candidate.params.window.as_dict() == {"x": 0, "y": 0, "size": 96, "height": 32}
    assert read_png_parameters(candidate.png_bytes()).window == candidate.params.window

    longer = slab(160, 32, seed=4)
    out = np.asarray(generate(pipe, longer, config).candidates[0].image, dtype=np.int16)
    assert np.array_equal(out[:, :16], np.asarray(longer, dtype=np.int16)[:, :16]), "beyond 4:1 the ends are kept"


def _tinted(grey: np.ndarray, gains: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(grey[..., None] * gains + 0.5, 0, 255).astype(np.uint8))


def test_a_colour_slab_keeps_its_colours_in_the_models_structure_even_without_detail_restore(tiny_model, tiny_adapter):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    grey = np.asarray(slab(48, 48, seed=2), dtype=np.float32) * 0.6 + 60
    rust = np.zeros((48, 48, 1), dtype=np.float32)
    rust[10:30, 8:24] = 1.0
    gains = np.array([1.08, 1.0, 0.9]) * (1 - rust) + np.array([1.3, 0.95, 0.7]) * rust
    source = _tinted(grey, gains)
    config = GenerationConfig(class_name="scratches", num_candidates=2, strength=0.75, steps=4, detail_restore=0.0)
    for candidate in generate(pipe, source, config).candidates:
        out = np.asarray(candidate.image, dtype=np.float32)
        luminance = np.asarray(candidate.image.convert("L"), dtype=np.float32)
        assert candidate.image.mode == "RGB"
        assert np.abs(luminance - grey).mean() > 2
        lit = luminance > 40
        ratio = out[..., 0] / np.maximum(out[..., 2], 1)
        assert np.allclose(ratio[lit & (rust[..., 0] == 1)], 1.3 / 0.7, rtol=0.12)
        assert np.allclose(ratio[lit & (rust[..., 0] == 0)], 1.08 / 0.9, rtol=0.12)


def test_a_masked_repaint_paints_the_defect_in_the_colour_its_adapter_learnt_against_the_slab(
    tiny_model, tiny_adapter, tmp_path, caplog
):
    rusty = tmp_path / "rusty"
    shutil.copytree(tiny_adapter, rusty)
    index = json.loads((rusty / "tokens.json").read_text())
    index["tokens"]["scratches"]["defect_tint"] = [0.3, -0.3]
    (rusty / "tokens.json").write_text(json.dumps(index))
    grey = np.asarray(slab(48, 48, seed=4), dtype=np.float32) * 0.6 + 60
    source = _tinted(grey, np.array([1.05, 1.0, 0.95]))
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[14:34, 14:34] = 255
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=0.75, steps=4, detail_restore=0.0)

    def red_over_blue(adapter) -> tuple[float, float, object]:
        candidate = generate(load_pipeline(tiny_model, adapter=adapter), source, config, mask=mask).candidates[0]
        pixels = np.asarray(candidate.image, dtype=np.float64)
        inside, outside = pixels[18:30, 18:30].reshape(-1, 3).mean(0), pixels[:, :6].reshape(-1, 3).mean(0)
        return np.log(inside[0] / inside[2]), np.log(outside[0] / outside[2]), candidate

    inside, outside, candidate = red_over_blue(tiny_adapter)
    assert inside == pytest.approx(outside, abs=0.03) and candidate.params.masked.defect_tint is None
    inside, outside, even = red_over_blue(rusty)
    assert inside - outside == pytest.approx(0.6, abs=0.08), "the defect is painted redder than its slab"
    assert outside == pytest.approx(np.log(1.05 / 0.95), abs=0.03), "the slab keeps its own colour"
    assert read_png_parameters(png_with_metadata(slab(8, 8), even.params)).masked.defect_tint == [0.3, -0.3]

    # Learnt to lie on the defect's structure: as red on average, redder where the render departs from the steel.
    index["tokens"]["scratches"]["defect_structure"] = 1.0
    (rusty / "tokens.json").write_text(json.dumps(index))
    _, outside, pitted = red_over_blue(rusty)
    painted = np.asarray(pitted.image, dtype=np.float64)[14:34, 14:34].reshape(-1, 3).mean(0)
    assert np.log(painted[0] / painted[2]) - outside == pytest.approx(0.6, abs=0.1), "over the whole mask"
    assert pitted.params.masked.defect_structure == 1.0

    def follows_structure(candidate) -> float:
        pixels = np.asarray(candidate.image, dtype=np.float64)[14:34, 14:34]
        departure = np.abs(pixels.mean(axis=2) - np.median(np.asarray(source.convert("L"), dtype=np.float64)))
        return float(np.corrcoef(departure.ravel(), np.log(pixels[..., 0] / pixels[..., 2]).ravel())[0, 1])

    assert follows_structure(pitted) > follows_structure(even) + 0.3
    source.save(tmp_path / "slab.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    with caplog.at_level(logging.INFO, logger="engine.batch"):
        generate_to_folder(
            str(tiny_model),
            rusty,
            "scratches",
            tmp_path / "slab.png",
            1,
            tmp_path / "out",
            steps=4,
            mask=tmp_path / "mask.png",
            realism_threshold=None,
        )
    assert "Painting scratches in the colour its adapter learnt against the steel (log R/G +0.300" in caplog.text


def test_carried_colour_follows_the_crop_pixel_by_pixel_and_its_mean_from_pure_noise():
    grey = np.linspace(40, 200, 32 * 32, dtype=np.float32).reshape(32, 32)
    gains = np.ones((32, 32, 3))
    gains[:16] = (1.2, 1.0, 0.8)
    crop = _tinted(grey, gains)
    output = Image.fromarray(np.full((32, 32), 120, np.uint8)).convert("RGB")
    kept = np.asarray(carry_colour([crop], [output], GenerationConfig("x"))[0], dtype=np.float32)
    assert np.allclose(kept[:16, :, 0] / kept[:16, :, 2], 1.5, rtol=0.03)
    assert np.abs(kept[16:, :, 0] - kept[16:, :, 2]).max() <= 1
    noise = np.asarray(carry_colour([crop], [output], GenerationConfig("x", strength=1.0))[0], dtype=np.float32)
    assert np.ptp(noise.reshape(-1, 3), axis=0).max() <= 1
    assert 1.05 < noise[0, 0, 0] / noise[0, 0, 2] < 1.5
    grey_crop = Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    assert carry_colour([grey_crop], [output], GenerationConfig("x"))[0] is output


def test_window_outside_the_image_is_refused(tiny_model, tiny_adapter):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    config = GenerationConfig(class_name="scratches", num_candidates=1, window_x=300, window_size=64)
    with pytest.raises(ValueError, match="does not fit"):
        generate(pipe, slab(320, 64), config)


def test_unknown_token_is_refused(tiny_model, tiny_adapter, tmp_path):
    slab(32, 32).save(tmp_path / "slab.png")
    with pytest.raises(ValueError, match="Unknown defect token 'rust'"):
        generate_to_folder(str(tiny_model), tiny_adapter, "rust", tmp_path, 1, tmp_path / "out")


def test_finetune_writes_library_formats_that_diffusers_loads_and_that_change_outputs(tiny_model, tiny_adapter):
    info = read_adapter(tiny_adapter)
    assert set(info.tokens) == {"scratches", "inclusion"} and info.has_lora
    config = json.loads((tiny_adapter / "config.json").read_text())
    assert config["mode"] == "finetune" and config["init_words"]["scratches"] == "scratches"

    base = load_pipeline(tiny_model, adapter=None).pipe
    base.load_textual_inversion(str(tiny_adapter / info.tokens["scratches"].embedding_file), token="<scratches>")
    adapted = load_pipeline(tiny_model, adapter=tiny_adapter).pipe
    image = slab(32, 32).convert("RGB")
    kwargs = dict(prompt="a photo of <scratches>", image=image, strength=1.0, num_inference_steps=2, output_type="np")
    without_lora = base(**kwargs, generator=torch.Generator().manual_seed(0)).images
    with_lora = adapted(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(without_lora - with_lora).max() > 1e-4

    learned = adapted.text_encoder.get_input_embeddings().weight[adapted.tokenizer.convert_tokens_to_ids("<scratches>")]
    word = base.text_encoder.get_input_embeddings().weight[base.tokenizer.convert_tokens_to_ids("scratches</w>")]
    assert not torch.allclose(learned, word)


def test_finetune_stops_and_resumes_from_its_checkpoint(tiny_model, tiny_dataset, tmp_path):
    out = tmp_path / "run"
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2

    stopped = finetune_folder(
        tiny_dataset, out, model=str(tiny_model), steps=4, batch_size=2, should_stop=stop_after_two
    )
    assert stopped.status == "stopped" and stopped.steps == 2
    assert latest_checkpoint(out).name == "checkpoint-2"
    assert not (out / "tokens.json").exists()
    with pytest.raises(ValueError, match="resume"):
        finetune_folder(tiny_dataset, out, model=str(tiny_model), steps=4, batch_size=2)
    resumed = finetune_folder(tiny_dataset, out, model=str(tiny_model), steps=4, batch_size=2, resume=True)
    assert resumed.status == "completed" and len(resumed.losses) == 2
    assert read_adapter(out).tokens["inclusion"].token == "<inclusion>"


def test_a_time_budget_ends_the_run_early_as_complete(tiny_model, tiny_dataset, tmp_path):
    from engine.training.schedule import BUDGET_CHECK_STEPS

    out = tmp_path / "run"
    # A budget this short is spent by the first re-planning: the run ends there, complete and saved.
    result = finetune_folder(tiny_dataset, out, model=str(tiny_model), steps=500, batch_size=2, max_minutes=1e-6)
    assert result.status == "completed" and result.steps == BUDGET_CHECK_STEPS
    assert read_adapter(out).tokens["scratches"].token == "<scratches>"


def test_steps_within_budget_follow_the_measured_rate():
    from engine.training.schedule import steps_within_budget

    # 50 steps in 10 s leave 90 s for 450 more, capped by the plan and never before the step reached.
    assert steps_within_budget(planned=1000, done=50, run_steps=50, elapsed_s=10, budget_s=100) == 500
    assert steps_within_budget(planned=300, done=50, run_steps=50, elapsed_s=10, budget_s=100) == 300
    assert steps_within_budget(planned=1000, done=50, run_steps=50, elapsed_s=120, budget_s=100) == 50
    # A resumed run plans from its own steps' rate, on top of the step it resumed at.
    assert steps_within_budget(planned=1000, done=250, run_steps=50, elapsed_s=10, budget_s=20) == 300


def test_finetune_takes_its_lora_rank_learning_rate_and_caption_dropout(tiny_model, tiny_dataset, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    result = finetune_folder(
        tiny_dataset,
        out,
        model=str(tiny_model),
        steps=2,
        batch_size=2,
        lora_rank=3,
        lora_learning_rate=2e-3,
        caption_dropout=0.5,
    )
    assert result.status == "completed"
    config = TrainConfig.load(out / "config.json")
    assert (config.lora_rank, config.lora_alpha, config.lora_learning_rate, config.caption_dropout) == (3, 3, 2e-3, 0.5)
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    down = [w for name, w in lora.items() if "lora_A" in name or "lora.down" in name]
    assert down and all(w.shape[0] == 3 for w in down)
    for bad in ({"lora_rank": 0}, {"lora_learning_rate": 0.0}, {"caption_dropout": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            finetune_config("cpu-quick", **bad)


@pytest.mark.slow
def test_pretrain_mode_learns_and_saves_a_loadable_model(tiny_model, tmp_path):
    from engine.training.loop import TrainingImage, train

    rng = np.random.default_rng(0)
    images = [
        TrainingImage(make_steel_like(rng, 32, "scratches"), "", "a grayscale photo of a steel surface")
        for _ in range(8)
    ]
    config = TrainConfig(
        mode="pretrain",
        model=str(tiny_model),
        output_dir=str(tmp_path / "pre"),
        max_train_steps=30,
        train_batch_size=8,
        learning_rate=2e-3,
        lr_warmup_steps=1,
        checkpointing_steps=15,
        snr_gamma=None,
        caption_dropout=0.1,
        ema_decay=0.9,
        resolution=32,
    )
    result = train(config, images)
    assert result.status == "completed"
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    pipe = load_pipeline(tmp_path / "pre" / "model").pipe
    out = pipe(
        prompt="a steel surface",
        image=Image.fromarray(images[0].pixels),
        strength=1.0,
        num_inference_steps=2,
        output_type="np",
    ).images
    assert out.shape == (1, 32, 32, 3)


def test_finetune_trains_in_float32_from_a_model_saved_in_half_precision(tiny_model, tiny_dataset, tmp_path):
    half = tmp_path / "half-model"
    StableDiffusionImg2ImgPipeline.from_pretrained(str(tiny_model), safety_checker=None).to(
        torch.float16
    ).save_pretrained(str(half))
    result = finetune_folder(tiny_dataset, tmp_path / "run", model=str(half), steps=2, batch_size=2)
    assert result.status == "completed" and all(np.isfinite(result.losses))


def test_detail_restore_adds_back_what_the_autoencoder_loses_but_not_at_strength_one(tiny_model, tiny_adapter):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    source = slab(32, 32, seed=4)

    def render(strength: float, detail: float) -> np.ndarray:
        config = GenerationConfig(
            class_name="scratches", num_candidates=1, strength=strength, steps=4, seed=1, detail_restore=detail
        )
        candidate = generate(pipe, source, config).candidates[0]
        return np.asarray(candidate.image, dtype=np.int16), candidate.params

    plain, _ = render(0.5, 0.0)
    restored, params = render(0.5, 1.0)
    assert params.detail_restore == 1.0
    assert np.abs(plain - restored).mean() > 1
    noise_plain, _ = render(1.0, 0.0)
    noise_restored, params = render(1.0, 1.0)
    assert np.array_equal(noise_plain, noise_restored) and params.detail_restore == 0.0
    with pytest.raises(ValueError, match="Detail restore"):
        GenerationConfig(class_name="x", detail_restore=1.5)


def test_detail_restore_keeps_the_slab_grain_that_a_window_larger_than_the_model_loses(tiny_model, tiny_adapter):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    source = slab(64, 64, seed=5)
    assert pipe.resolution == 32

    def render(detail: float) -> np.ndarray:
        config = GenerationConfig(
            class_name="scratches", num_candidates=1, strength=0.5, steps=4, seed=1, detail_restore=detail
        )
        return lost_in_resize(generate(pipe, source, config).candidates[0].image, 32).ravel()

    grain = lost_in_resize(source, 32).ravel()
    restored, plain = render(1.0), render(0.0)
    assert np.corrcoef(grain, restored)[0, 1] > 0.9 and restored.std() > 0.8 * grain.std()
    assert plain.std() < 0.3 * grain.std()


def test_strength_one_starts_from_pure_noise_not_from_the_source(tiny_model, tiny_adapter):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    bright, dark = Image.new("L", (32, 32), 220), slab(32, 32, seed=5)

    def render(source: Image.Image, strength: float) -> np.ndarray:
        config = GenerationConfig(class_name="scratches", num_candidates=2, strength=strength, steps=4, seed=3)
        return np.stack([np.asarray(c.image, dtype=np.int16) for c in generate(pipe, source, config).candidates])

    from_bright, from_dark = render(bright, 1.0), render(dark, 1.0)
    assert np.array_equal(from_bright, from_dark)
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=1.0, steps=2)
    assert generate(pipe, bright, config).candidates[0].params.guidance_scale == PURE_NOISE_GUIDANCE
    assert np.abs(from_bright[0] - from_bright[1]).mean() > 1
    assert np.abs(render(bright, 0.9) - render(dark, 0.9)).mean() > 1
