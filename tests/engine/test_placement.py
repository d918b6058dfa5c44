"""Masked repaint, boxes from masks, auto-place and per-sample quality, on the tiny model."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.adapters import TokenInfo
from engine.batch import generate_to_folder
from engine.boxes import from_mask, to_mask
from engine.config import PURE_NOISE_GUIDANCE, GenerationConfig
from engine.data import list_images
from engine.generation.generate import AUTO_PLACE_OWN, generate, masked_window_base, read_png_parameters
from engine.generation.pipeline import LoadedPipeline, load_pipeline
from engine.generation.placement import (
    MIN_LOG_SIZE_SPREAD,
    box_statistics,
    learnt_statistics,
    load_statistics,
    propose_masks,
)
from engine.generation.quality import PSNR_CEILING_DB, masked_quality
from engine.masks import MASK_WINDOW_SCALE, grow, mask_image, mirror_pad, plan_windows
from tests.support import slab, voc_xml


@pytest.fixture(scope="module")
def pipe(tiny_model, tiny_adapter):
    return load_pipeline(tiny_model, adapter=tiny_adapter)


def rectangle_mask(width: int, height: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_masked_repaint_keeps_every_pixel_outside_the_grown_mask_and_changes_inside(pipe):
    source = slab(96, 64)
    mask = rectangle_mask(96, 64, 30, 20, 50, 30)
    config = GenerationConfig(class_name="scratches", num_candidates=2, strength=1.0, steps=2, seed=5)
    result = generate(pipe, source, config, mask=mask_image(mask))

    original = np.asarray(source, dtype=np.int16)
    outside = ~grow(mask)
    for candidate in result.candidates:
        out = np.asarray(candidate.image, dtype=np.int16)
        assert candidate.image.size == source.size and candidate.image.mode == "L"
        assert np.array_equal(out[outside], original[outside])
        assert np.abs(out[mask] - original[mask]).mean() > 1
        params = read_png_parameters(candidate.png_bytes()).as_dict()
        assert params["boxes"] == [{"label": "scratches", "xmin": 30, "ymin": 20, "xmax": 50, "ymax": 30}]
        assert params["mask_sha256"] == hashlib.sha256(candidate.mask_png()).hexdigest()
        assert params["mask_source"] == "drawn"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(candidate.mask_png()))) > 0, mask)
        quality = params["quality"]
        assert quality["background_ssim"] > 0.8 and quality["background_psnr"] > 20
        assert quality["mask_change"] > 0.005 and quality["mask_ssim"] < 0.9
    first, second = (np.asarray(c.image) for c in result.candidates)
    assert not np.array_equal(first, second)


def test_masked_repaint_is_reproducible_by_seed(pipe):
    mask = mask_image(rectangle_mask(48, 48, 10, 10, 20, 30))
    config = GenerationConfig(class_name="inclusion", num_candidates=1, strength=0.9, steps=3, seed=11)
    a = generate(pipe, slab(48, 48), config, mask=mask).candidates[0].image
    b = generate(pipe, slab(48, 48), config, mask=mask).candidates[0].image
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_small_mask_on_a_large_slab_is_repainted_in_a_window_around_it(pipe):
    source = slab(400, 64, seed=1)
    mask = rectangle_mask(400, 64, 300, 24, 312, 40)
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=1.0, steps=2)
    candidate = generate(pipe, source, config, mask=mask_image(mask)).candidates[0]
    (window,) = candidate.params.masked.windows
    # A square around the grown mask (20 × 24 px) plus a 32 px margin each side, cut to the slab's height.
    assert (window.width, window.height) == (24 + 64, 64)
    assert window.x <= 300 and window.x + window.width >= 312
    out, original = np.asarray(candidate.image, dtype=np.int16), np.asarray(source, dtype=np.int16)
    assert np.array_equal(out[:, :290], original[:, :290])
    assert np.abs(out[mask] - original[mask]).mean() > 1


def test_distant_components_get_their_own_windows_and_near_ones_share_one():
    mask = rectangle_mask(600, 100, 20, 40, 30, 60) | rectangle_mask(600, 100, 40, 40, 50, 60)
    mask |= rectangle_mask(600, 100, 560, 10, 570, 20)
    windows = plan_windows(grow(mask), base=128, resolution=32, multiple=16)
    assert len(windows) == 2
    near, far = sorted(windows, key=lambda w: w.x)
    assert near.x <= 20 and near.x + near.width >= 50 and far.x + far.width >= 570
    assert near.region.sum() == grow(mask)[:, :300].sum() and far.region.sum() == grow(mask)[:, 300:].sum()
    assert (near.width, near.height, near.model_width, near.model_height) == (128, 100, 48, 32)


def test_on_a_canvas_no_larger_than_a_window_distant_components_share_the_whole_canvas():
    mask = rectangle_mask(128, 128, 4, 4, 14, 14) | rectangle_mask(128, 128, 110, 110, 124, 124)
    (window,) = plan_windows(grow(mask), base=128, resolution=32, multiple=16)
    assert (window.x, window.y, window.width, window.height) == (0, 0, 128, 128)
    assert window.region.sum() == grow(mask).sum(), "both components repainted in the one pass"
    assert len(plan_windows(grow(mask), base=100, resolution=32, multiple=16)) == 2, "a larger canvas: two windows"


def test_long_masks_get_a_non_square_window_and_too_long_ones_are_refused():
    (window,) = plan_windows(rectangle_mask(400, 100, 50, 40, 250, 50), base=100, resolution=32, multiple=16)
    assert (window.width, window.height) == (264, 100) and window.model_height == 32
    assert window.model_width == 80
    with pytest.raises(ValueError, match="longer than wide"):
        plan_windows(rectangle_mask(1000, 100, 10, 40, 900, 50), base=100, resolution=32, multiple=16)


def test_boxes_are_the_connected_components_of_the_mask():
    mask = rectangle_mask(80, 60, 5, 5, 15, 25) | rectangle_mask(80, 60, 40, 30, 70, 35)
    mask[50, 50] = True
    assert [box.as_dict() for box in from_mask(mask, "inclusion")] == [
        {"label": "inclusion", "xmin": 5, "ymin": 5, "xmax": 15, "ymax": 25},
        {"label": "inclusion", "xmin": 40, "ymin": 30, "xmax": 70, "ymax": 35},
    ]
    boxes = from_mask(mask, "inclusion")
    assert np.array_equal(to_mask(boxes, 80, 60), mask & ~rectangle_mask(80, 60, 50, 50, 51, 51))


def test_wrong_masks_are_refused(pipe):
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=1.0, steps=2)
    with pytest.raises(ValueError, match="empty"):
        generate(pipe, slab(48, 48), config, mask=Image.new("L", (48, 48)))
    with pytest.raises(ValueError, match="40×40 but the image is 48×48"):
        generate(pipe, slab(48, 48), config, mask=Image.new("L", (40, 40), 255))
    with pytest.raises(ValueError, match="not both"):
        generate(pipe, slab(48, 48), GenerationConfig("scratches", 1, 1.0, 2, auto_place=True), mask=slab(48, 48))


def test_auto_place_gives_each_candidate_its_own_mask_with_boxes(pipe):
    config = GenerationConfig(class_name="scratches", num_candidates=2, strength=1.0, steps=2, seed=3, auto_place=True)
    first, second = generate(pipe, slab(64, 64), config).candidates
    assert first.params.masked.mask_source == "auto-place" and first.params.boxes
    assert not np.array_equal(first.mask, second.mask)
    again = generate(pipe, slab(64, 64), GenerationConfig("scratches", 1, 1.0, 2, seed=4, auto_place=True))
    assert np.array_equal(again.candidates[0].mask, second.mask)
    outside = ~grow(first.mask)
    assert np.array_equal(np.asarray(first.image)[outside], np.asarray(slab(64, 64))[outside])


def test_a_masked_repaint_is_guided_as_strongly_as_pure_noise_below_strength_one(pipe):
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=0.9, steps=2, auto_place=True)
    assert generate(pipe, slab(64, 64), config).candidates[0].params.guidance_scale == PURE_NOISE_GUIDANCE


def test_a_class_learns_its_own_defects_sizes_and_counts_and_auto_place_draws_them(
    tiny_model, tiny_adapter, tmp_path, caplog
):
    # Two 300 × 150 px captures (masks at 32 px, as fine-tuning reads them): one defect 90 × 30 px, then two.
    first, second = np.zeros((32, 32), dtype=bool), np.zeros((32, 32), dtype=bool)
    first[4:10, 2:12] = True
    second[4:10, 2:12] = second[20:26, 16:26] = True
    stats = learnt_statistics([(first, (300, 150)), (second, (300, 150)), (np.zeros((32, 32), bool), (300, 150))])
    own = stats["classes"]["_own"]
    assert stats["reference_size"] == 300 and own["per_image"] == {"1": 1, "2": 1}
    assert own["boxes"] == [[94, 28]] * 3, "in the capture's own pixels"
    varied = learnt_statistics([(first, (300, 150)), (second, (600, 300))])["classes"]["_own"]["log_size_spread"]
    assert own["log_size_spread"] == MIN_LOG_SIZE_SPREAD < varied, "a few boxes unlike each other stand for more sizes"
    assert learnt_statistics([(np.zeros((32, 32), bool), (300, 150))]) is None

    def component_sizes(masks) -> np.ndarray:
        return np.array([[b.width, b.height] for m in masks for b in from_mask(np.asarray(m) > 0)], dtype=float)

    learnt = component_sizes(propose_masks("mill type 1", 300, 150, seed=0, n=12, statistics=stats))
    assert np.allclose(np.median(learnt, axis=0), [94, 28], rtol=0.2), "sized like its own defects"
    shipped = component_sizes(propose_masks("mill type 1", 300, 150, seed=0, n=12))
    assert not np.allclose(np.median(shipped, axis=0), [94, 28], rtol=0.2), "not NEU's pooled boxes"
    fill = {name: np.mean(propose_masks(name, 300, 150, seed=0, n=6, statistics=stats)) for name in ("scratches", "x")}
    assert fill["scratches"] < 0.5 * fill["x"], "a class known as scratches draws its own boxes as lines, not blobs"
    assert "shape" not in own, "box masks tell no shape"
    strokes = []
    for offset in (0, 4, 8):
        stroke = np.zeros((32, 32), dtype=np.uint8)
        cv2.line(stroke, (2, 2 + offset), (28, 20 + offset // 2), 1, 1)
        strokes.append((stroke > 0, (300, 150)))
    drawn = learnt_statistics(strokes)
    assert drawn["classes"]["_own"]["shape"] == "line", "strokes that fill little of their boxes"
    thin = np.zeros((32, 32), dtype=bool)
    thin[1:31, 10:12] = True
    assert learnt_statistics([(thin, (300, 150))])["classes"]["_own"]["shape"] == "line", "a scratch's long thin box"
    shapeless = {k: v for k, v in drawn["classes"]["_own"].items() if k != "shape"}
    assert np.mean(propose_masks("mill type 1", 300, 150, seed=0, n=6, statistics=drawn)) < 0.5 * np.mean(
        propose_masks("mill type 1", 300, 150, seed=0, n=6, statistics={**drawn, "classes": {"_own": shapeless}})
    ), "a new class whose own defects are strokes is drawn in strokes, not blobs"

    own_adapter = tmp_path / "own"
    shutil.copytree(tiny_adapter, own_adapter)
    index = json.loads((own_adapter / "tokens.json").read_text())
    index["tokens"]["scratches"]["placement"] = stats
    (own_adapter / "tokens.json").write_text(json.dumps(index))
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=1.0, steps=2, seed=3, auto_place=True)
    candidate = generate(load_pipeline(tiny_model, adapter=own_adapter), slab(300, 150), config).candidates[0]
    assert candidate.params.masked.mask_source == AUTO_PLACE_OWN
    assert np.array_equal(candidate.mask, np.asarray(propose_masks("scratches", 300, 150, 3, statistics=stats)[0]) > 0)
    slab(300, 150).save(tmp_path / "slab.png")
    with caplog.at_level(logging.INFO, logger="engine.batch"):
        generate_to_folder(
            str(tiny_model),
            own_adapter,
            "scratches",
            tmp_path / "slab.png",
            1,
            tmp_path / "out",
            steps=2,
            auto_place=True,
            realism_threshold=None,
        )
    assert "Auto-placing the defects of scratches sized and counted like its own 3" in caplog.text


def test_what_an_adapter_learnt_of_a_class_is_told_in_words():
    stats = learnt_statistics([(np.pad(np.ones((6, 10), bool), ((4, 22), (2, 20))), (300, 150))])
    rust = TokenInfo("rust", "<rust>", "", masked_strength=0.9, defect_tint=[0.26, -0.27], defect_structure=0.72)
    rust.placement = stats
    assert rust.learnt_summary() == (
        "Tuned strength 0.9 (masked); defects redder and less blue than their steel (log R/G +0.26, log B/G -0.27), "
        "72% of it on the defect itself; auto-place from its own 1 defect in 1 image (median 94 × 28 px in 300 px "
        "captures)."
    )
    thin = np.zeros((32, 32), dtype=bool)
    thin[1:31, 10:12] = True
    scratch = TokenInfo("scratch", "<scratch>", "", placement=learnt_statistics([(thin, (200, 200))]))
    assert scratch.learnt_summary().endswith("(median 12 × 188 px in 200 px captures, drawn as lines).")
    stain = TokenInfo("stain", "<stain>", "", defect_tint=[-0.14, 0.17])
    assert "less red and bluer than their steel" in stain.learnt_summary() and "evenly" in stain.learnt_summary()
    assert TokenInfo("grey", "<grey>", "", defect_tint=[0.01, 0.0]).learnt_summary().startswith("Defects the colour")
    assert TokenInfo("plain", "<plain>", "").learnt_summary().startswith("Its token and LoRA")
    small = TokenInfo("small", "<small>", "", view_side=128.0).learnt_summary()
    assert small.startswith("Its token and LoRA") and small.endswith("Learnt from captures 128 px on their short side.")


def elongation(mask: Image.Image) -> list[float]:
    """Long over short side of each component's minimum-area rectangle."""
    count, labels = cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8))
    ratios = []
    for label in range(1, count):
        points = np.argwhere(labels == label)[:, ::-1].astype(np.float32)
        (_, _), (w, h), _ = cv2.minAreaRect(points)
        ratios.append(max(w, h) / max(min(w, h), 1.0))
    return ratios


