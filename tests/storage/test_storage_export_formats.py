"""Detection and segmentation formats in the export zip, each read back by an independent reader."""

import hashlib
import io
import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from storage.export import ExportItem, rle_counts, verify_export, write_export
from storage.files import FileStore

ALL_FORMATS = ("masks", "coco", "yolo", "voc")
SYNTHETIC_BOXES = [
    {"label": "inclusion", "xmin": 5, "ymin": 4, "xmax": 15, "ymax": 30},
    {"label": "inclusion", "xmin": 30, "ymin": 20, "xmax": 58, "ymax": 26},
]
REAL_BOXES = [
    {"label": "scratches", "xmin": 0, "ymin": 0, "xmax": 8, "ymax": 40},
    {"label": "inclusion", "xmin": 20, "ymin": 10, "xmax": 50, "ymax": 25},
]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_mask() -> Image.Image:
    """Two components whose bounding boxes are SYNTHETIC_BOXES: an ellipse and a bar."""
    mask = Image.new("L", (64, 48), 0)
    draw = ImageDraw.Draw(mask)
    draw.ellipse((5, 4, 14, 29), fill=255)
    draw.rectangle((30, 20, 57, 25), fill=255)
    return mask


@pytest.fixture
def items(file_store: FileStore) -> list[ExportItem]:
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8), mode="L")
    colour = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), mode="RGB")
    return [
        ExportItem(
            class_name="inclusion",
            image_sha256=file_store.put(png(grey)),
            kind="synthetic",
            sample_id=1,
            params={"width": 64, "height": 48},
            mask_sha256=file_store.put(png(synthetic_mask())),
            boxes=SYNTHETIC_BOXES,
        ),
        ExportItem(
            class_name="scratches",
            image_sha256=file_store.put(png(colour), suffix=".png"),
            kind="real",
            source_image_id=7,
            params={"width": 50, "height": 40},
            boxes=REAL_BOXES,
        ),
        ExportItem(
            class_name="scratches",
            image_sha256=file_store.put(png(grey.rotate(90, expand=True))),
            kind="real",
            source_image_id=8,
        ),
    ]


@pytest.fixture
def unpacked(tmp_path: Path, items: list[ExportItem], file_store: FileStore) -> tuple[Path, dict]:
    summary = write_export(tmp_path / "export.zip", items, file_store, formats=ALL_FORMATS)
    assert verify_export(summary.path) == []
    assert summary.formats == ["imagefolder", *ALL_FORMATS]
    with zipfile.ZipFile(summary.path) as archive:
        archive.extractall(tmp_path / "out")
        manifest = json.loads(archive.read("manifest.json"))
    return tmp_path / "out", manifest


def boxes_by_image(manifest: dict) -> dict[str, list[dict]]:
    return {entry["path"]: entry["boxes"] for entry in manifest["items"]}


