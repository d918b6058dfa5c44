"""Queries and changes the service layer calls. Each takes a Session first, flushes as needed and never commits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, case, cast, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from storage.files import check_sha256, safe_file_name
from storage.tables import (
    SOURCE_ROLES,
    AdapterVersion,
    Decision,
    DefectClass,
    Export,
    FineTuneRun,
    GeneratedSample,
    SourceImage,
    utc_now,
)

BOX_KEYS = ("label", "xmin", "ymin", "xmax", "ymax")
DECISION_STATUSES = ("accepted", "rejected")
FINISHED_RUN_STATUSES = ("completed", "failed", "stopped")
SAMPLE_FIELDS_SET_BY_REVIEW = ("status", "reject_reason", "decided_by", "decided_at", "revision")


@dataclass(frozen=True)
class DecisionOutcome:
    """What happened to a decision: whether it was applied, the sample's status and revision afterwards, and why."""

    applied: bool
    status: str
    revision: int
    message: str


def normalize_boxes(boxes: Iterable[Any] | None, width: int, height: int) -> list[dict[str, Any]]:
    """Boxes as dicts {label, xmin, ymin, xmax, ymax} (pixel ints, max exclusive), checked to lie in the image.

    Accepts mappings or objects with those attributes (such as engine.boxes.Box).
    """
    normalized = []
    for index, box in enumerate(boxes or []):
        values = {key: box[key] if isinstance(box, Mapping) else getattr(box, key) for key in BOX_KEYS}
        xmin, ymin, xmax, ymax = (int(values[key]) for key in BOX_KEYS[1:])
        if not (0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height):
            raise ValueError(f"Box {index} {values} is empty or outside the {width}x{height} image.")
        normalized.append({"label": str(values["label"]), "xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax})
    return normalized


def _insert_ignoring_duplicates(s: Session, table: type, values: dict[str, Any], unique_column: str) -> None:
    insert = postgresql_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    s.execute(insert(table).values(**values).on_conflict_do_nothing(index_elements=[unique_column]))


# Source images


def add_source_image(
    s: Session,
    sha256: str,
    role: str,
    class_name: str | None,
    original_name: str,
    width: int,
    height: int,
    boxes: Iterable[Any] | None,
    user: str,
) -> SourceImage:
    """Record an uploaded image; if an image with the same bytes is already recorded, return that one unchanged."""
    check_sha256(sha256)
    if role not in SOURCE_ROLES:
        raise ValueError(f"Image role must be one of {SOURCE_ROLES}, got {role!r}")
    if role == "defect" and not class_name:
        raise ValueError("A defect image needs a class name.")
    if role == "clean" and class_name:
        raise ValueError("A clean image has no defect class.")
    if width <= 0 or height <= 0:
        raise ValueError(f"Image size must be positive, got {width}x{height}")
    values = {
        "sha256": sha256,
        "role": role,
        "class_name": class_name,
        "original_name": safe_file_name(original_name),
        "width": width,
        "height": height,
        "boxes_json": normalize_boxes(boxes, width, height),
        "uploaded_by": user,
        "created_at": utc_now(),
    }
    _insert_ignoring_duplicates(s, SourceImage, values, "sha256")
    return s.scalars(select(SourceImage).where(SourceImage.sha256 == sha256)).one()


def get_source_image(s: Session, source_image_id: int) -> SourceImage | None:
    """The source image with this id, or None."""
    return s.get(SourceImage, source_image_id)


def list_source_images(
    s: Session, role: str | None = None, class_name: str | None = None, limit: int = 1000, offset: int = 0
) -> list[SourceImage]:
    """Source images, oldest first, optionally only of one role and/or class."""
    query = select(SourceImage).order_by(SourceImage.id).limit(limit).offset(offset)
    if role is not None:
        query = query.where(SourceImage.role == role)
    if class_name is not None:
        query = query.where(SourceImage.class_name == class_name)
    return list(s.scalars(query))


def _has_boxes() -> Any:
    """The condition that a source image has at least one box (its JSON list is not empty)."""
    return SourceImage.boxes_json.is_not(None) & (cast(SourceImage.boxes_json, String) != "[]")


def list_boxed_source_images(s: Session, class_name: str, limit: int) -> list[SourceImage]:
    """A class's real defect images that have boxes, newest first, at most `limit`."""
    query = (
        select(SourceImage)
        .where(SourceImage.role == "defect", SourceImage.class_name == class_name, _has_boxes())
        .order_by(SourceImage.id.desc())
        .limit(limit)
    )
    return list(s.scalars(query))


def source_counts_by_class(s: Session, role: str = "defect", boxed: bool = False) -> dict[str, int]:
    """Number of source images of a role per class (images without a class are left out); with `boxed`, only the
    images that have boxes."""
    query = (
        select(SourceImage.class_name, func.count())
        .where(SourceImage.role == role, SourceImage.class_name.is_not(None))
        .group_by(SourceImage.class_name)
    )
    if boxed:
        query = query.where(_has_boxes())
    return {class_name: count for class_name, count in s.execute(query)}


def source_sample_counts(s: Session, source_image_id: int) -> dict[str, int]:
    """How many samples made from this source image are pending, accepted and rejected."""
    query = (
        select(GeneratedSample.status, func.count())
        .where(GeneratedSample.source_image_id == source_image_id)
        .group_by(GeneratedSample.status)
    )
    return {status: count for status, count in s.execute(query)}


def delete_source_image(s: Session, source_image_id: int, with_samples: bool = False) -> int:
    """Delete a source image; with `with_samples` also every sample made from it (and their decisions), else it
    must have none. Returns how many samples went with it."""
    sample_ids = list(s.scalars(select(GeneratedSample.id).where(GeneratedSample.source_image_id == source_image_id)))
    if sample_ids and not with_samples:
        raise ValueError(f"Image {source_image_id} has {len(sample_ids)} sample(s) made from it.")
    if sample_ids:
        s.execute(delete(Decision).where(Decision.sample_id.in_(sample_ids)))
        s.execute(delete(GeneratedSample).where(GeneratedSample.id.in_(sample_ids)))
    s.execute(delete(SourceImage).where(SourceImage.id == source_image_id))
    return len(sample_ids)


def update_source_image(
    s: Session, source_image_id: int, class_name: str | None = None, boxes: Iterable[Any] | None = None
) -> SourceImage:
    """Change a real defect's class and/or its boxes (None: keep)."""
    source = s.get(SourceImage, source_image_id)
    if source is None:
        raise LookupError(f"No source image with id {source_image_id}")
    if class_name is not None:
        if source.role != "defect":
            raise ValueError(f"Image {source_image_id} is a clean slab; only real defects have a class.")
        source.class_name = class_name
    if boxes is not None:
        source.boxes_json = normalize_boxes(boxes, source.width, source.height)
    s.flush()
    return source


# Defect classes


def get_defect_class(s: Session, name: str) -> DefectClass | None:
    """The defect class with this name, or None."""
    return s.scalars(select(DefectClass).where(DefectClass.name == name)).one_or_none()


def ensure_defect_class(s: Session, name: str, token: str, init_word: str) -> DefectClass:
    """The defect class `name`, created if new; raises ValueError if it exists with a different token."""
    name = name.strip()
    if not name or not token.strip():
        raise ValueError("A defect class needs a name and a token.")
    existing = get_defect_class(s, name)
    if existing is not None:
        if existing.token != token:
            raise ValueError(f"Class {name!r} already uses token {existing.token!r}, not {token!r}")
        return existing
    defect_class = DefectClass(name=name, token=token, init_word=init_word)
    s.add(defect_class)
    s.flush()
    return defect_class


def list_defect_classes(s: Session) -> list[DefectClass]:
    """All defect classes by name."""
    return list(s.scalars(select(DefectClass).order_by(DefectClass.name)))


def set_default_strength(s: Session, class_name: str, strength: float | None) -> DefectClass:
    """Set (or clear, with None) the strength proposed for a class; strength lies in [0, 1]."""
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise ValueError(f"Strength must lie between 0 and 1, got {strength}")
    defect_class = get_defect_class(s, class_name)
    if defect_class is None:
        raise LookupError(f"Unknown defect class {class_name!r}")
    defect_class.default_strength = strength
    s.flush()
    return defect_class


# Generated samples and their review


def add_sample(s: Session, **fields: Any) -> GeneratedSample:
    """Record a generated candidate as pending; `fields` are GeneratedSample columns (not the review ones)."""
    review_fields = sorted(set(fields) & set(SAMPLE_FIELDS_SET_BY_REVIEW))
    if review_fields:
        raise ValueError(f"A new sample is always pending; do not set {review_fields}")
    check_sha256(fields.get("sha256", ""))
    if fields.get("mask_sha256") is not None:
        check_sha256(fields["mask_sha256"])
    if "boxes_json" in fields:
        fields["boxes_json"] = normalize_boxes(fields["boxes_json"], fields["width"], fields["height"])
    sample = GeneratedSample(**fields, status="pending", revision=0)
    s.add(sample)
    s.flush()
    return sample


def get_sample(s: Session, sample_id: int) -> GeneratedSample | None:
    """The sample with this id (reloaded from the database), or None."""
    return s.get(GeneratedSample, sample_id, populate_existing=True)


def list_samples(
    s: Session,
    class_name: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    newest_first: bool = True,
    source_image_id: int | None = None,
    batch: str | None = None,
) -> list[GeneratedSample]:
    """Samples, optionally only of one class, status, source image and/or batch, a page at a time."""
    order = GeneratedSample.id.desc() if newest_first else GeneratedSample.id
    query = select(GeneratedSample).order_by(order).limit(limit).offset(offset)
    if class_name is not None:
        query = query.where(GeneratedSample.class_name == class_name)
    if status is not None:
        query = query.where(GeneratedSample.status == status)
    if source_image_id is not None:
        query = query.where(GeneratedSample.source_image_id == source_image_id)
    if batch is not None:
        query = query.where(GeneratedSample.batch == batch)
    return list(s.scalars(query))


def find_sample_by_sha256(s: Session, sha256: str) -> GeneratedSample | None:
    """The first stored sample whose image has this hash (identical pixels and parameters), if any."""
    return s.scalars(select(GeneratedSample).where(GeneratedSample.sha256 == sha256).limit(1)).first()


def find_source_by_sha256(s: Session, sha256: str) -> SourceImage | None:
    """The source image stored with this hash, if any."""
    return s.scalars(select(SourceImage).where(SourceImage.sha256 == sha256)).first()


def list_batches(s: Session, limit: int = 100) -> list[tuple[str, int, int]]:
    """(batch, pending samples, all samples) of the newest batches first."""
    pending = func.sum(case((GeneratedSample.status == "pending", 1), else_=0))
    query = (
        select(GeneratedSample.batch, pending, func.count())
        .where(GeneratedSample.batch.is_not(None))
        .group_by(GeneratedSample.batch)
        .order_by(func.max(GeneratedSample.id).desc())
        .limit(limit)
    )
    return [(batch, int(waiting), int(total)) for batch, waiting, total in s.execute(query)]


def counts_by_class_and_status(s: Session) -> dict[tuple[str, str], int]:
    """Number of samples per (class_name, status); combinations without samples are absent."""
    query = select(GeneratedSample.class_name, GeneratedSample.status, func.count()).group_by(
        GeneratedSample.class_name, GeneratedSample.status
    )
    return {(class_name, status): count for class_name, status, count in s.execute(query)}


def _change_status(
    s: Session, sample_id: int, status: str, reason: str | None, user: str, expected_revision: int | None
) -> DecisionOutcome:
    """Compare-and-set the review status on the revision, and record the attempt whatever its outcome."""
    sample = get_sample(s, sample_id)
    if sample is None:
        raise LookupError(f"No sample with id {sample_id}")
    revision = sample.revision if expected_revision is None else expected_revision
    now = utc_now()
    decided = status != "pending"
    result = s.execute(
        update(GeneratedSample)
        .where(GeneratedSample.id == sample_id, GeneratedSample.revision == revision)
        .values(
            status=status,
            reject_reason=reason if status == "rejected" else None,
            decided_by=user if decided else None,
            decided_at=now if decided else None,
            revision=GeneratedSample.revision + 1,
        )
        .execution_options(synchronize_session=False)
    )
    applied = result.rowcount == 1
    s.add(
        Decision(
            sample_id=sample_id,
            status=status,
            reason=reason,
            user=user,
            at=now,
            outcome="applied" if applied else "conflict",
        )
    )
    s.flush()
    s.refresh(sample)
    if applied:
        message = f"Sample {sample_id} is now {status}."
    else:
        by = f" by {sample.decided_by}" if sample.decided_by else ""
        message = (
            f"Not applied: sample {sample_id} was changed meanwhile (now {sample.status}{by}, revision "
            f"{sample.revision}; you saw revision {revision}). Reload it and decide again if needed."
        )
    return DecisionOutcome(applied=applied, status=sample.status, revision=sample.revision, message=message)


def decide(
    s: Session,
    sample_id: int,
    status: str,
    reason: str | None,
    user: str,
    expected_revision: int | None = None,
) -> DecisionOutcome:
    """Accept or reject a sample unless someone changed it since `expected_revision` (None: the current one).

    Of two reviewers deciding the same revision at once exactly one is applied; both attempts are recorded.
    """
    if status not in DECISION_STATUSES:
        raise ValueError(f"A decision is one of {DECISION_STATUSES}, got {status!r}")
    return _change_status(s, sample_id, status, reason, user, expected_revision)


def undo_decision(s: Session, sample_id: int, user: str, expected_revision: int | None = None) -> DecisionOutcome:
    """Put a sample back to pending (recorded as a decision), with the same revision check as decide()."""
    return _change_status(s, sample_id, "pending", None, user, expected_revision)


def list_decisions(s: Session, sample_id: int) -> list[Decision]:
    """Every decision attempt on a sample, oldest first."""
    return list(s.scalars(select(Decision).where(Decision.sample_id == sample_id).order_by(Decision.id)))


# Fine-tuning


def dataset_snapshot(s: Session, classes: Sequence[str]) -> list[dict[str, Any]]:
    """What a fine-tune of `classes` would train on: the real defect images and the accepted samples of them.

    Each item names its image by hash and carries where its defect is, for the masked loss: a real image's boxes,
    a sample's mask (None for a whole-window repaint).
    """
    sources = s.scalars(
        select(SourceImage)
        .where(SourceImage.role == "defect", SourceImage.class_name.in_(classes))
        .order_by(SourceImage.class_name, SourceImage.id)
    )
    samples = s.scalars(
        select(GeneratedSample)
        .where(GeneratedSample.status == "accepted", GeneratedSample.class_name.in_(classes))
        .order_by(GeneratedSample.class_name, GeneratedSample.id)
    )
    return [
        {
            "kind": "source",
            "id": i.id,
            "sha256": i.sha256,
            "class_name": i.class_name,
            "width": i.width,
            "height": i.height,
            "boxes": list(i.boxes_json),
        }
        for i in sources
    ] + [
        {
            "kind": "sample",
            "id": i.id,
            "sha256": i.sha256,
            "class_name": i.class_name,
            "mask_sha256": i.mask_sha256,
        }
        for i in samples
    ]


def create_run(
    s: Session,
    classes: Sequence[str],
    config: dict[str, Any],
    user: str,
    out_dir: str | None = None,
    snapshot: list[dict[str, Any]] | None = None,
) -> FineTuneRun:
    """Queue a fine-tune run; its dataset snapshot is taken now unless given."""
    if not classes:
        raise ValueError("A fine-tune run needs at least one class.")
    run = FineTuneRun(
        status="queued",
        classes_json=list(classes),
        config_json=dict(config),
        dataset_snapshot_json=dataset_snapshot(s, classes) if snapshot is None else snapshot,
        metrics_json={},
        out_dir=out_dir,
        created_by=user,
    )
    s.add(run)
    s.flush()
    return run


def get_run(s: Session, run_id: int) -> FineTuneRun | None:
    """The run with this id (reloaded from the database), or None."""
    return s.get(FineTuneRun, run_id, populate_existing=True)


def list_runs(s: Session, limit: int = 50, offset: int = 0) -> list[FineTuneRun]:
    """Runs, newest first."""
    return list(s.scalars(select(FineTuneRun).order_by(FineTuneRun.id.desc()).limit(limit).offset(offset)))


def start_run(s: Session, run_id: int, out_dir: str | None = None) -> FineTuneRun:
    """Mark a queued run as running; raises ValueError if it is not queued (so only one worker can start it)."""
    values: dict[str, Any] = {"status": "running", "started_at": utc_now()}
    if out_dir is not None:
        values["out_dir"] = out_dir
    result = s.execute(
        update(FineTuneRun)
        .where(FineTuneRun.id == run_id, FineTuneRun.status == "queued")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    run = get_run(s, run_id)
    if run is None:
        raise LookupError(f"No fine-tune run with id {run_id}")
    if result.rowcount != 1:
        raise ValueError(f"Run {run_id} is {run.status}, not queued; it cannot be started.")
    return run


def finish_run(
    s: Session, run_id: int, status: str, metrics: dict[str, Any] | None = None, error: str | None = None
) -> FineTuneRun:
    """Mark a queued or running run as completed, failed or stopped, with its metrics and error."""
    if status not in FINISHED_RUN_STATUSES:
        raise ValueError(f"A run finishes as one of {FINISHED_RUN_STATUSES}, got {status!r}")
    run = get_run(s, run_id)
    if run is None:
        raise LookupError(f"No fine-tune run with id {run_id}")
    if run.status in FINISHED_RUN_STATUSES:
        raise ValueError(f"Run {run_id} already finished as {run.status}.")
    run.status = status
    run.metrics_json = {**run.metrics_json, **(metrics or {})}
    run.error = error
    run.finished_at = utc_now()
    s.flush()
    return run


# Adapters


def register_adapter_version(s: Session, class_name: str, path: str, run_id: int | None = None) -> AdapterVersion:
    """Record a trained adapter as the next version of its class and make it the class's only active one."""
    if get_defect_class(s, class_name) is None:
        raise LookupError(f"Unknown defect class {class_name!r}; create it before registering adapters.")
    latest = s.scalar(select(func.max(AdapterVersion.version)).where(AdapterVersion.class_name == class_name))
    _deactivate_adapters(s, class_name)
    adapter = AdapterVersion(class_name=class_name, version=(latest or 0) + 1, run_id=run_id, path=path, is_active=True)
    s.add(adapter)
    s.flush()
    return adapter


def activate_adapter_version(s: Session, adapter_version_id: int) -> AdapterVersion:
    """Make an earlier (or any) adapter version the active one of its class, e.g. to roll back."""
    adapter = s.get(AdapterVersion, adapter_version_id)
    if adapter is None:
        raise LookupError(f"No adapter version with id {adapter_version_id}")
    _deactivate_adapters(s, adapter.class_name)
    s.execute(
        update(AdapterVersion)
        .where(AdapterVersion.id == adapter_version_id)
        .values(is_active=True)
        .execution_options(synchronize_session=False)
    )
    s.refresh(adapter)
    return adapter


def _deactivate_adapters(s: Session, class_name: str) -> None:
    s.flush()
    s.execute(
        update(AdapterVersion)
        .where(AdapterVersion.class_name == class_name, AdapterVersion.is_active.is_(True))
        .values(is_active=False)
        .execution_options(synchronize_session="fetch")
    )


def active_adapter(s: Session, class_name: str) -> AdapterVersion | None:
    """The active adapter version of a class, or None."""
    query = select(AdapterVersion).where(AdapterVersion.class_name == class_name, AdapterVersion.is_active.is_(True))
    return s.scalars(query).one_or_none()


def list_adapter_versions(s: Session, class_name: str) -> list[AdapterVersion]:
    """All adapter versions of a class, oldest first."""
    query = select(AdapterVersion).where(AdapterVersion.class_name == class_name).order_by(AdapterVersion.version)
    return list(s.scalars(query))


# Exports


def record_export(s: Session, path: str, sha256: str, n_items: int, formats: Sequence[str], user: str) -> Export:
    """Record a written export zip."""
    export = Export(
        path=path, sha256=check_sha256(sha256), n_items=n_items, formats_json=list(formats), created_by=user
    )
    s.add(export)
    s.flush()
    return export


def list_exports(s: Session, limit: int = 50) -> list[Export]:
    """Exports, newest first."""
    return list(s.scalars(select(Export).order_by(Export.id.desc()).limit(limit)))
