"""Server-side views for judging samples up close: downscaled previews, the repainted region of a candidate beside
its source and their difference. PIL and numpy only; a 50-megapixel slab never reaches the browser at full size."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from engine.boxes import Box
from engine.generation.parameters import CandidateParameters

# Longest side of a view sent to the browser: a close-up of the repainted region, or a whole-slab preview.
VIEW_MAX_SIDE = 768
THUMBNAIL_MAX_SIDE = 256
# Differences are faint; this gain makes a change of 1/16 of the grey range show as full white.
DIFFERENCE_GAIN = 16
# Views are cached under this name pattern; a change of the sample (never: samples are immutable) needs none.
VIEW_NAME = "{key}-{kind}-{side}.png"


@dataclass
class ReviewViews:
    """Paths of the views of one sample and the annotations of its close-up (mask array and boxes, view pixels)."""

    candidate: Path
    source: Path | None
    difference: Path | None
    region: tuple[int, int, int, int]
    scale: float
    annotations: list[tuple[Any, str]] = field(default_factory=list)


def thumbnail(path: Path, cache_dir: Path, max_side: int = THUMBNAIL_MAX_SIDE) -> Path:
    """A copy of the image no larger than `max_side` a side (cached by file name), or the image if already small."""
    path = Path(path)
    target = Path(cache_dir) / VIEW_NAME.format(key=path.stem, kind="thumb", side=max_side)
    if target.exists():
        return target
    with Image.open(path) as image:
        if max(image.size) <= max_side:
            return path
        image.draft("RGB", (max_side, max_side))
        small = image.convert("RGB")
        small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    _save_atomically(small, target)
    return target


def review_views(
    key: str,
    candidate_path: Path,
    source_path: Path | None,
    params: CandidateParameters,
    cache_dir: Path,
    mask_path: Path | None = None,
    boxes: list[dict[str, Any]] | None = None,
    label: str = "defect",
    max_side: int = VIEW_MAX_SIDE,
) -> ReviewViews:
    """The candidate's repainted region (window or mask crop, `CandidateParameters.repainted_box`) downscaled to
    `max_side`, the same region of its source and their amplified difference when the source is the candidate's own
    init, and the mask and boxes in the close-up's pixels (for an AnnotatedImage)."""
    cache_dir = Path(cache_dir)
    with Image.open(candidate_path) as opened:
        candidate = opened.convert("RGB")
    region = params.repainted_box(candidate.width, candidate.height)
    scale = min(1.0, max_side / max(region.width, region.height))
    size = (max(1, round(region.width * scale)), max(1, round(region.height * scale)))

    def close_up(image: Image.Image, kind: str) -> Path:
        target = cache_dir / VIEW_NAME.format(key=key, kind=kind, side=max_side)
        if not target.exists():
            _save_atomically(image.crop(region.corners).resize(size, Image.Resampling.LANCZOS), target)
        return target

    views = ReviewViews(close_up(candidate, "candidate"), None, None, region.corners, scale)
    if source_path is not None:
        with Image.open(source_path) as opened:
            source = opened.convert("RGB")
        if source.size == candidate.size:
            views.source = close_up(source, "source")
            if params.init_is_source:
                difference = ImageChops.difference(candidate, source).convert("L")
                views.difference = close_up(difference.point(lambda v: min(255, v * DIFFERENCE_GAIN)), "difference")
    if mask_path is not None:
        with Image.open(mask_path) as opened:
            mask = opened.convert("L").crop(region.corners).resize(size, Image.Resampling.NEAREST)
        views.annotations.append((np.asarray(mask, dtype=np.float32) / 255, "mask"))
    for box in map(Box.of, boxes or []):
        if (inside := box.moved(-region.xmin, -region.ymin).scaled(scale, scale).clamped(*size)) is not None:
            views.annotations.append((inside.corners, f"{box.label or label} box"))
    return views


def annotated_view(
    path: Path,
    cache_dir: Path,
    boxes: list[dict[str, Any]],
    mask: np.ndarray | None = None,
    mask_label: str = "mask",
    max_side: int = VIEW_MAX_SIDE,
) -> tuple[str, list[tuple[Any, str]]]:
    """An AnnotatedImage value for a stored image: its preview (at most `max_side` a side) with boxes (image pixels,
    kept inside the image, each labelled with its `label`) and a bool mask over the whole image (at any resolution:
    it is scaled onto the view)."""
    view = thumbnail(path, cache_dir, max_side)
    with Image.open(path) as full, Image.open(view) as small:
        scale_x, scale_y = small.width / full.width, small.height / full.height
        size = small.size
    annotations: list[tuple[Any, str]] = []
    if mask is not None:
        scaled = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
        annotations.append((np.asarray(scaled, dtype=np.float32) / 255, mask_label))
    for box in map(Box.of, boxes):
        if (inside := box.scaled(scale_x, scale_y).clamped(*size)) is not None:
            annotations.append((inside.corners, box.label or "box"))
    return str(view), annotations


def _save_atomically(image: Image.Image, target: Path) -> None:
    """Write a PNG under a partial name of its own, then rename it: two requests making the same view at once (the
    gallery and an editor) each write their own copy and the last rename wins, where a shared partial name made the
    second rename fail."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            image.save(out, format="PNG")
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def window_view(
    path: Path,
    cache_dir: Path,
    window: tuple[int, int, int, int],
    max_side: int = VIEW_MAX_SIDE,
    boxes: list[dict[str, Any]] | None = None,
) -> Image.Image:
    """A downscaled slab with the window (x, y, w, h) to repaint outlined, for choosing it by clicking, and typed
    defect boxes (slab pixels) drawn in another colour."""
    with Image.open(thumbnail(path, cache_dir, max_side)) as preview, Image.open(path) as full:
        scale = preview.width / full.width
        view = preview.convert("RGB")
    draw = ImageDraw.Draw(view)
    x, y, w, h = (round(v * scale) for v in window)
    draw.rectangle((x, y, x + w - 1, y + h - 1), outline=(255, 64, 0), width=2)
    for box in map(Box.of, boxes or []):
        x0, y0, x1, y1 = box.scaled(scale, scale).corners
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=(0, 200, 255), width=2)
    return view
