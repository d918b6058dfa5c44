"""The yardstick's diversity figures: samples, classic augmentation and its geometric part against the shots."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.fewshot_yardstick import diversity
from tests.support import make_steel_like


def test_diversity_measures_copies_as_zero_and_reports_the_geometric_part_of_classic(tmp_path):
    rng = np.random.default_rng(0)
    for kind in ("scratches", "inclusion"):
        for folder in ("shots", "synthetic"):
            (tmp_path / folder / kind).mkdir(parents=True)
        for i in range(3):
            image = Image.fromarray(make_steel_like(rng, 64, kind))
            image.save(tmp_path / "shots" / kind / f"{i}.png")
            image.save(tmp_path / "synthetic" / kind / f"copy_{i}.png")
    spread = diversity(tmp_path / "shots", tmp_path / "synthetic", per_class=6, seed=0)
    assert set(spread) == {"ours", "classic", "classic_geometric"}
    assert abs(spread["ours"]) < 1e-4
    assert spread["classic"] > 1e-3 and spread["classic_geometric"] > 1e-3
    assert spread == diversity(tmp_path / "shots", tmp_path / "synthetic", per_class=6, seed=0)
