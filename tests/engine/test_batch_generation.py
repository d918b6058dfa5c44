"""Batch generation from a class's images: varied inits with their lineage, and the realism gate (flagged, kept)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from engine.batch import FLAGGED_FOLDER, RealismGateError, finetune_folder, generate_to_folder
from engine.data import list_images
from engine.evaluation.realism import MIN_FEW_SHOT_REFERENCES, MIN_OWN_REFERENCES, SHIPPED_REFERENCE
from engine.generation.class_stats import class_exposures, load_class_statistics
from engine.generation.generate import read_png_parameters
from engine.generation.pipeline import load_pipeline
from engine.generation.variation import grain_range
from tests.support import make_steel_like


@pytest.fixture(scope="module")
def pipe(tiny_model, tiny_adapter):
    return load_pipeline(tiny_model, adapter=tiny_adapter)


@pytest.fixture
def shots(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(make_steel_like(rng, 40, "scratches")[..., 0]).save(folder / f"real_{i}.png")
    return folder


def _generate(pipe, shots, out, class_name="scratches", **options):
    return generate_to_folder(None, None, class_name, shots, 6, out, strength=0.5, steps=4, pipe=pipe, **options)


def test_default_generation_varies_its_inits_and_records_them(pipe, shots, tmp_path):
    written = _generate(pipe, shots, tmp_path / "out", realism_threshold=None)
    assert [p.name for p in written] == [f"scratches_{i:05d}.png" for i in range(6)]
    params = [read_png_parameters(p.read_bytes()).as_dict() for p in written]
    kinds = {p["init"]["kind"] for p in params}
    assert kinds <= {"source", "geometric", "mosaic", "warp"} and len({p["seed"] for p in params}) == 6
    assert all(set(p["init"]["sources"]) <= {"real_0.png", "real_1.png", "real_2.png"} for p in params)
    assert all("realism" not in p for p in params)
    plain = generate_to_folder(
        None,
        None,
        "scratches",
        shots,
        2,
        tmp_path / "plain",
        strength=0.5,
        steps=4,
        pipe=pipe,
        vary=False,
        realism_threshold=None,
    )
    assert read_png_parameters(plain[0].read_bytes()).init == {"kind": "source", "sources": ["real_0.png"]}
    warped = _generate(pipe, shots, tmp_path / "warped", realism_threshold=None, init_mix={"warp": 1.0})
    inits = [read_png_parameters(p.read_bytes()).init for p in warped]
    assert {init["kind"] for init in inits} == {"warp"} and all(init["warp_max_shift"] > 0 for init in inits)
    with pytest.raises(ValueError, match="no kind a positive share"):
        _generate(pipe, shots, tmp_path / "none", init_mix={"warp": 0.0})
    assert not (tmp_path / "none").exists()


def test_quarter_turns_turn_that_share_of_a_batchs_inits_and_record_it(pipe, shots, tmp_path):
    written = _generate(pipe, shots, tmp_path / "turned", realism_threshold=None, turn_share=1.0)
    inits = [read_png_parameters(p.read_bytes()).init for p in written]
    assert all(init["turn"] in (90, 270) for init in inits)
    plain = _generate(pipe, shots, tmp_path / "plain", realism_threshold=None)
    assert [read_png_parameters(p.read_bytes()).init["kind"] for p in plain] == [init["kind"] for init in inits]
    with pytest.raises(ValueError, match="varied inits"):
        _generate(pipe, shots, tmp_path / "fixed", realism_threshold=None, turn_share=0.5, vary=False)
    with pytest.raises(ValueError, match="turned a quarter"):
        _generate(pipe, shots, tmp_path / "bad", turn_share=-0.1)


def test_by_default_a_batch_turns_the_share_that_matches_the_classs_directions_in_the_training_pool(
    pipe, shots, tmp_path, caplog
):
    # The test's scratches are vertical lines; turned, they run across, as almost no NEU inclusion does (4 of 197
    # directed images of the training pool): as inclusions, nearly every init is turned back.
    across = tmp_path / "across"
    across.mkdir()
    for path in list_images(shots):
        Image.open(path).transpose(Image.Transpose.ROTATE_90).save(across / path.name)
    with caplog.at_level(logging.INFO, logger="engine.batch"):
        written = _generate(pipe, across, tmp_path / "out", class_name="inclusion", realism_threshold=None)
    turns = [read_png_parameters(p.read_bytes()).init.get("turn") for p in written]
    assert sum(turn in (90, 270) for turn in turns) >= 4, turns
    assert "Quarter turns for inclusion: 98 % of the varied inits" in caplog.text
    assert "4 horizontal, 193 vertical of 200" in caplog.text and "3 horizontal, 0 vertical of 3" in caplog.text
    kept = generate_to_folder(
        None,
        None,
        "inclusion",
        across,
        6,
        tmp_path / "kept",
        strength=0.5,
        steps=4,
        pipe=pipe,
        realism_threshold=None,
        turn_share=0.0,
    )
    assert all("turn" not in read_png_parameters(p.read_bytes()).init for p in kept)


def test_half_a_known_classs_samples_take_the_exposure_of_a_pool_image(pipe, shots, tmp_path):
    written = _generate(pipe, shots, tmp_path / "exposed", realism_threshold=None, turn_share=0.0)
    captures = [read_png_parameters(p.read_bytes()).capture for p in written]
    exposed = [c["pool_exposure"] for c in captures if "pool_exposure" in c]
    assert 0 < len(exposed) < 6, captures
    pool = load_class_statistics()["classes"]["scratches"]["exposures"]
    assert all(exposure in pool for exposure in exposed)
    untouched = _generate(pipe, shots, tmp_path / "raw", realism_threshold=None, turn_share=0.0, capture_variation=0)
    assert all(read_png_parameters(p.read_bytes()).capture is None for p in untouched)


def test_a_class_the_pool_does_not_know_takes_exposures_drawn_about_its_own_images(pipe, shots, tmp_path, caplog):
    # Named by its token, scratches is a class the training pool does not know (as a new mill's would be): its
    # shots run one way, so the pool's average share of the other way is turned.
    with caplog.at_level(logging.INFO, logger="engine.batch"):
        written = _generate(pipe, shots, tmp_path / "new", class_name="<scratches>", realism_threshold=None)
    assert "Exposures for <scratches>: drawn about its 3 images' grey mean" in caplog.text
    assert "Quarter turns for <scratches>: 6 % of the varied inits (the class's images run one way" in caplog.text
    captures = [read_png_parameters(p.read_bytes()).capture for p in written]
    exposed = [c["pool_exposure"] for c in captures if "pool_exposure" in c]
    assert 0 < len(exposed) < 6, captures
    drawn = class_exposures("<scratches>", [Image.open(p) for p in sorted(shots.iterdir())]).exposures
    assert all(exposure in drawn for exposure in exposed)


def test_realism_gate_flags_low_scores_into_their_own_folder(pipe, shots, tmp_path):
    kept = _generate(pipe, shots, tmp_path / "open", realism_threshold=0.0)
    params = read_png_parameters(kept[0].read_bytes()).as_dict()
    assert 0.0 <= params["realism"]["score"] <= 1.0 and params["pre_rejected"] is False
    assert not (tmp_path / "open" / FLAGGED_FOLDER).exists()
    with pytest.raises(RealismGateError, match=r"below the realism threshold 1.0 for 0 kept \(strength 0.50\)"):
        _generate(pipe, shots, tmp_path / "closed", realism_threshold=1.0, strength_floor=None)
    flagged = list_images(tmp_path / "closed" / FLAGGED_FOLDER)
    assert len(flagged) == 6 and list_images(tmp_path / "closed") == []
    assert read_png_parameters(flagged[0].read_bytes()).pre_rejected is True


def _gated(pipe, shots, out, threshold, floor=0.3, num=1, per_init=1, **options):
    """`num` samples (default one), `per_init` candidates per init (default one), from strength 0.9 down to `floor`
    (10 steps keep every strength apart), each init a shot as it is (the default mix of init kinds does not move
    the scores these tests read)."""
    options.setdefault("init_mix", {"source": 1.0})
    return generate_to_folder(
        None,
        None,
        "scratches",
        shots,
        num,
        out,
        strength=0.9,
        steps=10,
        pipe=pipe,
        per_init=per_init,
        capture_variation=0,
        realism_threshold=threshold,
        strength_floor=floor,
        **options,
    )


def test_the_gate_steps_the_strength_down_before_it_ends_a_batch(pipe, shots, tmp_path, caplog):
    # Everything flagged: one candidate at each strength from 0.9 to the floor, each the next init and seed.
    with pytest.raises(RealismGateError, match=r"for 0 kept \(strength 0.90, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30\)"):
        _gated(pipe, shots, tmp_path / "all", threshold=1.0)
    flagged = [read_png_parameters(p.read_bytes()) for p in list_images(tmp_path / "all" / FLAGGED_FOLDER)]
    assert [p.strength for p in flagged] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert [p.seed for p in flagged] == list(range(7))
    # Three samples, two candidates per init: a strength is used up by the first candidate of its second init, and
    # that init's other candidate is dropped, not kept at the old strength.
    with pytest.raises(RealismGateError, match=r"for 0 kept \(strength 0.90, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30\)"):
        _gated(pipe, shots, tmp_path / "pairs", threshold=1.0, num=3, per_init=2)
    pairs = [read_png_parameters(p.read_bytes()) for p in list_images(tmp_path / "pairs" / FLAGGED_FOLDER)]
    expected = [(round(0.9 - 0.1 * i, 2), 4 * i + offset) for i in range(7) for offset in range(3)]
    assert [(p.strength, p.seed) for p in pairs] == expected
    scores = [p.realism.score for p in flagged]
    # A threshold between the first strength that scores above every one before it and those before it: the batch
    # flags each of them, steps down, and keeps that one.
    keep = next(i for i in range(1, len(scores)) if scores[i] > max(scores[:i]))
    threshold = (max(scores[:keep]) + scores[keep]) / 2
    with caplog.at_level(logging.WARNING, logger="engine.batch"):
        (written,) = _gated(pipe, shots, tmp_path / "stepped", threshold)
    kept = read_png_parameters(written.read_bytes())
    assert (kept.strength, kept.seed, kept.realism.score) == (flagged[keep].strength, keep, scores[keep])
    assert len(list_images(tmp_path / "stepped" / FLAGGED_FOLDER)) == keep
    assert f"flagged 1 scratches candidates at strength {flagged[0].strength:.2f} for 0 kept" in caplog.text
    # Without a floor (or with the floor at the strength) the first strength's flags end the batch.
    for floor in (None, 0.9):
        with pytest.raises(RealismGateError, match=r"\(strength 0.90\)"):
            _gated(pipe, shots, tmp_path / f"stopped-{floor}", threshold, floor=floor)
    # So do a masked repaint's: at a lower strength it would paint less of the defect.
    with pytest.raises(RealismGateError, match=r"for 0 kept \(strength 0.90\)"):
        _gated(pipe, shots, tmp_path / "masked", threshold=1.0, auto_place=True)


def test_a_masked_batch_judges_its_defects_by_the_class_not_by_its_clean_slabs(pipe, shots, tmp_path):
    # Enough clean slabs to serve as the class's own reference, had the gate taken its inits for its defects.
    slabs = tmp_path / "slabs"
    slabs.mkdir()
    rng = np.random.default_rng(4)
    for i in range(MIN_OWN_REFERENCES):
        Image.fromarray(make_steel_like(rng, 40, "flat")[..., 0]).save(slabs / f"slab_{i}.png")
    defects = tmp_path / "defects"
    shutil.copytree(shots, defects)
    for i in range(MIN_OWN_REFERENCES - len(list_images(shots))):
        Image.fromarray(make_steel_like(rng, 40, "scratches")[..., 0]).save(defects / f"more_{i}.png")

    def reference_of(out, **options):
        (written,) = _gated(pipe, slabs, out, threshold=0.0, auto_place=True, **options)
        return read_png_parameters(written.read_bytes()).realism.reference

    assert reference_of(tmp_path / "shipped") == SHIPPED_REFERENCE
    own = reference_of(tmp_path / "own", realism_reference=defects)
    assert own == f"{MIN_OWN_REFERENCES} of the class's own real images"


def test_a_new_mill_with_colour_jpegs_and_class_names_with_spaces_trains_and_generates(tiny_model, tmp_path, caplog):
    mill = tmp_path / "mill"
    rng = np.random.default_rng(2)
    # The realism gate judges "oil stain" by its own images and "edge crack" by its few with their flips and rotations
    # (the network knows only NEU's classes).
    for name, kind, count in (
        ("edge crack", "scratches", MIN_FEW_SHOT_REFERENCES),
        ("oil stain", "inclusion", MIN_OWN_REFERENCES),
    ):
        (mill / name).mkdir(parents=True)
        for i in range(count):
            grey = make_steel_like(rng, 44, kind)[..., 0].astype(np.float32)
            colour = np.stack([grey * 0.9, grey * 0.8, grey * 0.6], axis=-1).astype(np.uint8)
            Image.fromarray(colour).save(mill / name / f"IMG {i}.JPG", quality=90)
    adapter = tmp_path / "adapter"
    assert finetune_folder(mill, adapter, model=str(tiny_model), steps=2, batch_size=2).status == "completed"
    pipe = load_pipeline(tiny_model, adapter=adapter)
    written = {
        name: generate_to_folder(
            None,
            None,
            name,
            mill / name,
            3,
            tmp_path / name,
            strength=0.5,
            steps=4,
            pipe=pipe,
            realism_threshold=0.0,
        )
        for name in ("oil stain", "edge crack")
    }
    params = read_png_parameters(written["oil stain"][0].read_bytes())
    assert len(written["oil stain"]) == 3 and params.token == "<oil stain>"
    assert set(params.init["sources"]) <= {f"IMG {i}.JPG" for i in range(MIN_OWN_REFERENCES)}
    assert params.pre_rejected is False
    assert Image.open(written["oil stain"][0]).size == (44, 44)
    # Colour samples stay colour and take a white balance drawn with their images' own (small) spread of tints.
    assert Image.open(written["oil stain"][0]).mode == "RGB"
    assert all(0.8 < gain < 1.25 for gain in params.capture["tint"])
    # Ten uploads and a few (each with its flips and rotations) are both a realism reference: every sample is scored
    # and records what it was compared with.
    references = {}
    for name, samples in written.items():
        realism = read_png_parameters(samples[0].read_bytes()).realism
        assert realism.class_probability is None and 0.0 <= realism.score <= 1.0
        references[name] = realism.reference
    assert references == {
        "oil stain": f"{MIN_OWN_REFERENCES} of the class's own real images",
        "edge crack": f"{MIN_FEW_SHOT_REFERENCES} of the class's own real images with their flips and rotations",
    }
    # One image fewer is no reference: the batch says its gate is off and its samples carry no score.
    few = tmp_path / "few"
    few.mkdir()
    for path in list_images(mill / "edge crack")[1:]:
        shutil.copy(path, few)
    with caplog.at_level(logging.WARNING, logger="engine.batch"):
        ungated = generate_to_folder(None, None, "edge crack", few, 1, tmp_path / "ungated", steps=4, pipe=pipe)
    assert read_png_parameters(ungated[0].read_bytes()).realism is None
    assert "the realism gate is off" in caplog.text


def test_capture_variation_changes_the_written_samples_after_the_realism_gate(pipe, shots, tmp_path):
    varied = _generate(pipe, shots, tmp_path / "varied", realism_threshold=0.0)
    clean = _generate(pipe, shots, tmp_path / "clean", realism_threshold=0.0, capture_variation=0.0)
    varied_params = [read_png_parameters(p.read_bytes()) for p in varied]
    clean_params = [read_png_parameters(p.read_bytes()) for p in clean]
    assert all(p.capture["amount"] == 1.0 for p in varied_params) and all(p.capture is None for p in clean_params)
    # Each sample's grain is drawn within the range of the class's real images'.
    low, high = grain_range([Image.open(path) for path in sorted(shots.iterdir())])
    assert all(low - 0.005 <= p.capture["grain"] <= high + 0.005 for p in varied_params)
    # The gate scored the same renders; only the written pixels differ.
    assert [p.realism.score for p in varied_params] == [p.realism.score for p in clean_params]
    pixels = [(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(varied, clean, strict=True)]
    assert sum(not np.array_equal(a, b) for a, b in pixels) >= 5
    with pytest.raises(ValueError, match="capture variation"):
        _generate(pipe, shots, tmp_path / "bad", capture_variation=-1.0)
