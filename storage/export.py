"""Dataset export: a zip in ImageFolder layout with a manifest of every parameter, lineage and file hash.

Layout: `images/<class>/<name>.png`, `manifest.json`, `manifest.csv`, `sources.csv`, plus the files of the
optional formats in FORMAT_WRITERS:
- masks: `masks/<class>/<name>.png` (8-bit, white = defect; drawn from the boxes where an item has no mask),
- coco: `coco/instances.json` (COCO instances; segmentation as uncompressed RLE of the mask inside each box,
  or the box's polygon where there is no mask),
- yolo: `labels/<class>/<name>.txt` beside `images/`, `yolo-train.txt`, `yolo-val.txt` and `data.yaml` (Ultralytics
  layout; the manifest's `split` of each item, by its source image, decides the list),
- voc: `voc/<class>/<name>.xml` (Pascal VOC, 1-based inclusive pixel coordinates).
Detection formats list only the items that have boxes. A new format is a function
`(zip_writer, planned_items, file_store) -> None` added to FORMAT_WRITERS; it may add keys to the planned items'
manifest entries. Only the standard library and Pillow are used here (no numpy).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from storage.files import FileStore, check_sha256, safe_file_name
from storage.tables import GeneratedSample, SourceImage, utc_now

MANIFEST_VERSION = 1
MANIFEST_JSON = "manifest.json"
ITEM_KINDS = ("synthetic", "real")
# This share of source images (and every sample made from each) goes to the validation split by default.
DEFAULT_VAL_FRACTION = 0.1
# At most this share of source images is held out (validation plus test).
MAX_HELD_OUT = 0.9
SPLITS = ("train", "val", "test")
LINEAGE_CSV_COLUMNS = (
    "source_image_sha256",
    "model_hash",
    "model_ref",
    "adapter_version",
    "adapter_run_id",
    "token",
    "strength",
    "seed",
)
SAFE_ZIP_PATH = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
ALREADY_COMPRESSED_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass(frozen=True)
class ExportItem:
    """One image to export with everything known about how it was made.

    `source_image_id` is the clean background of a synthetic item, or the real image itself.
    """

    class_name: str
    image_sha256: str
    kind: str
    sample_id: int | None = None
    source_image_id: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    mask_sha256: str | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ExportSummary:
    """What a finished export holds."""

    path: Path
    sha256: str
    size_bytes: int
    n_items: int
    n_files: int
    formats: list[str]
    counts: dict[str, dict[str, int]]
    split_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class PlannedItem:
    """An item with its unique, safe names inside the zip and its manifest entry (formats may extend it)."""

    item: ExportItem
    class_folder: str
    stem: str
    entry: dict[str, Any]


class ZipWriter:
    """Adds files to a zip under safe, unique paths and remembers the sha256 and size of each."""

    def __init__(self, zip_file: zipfile.ZipFile, date_time: tuple[int, int, int, int, int, int]) -> None:
        self.zip_file = zip_file
        self.date_time = date_time
        self.created_at = datetime(*date_time).isoformat()
        self.files: dict[str, dict[str, Any]] = {}

    def add(self, path: str, data: bytes) -> str:
        """Add a file and return its sha256."""
        problem = unsafe_path_problem(path)
        if problem:
            raise ValueError(problem)
        if path in self.files or path == MANIFEST_JSON:
            raise ValueError(f"Duplicate path in export: {path}")
        compressed = Path(path).suffix.lower() not in ALREADY_COMPRESSED_SUFFIXES
        info = zipfile.ZipInfo(path, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        self.zip_file.writestr(info, data)
        sha256 = hashlib.sha256(data).hexdigest()
        self.files[path] = {"sha256": sha256, "size": len(data)}
        return sha256

    def add_manifest(self, manifest: dict[str, Any]) -> None:
        """Write manifest.json last, listing every other file."""
        info = zipfile.ZipInfo(MANIFEST_JSON, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zip_file.writestr(info, _to_json(manifest))


FormatWriter = Callable[[ZipWriter, list[PlannedItem], FileStore], None]


def unsafe_path_problem(path: str) -> str | None:
    """Why a path inside a zip is unsafe (absolute, `..`, odd characters), or None if it is a safe relative path."""
    if not SAFE_ZIP_PATH.fullmatch(path):
        return f"Unsafe path in zip (only [A-Za-z0-9._-] and '/' between parts allowed): {path!r}"
    if any(part in (".", "..") for part in path.split("/")):
        return f"Unsafe path in zip (contains '.' or '..'): {path!r}"
    return None


def _to_json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()


def _csv_bytes(header: Sequence[str], rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if value is None else value for value in row] for row in rows)
    return buffer.getvalue().encode()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def export_item_for_sample(
    sample: GeneratedSample, source_image: SourceImage, adapter_run_id: int | None = None
) -> ExportItem:
    """An ExportItem for a generated sample, with its parameters and full lineage."""
    params = {
        **sample.params_json,
        "prompt": sample.prompt,
        "negative_prompt": sample.negative_prompt,
        "strength": sample.strength,
        "steps": sample.steps,
        "guidance": sample.guidance,
        "seed": sample.seed,
        "width": sample.width,
        "height": sample.height,
        "window": sample.window_json,
    }
    lineage = {
        "source_image_id": source_image.id,
        "source_image_sha256": source_image.sha256,
        "model_hash": sample.model_hash,
        "model_ref": sample.model_ref,
        "token": sample.token,
        "adapter_path": sample.adapter_path,
        "adapter_version": sample.adapter_version,
        "adapter_run_id": adapter_run_id,
        "strength": sample.strength,
        "seed": sample.seed,
        "realism_score": sample.realism_score,
        "created_by": sample.created_by,
        "created_at": _iso(sample.created_at),
        "status": sample.status,
        "decided_by": sample.decided_by,
        "decided_at": _iso(sample.decided_at),
    }
    return ExportItem(
        class_name=sample.class_name,
        image_sha256=sample.sha256,
        kind="synthetic",
        sample_id=sample.id,
        source_image_id=source_image.id,
        params=params,
        lineage=lineage,
        mask_sha256=sample.mask_sha256,
        boxes=list(sample.boxes_json),
    )


def export_item_for_source(image: SourceImage) -> ExportItem:
    """An ExportItem for a real defect image."""
    if image.role != "defect" or not image.class_name:
        raise ValueError(f"Source image {image.id} is not a real defect image with a class.")
    lineage = {
        "source_image_id": image.id,
        "source_image_sha256": image.sha256,
        "original_name": image.original_name,
        "uploaded_by": image.uploaded_by,
        "uploaded_at": _iso(image.created_at),
    }
    return ExportItem(
        class_name=image.class_name,
        image_sha256=image.sha256,
        kind="real",
        source_image_id=image.id,
        params={"width": image.width, "height": image.height},
        lineage=lineage,
        boxes=list(image.boxes_json),
    )


def _class_folders(class_names: Sequence[str]) -> dict[str, str]:
    """A distinct safe folder name per class name."""
    folders: dict[str, str] = {}
    for class_name in sorted(set(class_names)):
        folder = base = safe_file_name(class_name, fallback="class")
        counter = 2
        while folder in folders.values():
            folder, counter = f"{base}-{counter}", counter + 1
        folders[class_name] = folder
    return folders


@dataclass(frozen=True)
class SplitPlan:
    """A seeded train/val/test split by source image: about `val_fraction` of the sources go to "val",
    `test_fraction` to "test", the rest to "train"; every sample goes where its source image went (no leakage), and
    a re-export with the same plan keeps each item where it was."""

    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        held_out = self.val_fraction + self.test_fraction
        if min(self.val_fraction, self.test_fraction) < 0 or held_out > MAX_HELD_OUT:
            raise ValueError(
                f"The validation and test fractions must be ≥ 0 and hold out at most {MAX_HELD_OUT} together, got "
                f"{self.val_fraction} and {self.test_fraction}."
            )

    def split_of(self, item: ExportItem) -> str:
        """The split of an item, drawn from its source image's hash mixed with the seed."""
        key = item.lineage.get("source_image_sha256") or item.image_sha256
        draw = int(hashlib.sha256(f"{self.seed}:{key}".encode()).hexdigest()[:8], 16) / 16**8
        if draw < self.val_fraction:
            return "val"
        return "test" if draw < self.val_fraction + self.test_fraction else "train"


