"""Review: the queue of samples across batches, decisions and undo, counts, details and close-up views."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engine.generation.parameters import CandidateParameters
from storage import repository
from storage.tables import SAMPLE_STATUSES, GeneratedSample
from webapp.previews import THUMBNAIL_MAX_SIDE, VIEW_MAX_SIDE, ReviewViews, review_views, thumbnail
from webapp.studio.context import StudioContext, require_sample
from webapp.studio.realism import REALISM_REJECT_REASON, check_realism_threshold
from webapp.studio.results import BatchInfo, ClassCounts, DatasetView, DecisionResult, SampleDetails, SampleRow
from webapp.studio.sources import Sources


class Review:
    """Decide on samples (with revision checks, so reviewers cannot overwrite each other) and read them."""

    def __init__(self, ctx: StudioContext, sources: Sources) -> None:
        self.ctx = ctx
        self.database, self.files = ctx.database, ctx.files
        self.sources = sources

    def decide(
        self, sample_id: int, status: str, reason: str | None, user: str, expected_revision: int | None = None
    ) -> DecisionResult:
        """Accept or reject a sample, unless someone changed it since `expected_revision` (None: do not check)."""
        if status not in ("accepted", "rejected"):
            raise ValueError(f"A decision is 'accepted' or 'rejected', got {status!r}.")
        reason = (reason or "").strip() or None
        with self.database.transaction() as s:
            require_sample(s, sample_id)
            outcome = repository.decide(s, sample_id, status, reason, user, expected_revision)
        return DecisionResult.of(sample_id, outcome)

    def undo(self, sample_id: int, user: str, expected_revision: int | None = None) -> DecisionResult:
        """Put a decided sample back to pending (recorded as a decision)."""
        with self.database.transaction() as s:
            sample = require_sample(s, sample_id)
            if sample.status == "pending":
                raise ValueError(f"Sample {sample_id} is pending; there is no decision to undo.")
            outcome = repository.undo_decision(s, sample_id, user, expected_revision)
        return DecisionResult.of(sample_id, outcome)

    def reject_flagged(
        self, sample_ids: Sequence[int], user: str, realism_threshold: float | None = None
    ) -> list[DecisionResult]:
        """Reject, in one transaction, the pending samples among `sample_ids` that the realism threshold flags.

        Without `realism_threshold` the flags set at generation count (their parameters' `pre_rejected`); with one,
        every scored sample below it. Decided and unscored samples are left as they are. Returns the decisions made.
        """
        threshold = check_realism_threshold(realism_threshold)
        results = []
        with self.database.transaction() as s:
            samples = [require_sample(s, int(i)) for i in dict.fromkeys(sample_ids)]
            for sample in samples:
                if sample.status != "pending":
                    continue
                if threshold is None:
                    flagged = bool(CandidateParameters.from_dict(sample.params_json).pre_rejected)
                else:
                    flagged = sample.realism_score is not None and sample.realism_score < threshold
                if not flagged:
                    continue
                outcome = repository.decide(s, sample.id, "rejected", REALISM_REJECT_REASON, user, sample.revision)
                results.append(DecisionResult.of(sample.id, outcome))
        return results

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
        if status is not None and status not in SAMPLE_STATUSES:
            raise ValueError(f"Status must be one of {', '.join(SAMPLE_STATUSES)}, got {status!r}.")
        with self.database.session() as s:
            samples = repository.list_samples(
                s, class_name, status, limit, offset, newest_first=False, source_image_id=source_id, batch=batch
            )
            return [sample_row(x) for x in samples]

    def dataset_view(
        self, class_name: str | None = None, status: str | None = None, limit: int = 200, batch: str | None = None
    ) -> DatasetView:
        """Counts per class (real images and samples by status) and the newest samples matching the filters."""
        if status is not None and status not in SAMPLE_STATUSES:
            raise ValueError(f"Status must be one of {', '.join(SAMPLE_STATUSES)}, got {status!r}.")
        counts = self.class_counts()
        with self.database.session() as s:
            rows = [sample_row(x) for x in repository.list_samples(s, class_name, status, limit=limit, batch=batch)]
        return DatasetView(counts, rows)

    def batches(self, limit: int = 100) -> list[BatchInfo]:
        """The newest batches (studio generations and command-line batches) with how many samples wait in each."""
        with self.database.session() as s:
            return [BatchInfo(name, pending, total) for name, pending, total in repository.list_batches(s, limit)]

    def class_counts(self) -> list[ClassCounts]:
        """Images per class: uploaded real defects and generated samples by review status."""
        with self.database.session() as s:
            real = repository.source_counts_by_class(s, "defect")
            by_status = repository.counts_by_class_and_status(s)
        names = sorted(set(real) | {name for name, _ in by_status})
        return [
            ClassCounts(name, real.get(name, 0), *(by_status.get((name, st), 0) for st in SAMPLE_STATUSES))
            for name in names
        ]

    def sample_details(self, sample_id: int) -> SampleDetails:
        """A sample's image path, parameters and review history."""
        with self.database.session() as s:
            sample = require_sample(s, sample_id)
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
                CandidateParameters.from_dict(sample.params_json),
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
            self.ctx.previews_dir,
            details.mask_path,
            details.boxes,
            details.class_name,
            max_side,
        )

    def preview(self, path: Path, max_side: int = THUMBNAIL_MAX_SIDE) -> Path:
        """A downscaled copy of a stored image for the browser (cached), or the image when it is small already."""
        return thumbnail(path, self.ctx.previews_dir, max_side)

    def real_examples(self, class_name: str, limit: int = 4) -> list[Path]:
        """Previews of the class's first uploaded real defects, to compare a candidate with."""
        return [
            self.preview(source.path)
            for source in self.sources.list_sources(role="defect", class_name=class_name)[:limit]
        ]


def sample_row(sample: GeneratedSample) -> SampleRow:
    # One key of the stored JSON: the table reads every row on each refresh, so it does not build the whole record.
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
        sample.batch,
    )
