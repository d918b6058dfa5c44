"""The shipped steel prior and its tokens load offline and generate; the pretrain command runs and resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import launch
from engine.adapters import EMBEDDED_TOKENS
from engine.config import EMBEDDED_MODEL, GenerationConfig
from engine.data import NEU_CLASSES
from engine.generation.generate import generate, read_png_parameters
from engine.generation.pipeline import load_pipeline


def test_embedded_prior_loads_offline_with_its_six_tokens():
    pipe = load_pipeline()
    assert pipe.model_ref == str(EMBEDDED_MODEL.resolve())
    assert set(pipe.adapter.tokens) == set(NEU_CLASSES)
    assert pipe.adapter.has_lora
    assert pipe.adapter.base_model_hash == pipe.model_hash, "the shipped tokens must name the shipped prior's hash"
    assert pipe.resolution == 128
    assert pipe.pipe.unet.dtype.is_floating_point and str(pipe.pipe.unet.dtype) == "torch.float32"


def test_embedded_prior_generates_a_two_step_sample_with_metadata():
    pipe = load_pipeline()
    rng = np.random.default_rng(0)
    slab = Image.fromarray(rng.normal(120, 15, (200, 200)).clip(0, 255).astype(np.uint8))
    config = GenerationConfig(class_name="crazing", num_candidates=1, steps=2, strength=1.0, seed=5)
    candidate = generate(pipe, slab, config).candidates[0]
    assert candidate.image.size == (200, 200) and candidate.image.mode == "L"
    params = read_png_parameters(candidate.png_bytes()).as_dict()
    assert params["token"] == "<crazing>" and params["adapter_version"] == EMBEDDED_TOKENS.name
    assert params["model_hash"] == pipe.model_hash and params["window"] == {"x": 0, "y": 0, "size": 200}
    assert np.asarray(candidate.image).std() > 1


def test_pipeline_runs_channels_last_with_the_same_samples():
    loaded = load_pipeline()
    assert loaded.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    slab = Image.fromarray(np.random.default_rng(1).normal(120, 15, (64, 64)).clip(0, 255).astype(np.uint8))
    config = GenerationConfig(class_name="scratches", num_candidates=1, steps=2, strength=0.8, seed=3)
    fast = np.asarray(generate(loaded, slab, config).candidates[0].image, dtype=np.int16)
    loaded.pipe.unet.to(memory_format=torch.contiguous_format)
    loaded.pipe.vae.to(memory_format=torch.contiguous_format)
    plain = np.asarray(generate(loaded, slab, config).candidates[0].image, dtype=np.int16)
    assert np.abs(fast - plain).max() <= 2


def write_slabs(folder: Path, count: int, seed: int) -> Path:
    """`count` grey 40 px noise slabs in a new folder."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.normal(128, 20, (40, 40)).clip(0, 255).astype(np.uint8)).save(folder / f"s{i}.png")
    return folder


def grey_slab_sample(pipe, strength: float) -> np.ndarray:
    """One two-step sample of a pipeline from a flat grey 32 px slab."""
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    return pipe(
        prompt="a steel surface", image=image, strength=strength, num_inference_steps=2, output_type="np"
    ).images


@pytest.mark.slow
def test_pretrain_command_writes_a_loadable_prior_and_resumes(tmp_path, capsys):
    data = write_slabs(tmp_path / "slabs", 6, seed=0)
    out, work = tmp_path / "prior", tmp_path / "work"
    common = [
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(out),
        "--work-dir",
        str(work),
        "--size",
        "tiny",
        "--batch-size",
        "4",
        "--autoencoder-steps",
        "4",
        "--decoder-steps",
        "3",
        "--autoencoder-perceptual-weight",
        "0.5",
        "--stages",
        "autoencoder",
        "decoder",
        "diffusion",
    ]
    assert launch.main([*common, "--steps", "4"]) == 0
    assert (out / "model_index.json").exists() and (work / "diffusion" / "checkpoint-4").is_dir()
    assert json.loads((work / "autoencoder" / "config.json").read_text())["perceptual_weight"] == 0.5
    assert (work / "decoder" / "final" / "config.json").exists()
    autoencoder_weights = next((work / "autoencoder" / "final").glob("*.safetensors"))
    first_autoencoder = autoencoder_weights.stat().st_mtime_ns
    capsys.readouterr()
    assert launch.main([*common, "--steps", "8"]) == 0
    assert "diffusion resumed from step 4" in capsys.readouterr().out
    assert (work / "diffusion" / "checkpoint-8").is_dir()
    assert autoencoder_weights.stat().st_mtime_ns == first_autoencoder
    assert grey_slab_sample(load_pipeline(out).pipe, strength=1.0).shape == (1, 32, 32, 3)


