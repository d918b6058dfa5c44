"""Export: the curated dataset (accepted samples and real defects) as a zip in every format, and its check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from storage import repository
from storage.export import (
    FORMAT_WRITERS,
    ExportItem,
    SplitPlan,
    export_item_for_sample,
    export_item_for_source,
    write_export,
)
from storage.export import verify_export as verify_export_zip
from storage.tables import utc_now
from webapp.studio.context import PAGE_SIZE, StudioContext, all_pages
from webapp.studio.results import ExportResult

# Every export carries all formats unless asked otherwise: masks, COCO, YOLO and Pascal VOC (plus ImageFolder).
EXPORT_FORMATS = tuple(FORMAT_WRITERS)


def verify_export(path: Path) -> list[str]:
    """Problems found in an export zip (an empty list: it is intact)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Export zip not found: {path}")
    return verify_export_zip(path)


class Exports:
    """Write export zips and record them."""

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        self.database, self.files = ctx.database, ctx.files

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
            accepted = all_pages(
                lambda offset: repository.list_samples(s, None, "accepted", PAGE_SIZE, offset, newest_first=False)
            )
            for sample in accepted:
                run_id = run_of_version.get((sample.class_name, sample.adapter_version))
                items.append(export_item_for_sample(sample, sample.source_image, run_id))
            real = all_pages(lambda offset: repository.list_source_images(s, "defect", None, PAGE_SIZE, offset))
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

    def _new_export_path(self) -> Path:
        stamp = utc_now().strftime("%Y%m%d-%H%M%S")
        path = self.ctx.exports_dir / f"steel-defects-{stamp}.zip"
        counter = 2
        while path.exists():
            path, counter = self.ctx.exports_dir / f"steel-defects-{stamp}-{counter}.zip", counter + 1
        return path
