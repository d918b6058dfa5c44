"""Defect masks: reading, boxes from connected components, the grown and feathered paste weights, and the
windows (padding-mask-crop) in which a masked region is repainted at the model's resolution."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from engine.boxes import Box, bounding_box, from_mask
from engine.config import MAX_WINDOW_ASPECT

# Masks are grown a little before repainting so the defect's rim is generated too, then feathered over the
# grown ring: pixels farther than GROW from the drawn mask are never touched.
MASK_GROW_PX = 4
MASK_FEATHER_PX = 4
# Context the model sees around the mask's bounding box (diffusers' padding_mask_crop), in source pixels.
MASK_MARGIN_PX = 32
# Source pixels per model pixel of a masked repaint's canvas, unless the request sets a window size or the class
# learnt from smaller captures (`generate.masked_window_base`): the embedded prior learnt NEU's 200 px images at
# 128 px. A slab too small for such a window is extended by mirroring it, so a thin strip is not magnified (which
# would paint its defect at several times the scale the model learnt).
MASK_WINDOW_SCALE = 200 / 128
# More components than this are repainted in one window instead of being grouped (grouping is quadratic).
MAX_GROUPED_COMPONENTS = 64


@dataclass(frozen=True)
class MaskWindow:
    """A rectangle of the source repainted in one pass, the model-sized canvas it maps to, and its part of the mask."""

    x: int
    y: int
    width: int
    height: int
    model_width: int
    model_height: int
    # Bool mask (height × width) of the grown components this window repaints.
    region: np.ndarray


def mask_array(mask: Image.Image | np.ndarray, width: int, height: int) -> np.ndarray:
    """A bool (height × width) mask from an image (white, > 127, is repainted) or an array; refuses a wrong size."""
    if isinstance(mask, Image.Image):
        if mask.size != (width, height):
            raise ValueError(f"The mask is {mask.width}×{mask.height} but the image is {width}×{height}.")
        array = np.asarray(mask.convert("L")) > 127
    else:
        array = np.asarray(mask)
        if array.shape != (height, width):
            raise ValueError(f"The mask has shape {array.shape} but the image is {width}×{height}.")
        array = array > (127 if array.dtype == np.uint8 else 0)
    if not array.any():
        raise ValueError("The mask is empty: paint (white) where the defect should appear.")
    return array


def mask_image(mask: np.ndarray) -> Image.Image:
    """A bool mask as an 8-bit image (0 and 255)."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")