def plan_items(items: Sequence[ExportItem], split: SplitPlan | None = None) -> list[PlannedItem]:
    """Check items and give each a unique safe name and its manifest entry (with its split)."""
    split = split or SplitPlan()
    folders = _class_folders([item.class_name for item in items])
    used: set[tuple[str, str]] = set()
    planned = []
    for item in items:
        if item.kind not in ITEM_KINDS:
            raise ValueError(f"Export item kind must be one of {ITEM_KINDS}, got {item.kind!r}")
        check_sha256(item.image_sha256)
        if item.mask_sha256 is not None:
            check_sha256(item.mask_sha256)
        item_id = item.sample_id if item.kind == "synthetic" else item.source_image_id
        prefix = item.kind if item_id is None else f"{item.kind}-{item_id:06d}"
        stem = base = f"{prefix}-{item.image_sha256[:12]}"
        counter = 2
        while (folders[item.class_name], stem) in used:
            stem, counter = f"{base}-{counter}", counter + 1
        used.add((folders[item.class_name], stem))
        entry = {
            "class_name": item.class_name,
            "kind": item.kind,
            "image_sha256": item.image_sha256,
            "sample_id": item.sample_id,
            "source_image_id": item.source_image_id,
            "mask_sha256": item.mask_sha256,
            "boxes": item.boxes,
            "params": item.params,
            "lineage": item.lineage,
            "split": split.split_of(item),
        }
        planned.append(PlannedItem(item, folders[item.class_name], stem, entry))
    return planned


