"""Repository functions against a real database."""

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.files import sha256_hex
from storage.repository import (
    DecisionOutcome,
    activate_adapter_version,
    active_adapter,
    add_sample,
    add_source_image,
    counts_by_class_and_status,
    create_run,
    dataset_snapshot,
    decide,
    ensure_defect_class,
    finish_run,
    get_run,
    get_sample,
    list_adapter_versions,
    list_boxed_source_images,
    list_decisions,
    list_defect_classes,
    list_exports,
    list_runs,
    list_samples,
    record_export,
    register_adapter_version,
    set_default_strength,
    source_counts_by_class,
    start_run,
    undo_decision,
)
from storage.tables import AdapterVersion, Decision, DefectClass, SourceImage

SampleFields = Callable[..., dict[str, Any]]


def add_clean_image(s: Any, label: str = "clean-1") -> SourceImage:
    return add_source_image(s, sha256_hex(label.encode()), "clean", None, f"{label}.png", 400, 300, [], "alice")


def add_defect_image(s: Any, label: str, class_name: str = "crazing") -> SourceImage:
    box = {"label": class_name, "xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40}
    return add_source_image(s, sha256_hex(label.encode()), "defect", class_name, f"{label}.jpg", 200, 200, [box], "bob")


@pytest.fixture
def sample_id(db: Database, sample_fields: SampleFields) -> int:
    with db.transaction() as s:
        return add_sample(s, **sample_fields(add_clean_image(s).id)).id


def test_add_source_image_returns_the_existing_row_for_the_same_bytes(db: Database) -> None:
    with db.transaction() as s:
        first = add_source_image(s, sha256_hex(b"a"), "clean", None, "../../slab 1.png", 400, 300, None, "alice")
    with db.transaction() as s:
        again = add_source_image(s, sha256_hex(b"a"), "clean", None, "other.png", 400, 300, [], "bob")
    assert again.id == first.id
    assert (again.original_name, again.uploaded_by, again.boxes_json) == ("slab_1.png", "alice", [])
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(SourceImage)) == 1


@pytest.mark.parametrize(
    ("role", "class_name", "boxes", "message"),
    [
        ("background", None, [], "role"),
        ("defect", None, [], "class name"),
        ("clean", "crazing", [], "no defect class"),
        ("defect", "crazing", [{"label": "x", "xmin": 0, "ymin": 0, "xmax": 500, "ymax": 10}], "outside"),
    ],
)
def test_add_source_image_validates(db: Database, role: str, class_name: str | None, boxes: list, message: str) -> None:
    with pytest.raises(ValueError, match=message), db.transaction() as s:
        add_source_image(s, sha256_hex(b"v"), role, class_name, "v.png", 400, 300, boxes, "alice")


def test_a_failing_multi_step_change_rolls_back_completely(db: Database, sample_fields: SampleFields) -> None:
    with pytest.raises(IntegrityError), db.transaction() as s:
        ensure_defect_class(s, "crazing", "<crazing>", "cracks")
        add_clean_image(s)
        add_sample(s, **sample_fields(source_image_id=12345))
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(DefectClass)) == 0
        assert s.scalar(select(func.count()).select_from(SourceImage)) == 0


def test_defect_classes(db: Database) -> None:
    with db.transaction() as s:
        ensure_defect_class(s, "scratches", "<scratches>", "scratch")
        first = ensure_defect_class(s, "crazing", "<crazing>", "cracks")
        assert ensure_defect_class(s, "crazing", "<crazing>", "ignored").id == first.id
        with pytest.raises(ValueError, match="token"):
            ensure_defect_class(s, "crazing", "<other>", "cracks")
        set_default_strength(s, "crazing", 0.55)
        with pytest.raises(ValueError):
            set_default_strength(s, "crazing", 1.5)
        with pytest.raises(LookupError):
            set_default_strength(s, "unknown", 0.5)
    with db.session() as s:
        classes = list_defect_classes(s)
    assert [c.name for c in classes] == ["crazing", "scratches"]
    assert classes[0].default_strength == pytest.approx(0.55)


def test_a_classs_boxed_images_are_listed_newest_first(db: Database) -> None:
    with db.transaction() as s:
        first, second = add_defect_image(s, "boxed-1"), add_defect_image(s, "boxed-2")
        add_defect_image(s, "other class", "scratches")
        add_source_image(s, sha256_hex(b"bare"), "defect", "crazing", "bare.jpg", 200, 200, [], "bob")
        add_clean_image(s)
        third = add_defect_image(s, "boxed-3")
    with db.session() as s:
        assert [row.id for row in list_boxed_source_images(s, "crazing", 10)] == [third.id, second.id, first.id]
        assert [row.id for row in list_boxed_source_images(s, "crazing", 2)] == [third.id, second.id]
        assert list_boxed_source_images(s, "patches", 10) == []
        assert source_counts_by_class(s, "defect", boxed=True) == {"crazing": 3, "scratches": 1}
        assert source_counts_by_class(s, "defect") == {"crazing": 4, "scratches": 1}


