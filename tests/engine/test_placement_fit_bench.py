"""The placement bench: a new class's own few boxes against NEU's pooled ones, measured on its validation defects."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.placement_fit import ARMS, draw, energy_distance, table
from engine.data import MASK_SUFFIX


def test_a_class_placed_from_its_own_boxes_is_sized_like_its_validation_defects(tmp_path):
    rng = np.random.default_rng(0)
    for part, count in (("pool", 6), ("val", 4)):
        folder = tmp_path / "mill" / part / "mill type 1"
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(90, 160, (200, 200), dtype=np.uint8)).save(folder / f"{i} photo.png")
            mask = np.zeros((200, 200), dtype=np.uint8)
            for y, x in rng.integers(10, 180, (3, 2)):
                mask[y : y + 10, x : x + 12] = 255  # small pits, unlike NEU's boxes (most are tens of px)
            Image.fromarray(mask).save(folder / f"{i} photo{MASK_SUFFIX}")
    result = draw(tmp_path / "mill", tmp_path / "work", 0, 3, 20)["mill type 1"]
    assert result["own"][0] < 0.5 * result["pooled"][0], "its own boxes, not NEU's pooled sizes"
    assert 1.5 < result["real"][1] <= 3 and 1.5 < result["own"][1] <= 3, "about as many defects as its images have"
    lines = table([{"mill type 1": result}])
    assert len(lines) == 3 and all(arm in lines[0] for arm in ARMS)
    points = rng.normal(size=(50, 2))
    assert energy_distance(points, points) == 0 and energy_distance(points, points + 3) > 1
