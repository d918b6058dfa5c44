"""Uploaded images: clean slabs to generate on and real defects to learn from (upload, import, boxes, delete)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.boxes import Box, from_mask, to_mask
from engine.data import find_annotation, list_images, load_rgb, parse_voc
from engine.masks import estimate_defect_mask, mask_image, suggested_boxes
from storage import repository
from storage.files import sha256_hex
from storage.tables import SOURCE_ROLES
from webapp.previews import VIEW_MAX_SIDE, annotated_view
from webapp.studio.classes import check_class_name
from webapp.studio.context import PAGE_SIZE, StudioContext, all_pages, require_source
from webapp.studio.results import BoxSuggestion, SourceInfo, UploadResult
from webapp.validation import normalise_upload

if TYPE_CHECKING:
    from engine.box_suggestions import BoxedImage, CellMap, ClassSuggester
    from engine.generation.exemplars import DefectExemplar

BOX_TEXT_PATTERN = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*")
# One upload batch is validated in memory before anything is stored: 2000 files (NEU holds 1800) and 1 GB
# bound that memory, well above any real camera folder yet far below what would exhaust the host.
MAX_BATCH_FILES = 2000
MAX_BATCH_BYTES = 1024**3
# Defects are estimated on a copy of an image no larger than this a side (a 50-megapixel slab would take minutes);
# the estimate's scales are shares of the image's side, so it finds the same defects.
ESTIMATE_MAX_SIDE = VIEW_MAX_SIDE
ESTIMATE_LABEL = "estimated defect"
# Images whose copy and cells are kept: a class's boxed images learnt from (`box_suggestions.MAX_BOXED_IMAGES`, 20)
# and those being boxed beside them.
SUGGESTER_CACHED_IMAGES = 32
# A clean-slab repaint pastes real defects from at most this many of the class's newest boxed images.
MAX_EXEMPLAR_IMAGES = 50


class Sources:
    """Store, list, re-class, box and delete the uploaded images."""

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        self.database, self.files = ctx.database, ctx.files
        self._suggesters_lock = threading.Lock()
        self._suggesters: dict[str, tuple[tuple[tuple[str, str], ...], ClassSuggester]] = {}
        self._exemplars_lock = threading.Lock()
        self._exemplars: dict[str, tuple[tuple[tuple[str, str, str], ...], list[DefectExemplar]]] = {}

    def upload_images(
        self, files: Sequence[tuple[str, bytes]], role: str, class_name: str | None, user: str
    ) -> UploadResult:
        """Store uploaded images of one role (and class, for real defects); all are stored or none."""
        return self.store_images([(name, data, class_name, []) for name, data in files], role, user)

    def import_folder(
        self,
        images_dir: Path,
        role: str,
        class_name: str | None = None,
        annotations_dir: Path | None = None,
        user: str = "cli",
    ) -> UploadResult:
        """Import a folder: flat images of one class (or clean slabs), or `<class>/` subfolders of real defects.

        With `annotations_dir`, a Pascal VOC file there gives an image's boxes: `<image stem>.xml`, or NEU-DET's
        `<class>_<n>.xml` for an image `<Ab>_<n>` of that class.
        """
        # 1. Check inputs
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise FileNotFoundError(f"Image folder not found: {images_dir}")
        if annotations_dir is not None and not Path(annotations_dir).is_dir():
            raise FileNotFoundError(f"Annotation folder not found: {annotations_dir}")
        class_dirs = [d for d in sorted(images_dir.iterdir()) if d.is_dir() and list_images(d)]

        # 2. Decide each file's class
        if role == "clean" or class_name:
            if class_dirs and not list_images(images_dir):
                raise ValueError(f"{images_dir} holds class subfolders; import it without a class name as defects.")
            paths = [(path, class_name) for path in list_images(images_dir)]
        elif class_dirs:
            paths = [(path, d.name) for d in class_dirs for path in list_images(d)]
        else:
            raise ValueError(f"Give a class name, or put the images of {images_dir} in <class>/ subfolders.")
        if not paths:
            raise ValueError(f"No images in {images_dir}.")

        # 3. Read boxes and store everything in one go
        entries = []
        for path, image_class in paths:
            xml = find_annotation(annotations_dir, path, image_class) if annotations_dir is not None else None
            boxes = parse_voc(xml) if xml is not None else []
            entries.append((path.name, path.read_bytes(), image_class, boxes))
        return self.store_images(entries, role, user)

    def store_images(self, entries: list[tuple[str, bytes, str | None, list]], role: str, user: str) -> UploadResult:
        """Validate every image first, then write rows and files in one transaction: a refusal writes nothing."""
        # 1. Check inputs (UploadError names the file)
        if role not in SOURCE_ROLES:
            raise ValueError(f"Image role must be one of {', '.join(SOURCE_ROLES)}, got {role!r}.")
        if not entries:
            raise ValueError("No files were uploaded.")
        total_bytes = sum(len(data) for _, data, _, _ in entries)
        if len(entries) > MAX_BATCH_FILES:
            raise ValueError(f"{len(entries)} files at once; the limit is {MAX_BATCH_FILES}, so upload them in parts.")
        if total_bytes > MAX_BATCH_BYTES:
            raise ValueError(
                f"{total_bytes / 2**20:.0f} MB in one batch; the limit is {MAX_BATCH_BYTES // 2**20} MB, "
                "so upload it in parts."
            )
        checked = []
        for name, data, class_name, boxes in entries:
            if role == "defect":
                if not class_name:
                    raise ValueError("Real defect images need a defect class; choose or type one.")
                class_name = check_class_name(class_name)
            elif class_name:
                raise ValueError("A clean slab has no defect class; leave the class empty.")
            image = normalise_upload(name, data)
            try:
                repository.normalize_boxes(boxes, image.width, image.height)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from error
            checked.append((image, class_name, boxes))

        # 2. Rows first, files last, in one transaction
        with self.database.transaction() as s:
            rows, already_stored, seen = [], [], set()
            for image, class_name, boxes in checked:
                sha256 = sha256_hex(image.png_bytes)
                known = sha256 in seen or repository.find_source_by_sha256(s, sha256) is not None
                seen.add(sha256)
                row = repository.add_source_image(
                    s, sha256, role, class_name, image.name, image.width, image.height, boxes, user
                )
                if known:
                    already_stored.append(row.id)
                if (row.role, row.class_name) != (role, class_name):
                    kind = f"a real defect of class {row.class_name!r}" if row.role == "defect" else "a clean slab"
                    raise ValueError(f"{image.name} is already stored as {kind} (image {row.id}).")
                rows.append(row)
            for image, _, _ in checked:
                self.files.put(image.png_bytes, ".png")
            sources = [self.ctx.source_info(row) for row in rows]
        return UploadResult(sources, {image.name: image.changes for image, _, _ in checked}, already_stored)

    def ensure_sources(self, paths: Sequence[Path], role: str, class_name: str | None, user: str) -> list[SourceInfo]:
        """The source rows of these image files, storing those not stored yet (in the order given)."""
        entries = [(path.name, path.read_bytes(), class_name, []) for path in paths]
        known = {}
        with self.database.session() as s:
            for name, data, _, _ in entries:
                row = repository.find_source_by_sha256(s, sha256_hex(normalise_upload(name, data).png_bytes))
                if row is not None:
                    known[name] = self.ctx.source_info(row)
        missing = [entry for entry in entries if entry[0] not in known]
        if missing:
            for info in self.store_images(missing, role, user).sources:
                known[info.name] = info
        return [known[path.name] for path in paths]

    def source_boxes(self, source_id: int) -> list[dict[str, Any]]:
        """The defect boxes stored with an uploaded image."""
        with self.database.session() as s:
            source = require_source(s, source_id)
            return list(source.boxes_json)

    def delete_source(self, source_id: int, with_samples: bool = False) -> int:
        """Delete an uploaded image with its pending and rejected samples; one with accepted samples is refused
        unless `with_samples` (they go too). Returns how many samples were deleted."""
        with self.database.transaction() as s:
            if repository.get_source_image(s, source_id) is None:
                raise ValueError(f"There is no uploaded image with id {source_id}.")
            accepted = repository.source_sample_counts(s, source_id).get("accepted", 0)
            if accepted and not with_samples:
                raise ValueError(
                    f"Image {source_id} has {accepted} accepted sample(s) made from it; delete it with its samples, "
                    "or keep it."
                )
            return repository.delete_source_image(s, source_id, with_samples=True)

    def update_source(self, source_id: int, class_name: str | None = None, box_text: str | None = None) -> SourceInfo:
        """Re-class a real defect and/or set its boxes from "x0,y0,x1,y1" lines (empty text: no boxes)."""
        boxes = None
        with self.database.transaction() as s:
            source = require_source(s, source_id)
            new_class = check_class_name(class_name) if class_name else None
            if box_text is not None:
                label = new_class or source.class_name or ""
                boxes = [{**box, "label": label} for box in parse_box_text(box_text)] if box_text.strip() else []
            try:
                row = repository.update_source_image(s, source_id, new_class, boxes)
            except LookupError as error:
                raise ValueError(str(error)) from error
            return self.ctx.source_info(row)

    def suggest_boxes(self, source_id: int) -> BoxSuggestion:
        """Boxes for a real defect image, in its pixels and labelled with its class, for the engineer to correct
        before saving them: learnt from the class's boxed images where that matched their boxes better
        (`engine.box_suggestions`), else around what departs from the image's steel (`masks.suggested_boxes`)."""
        from engine.box_suggestions import METHOD_ESTIMATE, MIN_BOXED_IMAGES

        path, label, size = self._defect_image(source_id)
        estimate = _estimated_defect(path)
        suggester = self._class_suggester(label)
        if suggester.method == METHOD_ESTIMATE:
            boxes = suggested_boxes(estimate, label)
        else:
            boxes = suggester.boxes(_estimate_copy(path), estimate, self.ctx.feature_net(), label)
        in_pixels = _in_image_pixels(boxes, estimate.shape, size)
        compared = suggester.learnt_f1 is not None
        return BoxSuggestion(in_pixels, suggester.method, suggester.boxed_images, compared, MIN_BOXED_IMAGES)

    def _class_suggester(self, class_name: str) -> ClassSuggester:
        """The class's suggester (`box_suggestions.class_suggester`) from its newest boxed real defect images, kept
        until their boxes change."""
        from engine.box_suggestions import MAX_BOXED_IMAGES, METHOD_ESTIMATE, ClassSuggester, class_suggester

        with self.database.session() as s:
            rows = repository.list_boxed_source_images(s, class_name, MAX_BOXED_IMAGES)
            boxed = tuple((row.sha256, json.dumps(row.boxes_json, sort_keys=True)) for row in rows)
            kept = [(self.files.path(row.sha256), list(row.boxes_json), (row.width, row.height)) for row in rows]
        with self._suggesters_lock:
            cached = self._suggesters.get(class_name)
            if cached is not None and cached[0] == boxed:
                return cached[1]
            net = self.ctx.feature_net()
            if net is None:
                return ClassSuggester(METHOD_ESTIMATE, len(kept))
            suggester = class_suggester([_boxed_image(*row, net) for row in kept], net)
            self._suggesters[class_name] = (boxed, suggester)
            return suggester

    def class_exemplars(self, class_name: str) -> list[DefectExemplar]:
        """The boxed real defects of a class's newest boxed images (`MAX_EXEMPLAR_IMAGES`), each box with its
        context (`engine.generation.exemplars`), named by the image's id and upload name for the lineage; kept until
        the class's boxed images or their boxes change."""
        from engine.generation.exemplars import exemplars_of

        with self.database.session() as s:
            rows = repository.list_boxed_source_images(s, class_name, MAX_EXEMPLAR_IMAGES)
            boxed = [(f"{row.id}:{row.original_name}", row.sha256, list(row.boxes_json)) for row in rows]
        key = tuple((name, sha256, json.dumps(boxes, sort_keys=True)) for name, sha256, boxes in boxed)
        with self._exemplars_lock:
            cached = self._exemplars.get(class_name)
            if cached is not None and cached[0] == key:
                return cached[1]
        found = []
        for name, sha256, boxes in boxed:
            found += exemplars_of(name, load_rgb(self.files.path(sha256)), [Box.of(box) for box in boxes])
        with self._exemplars_lock:
            self._exemplars[class_name] = (key, found)
        return found

    def painted_boxes(self, source_id: int, painted: Image.Image) -> list[dict[str, Any]]:
        """One box around each stroke of a mask painted over a view of a real defect image (its nonzero pixels;
        strokes that touch are one, and an outline drawn round a defect gives its box), in the image's pixels (the
        view at any size) and labelled with its class."""
        _, label, size = self._defect_image(source_id)
        marked = np.asarray(painted.convert("L")) > 0
        return _in_image_pixels(from_mask(marked, label), marked.shape, size)

    def _defect_image(self, source_id: int) -> tuple[Path, str, tuple[int, int]]:
        """A real defect image's file, class and size; a clean slab is refused (boxes belong to real defects)."""
        with self.database.session() as s:
            source = require_source(s, source_id)
            if source.role != "defect":
                raise ValueError(f"Image {source_id} is a clean slab; boxes belong to real defect images.")
            return self.files.path(source.sha256), source.class_name or "", (source.width, source.height)

    def source_view(
        self, source_id: int, box_text: str, show_estimate: bool = False
    ) -> tuple[str, list[tuple[Any, str]]]:
        """An AnnotatedImage value: the image with the boxes of `box_text` ("box 1", … in the text's order; entries
        that do not parse yet are left out: the text is being typed) and, with `show_estimate`, where it departs from
        its steel."""
        with self.database.session() as s:
            source = require_source(s, source_id)
            path = self.files.path(source.sha256)
        typed = parse_box_text(box_text, skip_invalid=True)
        boxes = [{**box, "label": f"box {number}"} for number, box in enumerate(typed, start=1)]
        mask = _estimated_defect(path) if show_estimate else None
        return annotated_view(path, self.ctx.previews_dir, boxes, mask, ESTIMATE_LABEL)

    def source_info(self, source_id: int) -> SourceInfo:
        """One uploaded image's details."""
        with self.database.session() as s:
            return self.ctx.source_info(require_source(s, source_id))

    def list_sources(self, role: str | None = None, class_name: str | None = None) -> list[SourceInfo]:
        """Uploaded images, oldest first, optionally of one role and class."""
        if role is not None and role not in SOURCE_ROLES:
            raise ValueError(f"Image role must be one of {', '.join(SOURCE_ROLES)}, got {role!r}.")
        with self.database.session() as s:
            rows = all_pages(lambda offset: repository.list_source_images(s, role, class_name, PAGE_SIZE, offset))
            return [self.ctx.source_info(row) for row in rows]

    def box_mask(self, source_id: int, text: str) -> Image.Image:
        """A mask of the source's size with the boxes of `text` ("x0,y0,x1,y1", one per line or ';') filled."""
        boxes = parse_box_text(text)
        with self.database.session() as s:
            source = require_source(s, source_id)
            width, height = source.width, source.height
        return mask_image(to_mask(boxes, width, height))


