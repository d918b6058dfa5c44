"""The use cases the UI and the CLI share: upload, generate, review, fine-tune, export. No Gradio here.

Every change takes the acting `user` and stamps it on the rows it writes. Wrong input raises a ValueError
(or FileNotFoundError) with one readable sentence, before anything is written.

engine modules that import torch are imported inside the methods that run a model, so the storage-only
commands (import, export, verify-export) start without loading torch.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from engine.adapters import DEFAULT_STRENGTH, EMBEDDED_TOKENS, is_adapter, proposed_strength, read_adapter
from engine.config import DEFAULT_MASKED_STRENGTH, PRESETS, GenerationConfig, finetune_config
from engine.data import find_annotation, list_images, parse_voc
from storage import repository
from storage.db import open_database
from storage.export import (
    FORMAT_WRITERS,
    ExportItem,
    SplitPlan,
    export_item_for_sample,
    export_item_for_source,
    write_export,
)
from storage.export import verify_export as verify_export_zip
from storage.files import FileStore, sha256_hex
from storage.tables import SAMPLE_STATUSES, SOURCE_ROLES, utc_now
from webapp.previews import THUMBNAIL_MAX_SIDE, VIEW_MAX_SIDE, ReviewViews, review_views, thumbnail
from webapp.validation import normalise_upload

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]

# The masked loss's weight off the defect: 0.2 gave the lower masked-crop KID in 11 of 12 class × seed pairs on NEU.
MASKED_LOSS_BACKGROUND_WEIGHT = 0.2
# Two pipelines cover the usual review loop (two classes side by side) within ~1 GB on a CPU box.
PIPELINE_CACHE_SIZE = 2
# Previews after a fine-tune: the same seeds every time, so versions can be compared by eye.
PREVIEW_SEEDS = (0, 1, 2)
PREVIEW_STEPS = 20
# Class names become tokens "<name>" and folder names, so they stay short and plain; single inner spaces are
# allowed ("rolled in scale"), as plants name their classes that way.
CLASS_NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]| (?! )){0,62}[A-Za-z0-9_-]?")
LOSS_PATTERN = re.compile(r"loss ([-+0-9.eE]+)")
PAGE_SIZE = 500
SUMMARY_ITEMS = 10
RUNS_STILL_OPEN = ("queued", "running")
RUN_FOLDER_FORMAT = "run-{:04d}"
# Every export carries all formats unless asked otherwise: masks, COCO, YOLO and Pascal VOC (plus ImageFolder).
EXPORT_FORMATS = tuple(FORMAT_WRITERS)
BOX_TEXT_PATTERN = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*")
# One upload batch is validated in memory before anything is stored: 2000 files (NEU holds 1800) and 1 GB
# bound that memory, well above any real camera folder yet far below what would exhaust the host.
MAX_BATCH_FILES = 2000
MAX_BATCH_BYTES = 1024**3
# Realism: a class's uploaded real defects are its reference from this many on (fewer give a noisy typical
# distance); below that, a NEU class uses the shipped NEU features and another class goes unscored. At most
# MAX_REALISM_REFERENCES uploads (the oldest) are used, which bounds the feature pass to a few seconds.
MIN_REALISM_REFERENCES = 3
MAX_REALISM_REFERENCES = 300
REALISM_REJECT_REASON = "below realism threshold"


# Results


@dataclass(frozen=True)
class SourceInfo:
    """An uploaded image as the UI lists it."""

    id: int
    role: str
    class_name: str | None
    name: str
    width: int
    height: int
    path: Path
    uploaded_by: str


@dataclass(frozen=True)
class UploadResult:
    """The stored images (an image uploaded before is returned as its existing row) and what was changed."""

    sources: list[SourceInfo]
    changes: dict[str, list[str]] = field(default_factory=dict)
    # Ids of the images that were stored before (uploaded again, or twice in this batch).
    already_stored: list[int] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line for the UI and the CLI: how many were stored, their ids, and the first few conversions."""
        new = list(dict.fromkeys(s.id for s in self.sources if s.id not in set(self.already_stored)))
        text = f"Stored {len(new)} image(s) (ids {_id_ranges(new)})." if new else "No new image stored."
        if self.already_stored:
            known = list(dict.fromkeys(self.already_stored))
            text += f" {len(known)} already stored (ids {_id_ranges(known)})."
        changed = [f"{name}: {', '.join(notes)}" for name, notes in self.changes.items() if notes]
        if len(changed) > SUMMARY_ITEMS:
            changed = [*changed[:SUMMARY_ITEMS], f"and {len(changed) - SUMMARY_ITEMS} more converted"]
        return text + (" " + "; ".join(changed) + "." if changed else "")


@dataclass(frozen=True)
class ClassInfo:
    """A defect class: its token, the strength to propose and the adapter used to generate it."""

    name: str
    token: str
    default_strength: float
    tuned_strength: float | None
    adapter_version: int | None
    adapter_path: str | None
    # The strength to propose for a masked repaint (auto-place, painted or typed mask): tuned, else the default.
    masked_strength: float = DEFAULT_MASKED_STRENGTH


@dataclass(frozen=True)
class CandidateInfo:
    """One stored candidate of a generation, with its realism (None where the class has no reference).

    `suggested` is "reject" when the realism lies below the generation's threshold: the candidate stays
    pending for the user to decide, and `reject_flagged` rejects such candidates together.
    """

    sample_id: int
    seed: int
    path: Path
    status: str = "pending"
    revision: int = 0
    realism_score: float | None = None
    class_probability: float | None = None
    predicted_class: str | None = None
    suggested: str | None = None

    @property
    def pre_rejected(self) -> bool:
        return self.suggested == "reject"


@dataclass(frozen=True)
class GenerationOutcome:
    """The candidates generated from one source image."""

    source_id: int
    class_name: str
    candidates: list[CandidateInfo]
    wall_time_s: float
    # Seeds whose candidate was identical (same sha256) to a stored sample: not stored again.
    duplicate_seeds: list[int] = field(default_factory=list)
    # The untouched slab's realism score on the repainted region (None: the class has no reference).
    baseline_realism: float | None = None

    @property
    def sample_ids(self) -> list[int]:
        """The stored samples' ids, in seed order."""
        return [c.sample_id for c in self.candidates]

    @property
    def flagged_ids(self) -> list[int]:
        """The candidates pre-rejected by the realism threshold."""
        return [c.sample_id for c in self.candidates if c.pre_rejected]

    def by_realism(self) -> list[CandidateInfo]:
        """The candidates best first (unscored ones last, in seed order)."""
        return sorted(self.candidates, key=lambda c: realism_sort_key(c.realism_score))

    def images(self) -> list[Image.Image]:
        """The candidate images, loaded from the file store."""
        images = []
        for candidate in self.candidates:
            with Image.open(candidate.path) as image:
                images.append(image.copy())
        return images


@dataclass(frozen=True)
class DecisionResult:
    """A review decision: whether it was applied and the sample's state afterwards."""

    sample_id: int
    applied: bool
    status: str
    revision: int
    message: str

    @classmethod
    def of(cls, sample_id: int, outcome: repository.DecisionOutcome) -> DecisionResult:
        """The result of a decision on a sample, from the repository's outcome."""
        return cls(sample_id, outcome.applied, outcome.status, outcome.revision, outcome.message)


@dataclass(frozen=True)
class StoredBatch:
    """A batch generated from the command line, stored as pending samples."""

    sample_ids: list[int]
    duplicates: list[str]
    sources: list[SourceInfo]

    @property
    def summary(self) -> str:
        skipped = f"; {len(self.duplicates)} identical to stored samples skipped" if self.duplicates else ""
        return f"Stored {len(self.sample_ids)} pending samples (ids {_id_ranges(self.sample_ids)}){skipped}"