def test_add_sample_stores_every_field_as_pending(db: Database, sample_fields: SampleFields) -> None:
    with db.transaction() as s:
        source = add_clean_image(s)
        created = add_sample(s, **sample_fields(source.id, realism_score=0.8, mask_sha256=sha256_hex(b"mask")))
        with pytest.raises(ValueError, match="pending"):
            add_sample(s, **sample_fields(source.id, status="accepted"))
        with pytest.raises(ValueError, match="sha256"):
            add_sample(s, **sample_fields(source.id, sha256="not-a-hash"))
    with db.session() as s:
        sample = get_sample(s, created.id)
        assert (sample.status, sample.revision, sample.decided_by) == ("pending", 0, None)
        assert sample.window_json == {"x": 10, "y": 20, "w": 200, "h": 200}
        assert sample.params_json == {"scheduler": "euler", "strength": 0.6}
        assert sample.boxes_json[0]["xmax"] == 50
        assert sample.source_image.sha256 == source.sha256
        assert sample.created_at.tzinfo is not None


def test_decide_then_a_stale_decision_conflicts_and_both_are_recorded(db: Database, sample_id: int) -> None:
    with db.transaction() as s:
        first = decide(s, sample_id, "accepted", None, "alice", expected_revision=0)
    with db.transaction() as s:
        stale = decide(s, sample_id, "rejected", "blurry", "bob", expected_revision=0)
    assert first == DecisionOutcome(applied=True, status="accepted", revision=1, message=first.message)
    assert not stale.applied
    assert stale.status == "accepted"
    assert "alice" in stale.message and "Reload" in stale.message
    with db.session() as s:
        sample = get_sample(s, sample_id)
        assert (sample.status, sample.decided_by, sample.reject_reason, sample.revision) == (
            "accepted",
            "alice",
            None,
            1,
        )
        decisions = list_decisions(s, sample_id)
    assert [(d.user, d.status, d.outcome) for d in decisions] == [
        ("alice", "accepted", "applied"),
        ("bob", "rejected", "conflict"),
    ]


def test_decide_without_revision_uses_the_current_one_and_undo_returns_to_pending(db: Database, sample_id: int) -> None:
    with db.transaction() as s:
        assert decide(s, sample_id, "rejected", "seam artefact", "alice").applied
        assert get_sample(s, sample_id).reject_reason == "seam artefact"
        undone = undo_decision(s, sample_id, "alice")
        assert (undone.applied, undone.status, undone.revision) == (True, "pending", 2)
        sample = get_sample(s, sample_id)
        assert (sample.reject_reason, sample.decided_by, sample.decided_at) == (None, None, None)
        assert [d.status for d in list_decisions(s, sample_id)] == ["rejected", "pending"]
        with pytest.raises(ValueError):
            decide(s, sample_id, "pending", None, "alice")
        with pytest.raises(LookupError):
            decide(s, 999_999, "accepted", None, "alice")


