"""One box type for the whole engine: pixel boxes (0-based, max exclusive), their union, growth and masks.

numpy and OpenCV only (no torch), so the studio and the storage-facing code can use it without a model. Boxes are
stored and exported as dicts `{label, xmin, ymin, xmax, ymax}` (`Box.as_dict`, `Box.of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# A crop around a box is grown by this share of its larger side, and is at least MIN_CROP_SIDE a side.
CROP_MARGIN = 0.1
MIN_CROP_SIDE = 16
# Components of a mask smaller than this many pixels get no box (specks of a painted brush).
MIN_BOX_AREA_PX = 4
CORNERS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: 0-based, `xmax`/`ymax` exclusive, with an optional class label."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int
    label: str = ""

    @classmethod
    def of(cls, value: Box | Mapping | Sequence[int]) -> Box:
        """A Box from a Box, a dict with `xmin`…`ymax` (and `label`), or corners (x0, y0, x1, y1)."""
        if isinstance(value, Box):
            return value
        if isinstance(value, Mapping):
            return cls(*(int(value[k]) for k in CORNERS), str(value.get("label") or ""))
        x0, y0, x1, y1 = (int(v) for v in value)
        return cls(x0, y0, x1, y1)

    def as_dict(self) -> dict:
        """The stored and exported form."""
        return {"label": self.label, "xmin": self.xmin, "ymin": self.ymin, "xmax": self.xmax, "ymax": self.ymax}

    @property
    def corners(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), as PIL's `crop` takes it."""
        return self.xmin, self.ymin, self.xmax, self.ymax

    @property
    def width(self) -> int:
        return self.xmax - self.xmin

    @property
    def height(self) -> int:
        return self.ymax - self.ymin

    def union(self, other: Box) -> Box:
        """The smallest box holding both; it keeps the label they share (else none)."""
        label = self.label if self.label == other.label else ""
        return Box(
            min(self.xmin, other.xmin),
            min(self.ymin, other.ymin),
            max(self.xmax, other.xmax),
            max(self.ymax, other.ymax),
            label,
        )

    def grown(self, width: int, height: int, margin: float = CROP_MARGIN) -> Box:
        """Grown by `margin` × its larger side, at least MIN_CROP_SIDE a side, inside a width × height image."""
        pad = round(margin * max(self.width, self.height))
        pad_x = pad + max(0, MIN_CROP_SIDE - self.width - 2 * pad) // 2
        pad_y = pad + max(0, MIN_CROP_SIDE - self.height - 2 * pad) // 2
        return Box(
            max(self.xmin - pad_x, 0),
            max(self.ymin - pad_y, 0),
            min(self.xmax + pad_x, width),
            min(self.ymax + pad_y, height),
            self.label,
        )

    def scaled(self, scale_x: float, scale_y: float) -> Box:
        """The box in an image resized by (scale_x, scale_y), corners rounded to whole pixels."""
        return Box(
            round(self.xmin * scale_x),
            round(self.ymin * scale_y),
            round(self.xmax * scale_x),
            round(self.ymax * scale_y),
            self.label,
        )

    def moved(self, dx: int, dy: int) -> Box:
        """The box shifted by (dx, dy) pixels: into a crop's pixels with the crop's corner negated."""
        return Box(self.xmin + dx, self.ymin + dy, self.xmax + dx, self.ymax + dy, self.label)

    def iou(self, other: Box) -> float:
        """Intersection over union of the two boxes (0 when they do not overlap)."""
        inter = max(0, min(self.xmax, other.xmax) - max(self.xmin, other.xmin)) * max(
            0, min(self.ymax, other.ymax) - max(self.ymin, other.ymin)
        )
        total = self.width * self.height + other.width * other.height - inter
        return inter / total if total > 0 else 0.0

    def clamped(self, width: int, height: int) -> Box | None:
        """The part inside a width × height image, or None when nothing of it is inside."""
        box = Box(max(self.xmin, 0), max(self.ymin, 0), min(self.xmax, width), min(self.ymax, height), self.label)
        return box if box.width > 0 and box.height > 0 else None


def union(boxes: Iterable[Box | Mapping | Sequence[int]]) -> Box | None:
    """The box around all of them (Boxes, box dicts or corners); None for none."""
    result = None
    for box in boxes:
        box = Box.of(box)
        result = box if result is None else result.union(box)
    return result


def to_mask(boxes: Iterable[Box | Mapping], width: int, height: int, clamp: bool = False) -> np.ndarray:
    """A bool height × width mask, True inside any box. A box reaching outside the image raises ValueError, unless
    `clamp` (annotations of real images, whose boxes may overrun by a pixel), which keeps the part inside."""
    mask = np.zeros((height, width), dtype=bool)
    for box in map(Box.of, boxes):
        inside = box.clamped(width, height)
        if inside is None or (not clamp and inside != box):
            if clamp:
                continue
            raise ValueError(f"Box {box.as_dict()} is empty or outside the {width}×{height} image.")
        mask[inside.ymin : inside.ymax, inside.xmin : inside.xmax] = True
    return mask


def from_mask(mask: np.ndarray, label: str = "", min_area: int = MIN_BOX_AREA_PX) -> list[Box]:
    """One box per 8-connected component of a bool mask (at least `min_area` pixels), in reading order."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = [
        Box(int(x), int(y), int(x + w), int(y + h), label) for x, y, w, h, area in stats[1:count] if area >= min_area
    ]
    return sorted(boxes, key=lambda b: (b.ymin, b.xmin))


def bounding_box(mask: np.ndarray) -> Box | None:
    """The box around a bool mask's True pixels, or None if there are none."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    return Box(int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


# A suggested box matches a drawn one at this intersection over union (a box drawn over the same defect).
MATCH_IOU = 0.3


def match_counts(drawn: Sequence[Box], suggested: Sequence[Box], iou: float = MATCH_IOU) -> np.ndarray:
    """[drawn boxes, suggested boxes, drawn boxes a suggestion matches, suggestions that match a drawn box], a
    match being an intersection over union of at least `iou`: summed over images, recall and precision."""
    found = sum(any(d.iou(s) >= iou for s in suggested) for d in drawn)
    right = sum(any(s.iou(d) >= iou for d in drawn) for s in suggested)
    return np.array([len(drawn), len(suggested), found, right])
