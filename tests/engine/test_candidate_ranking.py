"""The candidate-ranking bench: its rankers' orders on known features and the sets it keeps from yardstick runs."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.candidate_ranking import class_consistent_order, coverage_order, link_tree, rank_draw
from engine.evaluation.features import load_feature_net
from engine.generation.generate import png_with_metadata
from engine.generation.parameters import CandidateParameters, Realism
from tests.support import make_steel_like


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_coverage_picks_the_farthest_then_skips_near_duplicates_of_its_picks():
    shots = unit([1, 0, 0])
    candidates = unit([0, 1, 0], [0, 1, 0.01], [0, 0, 1], [1, 0.1, 0])
    # The first two are near duplicates: after one, the other is nearer to the picks than the third candidate.
    assert coverage_order(candidates, shots, keep=3) == [0, 2, 3]
    assert coverage_order(candidates, shots, keep=9) == [0, 2, 3, 1]


def test_class_consistent_puts_candidates_nearest_another_class_last_in_order_of_their_own_class():
    shots = unit([1, 0, 0], [0, 1, 0])
    shot_classes = torch.tensor([0, 1])
    candidates = unit([1, 0.2, 0], [0.1, 1, 0], [0.9, 0.1, 0], [0.5, 1, 0])
    order = class_consistent_order(candidates, 0, shots, shot_classes, random.Random(0))
    assert sorted(order[:2]) == [0, 2] and order[2:] == [3, 1]


def write_candidate(path, image: Image.Image, class_name: str, seed: int, realism: float | None) -> None:
    params = CandidateParameters(class_name, f"<{class_name}>", "", 0.6, 4, 3.0, seed, *image.size)
    params.realism = Realism(score=realism) if realism is not None else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_with_metadata(image, params))


def test_rank_draw_pools_every_run_and_keeps_what_each_ranker_chose(tmp_path):
    rng = np.random.default_rng(0)
    classes = ("scratches", "inclusion")
    runs = [tmp_path / "default", tmp_path / "other"]
    for class_name in classes:
        shots = runs[0] / "seed0" / "shots" / class_name
        shots.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(make_steel_like(rng, 64, class_name)).save(shots / f"{i}.png")
        for run_index, run in enumerate(runs):
            for i in range(4):
                image = Image.fromarray(make_steel_like(rng, 64, class_name))
                # The first candidate was made with the realism gate off: no score, ranked last.
                realism = 0.1 * (run_index * 4 + i) if run_index or i else None
                write_candidate(run / "seed0" / "synthetic" / class_name / f"{i}.png", image, class_name, i, realism)
    kept = rank_draw(runs, 0, keep=3, rankers=["random", "all", "realism", "coverage"], net=load_feature_net())
    assert [len(kept["all"][c]) for c in classes] == [8, 8]
    assert all(len(kept[name][c]) == 3 for name in ("random", "realism", "coverage") for c in classes)
    # The best realism scores are the second run's last three candidates.
    best = [runs[1] / "seed0" / "synthetic" / "scratches" / f"{i}.png" for i in (3, 2, 1)]
    assert kept["realism"]["scratches"] == best
    assert len(set(kept["coverage"]["inclusion"])) == 3
    worst = runs[0] / "seed0" / "synthetic" / "inclusion" / "0.png"
    assert worst in kept["all"]["inclusion"] and worst not in kept["realism"]["inclusion"]
    tree = link_tree(kept["realism"], tmp_path / "kept")
    names = sorted(p.name for p in (tree / "scratches").iterdir())
    assert names == ["0000-other-3.png", "0001-other-2.png", "0002-other-1.png"]
    assert (tree / "scratches" / names[0]).resolve() == kept["realism"]["scratches"][0].resolve()
