"""Reading steel images: ImageFolder trees, the NEU pool with its NEU-DET boxes, splits and clean crops."""

from __future__ import annotations

import csv
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from engine.boxes import Box, from_mask, to_mask

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# `generate --mask/--auto-place` writes each image's mask beside it; folder readers skip those.
MASK_SUFFIX = "_mask.png"
NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
# Every sixth image of each class (by NEU index) is held out: 40 per class, never trained on.
VALIDATION_EVERY = 6
# An image whose long side exceeds its short side by less than this share is seen whole as one square view.
SQUARE_TOLERANCE = 0.05


@dataclass
class LabelledImage:
    """One image on disk with its class and optional boxes."""

    path: Path
    class_name: str
    boxes: list[Box] = field(default_factory=list)
    index: int = 0
    annotation: Path | None = None


def parse_voc(xml_path: Path) -> list[Box]:
    """Read the boxes of one Pascal VOC annotation file.

    VOC pixels are 1-based and inclusive (NEU-DET's run 1…200 on a 200-pixel image); a Box is 0-based with an
    exclusive end, so xmin/ymin move down by one and xmax/ymax stay.
    """
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (round(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append(Box(max(xmin - 1, 0), max(ymin - 1, 0), xmax, ymax, obj.findtext("name", "").strip()))
    return boxes


def find_annotation(annotations_dir: Path, image_path: Path, class_name: str | None = None) -> Path | None:
    """The Pascal VOC file of an image: `<image stem>.xml`, else NEU-DET's `<class>_<n>.xml` for `<Ab>_<n>.bmp`."""
    annotations_dir, image_path = Path(annotations_dir), Path(image_path)
    candidates = [annotations_dir / f"{image_path.stem}.xml"]
    index = re.search(r"(\d+)$", image_path.stem)
    if class_name and index:
        candidates.append(annotations_dir / f"{class_name}_{int(index.group(1))}.xml")
    return next((c for c in candidates if c.is_file()), None)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in a folder, sorted by name (masks written beside generated images are skipped)."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(MASK_SUFFIX) and p.is_file()
    )


def read_image_folder(root: Path, with_boxes: bool = False) -> list[LabelledImage]:
    """Read an ImageFolder tree `<class>/<images>`; raises if it holds no class folder with images. With
    `with_boxes`, each image's defect boxes come from the mask beside it (`read_mask_image_beside`), labelled with
    its class."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder not found: {root}")
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for index, path in enumerate(list_images(class_dir)):
            boxes = boxes_beside(path, class_dir.name) if with_boxes else []
            items.append(LabelledImage(path, class_dir.name, boxes, index))
    if not items:
        raise ValueError(f"No images in class subfolders of {root} (expected <class>/<image files>).")
    return items


def read_neu(root: Path) -> list[LabelledImage]:
    """Read the NEU pool from its manifest, with NEU-DET boxes."""
    root = Path(root)
    manifest = root / "manifest.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"No manifest.csv in {root}; is this the NEU folder?")
    items = []
    with manifest.open() as f:
        for row in csv.DictReader(f):
            xml = root / row["annotation"] if row.get("annotation") else None
            annotation = xml if xml and xml.exists() else None
            boxes = parse_voc(annotation) if annotation else []
            items.append(LabelledImage(root / row["image"], row["cls"], boxes, int(row["index"]), annotation))
    return items


def split_neu(items: list[LabelledImage]) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Split into (training pool, validation): every VALIDATION_EVERY-th image per class by index."""
    pool, val = [], []
    for cls in sorted({it.class_name for it in items}):
        members = sorted((it for it in items if it.class_name == cls), key=lambda it: it.index)
        for position, item in enumerate(members):
            (val if position % VALIDATION_EVERY == 0 else pool).append(item)
    return pool, val


def read_split(root: Path | str) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(training pool, validation) of a folder with labelled defects: the NEU folder (its manifest, split by
    `split_neu`), or a split folder with `pool/` and `val/`, each `<class>/<images>` with `<name>_mask.png` or
    `<name>.xml` beside an image (what `evaluate neu-split` and a mill of one's own look like)."""
    root = Path(root)
    if (root / "manifest.csv").is_file():
        return split_neu(read_neu(root))
    if not ((root / "pool").is_dir() and (root / "val").is_dir()):
        raise FileNotFoundError(f"{root} is neither the NEU folder (manifest.csv) nor a split with pool/ and val/.")
    return read_image_folder(root / "pool", with_boxes=True), read_image_folder(root / "val", with_boxes=True)


def boxes_beside(image_path: Path, label: str) -> list[Box]:
    """One box per defect of the mask beside an image (`read_mask_image_beside`), labelled; [] without one."""
    mask = read_mask_image_beside(image_path)
    return [] if mask is None else from_mask(np.asarray(mask) >= 128, label)


def read_mask_image_beside(image_path: Path) -> Image.Image | None:
    """An image's defect mask at the image's own size (8-bit, white = defect), from `<name>_mask.png` or the
    Pascal VOC boxes of `<name>.xml` beside it; the PNG wins, and None when neither is there."""
    image_path = Path(image_path)
    mask_path = image_path.with_name(image_path.stem + MASK_SUFFIX)
    xml_path = image_path.with_suffix(".xml")
    if mask_path.is_file():
        with Image.open(mask_path) as opened:
            return opened.convert("L")
    if xml_path.is_file():
        with Image.open(image_path) as opened:
            width, height = opened.size
        return Image.fromarray(to_mask(parse_voc(xml_path), width, height, clamp=True)).convert("L")
    return None


def mask_at(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A mask image resized to `size` (width, height) (bool: a cell at least half defect)."""
    return np.asarray(mask.resize(size, Image.Resampling.BOX)) >= 128


def read_mask_beside(image_path: Path, resolution: int) -> np.ndarray | None:
    """An image's defect mask at resolution × resolution (bool; `read_mask_image_beside`), or None."""
    mask = read_mask_image_beside(image_path)
    return None if mask is None else mask_at(mask, (resolution, resolution))


def is_grayscale(image: Image.Image) -> bool:
    """True for a grey image, also one stored as RGB (channels within 2 grey levels of each other: JPEG)."""
    if image.mode in ("L", "LA", "I", "I;16"):
        return True
    arr = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool(np.abs(arr[..., 0] - arr[..., 1]).max() <= 2 and np.abs(arr[..., 1] - arr[..., 2]).max() <= 2)


def load_rgb(path: Path) -> Image.Image:
    """Open an image upright (EXIF) as 8-bit RGB; a file PIL cannot read raises a ValueError that names it (a
    missing one FileNotFoundError)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1) * 255
                im = Image.fromarray(arr.astype(np.uint8))
            return im.convert("RGB")
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ValueError(f"Cannot read image {path}: {error}") from error


def to_square_pixels(image: Image.Image, resolution: int) -> np.ndarray:
    """uint8 H×W×3 pixels of an image resized to resolution × resolution."""
    return np.asarray(image.convert("RGB").resize((resolution, resolution), Image.Resampling.LANCZOS))


def square_views(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of the squares of an image's short side that cover its long side, evenly spaced: how a
    model that draws squares sees a wide image at the image's own scale (a 3:1 strip is three squares, not one
    squashed to a third of its width). An image within SQUARE_TOLERANCE of square is one view of itself, whole."""
    short, long = min(width, height), max(width, height)
    count = math.ceil(long / short - SQUARE_TOLERANCE)
    if count <= 1:
        return [(0, 0, width, height)]
    starts = np.linspace(0, long - short, count).round().astype(int).tolist()
    if width >= height:
        return [(start, 0, start + short, short) for start in starts]
    return [(0, start, short, start + short) for start in starts]


def clean_regions(width: int, height: int, boxes: list[Box], min_size: int = 64) -> list[tuple[int, int, int, int]]:
    """Box-free rectangles (x0, y0, x1, y1) at least `min_size` on each side: clean steel.

    Greedy: for each row band and column band that no box touches, the largest free rectangle is kept.
    """
    occupied = to_mask(boxes, width, height, clamp=True)
    free_rows = ~occupied.any(axis=1)
    free_cols = ~occupied.any(axis=0)
    regions = []
    for start, stop in _runs(free_rows):
        if stop - start >= min_size:
            regions.append((0, start, width, stop))
    for start, stop in _runs(free_cols):
        if stop - start >= min_size:
            regions.append((start, 0, stop, height))
    return regions


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Start/stop of each run of True values."""
    runs, start = [], None
    for i, value in enumerate(list(mask) + [False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i))
            start = None
    return runs


def export_neu_split(neu_root: Path | str, out: Path | str) -> dict[str, int]:
    """Write `pool/<class>/` and `val/<class>/` symlinks to NEU's split under `out` (outside the repo).

    Each image's NEU-DET annotation is linked beside it as `<image stem>.xml`, so fine-tuning there can use the
    masked loss.
    """
    out = Path(out).resolve()
    if out == REPO_ROOT or REPO_ROOT in out.parents:
        raise ValueError(f"{out} is inside the repository; NEU images must stay outside it (use e.g. /tmp/neu-split).")
    pool, val = split_neu(read_neu(Path(neu_root)))
    counts = {}
    for name, items in (("pool", pool), ("val", val)):
        for item in items:
            target = out / name / item.class_name / item.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(item.path.resolve())
            xml_target = target.with_suffix(".xml")
            if xml_target.is_symlink() or xml_target.exists():
                xml_target.unlink()
            if item.annotation is not None:
                xml_target.symlink_to(item.annotation.resolve())
        counts[name] = len(items)
    return counts