def mask_png(mask: np.ndarray) -> bytes:
    """The PNG bytes a mask is stored and exported as."""
    buffer = io.BytesIO()
    mask_image(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_sha256(mask: np.ndarray) -> str:
    """sha256 of `mask_png(mask)`: the file store's name for the mask."""
    return hashlib.sha256(mask_png(mask)).hexdigest()


def grow(mask: np.ndarray, pixels: int = MASK_GROW_PX) -> np.ndarray:
    """The mask dilated by a disc of `pixels` radius."""
    if pixels <= 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def feather(grown: np.ndarray, pixels: int = MASK_FEATHER_PX) -> np.ndarray:
    """Paste weights: 0 outside `grown`, rising to 1 over `pixels` inside its border."""
    distance = cv2.distanceTransform(grown.astype(np.uint8), cv2.DIST_L2, 3)
    return np.clip(distance / max(pixels, 1), 0.0, 1.0).astype(np.float32)


def _components(grown: np.ndarray) -> tuple[np.ndarray, list[Box]]:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(grown.astype(np.uint8), connectivity=8)
    return labels, [Box(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:count]]


def _group_components(bboxes: list[Box], base: int, margin: int) -> list[list[int]]:
    """Indices of components repainted together: merged while their joint box plus margin fits one base window."""
    if len(bboxes) > MAX_GROUPED_COMPONENTS:
        return [list(range(len(bboxes)))]
    groups = [([i], box) for i, box in enumerate(bboxes)]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                box = groups[i][1].union(groups[j][1])
                if max(box.width, box.height) + 2 * margin <= base:
                    groups[i] = (groups[i][0] + groups[j][0], box)
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    return [members for members, _ in groups]


def _window_around(box: Box, width: int, height: int, base: int, margin: int) -> tuple[int, int, int, int]:
    """(x, y, w, h): a window at least `base` (square where the image allows) holding the box plus margin."""
    x0, y0, x1, y1 = box.corners
    side = max(base, x1 - x0 + 2 * margin, y1 - y0 + 2 * margin)
    w, h = min(width, side), min(height, side)
    x = min(max(round((x0 + x1 - w) / 2), 0), width - w)
    y = min(max(round((y0 + y1 - h) / 2), 0), height - h)
    return x, y, w, h


def model_canvas(w: int, h: int, resolution: int, multiple: int) -> tuple[int, int]:
    """The canvas a window is generated on: short side at the model's resolution, sides a multiple of `multiple`."""
    if max(w, h) / min(w, h) > MAX_WINDOW_ASPECT:
        raise ValueError(
            f"The mask needs a {w}×{h} window, more than {MAX_WINDOW_ASPECT:g}× longer than wide; "
            "split it into shorter parts or crop the slab."
        )
    scale = resolution / min(w, h)
    return max(multiple, round(w * scale / multiple) * multiple), max(multiple, round(h * scale / multiple) * multiple)


def plan_windows(
    grown: np.ndarray, base: int, resolution: int, multiple: int, margin: int = MASK_MARGIN_PX
) -> list[MaskWindow]:
    """The windows that repaint a grown mask: nearby components share one, distant ones get their own. On a canvas
    no larger than a window every window would be the whole canvas, so all components share it (one pass, not one
    per component)."""
    height, width = grown.shape
    labels, bboxes = _components(grown)
    whole = width <= base and height <= base
    groups = [list(range(len(bboxes)))] if whole and bboxes else _group_components(bboxes, base, margin)
    windows = []
    for members in groups:
        box = bboxes[members[0]]
        for index in members[1:]:
            box = box.union(bboxes[index])
        x, y, w, h = _window_around(box, width, height, base, margin)
        region = np.isin(labels[y : y + h, x : x + w], [index + 1 for index in members])
        windows.append(MaskWindow(x, y, w, h, *model_canvas(w, h, resolution, multiple), region))
    return windows


def mirror_pad(pixels: np.ndarray, pad_x: int, pad_y: int) -> np.ndarray:
    """An H×W(×C) array extended by `pad_x` columns and `pad_y` rows on each side, mirrored (any pad size)."""
    if pad_x == 0 and pad_y == 0:
        return pixels
    return cv2.copyMakeBorder(pixels, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REFLECT_101)


def latent_mask(region: np.ndarray, model_width: int, model_height: int, factor: int) -> np.ndarray:
    """Float (h/f × w/f) mask of the latent cells that touch the region once it is scaled to the model's canvas."""
    scaled = cv2.resize(region.astype(np.float32), (model_width, model_height), interpolation=cv2.INTER_AREA) > 0
    cells = scaled.reshape(model_height // factor, factor, model_width // factor, factor)
    return cells.any(axis=(1, 3)).astype(np.float32)


# Estimating where a capture's defect is, for a class fine-tuned without masks (`estimate_defect_mask`). Scales are
# shares of the image's short side, so a 128 px capture and a 200 px one are read alike.
ESTIMATE_BACKGROUND = 0.15  # the median filter the local steel level is taken over
ESTIMATE_DETAIL = 0.006  # the blur that keeps a defect's stroke and drops the pixel grain
ESTIMATE_REGION = 0.02  # the blur over which a region's level, grain and colour are compared with the image's
ESTIMATE_SMOOTH = 0.012  # the blur of the combined score before the threshold
# A pixel is a defect where it departs from the image's steel by this many robust deviations (1.4826 × MAD).
ESTIMATE_THRESHOLD = 3.0
# Colour departs less than luminance; its score is divided by this.
ESTIMATE_COLOUR_DAMPING = 1.5
# Components smaller than this share of the image are grain, not a defect.
ESTIMATE_MIN_AREA = 0.002
# Pieces of an estimate nearer each other than this share of the image's short side are one suggested box (a
# scratch's or a scale band's pieces): on NEU and a rust mill it brings the boxes suggested to about as many as were
# drawn (`bench/defect_estimate.py`, the box columns).
SUGGEST_JOIN = 0.03


def _robust_scores(values: np.ndarray, one_sided: bool = False) -> np.ndarray:
    """How many robust deviations (1.4826 × the median absolute deviation) each value lies from the median."""
    centre = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - centre))) + 1e-3
    departure = values - centre
    return (departure if one_sided else np.abs(departure)) / spread


