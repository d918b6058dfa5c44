"""The masked diffusion loss of fine-tuning: where masks come from, how they weight the loss, a real run with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from engine.adapters import read_adapter
from engine.batch import finetune_folder
from engine.config import TrainConfig, finetune_config
from engine.data import find_annotation, parse_voc, read_mask_beside, square_views, to_square_pixels
from engine.generation.placement import MIN_LOG_SIZE_SPREAD
from engine.training.loop import TrainingImage, _diffusion_loss, _loss_weights, class_placement, images_from_folder
from tests.support import make_steel_like, voc_xml


def test_voc_boxes_are_read_as_one_based_inclusive_pixels(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(voc_xml(("scratches", 1, 1, 200, 200), ("inclusion", 10, 20, 15, 40)))
    whole, small = parse_voc(xml)
    # VOC pixel 1..200 is the whole of a 200-pixel image: 0-based 0 up to (exclusive) 200.
    assert (whole.xmin, whole.ymin, whole.xmax, whole.ymax) == (0, 0, 200, 200)
    assert (small.label, small.xmin, small.ymin, small.xmax, small.ymax) == ("inclusion", 9, 19, 15, 40)


def test_neu_images_find_their_neu_det_annotation_and_exact_stems_win(tmp_path):
    (tmp_path / "crazing_12.xml").write_text(voc_xml(("crazing", 1, 1, 5, 5)))
    assert find_annotation(tmp_path, tmp_path / "Cr_12.bmp", "crazing") == tmp_path / "crazing_12.xml"
    assert find_annotation(tmp_path, tmp_path / "Cr_12.bmp", "patches") is None
    assert find_annotation(tmp_path, tmp_path / "Cr_12.bmp") is None
    (tmp_path / "Cr_12.xml").write_text(voc_xml(("crazing", 1, 1, 5, 5)))
    assert find_annotation(tmp_path, tmp_path / "Cr_12.bmp", "crazing") == tmp_path / "Cr_12.xml"


def test_a_wide_image_is_seen_as_the_squares_of_its_short_side_that_cover_it():
    assert square_views(300, 100) == [(0, 0, 100, 100), (100, 0, 200, 100), (200, 0, 300, 100)]
    assert square_views(100, 250) == [(0, 0, 100, 100), (0, 75, 100, 175), (0, 150, 100, 250)], "evenly spaced"
    assert square_views(120, 120) == [(0, 0, 120, 120)]
    assert square_views(104, 100) == [(0, 0, 104, 100)], "nearly square: seen whole"


def test_a_fine_tune_sees_a_wide_image_as_square_views_with_their_part_of_the_mask(tmp_path):
    folder = tmp_path / "dataset" / "edge crack"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    strip = Image.fromarray(np.concatenate([make_steel_like(rng, 40, "scratches") for _ in range(3)], axis=1))
    strip.save(folder / "strip.png")
    (folder / "strip.xml").write_text(voc_xml(("edge crack", 91, 1, 120, 40)))
    square = Image.fromarray(make_steel_like(rng, 40, "inclusion"))
    square.save(folder / "square.png")
    (folder / "square.xml").write_text(voc_xml(("edge crack", 1, 1, 20, 40)))

    images = images_from_folder(tmp_path / "dataset", None, 16)

    assert len(images) == 4
    whole, *views = images
    assert np.array_equal(whole.pixels, to_square_pixels(square, 16)), "a square image as before: whole"
    assert np.array_equal(whole.mask, read_mask_beside(folder / "square.png", 16))
    for view, x in zip(views, (0, 40, 80), strict=True):
        assert np.array_equal(view.pixels, to_square_pixels(strip.crop((x, 0, x + 40, 40)), 16)), "not squashed"
    assert not views[0].mask.any() and not views[1].mask.any(), "the defect lies in the last third"
    assert views[2].mask[:, 4:].all() and not views[2].mask[:, :2].any()
    # The class's auto-place statistics count the strip's defect once, whole, in its own pixels.
    assert (views[0].size, views[1].size, views[2].size) == ((120, 40), None, None)
    assert views[0].image_mask.shape == (16, 48) and views[1].image_mask is None
    own = class_placement(images, "edge crack")["classes"]["_own"]
    assert own["boxes"] == [[20, 40], [30, 40]] and own["per_image"] == {"1": 2}


def test_a_mask_png_beside_an_image_wins_over_its_voc_boxes(tmp_path):
    Image.new("L", (40, 20), 128).save(tmp_path / "a.png")
    (tmp_path / "a.xml").write_text(voc_xml(("scratches", 1, 1, 20, 20)))
    from_boxes = read_mask_beside(tmp_path / "a.png", 8)
    assert from_boxes[:, :4].all() and not from_boxes[:, 4:].any()
    drawn = np.zeros((20, 40), dtype=np.uint8)
    drawn[:, 30:] = 255
    Image.fromarray(drawn).save(tmp_path / "a_mask.png")
    from_png = read_mask_beside(tmp_path / "a.png", 8)
    assert from_png[:, 6:].all() and not from_png[:, :6].any()
    assert read_mask_beside(tmp_path / "missing.png", 8) is None


def test_loss_weights_are_one_on_the_defect_and_the_background_weight_elsewhere():
    mask = np.zeros((16, 16), dtype=bool)
    mask[:, :8] = True
    images = [TrainingImage(np.zeros((16, 16, 3), np.uint8), "a", mask=mask), TrainingImage(np.zeros((16, 16, 3)))]
    weights = _loss_weights(images, TrainConfig(classes=["a"], background_loss_weight=0.25), torch.Size([4, 4]))
    # Two images and their mirrors: the mirrored mask lies on the right.
    assert weights.shape == (4, 1, 4, 4)
    assert torch.all(weights[0, 0, :, :2] == 1) and torch.all(weights[0, 0, :, 2:] == 0.25)
    assert torch.all(weights[2, 0, :, 2:] == 1) and torch.all(weights[2, 0, :, :2] == 0.25)
    assert torch.all(weights[1] == 1) and torch.all(weights[3] == 1)
    plain = _loss_weights(images, TrainConfig(classes=["a"]), torch.Size([4, 4]))
    assert torch.all(plain == 1)


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_the_masked_loss_counts_errors_on_the_defect_and_discounts_the_background(snr_gamma):
    scheduler = DDPMScheduler()
    target = torch.zeros(2, 4, 4, 4)
    timesteps = torch.tensor([100, 500])
    weights = torch.full((2, 1, 4, 4), 0.1)
    weights[..., :2] = 1.0
    off_defect = target.clone()
    off_defect[..., 2:] = 1.0
    on_defect = target.clone()
    on_defect[..., :2] = 1.0

    plain = _diffusion_loss(off_defect, target, timesteps, scheduler, snr_gamma)
    assert _diffusion_loss(off_defect, target, timesteps, scheduler, snr_gamma, torch.ones(2, 1, 4, 4)) == plain
    assert _diffusion_loss(on_defect, target, timesteps, scheduler, snr_gamma, weights) == pytest.approx(
        plain.item() * 2 / 1.1
    )
    assert _diffusion_loss(off_defect, target, timesteps, scheduler, snr_gamma, weights) == pytest.approx(
        plain.item() * 0.2 / 1.1
    )


def test_background_loss_weight_is_checked():
    with pytest.raises(ValueError, match="background_loss_weight"):
        finetune_config("cpu-quick", background_loss_weight=1.5)


def test_a_fine_tune_with_masks_beside_its_images_trains_with_the_masked_loss_and_records_its_defects_colour(
    tiny_model, tmp_path
):
    dataset = tmp_path / "dataset"
    rng = np.random.default_rng(0)
    for kind in ("scratches", "inclusion"):
        (dataset / kind).mkdir(parents=True)
        for i in range(3):
            grey = make_steel_like(rng, 48, kind)[..., 0].astype(np.float64)
            gains = np.ones((48, 48, 3)) * np.array([1.1, 1.0, 0.9])
            if kind == "scratches":
                gains[:, :24] = (1.35, 0.95, 0.7)
            pixels = (grey[..., None] * gains).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(dataset / kind / f"{kind}_{i}.png")
            (dataset / kind / f"{kind}_{i}.xml").write_text(voc_xml((kind, 1, 1, 24, 48)))
    images = images_from_folder(dataset, None, 32)
    assert all(im.mask is not None and im.mask[:, :16].all() and not im.mask[:, 16:].any() for im in images)

    result = finetune_folder(
        dataset, tmp_path / "run", model=str(tiny_model), steps=3, batch_size=4, background_loss_weight=0.2
    )
    assert result.status == "completed" and all(np.isfinite(result.losses))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["background_loss_weight"] == 0.2
    tokens = read_adapter(tmp_path / "run").tokens
    red, blue = tokens["scratches"].defect_tint
    assert red == pytest.approx(np.log(1.35 / 0.95 / 1.1), abs=0.05), "its defects are redder than its steel"
    assert blue == pytest.approx(np.log(0.7 / 0.95 / 0.9), abs=0.05)
    assert tokens["scratches"].defect_structure == pytest.approx(0.0, abs=0.15), "a stain over the whole box"
    assert tokens["scratches"].defect_masks is None, "learnt from the masks that came with the images"
    assert tokens["inclusion"].defect_tint == pytest.approx([0.0, 0.0], abs=0.02), "same colour as its steel"
    assert tokens["inclusion"].defect_structure is None, "no colour, so nowhere it lies"
    placement = tokens["scratches"].placement
    own = placement["classes"]["_own"]
    assert placement["reference_size"] == 48 and own["boxes"] == [[24, 48]] * 3, "in the images' own pixels"
    assert own["per_image"] == {"1": 3} and own["log_size_spread"] == MIN_LOG_SIZE_SPREAD, "three boxes alike"
