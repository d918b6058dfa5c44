"""Varied inits: geometric variants, mosaics, warps and overlays of a class's real images, and their lineage."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
from PIL import Image

from bench.grain_bands import lost_in_resize
from engine.evaluation.recognition import classic_augment
from engine.generation.variation import (
    DEFAULT_INIT_MIX,
    capture_variation,
    defect_colour_gains,
    defect_colour_structure,
    defect_tint,
    elastic_warp,
    exposure_jitter,
    geometric_variant,
    grain_range,
    log_tint,
    mosaic,
    overlay,
    parse_init_mix,
    photometric_jitter,
    pixel_grain,
    quarter_turn,
    structure_weights,
    tint_spread,
    tint_variation,
    varied_init,
    with_white_balance,
)


def _images(count: int, size: int = 64) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.normal(60 + 40 * i, 10, (size, size)).clip(0, 255).astype(np.uint8)) for i in range(count)
    ]


def test_geometric_variant_keeps_size_and_changes_layout():
    image = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))
    variants = [geometric_variant(image, random.Random(seed)) for seed in range(6)]
    assert all(v.size == (64, 64) and v.mode == "L" for v, _ in variants)
    assert len({np.asarray(v).tobytes() for v, _ in variants}) == 6
    _, details = variants[0]
    assert set(details) == {"angle", "crop", "flip_x", "flip_y"} and abs(details["angle"]) <= 10


def test_a_sharp_geometric_variant_is_the_same_layout_with_the_grain_kept():
    yy, xx = np.mgrid[0:96, 0:96]
    defect = 80.0 * np.exp(-((xx - 30) ** 2 + (yy - 60) ** 2) / 300.0)
    grain = np.random.default_rng(0).normal(0, 10, (96, 96))
    image = Image.fromarray((90 + defect + grain).clip(0, 255).astype(np.uint8))
    for seed in range(4):
        plain, plain_details = geometric_variant(image, random.Random(seed))
        sharp, sharp_details = geometric_variant(image, random.Random(seed), sharp=True)
        assert {k: v for k, v in sharp_details.items() if k != "crop"} == {
            k: v for k, v in plain_details.items() if k != "crop"
        }
        assert np.corrcoef(np.asarray(plain, np.float32).ravel(), np.asarray(sharp, np.float32).ravel())[0, 1] > 0.8
        assert lost_in_resize(sharp, 48).std() > 1.3 * lost_in_resize(plain, 48).std()


def test_a_geometric_variant_of_a_wide_image_crops_its_own_shape_inside_the_rotated_frame():
    width, height = 160, 40
    image = Image.fromarray(np.full((height, width), 128, dtype=np.uint8))
    for seed in range(20):
        variant, details = geometric_variant(image, random.Random(seed), sharp=seed % 2 == 1)
        left, top, crop_width, crop_height = details["crop"]
        assert variant.size == (width, height)
        assert crop_width / crop_height == pytest.approx(width / height, rel=0.01)
        # Every corner of the crop, turned back by the angle, lies inside the original image: no fill is cut in.
        angle = np.radians(details["angle"])
        for x, y in [
            (left, top),
            (left + crop_width, top),
            (left, top + crop_height),
            (left + crop_width, top + crop_height),
        ]:
            dx, dy = x - width / 2, y - height / 2
            back_x = dx * np.cos(angle) - dy * np.sin(angle)
            back_y = dx * np.sin(angle) + dy * np.cos(angle)
            assert abs(back_x) <= width / 2 + 0.2 and abs(back_y) <= height / 2 + 0.2
        if seed % 2 == 1:
            assert np.asarray(variant).min() >= 126, "a sharp variant keeps its filters away from the rotation's fill"


def test_classic_augmentation_is_reproducible_from_its_seed():
    image = _images(1)[0]
    first = classic_augment(image, random.Random(3))
    assert np.array_equal(np.asarray(first), np.asarray(classic_augment(image, random.Random(3))))
    assert not np.array_equal(np.asarray(first), np.asarray(classic_augment(image, random.Random(4))))


def test_mosaic_joins_different_sources_at_one_grey_level():
    images = _images(4)
    for seed in range(8):
        image, sources, details = mosaic(images, random.Random(seed))
        assert image.size == (64, 64) and image.mode == "L"
        assert len(set(sources)) == len(sources) >= 2
        assert details["layout"] in ("left-right", "top-bottom", "quadrants")
        pixels = np.asarray(image, dtype=np.float32)
        # Sources differ by 40 grey levels each; the tiles are brought to the first one's level.
        base_mean = np.asarray(images[sources[0]], dtype=np.float32).mean()
        assert abs(pixels.mean() - base_mean) < 6
    with pytest.raises(ValueError, match="at least two"):
        mosaic(images[:1], random.Random(0))


def test_a_colour_mosaic_has_one_white_balance():
    # One texture under four white balances (captures of one camera): a mosaic of them is one capture, so every
    # tile comes out with the first tile's tint, not a pink half beside a green one.
    grey = np.random.default_rng(1).normal(120, 15, (64, 64, 1))
    balances = [(1.25, 1.0, 0.8), (0.8, 1.0, 1.25), (1.1, 1.0, 1.1), (0.9, 1.0, 0.85)]
    images = [Image.fromarray((grey * np.array(b)).clip(0, 255).astype(np.uint8)) for b in balances]
    for seed in range(6):
        image, sources, details = mosaic(images, random.Random(seed))
        pixels = np.asarray(image, dtype=np.float64)
        split = details["split"]
        if details["layout"] == "left-right":
            tiles = [pixels[:, : int(split) - 6], pixels[:, int(split) + 6 :]]
        elif details["layout"] == "top-bottom":
            tiles = [pixels[: int(split) - 6], pixels[int(split) + 6 :]]
        else:
            x, y = (int(v) for v in split)
            rows, columns = (slice(None, y - 6), slice(y + 6, None)), (slice(None, x - 6), slice(x + 6, None))
            tiles = [pixels[r, c] for r in rows for c in columns]
        tints = np.array([log_tint(tile.reshape(-1, 3)) for tile in tiles])
        first = log_tint(np.asarray(images[sources[0]], dtype=np.float64).reshape(-1, 3))
        assert np.abs(tints - first).max() < 0.03, (details, tints, first)


def test_a_varied_init_keeps_its_sources_white_balance():
    # An init's brightness and contrast jitter is another exposure by the same camera: its tint stays its source's,
    # where PIL's contrast on the channels blends them with grey and moves it (a class told by its tint blurs).
    grey = cv2.GaussianBlur(np.random.default_rng(2).integers(40, 220, (64, 64)).astype(np.float32), (0, 0), 1.5)
    image = Image.fromarray((grey[..., None] * np.array([1.2, 1.0, 0.75])).clip(0, 255).astype(np.uint8))
    source = log_tint(np.asarray(image, dtype=np.float64).reshape(-1, 3))
    moved = []
    for seed in range(8):
        init = varied_init([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], random.Random(seed))
        tint = log_tint(np.asarray(init.image, dtype=np.float64).reshape(-1, 3))
        assert np.abs(tint - source).max() < 0.01, (init.kind, init.details, tint, source)
        channels, _ = photometric_jitter(image, random.Random(seed))
        moved.append(np.abs(log_tint(np.asarray(channels, dtype=np.float64).reshape(-1, 3)) - source).max())
    assert max(moved) > 0.02, "the contrast of PIL's channels would have moved the tint"
    grey_image = Image.fromarray(grey.astype(np.uint8))
    for seed in range(4):
        kept, details = exposure_jitter(grey_image, random.Random(seed))
        plain, plain_details = photometric_jitter(grey_image, random.Random(seed))
        assert details == plain_details and np.array_equal(np.asarray(kept), np.asarray(plain)), "grey as before"


def test_varied_init_mixes_kinds_and_records_lineage():
    images = _images(3)
    rng = random.Random(0)
    inits = [varied_init(images, rng) for _ in range(40)]
    assert {init.kind for init in inits} == {kind for kind, share in DEFAULT_INIT_MIX.items() if share > 0}
    described = inits[0].describe(["a.png", "b.png", "c.png"])
    assert described["kind"] == inits[0].kind and set(described["sources"]) <= {"a.png", "b.png", "c.png"}
    source = next(init for init in inits if init.kind == "source")
    assert np.array_equal(np.asarray(source.image), np.asarray(images[source.sources[0]]))


def test_a_quarter_turn_makes_a_vertical_scratch_horizontal():
    pixels = np.full((48, 64), 90, np.uint8)
    pixels[:, 20:23] = 220
    turned, details = quarter_turn(Image.fromarray(pixels), random.Random(0))
    turned_pixels = np.asarray(turned)
    assert turned.size == (48, 64) and details["turn"] in (90, 270)
    bright_rows = np.flatnonzero(turned_pixels.mean(axis=1) > 200)
    assert len(bright_rows) == 3 and (turned_pixels[bright_rows] == 220).all()
    degrees = {quarter_turn(Image.fromarray(pixels), random.Random(seed))[1]["turn"] for seed in range(20)}
    assert degrees == {90, 270}


def test_varied_init_turns_its_share_of_inits_after_the_same_draws_as_without_turns():
    images = _images(3)
    plain = [varied_init(images, random.Random(seed)) for seed in range(60)]
    turned = [varied_init(images, random.Random(seed), turn_share=1.0) for seed in range(60)]
    for before, after in zip(plain, turned, strict=True):
        assert (after.kind, after.sources) == (before.kind, before.sources)
        turns = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)
        assert np.asarray(after.image).tobytes() in {np.asarray(before.image.transpose(t)).tobytes() for t in turns}
        assert after.details == {**before.details, "turn": after.details["turn"]}
    half = [varied_init(images, random.Random(seed), turn_share=0.5) for seed in range(200)]
    assert 70 < sum("turn" in init.details for init in half) < 130
    assert not any("turn" in init.details for init in plain)
    with pytest.raises(ValueError, match="turned a quarter"):
        varied_init(images, random.Random(0), turn_share=1.5)


def test_a_strip_is_never_turned_a_quarter_so_every_init_keeps_the_cameras_shape():
    rng = np.random.default_rng(3)
    strips = [Image.fromarray(rng.integers(60, 200, (32, 96), dtype=np.uint8)) for _ in range(3)]
    inits = [varied_init(strips, random.Random(seed), turn_share=1.0) for seed in range(30)]
    assert all(init.image.size == (96, 32) and "turn" not in init.details for init in inits)


def test_elastic_warp_bends_a_straight_line_and_keeps_grey_grey():
    pixels = np.full((80, 80), 40, dtype=np.uint8)
    pixels[38:42] = 220  # a horizontal scratch
    image = Image.fromarray(np.stack([pixels] * 3, axis=-1))
    assert np.array_equal(np.asarray(elastic_warp(image, random.Random(0), amplitude=0.0)[0]), np.asarray(image))
    bent = []
    for seed in range(5):
        warped, details = elastic_warp(image, random.Random(seed))
        assert warped.size == image.size and warped.mode == "RGB" and 3 <= details["warp_grid"] <= 4
        rgb = np.asarray(warped)
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        # The line's row, column by column: a warp moves it by a different amount in different places.
        rows = rgb[..., 0].argmax(axis=0)
        bent.append(int(rows.max()) - int(rows.min()))
        assert (rgb[..., 0] > 128).sum() > 0.5 * 4 * 80  # the line is bent, not erased
    assert max(bent) >= 3
    again, _ = elastic_warp(image, random.Random(4))
    assert np.array_equal(np.asarray(again), rgb)
    with pytest.raises(ValueError, match="must not be negative"):
        elastic_warp(image, random.Random(0), amplitude=-0.1)


def test_varied_init_warp_kind_records_its_geometry_and_warp():
    init = varied_init(_images(2), random.Random(0), mix={"warp": 1.0})
    assert init.kind == "warp" and len(init.sources) == 1
    assert {"angle", "crop", "warp_grid", "warp_max_shift", "brightness"} <= set(init.details)


def test_init_mix_parses_shares_and_refuses_unknown_kinds_and_empty_mixes():
    assert parse_init_mix("source=0.1, warp=0.9") == {"source": 0.1, "warp": 0.9}
    for text, message in [
        ("collage=1", "Unknown init kind"),
        ("warp=much", "must be a number"),
        ("warp=-0.5", "must not be negative: warp=-0.5"),
        ("source=0,warp=0", "no kind a positive share"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_init_mix(text)


def test_varied_init_from_one_image_never_makes_a_mosaic():
    rng = random.Random(0)
    assert {varied_init(_images(1), rng).kind for _ in range(30)} <= {"source", "geometric"}
    with pytest.raises(ValueError, match="Unknown init kind"):
        varied_init(_images(2), rng, mix={"collage": 1.0})
    with pytest.raises(ValueError, match="at least one image"):
        varied_init([], rng)


def test_pixel_grain_measures_noise_and_not_smooth_structure():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(40, 200, 96, dtype=np.float32), (96, 1))
    ramp[40:44] = 240  # a bright line: an edge, not grain
    for sigma in (1.5, 4.0, 8.0):
        noisy = Image.fromarray((ramp + rng.normal(0, sigma, ramp.shape)).clip(0, 255).round().astype(np.uint8))
        assert pixel_grain(noisy) == pytest.approx(sigma, rel=0.25)
    assert pixel_grain(Image.fromarray(ramp.astype(np.uint8))) < 1.0
    assert grain_range([Image.fromarray(ramp.astype(np.uint8)).convert("RGB"), noisy])[1] == pixel_grain(noisy)


def test_capture_variation_brings_a_render_to_its_class_grain_keeps_grey_grey_and_is_off_at_zero():
    smooth = cv2.GaussianBlur(np.random.default_rng(3).integers(60, 200, (64, 64)).astype(np.float32), (0, 0), 3)
    image = Image.fromarray(np.stack([smooth.round().astype(np.uint8)] * 3, axis=-1))
    assert capture_variation(image, random.Random(0), (4.0, 6.0), 0.0) == (image, {})
    draws = [capture_variation(image, random.Random(seed), (4.0, 6.0)) for seed in range(8)]
    again, details = capture_variation(image, random.Random(5), (4.0, 6.0))
    assert np.array_equal(np.asarray(again), np.asarray(draws[5][0])) and details == draws[5][1]
    for varied, details in draws:
        pixels = np.asarray(varied)
        assert varied.mode == "RGB" and varied.size == image.size
        assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
        assert 0.75 <= details["brightness"] <= 1.25 and 4.0 <= details["grain"] <= 6.0
        # The smooth render gets the grain drawn for it (the clip at 0 and 255 takes a little).
        assert pixel_grain(varied) == pytest.approx(details["grain"], rel=0.2)
    # A render already as grainy as its class gets no noise: only its exposure changes.
    grainy = Image.fromarray(np.random.default_rng(4).normal(128, 9, (64, 64)).clip(0, 255).astype(np.uint8))
    varied, details = capture_variation(grainy, random.Random(1), (1.0, 2.0))
    assert "noise" not in details and pixel_grain(varied) == pytest.approx(pixel_grain(grainy), rel=0.3)
    with pytest.raises(ValueError, match="negative"):
        capture_variation(image, random.Random(0), (4.0, 6.0), -0.5)


def test_an_exposure_or_capture_keeps_a_colour_images_tint_and_a_grey_image_bit_for_bit():
    from engine.generation.class_stats import grey_exposure, pool_exposure

    rng = np.random.default_rng(6)
    grey = cv2.GaussianBlur(rng.integers(90, 200, (64, 64)).astype(np.float32), (0, 0), 2)
    tinted = Image.fromarray((grey[..., None] * np.array([1.25, 1.0, 0.6])).clip(0, 255).astype(np.uint8))

    def tint(image: Image.Image) -> np.ndarray:
        red, green, blue = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return np.array([red / green, blue / green])

    for exposure in ([40.0, 12.0], [150.0, 20.0]):
        exposed, _ = pool_exposure(tinted, random.Random(0), [exposure], share=1.0)
        assert grey_exposure(exposed) == pytest.approx(exposure, abs=2.5), "the grey levels take the exposure"
        assert tint(exposed) == pytest.approx(tint(tinted), abs=0.05), "a darker or brighter capture, the same tint"
    for seed in range(6):
        varied, details = capture_variation(tinted, random.Random(seed), (2.0, 4.0))
        assert varied.mode == "RGB" and details["brightness"] != 1.0
        assert tint(varied) == pytest.approx(tint(tinted), abs=0.05)
    # A grey image's grey levels map exactly as before the colour was kept: (x - mean) * gain + target, rounded.
    plain = Image.fromarray(grey.round().astype(np.uint8))
    exposed, _ = pool_exposure(plain, random.Random(0), [[80.0, 20.0]], share=1.0)
    mean, std = grey_exposure(plain)
    expected = np.clip((np.asarray(plain, dtype=np.float32) - mean) * (20.0 / std) + 80.0 + 0.5, 0, 255)
    assert exposed.mode == "L" and np.array_equal(np.asarray(exposed), expected.astype(np.uint8))


def test_a_colour_class_gets_tints_with_its_own_images_spread_and_a_grey_one_none():
    grey = cv2.GaussianBlur(np.random.default_rng(7).integers(70, 190, (48, 48)).astype(np.float32), (0, 0), 2)
    gains = [(1.10, 1.0, 0.80), (1.00, 1.0, 0.90), (1.20, 1.0, 0.85), (1.05, 1.0, 0.95)]
    images = [Image.fromarray((grey[..., None] * np.array(g)).clip(0, 255).astype(np.uint8)) for g in gains]
    red, blue = tint_spread(images)
    assert red == pytest.approx(np.log([g[0] for g in gains]).std(ddof=1), abs=0.01)
    assert blue == pytest.approx(np.log([g[2] for g in gains]).std(ddof=1), abs=0.01)
    assert tint_spread([image.convert("L") for image in images]) == (0.0, 0.0) and tint_spread(images[:1]) == (0.0, 0.0)

    def log_red_green(image: Image.Image) -> float:
        mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return float(np.log(mean[0] / mean[1]))

    sample = images[0]
    draws = [tint_variation(sample, random.Random(seed), (red, blue)) for seed in range(40)]
    shifts = [log_red_green(image) - log_red_green(sample) for image, _ in draws]
    assert np.std(shifts) == pytest.approx(red, rel=0.35), "the samples' tints spread as the class's images do"
    for image, details in draws:
        assert image.mode == "RGB" and len(details["tint"]) == 2
        luminance = np.asarray(image.convert("L"), dtype=np.float64).mean()
        assert luminance == pytest.approx(np.asarray(sample.convert("L"), dtype=np.float64).mean(), abs=1.5)
    assert tint_variation(sample.convert("L"), random.Random(0), (red, blue))[1] == {}
    assert tint_variation(sample, random.Random(0), (0.0, 0.0)) == (sample, {})
    assert tint_variation(sample, random.Random(0), (red, blue), amount=0.0) == (sample, {})


def test_a_defects_colour_is_measured_against_its_own_steel_under_any_white_balance():
    grey = cv2.GaussianBlur(np.random.default_rng(3).integers(80, 180, (40, 40)).astype(np.float32), (0, 0), 2)
    mask = np.zeros((40, 40), dtype=bool)
    mask[8:20, 10:30] = True
    rust = np.where(mask[..., None], np.array([1.3, 0.95, 0.7]), 1.0)
    pairs = [
        ((grey[..., None] * rust * np.array(balance)).clip(0, 255).astype(np.uint8), mask)
        for balance in [(1.1, 1.0, 0.85), (0.9, 1.0, 1.1)]
    ]
    red, blue = defect_tint(pairs)
    assert red == pytest.approx(np.log(1.3 / 0.95), abs=0.02) and blue == pytest.approx(np.log(0.7 / 0.95), abs=0.02)
    slab = Image.fromarray(pairs[1][0])
    painted = with_white_balance(slab, np.exp(red), np.exp(blue))
    before, after = (np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0) for image in (slab, painted))
    assert np.log(after[0] / after[1]) - np.log(before[0] / before[1]) == pytest.approx(red, abs=0.03)
    luminance = [np.asarray(image.convert("L"), dtype=np.float64) for image in (slab, painted)]
    assert np.abs(luminance[1] - luminance[0]).max() <= 1.5, "a white balance keeps the luminance"
    greys = [(np.repeat(grey[..., None], 3, axis=2).astype(np.uint8), mask)]
    assert defect_tint(greys) is None, "grey images tell no colour"
    assert defect_tint([(pairs[0][0], None)]) is None, "nor do images without a defect mask"
    assert defect_tint([(pairs[0][0], np.ones_like(mask))]) is None, "nor a mask that leaves no steel around it"


def _pitted(rng: np.random.Generator, colour_on_structure: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 60 px grey slab with dark pits in its left half (the mask), coloured rust on the pits or evenly."""
    grey = rng.normal(150, 3, (60, 60))
    mask = np.zeros((60, 60), dtype=bool)
    mask[:, :30] = True
    for y, x in rng.integers(4, 26, (8, 2)):
        grey[2 * y - 4 : 2 * y + 4, x - 4 : x + 4] = 100
    weight = np.abs(grey - 150) / np.abs(grey - 150)[mask].mean() if colour_on_structure else np.ones_like(grey)
    gains = np.array([1.3, 1.0, 0.75]) ** (weight * mask)[..., None]
    return (grey[..., None] * gains).clip(0, 255).astype(np.uint8), mask