@dataclass(frozen=True)
class ClassCounts:
    """Images per class: uploaded real defects and generated samples by review status."""

    class_name: str
    real: int = 0
    pending: int = 0
    accepted: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class SampleRow:
    """One generated sample in the dataset table."""

    id: int
    class_name: str
    status: str
    strength: float
    seed: int
    source_image_id: int
    created_by: str
    decided_by: str | None
    reject_reason: str | None
    realism_score: float | None = None
    # A masked repaint's background preservation outside the mask (dB) and mean change inside it (0-1).
    background_psnr: float | None = None
    mask_change: float | None = None


@dataclass(frozen=True)
class DatasetView:
    counts: list[ClassCounts]
    rows: list[SampleRow]


@dataclass(frozen=True)
class SampleDetails:
    """A sample with every parameter that made it and its review history."""

    id: int
    class_name: str
    status: str
    revision: int
    path: Path
    source_image_id: int
    params: dict[str, Any]
    decisions: list[dict[str, Any]]
    mask_path: Path | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)
    realism_score: float | None = None

    @property
    def pre_rejected(self) -> bool:
        """Whether the realism threshold of its generation flagged it."""
        return bool(self.params.get("pre_rejected"))


@dataclass(frozen=True)
class FineTuneStatus:
    """Where a fine-tune run stands: live progress while it trains, its row's state afterwards."""

    run_id: int
    status: str
    classes: list[str]
    step: int
    total: int
    message: str
    loss: float | None
    previews: list[Path]
    error: str | None = None
    resumed_from: int | None = None
    elapsed_s: float | None = None
    # Seconds left at the pace of the steps this session has trained; None before the first step.
    eta_s: float | None = None

    @property
    def is_active(self) -> bool:
        return self.status in RUNS_STILL_OPEN

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


@dataclass(frozen=True)
class AdapterVersionInfo:
    """One trained adapter of a class; the active one is used for generation."""

    id: int
    class_name: str
    version: int
    run_id: int | None
    path: str
    is_active: bool
    created_at: str

    @property
    def label(self) -> str:
        run = f"run {self.run_id}" if self.run_id is not None else "registered"
        return f"v{self.version} · {run} · {self.created_at[:16].replace('T', ' ')}" + (
            " · active" if self.is_active else ""
        )


@dataclass(frozen=True)
class ExportResult:
    """A written export zip."""

    export_id: int
    path: Path
    sha256: str
    n_items: int
    counts: dict[str, dict[str, int]]
    split_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _RunProgress:
    """In-memory progress of a fine-tune thread, updated by the engine's progress callback."""

    run_id: int
    total: int
    step: int = 0
    message: str = "queued"
    loss: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def report(self, step: int, total: int, message: str) -> None:
        self.step, self.total, self.message = step, total, message
        match = LOSS_PATTERN.search(message)
        if match:
            self.loss = float(match.group(1))

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def check_class_name(name: str | None) -> str:
    """A defect class name, stripped; raises ValueError unless it is 1-64 letters, digits, '_', '-' or single spaces."""
    name = (name or "").strip()
    if not CLASS_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"Class name {name!r} must be 1-64 letters, digits, '_', '-' or single spaces (starting with no symbol)."
        )
    return name


def realism_sort_key(score: float | None) -> tuple[bool, float]:
    """Sort key for best-first realism order: higher scores first, unscored last (a stable sort keeps ties)."""
    return (score is None, -(score or 0.0))


def check_realism_threshold(threshold: float | None) -> float | None:
    """A realism threshold in [0, 1], or None (off); raises ValueError otherwise."""
    if threshold is None:
        return None
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"The realism threshold must lie between 0 and 1, got {threshold}.")
    return threshold


