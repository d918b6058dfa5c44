"""The one door of the studio for the UI and the CLI: `StudioService`, a thin facade over the use-case rooms.

Every change takes the acting `user` and stamps it on the rows it writes. Wrong input raises a ValueError
(or FileNotFoundError) with one readable sentence, before anything is written. No Gradio here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from engine.config import DEFAULT_REALISM_THRESHOLD, GenerationConfig
from engine.progress import ProgressFn, StopFn
from storage.db import Database
from storage.export import SplitPlan
from storage.files import FileStore
from webapp.previews import THUMBNAIL_MAX_SIDE, VIEW_MAX_SIDE, ReviewViews
from webapp.studio.classes import Classes
from webapp.studio.context import StudioContext
from webapp.studio.exports import EXPORT_FORMATS, Exports, verify_export
from webapp.studio.finetune import FineTuneRuns
from webapp.studio.generation import Generation
from webapp.studio.realism import Realism
from webapp.studio.results import (
    AdapterVersionInfo,
    BatchInfo,
    BoxSuggestion,
    ClassCounts,
    ClassInfo,
    DatasetView,
    DecisionResult,
    ExportResult,
    FineTuneStatus,
    GenerationOutcome,
    SampleDetails,
    SampleRow,
    SourceInfo,
    StoredBatch,
    UploadResult,
)
from webapp.studio.review import Review
from webapp.studio.sources import Sources


class StudioService:
    """The studio's use cases over one data folder; each room (sources, classes, realism, generation, review,
    fine-tune runs, exports) holds its own logic and this class only forwards to it."""

    def __init__(self, data_dir: Path, model: str | None = None, database_url: str | None = None) -> None:
        self.ctx = StudioContext(data_dir, model, database_url)
        self.sources = Sources(self.ctx)
        self.classes = Classes(self.ctx)
        self.realism = Realism(self.ctx)
        self.generation = Generation(self.ctx, self.sources, self.realism)
        self.review = Review(self.ctx, self.sources)
        self.runs = FineTuneRuns(self.ctx, self.classes, self.review)
        self.exports = Exports(self.ctx)
        self.classes.register_shipped_adapter()
        self.classes.sync_default_strengths()

    # The data folder and model

    @property
    def data_dir(self) -> Path:
        return self.ctx.data_dir

    @property
    def model(self) -> str | None:
        return self.ctx.model

    @property
    def model_ref(self) -> str:
        """The resolved base model (a local folder or hub id); raises FileNotFoundError if it is missing."""
        return self.ctx.model_ref

    @property
    def database(self) -> Database:
        return self.ctx.database

    @property
    def files(self) -> FileStore:
        return self.ctx.files

    @property
    def runs_dir(self) -> Path:
        return self.ctx.runs_dir

    @property
    def exports_dir(self) -> Path:
        return self.ctx.exports_dir

    @property
    def previews_dir(self) -> Path:
        return self.ctx.previews_dir

    @property
    def preview_steps(self) -> int:
        """Denoising steps of the previews written after a fine-tune."""
        return self.runs.preview_steps

    @preview_steps.setter
    def preview_steps(self, steps: int) -> None:
        self.runs.preview_steps = steps

    def close(self) -> None:
        """Ask running fine-tunes to stop at their next step, wait briefly, and release the database."""
        self.runs.stop_all()
        self.ctx.close()

    def verify_export(self, path: Path) -> list[str]:
        """Problems found in an export zip (an empty list: it is intact)."""
        return verify_export(path)

    def trainable_classes(self) -> list[str]:
        """Class names with a learned token or uploaded real defect images: what a fine-tune can learn."""
        return self.classes.trainable_classes()

    # Forwarded use cases

    def fail_interrupted_runs(self) -> None:
        """Mark runs left queued or running by a previous app process as failed (resumable)."""
        return self.runs.fail_interrupted_runs()

    def register_adapter(self, path: Path, run_id: int | None = None) -> list[ClassInfo]:
        """Make a finished adapter folder the active adapter of each class it holds (creating the classes)."""
        return self.classes.register_adapter(path, run_id)

    def sync_default_strengths(self) -> None:
        """Copy each active adapter's tuned strengths from its tokens.json to the classes (done at start)."""
        return self.classes.sync_default_strengths()

    def upload_images(
        self, files: Sequence[tuple[str, bytes]], role: str, class_name: str | None, user: str
    ) -> UploadResult:
        """Store uploaded images of one role (and class, for real defects); all are stored or none."""
        return self.sources.upload_images(files, role, class_name, user)

    def import_folder(
        self,
        images_dir: Path,
        role: str,
        class_name: str | None = None,
        annotations_dir: Path | None = None,
        user: str = "cli",
    ) -> UploadResult:
        """Import a folder: flat images of one class (or clean slabs), or `<class>/` subfolders of real defects."""
        return self.sources.import_folder(images_dir, role, class_name, annotations_dir, user)

    def source_boxes(self, source_id: int) -> list[dict[str, Any]]:
        """The defect boxes stored with an uploaded image."""
        return self.sources.source_boxes(source_id)

    def delete_source(self, source_id: int, with_samples: bool = False) -> int:
        """Delete an uploaded image with its pending and rejected samples (see `Sources.delete_source`)."""
        return self.sources.delete_source(source_id, with_samples)

    def update_source(self, source_id: int, class_name: str | None = None, box_text: str | None = None) -> SourceInfo:
        """Re-class a real defect and/or set its boxes from "x0,y0,x1,y1" lines (empty text: no boxes)."""
        return self.sources.update_source(source_id, class_name, box_text)

    def suggest_boxes(self, source_id: int) -> BoxSuggestion:
        """Boxes for a real defect image, learnt from its class's boxed images or around what departs from its
        steel (see `Sources.suggest_boxes`): a suggestion to correct, then save."""
        return self.sources.suggest_boxes(source_id)

    def painted_boxes(self, source_id: int, painted: Image.Image) -> list[dict[str, Any]]:
        """One box per stroke of a mask painted over a view of a real defect image (see `Sources.painted_boxes`)."""
        return self.sources.painted_boxes(source_id, painted)

    def source_view(
        self, source_id: int, box_text: str, show_estimate: bool = False
    ) -> tuple[str, list[tuple[Any, str]]]:
        """An AnnotatedImage value: the image with the typed boxes and, with `show_estimate`, its estimated defect."""
        return self.sources.source_view(source_id, box_text, show_estimate)

    def source_info(self, source_id: int) -> SourceInfo:
        """One uploaded image's details (ValueError if there is none with that id)."""
        return self.sources.source_info(source_id)

    def list_sources(self, role: str | None = None, class_name: str | None = None) -> list[SourceInfo]:
        """Uploaded images, oldest first, optionally of one role and class."""
        return self.sources.list_sources(role, class_name)

    def list_classes(self) -> list[ClassInfo]:
        """Every defect class with its token, proposed strength and active adapter."""
        return self.classes.list_classes()

    def generate_candidates(
        self,
        source_id: int,
        config: GenerationConfig,
        user: str,
        progress: ProgressFn | None = None,
        mask: Image.Image | None = None,
        realism_threshold: float | None = None,
        paste_real_defects: bool = False,
    ) -> GenerationOutcome:
        """Generate candidates on a clean slab with a class's active adapter and store them as pending samples
        (with auto-place and `paste_real_defects`, started from the class's boxed real defects pasted in)."""
        return self.generation.generate_candidates(
            source_id, config, user, progress, mask, realism_threshold, paste_real_defects
        )

    def realism_scorer(self, class_name: str) -> tuple[Any, str] | None:
        """The class's RealismScorer and a description of its reference, or None when it has no reference."""
        return self.realism.scorer(class_name)

    def decide(
        self, sample_id: int, status: str, reason: str | None, user: str, expected_revision: int | None = None
    ) -> DecisionResult:
        """Accept or reject a sample, unless someone changed it since `expected_revision` (None: do not check)."""
        return self.review.decide(sample_id, status, reason, user, expected_revision)

    def undo(self, sample_id: int, user: str, expected_revision: int | None = None) -> DecisionResult:
        """Put a decided sample back to pending (recorded as a decision)."""
        return self.review.undo(sample_id, user, expected_revision)

    def reject_flagged(
        self, sample_ids: Sequence[int], user: str, realism_threshold: float | None = None
    ) -> list[DecisionResult]:
        """Reject, in one transaction, the pending samples among `sample_ids` that the realism threshold flags."""
        return self.review.reject_flagged(sample_ids, user, realism_threshold)

    def generate_batch(
        self,
        class_name: str,
        num: int,
        seed: int,
        user: str,
        progress: ProgressFn | None = None,
        realism_threshold: float | None = DEFAULT_REALISM_THRESHOLD,
        should_stop: StopFn | None = None,
    ) -> StoredBatch:
        """`num` samples from the class's uploaded real defect images at the batch defaults, stored as one pending
        batch to review (the way `launch.py generate --init` makes training samples); None turns the gate off;
        `should_stop` ends it early, keeping what it made."""
        return self.generation.generate_batch(class_name, num, seed, user, progress, realism_threshold, should_stop)

    def store_generated(
        self, folder: Path, class_name: str, inits: Sequence[Path], init_role: str, user: str
    ) -> StoredBatch:
        """Store the PNGs a batch generation wrote in `folder` (flagged ones included) as pending samples."""
        return self.generation.store_generated(folder, class_name, inits, init_role, user)

    def review_queue(
        self,
        status: str | None = "pending",
        class_name: str | None = None,
        source_id: int | None = None,
        limit: int = 200,
        offset: int = 0,
        batch: str | None = None,
    ) -> list[SampleRow]:
        """Samples of every batch, oldest first, by status (None: all), class, source and batch: the review queue."""
        return self.review.review_queue(status, class_name, source_id, limit, offset, batch)

    def dataset_view(
        self, class_name: str | None = None, status: str | None = None, limit: int = 200, batch: str | None = None
    ) -> DatasetView:
        """Counts per class (real images and samples by status) and the newest samples matching the filters."""
        return self.review.dataset_view(class_name, status, limit, batch)

    def batches(self, limit: int = 100) -> list[BatchInfo]:
        """The newest batches (studio generations and command-line batches) with how many samples wait in each."""
        return self.review.batches(limit)

    def class_counts(self) -> list[ClassCounts]:
        """Images per class: uploaded real defects and generated samples by review status."""
        return self.review.class_counts()

    def sample_details(self, sample_id: int) -> SampleDetails:
        """A sample's image path, parameters and review history."""
        return self.review.sample_details(sample_id)

    def review_views(self, details: SampleDetails, max_side: int = VIEW_MAX_SIDE) -> ReviewViews:
        """Close-up views of a sample (from `sample_details`) for judging: its repainted region, its source there"""
        return self.review.review_views(details, max_side)

    def preview(self, path: Path, max_side: int = THUMBNAIL_MAX_SIDE) -> Path:
        """A downscaled copy of a stored image for the browser (cached), or the image when it is small already."""
        return self.review.preview(path, max_side)

    def real_examples(self, class_name: str, limit: int = 4) -> list[Path]:
        """Previews of the class's first uploaded real defects, to compare a candidate with."""
        return self.review.real_examples(class_name, limit)

    def box_mask(self, source_id: int, text: str) -> Image.Image:
        """A mask of the source's size with the boxes of `text` ("x0,y0,x1,y1", one per line or ';') filled."""
        return self.sources.box_mask(source_id, text)

    def presets(self) -> list[str]:
        """The fine-tune preset names, quickest first."""
        return self.runs.presets()

    def start_finetune(
        self, classes: Sequence[str], preset: str, steps: int | None, user: str, masked_loss: bool = False
    ) -> int:
        """Snapshot the dataset of `classes` and fine-tune TI + LoRA on it in the background; returns the run id."""
        return self.runs.start(classes, preset, steps, user, masked_loss)

    def resume_finetune(self, run_id: int, user: str) -> int:
        """Continue a stopped or failed run from its last checkpoint, as a new run on the same folder and data."""
        return self.runs.resume(run_id, user)

    def stop_finetune(self, run_id: int) -> None:
        """Ask a running fine-tune to stop after its current step (it saves a checkpoint to resume from)."""
        return self.runs.stop(run_id)

    def wait_for_run(self, run_id: int, timeout_s: float | None = None) -> FineTuneStatus:
        """Block until a run's thread ends (for the CLI and tests), then return its status."""
        return self.runs.wait_for_run(run_id, timeout_s)

    def finetune_status(self, run_id: int) -> FineTuneStatus:
        """A run's live progress while it trains, its recorded outcome afterwards."""
        return self.runs.status(run_id)

    def training_counts(self, classes: Sequence[str]) -> dict[str, dict[str, int]]:
        """Images a fine-tune of these classes would train on, per class: real defects, those with boxes and accepted
        samples."""
        return self.runs.training_counts(classes)

    def adapter_versions(self, class_name: str) -> list[AdapterVersionInfo]:
        """Every adapter version of a class, oldest first."""
        return self.classes.adapter_versions(class_name)

    def activate_adapter_version(self, class_name: str, version: int) -> AdapterVersionInfo:
        """Make a version of a class's adapter the one generation uses (roll back or forward)."""
        return self.classes.activate_adapter_version(class_name, version)

    def latest_run_id(self) -> int | None:
        """The newest fine-tune run, or None."""
        return self.runs.latest_run_id()

    def export_dataset(
        self,
        user: str,
        out: Path | None = None,
        formats: Sequence[str] = EXPORT_FORMATS,
        classes: Sequence[str] | None = None,
        split: SplitPlan | None = None,
    ) -> ExportResult:
        """Write the curated dataset (accepted samples and real defect images) as a zip in the chosen formats."""
        return self.exports.export_dataset(user, out, formats, classes, split)
