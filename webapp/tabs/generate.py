"""The "Generate & review" tab: a batch from a class's real images, and candidates on a clean slab (window, painted
mask, typed boxes or auto-place)."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from engine.config import DEFAULT_REALISM_THRESHOLD, DEFAULT_STEPS, GenerationConfig
from engine.generation.parameters import MIN_FEW_SHOT_REFERENCES, MIN_OWN_REFERENCES
from webapp.previews import VIEW_MAX_SIDE, window_view
from webapp.studio import (
    SampleDetails,
    SourceInfo,
    StudioService,
    parse_box_text,
    realism_sort_key,
)
from webapp.tabs.common import (
    MODEL,
    TabLoad,
    blank_pad,
    comparison,
    errors_shown_in,
    overlay,
    paint_pad,
    painted_mask,
    session_of,
    user_of,
)

REALISM_HELP = (
    "**Realism** (0–1) judges the repainted region only: the geometric mean of the steel feature network's "
    "probability that it shows the chosen class and how typical its features are among the class's real images "
    f"(its uploaded real defects from {MIN_OWN_REFERENCES} on, else NEU's shipped features for a NEU class, else from "
    f"{MIN_FEW_SHOT_REFERENCES} uploads those with their flips and rotations; typicality alone for a class the network "
    "was not trained on). Read it against the untouched slab's score on the same "
    "region, reported after each batch: a candidate scoring no higher than its slab has added nothing of the class."
)


# A batch from real images: its default size (about a minute on two CPU cores) and the samples shown after it.
DEFAULT_BATCH_SAMPLES = 40
BATCH_GALLERY_SIZE = 8


def realism_text(score: float | None) -> str:
    return "realism –" if score is None else f"realism {score:.2f}"


def is_flagged(details: SampleDetails, threshold: float | None) -> bool:
    """A pending candidate the slider's threshold (0: off) pre-rejects: the user still decides."""
    scored = details.realism_score is not None
    return details.status == "pending" and bool(threshold) and scored and details.realism_score < threshold


def candidate_caption(details: SampleDetails, threshold: float | None) -> str:
    """'#id seed s · status · realism r', with '· pre-rejected' when the threshold flags it."""
    caption = f"#{details.id} seed {details.params.seed} · {details.status} · {realism_text(details.realism_score)}"
    return caption + (" · pre-rejected" if is_flagged(details, threshold) else "")