def verify_export(path: Path) -> list[str]:
    """Problems found in an export zip (an empty list: it is intact)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Export zip not found: {path}")
    return verify_export_zip(path)


class StudioService:
    """The studio's use cases over one data folder: database, file store, run folders and a pipeline cache."""

    def __init__(self, data_dir: Path, model: str | None = None, database_url: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.database = open_database(self.data_dir, database_url)
        self.files = FileStore(self.data_dir / "files")
        self.runs_dir = self.data_dir / "runs"
        self.exports_dir = self.data_dir / "exports"
        self.previews_dir = self.data_dir / "previews"
        self.preview_steps = PREVIEW_STEPS
        self._pipelines: OrderedDict[tuple[str, str | None], Any] = OrderedDict()
        self._model_lock = threading.RLock()
        self._runs: dict[int, _RunProgress] = {}
        self._runs_lock = threading.Lock()
        self._model_ref: str | None = None
        self._realism_lock = threading.Lock()
        self._feature_net: Any = None
        self._shipped_references: dict[str, Any] | None = None
        self._scorers: dict[str, tuple[tuple[str, ...], Any, str]] = {}
        self._register_shipped_adapter()
        self.sync_default_strengths()

    # Setup

    @property
    def model_ref(self) -> str:
        """The resolved base model (a local folder or hub id); raises FileNotFoundError if it is missing."""
        if self._model_ref is None:
            from engine.models import resolve_model

            self._model_ref = resolve_model(self.model)
        return self._model_ref

    def _uses_embedded_model(self) -> bool:
        return self.model in (None, "", "default", "embedded")

    def _register_shipped_adapter(self) -> None:
        """On first start with the embedded model, register its shipped defect tokens as version 1 of each class."""
        if not self._uses_embedded_model():
            return
        if not is_adapter(EMBEDDED_TOKENS):
            return
        info = read_adapter(EMBEDDED_TOKENS)
        path = str(EMBEDDED_TOKENS.resolve())
        with self.database.session() as s:
            known = {v.path for name in info.tokens for v in repository.list_adapter_versions(s, name)}
        if path not in known:
            self.register_adapter(EMBEDDED_TOKENS)

    def fail_interrupted_runs(self) -> None:
        """Mark runs left queued or running by a previous app process as failed (resumable).

        Only the process that trains (the app) calls this at start: a CLI command beside a live app must not.
        """
        with self.database.transaction() as s:
            for run in repository.list_runs(s, limit=PAGE_SIZE):
                if run.status in RUNS_STILL_OPEN:
                    error = "Interrupted: the studio stopped during this run. Resume it to continue."
                    repository.finish_run(s, run.id, "failed", error=error)

    def close(self) -> None:
        """Ask running fine-tunes to stop at their next step, wait briefly, and release the database."""
        with self._runs_lock:
            progresses = list(self._runs.values())
        for progress in progresses:
            progress.stop.set()
        for progress in progresses:
            if progress.thread is not None:
                progress.thread.join(timeout=60)
        with self._model_lock:
            self._pipelines.clear()
        self.database.dispose()

    def register_adapter(self, path: Path, run_id: int | None = None) -> list[ClassInfo]:
        """Make a finished adapter folder the active adapter of each class it holds (creating the classes).

        A folder registered before becomes active again (a rollback); a new folder becomes the next version.
        A token's tuned `default_strength` (tokens.json, written by tune-strength) becomes its class's default.
        """
        path = Path(path).resolve()
        info = self._read_matching_adapter(path)
        with self.database.transaction() as s:
            for name, token in info.tokens.items():
                repository.ensure_defect_class(s, check_class_name(name), token.token, token.init_word)
                if token.default_strength:
                    repository.set_default_strength(s, name, token.default_strength)
                earlier = [v for v in repository.list_adapter_versions(s, name) if v.path == str(path)]
                if earlier:
                    if not earlier[-1].is_active:
                        repository.activate_adapter_version(s, earlier[-1].id)
                else:
                    repository.register_adapter_version(s, name, str(path), run_id=run_id)
        return [c for c in self.list_classes() if c.name in info.tokens]

    def sync_default_strengths(self) -> None:
        """Copy each active adapter's tuned strengths from its tokens.json to the classes (done at start).

        `tune-strength` writes into the adapter folder, not the database; this carries its choice to the UI.
        An unreadable tokens.json is logged and skipped so one broken folder does not stop the studio. The file
        is read as JSON here, so that a start does not import torch.
        """
        with self.database.transaction() as s:
            for defect_class in repository.list_defect_classes(s):
                adapter = repository.active_adapter(s, defect_class.name)
                if adapter is None:
                    continue
                try:
                    token = read_adapter(adapter.path).tokens.get(defect_class.name)
                    tuned = token.default_strength if token else None
                except (OSError, ValueError, KeyError, TypeError) as error:
                    logger.warning(
                        "Cannot read the tuned strength of %s in %s: %s", defect_class.name, adapter.path, error
                    )
                    continue
                if tuned is None or tuned == defect_class.default_strength:
                    continue
                if not isinstance(tuned, int | float) or not 0.0 < tuned <= 1.0:
                    logger.warning("Ignoring the tuned strength %s of %s in %s", tuned, defect_class.name, adapter.path)
                    continue
                repository.set_default_strength(s, defect_class.name, tuned)

    def _read_matching_adapter(self, path: Path):
        """The adapter folder's info; raises ValueError if it was trained on another base model."""
        from engine.models import model_hash

        info = read_adapter(path)
        base_hash = model_hash(self.model_ref)
        if info.base_model_hash and info.base_model_hash != base_hash:
            raise ValueError(
                f"Adapter {Path(path).name} was trained on another base model (hash {info.base_model_hash}); "
                f"this studio runs {base_hash}. Start the studio with that model or fine-tune again."
            )
        return info

    # Uploads

    def upload_images(
        self, files: Sequence[tuple[str, bytes]], role: str, class_name: str | None, user: str
    ) -> UploadResult:
        """Store uploaded images of one role (and class, for real defects); all are stored or none."""
        return self._store_images([(name, data, class_name, []) for name, data in files], role, user)

    def import_folder(
        self,
        images_dir: Path,
        role: str,
        class_name: str | None = None,
        annotations_dir: Path | None = None,
        user: str = "cli",
    ) -> UploadResult:
        """Import a folder: flat images of one class (or clean slabs), or `<class>/` subfolders of real defects.

        With `annotations_dir`, a Pascal VOC file there gives an image's boxes: `<image stem>.xml`, or NEU-DET's
        `<class>_<n>.xml` for an image `<Ab>_<n>` of that class.
        """
        # 1. Check inputs
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise FileNotFoundError(f"Image folder not found: {images_dir}")
        if annotations_dir is not None and not Path(annotations_dir).is_dir():
            raise FileNotFoundError(f"Annotation folder not found: {annotations_dir}")
        class_dirs = [d for d in sorted(images_dir.iterdir()) if d.is_dir() and list_images(d)]

        # 2. Decide each file's class
        if role == "clean" or class_name:
            if class_dirs and not list_images(images_dir):
                raise ValueError(f"{images_dir} holds class subfolders; import it without a class name as defects.")
            paths = [(path, class_name) for path in list_images(images_dir)]
        elif class_dirs:
            paths = [(path, d.name) for d in class_dirs for path in list_images(d)]
        else:
            raise ValueError(f"Give a class name, or put the images of {images_dir} in <class>/ subfolders.")
        if not paths:
            raise ValueError(f"No images in {images_dir}.")

        # 3. Read boxes and store everything in one go
        entries = []
        for path, image_class in paths:
            xml = find_annotation(annotations_dir, path, image_class) if annotations_dir is not None else None
            boxes = parse_voc(xml) if xml is not None else []
            entries.append((path.name, path.read_bytes(), image_class, boxes))
        return self._store_images(entries, role, user)

    def _store_images(self, entries: list[tuple[str, bytes, str | None, list]], role: str, user: str) -> UploadResult:
        """Validate every image first, then write rows and files in one transaction: a refusal writes nothing."""
        # 1. Check inputs (UploadError names the file)
        if role not in SOURCE_ROLES:
            raise ValueError(f"Image role must be one of {', '.join(SOURCE_ROLES)}, got {role!r}.")
        if not entries:
            raise ValueError("No files were uploaded.")
        total_bytes = sum(len(data) for _, data, _, _ in entries)
        if len(entries) > MAX_BATCH_FILES:
            raise ValueError(f"{len(entries)} files at once; the limit is {MAX_BATCH_FILES}, so upload them in parts.")
        if total_bytes > MAX_BATCH_BYTES:
            raise ValueError(
                f"{total_bytes / 2**20:.0f} MB in one batch; the limit is {MAX_BATCH_BYTES // 2**20} MB, "
                "so upload it in parts."
            )
        checked = []
        for name, data, class_name, boxes in entries:
            if role == "defect":
                if not class_name:
                    raise ValueError("Real defect images need a defect class; choose or type one.")
                class_name = check_class_name(class_name)
            elif class_name:
                raise ValueError("A clean slab has no defect class; leave the class empty.")
            image = normalise_upload(name, data)
            try:
                repository.normalize_boxes(boxes, image.width, image.height)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from error
            checked.append((image, class_name, boxes))

        # 2. Rows first, files last, in one transaction
        with self.database.transaction() as s:
            rows, already_stored, seen = [], [], set()
            for image, class_name, boxes in checked:
                sha256 = sha256_hex(image.png_bytes)
                known = sha256 in seen or repository.find_source_by_sha256(s, sha256) is not None
                seen.add(sha256)
                row = repository.add_source_image(
                    s, sha256, role, class_name, image.name, image.width, image.height, boxes, user
                )
                if known:
                    already_stored.append(row.id)
                if (row.role, row.class_name) != (role, class_name):
                    kind = f"a real defect of class {row.class_name!r}" if row.role == "defect" else "a clean slab"
                    raise ValueError(f"{image.name} is already stored as {kind} (image {row.id}).")
                rows.append(row)
            for image, _, _ in checked:
                self.files.put(image.png_bytes, ".png")
            sources = [self._source_info(row) for row in rows]
        return UploadResult(sources, {image.name: image.changes for image, _, _ in checked}, already_stored)

    def source_boxes(self, source_id: int) -> list[dict[str, Any]]:
        """The defect boxes stored with an uploaded image."""
        with self.database.session() as s:
            source = repository.get_source_image(s, source_id)
            if source is None:
                raise ValueError(f"There is no uploaded image with id {source_id}.")
            return list(source.boxes_json)

    def delete_source(self, source_id: int, with_samples: bool = False) -> int:
        """Delete an uploaded image with its pending and rejected samples; one with accepted samples is refused
        unless `with_samples` (they go too). Returns how many samples were deleted."""
        with self.database.transaction() as s:
            if repository.get_source_image(s, source_id) is None:
                raise ValueError(f"There is no uploaded image with id {source_id}.")
            accepted = repository.source_sample_counts(s, source_id).get("accepted", 0)
            if accepted and not with_samples:
                raise ValueError(
                    f"Image {source_id} has {accepted} accepted sample(s) made from it; delete it with its samples, "
                    "or keep it."
                )
            return repository.delete_source_image(s, source_id, with_samples=True)

    def update_source(self, source_id: int, class_name: str | None = None, box_text: str | None = None) -> SourceInfo:
        """Re-class a real defect and/or set its boxes from "x0,y0,x1,y1" lines (empty text: no boxes)."""
        boxes = None
        with self.database.transaction() as s:
            source = repository.get_source_image(s, source_id)
            if source is None:
                raise ValueError(f"There is no uploaded image with id {source_id}.")
            new_class = check_class_name(class_name) if class_name else None
            if box_text is not None:
                label = new_class or source.class_name or ""
                boxes = [{**box, "label": label} for box in parse_box_text(box_text)] if box_text.strip() else []
            try:
                row = repository.update_source_image(s, source_id, new_class, boxes)
            except LookupError as error:
                raise ValueError(str(error)) from error
            return self._source_info(row)

    def list_sources(self, role: str | None = None, class_name: str | None = None) -> list[SourceInfo]:
        """Uploaded images, oldest first, optionally of one role and class."""
        if role is not None and role not in SOURCE_ROLES:
            raise ValueError(f"Image role must be one of {', '.join(SOURCE_ROLES)}, got {role!r}.")
        with self.database.session() as s:
            rows = _all_pages(lambda offset: repository.list_source_images(s, role, class_name, PAGE_SIZE, offset))
            return [self._source_info(row) for row in rows]

    def _source_info(self, row) -> SourceInfo:
        return SourceInfo(
            row.id,
            row.role,
            row.class_name,
            row.original_name,
            row.width,
            row.height,
            self.files.path(row.sha256),
            row.uploaded_by,
        )

    # Classes

    def list_classes(self) -> list[ClassInfo]:
        """Every defect class with its token, proposed strength and active adapter."""
        with self.database.session() as s:
            classes = []
            for defect_class in repository.list_defect_classes(s):
                adapter = repository.active_adapter(s, defect_class.name)
                adapter_path = adapter.path if adapter else None
                classes.append(
                    ClassInfo(
                        name=defect_class.name,
                        token=defect_class.token,
                        default_strength=defect_class.default_strength or DEFAULT_STRENGTH,
                        tuned_strength=defect_class.default_strength,
                        adapter_version=adapter.version if adapter else None,
                        adapter_path=adapter_path,
                        masked_strength=proposed_strength(adapter_path, defect_class.name, masked=True),
                    )
                )
            return classes

    def trainable_classes(self) -> list[str]:
        """Class names with a learned token or uploaded real defect images: what a fine-tune can learn."""
        with self.database.session() as s:
            known = {c.name for c in repository.list_defect_classes(s)}
        uploaded = {source.class_name for source in self.list_sources(role="defect") if source.class_name}
        return sorted(known | uploaded)

    # Generation and review

    def generate_candidates(
        self,
        source_id: int,
        config: GenerationConfig,
        user: str,
        progress: ProgressFn | None = None,
        mask: Image.Image | None = None,
        realism_threshold: float | None = None,
    ) -> GenerationOutcome:
        """Generate candidates on a clean slab with a class's active adapter and store them as pending samples.

        With a `mask` (the slab's size, white = repaint) or `config.auto_place`, only the masked region is
        repainted; each sample then stores its mask (file store) and the boxes of the mask's components.
        Each candidate's repainted region gets a realism score (see `realism_scorer`), stored in its row and,
        with the class probability and predicted class, in its params. Candidates scoring below
        `realism_threshold` are flagged "pre_rejected" but stay pending: the user decides.
        """
        from engine.generate import generate
        from engine.masks import repainted_region

        # 1. Check inputs
        threshold = check_realism_threshold(realism_threshold)
        with self.database.session() as s:
            source = repository.get_source_image(s, source_id)
            if source is None:
                raise ValueError(f"There is no uploaded image with id {source_id}.")
            if source.role != "clean":
                raise ValueError(f"Image {source_id} is a real defect; generate on a clean slab.")
            if repository.get_defect_class(s, config.class_name) is None:
                known = ", ".join(c.name for c in repository.list_defect_classes(s)) or "none yet"
                raise ValueError(f"Unknown defect class {config.class_name!r}; known classes: {known}.")
            adapter = repository.active_adapter(s, config.class_name)
            if adapter is None:
                raise ValueError(f"Class {config.class_name!r} has no trained adapter yet; fine-tune it first.")
            source_sha256, adapter_path, adapter_version = source.sha256, adapter.path, adapter.version
        with Image.open(io.BytesIO(self.files.read(source_sha256))) as opened:
            init_image = opened.copy()

        # 2. Generate
        with self._model_lock:
            pipe = self._pipeline(adapter_path)
            result = generate(pipe, init_image, config, progress, mask=mask)

        # 3. Score each candidate against the class's real images
        crops = [repainted_region(c.image, c.params) for c in result.candidates]
        realism = self._score_realism(config.class_name, crops)
        # The untouched slab's score on the same region: the baseline a candidate's score is read against.
        untouched = repainted_region(init_image.convert("RGB"), result.candidates[0].params)
        baseline = (self._score_realism(config.class_name, [untouched])[0] or {}).get("score")

        # 4. Store each candidate (PNG with its parameters, realism included, and its mask) and its row
        stored = []
        for candidate, score in zip(result.candidates, realism, strict=True):
            # One hash per source everywhere (PNG metadata, manifest, lineage): the stored file's.
            candidate.params.update(
                adapter_version=adapter_version,
                adapter_folder=Path(adapter_path).name,
                source_image_id=source_id,
                source_sha256=source_sha256,
            )
            flagged = threshold is not None and score is not None and score["score"] < threshold
            if score is not None:
                candidate.params["realism"] = {**score, "untouched_source_score": baseline}
            if threshold is not None:
                candidate.params.update(realism_threshold=threshold, pre_rejected=flagged)
            mask_png = candidate.mask_png()
            mask_sha256 = self.files.put(mask_png, ".png") if mask_png is not None else None
            stored.append((candidate, self.files.put(candidate.png_bytes(), ".png"), mask_sha256, score, flagged))
        duplicate_seeds = []
        with self.database.transaction() as s:
            candidates = []
            for candidate, sha256, mask_sha256, score, flagged in stored:
                if repository.find_sample_by_sha256(s, sha256) is not None:
                    duplicate_seeds.append(candidate.seed)
                    continue
                params = candidate.params
                window = params["window"]
                # A masked repaint's boxes are its mask's components. A whole-window img2img has none: its defect
                # may lie anywhere in the window, and a box must mean "the defect is here" (as the CLI writes it).
                boxes = params.get("boxes", [])
                sample = repository.add_sample(
                    s,
                    sha256=sha256,
                    class_name=config.class_name,
                    source_image_id=source_id,
                    model_hash=params["model_hash"],
                    model_ref=params["model_ref"],
                    token=params["token"],
                    adapter_path=adapter_path,
                    adapter_version=adapter_version,
                    strength=config.strength,
                    steps=config.steps,
                    guidance=config.guidance_scale,
                    seed=candidate.seed,
                    prompt=params["prompt"],
                    negative_prompt=params["negative_prompt"],
                    width=params["width"],
                    height=params["height"],
                    window_json=window,
                    mask_sha256=mask_sha256,
                    boxes_json=boxes,
                    realism_score=score["score"] if score is not None else None,
                    params_json=params,
                    created_by=user,
                )
                candidates.append(
                    CandidateInfo(
                        sample.id,
                        candidate.seed,
                        self.files.path(sha256),
                        realism_score=score["score"] if score is not None else None,
                        class_probability=score["class_probability"] if score is not None else None,
                        predicted_class=score["predicted_class"] if score is not None else None,
                        suggested="reject" if flagged else None,
                    )
                )
        if duplicate_seeds:
            logger.warning("Skipped %d candidate(s) identical to stored samples.", len(duplicate_seeds))
        return GenerationOutcome(
            source_id, config.class_name, candidates, result.wall_time_s, duplicate_seeds, baseline
        )

    # Realism

    def realism_scorer(self, class_name: str) -> tuple[Any, str] | None:
        """The class's RealismScorer and a description of its reference, or None when it has no reference.

        The reference is the class's uploaded real defects once there are MIN_REALISM_REFERENCES of them; a
        NEU class with fewer uses the shipped features of NEU's training pool. A scorer is kept until the
        class's uploads change.
        """
        from engine.evaluate import RealismScorer
        from engine.features import image_to_array

        with self.database.session() as s:
            rows = repository.list_source_images(s, "defect", class_name, MAX_REALISM_REFERENCES, 0)
            shas = tuple(row.sha256 for row in rows)
        uploaded = len(shas) >= MIN_REALISM_REFERENCES
        key = shas if uploaded else ()
        with self._realism_lock:
            cached = self._scorers.get(class_name)
            if cached is not None and cached[0] == key:
                return cached[1], cached[2]
            net = self._load_feature_net()
            if net is None:
                return None
            if uploaded:
                size = net.config.input_size
                images = []
                for sha256 in shas:
                    with Image.open(io.BytesIO(self.files.read(sha256))) as opened:
                        images.append(Image.fromarray(image_to_array(opened, size)))
                scorer = RealismScorer(net, {class_name: images})
                reference = f"{len(images)} uploaded real defect images"
            else:
                shipped = self._load_shipped_references()
                if class_name not in shipped:
                    return None
                scorer = RealismScorer.from_features(net, {class_name: shipped[class_name]})
                reference = "NEU training pool (shipped features)"
            self._scorers[class_name] = (key, scorer, reference)
            return scorer, reference

    def _score_realism(self, class_name: str, images: list[Image.Image]) -> list[dict[str, Any] | None]:
        """Each image's realism for the class with its parts and reference, or None where it has no reference."""
        found = self.realism_scorer(class_name)
        if found is None:
            return [None] * len(images)
        scorer, reference = found
        return [{**asdict(score), "reference": reference} for score in scorer.score_many(images, class_name)]

    def _load_feature_net(self):
        """The shipped steel feature network, loaded once; None (logged) if it is missing."""
        if self._feature_net is None:
            from engine.features import load_feature_net

            try:
                self._feature_net = load_feature_net()
            except FileNotFoundError as error:
                logger.warning("Realism scores are off: %s", error)
                self._feature_net = False
        return self._feature_net or None

    def _load_shipped_references(self) -> dict[str, Any]:
        """The shipped NEU reference features by class, loaded once; empty (logged) if missing or stale."""
        if self._shipped_references is None:
            from engine.evaluate import load_reference_features

            try:
                self._shipped_references = load_reference_features()
            except (FileNotFoundError, ValueError) as error:
                logger.warning("NEU classes without uploaded real defects get no realism score: %s", error)
                self._shipped_references = {}
        return self._shipped_references

    def _pipeline(self, adapter_path: str | None):
        """A cached pipeline for (base model, adapter folder); the least recently used one is dropped."""
        from engine.models import load_pipeline

        key = (self.model_ref, adapter_path)
        with self._model_lock:
            if key in self._pipelines:
                self._pipelines.move_to_end(key)
                return self._pipelines[key]
            if adapter_path is not None:
                self._read_matching_adapter(Path(adapter_path))
            pipe = load_pipeline(self.model_ref, adapter_path)
            self._pipelines[key] = pipe
            while len(self._pipelines) > PIPELINE_CACHE_SIZE:
                self._pipelines.popitem(last=False)
            return pipe

    def decide(
        self, sample_id: int, status: str, reason: str | None, user: str, expected_revision: int | None = None
    ) -> DecisionResult:
        """Accept or reject a sample, unless someone changed it since `expected_revision` (None: do not check)."""
        if status not in ("accepted", "rejected"):
            raise ValueError(f"A decision is 'accepted' or 'rejected', got {status!r}.")
        reason = (reason or "").strip() or None
        with self.database.transaction() as s:
            self._require_sample(s, sample_id)
            outcome = repository.decide(s, sample_id, status, reason, user, expected_revision)
        return DecisionResult.of(sample_id, outcome)

    def undo(self, sample_id: int, user: str, expected_revision: int | None = None) -> DecisionResult:
        """Put a decided sample back to pending (recorded as a decision)."""
        with self.database.transaction() as s:
            sample = self._require_sample(s, sample_id)
            if sample.status == "pending":
                raise ValueError(f"Sample {sample_id} is pending; there is no decision to undo.")
            outcome = repository.undo_decision(s, sample_id, user, expected_revision)
        return DecisionResult.of(sample_id, outcome)

    def reject_flagged(
        self, sample_ids: Sequence[int], user: str, realism_threshold: float | None = None
    ) -> list[DecisionResult]:
        """Reject, in one transaction, the pending samples among `sample_ids` that the realism threshold flags.

        Without `realism_threshold` the flags set at generation count (params["pre_rejected"]); with one, every
        scored sample below it. Decided and unscored samples are left as they are. Returns the decisions made.
        """
        threshold = check_realism_threshold(realism_threshold)
        results = []
        with self.database.transaction() as s:
            samples = [self._require_sample(s, int(i)) for i in dict.fromkeys(sample_ids)]
            for sample in samples:
                if sample.status != "pending":
                    continue
                if threshold is None:
                    flagged = bool(sample.params_json.get("pre_rejected"))
                else:
                    flagged = sample.realism_score is not None and sample.realism_score < threshold
                if not flagged:
                    continue
                outcome = repository.decide(s, sample.id, "rejected", REALISM_REJECT_REASON, user, sample.revision)
                results.append(DecisionResult.of(sample.id, outcome))
        return results

    def store_generated(
        self, folder: Path, class_name: str, inits: Sequence[Path], init_role: str, user: str
    ) -> StoredBatch:
        """Store the PNGs a batch generation wrote in `folder` (flagged ones included) as pending samples.

        The init images become source images (`init_role`: real defects of the class, or clean slabs) unless
        already stored; each sample's source is the first init image its PNG's metadata names. A PNG identical
        (same sha256) to a stored sample is skipped and named in `duplicates`. All rows land in one transaction.
        """
        from engine.data import MASK_SUFFIX
        from engine.generate import read_png_parameters

        class_name = check_class_name(class_name)
        folder = Path(folder)
        outputs = sorted(p for p in folder.rglob("*.png") if not p.name.endswith(MASK_SUFFIX))
        if not outputs:
            raise ValueError(f"No generated images in {folder}.")
        sources = self._ensure_sources(inits, init_role, class_name if init_role == "defect" else None, user)
        source_of = {path.name: source for path, source in zip(inits, sources, strict=True)}
        with self.database.session() as s:
            source_sha256_of = {info.id: repository.get_source_image(s, info.id).sha256 for info in sources}
        sample_ids, duplicates = [], []
        with self.database.transaction() as s:
            if repository.get_defect_class(s, class_name) is None:
                repository.ensure_defect_class(s, class_name, f"<{class_name}>", class_name)
            for path in outputs:
                data = path.read_bytes()
                sha256 = sha256_hex(data)
                if repository.find_sample_by_sha256(s, sha256) is not None:
                    duplicates.append(path.name)
                    continue
                params = read_png_parameters(data)
                source = source_of.get(params["init"]["sources"][0]) if "init" in params else sources[0]
                mask_path = path.with_name(path.stem + MASK_SUFFIX)
                mask_sha256 = self.files.put(mask_path.read_bytes(), ".png") if mask_path.exists() else None
                realism = params.get("realism") or {}
                sample = repository.add_sample(
                    s,
                    sha256=self.files.put(data, ".png"),
                    class_name=class_name,
                    source_image_id=source.id,
                    model_hash=params["model_hash"],
                    model_ref=params["model_ref"],
                    token=params["token"],
                    adapter_path=params.get("adapter_path"),
                    adapter_version=version if isinstance(version := params.get("adapter_version"), int) else None,
                    strength=params["strength"],
                    steps=params["steps"],
                    guidance=params["guidance_scale"],
                    seed=params["seed"],
                    prompt=params["prompt"],
                    negative_prompt=params["negative_prompt"],
                    width=params["width"],
                    height=params["height"],
                    window_json=params["window"],
                    mask_sha256=mask_sha256,
                    boxes_json=params.get("boxes", []),
                    realism_score=realism.get("score"),
                    params_json={
                        **params,
                        "source_image_id": source.id,
                        "source_sha256": source_sha256_of[source.id],
                        "batch_folder": str(folder.resolve()),
                    },
                    created_by=user,
                )
                sample_ids.append(sample.id)
        return StoredBatch(sample_ids, duplicates, sources)

    def _ensure_sources(self, paths: Sequence[Path], role: str, class_name: str | None, user: str) -> list[SourceInfo]:
        """The source rows of these image files, storing those not stored yet (in the order given)."""
        entries = [(path.name, path.read_bytes(), class_name, []) for path in paths]
        known = {}
        with self.database.session() as s:
            for name, data, _, _ in entries:
                row = repository.find_source_by_sha256(s, sha256_hex(normalise_upload(name, data).png_bytes))
                if row is not None:
                    known[name] = self._source_info(row)
        missing = [entry for entry in entries if entry[0] not in known]
        if missing:
            for info in self._store_images(missing, role, user).sources:
                known[info.name] = info
        return [known[path.name] for path in paths]

    def review_queue(
        self,
        status: str | None = "pending",
        class_name: str | None = None,
        source_id: int | None = None,
        limit: int = 200,
        offset: int = 0,
    ) -> list[SampleRow]:
        """Samples of every batch, oldest first, by status (None: all), class and source: the review queue."""
        if status is not None and status not in SAMPLE_STATUSES:
            raise ValueError(f"Status must be one of {', '.join(SAMPLE_STATUSES)}, got {status!r}.")
        with self.database.session() as s:
            samples = repository.list_samples(
                s, class_name, status, limit, offset, newest_first=False, source_image_id=source_id
            )
            return [_sample_row(x) for x in samples]

    @staticmethod
    def _require_sample(s, sample_id: int):
        sample = repository.get_sample(s, sample_id)
        if sample is None:
            raise ValueError(f"There is no sample with id {sample_id}.")
        return sample

    # Dataset

    def dataset_view(self, class_name: str | None = None, status: str | None = None, limit: int = 200) -> DatasetView:
        """Counts per class (real images and samples by status) and the newest samples matching the filters."""
        if status is not None and status not in SAMPLE_STATUSES:
            raise ValueError(f"Status must be one of {', '.join(SAMPLE_STATUSES)}, got {status!r}.")
        counts = self.class_counts()
        with self.database.session() as s:
            rows = [_sample_row(x) for x in repository.list_samples(s, class_name, status, limit=limit)]
        return DatasetView(counts, rows)

    def class_counts(self) -> list[ClassCounts]:
        """Images per class: uploaded real defects and generated samples by review status."""
        real = defaultdict(int)
        for source in self.list_sources(role="defect"):
            real[source.class_name] += 1
        with self.database.session() as s:
            by_status = repository.counts_by_class_and_status(s)
        names = sorted(set(real) | {name for name, _ in by_status})
        return [
            ClassCounts(name, real[name], *(by_status.get((name, st), 0) for st in SAMPLE_STATUSES)) for name in names
        ]

    def sample_details(self, sample_id: int) -> SampleDetails:
        """A sample's image path, parameters and review history."""
        with self.database.session() as s:
            sample = self._require_sample(s, sample_id)
            decisions = [
                {"status": d.status, "reason": d.reason, "user": d.user, "at": d.at.isoformat(), "outcome": d.outcome}
                for d in repository.list_decisions(s, sample_id)
            ]
            return SampleDetails(
                sample.id,
                sample.class_name,
                sample.status,
                sample.revision,
                self.files.path(sample.sha256),
                sample.source_image_id,
                dict(sample.params_json),
                decisions,
                self.files.path(sample.mask_sha256) if sample.mask_sha256 else None,
                list(sample.boxes_json),
                sample.realism_score,
            )

    def review_views(self, details: SampleDetails, max_side: int = VIEW_MAX_SIDE) -> ReviewViews:
        """Close-up views of a sample (from `sample_details`) for judging: its repainted region, its source there
        and their difference."""
        with self.database.session() as s:
            source = repository.get_source_image(s, details.source_image_id)
            source_path = self.files.path(source.sha256) if source is not None else None
        return review_views(
            f"sample-{details.id}",
            details.path,
            source_path,
            details.params,
            self.previews_dir,
            details.mask_path,
            details.boxes,
            details.class_name,
            max_side,
        )

    def preview(self, path: Path, max_side: int = THUMBNAIL_MAX_SIDE) -> Path:
        """A downscaled copy of a stored image for the browser (cached), or the image when it is small already."""
        return thumbnail(path, self.previews_dir, max_side)

    def real_examples(self, class_name: str, limit: int = 4) -> list[Path]:
        """Previews of the class's first uploaded real defects, to compare a candidate with."""
        return [self.preview(source.path) for source in self.list_sources(role="defect", class_name=class_name)[:limit]]

    def box_mask(self, source_id: int, text: str) -> Image.Image:
        """A mask of the source's size with the boxes of `text` ("x0,y0,x1,y1", one per line or ';') filled."""
        from engine.masks import mask_from_boxes, mask_image

        boxes = parse_box_text(text)
        with self.database.session() as s:
            source = repository.get_source_image(s, source_id)
            if source is None:
                raise ValueError(f"There is no uploaded image with id {source_id}.")
            width, height = source.width, source.height
        return mask_image(mask_from_boxes(boxes, width, height))

    # Fine-tuning

    def presets(self) -> list[str]:
        """The fine-tune preset names, quickest first."""
        return list(PRESETS)

    def start_finetune(
        self, classes: Sequence[str], preset: str, steps: int | None, user: str, masked_loss: bool = False
    ) -> int:
        """Snapshot the dataset of `classes` and fine-tune TI + LoRA on it in the background; returns the run id.

        `masked_loss` weighs the diffusion loss towards each image's defect (its boxes or mask; see README).
        """
        # 1. Check inputs
        classes = sorted({check_class_name(c) for c in classes})
        if not classes:
            raise ValueError("Choose at least one class to fine-tune.")
        steps = int(steps) if steps else None
        background = MASKED_LOSS_BACKGROUND_WEIGHT if masked_loss else None
        config = finetune_config(preset, max_train_steps=steps, background_loss_weight=background)
        model_ref = self.model_ref
        self._require_no_active_run()

        # 2. Snapshot what it trains on
        with self.database.transaction() as s:
            snapshot = repository.dataset_snapshot(s, classes)
            empty = [c for c in classes if not any(item["class_name"] == c for item in snapshot)]
            if empty:
                raise ValueError(
                    f"No real defect images or accepted samples for {', '.join(empty)}; upload or accept some first."
                )
            settings = {
                "preset": preset,
                "steps": config.max_train_steps,
                "model": model_ref,
                "background_loss_weight": config.background_loss_weight,
            }
            run_id = repository.create_run(s, classes, settings, user, snapshot=snapshot).id

        # 3. Train in the background
        self._launch_run(run_id, self.runs_dir / RUN_FOLDER_FORMAT.format(run_id), resume=False)
        return run_id

    def resume_finetune(self, run_id: int, user: str) -> int:
        """Continue a stopped or failed run from its last checkpoint, as a new run on the same folder and data."""

        self._require_no_active_run()
        with self.database.transaction() as s:
            run = repository.get_run(s, run_id)
            if run is None:
                raise ValueError(f"There is no fine-tune run with id {run_id}.")
            if run.status not in ("stopped", "failed"):
                raise ValueError(f"Run {run_id} is {run.status}; only a stopped or failed run can be resumed.")
            out_dir = Path(run.out_dir or self.runs_dir / RUN_FOLDER_FORMAT.format(run_id))
            if is_adapter(out_dir):
                raise ValueError(f"Run {run_id} was resumed before and its adapter is finished.")
            settings = {**run.config_json, "resumed_from": run_id}
            new_id = repository.create_run(
                s, run.classes_json, settings, user, out_dir=str(out_dir), snapshot=run.dataset_snapshot_json
            ).id
        self._launch_run(new_id, out_dir, resume=True)
        return new_id

    def stop_finetune(self, run_id: int) -> None:
        """Ask a running fine-tune to stop after its current step (it saves a checkpoint to resume from)."""
        with self._runs_lock:
            progress = self._runs.get(run_id)
        if progress is None or not progress.alive:
            raise ValueError(f"Run {run_id} is not running in this studio.")
        progress.stop.set()
        progress.message = "stopping after the current step…"

    def wait_for_run(self, run_id: int, timeout_s: float | None = None) -> FineTuneStatus:
        """Block until a run's thread ends (for the CLI and tests), then return its status."""
        with self._runs_lock:
            progress = self._runs.get(run_id)
        if progress is not None and progress.thread is not None:
            progress.thread.join(timeout_s)
        return self.finetune_status(run_id)

    def finetune_status(self, run_id: int) -> FineTuneStatus:
        """A run's live progress while it trains, its recorded outcome afterwards."""
        with self.database.session() as s:
            run = repository.get_run(s, run_id)
            if run is None:
                raise ValueError(f"There is no fine-tune run with id {run_id}.")
            status, classes, metrics, error = run.status, list(run.classes_json), dict(run.metrics_json), run.error
            resumed_from = run.config_json.get("resumed_from")
            total = int(run.config_json.get("steps") or 0)
            started_at, finished_at = run.started_at, run.finished_at
        with self._runs_lock:
            progress = self._runs.get(run_id)
        if progress is not None:
            step, total, message, loss = progress.step, progress.total, progress.message, progress.loss
        else:
            step, loss = int(metrics.get("steps", 0)), metrics.get("final_loss")
            message = error or status
        if status not in RUNS_STILL_OPEN:
            message = error or _finished_message(status, metrics)
        previews = [Path(p) for p in metrics.get("previews", [])]
        elapsed = ((finished_at or utc_now()) - started_at).total_seconds() if started_at is not None else None
        trained = step - (resumed_from or 0)
        eta = None
        if status in RUNS_STILL_OPEN and elapsed is not None and trained > 0 and total:
            eta = elapsed / trained * max(0, total - step)
        return FineTuneStatus(
            run_id, status, classes, step, total, message, loss, previews, error, resumed_from, elapsed, eta
        )

    def training_counts(self, classes: Sequence[str]) -> dict[str, dict[str, int]]:
        """Images a fine-tune of these classes would train on, per class: real defects and accepted samples."""
        counts = {c.class_name: {"real": c.real, "accepted": c.accepted} for c in self.class_counts()}
        return {name: counts.get(name, {"real": 0, "accepted": 0}) for name in classes}

    def adapter_versions(self, class_name: str) -> list[AdapterVersionInfo]:
        """Every adapter version of a class, oldest first."""
        with self.database.session() as s:
            return [
                AdapterVersionInfo(
                    v.id, v.class_name, v.version, v.run_id, v.path, v.is_active, v.created_at.isoformat()
                )
                for v in repository.list_adapter_versions(s, class_name)
            ]

    def activate_adapter_version(self, class_name: str, version: int) -> AdapterVersionInfo:
        """Make a version of a class's adapter the one generation uses (roll back or forward)."""
        with self.database.transaction() as s:
            chosen = next((v for v in repository.list_adapter_versions(s, class_name) if v.version == version), None)
            if chosen is None:
                raise ValueError(f"Class {class_name!r} has no adapter version {version}.")
            if not is_adapter(chosen.path):
                raise ValueError(f"Adapter version {version} of {class_name!r} is missing on disk ({chosen.path}).")
            repository.activate_adapter_version(s, chosen.id)
        return next(v for v in self.adapter_versions(class_name) if v.version == version)

    def latest_run_id(self) -> int | None:
        """The newest fine-tune run, or None."""
        with self.database.session() as s:
            runs = repository.list_runs(s, limit=1)
            return runs[0].id if runs else None

    def _require_no_active_run(self) -> None:
        with self._runs_lock:
            active = [p.run_id for p in self._runs.values() if p.alive]
        if active:
            raise ValueError(f"Fine-tune run {active[0]} is still training; stop it or wait until it finishes.")

    def _launch_run(self, run_id: int, out_dir: Path, resume: bool) -> None:
        with self.database.session() as s:
            total = int(repository.get_run(s, run_id).config_json["steps"])
        progress = _RunProgress(run_id, total)
        progress.thread = threading.Thread(
            target=self._train_run, args=(progress, out_dir, resume), name=f"finetune-{run_id}", daemon=True
        )
        with self._runs_lock:
            self._runs[run_id] = progress
        progress.thread.start()

    def _train_run(self, progress: _RunProgress, out_dir: Path, resume: bool) -> None:
        """The background thread of one run: dataset folder → engine fine-tune → previews → adapter versions."""
        from engine.batch import finetune_folder

        run_id = progress.run_id
        try:
            # 1. Mark running and write the snapshot as an ImageFolder inside the run folder
            with self.database.transaction() as s:
                run = repository.start_run(s, run_id, out_dir=str(out_dir))
                classes, settings, snapshot = run.classes_json, run.config_json, run.dataset_snapshot_json
            progress.message = "writing the dataset snapshot"
            dataset_dir = self._write_snapshot(snapshot, out_dir / "dataset")

            # 2. Train (the engine saves checkpoints; a stop keeps the last one)
            progress.message = "loading the model"
            result = finetune_folder(
                dataset_dir,
                out_dir,
                model=self.model_ref,
                classes=classes,
                preset=settings["preset"],
                steps=settings["steps"],
                background_loss_weight=settings.get("background_loss_weight"),
                resume=resume,
                progress=progress.report,
                should_stop=progress.stop.is_set,
            )
            metrics: dict[str, Any] = {
                "steps": result.steps,
                "final_loss": result.final_loss,
                "wall_time_s": round(result.wall_time_s, 1),
            }

            # 3. A complete run: previews from the reloaded adapter, then it becomes each class's active adapter
            if result.status == "completed":
                progress.message = "writing previews"
                metrics["previews"] = [str(p) for p in self._write_previews(out_dir, classes)]
                registered = self.register_adapter(out_dir, run_id=run_id)
                metrics["adapter_versions"] = {c.name: c.adapter_version for c in registered}
            with self.database.transaction() as s:
                repository.finish_run(s, run_id, result.status, metrics)
        except Exception as error:
            logger.exception("Fine-tune run %s failed", run_id)
            with self.database.transaction() as s:
                repository.finish_run(s, run_id, "failed", error=f"{type(error).__name__}: {error}")
        finally:
            with self._runs_lock:
                self._runs.pop(run_id, None)

    def _write_snapshot(self, snapshot: list[dict[str, Any]], dataset_dir: Path) -> Path:
        """The snapshot's images as `<class>/<kind>-<id>.png`, each with its defect mask beside it where known.

        A real image's mask is its boxes filled, a masked sample's its stored mask (`<name>_mask.png`, which the
        masked loss reads). Files already there are kept, for resume.
        """
        from engine.data import MASK_SUFFIX
        from engine.masks import mask_from_boxes, mask_png

        for item in snapshot:
            target = dataset_dir / item["class_name"] / f"{item['kind']}-{item['id']:06d}.png"
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.files.read(item["sha256"]))
            mask_target = target.with_name(target.stem + MASK_SUFFIX)
            if mask_target.is_file():
                continue
            if item.get("mask_sha256"):
                mask_target.write_bytes(self.files.read(item["mask_sha256"]))
            elif item.get("boxes"):
                mask_target.write_bytes(mask_png(mask_from_boxes(item["boxes"], item["width"], item["height"])))
        return dataset_dir

    def _write_previews(self, out_dir: Path, classes: list[str]) -> list[Path]:
        """A few fixed-seed candidates per class from the reloaded adapter, on a slab of the class: the source of its
        newest sample, else the first clean slab, else one of its training images."""
        from engine.generate import generate

        clean = self.list_sources(role="clean")
        preview_dir = out_dir / "previews"
        preview_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for class_name in classes:
            base = self._slab_of_class(class_name) or (
                clean[0].path if clean else next((out_dir / "dataset" / class_name).glob("*.png"))
            )
            with Image.open(base) as opened:
                init_image = opened.copy()
            strength = next((c.default_strength for c in self.list_classes() if c.name == class_name), DEFAULT_STRENGTH)
            steps = max(self.preview_steps, int(1 / strength) + 1)
            config = GenerationConfig(
                class_name, num_candidates=len(PREVIEW_SEEDS), strength=strength, steps=steps, seed=PREVIEW_SEEDS[0]
            )
            with self._model_lock:
                result = generate(self._pipeline(str(out_dir.resolve())), init_image, config)
            for candidate in result.candidates:
                path = preview_dir / f"{class_name}-seed{candidate.seed}.png"
                path.write_bytes(candidate.png_bytes())
                written.append(path)
        return written

    def _slab_of_class(self, class_name: str) -> Path | None:
        """The clean slab the class's newest sample was generated on, if any."""
        with self.database.session() as s:
            for sample in repository.list_samples(s, class_name, limit=20):
                source = sample.source_image
                if source.role == "clean":
                    return self.files.path(source.sha256)
        return None

    # Export

    def export_dataset(
        self,
        user: str,
        out: Path | None = None,
        formats: Sequence[str] = EXPORT_FORMATS,
        classes: Sequence[str] | None = None,
        split: SplitPlan | None = None,
    ) -> ExportResult:
        """Write the curated dataset (accepted samples and real defect images) as a zip in the chosen formats.

        `classes` limits it to those classes; `split` draws the train/val/test split by source image (default:
        about a tenth of the sources, with their samples, in val).
        """
        unknown = sorted(set(formats) - set(FORMAT_WRITERS))
        if unknown:
            raise ValueError(f"Unknown export format(s) {', '.join(unknown)}; choose from {', '.join(EXPORT_FORMATS)}.")
        with self.database.session() as s:
            run_of_version = {}
            for defect_class in repository.list_defect_classes(s):
                for version in repository.list_adapter_versions(s, defect_class.name):
                    run_of_version[(version.class_name, version.version)] = version.run_id
            items: list[ExportItem] = []
            accepted = _all_pages(
                lambda offset: repository.list_samples(s, None, "accepted", PAGE_SIZE, offset, newest_first=False)
            )
            for sample in accepted:
                run_id = run_of_version.get((sample.class_name, sample.adapter_version))
                items.append(export_item_for_sample(sample, sample.source_image, run_id))
            real = _all_pages(lambda offset: repository.list_source_images(s, "defect", None, PAGE_SIZE, offset))
            items += [export_item_for_source(image) for image in real]
        if classes:
            unknown_classes = sorted(set(classes) - {item.class_name for item in items})
            if unknown_classes:
                raise ValueError(f"Nothing to export for class(es) {', '.join(unknown_classes)}.")
            items = [item for item in items if item.class_name in set(classes)]
        if not items:
            raise ValueError("Nothing to export yet: accept some candidates or upload real defect images first.")
        out = Path(out) if out is not None else self._new_export_path()
        if out.exists():
            raise ValueError(f"{out} already exists; choose another file name.")
        summary = write_export(
            out,
            items,
            self.files,
            extra_manifest={"exported_by": user},
            formats=tuple(formats),
            split=split,
        )
        with self.database.transaction() as s:
            export_id = repository.record_export(
                s, str(out.resolve()), summary.sha256, summary.n_items, summary.formats, user
            ).id
        return ExportResult(export_id, out, summary.sha256, summary.n_items, summary.counts, summary.split_counts)

    def verify_export(self, path: Path) -> list[str]:
        """Problems found in an export zip (an empty list: it is intact)."""
        return verify_export(path)

    def _new_export_path(self) -> Path:
        stamp = utc_now().strftime("%Y%m%d-%H%M%S")
        path = self.exports_dir / f"steel-defects-{stamp}.zip"
        counter = 2
        while path.exists():
            path, counter = self.exports_dir / f"steel-defects-{stamp}-{counter}.zip", counter + 1
        return path


