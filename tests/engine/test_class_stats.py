"""What the training pool knows of a class: which ways it runs (the quarter turns that match a batch to it) and its
exposures."""

from __future__ import annotations

import json
import logging
import math
import random

import numpy as np
import pytest
from PIL import Image

from engine.generation.class_stats import (
    BOTH_WAYS_TURN_SHARE,
    MIN_DIRECTED_IMAGES,
    STATS_FILE,
    DirectionCounts,
    class_exposures,
    class_turn_share,
    count_directions,
    direction_of,
    exposure_spread,
    grey_exposure,
    load_class_statistics,
    matched_turn_share,
    modelled_exposures,
    pool_exposure,
    pool_minority_share,
    write_class_statistics,
)
from engine.generation.parameters import MIN_OWN_REFERENCES
from engine.generation.variation import quarter_turn
from tests.support import make_steel_like


def _scratch(seed: int, size: int = 48) -> Image.Image:
    """A noise slab with two dark vertical lines (the test data's scratches)."""
    return Image.fromarray(make_steel_like(np.random.default_rng(seed), size, "scratches")[..., 0])


def test_a_scratch_runs_its_way_and_a_quarter_turn_turns_it_and_plain_noise_runs_neither():
    vertical = _scratch(0)
    assert direction_of(vertical) == "vertical"
    turned, _ = quarter_turn(vertical, random.Random(0))
    assert direction_of(turned) == "horizontal"
    noise = Image.fromarray(np.random.default_rng(0).normal(128, 12, (48, 48)).clip(0, 255).astype(np.uint8))
    assert direction_of(noise) is None
    assert direction_of(Image.new("L", (16, 16), 128)) is None, "a flat image has no gradients at all"
    assert direction_of(vertical.convert("RGB").resize((96, 48))) == "vertical", "colour and non-square images too"
    assert count_directions([vertical, turned, noise]) == DirectionCounts(horizontal=1, vertical=1, images=3)


def test_the_matched_share_brings_the_inits_directions_to_the_references():
    scratches = DirectionCounts(horizontal=51, vertical=145, images=200)
    target = 51 / 196
    for horizontal, vertical in [(0, 5), (1, 4), (0, 3)]:
        inits = DirectionCounts(horizontal, vertical, 5)
        share = matched_turn_share(scratches, inits)
        current = horizontal / (horizontal + vertical)
        # Turning a share t of the inits: h + t (1 - 2h) of the directed ones run horizontally, as in the pool.
        assert current + share * (1 - 2 * current) == pytest.approx(target)
    assert matched_turn_share(scratches, DirectionCounts(0, 5, 5)) == pytest.approx(0.26, abs=0.005)
    # A class that keeps its direction is not turned; inits leaning further the pool's way are not turned back.
    rolled_in = DirectionCounts(horizontal=136, vertical=0, images=200)
    assert matched_turn_share(rolled_in, DirectionCounts(3, 0, 5)) == 0.0
    assert matched_turn_share(scratches, DirectionCounts(2, 3, 5)) == 0.0
    # Inits that run the other way from the whole pool are all turned.
    assert matched_turn_share(rolled_in, DirectionCounts(0, 4, 5)) == 1.0
    # Nothing to match: inits without a direction, a reference with too few directed images, half and half.
    assert matched_turn_share(scratches, DirectionCounts(0, 0, 5)) == 0.0
    few = DirectionCounts(horizontal=MIN_DIRECTED_IMAGES - 2, vertical=1, images=200)
    assert matched_turn_share(few, DirectionCounts(0, 5, 5)) == 0.0
    assert matched_turn_share(scratches, DirectionCounts(2, 2, 5)) == 0.0


