"""One box type: conversions, union, growth, and the two ways of drawing boxes into a mask."""

from __future__ import annotations

import numpy as np
import pytest

from engine.boxes import Box, bounding_box, from_mask, to_mask, union


def test_a_box_reads_dicts_and_corners_and_writes_the_stored_form() -> None:
    stored = {"label": "scratches", "xmin": 3, "ymin": 4, "xmax": 10, "ymax": 12}
    box = Box.of(stored)
    assert box == Box(3, 4, 10, 12, "scratches") and box.as_dict() == stored
    assert Box.of((3, 4, 10, 12)) == Box(3, 4, 10, 12) and (box.width, box.height) == (7, 8)


def test_union_keeps_a_shared_label_only() -> None:
    assert union([]) is None
    assert union([Box(0, 0, 5, 5, "a"), {"label": "a", "xmin": 8, "ymin": 2, "xmax": 9, "ymax": 20}]) == Box(
        0, 0, 9, 20, "a"
    )
    assert Box(0, 0, 5, 5, "a").union(Box(1, 1, 2, 2, "b")).label == ""


def test_strict_masks_refuse_boxes_outside_and_clamped_masks_keep_the_part_inside() -> None:
    overrun = Box(90, 90, 120, 101, "inclusion")
    with pytest.raises(ValueError, match="outside the 100×100 image"):
        to_mask([overrun], 100, 100)
    clamped = to_mask([overrun, Box(200, 200, 210, 210)], 100, 100, clamp=True)
    assert clamped.sum() == 10 * 10 and clamped[90:, 90:].all()
    assert np.array_equal(to_mask([Box(90, 90, 100, 100)], 100, 100), clamped)


def test_boxes_of_a_mask_round_trip() -> None:
    mask = to_mask([Box(5, 5, 15, 25), Box(40, 30, 70, 35)], 80, 60)
    assert np.array_equal(to_mask(from_mask(mask), 80, 60), mask)
    assert bounding_box(mask) == Box(5, 5, 70, 35)


def test_iou_of_boxes() -> None:
    box = Box(0, 0, 10, 10)
    assert box.iou(box) == 1.0
    assert box.iou(Box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box.iou(Box(10, 0, 20, 10)) == 0.0 and Box(3, 3, 3, 3).iou(Box(3, 3, 3, 3)) == 0.0


def test_a_box_scaled_to_a_resized_image() -> None:
    assert Box(10, 4, 31, 20, "pit").scaled(0.5, 2.0) == Box(5, 8, 16, 40, "pit")


def test_a_box_moved_into_a_crop() -> None:
    assert Box(10, 4, 31, 20, "pit").moved(-8, -4) == Box(2, 0, 23, 16, "pit")
