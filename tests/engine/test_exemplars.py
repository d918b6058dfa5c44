"""Real defects pasted onto clean slabs before a masked repaint (`engine.generation.exemplars`), on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.batch import generate_to_folder
from engine.boxes import Box, from_mask
from engine.config import GenerationConfig
from engine.data import MASK_SUFFIX, list_images
from engine.generation.exemplars import CONTEXT_PX, exemplars_of, paste_exemplars, read_exemplars
from engine.generation.generate import PASTED_DEFECTS, generate, read_png_parameters
from engine.generation.pipeline import load_pipeline
from engine.masks import grow
from tests.support import slab, voc_xml


def defect_image(seed: int = 0, size: int = 64) -> tuple[Image.Image, Box]:
    """A dark noisy steel with one bright 12 × 8 px defect at a place of its own."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(60, 4, (size, size))
    x0, y0 = int(rng.integers(4, size - 16)), int(rng.integers(4, size - 12))
    pixels[y0 : y0 + 8, x0 : x0 + 12] = 230
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), Box(x0, y0, x0 + 12, y0 + 8)


def placed_at(width: int, height: int, box: Box) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[box.ymin : box.ymax, box.xmin : box.xmax] = True
    return mask


def test_marked_images_give_one_exemplar_per_box_with_their_context(tmp_path):
    image, box = defect_image()
    image.save(tmp_path / "boxed.png")
    Image.fromarray(placed_at(64, 64, box).astype(np.uint8) * 255).save(tmp_path / f"boxed{MASK_SUFFIX}")
    second, other = defect_image(seed=1)
    second.save(tmp_path / "voc.png")
    (tmp_path / "voc.xml").write_text(voc_xml(("scratches", *other.corners), ("scratches", 2, 2, 10, 10)))
    defect_image(seed=2)[0].save(tmp_path / "unmarked.png")

    found = read_exemplars(list_images(tmp_path))
    assert sorted(e.source for e in found) == ["boxed.png", "voc.png", "voc.png"], "one per box; unmarked left out"
    boxed = next(e for e in found if e.source == "boxed.png")
    assert boxed.box == box and boxed.pixels.shape == (8 + 2 * CONTEXT_PX, 12 + 2 * CONTEXT_PX, 3)
    inner = boxed.pixels[boxed.inner.ymin : boxed.inner.ymax, boxed.inner.xmin : boxed.inner.xmax]
    assert (inner == 230).all(), "the box lies where `inner` says"
    corner = exemplars_of("corner.png", image, [Box(0, 0, 5, 5)])[0]
    assert corner.inner == Box(0, 0, 5, 5) and corner.pixels.shape[:2] == (5 + CONTEXT_PX, 5 + CONTEXT_PX)


def test_a_pasted_defect_lands_at_the_auto_placed_place_blended_into_the_slab():
    image, box = defect_image()
    exemplars = exemplars_of("defect.png", image, [box])
    background = slab(96, 64)
    target = Box(50, 30, 60, 40)
    pasted, mask, records = paste_exemplars(background, exemplars, placed_at(96, 64, target), seed=0)

    pixels, original = np.asarray(pasted.convert("L"), dtype=float), np.asarray(background, dtype=float)
    (at,) = from_mask(mask)
    assert (at.width, at.height) == (12, 8) and abs((at.xmin + at.xmax) / 2 - 55) <= 1.5
    assert abs((at.ymin + at.ymax) / 2 - 35) <= 1.5, "centred on the auto-placed defect"
    assert pixels[mask].mean() > original[mask].mean() + 60, "the bright defect is in"
    around = grow(mask, CONTEXT_PX + 1) ^ grow(mask, CONTEXT_PX - 1)
    assert abs(pixels[around].mean() - original[around].mean()) < 10, "its dark steel took the slab's level"
    far = ~grow(mask, CONTEXT_PX + 2)
    assert np.array_equal(pixels[far], original[far]), "the rest of the slab is untouched"
    assert records == [{"source": "defect.png", "box": box.as_dict(), "flips": records[0]["flips"], "at": at.as_dict()}]
    again = paste_exemplars(background, exemplars, placed_at(96, 64, target), seed=0)
    assert np.array_equal(np.asarray(again[0]), np.asarray(pasted)) and again[2] == records, "reproducible by seed"
    flips = {tuple(paste_exemplars(background, exemplars, mask, seed=s)[2][0]["flips"]) for s in range(12)}
    assert len(flips) >= 3, "flipped at random"