def _stored_suffix(file_store: FileStore, sha256: str) -> str:
    return file_store.path(sha256).suffix.lower() or ".png"


def write_images(zip_writer: ZipWriter, planned: list[PlannedItem], file_store: FileStore) -> None:
    """ImageFolder layout: `images/<class>/<name><suffix>`."""
    for plan in planned:
        path = f"images/{plan.class_folder}/{plan.stem}{_stored_suffix(file_store, plan.item.image_sha256)}"
        zip_writer.add(path, file_store.read(plan.item.image_sha256))
        plan.entry["path"] = path


def _image_size(plan: PlannedItem, file_store: FileStore) -> tuple[int, int]:
    """(width, height) of an item's image: from its parameters, else from the stored file's header."""
    width, height = plan.item.params.get("width"), plan.item.params.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return width, height
    with _open_image(file_store, plan.item.image_sha256) as image:
        return image.size


def _open_image(file_store: FileStore, sha256: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(file_store.read(sha256)))
    except OSError as error:
        raise ValueError(f"Stored file {sha256[:12]} is not a readable image: {error}") from error


def _box_coords(box: dict[str, Any]) -> tuple[int, int, int, int]:
    return int(box["xmin"]), int(box["ymin"]), int(box["xmax"]), int(box["ymax"])


def _item_mask(plan: PlannedItem, file_store: FileStore) -> Image.Image | None:
    """The item's mask as an 8-bit 0/255 image: the stored mask, else its boxes filled, else None."""
    if plan.item.mask_sha256 is not None:
        with _open_image(file_store, plan.item.mask_sha256) as stored:
            return stored.convert("L").point(lambda value: 255 if value > 127 else 0)
    if not plan.item.boxes:
        return None
    mask = Image.new("L", _image_size(plan, file_store), 0)
    draw = ImageDraw.Draw(mask)
    for box in plan.item.boxes:
        xmin, ymin, xmax, ymax = _box_coords(box)
        draw.rectangle((xmin, ymin, xmax - 1, ymax - 1), fill=255)
    return mask


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_masks(zip_writer: ZipWriter, planned: list[PlannedItem], file_store: FileStore) -> None:
    """Masks named like their image, `masks/<class>/<name>.png`: the stored mask as it is, or drawn from the boxes."""
    for plan in planned:
        if plan.item.mask_sha256 is not None:
            path = f"masks/{plan.class_folder}/{plan.stem}{_stored_suffix(file_store, plan.item.mask_sha256)}"
            zip_writer.add(path, file_store.read(plan.item.mask_sha256))
            plan.entry.update(mask_path=path, mask_from="mask")
        elif plan.item.boxes:
            path = f"masks/{plan.class_folder}/{plan.stem}.png"
            zip_writer.add(path, _png(_item_mask(plan, file_store)))
            plan.entry.update(mask_path=path, mask_from="boxes")


