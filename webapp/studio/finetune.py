"""Fine-tune runs: snapshot the curated dataset, train TI + LoRA in a background thread, previews, versions."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.adapters import DEFAULT_STRENGTH, is_adapter
from engine.config import PRESETS, finetune_config
from engine.progress import TrainingStep
from storage import repository
from storage.tables import utc_now
from webapp.studio.classes import Classes, check_class_name
from webapp.studio.context import PAGE_SIZE, StudioContext
from webapp.studio.results import RUNS_STILL_OPEN, ClassCounts, FineTuneStatus
from webapp.studio.review import Review

logger = logging.getLogger(__name__)

# The masked loss's weight off the defect: 0.2 gave the lower masked-crop KID in 11 of 12 class × seed pairs on NEU.
MASKED_LOSS_BACKGROUND_WEIGHT = 0.2
# Previews after a fine-tune: the same seeds every time, so versions can be compared by eye.
PREVIEW_SAMPLES = 3
PREVIEW_STEPS = 20
RUN_FOLDER_FORMAT = "run-{:04d}"


@dataclass
class _RunProgress:
    """In-memory progress of a fine-tune thread, updated by the training loop after every step."""

    run_id: int
    total: int
    step: int = 0
    message: str = "queued"
    loss: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def record(self, report: TrainingStep) -> None:
        """The engine's report of a finished training step."""
        self.step, self.total, self.loss, self.message = report.step, report.total, report.loss, report.message

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class FineTuneRuns:
    """Start, resume, stop and follow fine-tune runs; one trains at a time in this process."""

    def __init__(self, ctx: StudioContext, classes: Classes, review: Review) -> None:
        self.ctx = ctx
        self.database, self.files = ctx.database, ctx.files
        self.classes, self.review = classes, review
        self.preview_steps = PREVIEW_STEPS
        self._runs: dict[int, _RunProgress] = {}
        self._runs_lock = threading.Lock()

    def presets(self) -> list[str]:
        """The fine-tune preset names, quickest first."""
        return list(PRESETS)

    def start(
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
        model_ref = self.ctx.model_ref
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
        self._launch_run(run_id, self.ctx.runs_dir / RUN_FOLDER_FORMAT.format(run_id), resume=False)
        return run_id

    def resume(self, run_id: int, user: str) -> int:
        """Continue a stopped or failed run from its last checkpoint, as a new run on the same folder and data."""

        self._require_no_active_run()
        with self.database.transaction() as s:
            run = repository.get_run(s, run_id)
            if run is None:
                raise ValueError(f"There is no fine-tune run with id {run_id}.")
            if run.status not in ("stopped", "failed"):
                raise ValueError(f"Run {run_id} is {run.status}; only a stopped or failed run can be resumed.")
            out_dir = Path(run.out_dir or self.ctx.runs_dir / RUN_FOLDER_FORMAT.format(run_id))
            if is_adapter(out_dir):
                raise ValueError(f"Run {run_id} was resumed before and its adapter is finished.")
            settings = {**run.config_json, "resumed_from": run_id}
            new_id = repository.create_run(
                s, run.classes_json, settings, user, out_dir=str(out_dir), snapshot=run.dataset_snapshot_json
            ).id
        self._launch_run(new_id, out_dir, resume=True)
        return new_id

    def stop(self, run_id: int) -> None:
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
        return self.status(run_id)

    def status(self, run_id: int) -> FineTuneStatus:
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
        """Images a fine-tune of these classes would train on, per class: real defects, those of them with boxes
        (where the class learns its defects' colour, size and count) and accepted samples."""
        rows = {c.class_name: c for c in self.review.class_counts()}
        with self.database.session() as s:
            boxed = repository.source_counts_by_class(s, "defect", boxed=True)
        counts = {}
        for name in classes:
            row = rows.get(name, ClassCounts(name))
            counts[name] = {"real": row.real, "boxed": boxed.get(name, 0), "accepted": row.accepted}
        return counts

    def latest_run_id(self) -> int | None:
        """The newest fine-tune run, or None."""
        with self.database.session() as s:
            runs = repository.list_runs(s, limit=1)
            return runs[0].id if runs else None

    def fail_interrupted_runs(self) -> None:
        """Mark runs left queued or running by a previous app process as failed (resumable).

        Only the process that trains (the app) calls this at start: a CLI command beside a live app must not.
        """
        with self.database.transaction() as s:
            for run in repository.list_runs(s, limit=PAGE_SIZE):
                if run.status in RUNS_STILL_OPEN:
                    error = "Interrupted: the studio stopped during this run. Resume it to continue."
                    repository.finish_run(s, run.id, "failed", error=error)

    def stop_all(self) -> None:
        """Ask running fine-tunes to stop at their next step and wait briefly for them."""
        with self._runs_lock:
            progresses = list(self._runs.values())
        for progress in progresses:
            progress.stop.set()
        for progress in progresses:
            if progress.thread is not None:
                progress.thread.join(timeout=60)

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
                model=self.ctx.model_ref,
                classes=classes,
                preset=settings["preset"],
                steps=settings["steps"],
                background_loss_weight=settings.get("background_loss_weight"),
                resume=resume,
                on_step=progress.record,
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
                registered = self.classes.register_adapter(out_dir, run_id=run_id)
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
        from engine.boxes import to_mask
        from engine.data import MASK_SUFFIX
        from engine.masks import mask_png

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
                mask_target.write_bytes(mask_png(to_mask(item["boxes"], item["width"], item["height"])))
        return dataset_dir

    def _write_previews(self, out_dir: Path, classes: list[str]) -> list[Path]:
        """A few samples per class from the reloaded adapter, made as a batch from the class's training images makes
        them (varied inits, the token's strength, capture variation; no realism gate): what its batches will show."""
        from engine.batch import generate_to_folder

        strengths = {c.name: c.default_strength for c in self.classes.list_classes()}
        written: list[Path] = []
        for class_name in classes:
            strength = strengths.get(class_name) or DEFAULT_STRENGTH
            with self.ctx.model_lock:
                written += generate_to_folder(
                    None,
                    None,
                    class_name,
                    out_dir / "dataset" / class_name,
                    PREVIEW_SAMPLES,
                    out_dir / "previews" / class_name,
                    strength=strength,
                    steps=max(self.preview_steps, int(1 / strength) + 1),
                    pipe=self.ctx.pipeline(str(out_dir.resolve())),
                    realism_threshold=None,
                )
        return written


def _finished_message(status: str, metrics: dict[str, Any]) -> str:
    loss = metrics.get("final_loss")
    loss_text = f", final loss {loss:.4f}" if isinstance(loss, float) else ""
    return f"{status} after {metrics.get('steps', 0)} steps{loss_text}"
