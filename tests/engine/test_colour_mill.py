"""The colour-mill bench: a grey split comes out as tinted colour JPEGs under names with spaces, in the same order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.colour_mill import DEFECT_TINTS, make_colour_mill
from engine.data import is_grayscale, list_images, read_mask_beside
from engine.generation.variation import defect_colour_structure, defect_tint
from tests.support import voc_xml


def test_a_grey_split_becomes_a_colour_mill_whose_classes_differ_in_tint(tmp_path):
    rng = np.random.default_rng(0)
    for part, count in (("pool", 4), ("val", 2)):
        for name in ("crazing", "scratches"):
            (tmp_path / "split" / part / name).mkdir(parents=True)
            for i in range(count):
                grey = rng.normal(120, 20, (24, 24)).clip(0, 255).astype(np.uint8)
                Image.fromarray(grey).save(tmp_path / "split" / part / name / f"{name[:2]}_{i}.bmp")
    written = make_colour_mill(tmp_path / "split", tmp_path / "mill")
    assert written == {"pool/colour type 1": 4, "pool/colour type 2": 4, "val/colour type 1": 2, "val/colour type 2": 2}
    first, second = (list_images(tmp_path / "mill" / "pool" / f"colour type {n}") for n in (1, 2))
    assert [p.name for p in first] == [f"cr_{i} photo.jpg" for i in range(4)], "the source's order, names with spaces"

    def red_over_blue(paths) -> float:
        means = [np.asarray(Image.open(p), dtype=np.float64).reshape(-1, 3).mean(axis=0) for p in paths]
        return float(np.mean([m[0] / m[2] for m in means]))

    assert not any(is_grayscale(Image.open(p)) for p in first + second)
    assert red_over_blue(first) > red_over_blue(second) + 0.1, "each class its own tint"


def test_a_colour_mill_can_be_captured_at_another_resolution(tmp_path):
    (tmp_path / "split" / "pool" / "crazing").mkdir(parents=True)
    (tmp_path / "split" / "val" / "crazing").mkdir(parents=True)
    for part in ("pool", "val"):
        Image.new("L", (40, 40), 128).save(tmp_path / "split" / part / "crazing" / "cr_0.bmp")
    make_colour_mill(tmp_path / "split", tmp_path / "mill", size=16)
    for part in ("pool", "val"):
        assert Image.open(tmp_path / "mill" / part / "colour type 1" / "cr_0 photo.jpg").size == (16, 16)


def test_a_mill_with_defect_colours_colours_its_boxes_and_writes_their_masks(tmp_path):
    rng = np.random.default_rng(1)
    for part in ("pool", "val"):
        (tmp_path / "split" / part / "crazing").mkdir(parents=True)
        grey = rng.normal(120, 10, (40, 40)).clip(0, 255).astype(np.uint8)
        Image.fromarray(grey).save(tmp_path / "split" / part / "crazing" / "cr_0.bmp")
        (tmp_path / "split" / part / "crazing" / "cr_0.xml").write_text(voc_xml(("crazing", 1, 1, 20, 40)))
    make_colour_mill(tmp_path / "split", tmp_path / "mill", defect_colours="box")
    plain = make_colour_mill(tmp_path / "split", tmp_path / "plain")
    folder = tmp_path / "mill" / "pool" / "colour type 1"
    assert [p.name for p in list_images(folder)] == ["cr_0 photo.jpg"], "the mask is not an image of the class"
    pixels, mask = (
        np.asarray(Image.open(folder / "cr_0 photo.jpg"), dtype=np.float64),
        read_mask_beside(folder / "cr_0 photo.jpg", 40),
    )
    assert mask[:, :20].all() and not mask[:, 20:].any()
    red, blue = defect_tint([(pixels.astype(np.uint8), mask)])
    expected = np.log(np.divide(DEFECT_TINTS[0], DEFECT_TINTS[0][1]))
    assert red == pytest.approx(expected[0], abs=0.06) and blue == pytest.approx(expected[2], abs=0.06)
    assert defect_colour_structure([(pixels.astype(np.uint8), mask)]) < 0.15, "over the whole box"
    assert plain == {"pool/colour type 1": 1, "val/colour type 1": 1}
    assert not list((tmp_path / "plain" / "pool" / "colour type 1").glob("*_mask.png")), "masks only when asked"


def test_a_mill_can_lay_its_defect_colours_on_the_defects_and_film_every_class_with_one_camera(tmp_path):
    rng = np.random.default_rng(3)
    for part in ("pool", "val"):
        for name in ("crazing", "scratches"):
            (tmp_path / "split" / part / name).mkdir(parents=True)
            for i in range(3):
                grey = rng.normal(150, 4, (48, 48))
                for y, x in rng.integers(4, 20, (5, 2)):
                    grey[2 * y - 3 : 2 * y + 3, x - 3 : x + 3] = 90
                Image.fromarray(grey.clip(0, 255).astype(np.uint8)).save(tmp_path / "split" / part / name / f"{i}.bmp")
                (tmp_path / "split" / part / name / f"{i}.xml").write_text(voc_xml((name, 1, 1, 24, 48)))
    make_colour_mill(tmp_path / "split", tmp_path / "mill", jitter=0.0, defect_colours="structure", one_camera=True)
    folders = [tmp_path / "mill" / "pool" / f"colour type {n}" for n in (1, 2)]
    pairs = [[(np.asarray(Image.open(p)), read_mask_beside(p, 48)) for p in list_images(f)] for f in folders]
    assert defect_colour_structure(pairs[0]) > 0.6, "the rust lies on the pits, not over the box"
    assert defect_tint(pairs[0])[0] > 0.1 and defect_tint(pairs[1])[1] > 0.05, "each class its own defect colour"

    def steel_colour(class_pairs) -> np.ndarray:
        return np.mean(
            [np.log(p[:, 30:].reshape(-1, 3).mean(0) / p[:, 30:].reshape(-1, 3).mean(0)[1]) for p, _ in class_pairs], 0
        )

    assert steel_colour(pairs[0]) == pytest.approx(steel_colour(pairs[1]), abs=0.02), "one camera's steel"
    with pytest.raises(ValueError, match="Defect colours go on one of"):
        make_colour_mill(tmp_path / "split", tmp_path / "other", defect_colours="spots")
