"""Realism scores of generated candidates, sorting, the pre-reject threshold, and tuned default strengths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.adapters import save_tuned_strength
from engine.config import GenerationConfig
from engine.evaluation.features import load_feature_net
from engine.evaluation.realism import (
    MIN_FEW_SHOT_REFERENCES,
    MIN_OWN_REFERENCES,
    SHIPPED_REFERENCE,
    SHIPPED_REFERENCE_FEATURES,
    RealismScorer,
    load_reference_features,
)
from engine.generation.generate import read_png_parameters
from tests.support import encode, make_steel_like, served_client
from webapp.studio import REALISM_REJECT_REASON, CandidateInfo, GenerationOutcome, StudioService
from webapp.tabs.dataset import SAMPLE_HEADERS

FAST = {"steps": 2, "strength": 1.0}
NEU_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def upload_real(service: StudioService, tiny_dataset: Path, class_name: str, count: int) -> None:
    files = [(p.name, p.read_bytes()) for p in sorted((tiny_dataset / class_name).glob("*.png"))[:count]]
    service.upload_images(files, "defect", class_name, "alice")


def upload_made(service: StudioService, class_name: str, count: int) -> None:
    """Upload `count` made scratch-like images as `class_name`'s real defects (more than the tiny dataset has)."""
    rng = np.random.default_rng(5)
    made = [Image.fromarray(make_steel_like(rng, 48, "scratches")[..., 0]) for _ in range(count)]
    service.upload_images([(f"made_{i}.png", encode(im)) for i, im in enumerate(made)], "defect", class_name, "alice")


def upload_slab(service: StudioService, slab_png) -> int:
    return service.upload_images([("slab.png", slab_png(48, 40, 0))], "clean", None, "alice").sources[0].id


def generate(service: StudioService, slab_id: int, class_name: str, n: int, threshold: float | None = None):
    config = GenerationConfig(class_name, num_candidates=n, **FAST)
    return service.generate_candidates(slab_id, config, "alice", realism_threshold=threshold)


def set_scores(service: StudioService, scores: dict[int, float | None]) -> None:
    """Give samples known realism scores (the tiny model's candidates all look alike to the network)."""
    from storage import repository

    with service.database.transaction() as s:
        for sample_id, score in scores.items():
            repository.get_sample(s, sample_id).realism_score = score


def test_candidates_are_scored_against_the_uploaded_real_defects(service, slab_png) -> None:
    upload_made(service, "scratches", MIN_OWN_REFERENCES)
    outcome = generate(service, upload_slab(service, slab_png), "scratches", 3)

    rows = {row.id: row for row in service.dataset_view().rows}
    for candidate in outcome.candidates:
        assert 0.0 <= candidate.realism_score <= 1.0
        assert 0.0 <= candidate.class_probability <= 1.0
        assert candidate.predicted_class in NEU_CLASSES
        assert candidate.suggested is None and not candidate.pre_rejected
        assert rows[candidate.sample_id].realism_score == candidate.realism_score
        details = service.sample_details(candidate.sample_id)
        assert details.realism_score == candidate.realism_score
        assert details.params.realism.reference == f"{MIN_OWN_REFERENCES} of the class's own real images"
        assert details.params.realism.class_probability == candidate.class_probability
        assert details.params.pre_rejected is None
    scores = [c.realism_score for c in outcome.by_realism()]
    assert scores == sorted(scores, reverse=True)
    assert 0.0 <= outcome.baseline_realism <= 1.0, "the untouched slab is scored on the same region"
    assert details.params.realism.untouched_source_score == outcome.baseline_realism


def test_a_neu_class_with_few_uploads_uses_the_shipped_neu_features(service, slab_png) -> None:
    upload_made(service, "inclusion", MIN_OWN_REFERENCES - 1)
    outcome = generate(service, upload_slab(service, slab_png), "inclusion", 2)
    details = service.sample_details(outcome.sample_ids[0])
    assert details.params.realism.reference == SHIPPED_REFERENCE
    assert 0.0 <= details.realism_score <= 1.0

    features = load_reference_features()
    assert sorted(features) == NEU_CLASSES
    assert all(f.shape[1] == load_feature_net().num_features and len(f) >= 150 for f in features.values())
    assert SHIPPED_REFERENCE_FEATURES.stat().st_size <= 2**20


def test_a_new_class_is_judged_by_its_few_uploads_with_their_flips_and_rotations(service) -> None:
    upload_made(service, "roll mark", MIN_FEW_SHOT_REFERENCES - 1)
    assert service.realism_scorer("roll mark") is None
    rng = np.random.default_rng(9)
    one_more = Image.fromarray(make_steel_like(rng, 48, "scratches")[..., 0])
    service.upload_images([("one_more.png", encode(one_more))], "defect", "roll mark", "alice")
    scorer, reference = service.realism_scorer("roll mark")
    assert reference == f"{MIN_FEW_SHOT_REFERENCES} of the class's own real images with their flips and rotations"
    member, flat = scorer.score_many([one_more, Image.new("RGB", (48, 48), (250, 250, 250))], "roll mark")
    assert flat.class_probability is None and flat.score < member.score


