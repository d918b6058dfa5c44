"""The yardstick: its diversity figures (samples, classic augmentation and its geometric part against the shots) and its
summary over the draws of every process that shared a work folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from bench.fewshot_yardstick import (
    DRAW_RESULT,
    MASKED_ENDED,
    PER_CLASS,
    RECALL,
    STEPPED,
    STOPPED,
    build_parser,
    diversity,
    draw_adapter,
    draw_shots,
    draw_slabs,
    draws_with_options,
    generate_masked,
    generate_samples,
    recorded_options,
    stepped_down,
    summarize,
    write_json,
)
from engine.batch import FLAGGED_FOLDER, generate_to_folder
from engine.data import MASK_SUFFIX, list_images
from engine.evaluation.realism import SHIPPED_REFERENCE
from engine.generation.generate import read_png_parameters
from engine.generation.pipeline import load_pipeline
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
    (tmp_path / "synthetic" / "inclusion" / "copy_0.png").unlink()
    Image.fromarray(make_steel_like(rng, 64, "scratches")).save(tmp_path / "synthetic" / "inclusion" / "other.png")
    spread = diversity(tmp_path / "shots", tmp_path / "synthetic", per_class=6, seed=0)
    assert set(spread) == {"ours", "classic", "classic_geometric", PER_CLASS}
    per_class = spread[PER_CLASS]
    # The copies are at no distance; the one scratch among the inclusion samples is all of that class's distance.
    assert per_class["ours"]["scratches"] < 1e-4 < per_class["ours"]["inclusion"]
    assert spread["ours"] == pytest.approx(np.mean(list(per_class["ours"].values())), abs=1e-4)
    assert spread["classic"] > 1e-3 and spread["classic_geometric"] > 1e-3
    assert set(per_class["classic"]) == {"scratches", "inclusion"}
    assert spread == diversity(tmp_path / "shots", tmp_path / "synthetic", per_class=6, seed=0)


def draw(real: float, synthetic: float, classic: float, both: float) -> dict:
    return {
        "real": real,
        "real+synthetic": synthetic,
        "real+classic": classic,
        "real+classic+synth": both,
        "diversity": {"ours": 0.05, "classic": 0.03, "classic_geometric": 0.01},
    }


def test_summary_gives_the_bars_as_paired_gains_per_draw():
    draws = {"0": draw(0.80, 0.86, 0.85, 0.89), "1": draw(0.70, 0.74, 0.75, 0.77)}
    summary, lines = summarize(draws)
    assert summary["real+classic"] == {"mean": 0.8, "std": 0.05}
    assert summary["classic+ours - classic"] == {"mean": 0.03, "std": 0.01}
    assert summary["ours - classic"] == {"mean": 0.0, "std": 0.01}
    text = "\n".join(lines)
    assert "+3.0 ± 1.0 points (per draw +4.0, +2.0); bar ≥ +3: met" in text
    assert "ours - classic" in text and "(per draw +1.0, -1.0); bar ≥ +0: met" in text
    draws["1"]["real+synthetic (gate off)"] = 0.72
    assert "real+synthetic (gate off)  0.720 ± 0.000 (1 of 2 draws)" in "\n".join(summarize(draws)[1])
    _, lines = summarize({"0": draw(0.80, 0.84, 0.85, 0.86)})
    assert "bar ≥ +3: not met" in "\n".join(lines) and "bar ≥ +0: not met" in "\n".join(lines)


def test_summary_gives_the_distance_to_the_shots_per_class_over_the_draws_that_recorded_it():
    draws = {"0": draw(0.80, 0.86, 0.85, 0.89), "1": draw(0.70, 0.74, 0.75, 0.77), "2": draw(0.7, 0.7, 0.7, 0.7)}
    for seed, ours in (("0", 0.02), ("1", 0.04)):
        draws[seed]["diversity"][PER_CLASS] = {
            "ours": {"pits": ours, "seams": 0.1},
            "classic": {"pits": 0.01, "seams": 0.2},
            "classic_geometric": {"pits": 0.005, "seams": 0.01},
        }
    summary, lines = summarize(draws)
    assert summary[f"diversity_{PER_CLASS}"]["ours"] == {"pits": 0.03, "seams": 0.1}
    assert summary[f"diversity_{PER_CLASS}"]["classic"] == {"pits": 0.01, "seams": 0.2}
    text = "\n".join(lines)
    assert "distance to nearest shot per class (2 of 3 draws):" in text
    assert next(line for line in lines if line.strip().startswith("classic ")).split()[1:] == ["0.0100", "0.2000"]
    assert f"diversity_{PER_CLASS}" not in summarize({"0": draw(0.80, 0.86, 0.85, 0.89)})[0]


def test_summary_gives_each_arms_recall_per_class_and_what_ours_adds_to_classic_per_class():
    draws = {"0": draw(0.80, 0.86, 0.85, 0.89), "1": draw(0.70, 0.74, 0.75, 0.77), "2": draw(0.7, 0.7, 0.7, 0.7)}
    for seed, classic, both in (("0", 0.9, 0.8), ("1", 0.7, 1.0)):
        draws[seed][RECALL] = {
            "real+classic": {"pits": classic, "seams": 0.5},
            "real+classic+synth": {"pits": both, "seams": 0.75},
        }
    summary, lines = summarize(draws)
    assert summary[RECALL]["real+classic"] == {"pits": 0.8, "seams": 0.5}
    assert summary[RECALL]["real+classic+synth"] == {"pits": 0.9, "seams": 0.75}
    assert summary[RECALL]["classic+ours - classic"] == {"pits": 0.1, "seams": 0.25}
    assert summary["real+classic"] == {"mean": 0.7667, "std": 0.0624}
    text = "\n".join(lines)
    assert "recall per class (2 of 3 draws):" in text
    gain_line = next(line for line in lines if line.strip().startswith("classic+ours - classic") and "±" not in line)
    assert gain_line.split()[-2:] == ["+10.0", "+25.0"]
    # Draws recorded before the recall was are summarised as before.
    assert RECALL not in summarize({"0": draw(0.80, 0.86, 0.85, 0.89)})[0]


def test_the_summary_collects_the_draws_of_every_process_run_with_the_same_options(tmp_path):
    options = {"strength": 0.8, "init_mix": {"source": 0.5, "geometric": 0.5}, "per_class": 100}
    for seed, value in ((10, 0.9), (2, 0.8)):
        write_json(tmp_path / f"seed{seed}" / DRAW_RESULT, {"options": options, "result": draw(value, 0, 0, 0)})
    other = {**options, "strength": 0.6}
    write_json(tmp_path / "seed3" / DRAW_RESULT, {"options": other, "result": draw(0.5, 0, 0, 0)})
    draws = draws_with_options(tmp_path, options)
    assert list(draws) == ["2", "10"]
    assert [d["real"] for d in draws.values()] == [0.8, 0.9]
    assert list(draws_with_options(tmp_path, other)) == ["3"]
    assert not list(tmp_path.rglob(".*"))


def test_a_draw_the_realism_gate_stops_is_recorded_and_fails_the_bars(tiny_model, tiny_adapter, tmp_path):
    rng = np.random.default_rng(3)
    for kind in ("inclusion", "scratches"):
        (tmp_path / "shots" / kind).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(make_steel_like(rng, 40, kind)[..., 0]).save(tmp_path / "shots" / kind / f"{i}.png")
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    options = {"strength": 0.5, "realism_threshold": 1.0}
    stopped = generate_samples(pipe, tmp_path / "shots", tmp_path / "synthetic", 2, 2, 0, options)
    assert list(stopped) == [STOPPED] and stopped[STOPPED]["class"] == "inclusion"
    assert "below the realism threshold 1.0" in stopped[STOPPED]["reason"]
    assert not (tmp_path / "synthetic" / "scratches").exists()
    opened = generate_samples(pipe, tmp_path / "shots", tmp_path / "open", 2, 2, 0, {**options, "realism_threshold": 0})
    assert opened is None and all(len(list_images(tmp_path / "open" / k)) == 2 for k in ("inclusion", "scratches"))

    summary, lines = summarize({"0": draw(0.80, 0.86, 0.85, 0.89), "2": stopped})
    text = "\n".join(lines)
    assert summary[STOPPED] == {"2": stopped[STOPPED]} and summary["real"] == {"mean": 0.8, "std": 0.0}
    assert "seed 2: stopped at inclusion: " in text and "bar ≥ +3: not met (1 draw stopped)" in text
    assert summarize({"2": stopped}) == ({STOPPED: {"2": stopped[STOPPED]}}, [lines[0]])


def test_the_classes_the_gate_stepped_down_are_recorded_and_listed(tiny_model, tiny_adapter, tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "shots").mkdir()
    for i in range(2):
        Image.fromarray(make_steel_like(rng, 40, "scratches")[..., 0]).save(tmp_path / "shots" / f"{i}.png")
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    synthetic = tmp_path / "synthetic"
    # Scratches made at 0.5 and then 0.4, as a stepped-down batch is; patches at 0.5 only.
    for strength, count in ((0.5, 2), (0.4, 1)):
        out = tmp_path / f"at-{strength}"
        written = generate_to_folder(
            None, None, "scratches", tmp_path / "shots", count, out, strength=strength, steps=10, pipe=pipe,
            realism_threshold=None,
        )  # fmt: skip
        if strength == 0.5:
            shutil.copytree(out, synthetic / "patches")
        (synthetic / "scratches").mkdir(exist_ok=True)
        for path in written:
            path.rename(synthetic / "scratches" / f"{strength}-{path.name}")
    stepped = stepped_down(synthetic)
    assert stepped == {"scratches": {"0.50": 2, "0.40": 1}}
    summary, lines = summarize({"0": draw(0.80, 0.86, 0.85, 0.89), "1": draw(0.7, 0.7, 0.7, 0.7) | {STEPPED: stepped}})
    assert STEPPED not in summary and "  seed 1: the realism gate stepped down scratches 2 at 0.50, 1 at 0.40" in lines
    assert summary["real"] == {"mean": 0.75, "std": 0.05}


def test_a_given_adapter_replaces_the_draws_fine_tune_and_is_recorded_with_the_options(tiny_adapter, tmp_path):
    base = ["--pool", "p", "--val", "v", "--work", str(tmp_path)]
    defaults = recorded_options(build_parser().parse_args(base))
    assert "adapter" not in defaults and "lora_rank" not in defaults and "finetune_preset" not in defaults
    given = build_parser().parse_args([*base, "--adapter", str(tiny_adapter)])
    assert recorded_options(given) == {**defaults, "adapter": str(tiny_adapter.resolve())}
    assert draw_adapter(given, 0, tmp_path / "shots") == tiny_adapter
    assert not (tmp_path / "seed0").exists()
    tuned = build_parser().parse_args([*base, "--finetune-preset", "cpu-thorough", "--lora-rank", "16"])
    assert recorded_options(tuned) == {**defaults, "finetune_preset": "cpu-thorough", "lora_rank": 16}
    longer = build_parser().parse_args([*base, "--finetune-steps", "600"])
    assert recorded_options(longer) == {**defaults, "finetune_steps": 600}
    sharper = build_parser().parse_args([*base, "--recognizer-size", "128"])
    assert recorded_options(sharper) == {**defaults, "recognizer_size": 128}
    finer = build_parser().parse_args([*base, "--steps", "40"])
    assert recorded_options(finer) == {**defaults, "sampler_steps": 40}
    not_an_adapter = build_parser().parse_args([*base, "--adapter", str(tmp_path)])
    with pytest.raises(ValueError, match="not a finished adapter folder"):
        draw_adapter(not_an_adapter, 0, tmp_path / "shots")


def test_quarter_turns_are_given_per_class_and_recorded_only_when_set(tmp_path):
    base = ["--pool", "p", "--val", "v", "--work", str(tmp_path)]
    defaults = recorded_options(build_parser().parse_args(base))
    assert "quarter_turns" not in defaults
    turned = build_parser().parse_args([*base, "--quarter-turns", "scratches=0.5, rolled-in scale=0.25"])
    assert recorded_options(turned) == {**defaults, "quarter_turns": {"scratches": 0.5, "rolled-in scale": 0.25}}
    for wrong in ("scratches=2", "=0.5", "scratches=half"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*base, "--quarter-turns", wrong])


def test_masked_repaints_are_painted_on_clean_slabs_outside_the_shots_and_judged_by_the_class(
    tiny_model, tiny_adapter, tmp_path
):
    rng = np.random.default_rng(5)
    pool = tmp_path / "pool"
    for kind in ("inclusion", "scratches"):
        (pool / kind).mkdir(parents=True)
        for i in range(3):
            # The defect in the top 40 rows; the 88 rows below are clean steel.
            Image.fromarray(make_steel_like(rng, 128, kind)[..., 0]).save(pool / kind / f"{i}.png")
            mask = np.zeros((128, 128), dtype=np.uint8)
            mask[:40] = 255
            Image.fromarray(mask).save(pool / kind / f"{i}{MASK_SUFFIX}")
        # An image without a mask tells no clean steel.
        Image.fromarray(make_steel_like(rng, 128, kind)[..., 0]).save(pool / kind / "unmarked.png")
    shots = draw_shots(pool, 1, 0, tmp_path / "shots")
    slabs = draw_slabs(pool, shots, tmp_path / "slabs", 0, count=10)
    shot_pixels = [np.asarray(Image.open(p))[40:] for p in shots.glob("*/*.png")]
    slab_pixels = [np.asarray(Image.open(p).convert("L")) for p in list_images(slabs)]
    marked_outside_shots = [p for p in pool.glob("*/[0-9].png") if not (shots / p.parent.name / p.name).exists()]
    assert len(slab_pixels) == len(marked_outside_shots) >= 4 and all(s.shape == (88, 128) for s in slab_pixels)
    assert not any(np.array_equal(s, shot) for s in slab_pixels for shot in shot_pixels)
    assert draw_slabs(pool, shots, tmp_path / "other", 1, count=2) and len(list_images(tmp_path / "other")) == 2
    with pytest.raises(ValueError, match="masked repaints need pool images with boxes or masks"):
        draw_slabs(shots, tmp_path / "none", tmp_path / "empty", 0)

    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    ended = generate_masked(pipe, shots, slabs, tmp_path / "masked", 2, 2, 0)
    for kind in ("inclusion", "scratches"):
        folder = tmp_path / "masked" / kind
        made = list_images(folder) + (
            list_images(folder / FLAGGED_FOLDER) if (folder / FLAGGED_FOLDER).is_dir() else []
        )
        assert made and (len(list_images(folder)) == 2) == (kind not in ended)
        for path in made:
            params = read_png_parameters(path.read_bytes())
            assert path.with_name(path.stem + MASK_SUFFIX).is_file() and params.boxes
            assert all(source.startswith("slab_") for source in params.init["sources"])
            # One shot is too few of the class's own; the shipped NEU features judge it, never the clean slabs.
            assert params.realism.reference == SHIPPED_REFERENCE
    # A rerun keeps what the first made, a class the gate ended included (the tiny model's repaints score far below
    # the shipped features' threshold: the gate ends its batches).
    made = {path: path.stat().st_mtime_ns for path in (tmp_path / "masked").rglob("*.png")}
    again = generate_masked(pipe, shots, slabs, tmp_path / "masked", 2, 2, 0)
    assert ended and set(again) == set(ended) and {p: p.stat().st_mtime_ns for p in made} == made
    # With the shots' marks beside them (--paste-shots), the same draw's shots' real defects are pasted in (a draw
    # whose shots are all marked: the unmarked image has no defect to paste).
    seed = next(
        draw
        for draw in range(1, 30)
        if "unmarked.png" not in {p.name for p in draw_shots(pool, 1, draw, tmp_path / f"d{draw}").rglob("*")}
    )
    shots = tmp_path / f"d{seed}"
    marked = draw_shots(pool, 1, seed, tmp_path / "marked", with_masks=True)
    assert sorted(p.name for p in marked.glob("*/*")) == sorted(
        name for p in shots.glob("*/*") for name in (p.name, p.stem + MASK_SUFFIX)
    ), "the same shots, their masks beside them"
    generate_masked(pipe, shots, slabs, tmp_path / "pasted", 2, 2, 0, marked)
    for kind in ("inclusion", "scratches"):
        (shot,) = [p.name for p in list_images(shots / kind)]
        for path in (tmp_path / "pasted" / kind).rglob("*.png"):
            if not path.name.endswith(MASK_SUFFIX):
                assert {paste["source"] for paste in read_png_parameters(path.read_bytes()).masked.pasted} == {shot}


def test_summary_gives_what_the_masked_repaints_add_where_every_draw_has_them():
    draws = {"0": draw(0.80, 0.86, 0.85, 0.89), "1": draw(0.70, 0.74, 0.75, 0.77)}
    assert not any("masked" in line for line in summarize(draws)[1])
    draws["0"] |= {"real+masked": 0.78, "real+classic+masked": 0.86, "real+synthetic+masked": 0.87}
    draws["1"] |= {"real+masked": 0.72, "real+classic+masked": 0.74, "real+synthetic+masked": 0.74}
    draws["1"][MASKED_ENDED] = {"scratches": "12 candidates fell below the realism threshold"}
    summary, lines = summarize(draws)
    assert summary["masked - real"] == {"mean": 0.0, "std": 0.02}
    assert summary["ours+masked - ours"] == {"mean": 0.005, "std": 0.005}
    text = "\n".join(lines)
    assert "masked - real             +0.0 ± 2.0 points (per draw -2.0, +2.0)" in text
    assert "classic+masked - classic  +0.0 ± 1.0 points (per draw +1.0, -1.0)" in text
    assert "scratches" not in text