def test_prior_size_with_a_finer_autoencoder_keeps_the_latent_numbers_per_pixel():
    from engine.training.prior import PriorSize

    fine = PriorSize.embedded().with_autoencoder_downsampling(4)
    assert fine.vae_channels == (32, 64, 128) and fine.latent_channels == 8
    assert fine.unet_channels == PriorSize.embedded().unet_channels
    assert PriorSize.embedded().with_autoencoder_downsampling(8) == PriorSize.embedded()
    with pytest.raises(ValueError, match="power of two"):
        PriorSize.embedded().with_autoencoder_downsampling(6)


@pytest.mark.slow
def test_pretrain_with_a_4x_down_autoencoder_writes_a_prior_that_generates(tmp_path):
    data = write_slabs(tmp_path / "slabs", 4, seed=3)
    out = tmp_path / "prior"
    args = ["pretrain", "--size", "tiny", "--data", str(data), "--out", str(out), "--autoencoder-downsampling", "4"]
    args += ["--autoencoder-steps", "2", "--autoencoder-perceptual-weight", "1", "--stages", "autoencoder"]
    args += ["diffusion", "--steps", "2", "--batch-size", "2"]
    assert launch.main(args) == 0
    pipe = load_pipeline(out).pipe
    assert pipe.vae_scale_factor == 4 and len(pipe.vae.config.block_out_channels) == 3
    assert pipe.unet.config.in_channels == pipe.vae.config.latent_channels == 16
    assert pipe.unet.config.sample_size == 8
    assert grey_slab_sample(pipe, strength=0.6).shape == (1, 32, 32, 3)


def test_latent_crops_take_each_items_window_and_the_crop_must_be_whole_latent_cells():
    from engine.config import TrainConfig
    from engine.training.loop import latent_crop_size, random_crops

    batch = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    crops = random_crops(batch, torch.tensor([[0, 1], [4, 2]]), 2)
    assert crops.shape == (2, 3, 2, 2)
    assert torch.equal(crops[0], batch[0, :, 0:2, 1:3]) and torch.equal(crops[1], batch[1, :, 4:6, 2:4])
    config = TrainConfig(mode="pretrain", resolution=128, crop_size=64)
    assert latent_crop_size(config, 32) == 16 and latent_crop_size(config, 16) == 8
    assert latent_crop_size(TrainConfig(mode="pretrain"), 16) is None
    for crop in (60, 256):
        with pytest.raises(ValueError, match="multiple of the latent cell"):
            latent_crop_size(TrainConfig(mode="pretrain", resolution=128, crop_size=crop), 16)


@pytest.mark.slow
def test_pretrain_on_latent_crops_trains_the_unet_on_crops_and_generates_whole_images(tiny_model, tmp_path):
    from diffusers import UNet2DConditionModel

    data = write_slabs(tmp_path / "slabs", 4, seed=5)
    out, work = tmp_path / "prior", tmp_path / "work"
    args = ["pretrain", "--data", str(data), "--out", str(out), "--work-dir", str(work), "--init-model"]
    args += [str(tiny_model), "--stages", "diffusion", "--steps", "2", "--batch-size", "2", "--crop-size", "16"]
    grids = []

    def record_grid(module, inputs):
        if isinstance(module, UNet2DConditionModel):
            grids.append(tuple(inputs[0].shape[-2:]))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record_grid)
    try:
        assert launch.main(args) == 0
        training_grids = list(grids)
        # The tiny prior's autoencoder is 2x down: 32 px images are 16 x 16 latents, 16 px crops 8 x 8.
        assert training_grids == [(8, 8), (8, 8)]
        assert json.loads((work / "diffusion" / "config.json").read_text())["crop_size"] == 16
        assert grey_slab_sample(load_pipeline(out).pipe, strength=1.0).shape == (1, 32, 32, 3)
        assert set(grids[len(training_grids) :]) == {(16, 16)}
    finally:
        hook.remove()