def estimate_defect_mask(pixels: np.ndarray) -> np.ndarray:
    """Where a capture (H×W×3 uint8) departs from its own steel, as a bool H×W mask: the pixels whose luminance
    departs from the local steel level (a stroke, a spot), whose region is darker or brighter than the image's or
    coarser in grain (a patch, a pitted area), or whose colour departs from the image's (rust, a temper colour),
    each by ESTIMATE_THRESHOLD robust deviations, less components under ESTIMATE_MIN_AREA. Empty where nothing
    departs.

    An estimate, for a class whose images come without masks: it finds the odd part of an image, so a defect that
    covers most of its image is missed (the steel around it is what departs). `bench/defect_estimate.py` measures it
    against a mill's masks; `bench/defect_colour.py --estimated-masks` the colour a repaint then paints.
    """
    height, width = pixels.shape[:2]
    side = min(height, width)
    grey = cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2GRAY)
    level = cv2.medianBlur(grey, max(3, int(side * ESTIMATE_BACKGROUND) | 1)).astype(np.float32)
    grey = grey.astype(np.float32)
    detail = cv2.GaussianBlur(grey, (0, 0), max(1.0, side * ESTIMATE_DETAIL)) - level
    region_sigma = side * ESTIMATE_REGION
    grain = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 2.0))
    scores = np.maximum.reduce(
        [
            _robust_scores(detail),
            _robust_scores(cv2.GaussianBlur(grey, (0, 0), region_sigma)),
            _robust_scores(cv2.GaussianBlur(grain, (0, 0), region_sigma), one_sided=True),
        ]
    )
    channels = pixels[..., :3].astype(np.float32) + 1.0
    if np.abs(channels - channels[..., 1:2]).max() > 2:  # not grey (`data.is_grayscale`)
        logs = np.log(cv2.GaussianBlur(channels, (0, 0), max(1.0, side * ESTIMATE_REGION / 2)))
        ratios = np.stack([logs[..., 0] - logs[..., 1], logs[..., 2] - logs[..., 1]], axis=-1)
        distance = np.linalg.norm(ratios - np.median(ratios.reshape(-1, 2), axis=0), axis=-1)
        spread = 1.4826 * float(np.median(distance)) + 1e-4
        scores = np.maximum(scores, distance / spread / ESTIMATE_COLOUR_DAMPING)
    scores = cv2.GaussianBlur(scores, (0, 0), max(1.0, side * ESTIMATE_SMOOTH))
    opening = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    marked = cv2.morphologyEx((scores > ESTIMATE_THRESHOLD).astype(np.uint8), cv2.MORPH_OPEN, opening)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(marked, connectivity=8)
    large = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= ESTIMATE_MIN_AREA * height * width)
    return np.isin(labels, large[large > 0])


def suggested_boxes(marked: np.ndarray, label: str = "") -> list[Box]:
    """Boxes around the defects of an estimated mask (`estimate_defect_mask`), its pieces nearer than SUGGEST_JOIN
    of the short side joined; each box is tight around the marked pixels it holds. A suggestion for an engineer to
    check and correct, not a label: a texture that covers most of its image is not found."""
    reach = max(1, round(min(marked.shape) * SUGGEST_JOIN))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    joined = cv2.dilate(marked.astype(np.uint8), disc).astype(bool)
    boxes = []
    for around in from_mask(joined):
        inner = bounding_box(marked[around.ymin : around.ymax, around.xmin : around.xmax])
        if inner is not None:
            x, y = around.xmin, around.ymin
            boxes.append(Box(x + inner.xmin, y + inner.ymin, x + inner.xmax, y + inner.ymax, label))
    return boxes