def test_a_defect_larger_than_the_slab_is_cut_to_fit_and_two_places_get_two_defects():
    image, _ = defect_image(size=80)
    exemplars = exemplars_of("large.png", image, [Box(2, 2, 78, 40)])
    placed = placed_at(48, 32, Box(2, 2, 10, 10)) | placed_at(48, 32, Box(30, 20, 40, 28))
    pasted, mask, records = paste_exemplars(slab(48, 32), exemplars, placed, seed=1)
    assert pasted.size == (48, 32) and mask.any() and len(records) == 2
    assert all(Box.of(r["at"]).xmax <= 48 - 2 and Box.of(r["at"]).ymax <= 32 - 2 for r in records)
    with pytest.raises(ValueError, match="boxes or masks"):
        paste_exemplars(slab(48, 32), [], placed, seed=1)


def test_generation_from_pasted_defects_labels_them_and_keeps_the_slab_elsewhere(tiny_model, tiny_adapter, tmp_path):
    pipe = load_pipeline(tiny_model, adapter=tiny_adapter)
    image, box = defect_image()
    exemplars = exemplars_of("defect.png", image, [box])
    source = slab(96, 64)
    config = GenerationConfig("scratches", num_candidates=2, strength=0.5, steps=4, seed=3, auto_place=True)
    for candidate in generate(pipe, source, config, exemplars=exemplars).candidates:
        params = read_png_parameters(candidate.png_bytes())
        assert params.masked.mask_source == PASTED_DEFECTS
        pasted = [Box.of(paste["at"]).corners for paste in params.masked.pasted]
        assert pasted and {paste["source"] for paste in params.masked.pasted} == {"defect.png"}
        assert sorted(b.corners for b in params.masked.boxes) == sorted(pasted), "labelled where they were pasted"
        assert sorted(b.corners for b in from_mask(candidate.mask)) == sorted(pasted)
        outside = ~grow(candidate.mask, CONTEXT_PX + 6)
        out, original = np.asarray(candidate.image, dtype=np.int16), np.asarray(source, dtype=np.int16)
        assert np.array_equal(out[outside], original[outside])
        assert out[candidate.mask].mean() > original[candidate.mask].mean() + 30, "the real defect shows"
    with pytest.raises(ValueError, match="auto-place"):
        generate(pipe, source, GenerationConfig("scratches", 1, 0.5, 4), exemplars=exemplars)

    marked = tmp_path / "marked"
    marked.mkdir()
    image.save(marked / "defect.png")
    (marked / "defect.xml").write_text(voc_xml(("scratches", *box.corners)))
    source.save(tmp_path / "slab.png")
    common = {"steps": 4, "strength": 0.5, "realism_threshold": None, "pipe": pipe}
    paths = generate_to_folder(
        None, None, "scratches", tmp_path / "slab.png", 2, tmp_path / "out", auto_place=True, exemplars=marked, **common
    )
    assert [read_png_parameters(p).masked.pasted[0]["source"] for p in paths] == ["defect.png"] * 2
    with pytest.raises(ValueError, match="add --auto-place"):
        generate_to_folder(
            None, None, "scratches", tmp_path / "slab.png", 1, tmp_path / "o2", exemplars=marked, **common
        )
    (marked / "defect.xml").unlink()
    with pytest.raises(ValueError, match="mask or boxes beside it"):
        generate_to_folder(
            None,
            None,
            "scratches",
            tmp_path / "slab.png",
            1,
            tmp_path / "o3",
            auto_place=True,
            exemplars=marked,
            **common,
        )


def test_generate_pastes_the_class_s_marked_defects_from_the_command_line(tiny_model, tiny_adapter, tmp_path):
    import launch

    image, box = defect_image(seed=4)
    (tmp_path / "marked").mkdir()
    image.save(tmp_path / "marked" / "defect.png")
    (tmp_path / "marked" / "defect.xml").write_text(voc_xml(("scratches", *box.corners)))
    slab(96, 64, seed=2).save(tmp_path / "slab.png")
    command = [
        "generate", "--model", str(tiny_model), "--adapter", str(tiny_adapter), "--token", "scratches",
        "--init", str(tmp_path / "slab.png"), "--num", "2", "--steps", "4", "--strength", "0.5",
        "--realism-threshold", "off", "--auto-place", "--exemplars", str(tmp_path / "marked"),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert launch.main(command) == 0
    written = [p for p in list_images(tmp_path / "out") if not p.name.endswith(MASK_SUFFIX)]
    assert len(written) == 2
    for path in written:
        params = read_png_parameters(path)
        assert params.masked.mask_source == PASTED_DEFECTS and params.masked.pasted[0]["source"] == "defect.png"
        mask = np.asarray(Image.open(path.with_name(path.stem + MASK_SUFFIX))) > 0
        assert sorted(b.corners for b in from_mask(mask)) == sorted(b.corners for b in params.masked.boxes)
