"""Estimated defect masks: where a capture without a mask departs from its own steel, and the colour a fine-tune on
such captures learns from them."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from engine.adapters import ESTIMATED_MASKS, read_adapter
from engine.batch import finetune_folder
from engine.boxes import Box
from engine.masks import estimate_defect_mask, suggested_boxes


def grain(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Grey steel: pixel noise over a slow shading, as float H×W."""
    shading = cv2.GaussianBlur(rng.normal(0, 30, (size, size)).astype(np.float32), (0, 0), size / 6)
    return 128 + shading + rng.normal(0, 10, (size, size))


def precision_recall(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hit = float((estimate & truth).sum())
    return hit / max(estimate.sum(), 1), hit / truth.sum()


def test_plain_steel_has_no_defect_to_mark():
    rng = np.random.default_rng(0)
    for seed in range(3):
        steel = np.repeat(grain(np.random.default_rng(seed))[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)
        assert estimate_defect_mask(steel).mean() < 0.03, "grain and shading are the steel, not a defect"
    tinted = (grain(rng)[..., None] * np.array([1.15, 1.0, 0.85])).clip(0, 255).astype(np.uint8)
    assert estimate_defect_mask(tinted).mean() < 0.03, "a white balance tints the whole capture, not a defect"


def test_a_dark_spot_a_bright_scratch_and_a_rust_stain_are_marked_where_they_are():
    rng = np.random.default_rng(1)
    steel = grain(rng)
    spot = np.zeros((128, 128), np.uint8)
    cv2.ellipse(spot, (40, 40), (10, 6), 30, 0, 360, 1, -1)
    scratch = np.zeros((128, 128), np.uint8)
    cv2.line(scratch, (90, 10), (100, 118), 1, 2)
    steel[spot > 0] -= 60
    steel[scratch > 0] += 70
    grey = np.repeat(steel[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)
    marked = estimate_defect_mask(grey)
    near = [cv2.dilate(truth, np.ones((5, 5))) > 0 for truth in (spot, scratch)]
    assert all(precision_recall(marked, truth)[1] > 0.8 for truth in near), "both defects found"
    assert precision_recall(marked, near[0] | near[1])[0] > 0.5, "most of what is marked is one of them"
    assert marked.shape == (128, 128) and marked.dtype == bool and marked.mean() < 0.15

    stain = np.zeros((128, 128), np.uint8)
    cv2.circle(stain, (70, 80), 14, 1, -1)
    coloured = np.repeat(grain(rng)[..., None], 3, axis=2)
    coloured[stain > 0] *= np.array([1.3, 1.0, 0.75])
    marked = estimate_defect_mask(coloured.clip(0, 255).astype(np.uint8))
    precision, recall = precision_recall(marked, cv2.dilate(stain, np.ones((7, 7))) > 0)
    assert precision > 0.6 and recall > 0.6, "a stain of the steel's brightness is found by its colour"


def test_suggested_boxes_join_a_broken_scratch_and_keep_distant_defects_apart():
    steel = grain(np.random.default_rng(2), 160)
    for top in range(20, 140, 24):  # a scratch in pieces 16 px apart: alone, each piece would be a box of its own
        steel[top : top + 8, 118:121] += 70
    spot = np.zeros((160, 160), np.uint8)
    cv2.ellipse(spot, (40, 50), (12, 8), 0, 0, 360, 1, -1)
    steel[spot > 0] -= 60
    pixels = np.repeat(steel[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)
    boxes = suggested_boxes(estimate_defect_mask(pixels), "scratches")
    assert len(boxes) == 2 and all(box.label == "scratches" for box in boxes)
    spot_box, scratch_box = sorted(boxes, key=lambda box: box.xmin)
    spot_truth = Box(28, 42, 53, 59)
    assert spot_box.union(spot_truth).corners == spot_box.corners, "the spot's box holds it"
    assert spot_box.iou(spot_truth) > 0.35, "and closely"
    scratch_truth = Box(118, 20, 121, 124)
    assert scratch_box.union(scratch_truth).corners == scratch_box.corners, "one box holds the scratch's pieces"
    assert scratch_box.height < 125 and scratch_box.width < 25, "a thin box along it"
    plain = np.repeat(grain(np.random.default_rng(3), 160)[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)
    assert len(suggested_boxes(estimate_defect_mask(plain))) <= 1


def rust_captures(folder, rng: np.random.Generator, count: int = 3, size: int = 64) -> None:
    """Bare colour captures (no masks, no boxes): bluish steel with a redder, rust-coloured stain on each."""
    folder.mkdir(parents=True)
    for number in range(count):
        pixels = np.repeat(grain(rng, size)[..., None], 3, axis=2) * np.array([0.95, 1.0, 1.1])
        stain = np.zeros((size, size), np.uint8)
        cv2.circle(stain, tuple(int(v) for v in rng.integers(16, size - 16, 2)), 9, 1, -1)
        pixels[stain > 0] *= np.array([1.35, 1.0, 0.7])
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"rust_{number}.png")


def test_a_class_fine_tuned_on_bare_colour_captures_learns_its_defect_colour_from_estimated_masks(tiny_model, tmp_path):
    rust_captures(tmp_path / "dataset" / "rust", np.random.default_rng(2))
    result = finetune_folder(tmp_path / "dataset", tmp_path / "run", model=str(tiny_model), steps=2, batch_size=2)
    assert result.status == "completed"
    token = read_adapter(tmp_path / "run").tokens["rust"]
    red, blue = token.defect_tint
    assert red > 0.1 and blue < -0.1, "its stains are redder and less blue than their steel"
    assert red < np.log(1.35) + 0.05 and blue > np.log(0.7) - 0.05, "no more than the stain's own colour"
    assert token.defect_masks == ESTIMATED_MASKS
    assert "(estimated from its images: none came with a mask)" in token.learnt_summary()
