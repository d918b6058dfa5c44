"""The Gradio UI: one tab per task (`webapp/tabs/`), each a thin layer over StudioService; layout first, event
wiring below it in each tab.

Keyboard use: Tab moves between controls and Enter (or Space) presses the focused button. In "Generate &
review", the candidate list picks the candidate to judge, Enter in the reason box rejects it with that reason,
and after each decision the next pending candidate is selected, so Tab to "Accept" + Enter walks a batch.
Each candidate's caption shows its realism score (0-1, from the steel feature network); "Sort by realism"
orders the gallery best first, and the threshold slider captions the pending candidates below it
"pre-rejected" until the user rejects them ("Reject flagged") or decides otherwise.
"""

from __future__ import annotations

import gradio as gr

from webapp.studio import StudioService
from webapp.tabs.dataset import REVIEW_SHORTCUTS_JS, create_dataset_tab
from webapp.tabs.export import create_export_tab
from webapp.tabs.finetune import create_finetune_tab
from webapp.tabs.generate import create_generate_tab
from webapp.tabs.upload import create_upload_tab


def build_app(service: StudioService) -> gr.Blocks:
    """The studio UI over `service`; launch it with `.queue().launch(...)`."""
    with gr.Blocks(title="Steel Defect Studio") as app:
        gr.Markdown(
            "# Steel Defect Studio\nUpload clean slabs, synthesise defects with a learned token, keep the good "
            "ones, fine-tune on what you kept, and export the curated dataset."
        )
        with gr.Tabs():
            loads = [
                create_upload_tab(service),
                create_generate_tab(service),
                create_finetune_tab(service),
                create_dataset_tab(service),
                create_export_tab(service),
            ]
        for load in filter(None, loads):
            app.load(load.fn, load.inputs, load.outputs, api_name=load.api_name)
        app.load(None, js=REVIEW_SHORTCUTS_JS)
    return app


def served_folders(service: StudioService) -> list[str]:
    """The folders whose files the UI shows (pass as `allowed_paths` to launch); not the database beside them."""
    folders = (service.files.root, service.runs_dir, service.exports_dir, service.previews_dir)
    return [str(folder) for folder in folders]