def test_a_class_the_network_does_not_know_is_scored_by_typicality_alone(tiny_dataset) -> None:
    images = [Image.open(p).convert("RGB") for p in sorted((tiny_dataset / "scratches").glob("*.png"))]
    scorer = RealismScorer(load_feature_net(), {"stripes": images})
    member, flat = scorer.score_many([images[0], Image.new("RGB", (48, 48), (250, 250, 250))], "stripes")
    assert member.class_probability is None and flat.class_probability is None
    assert 0.0 <= flat.score < member.score <= 1.0


def test_candidates_sort_best_first_with_unscored_ones_last(tmp_path: Path) -> None:
    scores = [0.2, None, 0.9, 0.5, None]
    candidates = [CandidateInfo(i, i, tmp_path / f"{i}.png", realism_score=s) for i, s in enumerate(scores)]
    outcome = GenerationOutcome(1, "scratches", candidates, 0.0)
    assert [c.sample_id for c in outcome.by_realism()] == [2, 3, 0, 1, 4]


def test_a_threshold_flags_candidates_that_stay_pending_until_reject_flagged(service, slab_png, tiny_dataset) -> None:
    upload_real(service, tiny_dataset, "scratches", 4)
    slab_id = upload_slab(service, slab_png)
    with pytest.raises(ValueError, match="realism threshold must lie between 0 and 1"):
        generate(service, slab_id, "scratches", 2, threshold=1.5)
    assert service.dataset_view().rows == []

    outcome = generate(service, slab_id, "scratches", 3, threshold=1.0)
    for candidate in outcome.candidates:
        details = service.sample_details(candidate.sample_id)
        flagged = candidate.realism_score < 1.0
        assert candidate.pre_rejected == flagged == details.pre_rejected
        assert (candidate.suggested == "reject") == flagged
        assert details.status == "pending" and details.params.realism_threshold == 1.0
        assert read_png_parameters(details.path.read_bytes()).pre_rejected == flagged
    flagged_ids = outcome.flagged_ids
    assert flagged_ids, "a candidate of the untrained tiny model should not score a perfect 1.0"

    # The user decides one flagged candidate; reject_flagged leaves it and rejects the other flagged ones.
    service.decide(flagged_ids[0], "accepted", None, "alice")
    results = service.reject_flagged(outcome.sample_ids, "bob")
    assert [r.sample_id for r in results] == flagged_ids[1:] and all(r.applied for r in results)
    statuses = {r.id: (r.status, r.reject_reason, r.decided_by) for r in service.dataset_view().rows}
    assert statuses[flagged_ids[0]] == ("accepted", None, "alice")
    for sample_id in flagged_ids[1:]:
        assert statuses[sample_id] == ("rejected", REALISM_REJECT_REASON, "bob")
    assert service.reject_flagged(outcome.sample_ids, "bob") == []


def test_reject_flagged_with_a_threshold_rejects_only_the_pending_samples_below_it(
    service, slab_png, tiny_dataset
) -> None:
    upload_real(service, tiny_dataset, "scratches", 3)
    outcome = generate(service, upload_slab(service, slab_png), "scratches", 4)
    low, high, middle, unscored = outcome.sample_ids
    set_scores(service, {low: 0.1, high: 0.9, middle: 0.5, unscored: None})
    assert service.reject_flagged(outcome.sample_ids, "bob", realism_threshold=0.0) == []
    rejected = service.reject_flagged(outcome.sample_ids, "bob", realism_threshold=0.6)
    assert [r.sample_id for r in rejected] == [low, middle]
    statuses = {r.id: r.status for r in service.dataset_view().rows}
    assert statuses == {low: "rejected", high: "pending", middle: "rejected", unscored: "pending"}
    with pytest.raises(ValueError, match="no sample with id 999"):
        service.reject_flagged([999], "bob")


def test_the_ui_captions_sorts_and_rejects_the_flagged_candidates(service, slab_png, tiny_dataset, tmp_path) -> None:
    upload_real(service, tiny_dataset, "scratches", 4)
    slab_id = upload_slab(service, slab_png)
    with served_client(service) as client:
        client.predict(None, None, api_name="/generate_refresh")
        job = client.submit(slab_id, "scratches", 1.0, 3, 2, 0, by_realism=True, threshold=1.0, api_name="/generate")
        gallery, _, message = job.result(timeout=120)
        captions = [item["caption"] for item in gallery["value"]]
        assert all("realism " in c for c in captions)
        assert "pre-rejected" in message and any(c.endswith("· pre-rejected") for c in captions)
        shown = [float(c.split("realism ")[1].split(" ")[0]) for c in captions]
        assert shown == sorted(shown, reverse=True)

        gallery, _, message = client.predict(None, 1.0, api_name="/reject_flagged")
        assert message.startswith("Rejected ")
        rows = service.dataset_view().rows
        assert {r.reject_reason for r in rows if r.status == "rejected"} == {REALISM_REJECT_REASON}
        assert not any(item["caption"].endswith("pre-rejected") for item in gallery["value"])

        _, _, _, table = client.predict("All", "All", "All", api_name="/dataset_view")
        column = SAMPLE_HEADERS.index("realism")
        assert table["headers"] == SAMPLE_HEADERS
        assert sorted(row[column] for row in table["data"]) == sorted(round(r.realism_score, 3) for r in rows)