def test_a_class_turns_where_the_pool_or_its_own_few_images_show_it_runs_both_ways():
    stats = {"classes": {"scratches": {"horizontal": 51, "vertical": 145, "images": 200}}}
    shots = [_scratch(seed) for seed in range(5)]
    known = class_turn_share("scratches", shots, stats)
    assert known.share == pytest.approx(0.26, abs=0.005)
    assert "51 horizontal, 145 vertical of 200" in known.reason and "0 horizontal, 5 vertical of 5" in known.reason
    unknown = class_turn_share("edge crack", shots, stats)
    # One-way shots of a class the pool does not know: the pool's average share of a directed class's other way.
    assert unknown.share == pytest.approx(pool_minority_share(stats)) == pytest.approx(51 / 196)
    assert "run one way" in unknown.reason and "0 horizontal, 5 vertical of 5" in unknown.reason
    plain = [Image.fromarray(np.full((64, 64), 128, np.uint8)) for _ in range(5)]
    assert class_turn_share("edge crack", plain, stats).share == 0.0, "no directed shot: nothing to turn"
    assert class_turn_share("edge crack", shots, {"classes": {}}).share == 0.0, "a pool without directed classes"
    both_ways = [*shots[:4], quarter_turn(shots[4], random.Random(0))[0]]
    mixed = class_turn_share("edge crack", both_ways, stats)
    assert mixed.share == BOTH_WAYS_TURN_SHARE and "1 horizontal, 4 vertical of 5" in mixed.reason
    assert class_turn_share("scratches", both_ways, stats).share < BOTH_WAYS_TURN_SHARE, "a known class: the pool's mix"
    many = [_scratch(seed) for seed in range(MIN_OWN_REFERENCES)]
    own = class_turn_share("scratches", many, stats)
    assert own.share == 0.0 and f"{MIN_OWN_REFERENCES} images set its directions" in own.reason


def test_the_shipped_statistics_are_the_training_pools_and_rebuild_from_neu(tmp_path):
    shipped = load_class_statistics()
    assert STATS_FILE.stat().st_size < 32768
    scratches = shipped["classes"]["scratches"]
    assert scratches["horizontal"] > 0 and scratches["vertical"] > scratches["horizontal"]
    assert all(entry["images"] <= 200 for entry in shipped["classes"].values()), "the training pool only"
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(1, 8):
        picture = _scratch(i) if i % 2 else quarter_turn(_scratch(i), random.Random(i))[0]
        picture.save(images / f"s{i}.png")
        rows.append(f"images/s{i}.png,scratches,{i},\n")
    (tmp_path / "manifest.csv").write_text("image,cls,index,annotation\n" + "".join(rows))
    out, classes = write_class_statistics(tmp_path, tmp_path / "stats.json")
    # Of 7 images, positions 0 and 6 (s1, s7, vertical) are validation images: s3, s5 vertical, s2, s4, s6 turned.
    entry = classes["scratches"]
    assert (entry["horizontal"], entry["vertical"], entry["images"]) == (3, 2, 5)
    expected = [[round(v, 1) for v in grey_exposure(Image.open(images / f"s{i}.png"))] for i in range(2, 7)]
    assert entry["exposures"] == expected

    import launch

    cli_out = tmp_path / "cli.json"
    assert launch.main(["evaluate", "class-stats", "--neu", str(tmp_path), "--out", str(cli_out)]) == 0
    assert json.loads(cli_out.read_text()) == json.loads(out.read_text())
    with pytest.raises(FileNotFoundError, match="class-stats"):
        load_class_statistics(tmp_path / "missing.json")


def test_a_known_class_takes_the_pools_exposures_and_half_its_samples_one_of_them():
    dark = [Image.fromarray(np.full((32, 32), 60, np.uint8)) for _ in range(5)]
    stats = {"classes": {"rolled-in_scale": {"horizontal": 2, "vertical": 0, "images": 2, "exposures": [[150, 20]]}}}
    known = class_exposures("rolled-in_scale", dark, stats)
    assert known.exposures == [[150, 20]] and "training pool's 1 rolled-in_scale (grey mean 150–150)" in known.reason
    own = class_exposures("rolled-in_scale", dark * 2, stats)
    assert own.exposures == [] and "10 images set its exposure" in own.reason, "ten images speak for the line"
    assert len(class_exposures("rolled-in_scale", dark).exposures) == 200, "the shipped pool's"
    sample = _scratch(0).convert("RGB")
    rng = random.Random(0)
    outcomes = [pool_exposure(sample, rng, [[150.0, 20.0]]) for _ in range(40)]
    exposed = [(image, details) for image, details in outcomes if details]
    assert 10 <= len(exposed) <= 30, "about half"
    for image, details in exposed:
        mean, std = grey_exposure(image)
        assert details == {"pool_exposure": [150.0, 20.0]} and image.mode == "RGB"
        assert abs(mean - 150) < 1 and abs(std - 20) < 1
    assert all(image is sample for image, details in outcomes if not details)
    assert pool_exposure(sample, rng, []) == (sample, {})