def test_where_a_defects_colour_lies_is_measured_and_painted_there():
    rng = np.random.default_rng(5)
    on_pits, stains = ([_pitted(rng, on) for _ in range(3)] for on in (True, False))
    assert defect_colour_structure(on_pits) > 0.7, "rust on the pits, not on the steel between them"
    assert defect_colour_structure(stains) < 0.1, "a stain over the whole mask"
    grey_pairs = [
        (np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8), m) for pixels, m in on_pits
    ]
    assert defect_colour_structure(grey_pairs) is None and defect_colour_structure([(on_pits[0][0], None)]) is None

    pixels, mask = on_pits[0]
    grey = pixels[..., 1].astype(np.float32)  # green: the slab's grey levels (its gain is 1)
    weights = structure_weights(grey, 150.0, mask.astype(np.float32))
    assert weights[mask].mean() == pytest.approx(1.0, abs=1e-3) and weights[grey < 120].min() > 1.5
    assert np.array_equal(structure_weights(np.full((8, 8), 150.0), 150.0, np.ones((8, 8))), np.ones((8, 8)))

    # Painting: a window whose model drew dark pits in the mask, on a plain slab.
    painted = Image.fromarray(np.repeat(grey[..., None], 3, axis=2).astype(np.uint8))
    slab = Image.new("RGB", (60, 60), (150, 150, 150))
    tint = [0.26, -0.29]
    even = defect_colour_gains(tint, None, painted, slab, mask.astype(np.float32))
    assert np.allclose(np.log(even[0]), tint[0]) and np.allclose(np.log(even[1]), tint[1])
    red, blue = defect_colour_gains(tint, 1.0, painted, slab, mask.astype(np.float32))
    assert np.log(red)[grey < 120].min() > 1.5 * tint[0] and np.log(blue)[grey < 120].max() < 1.5 * tint[1]
    coloured = np.asarray(with_white_balance(painted, red, blue), dtype=np.float64)
    coloured = np.where(mask[..., None], coloured, np.asarray(painted, dtype=np.float64))  # pasted through the mask
    measured = defect_tint([(coloured.astype(np.uint8), mask)])
    assert measured == pytest.approx(tint, abs=0.03), "the mask's mean colour is the learnt one"
    assert np.log(coloured[..., 0] / coloured[..., 2])[grey < 120].mean() > 1.0, "the pits are painted rust"
    steel = mask & (grey > 140)
    assert np.median(np.log(coloured[..., 0] / coloured[..., 2])[steel]) < 0.1, "most steel between them hardly"