def test_two_reviewers_deciding_at_the_same_moment_exactly_one_wins(db: Database, sample_id: int) -> None:
    barrier = threading.Barrier(2, timeout=10)
    outcomes: dict[str, DecisionOutcome] = {}
    errors: list[BaseException] = []

    def review(user: str, status: str) -> None:
        try:
            barrier.wait()
            with db.transaction() as s:
                outcomes[user] = decide(s, sample_id, status, "looks wrong", user, expected_revision=0)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=review, args=("alice", "accepted")),
        threading.Thread(target=review, args=("bob", "rejected")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(outcome.applied for outcome in outcomes.values()) == [False, True]
    winner = next(user for user, outcome in outcomes.items() if outcome.applied)
    with db.session() as s:
        sample = get_sample(s, sample_id)
        decisions = list_decisions(s, sample_id)
    assert (sample.decided_by, sample.revision) == (winner, 1)
    assert sample.status == outcomes[winner].status
    assert sorted((d.user, d.outcome) for d in decisions) == sorted(
        (user, "applied" if outcome.applied else "conflict") for user, outcome in outcomes.items()
    )


def test_listing_counting_and_dataset_snapshot(db: Database, sample_fields: SampleFields) -> None:
    with db.transaction() as s:
        clean = add_clean_image(s)
        real = add_defect_image(s, "real-crazing-1")
        add_defect_image(s, "real-scratch-1", "scratches")
        ids = [add_sample(s, **sample_fields(clean.id, seed=seed)).id for seed in range(4)]
        other = add_sample(s, **sample_fields(clean.id, seed=99, class_name="scratches", token="<scratches>")).id
        decide(s, ids[0], "accepted", None, "alice")
        decide(s, ids[1], "accepted", None, "alice")
        decide(s, ids[2], "rejected", "fake", "alice")
        decide(s, other, "accepted", None, "alice")
    with db.session() as s:
        assert counts_by_class_and_status(s) == {
            ("crazing", "accepted"): 2,
            ("crazing", "rejected"): 1,
            ("crazing", "pending"): 1,
            ("scratches", "accepted"): 1,
        }
        assert source_counts_by_class(s) == {"crazing": 1, "scratches": 1}
        assert source_counts_by_class(s, "clean") == {}
        assert [x.id for x in list_samples(s, class_name="crazing", status="accepted")] == [ids[1], ids[0]]
        assert [x.id for x in list_samples(s, limit=2, offset=1, newest_first=False)] == [ids[1], ids[2]]
        snapshot = dataset_snapshot(s, ["crazing"])
        accepted = [get_sample(s, i) for i in ids[:2]]
    # Each item carries where its defect is, for the masked loss: a real image's boxes, a sample's mask.
    real_boxes = [{"label": "crazing", "xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40}]
    assert snapshot == [
        {
            "kind": "source",
            "id": real.id,
            "sha256": real.sha256,
            "class_name": "crazing",
            "width": 200,
            "height": 200,
            "boxes": real_boxes,
        }
    ] + [
        {"kind": "sample", "id": x.id, "sha256": x.sha256, "class_name": "crazing", "mask_sha256": x.mask_sha256}
        for x in accepted
    ]


def test_fine_tune_run_lifecycle(db: Database) -> None:
    with db.transaction() as s:
        add_defect_image(s, "real-1")
        run = create_run(s, ["crazing"], {"steps": 500, "lr": 5e-4}, "alice", out_dir="runs/1")
    assert run.status == "queued"
    assert [e["kind"] for e in run.dataset_snapshot_json] == ["source"]
    with db.transaction() as s:
        assert start_run(s, run.id).status == "running"
        with pytest.raises(ValueError, match="not queued"):
            start_run(s, run.id)
    with db.transaction() as s:
        finish_run(s, run.id, "completed", {"loss": 0.12})
        with pytest.raises(ValueError, match="already finished"):
            finish_run(s, run.id, "failed", error="late")
    with db.session() as s:
        finished = get_run(s, run.id)
        assert (finished.status, finished.metrics_json, finished.error) == ("completed", {"loss": 0.12}, None)
        assert finished.started_at <= finished.finished_at
        assert [r.id for r in list_runs(s)] == [run.id]


def test_registering_adapters_keeps_exactly_one_active_per_class(db: Database) -> None:
    with db.transaction() as s:
        ensure_defect_class(s, "crazing", "<crazing>", "cracks")
        ensure_defect_class(s, "scratches", "<scratches>", "scratch")
        run = create_run(s, ["crazing"], {}, "alice")
        first = register_adapter_version(s, "crazing", "runs/1/crazing", run.id)
        scratches = register_adapter_version(s, "scratches", "runs/1/scratches")
    with db.transaction() as s:
        second = register_adapter_version(s, "crazing", "runs/2/crazing")
        assert not s.get(AdapterVersion, first.id).is_active
    with db.session() as s:
        assert [(a.version, a.is_active) for a in list_adapter_versions(s, "crazing")] == [(1, False), (2, True)]
        assert active_adapter(s, "crazing").id == second.id
        assert active_adapter(s, "scratches").id == scratches.id
        assert active_adapter(s, "inclusion") is None
    with db.transaction() as s:
        assert activate_adapter_version(s, first.id).is_active
    with db.session() as s:
        assert active_adapter(s, "crazing").id == first.id
        assert s.scalar(select(func.count()).where(AdapterVersion.is_active.is_(True))) == 2
    with pytest.raises(LookupError), db.transaction() as s:
        register_adapter_version(s, "unknown", "runs/x")


def test_the_database_itself_refuses_a_second_active_adapter(db: Database) -> None:
    with db.transaction() as s:
        ensure_defect_class(s, "crazing", "<crazing>", "cracks")
        register_adapter_version(s, "crazing", "runs/1")
        second = register_adapter_version(s, "crazing", "runs/2")
    with pytest.raises(IntegrityError), db.transaction() as s:
        s.execute(update(AdapterVersion).where(AdapterVersion.id != second.id).values(is_active=True))


def test_record_export(db: Database) -> None:
    with db.transaction() as s:
        record_export(s, "exports/a.zip", sha256_hex(b"zip"), 12, ["imagefolder", "masks"], "alice")
    with db.session() as s:
        (export,) = list_exports(s)
        assert (export.n_items, export.formats_json, export.created_by) == (12, ["imagefolder", "masks"], "alice")
        assert s.scalar(select(func.count()).select_from(Decision)) == 0
