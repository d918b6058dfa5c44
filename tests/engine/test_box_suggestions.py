"""Box suggestions learnt from a class's boxed images, with the shipped steel feature network."""

from __future__ import annotations

import numpy as np
import pytest

from engine.box_suggestions import (
    METHOD_ESTIMATE,
    METHOD_LEARNT,
    MIN_BOXED_IMAGES,
    BoxedImage,
    cell_map,
    class_suggester,
    f1_of,
)
from engine.boxes import Box, from_mask, match_counts, to_mask
from engine.evaluation.features import load_feature_net
from engine.masks import estimate_defect_mask, suggested_boxes
from tests.support import textured


def boxed(seed: int) -> BoxedImage:
    pixels, box = textured(seed)
    return BoxedImage(pixels, to_mask([box], pixels.shape[1], pixels.shape[0]), estimate_defect_mask(pixels))


@pytest.fixture(scope="module")
def net():
    return load_feature_net()


def test_a_texture_the_estimate_misses_is_suggested_once_a_few_images_are_boxed(net) -> None:
    pixels, box = textured(100)
    estimate = estimate_defect_mask(pixels)
    assert not any(b.iou(box) >= 0.5 for b in suggested_boxes(estimate)), "the image's own steel is the texture"

    suggester = class_suggester([boxed(seed) for seed in range(5)], net)
    assert suggester.method == METHOD_LEARNT and suggester.boxed_images == 5
    assert suggester.learnt_f1 > suggester.estimate_f1
    (found,) = suggester.boxes(pixels, estimate, net, "pitted surface")
    assert found.label == "pitted surface" and found.iou(box) >= 0.7


def test_too_few_boxed_images_keep_the_estimate(net) -> None:
    suggester = class_suggester([boxed(seed) for seed in range(MIN_BOXED_IMAGES - 1)], net)
    assert suggester.method == METHOD_ESTIMATE and suggester.classifier is None and suggester.learnt_f1 is None
    pixels, _ = textured(7)
    estimate = estimate_defect_mask(pixels)
    assert suggester.boxes(pixels, estimate, net) == suggested_boxes(estimate)


def test_a_class_boxed_whole_is_suggested_whole(net) -> None:
    whole = []
    for seed in range(4):
        pixels, _ = textured(seed)
        full = np.ones(pixels.shape[:2], dtype=bool)
        whole.append(BoxedImage(pixels, full, estimate_defect_mask(pixels)))
    suggester = class_suggester(whole, net)
    assert suggester.method == METHOD_LEARNT and suggester.classifier.linear is None
    pixels, _ = textured(9)
    assert suggester.boxes(pixels, estimate_defect_mask(pixels), net) == [Box(0, 0, 160, 120)]


def test_cells_cover_the_image_at_a_32nd_of_its_short_side(net) -> None:
    pixels, _ = textured(3, size=(100, 200))
    cells = cell_map(pixels, net)
    assert cells.grid == (32, 64) and cells.features.shape == (32 * 64, cells.features.shape[1])
    assert np.isfinite(cells.features).all()


def test_matches_count_drawn_boxes_found_and_suggestions_right() -> None:
    drawn = [Box(0, 0, 10, 10), Box(50, 50, 60, 60)]
    suggested = [Box(1, 1, 11, 11), Box(20, 20, 30, 30), Box(0, 0, 9, 10)]
    assert match_counts(drawn, suggested).tolist() == [2, 3, 1, 2]
    assert f1_of(match_counts(drawn, suggested)) == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert f1_of(match_counts(drawn, [])) == 0.0
    assert from_mask(to_mask(drawn, 64, 64)) == drawn