def _labels(planned: list[PlannedItem]) -> list[str]:
    """Every box label, sorted: the category list shared by the detection formats."""
    return sorted({str(box["label"]) for plan in planned for box in plan.item.boxes})


def rle_counts(mask: Image.Image) -> list[int]:
    """COCO's uncompressed RLE counts of a 0/255 mask: run lengths in column-major order, starting with zeros."""
    data = mask.transpose(Image.Transpose.TRANSPOSE).tobytes()
    counts = [len(run.group()) for run in re.finditer(rb"\x00+|[^\x00]+", data)]
    return counts if data[:1] == b"\x00" else [0, *counts]


def _box_mask(mask: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The mask's pixels inside the box, on an empty image of the mask's size."""
    region = Image.new("L", mask.size, 0)
    region.paste(mask.crop(box), box[:2])
    return region


def write_coco(zip_writer: ZipWriter, planned: list[PlannedItem], file_store: FileStore) -> None:
    """COCO instances (`coco/instances.json`): one annotation per box, segmented by the mask inside the box."""
    categories = {name: number for number, name in enumerate(_labels(planned), start=1)}
    images, annotations = [], []
    for plan in planned:
        if not plan.item.boxes:
            continue
        width, height = _image_size(plan, file_store)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": plan.entry["path"], "width": width, "height": height})
        mask = _item_mask(plan, file_store) if plan.item.mask_sha256 is not None else None
        if mask is not None and mask.size != (width, height):
            raise ValueError(f"The mask of {plan.entry['path']} is {mask.size}, its image {(width, height)}.")
        for box in plan.item.boxes:
            xmin, ymin, xmax, ymax = coords = _box_coords(box)
            annotation: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": categories[str(box["label"])],
                "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                "iscrowd": 0,
            }
            inside = _box_mask(mask, coords) if mask is not None else None
            area = inside.histogram()[255] if inside is not None else 0
            if area:
                annotation["segmentation"] = {"size": [height, width], "counts": rle_counts(inside)}
                annotation["area"] = area
            else:
                annotation["segmentation"] = [[xmin, ymin, xmax, ymin, xmax, ymax, xmin, ymax]]
                annotation["area"] = (xmax - xmin) * (ymax - ymin)
            annotations.append(annotation)
        plan.entry["coco_image_id"] = image_id
    coco = {
        "info": {"description": "Steel Defect Studio export", "date_created": zip_writer.created_at},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": number, "name": name, "supercategory": "defect"} for name, number in categories.items()],
    }
    zip_writer.add("coco/instances.json", _to_json(coco))


def write_yolo(zip_writer: ZipWriter, planned: list[PlannedItem], file_store: FileStore) -> None:
    """YOLO (Ultralytics): `labels/<class>/<name>.txt` of `class cx cy w h` (normalised), a list and data.yaml."""
    classes = {name: number for number, name in enumerate(_labels(planned))}
    listed: dict[str, list[str]] = {}
    for plan in planned:
        if not plan.item.boxes:
            continue
        width, height = _image_size(plan, file_store)
        lines = []
        for box in plan.item.boxes:
            xmin, ymin, xmax, ymax = _box_coords(box)
            centre_x, centre_y = (xmin + xmax) / 2 / width, (ymin + ymax) / 2 / height
            box_w, box_h = (xmax - xmin) / width, (ymax - ymin) / height
            lines.append(f"{classes[str(box['label'])]} {centre_x:.6f} {centre_y:.6f} {box_w:.6f} {box_h:.6f}")
        path = f"labels/{plan.class_folder}/{plan.stem}.txt"
        zip_writer.add(path, ("\n".join(lines) + "\n").encode())
        plan.entry["yolo_label_path"] = path
        listed.setdefault(plan.entry["split"], []).append(f"./{plan.entry['path']}")
    for split in SPLITS:
        if split != "test" or listed.get("test"):
            zip_writer.add(f"yolo-{split}.txt", "".join(f"{line}\n" for line in listed.get(split, [])).encode())
    names = "".join(f"  {number}: {json.dumps(name)}\n" for name, number in classes.items())
    val_list = "yolo-val.txt" if listed.get("val") else "yolo-train.txt"
    test_line = "test: yolo-test.txt\n" if listed.get("test") else ""
    data_yaml = (
        "# Ultralytics dataset: labels/ mirrors images/. The split follows each item's source image (manifest "
        "'split'); with no val item, val lists the train images.\n"
        f"train: yolo-train.txt\nval: {val_list}\n{test_line}nc: {len(classes)}\nnames:\n{names}"
    )
    zip_writer.add("data.yaml", data_yaml.encode())


def _element(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


def write_voc(zip_writer: ZipWriter, planned: list[PlannedItem], file_store: FileStore) -> None:
    """Pascal VOC XML per image with boxes, `voc/<class>/<name>.xml`, in VOC's 1-based inclusive coordinates."""
    for plan in planned:
        if not plan.item.boxes:
            continue
        width, height = _image_size(plan, file_store)
        with _open_image(file_store, plan.item.image_sha256) as image:
            depth = len(image.getbands())
        root = ET.Element("annotation")
        _element(root, "folder", plan.class_folder)
        _element(root, "filename", Path(plan.entry["path"]).name)
        _element(root, "path", plan.entry["path"])
        _element(_element(root, "source"), "database", "Steel Defect Studio")
        size = _element(root, "size")
        for tag, value in (("width", width), ("height", height), ("depth", depth)):
            _element(size, tag, value)
        _element(root, "segmented", 0)
        for box in plan.item.boxes:
            xmin, ymin, xmax, ymax = _box_coords(box)
            obj = _element(root, "object")
            for tag, value in (("name", box["label"]), ("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
                _element(obj, tag, value)
            bndbox = _element(obj, "bndbox")
            for tag, value in (("xmin", xmin + 1), ("ymin", ymin + 1), ("xmax", xmax), ("ymax", ymax)):
                _element(bndbox, tag, value)
        ET.indent(root)
        path = f"voc/{plan.class_folder}/{plan.stem}.xml"
        zip_writer.add(path, ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
        plan.entry["voc_path"] = path


FORMAT_WRITERS: dict[str, FormatWriter] = {
    "masks": write_masks,
    "coco": write_coco,
    "yolo": write_yolo,
    "voc": write_voc,
}


def _write_manifest_csv(zip_writer: ZipWriter, planned: list[PlannedItem]) -> None:
    header = ["path", "class_name", "kind", "image_sha256", "sample_id", "source_image_id", *LINEAGE_CSV_COLUMNS]
    header += ["mask_path", "n_boxes", "params_json", "lineage_json"]
    rows = []
    for plan in planned:
        entry = plan.entry
        rows.append(
            [entry[key] for key in header[:6]]
            + [entry["lineage"].get(key) for key in LINEAGE_CSV_COLUMNS]
            + [entry.get("mask_path"), len(entry["boxes"])]
            + [json.dumps(entry["params"], sort_keys=True, default=str)]
            + [json.dumps(entry["lineage"], sort_keys=True, default=str)]
        )
    zip_writer.add("manifest.csv", _csv_bytes(header, rows))


def _write_sources_csv(zip_writer: ZipWriter, planned: list[PlannedItem]) -> None:
    """One row per source image: clean backgrounds of synthetic items and the real defect images."""
    uses: Counter[tuple[str, str, Any]] = Counter()
    for plan in planned:
        item = plan.item
        if item.kind == "real":
            uses[(item.image_sha256, "real_defect", item.source_image_id)] += 1
        else:
            source_sha256 = item.lineage.get("source_image_sha256")
            uses[(source_sha256 or "", "clean_background", item.source_image_id)] += 1
    rows = [
        [sha256, used_as, source_id, count] for (sha256, used_as, source_id), count in sorted(uses.items(), key=str)
    ]
    zip_writer.add("sources.csv", _csv_bytes(["source_sha256", "used_as", "source_image_id", "n_items"], rows))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_export(
    out_zip: Path,
    items: Sequence[ExportItem],
    file_store: FileStore,
    extra_manifest: dict[str, Any] | None = None,
    formats: Sequence[str] = ("masks",),
    split: SplitPlan | None = None,
) -> ExportSummary:
    """Write the export zip to `out_zip` (which must not exist) atomically: a temp file renamed when complete."""
    split = split or SplitPlan()
    out_zip = Path(out_zip)
    unknown = sorted(set(formats) - set(FORMAT_WRITERS))
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}; known: {sorted(FORMAT_WRITERS)}")
    if out_zip.exists():
        raise FileExistsError(f"Export already exists: {out_zip}")
    planned = plan_items(items, split)
    needed = {p.item.image_sha256 for p in planned} | {p.item.mask_sha256 for p in planned if p.item.mask_sha256}
    missing = sorted(sha256 for sha256 in needed if not file_store.exists(sha256))
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) missing from the file store: {', '.join(missing[:5])}")

    created_at = utc_now()
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for item in items:
        counts[item.class_name][item.kind] = counts[item.class_name].get(item.kind, 0) + 1
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=out_zip.parent, prefix=f".{out_zip.name}.", suffix=".part")
    temp_path = Path(temp_name)
    try:
        with os.fdopen(descriptor, "w+b") as temp_file:
            with zipfile.ZipFile(temp_file, "w") as zip_file:
                zip_writer = ZipWriter(zip_file, created_at.timetuple()[:6])
                write_images(zip_writer, planned, file_store)
                for name in formats:
                    FORMAT_WRITERS[name](zip_writer, planned, file_store)
                _write_manifest_csv(zip_writer, planned)
                _write_sources_csv(zip_writer, planned)
                zip_writer.add_manifest(
                    {
                        "manifest_version": MANIFEST_VERSION,
                        "created_at": created_at.isoformat(),
                        "formats": ["imagefolder", *formats],
                        "n_items": len(planned),
                        "counts": counts,
                        "split": asdict(split),
                        "extra": extra_manifest or {},
                        "items": [plan.entry for plan in planned],
                        "files": zip_writer.files,
                    }
                )
            temp_file.flush()
            os.fsync(temp_file.fileno())
        sha256 = _file_sha256(temp_path)
        os.replace(temp_path, out_zip)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return ExportSummary(
        path=out_zip,
        sha256=sha256,
        size_bytes=out_zip.stat().st_size,
        n_items=len(planned),
        n_files=len(zip_writer.files) + 1,
        formats=["imagefolder", *formats],
        counts={name: dict(by_kind) for name, by_kind in counts.items()},
        split_counts=dict(Counter(plan.entry["split"] for plan in planned)),
    )


def verify_export(zip_path: Path) -> list[str]:
    """Problems found in an export zip (empty list: it is intact): unsafe paths, files not matching the manifest."""
    try:
        zip_file = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        return [f"Cannot open {zip_path} as a zip: {error}"]
    with zip_file:
        names = zip_file.namelist()
        problems = [problem for name in names if (problem := unsafe_path_problem(name))]
        problems += [f"Path appears {n} times in zip: {name}" for name, n in Counter(names).items() if n > 1]
        if MANIFEST_JSON not in names:
            return [*problems, "manifest.json is missing"]
        try:
            manifest = json.loads(zip_file.read(MANIFEST_JSON))
            files: dict[str, dict[str, Any]] = manifest["files"]
            entries: list[dict[str, Any]] = manifest["items"]
        except (ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            return [*problems, f"manifest.json is unreadable: {error!r}"]
        if not (isinstance(files, dict) and all(isinstance(v, dict) for v in files.values())):
            return [*problems, "manifest.json 'files' is not a mapping of path to {sha256, size}"]
        if not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
            return [*problems, "manifest.json 'items' is not a list of entries"]
        for name in dict.fromkeys(names):
            if name == MANIFEST_JSON:
                continue
            if name not in files:
                problems.append(f"File not listed in manifest: {name}")
                continue
            try:
                data = zip_file.read(name)
            except (zipfile.BadZipFile, OSError) as error:
                problems.append(f"Cannot read {name}: {error}")
                continue
            if hashlib.sha256(data).hexdigest() != files[name].get("sha256"):
                problems.append(f"sha256 mismatch: {name}")
        problems += [f"Listed in manifest but missing from zip: {name}" for name in files if name not in names]
        for index, entry in enumerate(entries):
            path = entry.get("path")
            if path not in files:
                problems.append(f"Manifest item {index} points to a missing image: {path!r}")
            elif files[path].get("sha256") != entry.get("image_sha256"):
                problems.append(f"Manifest item {index} image_sha256 does not match {path}")
        if manifest.get("n_items") != len(entries):
            problems.append(f"Manifest n_items {manifest.get('n_items')} but {len(entries)} items listed")
    return problems