def component_areas(mask: Image.Image) -> list[int]:
    _, _, stats, _ = cv2.connectedComponentsWithStats((np.asarray(mask) > 0).astype(np.uint8))
    return [int(area) for area in stats[1:, cv2.CC_STAT_AREA]]


def test_auto_place_shapes_follow_the_class():
    scratches = [r for m in propose_masks("scratches", 200, 200, seed=0, n=20) for r in elongation(m)]
    assert np.median(scratches) > 5
    inclusion = [a for m in propose_masks("inclusion", 200, 200, seed=0, n=20) for a in component_areas(m)]
    crazing_masks = propose_masks("crazing", 200, 200, seed=0, n=20)
    crazing = [a for m in crazing_masks for a in component_areas(m)]
    assert np.median(inclusion) < 0.05 * 200 * 200 and 3 * np.median(inclusion) < np.median(crazing)
    assert np.median([r for m in crazing_masks for r in elongation(m)]) < 5
    for name in ("rust", "Rolled-in scale"):
        (unknown,) = propose_masks(name, 120, 80, seed=1)
        assert unknown.size == (120, 80) and (np.asarray(unknown) > 0).any()
    assert [np.asarray(m).tobytes() for m in propose_masks("patches", 64, 48, seed=2, n=2)] == [
        np.asarray(m).tobytes() for m in propose_masks("patches", 64, 48, seed=2, n=2)
    ]


