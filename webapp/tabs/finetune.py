"""Fine-tune tab: start, follow, stop and resume runs; adapter versions per class."""

from __future__ import annotations

import gradio as gr

from webapp.studio import (
    FineTuneStatus,
    StudioService,
)
from webapp.tabs.common import MODEL, TabLoad, errors_shown_in, user_of

# The fine-tune status refresh: often enough to follow a CPU run (~1 step/s), rarely enough to stay cheap.
STATUS_REFRESH_S = 2.0


def progress_bar(run: FineTuneStatus | None) -> str:
    """A fine-tune's progress as an HTML bar with steps, elapsed time and the time left."""
    if run is None or not run.total:
        return ""
    parts = [f"step {run.step}/{run.total}"]
    if run.elapsed_s is not None:
        parts.append(f"elapsed {duration(run.elapsed_s)}")
    if run.eta_s is not None:
        parts.append(f"about {duration(run.eta_s)} left")
    width = round(100 * run.fraction)
    return (
        '<div style="border:1px solid #999;border-radius:4px;height:14px;width:100%">'
        f'<div style="background:#2f7d32;height:100%;width:{width}%"></div></div>'
        f"<small>{' · '.join(parts)}</small>"
    )


def duration(seconds: float) -> str:
    """'1 h 02 min', '14 min 05 s' or '42 s'."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def create_finetune_tab(service: StudioService) -> TabLoad:
    """Fine-tune tab: start, stop and resume a run; status and previews refresh on a timer."""
    presets = service.presets()
    with gr.Tab("Fine-tune") as tab:
        gr.Markdown(
            "Learns one token per chosen class plus a LoRA from the real defect images and accepted candidates "
            "of those classes. A finished run becomes the classes' active adapter; a stopped one can be resumed."
        )
        with gr.Row():
            with gr.Column(scale=1):
                classes = gr.CheckboxGroup(label="Classes to fine-tune")
                counts = gr.Markdown("Choose classes to see how many images each trains on.")
                preset = gr.Dropdown(presets, value=presets[0], label="Preset")
                steps = gr.Number(value=0, precision=0, minimum=0, label="Steps (0: the preset's)")
                masked_loss = gr.Checkbox(
                    label="Masked loss: learn mostly from the defect region (images with boxes or masks)",
                    info="Measured on NEU: slightly more real masked samples, mixed on whole-window samples.",
                )
                with gr.Row():
                    start_button = gr.Button("Start fine-tune", variant="primary")
                    stop_button = gr.Button("Stop", variant="stop")
                    resume_button = gr.Button("Resume")
            with gr.Column(scale=2):
                bar = gr.HTML(progress_bar(None))
                status = gr.Markdown("No fine-tune run yet.")
                previews = gr.Gallery(label="Previews of the finished adapter", columns=3, height=300)
        with gr.Accordion("Adapter versions: choose the one generation uses (roll back)", open=False):
            with gr.Row():
                version_class = gr.Dropdown(label="Class")
                version = gr.Dropdown(label="Version")
                activate_button = gr.Button("Use this version", size="sm")
            version_message = gr.Markdown()
        run_id = gr.State(None)
        timer = gr.Timer(STATUS_REFRESH_S)

    def status_view(current: int | None):
        current = current if current is not None else service.latest_run_id()
        if current is None:
            return None, progress_bar(None), "No fine-tune run yet.", []
        run = service.finetune_status(current)
        loss = f" · loss {run.loss:.4f}" if run.loss is not None else ""
        # While it trains, the bar shows the step: the progress text would say it again.
        detail = "" if run.is_active and run.total else f"  \n{run.message}"
        text = f"**Run {run.run_id}** ({', '.join(run.classes)}): {run.status}{loss}{detail}"
        return current, progress_bar(run), text, [(str(p), p.stem) for p in run.previews]

    @errors_shown_in(2, 4)
    def start(
        chosen: list[str],
        preset: str,
        steps: int | None,
        masked: bool | None = False,
        request: gr.Request = None,
        progress=gr.Progress(),  # noqa: B008 (Gradio injects progress through this default)
    ):
        progress(0, desc="Snapshotting the dataset")
        run = service.start_finetune(chosen, preset, int(steps or 0) or None, user_of(request), bool(masked))
        return status_view(run)

    @errors_shown_in(2, 4)
    def stop(current: int | None):
        if current is None:
            raise gr.Error("No run to stop.")
        service.stop_finetune(int(current))
        return status_view(current)

    @errors_shown_in(2, 4)
    def resume(current: int | None, request: gr.Request):
        if current is None:
            raise gr.Error("No run to resume.")
        return status_view(service.resume_finetune(int(current), user_of(request)))

    def refresh(current: int | None):
        names = service.trainable_classes()
        return gr.update(choices=names), gr.update(choices=names), *status_view(current)

    def show_counts(chosen: list[str] | None):
        if not chosen:
            return "Choose classes to see how many images each trains on."
        return counts_message(service.training_counts(chosen))

    def show_versions(class_name: str | None):
        versions = service.adapter_versions(class_name) if class_name else []
        active = next((v.version for v in versions if v.is_active), None)
        return gr.update(choices=[(v.label, v.version) for v in versions], value=active)

    def show_learnt(class_name: str | None, chosen: int | None):
        """What the chosen version learnt of the class beside its token and LoRA."""
        versions = service.adapter_versions(class_name) if class_name else []
        picked = next((v for v in versions if v.version == chosen), None)
        return f"**{picked.label}** — {picked.learnt}" if picked and picked.learnt else ""

    @errors_shown_in(0, 2)
    def activate(class_name: str | None, chosen: int | None):
        if not class_name or chosen is None:
            raise gr.Error("Choose a class and one of its adapter versions.")
        picked = service.activate_adapter_version(class_name, int(chosen))
        return f"{class_name} now generates with {picked.label}.", show_versions(class_name)

    classes.change(show_counts, classes, counts, api_name="finetune_counts")
    version_class.change(show_versions, version_class, version, api_name="adapter_versions")
    version.change(show_learnt, [version_class, version], version_message, api_name="adapter_learnt")
    activate_button.click(activate, [version_class, version], [version_message, version], api_name="adapter_activate")
    shown = [run_id, bar, status, previews]
    start_button.click(start, [classes, preset, steps, masked_loss], shown, api_name="finetune_start", **MODEL)
    stop_button.click(stop, run_id, shown, api_name="finetune_stop")
    resume_button.click(resume, run_id, shown, api_name="finetune_resume", **MODEL)
    timer.tick(status_view, run_id, shown, api_name="finetune_status", show_progress="hidden")
    tab.select(refresh, run_id, [classes, version_class, *shown], api_name="finetune_tab")
    return TabLoad(refresh, [classes, version_class, *shown], "finetune_load", inputs=[run_id])


def counts_message(counts: dict[str, dict[str, int]]) -> str:
    """What the Fine-tune tab says a run of the chosen classes trains on (`StudioService.training_counts`), with
    the classes that have nothing yet and those whose real images have no boxes."""
    lines = [
        f"- **{name}**: {c['real']} real ({c['boxed']} with boxes), {c['accepted']} accepted samples"
        for name, c in counts.items()
    ]
    empty = [name for name, c in counts.items() if not c["real"] + c["accepted"]]
    warning = f"\n\n{', '.join(empty)}: nothing to train on yet." if empty else ""
    bare = [name for name, c in counts.items() if c["real"] and not c["boxed"]]
    if bare:
        warning += (
            f"\n\n{', '.join(bare)}: no real image has boxes, so the class learns its defects' colour from estimates "
            "and auto-places them at NEU's sizes. Box a few in **Upload** (suggestions learn from them)."
        )
    return "Trains on:\n" + "\n".join(lines) + warning