def _sample_row(sample) -> SampleRow:
    quality = sample.params_json.get("quality") or {}
    return SampleRow(
        sample.id,
        sample.class_name,
        sample.status,
        sample.strength,
        sample.seed,
        sample.source_image_id,
        sample.created_by,
        sample.decided_by,
        sample.reject_reason,
        sample.realism_score,
        quality.get("background_psnr"),
        quality.get("mask_change"),
    )


def _id_ranges(ids: Sequence[int]) -> str:
    """ "3-7, 9" for [3, 4, 5, 6, 7, 9]."""
    ranges: list[list[int]] = []
    for i in sorted(ids):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges) or "none"


def parse_box_text(text: str) -> list[dict[str, int]]:
    """Boxes from "x0,y0,x1,y1" entries (pixels, x1/y1 exclusive), one per line or separated by ';'."""
    boxes = []
    for part in filter(str.strip, re.split(r"[;\n]", text or "")):
        match = BOX_TEXT_PATTERN.fullmatch(part)
        if match is None:
            raise ValueError(f"Box {part.strip()!r} is not x0,y0,x1,y1 in whole pixels.")
        xmin, ymin, xmax, ymax = map(int, match.groups())
        boxes.append({"label": "", "xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax})
    if not boxes:
        raise ValueError("Give at least one box as x0,y0,x1,y1.")
    return boxes


def _all_pages(fetch: Callable[[int], list]) -> Iterator:
    """Every row of a paged repository query."""
    offset = 0
    while True:
        page = fetch(offset)
        yield from page
        if len(page) < PAGE_SIZE:
            return
        offset += PAGE_SIZE


def _finished_message(status: str, metrics: dict[str, Any]) -> str:
    loss = metrics.get("final_loss")
    loss_text = f", final loss {loss:.4f}" if isinstance(loss, float) else ""
    return f"{status} after {metrics.get('steps', 0)} steps{loss_text}"