def test_shipped_statistics_come_from_the_training_pool(tmp_path):
    stats = load_statistics()
    assert set(stats["classes"]) == {
        "crazing",
        "inclusion",
        "patches",
        "pitted_surface",
        "rolled-in_scale",
        "scratches",
    }
    # 200 images per class, a sixth held out (engine.data.split_neu): only the training pool's images count.
    assert all(sum(c["per_image"].values()) <= 200 for c in stats["classes"].values())
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (tmp_path / "manifest.csv").write_text(
        "image,cls,index,annotation\n"
        + "".join(f"images/s{i}.png,scratches,{i},annotations/s{i}.xml\n" for i in range(1, 8))
    )
    for i in range(1, 8):
        (annotations / f"s{i}.xml").write_text(voc_xml(("scratches", 10, 0, 14 + i, 150)))
    computed = box_statistics(tmp_path)
    # Of 7 images, positions 0 and 6 are validation images: their boxes (widths 6 and 12) are left out.
    assert computed["classes"]["scratches"]["per_image"] == {"1": 5}
    assert [w for w, _ in computed["classes"]["scratches"]["boxes"]] == [7, 8, 9, 10, 11]

    import launch

    out = tmp_path / "stats.json"
    assert launch.main(["evaluate", "placement-stats", "--neu", str(tmp_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == computed, "the CLI writes the same statistics"


def test_quality_of_an_unchanged_image_is_perfect_and_a_changed_mask_is_measured():
    source = slab(40, 40)
    mask = rectangle_mask(40, 40, 10, 10, 20, 20)
    same = masked_quality(source, source, mask)
    assert same["background_psnr"] == PSNR_CEILING_DB and same["background_ssim"] == 1.0
    assert same["mask_change"] == 0.0
    changed = np.asarray(source).copy()
    changed[mask] = 0
    quality = masked_quality(source, Image.fromarray(changed), mask)
    assert quality["background_psnr"] == PSNR_CEILING_DB and quality["background_ssim"] < 1.0
    assert quality["mask_change"] > 0.1 and quality["mask_ssim"] < 0.5


def test_cli_generation_with_a_mask_writes_the_mask_beside_each_image(pipe, tmp_path):
    slab(48, 48).save(tmp_path / "slab.png")
    mask_image(rectangle_mask(48, 48, 8, 8, 20, 40)).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    written = generate_to_folder(
        None,
        None,
        "scratches",
        tmp_path / "slab.png",
        2,
        out,
        strength=1.0,
        steps=2,
        pipe=pipe,
        mask=tmp_path / "mask.png",
        realism_threshold=None,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "scratches_00000.png",
        "scratches_00000_mask.png",
        "scratches_00001.png",
        "scratches_00001_mask.png",
    ]
    assert list_images(out) == written
    params = read_png_parameters(written[0].read_bytes()).as_dict()
    assert (
        params["boxes"][0]["xmin"] == 8
        and params["mask_sha256"] == hashlib.sha256((out / "scratches_00000_mask.png").read_bytes()).hexdigest()
    )
    with pytest.raises(ValueError, match="not both"):
        generate_to_folder(
            None,
            None,
            "scratches",
            tmp_path / "slab.png",
            1,
            out,
            pipe=pipe,
            mask=tmp_path / "mask.png",
            auto_place=True,
        )


def test_masked_repaint_works_for_a_unet_with_more_than_four_latent_channels(tmp_path):
    """The embedded prior has 32 latent channels; diffusers' inpaint pipeline accepts only 4 or 9."""
    import dataclasses

    from diffusers import StableDiffusionImg2ImgPipeline

    from engine.adapters import AdapterInfo, TokenInfo
    from engine.training.prior import PriorSize, build_components

    size = dataclasses.replace(PriorSize.tiny(), latent_channels=8)
    pipe = StableDiffusionImg2ImgPipeline(
        **build_components(size, tmp_path, seed=0),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    adapter = AdapterInfo(tmp_path, {"scratches": TokenInfo("scratches", "scratch", "")})
    loaded = LoadedPipeline(pipe, str(tmp_path), "untrained", adapter)
    source = slab(48, 48)
    mask = rectangle_mask(48, 48, 12, 12, 30, 20)
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=1.0, steps=2)
    out = np.asarray(generate(loaded, source, config, mask=mask).candidates[0].image, dtype=np.int16)
    original = np.asarray(source, dtype=np.int16)
    assert np.array_equal(out[~grow(mask)], original[~grow(mask)])
    assert np.abs(out[mask] - original[mask]).mean() > 1


def test_a_thin_strip_is_mirror_extended_so_its_defect_is_painted_at_the_scale_its_class_learnt(pipe):
    source = slab(120, 20, seed=3)
    mask = rectangle_mask(120, 20, 50, 6, 60, 12)
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=1.0, steps=2)
    candidate = generate(pipe, source, config, mask=mask_image(mask)).candidates[0]
    # The class learnt from 48 px images at the model's 32 px; without the mirror the 20 px strip would be magnified
    # to 32 px (0.6 source px per model px).
    assert pipe.adapter.tokens["scratches"].view_side == 48 and masked_window_base(pipe, "scratches") == 48
    assert candidate.params.masked.window_scale >= 48 / 32
    (window,) = candidate.params.masked.windows
    assert window.y == 0 and window.height == 20 and window.x <= 46 and window.x + window.width >= 64
    out, original = np.asarray(candidate.image, dtype=np.int16), np.asarray(source, dtype=np.int16)
    assert candidate.image.size == (120, 20)
    assert np.array_equal(out[~grow(mask)], original[~grow(mask)])
    assert np.abs(out[mask] - original[mask]).mean() > 1


def test_a_class_learnt_from_small_captures_is_repainted_at_their_scale_not_mirror_extended(
    pipe, tiny_model, tiny_adapter
):
    small = shutil.copytree(tiny_adapter, tiny_adapter.parent / "small-captures", dirs_exist_ok=True)
    index = json.loads((small / "tokens.json").read_text())
    index["tokens"]["scratches"]["view_side"] = 24.0
    index["tokens"]["inclusion"]["view_side"] = 400.0
    (small / "tokens.json").write_text(json.dumps(index))
    loaded = load_pipeline(tiny_model, adapter=small)
    assert masked_window_base(loaded, "scratches") == 24, "a 24 px capture's scale"
    assert masked_window_base(loaded, "inclusion") == round(32 * MASK_WINDOW_SCALE), "never coarser than the prior's"

    source, mask = slab(40, 40, seed=4), rectangle_mask(40, 40, 16, 16, 24, 24)
    config = GenerationConfig(class_name="scratches", num_candidates=1, strength=1.0, steps=2)
    (window,) = generate(loaded, source, config, mask=mask_image(mask)).candidates[0].params.masked.windows
    assert (window.x, window.y, window.width, window.height) == (0, 0, 40, 40), "the slab itself, no mirrored border"
    assert generate(loaded, source, config, mask=mask_image(mask)).candidates[0].params.masked.window_scale == 40 / 32
    learnt_at_48 = generate(pipe, source, config, mask=mask_image(mask)).candidates[0]
    assert learnt_at_48.params.masked.window_scale > 40 / 32, "mirror-extended towards its class's 48 px"


def test_mirror_pad_reflects_beyond_the_image_size():
    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3)
    padded = mirror_pad(pixels, 4, 3)
    assert padded.shape == (2 + 6, 3 + 8)
    assert np.array_equal(padded[3:5, 4:7], pixels)
    # Mirrored without repeating the edge (0 1 2 → … 2 1 [0 1 2] 1 0 …), so no seam of doubled pixels.
    assert list(padded[3, 2:9]) == [2, 1, 0, 1, 2, 1, 0]
    assert list(padded[:, 4]) == [3, 0, 3, 0, 3, 0, 3, 0]
