"""The placement-labels bench: cell classifiers fitted on a draw's shots and its masked repaints, judged on the
validation images' boxes."""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from bench.placement_labels import ARMS, draw_counts, labelled, main, scores
from engine.batch import FLAGGED_FOLDER
from engine.boxes import to_mask
from engine.data import MASK_SUFFIX
from engine.evaluation.features import load_feature_net
from tests.support import textured


def _write(folder, name, seed, with_mask=True):
    folder.mkdir(parents=True, exist_ok=True)
    pixels, box = textured(seed)
    Image.fromarray(pixels).save(folder / f"{name}.png")
    if with_mask:
        mask = to_mask([box], pixels.shape[1], pixels.shape[0])
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{name}{MASK_SUFFIX}")
    return folder / f"{name}.png"


def test_a_texture_taught_by_shots_or_repaints_is_found_on_the_validation_images(tmp_path, capsys, monkeypatch):
    kind = "oil stain"
    pool, draw, val = tmp_path / "pool", tmp_path / "work" / "seed0", tmp_path / "val"
    for i in range(3):
        shot = _write(pool / kind, f"real {i}", i)
        (draw / "shots" / kind).mkdir(parents=True, exist_ok=True)
        (draw / "shots" / kind / shot.name).symlink_to(shot.resolve())
        _write(draw / "masked" / kind, f"{kind}_{i:05d}", 10 + i)
        _write(val / kind, f"val {i}", 20 + i)
    _write(draw / "masked" / kind / FLAGGED_FOLDER, f"{kind}_00003", 13)
    _write(val / kind, "unboxed", 30, with_mask=False)
    net = load_feature_net()
    held_out = labelled(sorted((val / kind).glob("*.png")), net)
    assert len(held_out) == 3

    counts = draw_counts(draw, pool, {kind: held_out}, net)[kind]
    assert list(counts) == list(ARMS)
    for arm in ARMS:
        drawn, _, found, _ = counts[arm]
        recall, precision, f1 = scores(counts[arm])
        assert drawn == 3 and found == 3 and recall == 1.0 and f1 >= 0.6, arm

    monkeypatch.setattr(
        sys, "argv", ["placement_labels", "--work", str(tmp_path / "work"), "--pool", str(pool), "--val", str(val)]
    )
    main()
    out = capsys.readouterr().out
    assert "1 draws (seed0)" in out and "| oil stain | 1.00, " in out and "| all classes | 1.00, " in out
    assert "F1 over all classes, repaints only − shots: " in out
