"""Upload tab: store clean slabs and real defect images, re-class them, give real defects their boxes (typed,
suggested from the image or drawn with the mouse)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from webapp.previews import VIEW_MAX_SIDE
from webapp.studio import BoxSuggestion, StudioService
from webapp.tabs.common import TabLoad, blank_pad, errors_shown_in, paint_pad, painted_mask, user_of

ROLE_CHOICES = [("Clean slab (background to generate on)", "clean"), ("Real defect (training data)", "defect")]
# What the gallery shows (newest first), and how many at most: a mill's folder of thousands stays quick to page.
SHOW_CHOICES = [
    ("All", "all"),
    ("Real defects without boxes", "unboxed"),
    ("Real defects", "defect"),
    ("Clean slabs", "clean"),
]
GALLERY_LIMIT = 200
GALLERY_LABEL = "Stored images (click one to edit it)"


def create_upload_tab(service: StudioService) -> TabLoad:
    """Upload tab: store clean slabs and real defect images."""
    with gr.Tab("Upload") as tab:
        gr.Markdown(
            "Clean slabs are the backgrounds defects are generated on; real defect images (with their class) "
            "are training data for fine-tuning. PNG, JPEG, BMP, TIFF or WebP, up to 100 MB and 50 megapixels each; "
            "16-bit, palette, CMYK and transparent images are converted to 8-bit grey or RGB."
        )
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", file_types=["image"], type="filepath")
                role = gr.Radio(ROLE_CHOICES, value="clean", label="These images are")
                class_name = gr.Dropdown(
                    label="Defect class (real defects only; type a new name to add a class)",
                    allow_custom_value=True,
                    interactive=False,
                )
                upload_button = gr.Button("Upload and store", variant="primary")
                result = gr.Markdown()
            with gr.Column(scale=2):
                show = gr.Radio(SHOW_CHOICES, value="all", label="Show", container=False)
                stored = gr.Gallery(label=GALLERY_LABEL, columns=6, height=420)
                with gr.Accordion("Edit a stored image: class, boxes, delete", open=False) as editor:
                    with gr.Row():
                        edit_id = gr.Number(label="Image id", precision=0)
                        edit_class = gr.Dropdown(label="Class (real defects)", allow_custom_value=True)
                    edit_view = gr.AnnotatedImage(label="The image with its boxes as typed", height=320)
                    edit_boxes = gr.Textbox(
                        label="Defect boxes: x0,y0,x1,y1 in pixels, one per line (real defects; empty: none)", lines=2
                    )
                    with gr.Row():
                        suggest_button = gr.Button("Suggest boxes from the image", size="sm")
                        show_estimate = gr.Checkbox(
                            label="Show where it departs from its steel",
                            value=False,
                            info="The estimate a bare class's defect colour is read from, and its suggestions until "
                            "boxed images of the class teach better ones.",
                        )
                    with gr.Accordion("Draw boxes with the mouse", open=False):
                        draw_pad = paint_pad("Paint over or round each defect: one stroke, one box", "#00c8ff", 4, 320)
                        add_painted_button = gr.Button("Add the painted boxes", size="sm")
                    with gr.Row():
                        save_button = gr.Button("Save class and boxes", size="sm")
                        save_next_button = gr.Button("Save, then the next without boxes", size="sm")
                        suggest_next = gr.Checkbox(label="Suggest boxes on the next", value=True)
                    with gr.Row():
                        with_samples = gr.Checkbox(label="Delete its accepted samples too", value=False)
                        delete_button = gr.Button("Delete image", variant="stop", size="sm")
                    edit_message = gr.Markdown()

    def class_choices() -> list[str]:
        return service.trainable_classes()

    def listed_sources(show: str = "all", stored: list | None = None) -> list:
        """The stored images the gallery lists under `show`, newest first (from `stored`, every stored image newest
        first, when the caller has it)."""
        role = {"unboxed": "defect", "defect": "defect", "clean": "clean"}.get(show)
        if stored is None:
            sources = list(reversed(service.list_sources(role)))
        else:
            sources = [s for s in stored if role is None or s.role == role]
        return [s for s in sources if not s.box_count] if show == "unboxed" else sources

    def caption(source) -> str:
        if source.role != "defect":
            return f"#{source.id} clean · {source.name}"
        boxes = f"{source.box_count} box(es)" if source.box_count else "no boxes yet"
        return f"#{source.id} {source.class_name} · {source.name} · {boxes}"

    def gallery_items(show: str = "all", stored: list | None = None):
        """The gallery under `show`: the newest GALLERY_LIMIT, its label saying so when there are more."""
        sources = listed_sources(show, stored)
        items = [(str(service.preview(s.path)), caption(s)) for s in sources[:GALLERY_LIMIT]]
        more = len(sources) > GALLERY_LIMIT
        label = f"{GALLERY_LABEL}: the newest {GALLERY_LIMIT} of {len(sources)}" if more else GALLERY_LABEL
        return gr.update(value=items, label=label)

    def pick_source(show: str, event: gr.SelectData):
        sources = listed_sources(show)
        if event.index is None or event.index >= len(sources):
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        source_id, classes, boxes, pad = editor_fields(sources[event.index])
        return source_id, classes, boxes, gr.update(open=True), pad

    def editor_fields(source) -> tuple:
        """The editor's image id, class, box text and drawing pad for a stored image."""
        boxes = box_lines(service.source_boxes(source.id))
        classes = gr.update(value=source.class_name, choices=class_choices())
        return source.id, classes, boxes, pad_for(source)

    def next_unboxed(after_id: int, sources: list):
        """The real defect image without boxes that follows `after_id` among `sources` (every stored image, newest
        first, as the gallery shows them), round to the start, or None."""
        position = next((i for i, s in enumerate(sources) if s.id == after_id), -1)
        following = sources[position + 1 :] + sources[: position + 1]
        return next((s for s in following if s.role == "defect" and not s.box_count and s.id != after_id), None)

    def source_view(source_id: int | None, text: str, estimate: bool):
        if source_id is None:
            return None
        try:
            return service.source_view(int(source_id), text or "", bool(estimate))
        except ValueError:
            return None

    def draw_pad_value(source_id: int | None):
        """The drawing pad for the image with this id (typed, or after a clear or an add)."""
        try:
            return pad_for(service.source_info(int(source_id)) if source_id is not None else None)
        except ValueError:
            return None

    def pad_for(source) -> dict | None:
        """The drawing pad showing a real defect image (downscaled for the browser) with nothing painted."""
        if source is None or source.role != "defect":
            return None
        return blank_pad(service.preview(source.path, VIEW_MAX_SIDE))

    @errors_shown_in(1, 3)
    def add_painted_boxes(source_id: int | None, box_text: str, painted: dict | None):
        if source_id is None:
            raise gr.Error("Click a stored image (or type its id) first.")
        mask = painted_mask(painted)
        if mask is None:
            raise gr.Error("Paint over or round a defect on the image first.")
        boxes = service.painted_boxes(int(source_id), mask)
        lines = "\n".join(filter(None, [(box_text or "").strip(), box_lines(boxes)]))
        message = f"{len(boxes)} painted box(es) added below the typed ones. Check them in the view, then save."
        return lines, message, draw_pad_value(int(source_id))

    @errors_shown_in(2, 3)
    def suggest_boxes(source_id: int | None):
        if source_id is None:
            raise gr.Error("Click a stored image (or type its id) first.")
        suggestion = service.suggest_boxes(int(source_id))
        shaded = not suggestion.learnt
        lines = box_lines(suggestion.boxes) if suggestion.boxes else gr.update()
        return lines, shaded, suggestion_message(suggestion)

    def save(source_id: int | None, class_name: str | None, box_text: str):
        """Store an image's class and boxes; the image and the message saying so."""
        if source_id is None:
            raise gr.Error("Click a stored image (or type its id) first.")
        info = service.update_source(int(source_id), class_name or None, box_text)
        return info, f"Image {info.id} saved ({info.class_name or 'clean'})."

    @errors_shown_in(0, 2)
    def save_source(source_id: int | None, class_name: str | None, box_text: str, show: str = "all"):
        _, saved = save(source_id, class_name, box_text)
        return saved, gallery_items(show)

    @errors_shown_in(0, 7)
    def save_and_next(
        source_id: int | None, class_name: str | None, box_text: str, suggest: bool = True, show: str = "all"
    ):
        info, saved = save(source_id, class_name, box_text)
        stored = listed_sources()
        following = next_unboxed(info.id, stored)
        gallery = gallery_items(show, stored)
        if following is None:
            return f"{saved} No other real defect image is without boxes.", gallery, *[gr.update()] * 5
        opened = f"{saved} Next without boxes: image {following.id} ({following.name})."
        next_id, classes, boxes, pad = editor_fields(following)
        shaded = gr.update()
        if suggest:
            suggestion = service.suggest_boxes(following.id)
            if suggestion.boxes:
                boxes, shaded = box_lines(suggestion.boxes), not suggestion.learnt
            opened += " " + suggestion_message(suggestion)
        return opened, gallery, next_id, classes, boxes, pad, shaded

    @errors_shown_in(0, 2)
    def delete_source(source_id: int | None, together: bool, show: str = "all"):
        if source_id is None:
            raise gr.Error("Click a stored image (or type its id) first.")
        removed = service.delete_source(int(source_id), with_samples=bool(together))
        return f"Image {int(source_id)} deleted with {removed} sample(s).", gallery_items(show)

    @errors_shown_in(0, 4)
    def upload(paths: list[str] | None, role: str, class_name: str | None, show: str, request: gr.Request):
        if not paths:
            raise gr.Error("Choose one or more image files first.")
        files = [(Path(p).name, Path(p).read_bytes()) for p in paths]
        outcome = service.upload_images(files, role, class_name if role == "defect" else None, user_of(request))
        summary = outcome.summary
        if role == "defect" and outcome.sources:
            summary += (
                " Give each its defect boxes (click it, then *Suggest boxes from the image* and correct them): a "
                "class learns its defects' colour, size and count from them."
            )
        return summary, gallery_items(show), gr.update(choices=class_choices()), None

    def box_lines(boxes: list[dict]) -> str:
        return "\n".join(f"{b['xmin']},{b['ymin']},{b['xmax']},{b['ymax']}" for b in boxes)

    def on_role(role: str):
        return gr.update(interactive=role == "defect", choices=class_choices())

    def refresh(show: str = "all"):
        return gallery_items(show), gr.update(choices=class_choices())

    upload_button.click(upload, [files, role, class_name, show], [result, stored, class_name, files], api_name="upload")
    stored.select(pick_source, show, [edit_id, edit_class, edit_boxes, editor, draw_pad], api_name="pick_source")
    show.change(gallery_items, show, stored, api_name="upload_show")
    gr.on(
        [edit_id.change, edit_boxes.change, show_estimate.change],
        source_view,
        [edit_id, edit_boxes, show_estimate],
        edit_view,
        show_progress="hidden",
        api_name="source_view",
    )
    # The pad is filled with the pick itself, and on a typed id: a second fill after a pick could arrive after the
    # first strokes and wipe them.
    edit_id.input(draw_pad_value, edit_id, draw_pad, show_progress="hidden", api_name="source_draw_pad")
    draw_pad.clear(draw_pad_value, edit_id, draw_pad, api_visibility="private")
    add_painted_button.click(
        add_painted_boxes,
        [edit_id, edit_boxes, draw_pad],
        [edit_boxes, edit_message, draw_pad],
        api_name="source_add_painted_boxes",
    )
    suggest_button.click(
        suggest_boxes, edit_id, [edit_boxes, show_estimate, edit_message], api_name="source_suggest_boxes"
    )
    save_button.click(
        save_source, [edit_id, edit_class, edit_boxes, show], [edit_message, stored], api_name="source_save"
    )
    save_next_button.click(
        save_and_next,
        [edit_id, edit_class, edit_boxes, suggest_next, show],
        [edit_message, stored, edit_id, edit_class, edit_boxes, draw_pad, show_estimate],
        api_name="source_save_next",
    )
    delete_button.click(delete_source, [edit_id, with_samples, show], [edit_message, stored], api_name="source_delete")
    role.change(on_role, role, class_name, api_name="upload_role")
    tab.select(refresh, show, [stored, class_name], api_name="upload_refresh")
    return TabLoad(refresh, [stored, class_name], "upload_load", [show])


def suggestion_message(suggestion: BoxSuggestion) -> str:
    """What the Upload tab says of suggested boxes: how many, how they were found, and what to do next."""
    boxed = suggestion.boxed_images
    if suggestion.learnt:
        how = f"learnt from the boxes of {boxed} image(s) of this class"
    else:
        how = "where the image departs from its steel (shown shaded)"
        if suggestion.compared:
            how += f"; on the {boxed} boxed image(s) of this class this matched their boxes better than learning"
    if suggestion.boxes:
        return (
            f"{len(suggestion.boxes)} box(es) suggested, {how}. Check them: a box should hold one whole defect. "
            "Correct, add or delete lines, then save."
        )
    if suggestion.learnt or suggestion.compared:
        return f"No box suggested here ({how}). Draw or type its boxes."
    return (
        "Nothing in this image departs from its steel enough to suggest a box: a texture over most of the image "
        "(crazing, patches, a pitted surface) is not found this way. Draw or type its boxes: once "
        f"{suggestion.learns_from} images of a class are boxed, its suggestions learn from them."
    )
