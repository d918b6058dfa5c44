"""Real defects pasted onto clean slabs before a masked repaint: the class's own marked defects as the init.

An auto-placed repaint from a clean slab asks the model to draw a whole defect inside a mask of a few latent cells,
and the embedded prior draws a faint blob there. Pasting one of the class's real defects (a box marked on one of
its images: a mask or Pascal VOC boxes beside the image, or boxes drawn in the studio) at each auto-placed defect
with Poisson blending (`cv2.seamlessClone`), flipped at random, and then repainting the pasted region at a strength
keeps every path img2img from real images: the defect is real, the slab, its place and its blend are new. Each
sample's mask and boxes are the pasted defects', and each paste is recorded (source file, box, flips).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.boxes import Box, from_mask
from engine.data import load_rgb, mask_at, read_mask_image_beside

# Context kept around a marked defect's box: the blend's border, in steel of the defect's own image. OpenCV's
# seamlessClone erodes its region by a few pixels; with 3 px of context a flat bright defect came out flat steel.
CONTEXT_PX = 6
# Pasted defects stay this far inside the slab (Poisson blending needs a border of the slab around its region).
EDGE_PX = 2


@dataclass(frozen=True)
class DefectExemplar:
    """One marked real defect: its box and `CONTEXT_PX` around it (RGB uint8), where that box lies in the pixels, and
    the image and box it was cut from."""

    pixels: np.ndarray
    inner: Box
    source: str
    box: Box


def exemplars_of(name: str, image: Image.Image, boxes: Iterable[Box]) -> list[DefectExemplar]:
    """The exemplars of one image: one per marked box."""
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    found = []
    for box in boxes:
        if box.width < 2 or box.height < 2:
            continue
        x0, y0 = max(box.xmin - CONTEXT_PX, 0), max(box.ymin - CONTEXT_PX, 0)
        x1, y1 = min(box.xmax + CONTEXT_PX, width), min(box.ymax + CONTEXT_PX, height)
        inner = Box(box.xmin - x0, box.ymin - y0, box.xmax - x0, box.ymax - y0)
        found.append(DefectExemplar(pixels[y0:y1, x0:x1].copy(), inner, name, Box(*box.corners)))
    return found


def read_exemplars(paths: Iterable[Path]) -> list[DefectExemplar]:
    """The marked defects of the images that have a mask or boxes beside them (`read_mask_image_beside`); images
    without marks are left out."""
    found = []
    for path in paths:
        marks = read_mask_image_beside(path)
        if marks is None:
            continue
        image = load_rgb(path)
        found += exemplars_of(path.name, image, from_mask(mask_at(marks, image.size)))
    return found


def paste_exemplars(
    slab: Image.Image, exemplars: list[DefectExemplar], placed: np.ndarray, seed: int
) -> tuple[Image.Image, np.ndarray, list[dict]]:
    """One exemplar drawn by `seed` at each defect of the auto-placed mask `placed` (centred on it, flipped at
    random, cut to fit the slab), Poisson-blended in with its `CONTEXT_PX` of steel (so the slab changes that far
    around each box too). Returns the pasted slab, the mask of the pasted defects' boxes and one record per paste
    (source, box, flips, where it went)."""
    if not exemplars:
        raise ValueError("No real defects to paste: the class's images need boxes or masks.")
    rng = np.random.default_rng(seed)
    pixels = np.asarray(slab.convert("RGB")).copy()
    height, width = pixels.shape[:2]
    mask = np.zeros((height, width), dtype=bool)
    records = []
    for target in from_mask(placed) or [Box(0, 0, width, height)]:
        exemplar = exemplars[int(rng.integers(len(exemplars)))]
        patch, inner = exemplar.pixels, exemplar.inner
        flips = [axis for axis in ("horizontal", "vertical") if rng.random() < 0.5]
        if "horizontal" in flips:
            patch = patch[:, ::-1]
            inner = Box(patch.shape[1] - inner.xmax, inner.ymin, patch.shape[1] - inner.xmin, inner.ymax)
        if "vertical" in flips:
            patch = patch[::-1]
            inner = Box(inner.xmin, patch.shape[0] - inner.ymax, inner.xmax, patch.shape[0] - inner.ymin)
        patch, inner = _fit(patch, inner, width - 2 * EDGE_PX, height - 2 * EDGE_PX, rng)
        ph, pw = patch.shape[:2]
        cx, cy = (target.xmin + target.xmax) // 2, (target.ymin + target.ymax) // 2
        x0 = int(np.clip(cx - pw // 2, EDGE_PX, width - EDGE_PX - pw))
        y0 = int(np.clip(cy - ph // 2, EDGE_PX, height - EDGE_PX - ph))
        region = np.full((ph, pw), 255, dtype=np.uint8)
        region[[0, -1], :] = 0
        region[:, [0, -1]] = 0
        pixels = cv2.seamlessClone(
            np.ascontiguousarray(patch), pixels, region, (x0 + pw // 2, y0 + ph // 2), cv2.NORMAL_CLONE
        )
        at = Box(x0 + inner.xmin, y0 + inner.ymin, x0 + inner.xmax, y0 + inner.ymax)
        mask[at.ymin : at.ymax, at.xmin : at.xmax] = True
        records.append({"source": exemplar.source, "box": exemplar.box.as_dict(), "flips": flips, "at": at.as_dict()})
    return Image.fromarray(pixels), mask, records


def _fit(patch: np.ndarray, inner: Box, width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, Box]:
    """The patch cut at a random offset to at most width × height (at least 3 px a side), its box cut with it."""
    ph, pw = patch.shape[:2]
    cut_w, cut_h = max(min(pw, width), 3), max(min(ph, height), 3)
    x0 = int(rng.integers(pw - cut_w + 1))
    y0 = int(rng.integers(ph - cut_h + 1))
    inner = Box(
        max(inner.xmin - x0, 1),
        max(inner.ymin - y0, 1),
        min(inner.xmax - x0, cut_w - 1),
        min(inner.ymax - y0, cut_h - 1),
    )
    return patch[y0 : y0 + cut_h, x0 : x0 + cut_w], inner