def tuned_copy(tiny_adapter: Path, folder: Path, strengths: dict[str, float]) -> Path:
    adapter = shutil.copytree(tiny_adapter, folder)
    for class_name, strength in strengths.items():
        save_tuned_strength(adapter, class_name, strength)
    return adapter


def test_a_tuned_strength_in_tokens_json_becomes_the_class_default(service, tiny_adapter, tmp_path) -> None:
    before = {c.name: c for c in service.list_classes()}
    assert before["scratches"].tuned_strength is None
    service.register_adapter(tuned_copy(tiny_adapter, tmp_path / "tuned", {"scratches": 0.45}))
    classes = {c.name: c for c in service.list_classes()}
    assert classes["scratches"].default_strength == pytest.approx(0.45)
    assert classes["scratches"].tuned_strength == pytest.approx(0.45)
    assert classes["scratches"].adapter_version == 2
    assert classes["inclusion"].default_strength == before["inclusion"].default_strength


def test_a_strength_tuned_after_registration_reaches_the_classes_at_start(tmp_path, tiny_model, tiny_adapter) -> None:
    adapter = tuned_copy(tiny_adapter, tmp_path / "adapter", {})
    first = StudioService(tmp_path / "data", model=str(tiny_model))
    first.register_adapter(adapter)
    first.close()

    save_tuned_strength(adapter, "inclusion", 0.7)
    index = adapter / "tokens.json"
    data = json.loads(index.read_text())
    data["tokens"]["scratches"]["default_strength"] = "strong"
    index.write_text(json.dumps(data))
    second = StudioService(tmp_path / "data", model=str(tiny_model))
    try:
        classes = {c.name: c for c in second.list_classes()}
        assert classes["inclusion"].default_strength == pytest.approx(0.7)
        assert classes["scratches"].tuned_strength is None
    finally:
        second.close()


def test_a_tuned_masked_strength_is_proposed_for_masked_repaints(service, tiny_adapter, tmp_path) -> None:
    from engine.batch import generate_to_folder
    from engine.config import DEFAULT_MASKED_STRENGTH

    adapter = tuned_copy(tiny_adapter, tmp_path / "tuned", {"scratches": 0.45})
    save_tuned_strength(adapter, "scratches", 0.95, key="masked_strength")
    with pytest.raises(ValueError, match="one of default_strength, masked_strength"):
        save_tuned_strength(adapter, "scratches", 0.5, key="strength")
    service.register_adapter(adapter)
    classes = {c.name: c for c in service.list_classes()}
    assert (classes["scratches"].default_strength, classes["scratches"].masked_strength) == (0.45, 0.95)
    assert classes["inclusion"].masked_strength == DEFAULT_MASKED_STRENGTH

    # The UI proposes the masked strength once auto-place is ticked, boxes are typed or a mask is painted.
    from gradio_client import handle_file

    background, stroke = tmp_path / "background.png", tmp_path / "stroke.png"
    Image.new("RGB", (48, 40), (120, 120, 120)).save(background)
    painted = Image.new("RGBA", (48, 40), (0, 0, 0, 0))
    painted.paste((255, 48, 48, 255), (10, 10, 14, 30))
    painted.save(stroke)
    editor = {"background": handle_file(str(background)), "layers": [handle_file(str(stroke))], "composite": None}
    with served_client(service) as client:
        client.predict(None, None, api_name="/generate_refresh")
        assert client.predict("scratches", False, "", api_name="/class_strength") == pytest.approx(0.45)
        assert client.predict("scratches", True, "", api_name="/masked_strength") == pytest.approx(0.95)
        assert client.predict("scratches", False, "1,1,9,9", api_name="/class_strength") == pytest.approx(0.95)
        assert client.predict("scratches", False, "", editor, api_name="/class_strength") == pytest.approx(0.95)

    # The CLI uses it when a masked repaint gives no strength; a whole-window one keeps the other.
    slab = tmp_path / "slab.png"
    Image.new("L", (48, 40), 120).save(slab)
    common = dict(
        model=str(service.model),
        adapter=adapter,
        class_name="scratches",
        init=slab,
        num=1,
        steps=4,
        realism_threshold=None,
    )
    (masked,) = generate_to_folder(**common, out=tmp_path / "masked", auto_place=True)
    (window,) = generate_to_folder(**common, out=tmp_path / "window")
    assert read_png_parameters(masked.read_bytes()).strength == pytest.approx(0.95)
    assert read_png_parameters(window.read_bytes()).strength == pytest.approx(0.45)