def test_a_class_the_pool_does_not_know_takes_exposures_modelled_about_its_own_images():
    # Two pool classes whose images sit 0.2 either side of their class's log grey mean and share one spread.
    up, down = math.exp(0.2), math.exp(-0.2)
    stats = {
        "classes": {
            "dark": {"exposures": [[50 * up, 10], [50 * down, 10]]},
            "bright": {"exposures": [[150 * up, 30], [150 * down, 30]]},
        }
    }
    spread = exposure_spread(stats)
    # Four deviations of ±0.2 about two centres: 4 × 0.04 / (4 − 2) degrees of freedom.
    assert spread == pytest.approx(np.array([[0.08, 0.0], [0.0, 0.0]]), abs=1e-4)
    shots = [Image.fromarray(np.full((32, 32), level, np.uint8)) for level in (70, 80, 90)]
    for shot in shots:
        shot.putpixel((0, 0), 0)
    centre = np.exp(np.mean([np.log(grey_exposure(shot)) for shot in shots], axis=0))
    choice = class_exposures("edge crack", shots, stats)
    assert "its 3 images' grey mean 80" in choice.reason and "log sd 0.28 and 0.00" in choice.reason
    drawn = np.array(choice.exposures)
    assert len(drawn) == 200 and drawn.tolist() == modelled_exposures(shots, spread), "the same images, the same draws"
    log_means = np.log(drawn[:, 0])
    assert abs(log_means.mean() - math.log(centre[0])) < 0.05
    # Truncated at two standard deviations, the draws spread a little less than the pool's classes.
    assert 0.75 * math.sqrt(0.08) < log_means.std() < 1.02 * math.sqrt(0.08)
    assert np.all(np.abs(log_means - math.log(centre[0])) <= 2 * math.sqrt(0.08) + 1e-3)
    assert np.allclose(drawn[:, 1], round(centre[1], 1), atol=0.06), "no spread in std: the shots' own"
    assert class_exposures("edge crack", shots * 4, stats).exposures == [], "ten images speak for the line"
    assert modelled_exposures([], spread) == []
    shipped = exposure_spread(load_class_statistics())
    assert 0.2 < math.sqrt(shipped[0, 0]) < 0.45 and 0.2 < math.sqrt(shipped[1, 1]) < 0.45


def test_generate_logs_the_share_it_turns_and_takes_a_number_instead(tiny_model, tiny_adapter, tmp_path, caplog):
    import launch
    from engine.generation.generate import read_png_parameters

    shots = tmp_path / "shots"
    shots.mkdir()
    for seed in range(3):
        _scratch(seed).save(shots / f"s{seed}.png")
    common = ["generate", "--model", str(tiny_model), "--adapter", str(tiny_adapter), "--init", str(shots)]
    common += ["--token", "scratches", "--num", "2", "--steps", "3", "--realism-threshold", "off"]
    with caplog.at_level(logging.INFO, logger="engine.batch"):
        assert launch.main([*common, "--out", str(tmp_path / "auto")]) == 0
    assert "Quarter turns for scratches: 26 % of the varied inits" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.batch"):
        assert launch.main([*common, "--out", str(tmp_path / "all"), "--quarter-turns", "1"]) == 0
    assert "Quarter turns for" not in caplog.text, "a share given is not matched"
    turned = [read_png_parameters(p.read_bytes()).init for p in sorted((tmp_path / "all").glob("*.png"))]
    assert len(turned) == 2 and all(init["turn"] in (90, 270) for init in turned)


def test_the_pool_minority_share_averages_the_directed_classes_other_ways():
    stats = {
        "classes": {
            "scratches": {"horizontal": 51, "vertical": 145, "images": 200},
            "rolled-in_scale": {"horizontal": 136, "vertical": 0, "images": 200},
            "crazing": {"horizontal": 0, "vertical": 0, "images": 200},
            "few": {"horizontal": 2, "vertical": 3, "images": 200},
        }
    }
    assert pool_minority_share(stats) == pytest.approx((51 / 196 + 0.0) / 2), "undirected and sparse classes left out"
    assert pool_minority_share(load_class_statistics()) == pytest.approx(0.056, abs=0.001)