def test_coco_instances_load_with_pycocotools_and_match_masks_and_boxes(unpacked) -> None:
    root, manifest = unpacked
    coco = COCO(str(root / "coco" / "instances.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["inclusion", "scratches"]
    # The real image without boxes is not a detection sample.
    assert len(coco.getImgIds()) == 2
    expected = boxes_by_image(manifest)
    for image in coco.loadImgs(coco.getImgIds()):
        with Image.open(root / image["file_name"]) as opened:
            assert opened.size == (image["width"], image["height"])
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        boxes = [
            {
                "label": coco.loadCats(a["category_id"])[0]["name"],
                "xmin": a["bbox"][0],
                "ymin": a["bbox"][1],
                "xmax": a["bbox"][0] + a["bbox"][2],
                "ymax": a["bbox"][1] + a["bbox"][3],
            }
            for a in annotations
        ]
        assert boxes == expected[image["file_name"]]
        entry = next(e for e in manifest["items"] if e["path"] == image["file_name"])
        if entry["mask_sha256"]:
            drawn = np.asarray(Image.open(root / entry["mask_path"])) > 0
            union = np.zeros_like(drawn)
            for annotation in annotations:
                segment = coco.annToMask(annotation).astype(bool)
                union |= segment
                rle = coco.annToRLE(annotation)
                assert list(mask_utils.toBbox(rle)) == annotation["bbox"]
                assert mask_utils.area(rle) == annotation["area"] == segment.sum()
            assert np.array_equal(union, drawn)
        else:
            for annotation in annotations:
                x, y, w, h = annotation["bbox"]
                segment = coco.annToMask(annotation).astype(bool)
                assert annotation["area"] == w * h
                assert segment[y : y + h, x : x + w].mean() > 0.9 and segment.sum() <= (w + 1) * (h + 1)


def test_rle_counts_agree_with_pycocotools() -> None:
    mask = synthetic_mask()
    mask.putpixel((0, 0), 255)
    encoded = mask_utils.encode(np.asfortranarray((np.asarray(mask) > 0).astype(np.uint8)))
    ours = mask_utils.frPyObjects({"size": [48, 64], "counts": rle_counts(mask)}, 48, 64)
    assert np.array_equal(mask_utils.decode(ours), mask_utils.decode(encoded))


def test_yolo_labels_and_data_yaml_read_back(unpacked) -> None:
    root, manifest = unpacked
    data = yaml.safe_load((root / "data.yaml").read_text())
    names = data["names"]
    assert data["nc"] == 2 and names == {0: "inclusion", 1: "scratches"}
    splits = {entry["path"]: entry["split"] for entry in manifest["items"]}
    listed = []
    for split in ("train", "val"):
        names_in_list = (root / f"yolo-{split}.txt").read_text().split()
        assert all(splits[p.removeprefix("./")] == split for p in names_in_list)
        listed += names_in_list
    assert data["train"] == "yolo-train.txt" and data["val"] in ("yolo-val.txt", "yolo-train.txt")
    expected = {path: boxes for path, boxes in boxes_by_image(manifest).items() if boxes}
    assert sorted(p.removeprefix("./") for p in listed) == sorted(expected)
    for image_path in listed:
        image_file = root / image_path
        label_file = root / image_path.replace("images/", "labels/", 1).rsplit(".", 1)[0]
        label_file = label_file.with_suffix(".txt")
        with Image.open(image_file) as opened:
            width, height = opened.size
        boxes = []
        for line in label_file.read_text().splitlines():
            number, cx, cy, w, h = line.split()
            cx, cy, w, h = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
            boxes.append(
                {
                    "label": names[int(number)],
                    "xmin": round(cx - w / 2),
                    "ymin": round(cy - h / 2),
                    "xmax": round(cx + w / 2),
                    "ymax": round(cy + h / 2),
                }
            )
        assert boxes == expected[image_path.removeprefix("./")]


def test_voc_xml_reads_back_in_one_based_coordinates(unpacked) -> None:
    root, manifest = unpacked
    files = sorted((root / "voc").rglob("*.xml"))
    assert len(files) == 2
    expected = boxes_by_image(manifest)
    for file in files:
        annotation = ET.parse(file).getroot()
        image_path = annotation.findtext("path")
        with Image.open(root / image_path) as opened:
            size = annotation.find("size")
            assert (int(size.findtext("width")), int(size.findtext("height"))) == opened.size
            assert int(size.findtext("depth")) == len(opened.getbands())
        assert annotation.findtext("filename") == Path(image_path).name
        boxes = [
            {
                "label": obj.findtext("name"),
                "xmin": int(obj.findtext("bndbox/xmin")) - 1,
                "ymin": int(obj.findtext("bndbox/ymin")) - 1,
                "xmax": int(obj.findtext("bndbox/xmax")),
                "ymax": int(obj.findtext("bndbox/ymax")),
            }
            for obj in annotation.iter("object")
        ]
        assert boxes == expected[image_path]


def test_png_masks_are_the_stored_mask_or_drawn_from_boxes(unpacked, items: list[ExportItem]) -> None:
    root, manifest = unpacked
    synthetic, real, unboxed = manifest["items"]
    assert synthetic["mask_from"] == "mask"
    assert np.array_equal(np.asarray(Image.open(root / synthetic["mask_path"])), np.asarray(synthetic_mask()))
    assert real["mask_from"] == "boxes"
    drawn = np.asarray(Image.open(root / real["mask_path"])) > 0
    expected = np.zeros((40, 50), dtype=bool)
    for box in REAL_BOXES:
        expected[box["ymin"] : box["ymax"], box["xmin"] : box["xmax"]] = True
    assert np.array_equal(drawn, expected)
    assert "mask_path" not in unboxed


def test_a_test_split_gets_its_own_yolo_list(tmp_path: Path, items: list[ExportItem], file_store: FileStore) -> None:
    from storage.export import SplitPlan

    out = tmp_path / "three-way.zip"
    write_export(out, items, file_store, formats=("yolo",), split=SplitPlan(0.0, 0.9, seed=3))
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        data = yaml.safe_load(archive.read("data.yaml"))
        tested = archive.read("yolo-test.txt").decode().split()
    assert manifest["split"] == {"val_fraction": 0.0, "test_fraction": 0.9, "seed": 3}
    in_test = {entry["path"] for entry in manifest["items"] if entry["split"] == "test" and entry["boxes"]}
    assert in_test and {p.removeprefix("./") for p in tested} == in_test
    assert data["test"] == "yolo-test.txt" and data["val"] == "yolo-train.txt"


def test_unknown_format_is_refused(tmp_path: Path, items: list[ExportItem], file_store: FileStore) -> None:
    with pytest.raises(ValueError, match="Unknown export format"):
        write_export(tmp_path / "x.zip", items, file_store, formats=("coco", "tfrecord"))


def test_split_follows_the_source_image_so_samples_never_leak_across() -> None:
    from storage.export import DEFAULT_VAL_FRACTION, ExportItem, SplitPlan

    sources = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200)]
    real = [ExportItem("scratches", sha, "real", lineage={"source_image_sha256": sha}) for sha in sources]
    made = [ExportItem("scratches", "f" * 64, "synthetic", lineage={"source_image_sha256": sha}) for sha in sources]
    plan = SplitPlan()
    assert [plan.split_of(r) for r in real] == [plan.split_of(m) for m in made]
    share = sum(plan.split_of(r) == "val" for r in real) / len(real)
    assert 0.5 * DEFAULT_VAL_FRACTION < share < 2 * DEFAULT_VAL_FRACTION
    three = SplitPlan(0.3, 0.2)
    sides = [three.split_of(r) for r in real]
    assert 0.2 < sides.count("val") / len(real) < 0.4 and 0.1 < sides.count("test") / len(real) < 0.3
    assert [SplitPlan(0.3, 0.2, seed=1).split_of(r) for r in real] != sides, "the seed draws another split"
    assert {SplitPlan(0.0).split_of(r) for r in real} == {"train"}
    with pytest.raises(ValueError, match="at most 0.9"):
        SplitPlan(0.6, 0.4)