def _in_image_pixels(boxes: list[Box], shape: tuple[int, ...], size: tuple[int, int]) -> list[dict[str, Any]]:
    """Boxes found on a copy of an image (`shape`: its rows and columns) moved to the image's `size`, as dicts."""
    width, height = size
    scale_x, scale_y = width / shape[1], height / shape[0]
    inside = (box.scaled(scale_x, scale_y).clamped(width, height) for box in boxes)
    return [box.as_dict() for box in inside if box is not None]


@lru_cache(maxsize=SUGGESTER_CACHED_IMAGES)
def _estimate_copy(path: Path) -> np.ndarray:
    """A stored image's pixels (H×W×3 uint8) at most ESTIMATE_MAX_SIDE a side, where defects are estimated and
    boxes suggested; cached, as a class's refit after each save reads all its boxed images again."""
    image = load_rgb(path)
    image.thumbnail((ESTIMATE_MAX_SIDE, ESTIMATE_MAX_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(image)


@lru_cache(maxsize=64)
def _estimated_defect(path: Path) -> np.ndarray:
    """A stored image's estimated defect mask (`masks.estimate_defect_mask`) on its `_estimate_copy`; cached, as a
    stored file never changes (its name is its hash) and a suggestion, the view redrawn for it, every edit after and
    a class's suggester read the same one."""
    return estimate_defect_mask(_estimate_copy(path))


def _boxed_image(path: Path, boxes: list[dict[str, Any]], size: tuple[int, int], net: Any) -> BoxedImage:
    """A boxed real defect image as a class's suggester learns from it: its `_estimate_copy`, its boxes' mask on
    that copy, its estimated defect and its cells."""
    from engine.box_suggestions import BoxedImage

    pixels = _estimate_copy(path)
    height, width = pixels.shape[:2]
    scale_x, scale_y = width / size[0], height / size[1]
    mask = to_mask([Box.of(box).scaled(scale_x, scale_y) for box in boxes], width, height, clamp=True)
    return BoxedImage(pixels, mask, _estimated_defect(path), _cell_map(path, net))


@lru_cache(maxsize=SUGGESTER_CACHED_IMAGES)
def _cell_map(path: Path, net: Any) -> CellMap:
    """A stored image's cells (`box_suggestions.cell_map`) on its `_estimate_copy`; cached for the refit after each
    save, when a class's boxed images but one are those it was fitted on."""
    from engine.box_suggestions import cell_map

    return cell_map(_estimate_copy(path), net)


def parse_box_text(text: str, skip_invalid: bool = False) -> list[dict[str, int]]:
    """Boxes from "x0,y0,x1,y1" entries (pixels, x1/y1 exclusive), one per line or separated by ';'. With
    `skip_invalid` an entry that does not parse is left out and no text gives no boxes, instead of an error."""
    boxes = []
    for part in filter(str.strip, re.split(r"[;\n]", text or "")):
        match = BOX_TEXT_PATTERN.fullmatch(part)
        if match is None and skip_invalid:
            continue
        if match is None:
            raise ValueError(f"Box {part.strip()!r} is not x0,y0,x1,y1 in whole pixels.")
        xmin, ymin, xmax, ymax = map(int, match.groups())
        boxes.append({"label": "", "xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax})
    if not boxes and not skip_invalid:
        raise ValueError("Give at least one box as x0,y0,x1,y1.")
    return boxes
