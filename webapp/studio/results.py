"""What the studio's use cases return to the UI and the CLI: plain frozen records, no database rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from engine.config import DEFAULT_MASKED_STRENGTH
from engine.generation.parameters import CandidateParameters
from storage import repository

SUMMARY_ITEMS = 10
RUNS_STILL_OPEN = ("queued", "running")


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
    # Defect boxes stored with it (real defects).
    box_count: int = 0


@dataclass(frozen=True)
class BoxSuggestion:
    """Boxes suggested for a real defect image (dicts in its pixels, labelled with its class) and how: "learnt"
    from the class's `boxed_images` boxed images, or "estimate" (where the image departs from its own steel);
    `compared` when both were tried on the boxed images and this one matched their boxes better; `learns_from` how
    many boxed images of a class its suggestions start to learn from."""

    boxes: list[dict[str, Any]]
    method: str
    boxed_images: int = 0
    compared: bool = False
    learns_from: int = 0

    @property
    def learnt(self) -> bool:
        """Whether the boxes were learnt from the class's boxed images (else the estimate's, shown shaded)."""
        return self.method == "learnt"


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
        text = f"Stored {len(new)} image(s) (ids {id_ranges(new)})." if new else "No new image stored."
        if self.already_stored:
            known = list(dict.fromkeys(self.already_stored))
            text += f" {len(known)} already stored (ids {id_ranges(known)})."
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
    # How many of the class's boxed real defects the candidates were started from (0: the model painted alone).
    pasted_defects: int = 0

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
    """A batch (from the command line or the studio's batch from real images) stored as pending samples."""

    sample_ids: list[int]
    duplicates: list[str]
    sources: list[SourceInfo]
    # The samples the realism gate flagged (stored pending, marked pre-rejected).
    pre_rejected: list[int] = field(default_factory=list)
    # Why the batch ended before it had its samples: the realism gate's reason, or a stop (None: it did not).
    ended_early: str | None = None

    @property
    def summary(self) -> str:
        flagged = f", {len(self.pre_rejected)} of them pre-rejected by the realism gate" if self.pre_rejected else ""
        skipped = f"; {len(self.duplicates)} identical to stored samples skipped" if self.duplicates else ""
        stopped = f". {self.ended_early}" if self.ended_early else ""
        stored = f"Stored {len(self.sample_ids)} pending samples (ids {id_ranges(self.sample_ids)})"
        return f"{stored}{flagged}{skipped}{stopped}"


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
    batch: str | None = None


@dataclass(frozen=True)
class BatchInfo:
    """One batch of samples: a studio generation or a command-line batch, with its pending and total counts."""

    name: str
    pending: int
    total: int

    @property
    def label(self) -> str:
        return f"{self.name} · {self.pending} of {self.total} pending"


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
    params: CandidateParameters
    decisions: list[dict[str, Any]]
    mask_path: Path | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)
    realism_score: float | None = None

    @property
    def pre_rejected(self) -> bool:
        """Whether the realism threshold of its generation flagged it."""
        return bool(self.params.pre_rejected)


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
    # What the adapter learnt of the class beside its token and LoRA, in words (`TokenInfo.learnt_summary`).
    learnt: str = ""

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


def realism_sort_key(score: float | None) -> tuple[bool, float]:
    """Sort key for best-first realism order: higher scores first, unscored last (a stable sort keeps ties)."""
    return (score is None, -(score or 0.0))


def id_ranges(ids: Sequence[int]) -> str:
    """ "3-7, 9" for [3, 4, 5, 6, 7, 9]."""
    ranges: list[list[int]] = []
    for i in sorted(ids):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges) or "none"
