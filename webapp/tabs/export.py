"""Export tab: the accepted dataset as a zip (ImageFolder, COCO, YOLO, VOC) with its split plan."""

from __future__ import annotations

import json

import gradio as gr

from storage.export import SplitPlan
from webapp.studio import (
    EXPORT_FORMATS,
    StudioService,
)
from webapp.tabs.common import TabLoad, errors_shown_in, user_of

EXPORT_FORMAT_CHOICES = [
    ("PNG masks", "masks"),
    ("COCO instances JSON", "coco"),
    ("YOLO labels + data.yaml", "yolo"),
    ("Pascal VOC XML", "voc"),
]


def create_export_tab(service: StudioService) -> TabLoad:
    """Export tab: counts per class, then the curated dataset zip with a class filter and a seeded train/val split."""
    with gr.Tab("Export") as tab:
        gr.Markdown(
            "Exports the accepted candidates and the real defect images as a zip: `images/<class>/`, a "
            "`manifest.json`/`manifest.csv` with every generation parameter and its lineage, and file hashes; "
            "plus the chosen detection and segmentation formats (images with boxes only; real defects' masks are "
            "drawn from their boxes)."
        )
        formats = gr.CheckboxGroup(
            EXPORT_FORMAT_CHOICES, value=list(EXPORT_FORMATS), label="Formats besides ImageFolder and the manifest"
        )
        with gr.Row():
            export_classes = gr.CheckboxGroup(label="Classes (none ticked: all)")
            val_fraction = gr.Slider(
                0.0,
                0.5,
                value=SplitPlan.val_fraction,
                step=0.05,
                label="Validation share (by source image, no leakage)",
            )
            test_fraction = gr.Slider(0.0, 0.5, value=0.0, step=0.05, label="Test share (by source image)")
            split_seed = gr.Number(value=0, precision=0, label="Split seed")
        export_counts = gr.Markdown()
        export_button = gr.Button("Export accepted dataset (zip)", variant="primary")
        summary = gr.Markdown()
        download = gr.File(label="Download", interactive=False)

    def counts_before_export():
        counts = service.class_counts()
        rows = [f"| {c.class_name} | {c.real} | {c.accepted} |" for c in counts if c.real or c.accepted]
        table = "| class | real | accepted samples |\n| --- | --- | --- |\n" + "\n".join(rows) if rows else ""
        names = [c.class_name for c in counts if c.real or c.accepted]
        return gr.update(choices=names), table or "Nothing to export yet: accept candidates or upload real defects."

    @errors_shown_in(0, 2)
    def export(
        chosen: list[str] | None = None,
        classes: list[str] | None = None,
        fraction: float | None = None,
        seed: int | None = None,
        test: float | None = None,
        request: gr.Request = None,
    ):
        result = service.export_dataset(
            user_of(request),
            formats=EXPORT_FORMATS if chosen is None else chosen,
            classes=classes or None,
            split=SplitPlan(SplitPlan.val_fraction if fraction is None else fraction, test or 0.0, int(seed or 0)),
        )
        counts = json.dumps(result.counts, sort_keys=True)
        splits = ", ".join(f"{name} {n}" for name, n in sorted(result.split_counts.items()))
        text = (
            f"Export {result.export_id}: {result.n_items} images ({splits}), sha256 `{result.sha256[:16]}…`, "
            f"counts {counts}"
        )
        return text, str(result.path)

    export_button.click(
        export,
        [formats, export_classes, val_fraction, split_seed, test_fraction],
        [summary, download],
        api_name="export",
    )
    tab.select(counts_before_export, None, [export_classes, export_counts], api_name="export_counts")
    return TabLoad(counts_before_export, [export_classes, export_counts], "export_load")
