"""Auto-place: plausible defect masks per class, drawn from the statistics of real defect boxes.

The statistics of NEU's classes (box sizes and boxes per image of each class, from the training pool only) ship as
`engine/weights/placement-stats.json`; rebuild them with `python launch.py evaluate placement-stats --neu DATA/neu`.
A class fine-tuned on images with defect masks or boxes beside them has its own (`learnt_statistics`, in the
adapter's `tokens.json`), which win: its defects are sized and counted as that mill's camera shows them.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.boxes import from_mask
from engine.config import WEIGHTS_DIR
from engine.data import read_neu, split_neu
from engine.masks import mask_image

STATS_FILE = WEIGHTS_DIR / "placement-stats.json"
# Shapes per class: scratches are thin lines across their box; inclusions small elongated ellipses;
# the area defects irregular blobs that fill most of their box.
SHAPES = {
    "scratches": "line",
    "inclusion": "ellipse",
    "crazing": "blob",
    "patches": "blob",
    "pitted_surface": "blob",
    "rolled-in_scale": "blob",
}
DEFAULT_SHAPE = "blob"
# Sizes are NEU pixels (200 px images, the scale the prior learnt). A slab whose longer side is under 200 px
# shrinks them proportionally; a longer one (a strip, a wide slab) keeps them, clipped to its shorter side.
REFERENCE_SIZE = 200
SIZE_JITTER = 0.15
# The least spread (σ of log size) with which a class's own few boxes are drawn: about SIZE_JITTER's.
MIN_LOG_SIZE_SPREAD = 0.09
# A class's own defects that fill less than this share of their boxes (median) are lines, such as strokes corner to
# corner; a blob fills about 0.6–0.8 of its box, a box mask all of it.
LINE_FILL = 0.35
# A class's own defects whose boxes are this many times as long as they are wide (median) are lines too: a box mask
# tells no shape, but a scratch's box is long and thin (NEU's scratches a median 6.6, its other classes 1.4–2.6).
LINE_ASPECT = 4.0
LINE_WIDTH_PX = (2, 5)
PLACEMENT_TRIES = 20
# A class without statistics gets the boxes of every class pooled, drawn as blobs.
GENERIC = "generic"
# The one class of a class's own statistics (`learnt_statistics`).
OWN = "_own"


def box_statistics(neu_root: Path) -> dict:
    """Per class: every box (w, h) of that label in the training pool, and how many such boxes each image has."""
    pool, _ = split_neu(read_neu(neu_root))
    sizes: dict[str, list[list[int]]] = defaultdict(list)
    counts: dict[str, Counter] = defaultdict(Counter)
    for item in pool:
        own = [b for b in item.boxes if b.label == item.class_name]
        for box in item.boxes:
            sizes[box.label].append([box.xmax - box.xmin, box.ymax - box.ymin])
        if own:
            counts[item.class_name][len(own)] += 1
    classes = {
        name: {"boxes": sorted(sizes[name]), "per_image": {str(k): v for k, v in sorted(counts[name].items())}}
        for name in sorted(counts)
    }
    return {
        "source": "NEU-DET boxes of the training pool (engine.data.split_neu)",
        "reference_size": REFERENCE_SIZE,
        "classes": classes,
    }


def learnt_statistics(masks: list[tuple[np.ndarray, tuple[int, int]]]) -> dict | None:
    """A class's auto-place statistics from its own images' defect masks ((bool mask at any resolution, the image's
    own (width, height)) pairs): each mask's connected components as boxes in the image's own pixels, how many each
    image has, and the images' median longer side as the reference size, in the shipped file's form (one class,
    `_own`); None without a defect in any mask. Defects that fill little of their boxes (painted strokes, not boxes
    or blobs) or whose boxes are long and thin (a scratch's box) are drawn as lines."""
    sizes, counts, sides, fills = [], Counter(), [], []
    for mask, (width, height) in masks:
        boxes = from_mask(mask, min_area=1)
        if not boxes:
            continue
        scale_x, scale_y = width / mask.shape[1], height / mask.shape[0]
        sizes += [[round(b.width * scale_x), round(b.height * scale_y)] for b in boxes]
        fills += [float(mask[b.ymin : b.ymax, b.xmin : b.xmax].mean()) for b in boxes]
        counts[len(boxes)] += 1
        sides.append(max(width, height))
    if not sizes:
        return None
    # A few boxes stand for many: each is drawn with a log-normal spread of Silverman's bandwidth of their log sizes.
    logs = np.log(np.asarray(sizes, dtype=np.float64))
    spread = 1.06 * float(logs.std(axis=0).mean()) * len(sizes) ** -0.2 if len(sizes) > 1 else 0.0
    entry = {
        "boxes": sorted(sizes),
        "per_image": {str(k): v for k, v in sorted(counts.items())},
        "log_size_spread": round(max(spread, MIN_LOG_SIZE_SPREAD), 4),
    }
    aspects = [max(size) / max(min(size), 1) for size in sizes]
    if np.median(fills) < LINE_FILL or np.median(aspects) >= LINE_ASPECT:
        entry["shape"] = "line"
    return {"reference_size": int(np.median(sides)), "classes": {OWN: entry}}


def load_statistics(path: Path = STATS_FILE) -> dict:
    """The shipped statistics; raises a readable error if the file is missing."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"No placement statistics at {path}; run `python launch.py evaluate placement-stats --neu DIR`."
        )
    return json.loads(Path(path).read_text())


def _class_entry(class_name: str, classes: dict) -> tuple[str, dict]:
    """The statistics of a class (its own, else matched ignoring case, '-' and ' ') and the name its shape goes by,
    else every class pooled."""
    wanted = class_name.lower().replace("-", "_").replace(" ", "_")
    if OWN in classes:
        return wanted, classes[OWN]
    folded = {name.lower().replace("-", "_"): name for name in classes}
    key = folded.get(wanted)
    if key is not None:
        return key, classes[key]
    per_image: Counter = Counter()
    for entry in classes.values():
        per_image.update({k: int(v) for k, v in entry["per_image"].items()})
    return GENERIC, {"boxes": [size for entry in classes.values() for size in entry["boxes"]], "per_image": per_image}


def _draw(shape: str, mask: np.ndarray, box: tuple[int, int, int, int], scale: float, rng: np.random.Generator) -> None:
    """Paint one defect of `shape` inside box (x, y, w, h) onto the uint8 mask."""
    x, y, w, h = box
    if shape == "line":
        thickness = max(1, round(rng.uniform(*LINE_WIDTH_PX) * max(scale, 0.5)))
        # A scratch runs corner to corner of its box: thin boxes give straight lines, square ones diagonals.
        if rng.random() < 0.5:
            start, end = (x, y), (x + w - 1, y + h - 1)
        else:
            start, end = (x + w - 1, y), (x, y + h - 1)
        cv2.line(mask, start, end, 255, thickness, lineType=cv2.LINE_8)
    elif shape == "ellipse":
        centre = (x + w // 2, y + h // 2)
        cv2.ellipse(mask, centre, (max(1, w // 2), max(1, h // 2)), 0, 0, 360, 255, thickness=-1)
    else:
        # An irregular blob: the inscribed ellipse with a smooth random radius (three harmonics).
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        wobble = np.ones_like(angles)
        for harmonic in (2, 3, 5):
            wobble += rng.uniform(0, 0.25) * np.cos(harmonic * angles + rng.uniform(0, 2 * math.pi))
        wobble = np.clip(wobble / wobble.max(), 0.35, 1.0)
        outline = np.stack([wobble * np.cos(angles), wobble * np.sin(angles)], axis=1)
        # Stretched so the blob's bounding box is the sampled box, as the real boxes bound real defects.
        outline = (outline - outline.min(0)) / np.maximum(outline.max(0) - outline.min(0), 1e-6)
        points = np.array([x, y]) + outline * np.array([w - 1, h - 1])
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255)


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x, y, w, h = box
    return any(x < px + pw and px < x + w and y < py + ph and py < y + h for px, py, pw, ph in placed)


def propose_masks(
    class_name: str, width: int, height: int, seed: int, n: int = 1, statistics: dict | None = None
) -> list[Image.Image]:
    """`n` plausible masks (8-bit, white = defect) of a class on a width × height image, reproducible by seed.

    Each mask holds as many defects as a real image of the class has (sampled), each sized like a real box
    (with ±15 % jitter) and drawn in the class's shape. `statistics`: the class's own (`learnt_statistics`), else
    the shipped NEU ones, where an unknown class gets every class's sizes pooled, drawn as blobs.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if width < 8 or height < 8:
        raise ValueError(f"The image is too small ({width}×{height}) to place a defect on.")
    stats = statistics or load_statistics()
    key, entry = _class_entry(class_name, stats["classes"])
    shape = entry.get("shape") or SHAPES.get(key, DEFAULT_SHAPE)
    sizes = np.asarray(entry["boxes"], dtype=np.float64)
    spread = entry.get("log_size_spread")
    count_values = np.array([int(k) for k in entry["per_image"]])
    count_weights = np.array(list(entry["per_image"].values()), dtype=np.float64)
    scale = min(1.0, max(width, height) / stats.get("reference_size", REFERENCE_SIZE))
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        mask = np.zeros((height, width), dtype=np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.choice(count_values, p=count_weights / count_weights.sum()))):
            for _ in range(PLACEMENT_TRIES):
                size = sizes[rng.integers(len(sizes))] * scale
                if spread is None:
                    w, h = size * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER, 2)
                else:
                    w, h = size * np.exp(rng.normal(0.0, spread, 2))
                w, h = int(np.clip(round(w), 3, width)), int(np.clip(round(h), 3, height))
                box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
                if not _overlaps(box, placed):
                    break
            placed.append(box)
            _draw(shape, mask, box, scale, rng)
        masks.append(mask_image(mask > 0))
    return masks


def write_box_statistics(neu: Path, out: Path = STATS_FILE) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Compute the auto-place statistics from NEU-DET's boxes and write them; returns the file and, per class,
    (boxes, images with boxes)."""
    stats = box_statistics(neu)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, separators=(",", ":")) + "\n")
    return out, {name: (len(c["boxes"]), sum(c["per_image"].values())) for name, c in stats["classes"].items()}
