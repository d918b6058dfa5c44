"""What the tabs share: error display, the model slot, captions and close-up views."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageChops

from webapp.previews import ReviewViews

logger = logging.getLogger(__name__)

MODEL = {"concurrency_id": "model", "concurrency_limit": 1}


def paint_pad(label: str, colour: str, brush_size: int, height: int) -> gr.ImageEditor:
    """An image editor for painting over a stored image the app puts in it: no upload, no transforms, one layer, one
    brush colour (read back with `painted_mask`)."""
    return gr.ImageEditor(
        label=label,
        type="pil",
        format="png",
        sources=(),
        transforms=(),
        layers=False,
        brush=gr.Brush(colors=[colour], color_mode="fixed", default_size=brush_size),
        height=height,
    )


def blank_pad(background: Path | str) -> dict[str, Any]:
    """A `paint_pad` value showing `background` (a view sent to the browser) with nothing painted."""
    return {"background": str(background), "layers": [], "composite": str(background)}


def painted_mask(value: dict | None, size: tuple[int, int] | None = None) -> Image.Image | None:
    """The union of an image editor's painted layers (any opacity) as a mask of `size` (None: the layers' own), or
    None if nothing is painted."""
    mask = None
    for layer in (value or {}).get("layers") or []:
        alpha = layer.convert("RGBA").getchannel("A").point(lambda v: 255 if v > 0 else 0)
        mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    if mask is None or mask.getbbox() is None:
        return None
    return mask if size is None or mask.size == size else mask.resize(size, Image.Resampling.NEAREST)


@dataclass
class TabLoad:
    """What a tab refreshes when the page loads: the function, its outputs and the endpoint name."""

    fn: Callable
    outputs: list[Any]
    api_name: str
    inputs: list[Any] = field(default_factory=list)


def user_of(request: gr.Request | None) -> str:
    """The logged-in user name, or "local" when the app runs without login."""
    return getattr(request, "username", None) or "local"


def session_of(request: gr.Request | None) -> str:
    """The browser session a request comes from (one tab), or "local" outside a browser."""
    return getattr(request, "session_hash", None) or "local"


def errors_shown_in(position: int, outputs: int) -> Callable[[Callable], Callable]:
    """Show a refused request's reason in words in output `position` (the message next to the control that caused
    it) and leave the handler's other `outputs` as they are: no red error badges on unrelated panels, and no
    traceback in the server log for a user's input error (it is logged in one line)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (ValueError, LookupError, FileNotFoundError, gr.Error) as error:
                text = error.message if isinstance(error, gr.Error) else str(error)
                logger.info("Refused %s: %s", fn.__name__, text)
                updates = [gr.update() for _ in range(outputs)]
                updates[position] = f"⚠️ {text}"
                return tuple(updates) if outputs > 1 else updates[0]

        return wrapper

    return decorate


def overlay(views: ReviewViews) -> tuple[str, list[tuple[Any, str]]]:
    """An AnnotatedImage value: the close-up of the repainted region with the mask and boxes in it."""
    return str(views.candidate), views.annotations


def comparison(views: ReviewViews, examples: list[Path]) -> list[tuple[str, str]]:
    """Gallery items: the repainted region, the source there, their difference, then real examples of the class."""
    x0, y0, x1, y1 = views.region
    zoom = f"{views.scale:.0%}" if views.scale < 1 else "100%"
    items = [(str(views.candidate), f"candidate, region {x0},{y0}–{x1},{y1} at {zoom}")]
    if views.source is not None:
        items.append((str(views.source), "source, same region"))
    if views.difference is not None:
        items.append((str(views.difference), "difference ×16"))
    return items + [(str(path), "real example") for path in examples]
