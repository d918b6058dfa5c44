"""The studio's use cases, behind one facade (`StudioService`); the UI and the CLI import from here."""

from webapp.studio.classes import check_class_name
from webapp.studio.exports import EXPORT_FORMATS, verify_export
from webapp.studio.finetune import MASKED_LOSS_BACKGROUND_WEIGHT
from webapp.studio.realism import REALISM_REJECT_REASON, check_realism_threshold
from webapp.studio.results import (
    AdapterVersionInfo,
    BatchInfo,
    BoxSuggestion,
    CandidateInfo,
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
    realism_sort_key,
)
from webapp.studio.service import StudioService
from webapp.studio.sources import parse_box_text

__all__ = [
    "EXPORT_FORMATS",
    "MASKED_LOSS_BACKGROUND_WEIGHT",
    "REALISM_REJECT_REASON",
    "AdapterVersionInfo",
    "BatchInfo",
    "BoxSuggestion",
    "CandidateInfo",
    "ClassCounts",
    "ClassInfo",
    "DatasetView",
    "DecisionResult",
    "ExportResult",
    "FineTuneStatus",
    "GenerationOutcome",
    "SampleDetails",
    "SampleRow",
    "SourceInfo",
    "StoredBatch",
    "StudioService",
    "UploadResult",
    "check_class_name",
    "check_realism_threshold",
    "parse_box_text",
    "realism_sort_key",
    "verify_export",
]