def test_overlay_keeps_the_defects_of_both_sources_at_full_contrast():
    bright_line, dark_spot = np.full((80, 80), 100, np.uint8), np.full((80, 80), 100, np.uint8)
    bright_line[38:42] = 230
    dark_spot[10:70, 60:70] = 10
    images = [Image.fromarray(bright_line), Image.fromarray(dark_spot)]
    for seed in range(4):
        image, sources, details = overlay(images, random.Random(seed), min_scale=1.0)
        assert image.size == (80, 80) and image.mode == "L" and sorted(sources) == [0, 1]
        pixels = np.asarray(image)
        # Both defects survive the overlay nearly as bright and as dark as they were (a blend would halve them).
        assert pixels.max() > 200 and pixels.min() < 50 and 0 < details["second_share"] < 1
    first, _, _ = overlay(images, random.Random(5))
    assert np.array_equal(np.asarray(first), np.asarray(overlay(images, random.Random(5))[0]))
    with pytest.raises(ValueError, match="at least two"):
        overlay(images[:1], random.Random(0))


def test_varied_init_overlay_kind_records_both_sources_and_keeps_colour():
    images = [image.convert("RGB") for image in _images(3)]
    init = varied_init(images, random.Random(0), {"overlay": 1.0})
    assert init.kind == "overlay" and len(set(init.sources)) == 2 and init.image.mode == "RGB"
    assert "second_share" in init.details
    assert varied_init(images[:1], random.Random(0), {"overlay": 1.0}).kind == "geometric"