def create_generate_tab(service: StudioService) -> TabLoad:
    """Generate & review tab: candidates on a slab with a token, then accept, reject or undo."""
    with gr.Tab("Generate & review") as tab:
        with gr.Accordion("A batch from a class's real defect images (the studio's training samples)", open=True):
            gr.Markdown(
                "Makes samples the way `launch.py generate --init` does, which the few-shot yardstick measures: each "
                "starts from a varied init of the class's uploaded real images (as they are, a crop, turn or "
                "mosaic), is redrawn at the token's strength, passes the realism gate (flagged ones are kept, "
                "pre-rejected) and gets another exposure and grain. Review them in **Dataset and review queue**."
            )
            with gr.Row():
                batch_class = gr.Dropdown(
                    label="Classes (their real images and active adapters)", multiselect=True, scale=2
                )
                batch_size = gr.Number(
                    value=DEFAULT_BATCH_SAMPLES, precision=0, minimum=1, label="Samples per class", scale=1
                )
                batch_seed = gr.Number(value=0, precision=0, minimum=0, label="Batch seed", scale=1)
                batch_gate = gr.Number(
                    value=DEFAULT_REALISM_THRESHOLD, minimum=0, maximum=1, label="Realism gate (0: off)", scale=1
                )
                with gr.Column(scale=1, min_width=160):
                    batch_button = gr.Button("Generate batch", variant="primary")
                    stop_batch_button = gr.Button("Stop batch", variant="stop", size="sm")
            batch_message = gr.Markdown()
            batch_gallery = gr.Gallery(label="The batch's first samples", columns=8, height=140)
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Dropdown(label="Clean slab")
                source_preview = paint_pad(
                    "Slab: paint where the defect goes (optional; nothing painted repaints a window)", "#ff3030", 8, 260
                )
                with gr.Accordion("Window on a large slab (click to choose where it goes) and typed boxes", open=False):
                    window_picker = gr.Image(
                        label="Whole-window generation repaints the outlined window; click to centre a square there",
                        interactive=False,
                        height=200,
                    )
                window_centre = gr.State(None)
                auto_place = gr.Checkbox(
                    value=True,
                    label="Auto-place: masks shaped and sized like real defects of the class (mask and boxes come "
                    "with each sample)",
                    info="Untick to redraw a whole window instead (choosing one above unticks it): on clean steel a "
                    "whole window is re-textured, with no defect painted in.",
                )
                paste_defects = gr.Checkbox(
                    value=False,
                    label="With auto-place, start from the class's boxed real defects pasted in",
                    info="Each candidate starts from the slab with one of the class's boxed real defects (Upload tab) "
                    "blended in at each auto-placed defect, then repainted at the strength: a real defect's texture "
                    "in a new place. Off by default: on NEU's slabs it trained recognizers and box-finders worse "
                    "than the model's own auto-placed defects (docs/results.md).",
                )
                with gr.Accordion("Type boxes instead", open=False):
                    box_text = gr.Textbox(label="Boxes x0,y0,x1,y1 in slab pixels (one per line)", lines=2)
                class_name = gr.Dropdown(label="Defect token")
                strength = gr.Slider(
                    0.05,
                    1.0,
                    value=GenerationConfig.strength,
                    step=0.05,
                    label="Strength (how much the model repaints)",
                    info="Proposed per token: for a whole window (re-textures the slab) or, with auto-place, a "
                    "mask or boxes, for the masked region (0.9-1.0 paints a new defect on clean steel).",
                )
                with gr.Row():
                    num_candidates = gr.Slider(1, 16, value=4, step=1, label="Candidates")
                    steps = gr.Slider(2, 100, value=DEFAULT_STEPS, step=1, label="Steps")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                generate_button = gr.Button("Generate candidates", variant="primary")
                refresh_button = gr.Button("Refresh slabs and tokens", size="sm")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Candidates", columns=4, height=420, allow_preview=True)
                with gr.Row():
                    sort_by_realism = gr.Checkbox(value=False, label="Sort by realism (best first)")
                    threshold = gr.Slider(
                        0.0,
                        1.0,
                        value=0.0,
                        step=0.05,
                        label="Pre-reject below realism (0: off; you still decide)",
                    )
                    reject_flagged_button = gr.Button("Reject flagged", variant="stop", size="sm")
                gr.Markdown(REALISM_HELP)
                candidate = gr.Dropdown(label="Candidate to judge (click an image or pick here)")
                reason = gr.Textbox(label="Reason (optional; Enter here rejects with it)", max_lines=1)
                with gr.Row():
                    accept_button = gr.Button("Accept candidate", variant="primary")
                    reject_button = gr.Button("Reject candidate", variant="stop")
                    undo_button = gr.Button("Undo last decision")
                candidate_view = gr.AnnotatedImage(
                    label="Close-up: the repainted region with its mask and boxes", format="png", height=300
                )
                candidate_comparison = gr.Gallery(
                    label="Candidate · source · difference · real examples of the class", columns=4, height=180
                )
                decision = gr.Markdown()
        candidate_ids = gr.State([])
        last_decided = gr.State(None)

    def candidates_view(ids: list[int], selected: int | None, threshold: float | None = None):
        """Gallery items, candidate choices and the selected index for the candidates `ids` (in that order)."""
        details = [service.sample_details(i) for i in ids]
        items = [(str(service.preview(d.path)), candidate_caption(d, threshold)) for d in details]
        choices = [(candidate_caption(d, threshold), d.id) for d in details]
        index = ids.index(selected) if selected in ids else None
        return gr.update(value=items, selected_index=index), gr.update(choices=choices, value=selected)

    def ordered(ids: list[int], by_realism: bool | None) -> list[int]:
        """The candidates best realism first (unscored last), or in generation order."""
        if not by_realism:
            return sorted(ids)
        scores = {i: service.sample_details(i).realism_score for i in ids}
        return sorted(sorted(ids), key=lambda i: realism_sort_key(scores[i]))

    def next_pending(ids: list[int], after: int | None) -> int | None:
        """The first pending candidate after `after` (wrapping round), else `after`."""
        start = ids.index(after) + 1 if after in ids else 0
        for sample_id in ids[start:] + ids[:start]:
            if service.sample_details(sample_id).status == "pending":
                return sample_id
        return after

    def refresh(source_id: int | None = None, class_name: str | None = None, batch_names: list[str] | None = None):
        """Fresh slab and token lists, keeping the current picks (else the newest slab and the first token), and the
        classes a batch can start from (those with real images; the chosen ones kept, else all of them)."""
        sources = [(f"#{s.id} {s.name} ({s.width}×{s.height})", s.id) for s in service.list_sources(role="clean")]
        classes = [(f"{c.name} {c.token} · adapter v{c.adapter_version}", c.name) for c in service.list_classes()]
        source_ids, class_names = [value for _, value in sources], [value for _, value in classes]
        source_id = source_id if source_id in source_ids else (source_ids[-1] if source_ids else None)
        class_name = class_name if class_name in class_names else (class_names[0] if class_names else None)
        with_reals = {counts.class_name for counts in service.class_counts() if counts.real}
        startable = [name for name in class_names if name in with_reals]
        kept = [name for name in batch_names or [] if name in startable]
        return (
            gr.update(choices=sources, value=source_id),
            gr.update(choices=classes, value=class_name),
            gr.update(choices=startable, value=kept or startable),
        )

    def clean_slab(source_id: int | None) -> SourceInfo | None:
        return next((s for s in service.list_sources(role="clean") if s.id == source_id), None)

    def editor_value(slab: SourceInfo) -> dict[str, Any]:
        """The mask editor showing the slab, downscaled for the browser, with nothing painted."""
        return blank_pad(service.preview(slab.path, VIEW_MAX_SIDE))

    def show_source(source_id: int | None):
        """The slab in the mask editor and the window picker (window centred)."""
        slab = clean_slab(source_id)
        if slab is None:
            return None, None, None
        return editor_value(slab), picker_view(slab, None), None

    def restore_slab(source_id: int | None):
        """After the editor's clear button: the painted mask goes, the chosen slab stays."""
        slab = clean_slab(source_id)
        return editor_value(slab) if slab is not None else None

    def picker_view(slab: SourceInfo, centre: tuple[float, float] | None, box_text: str | None = None):
        config = GenerationConfig("window")
        if centre is not None:
            config = config.centred_on(*centre, slab.width, slab.height)
        try:
            boxes = parse_box_text(box_text) if (box_text or "").strip() else []
        except ValueError:
            boxes = []
        return window_view(slab.path, service.previews_dir, config.repainted_box(slab.width, slab.height), boxes=boxes)

    def show_boxes(source_id: int | None, box_text: str | None, centre: tuple[float, float] | None = None):
        """The window picker with the typed boxes drawn on the slab."""
        slab = clean_slab(source_id)
        return picker_view(slab, centre, box_text) if slab is not None else gr.update()

    def pick_window(source_id: int | None, box_text: str | None, event: gr.SelectData):
        """The window centred where the slab was clicked; a chosen window is redrawn whole, so auto-place is off."""
        slab = clean_slab(source_id)
        if slab is None or event.index is None:
            return gr.update(), None, gr.update()
        with Image.open(service.preview(slab.path, VIEW_MAX_SIDE)) as shown:
            scale = slab.width / shown.width
        centre = (event.index[0] * scale, event.index[1] * scale)
        return picker_view(slab, centre, box_text), centre, False

    def class_strength(
        class_name: str | None, masked: bool | None = False, boxes: str | None = "", painted: dict | None = None
    ):
        """The token's proposed strength: for a masked repaint when auto-place is on, boxes are typed or a mask is
        painted; else for a whole window."""
        matches = [c for c in service.list_classes() if c.name == class_name]
        if not matches:
            return gr.update()
        with_mask = masked or (boxes or "").strip() or painted_mask(painted, (1, 1)) is not None
        return matches[0].masked_strength if with_mask else matches[0].default_strength

    @errors_shown_in(3, 4)
    def generate(
        source_id: int | None,
        class_name: str | None,
        strength: float,
        num_candidates: int,
        steps: int,
        seed: int | None,
        painted: dict | None = None,
        boxes: str | None = None,
        auto: bool | None = None,
        by_realism: bool | None = None,
        threshold: float | None = None,
        centre: tuple[float, float] | None = None,
        paste: bool | None = None,
        request: gr.Request = None,
        progress=gr.Progress(),  # noqa: B008 (Gradio injects progress through this default)
    ):
        if source_id is None:
            raise gr.Error("Upload a clean slab in the Upload tab first, then pick it here.")
        if not class_name:
            raise gr.Error("Pick a defect token first.")
        slab = next((s for s in service.list_sources(role="clean") if s.id == int(source_id)), None)
        mask = painted_mask(painted, (slab.width, slab.height)) if slab else None
        if mask is not None and (boxes or "").strip():
            raise gr.Error("Paint a mask or type boxes, not both.")
        if mask is None and (boxes or "").strip():
            mask = service.box_mask(int(source_id), boxes)
        config = GenerationConfig(
            class_name=class_name,
            num_candidates=int(num_candidates),
            strength=float(strength),
            steps=int(steps),
            seed=int(seed or 0),
            auto_place=bool(auto) and mask is None,
        )
        if centre is not None and slab is not None and mask is None and not config.auto_place:
            config = config.centred_on(*centre, slab.width, slab.height)
        if auto and mask is not None:
            gr.Warning("A mask was painted or typed, so auto-place was not used.")
        progress(0, desc="Loading the model")
        outcome = service.generate_candidates(
            int(source_id),
            config,
            user_of(request),
            lambda step, total, message: progress((step, total), desc=message),
            mask=mask,
            realism_threshold=threshold or None,
            paste_real_defects=bool(paste),
        )
        ids = ordered(outcome.sample_ids, by_realism)
        if not ids:
            raise gr.Error(
                f"All {len(outcome.duplicate_seeds)} candidates were identical to stored samples (same seeds and "
                "settings); change the seed."
            )
        gallery_update, choices_update = candidates_view(ids, ids[0], threshold)
        message = f"{len(ids)} candidates in {outcome.wall_time_s:.1f} s; judge each one."
        if config.auto_place and paste:
            message += (
                f" Started from {outcome.pasted_defects} boxed real defects of {class_name} pasted in."
                if outcome.pasted_defects
                else f" {class_name} has no boxed real images (Upload tab): the model painted the defects alone."
            )
        if outcome.duplicate_seeds:
            seeds = ", ".join(str(seed) for seed in outcome.duplicate_seeds)
            message += f" Seed(s) {seeds} made images identical to stored samples: skipped, change the seed."
        if outcome.baseline_realism is not None:
            message += f" The untouched slab scores {outcome.baseline_realism:.2f} on the same region (baseline)."
            scores = [c.realism_score for c in outcome.candidates]
            whole_window = mask is None and not config.auto_place and config.strength < 1.0
            if whole_window and all(score is not None and score <= outcome.baseline_realism for score in scores):
                message += (
                    " None scores above it: a whole window at this strength re-textures the clean steel. To paint a "
                    "defect of the class, tick auto-place (or paint a mask, or type boxes); or make a batch from the "
                    "class's real images above."
                )
        if outcome.flagged_ids:
            message += f" {len(outcome.flagged_ids)} pre-rejected below realism {threshold:.2f}."
        return gallery_update, choices_update, ids, message

    # Browser sessions whose running batch was asked to stop (the batch asks after every init).
    stop_requests: set[str] = set()

    @errors_shown_in(0, 3)
    def generate_batch(
        class_names: list[str] | str | None,
        num: int | None,
        seed: int | None,
        gate: float | None = DEFAULT_REALISM_THRESHOLD,
        request: gr.Request = None,
        progress=gr.Progress(),  # noqa: B008 (Gradio injects progress through this default)
    ):
        session = session_of(request)
        stop_requests.discard(session)
        chosen = [class_names] if isinstance(class_names, str) else list(class_names or [])
        if not chosen:
            raise gr.Error("Upload real defect images of a class and fine-tune it first, then choose it here.")
        if not num or int(num) < 1:
            raise gr.Error("Ask for at least one sample.")
        lines, shown = [], []
        per_class = -(-BATCH_GALLERY_SIZE // len(chosen))
        for class_name in chosen:
            progress(0, desc=f"{class_name}: loading the model")
            stored = service.generate_batch(
                class_name,
                int(num),
                int(seed or 0),
                user_of(request),
                lambda done, total, message, name=class_name: progress((done, total), desc=f"{name}: {message}"),
                realism_threshold=gate or None,
                should_stop=lambda: session in stop_requests,
            )
            lines.append(f"- **{class_name}**: {stored.summary}.")
            shown += [service.sample_details(i) for i in stored.sample_ids[:per_class]]
            if session in stop_requests:
                break
        gallery = [(str(service.preview(d.path)), candidate_caption(d, gate or None)) for d in shown]
        review = "Review them in **Dataset and review queue** (its batch filter lists each batch)."
        return "\n".join([*lines, review]), gallery, int(seed or 0) + 1

    def stop_batch(request: gr.Request = None) -> str:
        stop_requests.add(session_of(request))
        return "Stopping after the current init; what the batch made so far is kept."

    def next_seed(seed: int | None, num_candidates: int | None) -> int:
        """The first seed after this batch's, so clicking Generate again gives new candidates, not copies."""
        return int(seed or 0) + int(num_candidates or 1)

    def show_candidate(sample_id: int | None):
        if sample_id is None:
            return None, None
        details = service.sample_details(int(sample_id))
        views = service.review_views(details)
        return overlay(views), comparison(views, service.real_examples(details.class_name))

    def select_from_gallery(ids: list[int], event: gr.SelectData):
        return gr.update(value=ids[event.index]) if event.index is not None and event.index < len(ids) else gr.update()

    @errors_shown_in(3, 5)
    def judge(
        status: str, ids: list[int], sample_id: int | None, reason: str, threshold: float | None, request: gr.Request
    ):
        if sample_id is None:
            raise gr.Error("Select a candidate first (click its image or pick it in the list).")
        result = service.decide(int(sample_id), status, reason, user_of(request))
        if not result.applied:
            gr.Warning(result.message)
        gallery_update, choices_update = candidates_view(ids, next_pending(ids, int(sample_id)), threshold)
        return gallery_update, choices_update, int(sample_id), result.message, ""

    def accept(ids: list[int], sample_id: int | None, reason: str, threshold: float = 0.0, request: gr.Request = None):
        return judge("accepted", ids, sample_id, reason, threshold, request)

    def reject(ids: list[int], sample_id: int | None, reason: str, threshold: float = 0.0, request: gr.Request = None):
        return judge("rejected", ids, sample_id, reason, threshold, request)

    @errors_shown_in(3, 4)
    def undo(ids: list[int], last: int | None, threshold: float = 0.0, request: gr.Request = None):
        if last is None:
            raise gr.Error("There is no decision to undo yet.")
        result = service.undo(int(last), user_of(request))
        gallery_update, choices_update = candidates_view(ids, int(last), threshold)
        return gallery_update, choices_update, None, result.message

    def reorder(ids: list[int], selected: int | None, by_realism: bool, threshold: float):
        ids = ordered(ids, by_realism)
        return *candidates_view(ids, selected, threshold), ids

    def recaption(ids: list[int], selected: int | None, threshold: float):
        return candidates_view(ids, selected, threshold)

    @errors_shown_in(2, 3)
    def reject_flagged(ids: list[int], selected: int | None, threshold: float, request: gr.Request = None):
        if not threshold:
            raise gr.Error("Set the realism threshold above 0 first: nothing is flagged.")
        results = service.reject_flagged(ids, user_of(request), realism_threshold=threshold)
        rejected = [r.sample_id for r in results if r.applied]
        message = f"Rejected {len(rejected)} candidate(s) below realism {threshold:.2f}" + (
            f": {', '.join(f'#{i}' for i in rejected)}." if rejected else "."
        )
        return *candidates_view(ids, next_pending(ids, selected), threshold), message

    judged = [gallery, candidate, last_decided, decision, reason]
    picks = [source, class_name, batch_class]
    batch_button.click(
        generate_batch,
        [batch_class, batch_size, batch_seed, batch_gate],
        [batch_message, batch_gallery, batch_seed],
        api_name="generate_batch",
        **MODEL,
    )
    stop_batch_button.click(stop_batch, None, batch_message, api_name="stop_batch")
    refresh_button.click(refresh, picks, picks, api_name="generate_refresh")
    tab.select(refresh, picks, picks, api_name="generate_tab")
    source.change(show_source, source, [source_preview, window_picker, window_centre], api_name="show_source")
    source_preview.clear(restore_slab, source, source_preview, api_name="restore_slab")
    window_picker.select(
        pick_window, [source, box_text], [window_picker, window_centre, auto_place], api_name="pick_window"
    )
    box_text.change(show_boxes, [source, box_text, window_centre], window_picker, api_name="show_boxes")
    strength_inputs = [class_name, auto_place, box_text, source_preview]
    class_name.change(class_strength, strength_inputs, strength, api_name="class_strength")
    auto_place.change(class_strength, strength_inputs, strength, api_name="masked_strength")
    source_preview.change(class_strength, strength_inputs, strength, api_visibility="private", show_progress="hidden")
    generate_button.click(
        generate,
        [
            source,
            class_name,
            strength,
            num_candidates,
            steps,
            seed,
            source_preview,
            box_text,
            auto_place,
            sort_by_realism,
            threshold,
            window_centre,
            paste_defects,
        ],
        [gallery, candidate, candidate_ids, decision],
        api_name="generate",
        **MODEL,
    ).success(next_seed, [seed, num_candidates], seed, api_visibility="private")
    candidate.change(show_candidate, candidate, [candidate_view, candidate_comparison], api_name="candidate_overlay")
    gallery.select(select_from_gallery, candidate_ids, candidate, api_name="select_candidate")
    judging = [candidate_ids, candidate, reason, threshold]
    accept_button.click(accept, judging, judged, api_name="accept")
    reject_button.click(reject, judging, judged, api_name="reject")
    reason.submit(reject, judging, judged, api_name="reject_with_reason")
    undo_button.click(undo, [candidate_ids, last_decided, threshold], judged[:4], api_name="undo")
    sort_by_realism.change(
        reorder,
        [candidate_ids, candidate, sort_by_realism, threshold],
        [gallery, candidate, candidate_ids],
        api_name="sort_by_realism",
    )
    threshold.change(
        recaption,
        [candidate_ids, candidate, threshold],
        [gallery, candidate],
        api_name="realism_threshold",
        show_progress="hidden",
        trigger_mode="always_last",
    )
    reject_flagged_button.click(
        reject_flagged, [candidate_ids, candidate, threshold], [gallery, candidate, decision], api_name="reject_flagged"
    )
    return TabLoad(refresh, picks, "generate_load", inputs=picks)
