"""The grain-band bench: a blurred copy of a grainy slab loses its fine band, a flat image has none."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from bench.grain_bands import folder_bands, grain_bands
from tests.support import slab


def test_blur_empties_the_fine_band_before_the_mid_band_and_a_flat_image_has_neither(tmp_path):
    grainy = slab(200, 200, seed=1)
    blurred = grainy.filter(ImageFilter.GaussianBlur(1.2))
    sharp, soft = grain_bands(grainy), grain_bands(blurred)
    assert sharp["fine"] > 3 * soft["fine"] and sharp["mid"] > soft["mid"] > soft["fine"]
    assert grain_bands(Image.fromarray(np.full((200, 200), 90, np.uint8))) == {"fine": 0.0, "mid": 0.0}
    for name, image in [("grainy", grainy), ("blurred", blurred)]:
        (tmp_path / name).mkdir()
        image.save(tmp_path / name / "a.png")
    bands = folder_bands(tmp_path)
    assert set(bands) == {"grainy", "blurred"} and bands["grainy"]["fine"] > bands["blurred"]["fine"]
