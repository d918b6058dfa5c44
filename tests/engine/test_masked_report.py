"""The crop-level report of masked samples on clean regions, on a tiny NEU-shaped folder and the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.boxes import Box, bounding_box
from engine.data import LabelledImage, read_split
from engine.evaluation.masked_report import clean_slabs, defect_crop
from tests.support import voc_xml

CLASSES = ("inclusion", "scratches")
IMAGE_SIDE = 96
# VOC pixels 1..30: the top-left 30 × 30 corner holds the defect; rows and columns 30..95 are clean steel.
BOX_END = 30


@pytest.fixture(scope="module")
def tiny_neu(tmp_path_factory) -> Path:
    """A NEU-shaped folder: 7 images per class (2 of them validation), each with one box in its corner."""
    root = tmp_path_factory.mktemp("tiny-neu")
    rng = np.random.default_rng(0)
    rows = ["image,cls,index,annotation"]
    (root / "annotations").mkdir()
    for cls in CLASSES:
        (root / "images" / cls).mkdir(parents=True)
        for index in range(1, 8):
            pixels = rng.normal(128, 12, (IMAGE_SIDE, IMAGE_SIDE)).clip(0, 255).astype(np.uint8)
            pixels[:BOX_END, :BOX_END] = 40 if cls == "scratches" else 220
            Image.fromarray(pixels).save(root / "images" / cls / f"X_{index}.bmp")
            (root / "annotations" / f"{cls}_{index}.xml").write_text(voc_xml((cls, 1, 1, BOX_END, BOX_END)))
            rows.append(f"images/{cls}/X_{index}.bmp,{cls},{index},annotations/{cls}_{index}.xml")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory) -> Path:
    """A mill's own split folder like `tiny_neu`: pool/ (5 a class, VOC boxes beside) and val/ (2 a class, masks
    beside), with names holding spaces and no NEU manifest."""
    root = tmp_path_factory.mktemp("tiny-split")
    rng = np.random.default_rng(1)
    for cls in CLASSES:
        for part, count in (("pool", 5), ("val", 2)):
            folder = root / part / f"mill {cls}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.normal(128, 12, (IMAGE_SIDE, IMAGE_SIDE)).clip(0, 255).astype(np.uint8)
                pixels[:BOX_END, :BOX_END] = 40 if cls == "scratches" else 220
                Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(folder / f"capture {index}.jpg", quality=95)
                if part == "pool":
                    (folder / f"capture {index}.xml").write_text(voc_xml((cls, 1, 1, BOX_END, BOX_END)))
                else:
                    mask = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8)
                    mask[:BOX_END, :BOX_END] = 255
                    Image.fromarray(mask).save(folder / f"capture {index}_mask.png")
    return root


def test_a_split_folder_reads_its_boxes_from_the_masks_and_annotations_beside_its_images(tiny_split, tiny_neu):
    pool, val = read_split(tiny_split)
    assert (len(pool), len(val)) == (10, 4)
    assert {it.class_name for it in val} == {f"mill {cls}" for cls in CLASSES}
    for item in pool + val:
        assert item.boxes == [Box(0, 0, BOX_END, BOX_END, item.class_name)], "from the VOC boxes or the mask"
    neu_pool, neu_val = read_split(tiny_neu)
    assert (len(neu_pool), len(neu_val)) == (10, 4), "the NEU folder splits by its manifest"
    with pytest.raises(FileNotFoundError, match="pool/ and val/"):
        read_split(tiny_split / "pool")


def test_grown_box_adds_a_margin_keeps_a_minimum_side_and_stays_inside():
    assert Box(50, 50, 150, 70).grown(200, 200) == Box(40, 40, 160, 80)
    assert Box(0, 0, 4, 4).grown(200, 200) == Box(0, 0, 10, 10)
    assert Box(190, 100, 200, 196).grown(200, 200) == Box(180, 90, 200, 200)


def test_mask_bbox_is_the_box_of_the_true_pixels():
    mask = np.zeros((20, 30), dtype=bool)
    assert bounding_box(mask) is None
    mask[3:5, 7] = True
    mask[10, 20] = True
    assert bounding_box(mask) == Box(7, 3, 21, 11)


def test_clean_slabs_alternate_between_classes_and_avoid_the_boxes(tmp_path):
    items = []
    for cls, shade in (("a", 50), ("b", 200)):
        for index in range(2):
            path = tmp_path / f"{cls}{index}.png"
            Image.new("L", (100, 100), shade).save(path)
            items.append(LabelledImage(path, cls, [Box(0, 0, 100, 30, cls)], index))
    slabs = clean_slabs(items)
    # Each image has one clean band (rows 30-100); the slabs alternate a, b, a, b.
    assert [s.size for s in slabs] == [(100, 70)] * 4
    assert [s.getpixel((0, 0))[0] for s in slabs] == [50, 200, 50, 200]


def test_real_defect_crops_cover_the_boxes_of_the_image_class(tmp_path):
    path = tmp_path / "a.png"
    Image.new("L", (200, 200)).save(path)
    item = LabelledImage(path, "a", [Box(50, 50, 100, 100, "a"), Box(0, 0, 10, 10, "b"), Box(120, 60, 150, 90, "a")])
    assert defect_crop(item).size == (100 + 20, 50 + 20)
    assert defect_crop(LabelledImage(path, "a")) is None


@pytest.mark.slow
def test_masked_report_paints_clean_regions_and_scores_the_crops(tiny_neu, tiny_model, tiny_adapter, tmp_path, capsys):
    from launch import main

    args = ["evaluate", "masked", "--neu", str(tiny_neu), "--model", str(tiny_model), "--adapter", str(tiny_adapter)]
    args += ["--per-class", "3", "--strength", "1.0", "--steps", "2", "--save-dir", str(tmp_path / "look"), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)

    # 2 validation images per class, each with a clean band below and one to the right of its box.
    assert report["n_slabs"] == 8
    assert [row["class_name"] for row in report["rows"]] == list(CLASSES)
    for row in report["rows"]:
        assert (row["generated"]["n_a"], row["generated"]["n_b"], row["strength"]) == (3, 2, 1.0)
        assert row["reference"]["n_a"] == 3 and row["clean"]["n_a"] == 3
        assert all(0.0 <= row[k] <= 1.0 for k in ("realism_generated", "realism_clean", "realism_real"))
        # Only the feathered rim around the mask changes outside it (an untrained model paints harshly there).
        assert row["background_psnr"] > 15
    for cls in CLASSES:
        masks = sorted((tmp_path / "look" / cls).glob("*_mask.png"))
        assert len(masks) == 3
        for mask_path in masks:
            mask = np.asarray(Image.open(mask_path)) > 0
            crop = Image.open(mask_path.with_name(mask_path.name.replace("_mask", "_crop")))
            x0, y0, x1, y1 = bounding_box(mask).grown(mask.shape[1], mask.shape[0]).corners
            assert crop.size == (x1 - x0, y1 - y0)


@pytest.mark.slow
def test_masked_report_runs_on_a_mills_own_split_folder(tiny_split, tiny_model, tmp_path, capsys):
    from engine.batch import finetune_folder
    from launch import main

    adapter = tmp_path / "adapter"
    result = finetune_folder(tiny_split / "pool", adapter, model=str(tiny_model), steps=2, batch_size=4)
    assert result.status == "completed"
    args = ["evaluate", "masked", "--split", str(tiny_split), "--model", str(tiny_model), "--adapter", str(adapter)]
    assert main([*args, "--per-class", "2", "--strength", "1.0", "--steps", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_slabs"] == 8 and report["settings"]["data_root"] == str(tiny_split)
    assert [row["class_name"] for row in report["rows"]] == [f"mill {cls}" for cls in CLASSES]
    assert all((row["generated"]["n_a"], row["generated"]["n_b"]) == (2, 2) for row in report["rows"])


@pytest.mark.slow
def test_tune_masked_strength_stores_the_lowest_kid_strength_per_class(tiny_neu, tiny_model, tiny_adapter, tmp_path):
    import shutil

    from engine.adapters import read_adapter, save_tuned_strength
    from engine.evaluation.masked_report import tune_masked_strength

    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    report = tune_masked_strength(adapter, tiny_neu, [1.0, 0.5], model=str(tiny_model), per_class=2, steps=2)
    assert set(report.kid_by_class) == set(CLASSES)
    for class_name, kids in report.kid_by_class.items():
        assert set(kids) == {"0.5", "1.0"}
        # The lowest KID among strengths that beat the untouched crops; none of them: no masked strength.
        better = {s: kid for s, kid in kids.items() if kid < report.clean_kid[class_name]}
        chosen = report.best[class_name]
        assert (str(chosen) == min(better, key=better.get)) if better else chosen is None
    tokens = read_adapter(adapter).tokens
    assert {c: tokens[c].masked_strength for c in CLASSES} == report.best
    assert all(tokens[c].default_strength is None for c in CLASSES), "the whole-window strength is left alone"
    assert "chosen" in report.table()
    # A class that had a masked strength and gets no winner loses it (the default applies again).
    save_tuned_strength(adapter, "inclusion", 0.7, key="masked_strength")
    save_tuned_strength(adapter, "inclusion", None, key="masked_strength")
    assert read_adapter(adapter).tokens["inclusion"].masked_strength is None
    with pytest.raises(ValueError, match="Strengths must lie in"):
        tune_masked_strength(adapter, tiny_neu, [0.0], model=str(tiny_model))