def test_pretrain_with_appearance_captions_encodes_them_and_does_not_reuse_generic_ones(tiny_model, tmp_path):
    data = write_slabs(tmp_path / "slabs", 6, seed=1)
    out, work = tmp_path / "prior", tmp_path / "work"
    common = ["pretrain", "--data", str(data), "--out", str(out), "--work-dir", str(work), "--init-model"]
    common += [str(tiny_model), "--stages", "diffusion", "--batch-size", "2"]
    assert launch.main([*common, "--steps", "1"]) == 0
    cached = torch.load(work / "diffusion" / "latents.pt")["captions"]
    assert launch.main([*common, "--steps", "2", "--captions", "appearance"]) == 0
    described = torch.load(work / "diffusion" / "latents.pt")["captions"]
    assert len(described) == len(cached) and described != cached
    assert all(d.startswith(c) for c, d in zip(cached, described, strict=True))
    assert any(d != c for c, d in zip(cached, described, strict=True))
    assert (out / "model_index.json").exists()


@pytest.mark.slow
def test_gpu_preset_runs_on_a_tiny_prior_on_the_cpu(tmp_path):
    from engine.config import PRETRAIN_PRESETS, pretrain_configs

    size, autoencoder, decoder, diffusion = pretrain_configs("gpu", steps=2)
    assert size == "embedded" and diffusion.mixed_precision == "bf16" and diffusion.max_train_steps == 2
    assert diffusion.train_batch_size == PRETRAIN_PRESETS["gpu"]["batch_size"] and decoder.train_batch_size == 32
    # SD's autoencoder recipe from scratch, a UNet on appearance captions, both within time budgets.
    assert autoencoder.downsampling is None and autoencoder.perceptual_weight == 1.0
    assert diffusion.captions == "appearance" and diffusion.vflip and diffusion.crop_size is None
    assert autoencoder.max_train_seconds == 120 and diffusion.max_train_seconds == 270
    assert pretrain_configs("cpu")[1].downsampling is None and pretrain_configs("cpu")[3].max_train_seconds is None
    data = write_slabs(tmp_path / "slabs", 4, seed=1)
    out = tmp_path / "prior"
    args = ["pretrain", "--preset", "gpu", "--size", "tiny", "--data", str(data), "--out", str(out)]
    args += ["--autoencoder-steps", "2", "--steps", "2", "--batch-size", "4", "--crop-size", "16"]
    args += ["--autoencoder-downsampling", "4", "--max-minutes", "3"]
    # A process of its own: Accelerate's mixed-precision state is per process, and other tests already set it.
    done = subprocess.run([sys.executable, "launch.py", *args], cwd=Path(launch.__file__).parent, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    work = tmp_path / "prior.work"
    config = json.loads((work / "diffusion" / "config.json").read_text())
    assert config["mixed_precision"] == "bf16" and config["learning_rate"] == PRETRAIN_PRESETS["gpu"]["learning_rate"]
    assert config["crop_size"] == 16 and config["vflip"] and config["max_train_seconds"] == 180
    assert json.loads((work / "autoencoder" / "config.json").read_text())["downsampling"] == 4
    # The decoder stage runs only when named.
    assert not (work / "decoder").exists()
    pipe = load_pipeline(out).pipe
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 8


def test_decoder_stage_alone_replaces_only_the_decoder_of_a_prior(tiny_model, tmp_path):
    import torch

    data = write_slabs(tmp_path / "slabs", 4, seed=2)
    out = tmp_path / "prior"
    args = ["pretrain", "--size", "tiny", "--data", str(data), "--out", str(out), "--init-model", str(tiny_model)]
    assert launch.main([*args, "--stages", "decoder", "--decoder-steps", "2"]) == 0
    before, after = load_pipeline(tiny_model).pipe, load_pipeline(out).pipe
    for name in ("unet", "text_encoder"):
        old, new = getattr(before, name).state_dict(), getattr(after, name).state_dict()
        assert all(torch.allclose(old[k], new[k].float(), atol=1e-2) for k in old)
    encoder = before.vae.encoder.state_dict()
    assert all(torch.allclose(encoder[k], v.float(), atol=1e-2) for k, v in after.vae.encoder.state_dict().items())
    decoder = before.vae.decoder.state_dict()
    assert any(not torch.allclose(decoder[k], v.float(), atol=1e-4) for k, v in after.vae.decoder.state_dict().items())


def test_decoder_stage_on_denoised_latents_needs_a_prior_and_runs_from_the_cli(tiny_model, tmp_path, capsys):
    data = write_slabs(tmp_path / "slabs", 4, seed=3)
    out = tmp_path / "prior"
    args = ["pretrain", "--size", "tiny", "--data", str(data), "--out", str(out), "--decoder-steps", "2"]
    args += ["--decoder-denoised-share", "0.5", "--stages", "decoder"]
    assert launch.main([*args, "diffusion"]) == 2
    assert "needs a UNet" in capsys.readouterr().err
    assert launch.main([*args, "--init-model", str(tiny_model)]) == 0
    config = json.loads((tmp_path / "prior.work" / "decoder" / "config.json").read_text())
    assert config["denoised_share"] == 0.5 and load_pipeline(out).pipe.vae is not None


def fine_tune_and_generate(model: Path, dataset: Path, adapter: Path, strength: float) -> np.ndarray:
    """Fine-tune a scratches token on `model` for two steps, then one candidate's pixels at `strength`."""
    from engine.config import finetune_config
    from engine.training.loop import images_from_folder, train

    config = finetune_config(
        model=str(model),
        output_dir=str(adapter),
        classes=["scratches"],
        max_train_steps=2,
        resolution=32,
        train_batch_size=2,
    )
    result = train(config, images_from_folder(dataset, ["scratches"], 32))
    assert result.status == "completed" and all(np.isfinite(result.losses))
    config = GenerationConfig(class_name="scratches", num_candidates=1, steps=3, strength=strength, seed=1)
    pipe = load_pipeline(model, adapter)
    return np.asarray(generate(pipe, Image.new("L", (32, 32), 128), config).candidates[0].image)


def test_v_prediction_continuation_saves_its_schedule_and_fine_tunes_and_samples_from_pure_noise(
    tiny_model, tiny_dataset, tmp_path
):
    from diffusers import DDPMScheduler

    from engine.config import TrainConfig

    data = write_slabs(tmp_path / "slabs", 4, seed=3)
    out = tmp_path / "prior"
    args = ["pretrain", "--size", "tiny", "--data", str(data), "--out", str(out), "--init-model", str(tiny_model)]
    assert launch.main([*args, "--stages", "diffusion", "--steps", "2", "--batch-size", "2", "--v-prediction"]) == 0
    schedule = load_pipeline(out).pipe.scheduler.config
    assert schedule.prediction_type == "v_prediction" and schedule.rescale_betas_zero_snr
    assert schedule.timestep_spacing == "trailing"
    training_schedule = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    original_schedule = DDPMScheduler.from_pretrained(tiny_model, subfolder="scheduler")
    assert training_schedule.alphas_cumprod[-1] < 1e-9 < 1e-3 < original_schedule.alphas_cumprod[-1]

    pixels = fine_tune_and_generate(out, tiny_dataset, tmp_path / "adapter", strength=1.0)
    assert np.isfinite(pixels).all() and pixels.std() > 0

    with pytest.raises(ValueError, match="zero terminal SNR"):
        TrainConfig(mode="pretrain", zero_terminal_snr=True)


def test_noise_shift_divides_every_steps_snr_and_a_shifted_continuation_fine_tunes_and_generates(
    tiny_model, tiny_dataset, tmp_path
):
    from diffusers import DDPMScheduler

    from engine.config import TrainConfig
    from engine.training.prior import shifted_betas

    def snr(schedule) -> torch.Tensor:
        return schedule.alphas_cumprod / (1 - schedule.alphas_cumprod)

    data = write_slabs(tmp_path / "slabs", 4, seed=3)
    out = tmp_path / "prior"
    args = ["pretrain", "--size", "tiny", "--data", str(data), "--out", str(out), "--init-model", str(tiny_model)]
    assert launch.main([*args, "--stages", "diffusion", "--steps", "2", "--batch-size", "2", "--noise-shift", "4"]) == 0
    original = DDPMScheduler.from_pretrained(tiny_model, subfolder="scheduler")
    shifted = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    assert torch.allclose(snr(shifted) * 4, snr(original), rtol=1e-4)
    sampler = load_pipeline(out).pipe.scheduler
    assert sampler.config.prediction_type == "epsilon"
    assert torch.allclose(sampler.alphas_cumprod, shifted.alphas_cumprod)

    assert np.isfinite(fine_tune_and_generate(out, tiny_dataset, tmp_path / "adapter", strength=0.6)).all()
    adapted = load_pipeline(out, tmp_path / "adapter").pipe.scheduler
    assert torch.allclose(adapted.alphas_cumprod, shifted.alphas_cumprod)

    assert shifted_betas(1) == pytest.approx(original.betas.tolist(), rel=1e-5)
    with pytest.raises(ValueError, match="at least 1"):
        TrainConfig(mode="pretrain", noise_shift=0.5)


def test_fresh_denoiser_trains_a_new_unet_on_the_init_models_autoencoder(tiny_model, tmp_path):
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from engine.training.pretrain import pretrain
    from engine.training.prior import PriorSize

    # A "trained" prior: the tiny model with its autoencoder and UNet moved away from a fresh build's weights.
    trained = tmp_path / "trained"
    shutil.copytree(tiny_model, trained)
    for cls, subfolder in ((AutoencoderKL, "vae"), (UNet2DConditionModel, "unet")):
        part = cls.from_pretrained(trained, subfolder=subfolder)
        with torch.no_grad():
            for weight in part.parameters():
                weight.add_(0.05)
        part.save_pretrained(trained / subfolder)

    data = write_slabs(tmp_path / "slabs", 4, seed=4)
    out, work = tmp_path / "prior", tmp_path / "work"
    args = ["pretrain", "--size", "tiny", "--data", str(data), "--out", str(out), "--work-dir", str(work)]
    args += ["--init-model", str(trained), "--stages", "diffusion", "--steps", "1", "--batch-size", "2"]
    assert launch.main([*args, "--fresh-denoiser"]) == 0

    def weights(model: Path, subfolder: str) -> dict[str, torch.Tensor]:
        cls = AutoencoderKL if subfolder == "vae" else UNet2DConditionModel
        return cls.from_pretrained(model, subfolder=subfolder).state_dict()

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # The starting UNet is a fresh build (the untouched tiny model is one, same seed), not the trained one.
    assert same(weights(work / "init", "unet"), weights(tiny_model, "unet"))
    assert not same(weights(work / "init", "unet"), weights(trained, "unet"))
    # The autoencoder is the trained prior's, in the starting folder and in the result.
    assert same(weights(work / "init", "vae"), weights(trained, "vae"))
    assert same(weights(out, "vae"), weights(trained, "vae"))
    assert load_pipeline(out).pipe.unet.config.in_channels == 4

    with pytest.raises(ValueError, match="give init_model"):
        pretrain(data, tmp_path / "p2", size=PriorSize.tiny(), fresh_denoiser=True)
    with pytest.raises(ValueError, match="latent channels"):
        pretrain(
            data,
            tmp_path / "p3",
            size=PriorSize.embedded(),
            init_model=trained,
            stages=("diffusion",),
            fresh_denoiser=True,
        )
