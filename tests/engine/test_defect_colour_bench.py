"""The defect-colour bench: a masked repaint's defect colour against its slab, with and without the learnt colour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.colour_mill import DEFECT_TINTS, make_colour_mill
from bench.defect_colour import clean_slabs_of, draw, real_colours, table
from tests.support import make_steel_like, voc_xml


def test_the_bench_paints_each_class_in_its_learnt_colour_where_it_lies_and_measures_it_as_before(tiny_model, tmp_path):
    rng = np.random.default_rng(2)
    for part, count in (("pool", 2), ("val", 1)):
        for kind in ("scratches", "inclusion"):
            folder = tmp_path / "split" / part / kind
            folder.mkdir(parents=True)
            for i in range(count):
                grey = make_steel_like(rng, 96, kind)[..., 0]
                for y, x in zip(rng.integers(4, 92, 6), rng.integers(4, 20, 6), strict=True):
                    grey[y - 3 : y + 3, x - 3 : x + 3] = 60  # pits inside the box, where its colour lies
                Image.fromarray(grey).save(folder / f"{kind[:2]}_{i}.bmp")
                (folder / f"{kind[:2]}_{i}.xml").write_text(voc_xml((kind, 1, 1, 24, 96)))
    mill = tmp_path / "mill"
    make_colour_mill(tmp_path / "split", mill, jitter=0.0, defect_colours="structure")
    assert len(clean_slabs_of(mill / "val", 5)) == 2, "one box-free region of each validation image"

    real = real_colours(mill / "val")
    result = draw(mill, tmp_path / "work", 0, 2, 2, str(tiny_model), finetune_steps=2)
    # The classes sort as the split's: "colour type 1" is inclusion, in rust; "colour type 2" scratches, in blue.
    for number, name in enumerate(("colour type 1", "colour type 2")):
        colour = np.log(np.divide(DEFECT_TINTS[number], DEFECT_TINTS[number][1]))[[0, 2]]
        # On dark pits the colour moves the mean (by luminance) less than the mill's gains would over the whole box.
        reference = np.asarray(real[name]["colour"])
        assert reference @ colour / np.hypot(*reference) / np.hypot(*colour) > 0.9 and 0.1 < np.hypot(*reference)
        assert result[name]["learnt"] == pytest.approx(reference, abs=0.05)
        assert result[name]["learnt_structure"] > 0.3 and real[name]["structure"] > 0.3, "on the defects, not the box"
        assert result[name]["painted_structure"] > result[name]["even_structure"], "painted where the model drew"
        for painted, before in zip(result[name]["painted"], result[name]["slab_coloured"], strict=True):
            # Less than all of it: the ring the repaint grows and feathers around the mask counts as the slab here.
            share = np.subtract(painted, before) / np.asarray(result[name]["learnt"])
            assert 0.6 < share.min() and share.max() < 1.1, "the defect is painted in its learnt colour"
            assert np.hypot(*before) < 0.05, "without the learnt colour the defect is the slab's"
    lines = table(real, {0: result})
    assert len(lines) == 9 and lines[2].startswith("| colour type 1 |") and lines[7].startswith("| colour type 1 |")

    # Without their masks the shots' colour is learnt from estimated masks: the pits in their colour are found.
    estimated = draw(mill, tmp_path / "estimated", 0, 2, 1, str(tiny_model), finetune_steps=2, estimated_masks=True)
    assert not list((tmp_path / "estimated" / "seed0" / "shots").rglob("*_mask.png")), "the shots come bare"
    for name in ("colour type 1", "colour type 2"):
        learnt, reference = np.asarray(estimated[name]["learnt"]), np.asarray(real[name]["colour"])
        assert learnt @ reference / np.hypot(*learnt) / np.hypot(*reference) > 0.9, "the defects' colour, estimated"
