"""Varied inits for image-oriented generation: new layouts from a class's few real images.

img2img at a moderate strength keeps its init's layout, so samples made from five images are five layouts
with new noise. Varying the init first gives the prior new layouts to render, and every sample still starts
from real pixels with a strength, as in StableSDG:
- geometric: a crop rescaled to full size, a small rotation and mirrors of one real image, with a mild
  brightness/contrast jitter of the luminance (classic augmentation's transforms, before the prior redraws the
  image; a colour init keeps its source's white balance);
- mosaic: two or four real images of the class, each a geometric variant, cut into halves or quadrants at a
  random split, brought to one grey level, contrast and white balance and joined with feathered seams, so one
  init carries defects of several images in new places (jittered like a geometric variant);
- warp: a geometric variant bent by a smooth random displacement field (an elastic warp), so a scratch curves,
  a patch changes its outline and a crazing network stretches: layouts no rigid transform reaches;
- overlay: geometric variants of two real images laid over each other, each pixel taken mostly from the one that
  departs further from the common grey level, so the defects of both appear at full contrast in one init;
- source: the real image as it is.
Any of them can then be turned a quarter (`quarter_turn`), for a defect that runs in any direction while the class's
few images all show one (NEU's scratches are vertical in about 70 % of its images and horizontal in the rest).
Only PIL, numpy and OpenCV: the service and the CLI make inits without touching the model.

`capture_variation` varies a finished sample the way another capture by the same camera would: its exposure, and
its pixel-scale grain brought to that of the class's real images (`pixel_grain`), which the render loses.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from engine.data import is_grayscale

INIT_KINDS = ("source", "geometric", "mosaic", "warp", "overlay")
# Share of each kind in a varied batch. Mosaics and overlays need two or more sources; with one, their share goes
# to geometric. Mosaics make the most new layouts: at 0.6 instead of 0.4 (geometric 0.2 instead of 0.4) the samples
# lie further from their shots on every draw measured, with the recognizer level (`docs/results.md`, "More mosaics").
DEFAULT_INIT_MIX = {"source": 0.2, "geometric": 0.2, "mosaic": 0.6}
# Width of the blend between mosaic tiles, as a share of the image side.
SEAM_SHARE = 0.06
# Pixels a sharp geometric variant's crop keeps from the rotated frame's edge: the reach of the bicubic rotation
# (2) and of the Lanczos resize (3).
SHARP_MARGIN_PX = 5
# Elastic warp: control points per side (drawn in this range) and the displacements' spread, as a share of the side.
WARP_GRID = (3, 5)
WARP_AMPLITUDE = 0.03
# Overlay: how sharply a pixel goes to the image departing further from the grey level (per grey level of the
# difference), and the blur of that choice, as a share of the image side, so it follows defects, not single grains.
OVERLAY_SHARPNESS = 0.15
OVERLAY_SMOOTHING = 0.01
# A colour pixel brightened by an exposure keeps its colour, but a near-black one's tint (mostly JPEG noise) is not
# amplified beyond this factor.
MAX_CHROMA_GAIN = 4.0
# A defect mask's share of its image from which its colour against the steel around it counts (`defect_tint`): a
# few pixels' mean is JPEG noise, and a mask over nearly all of the image leaves no steel to compare with.
DEFECT_SHARE_RANGE = (0.005, 0.9)
# Where a defect's colour lies inside its mask (`structure_weights`, `defect_colour_structure`): a pixel's departure
# from the steel's grey level, both measured after a blur of this σ (px), the scale of a JPEG's colour; a weight is
# at most this many times the mask's mean; a class's defects whose colour against their steel is less than this
# (log units, R/G and B/G together) have none whose place could be told.
STRUCTURE_SIGMA = 1.5
MAX_STRUCTURE_WEIGHT = 4.0
MIN_STRUCTURED_TINT = 0.03
# A colour laid on a defect's structure is scaled (at most this much, in this many steps) until the mask's mean colour
# is the learnt one.
MAX_COLOUR_SCALE = 3.0
COLOUR_SCALE_ITERATIONS = 3
# Immerkær's noise estimation kernel (`pixel_grain`).
GRAIN_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


@dataclass
class VariedInit:
    """One init image and how it was made from the sources (indices into the list it was made from)."""

    image: Image.Image
    kind: str
    sources: list[int]
    details: dict = field(default_factory=dict)

    def describe(self, names: list[str] | None = None) -> dict:
        """The init's lineage for a sample's metadata: kind, source names (or indices) and parameters."""
        sources = [names[i] for i in self.sources] if names else list(self.sources)
        return {"kind": self.kind, "sources": sources, **self.details}


def geometric_variant(
    image: Image.Image, rng: random.Random, min_scale: float = 0.6, max_angle: float = 10.0, sharp: bool = False
) -> tuple[Image.Image, dict]:
    """Rotate by up to ±`max_angle`°, crop `min_scale`–1 of each side (the image's own shape, so nothing is
    stretched) inside the rotated frame, rescale it to the image's size and mirror it at random; returns (image,
    parameters).

    Resampling is bilinear, as classic augmentation's usually is; `sharp` resamples bicubic and Lanczos instead,
    so the steel's pixel-scale grain survives in an init the prior redraws (bilinear resampling at a sub-pixel
    offset halves the finest grain). The random draws are made in this order (angle, side, left, top, h-flip,
    v-flip), which classic augmentation relies on to stay reproducible.
    """
    width, height = image.size
    angle = rng.uniform(-max_angle, max_angle)
    rotate_with, resize_with = (
        (Image.Resampling.BICUBIC, Image.Resampling.LANCZOS) if sharp else (Image.Resampling.BILINEAR,) * 2
    )
    rotated = image.rotate(angle, resample=rotate_with)
    cos, sin = math.cos(math.radians(abs(angle))), math.sin(math.radians(abs(angle)))
    # The largest crop of the image's own shape that, centred, lies inside the rotated frame; sharp resampling
    # keeps its filters' reach away from the fill the rotation leaves in the corners.
    inner_width, inner_height = (
        (width - 2 * SHARP_MARGIN_PX, height - 2 * SHARP_MARGIN_PX) if sharp else (width, height)
    )
    fit = min(inner_width / (width * cos + height * sin), inner_height / (width * sin + height * cos))
    scale = min(rng.uniform(min_scale, 1.0), fit)
    crop_width, crop_height = width * scale, height * scale
    margin_x, margin_y = width * (1 - fit) / 2, height * (1 - fit) / 2
    left = rng.uniform(margin_x, width - margin_x - crop_width)
    top = rng.uniform(margin_y, height - margin_y - crop_height)
    box = (left, top, left + crop_width, top + crop_height)
    result = rotated.resize((width, height), resize_with, box=box)
    flip_x, flip_y = rng.random() < 0.5, rng.random() < 0.5
    if flip_x:
        result = result.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip_y:
        result = result.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    details = {
        "angle": round(angle, 2),
        "crop": [round(left, 1), round(top, 1), round(crop_width, 1), round(crop_height, 1)],
        "flip_x": flip_x,
        "flip_y": flip_y,
    }
    return result, details


def quarter_turn(image: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    """Turn `image` a quarter, 90° or 270° at random; returns (image, {"turn": degrees counter-clockwise})."""
    degrees = rng.choice((90, 270))
    turned = image.transpose(Image.Transpose.ROTATE_90 if degrees == 90 else Image.Transpose.ROTATE_270)
    return turned, {"turn": degrees}


def check_turn_share(share: float) -> float:
    """`share` if it is a share of inits to turn (0–1); else a readable ValueError."""
    if not 0 <= share <= 1:
        raise ValueError(f"The share of inits turned a quarter must be in [0, 1], got {share}.")
    return share


def photometric_jitter(image: Image.Image, rng: random.Random, amount: float = 0.15) -> tuple[Image.Image, dict]:
    """Brightness, then contrast, each scaled by a factor within 1 ± `amount`; returns (image, factors)."""
    brightness = rng.uniform(1 - amount, 1 + amount)
    contrast = rng.uniform(1 - amount, 1 + amount)
    image = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(brightness)).enhance(contrast)
    return image, {"brightness": round(brightness, 3), "contrast": round(contrast, 3)}


def exposure_jitter(image: Image.Image, rng: random.Random, amount: float = 0.15) -> tuple[Image.Image, dict]:
    """`photometric_jitter` on the luminance, as another exposure by one camera: a colour image keeps each pixel's
    colour (`with_grey_levels`), where PIL's contrast on the channels would blend them with grey and move the white
    balance; a grey image comes out as `photometric_jitter` gives it."""
    grey, details = photometric_jitter(image.convert("L"), rng, amount)
    return with_grey_levels(image, np.asarray(grey, dtype=np.float32)), details


def with_grey_levels(image: Image.Image, grey: np.ndarray) -> Image.Image:
    """`image` with its luminance set to `grey` (H×W floats), in its own mode. A colour pixel keeps its colour: its
    channels' departures from its luminance scale with the luminance (by at most MAX_CHROMA_GAIN), as a camera's
    exposure scales every channel alike; mapping the channels like the grey levels would shift a dark sample's tint."""
    if image.mode == "L":
        return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    own = np.asarray(image.convert("L"), dtype=np.float32)
    gain = np.clip(grey / np.maximum(own, 1.0), 0.0, MAX_CHROMA_GAIN)
    pixels = grey[..., None] + (pixels - own[..., None]) * gain[..., None]
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)).convert(image.mode)


def pixel_grain(image: Image.Image) -> float:
    """The image's pixel-scale grain in grey levels: Immerkær's fast estimate of the noise σ of its luminance.

    The kernel is the difference of two Laplacians, so edges and gradients hardly move it. NEU's inclusions and
    scratches measure about 1.5, pitted surfaces 2.2, rolled-in scale 4.2, patches 6.5 and crazing 7.4.
    """
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    if min(grey.shape) < 3:
        return 0.0
    response = cv2.filter2D(grey, -1, GRAIN_KERNEL)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(response).mean() / 6)


def grain_range(images: list[Image.Image]) -> tuple[float, float]:
    """The smallest and largest `pixel_grain` of the images (a class's real ones: its camera's grain)."""
    if not images:
        raise ValueError("A grain range needs at least one image.")
    grains = [pixel_grain(image) for image in images]
    return min(grains), max(grains)


def capture_variation(
    image: Image.Image, rng: random.Random, grain: tuple[float, float], amount: float = 1.0
) -> tuple[Image.Image, dict]:
    """Another capture by the same camera, scaled by `amount` (0: unchanged); returns (image, details).

    Brightness and contrast factors within 1 ± 0.25 × `amount` (on the luminance; a colour image keeps each pixel's
    colour, `with_grey_levels`); then luminance noise (one plane for every channel,
    so grey stays grey) that brings the image's `pixel_grain` to a σ drawn in `grain`, the range of the class's
    real images. A render loses pixel grain to its init's zoom and the autoencoder, and grain is part of what tells
    a class: noise of one fixed strength would give a smooth class the grain of a rough one.
    """
    if amount < 0:
        raise ValueError(f"The capture variation must not be negative, got {amount}.")
    if amount == 0:
        return image, {}
    image, details = exposure_jitter(image, rng, 0.25 * amount)
    target = rng.uniform(*grain)
    sigma = math.sqrt(max(target**2 - pixel_grain(image) ** 2, 0.0))
    details["grain"] = round(target, 2)
    if sigma > 0:
        pixels = np.asarray(image, dtype=np.float32)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, pixels.shape[:2]).astype(np.float32)
        pixels = pixels + (noise if pixels.ndim == 2 else noise[..., None])
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)).convert(image.mode)
        details["noise"] = round(sigma, 2)
    return image, details


def log_tint(colours: np.ndarray) -> np.ndarray:
    """The white balance of N×3 RGB values: log(R/G) and log(B/G) of their mean colour (each channel + 1)."""
    red, green, blue = np.log(colours.mean(axis=0) + 1.0)
    return np.array([red - green, blue - green])


def tint_spread(images: list[Image.Image]) -> tuple[float, float]:
    """How far the images' white balance spreads: the standard deviations of log(R/G) and log(B/G) of their mean
    colours; (0, 0) for grey images or fewer than two."""
    if len(images) < 2:
        return 0.0, 0.0
    ratios = np.stack([log_tint(np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)) for image in images])
    red, blue = ratios.std(axis=0, ddof=1)
    return float(red), float(blue)


def tint_variation(
    image: Image.Image, rng: random.Random, spread: tuple[float, float], amount: float = 1.0
) -> tuple[Image.Image, dict]:
    """Another white balance: red and blue gains relative to green drawn log-normal with `spread` × `amount` (the
    class's images' own, `tint_spread`), the luminance kept; returns (image, {"tint": [red, blue]} or {}). A grey
    image, or a class whose images all share one tint, is returned as it is."""
    if image.mode == "L" or amount == 0 or not any(spread):
        return image, {}
    red, blue = (math.exp(rng.gauss(0.0, amount * sigma)) for sigma in spread)
    return with_white_balance(image, red, blue), {"tint": [round(red, 4), round(blue, 4)]}


def with_white_balance(image: Image.Image, red: float | np.ndarray, blue: float | np.ndarray) -> Image.Image:
    """`image` with its red and blue channels scaled by `red` and `blue` relative to green (numbers, or H×W arrays
    of one gain per pixel), its luminance kept."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    gains = np.stack(np.broadcast_arrays(np.float32(red), np.float32(1.0), np.float32(blue)), axis=-1)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * gains.astype(np.float32)
    tinted = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    return with_grey_levels(tinted, grey).convert(image.mode)


def defect_tint(images: list[tuple[np.ndarray, np.ndarray | None]]) -> list[float] | None:
    """How a class's defects differ in colour from the steel around them, from (H×W×3 uint8 pixels, bool defect mask)
    pairs: the mean over its colour images whose mask covers between DEFECT_SHARE_RANGE of the image of log(R/G) and
    log(B/G) of the mean colour inside the mask minus outside it; None when no image qualifies (grey images, no
    masks, masks that leave no steel around the defect).

    Relative to the steel around it, so that it holds under another white balance: a rust defect on a slab of
    another capture is as much redder than that slab as the class's defects are than theirs.
    """
    offsets = []
    for pixels, mask in images:
        if mask is None or pixels.ndim != 3:
            continue
        share = float(mask.mean())
        if not DEFECT_SHARE_RANGE[0] <= share <= DEFECT_SHARE_RANGE[1] or is_grayscale(Image.fromarray(pixels)):
            continue
        channels = np.asarray(pixels, dtype=np.float64)
        offsets.append(log_tint(channels[mask]) - log_tint(channels[~mask]))
    if not offsets:
        return None
    return [round(float(value), 4) for value in np.mean(offsets, axis=0)]


def steel_level(grey: np.ndarray, mask: np.ndarray) -> float:
    """The steel's grey level beside a defect mask (bool H×W): the median luminance outside it (of the whole image
    where the mask covers all of it)."""
    return float(np.median(grey[~mask] if not mask.all() else grey))


def structure_weights(grey: np.ndarray, steel_level: float, weights: np.ndarray) -> np.ndarray:
    """Where a defect is in its mask: each pixel's departure of its luminance (H×W, blurred over STRUCTURE_SIGMA) from
    the steel's grey level, as a multiple of its mean over the mask (`weights`, H×W in [0, 1]; capped at about
    MAX_STRUCTURE_WEIGHT, the mean kept at 1); ones where the mask is empty or nothing departs."""
    departure = np.abs(cv2.GaussianBlur(grey.astype(np.float32), (0, 0), STRUCTURE_SIGMA) - steel_level)
    total = float(weights.sum())
    mean = float((departure * weights).sum()) / total if total > 0 else 0.0
    if mean < 1e-3:
        return np.ones_like(departure)
    capped = np.minimum(departure / mean, MAX_STRUCTURE_WEIGHT)
    return capped * total / float((capped * weights).sum())


def defect_colour_structure(images: list[tuple[np.ndarray, np.ndarray | None]]) -> float | None:
    """How far a class's defect colour follows the defect rather than filling its mask, from the pairs `defect_tint`
    reads: inside every mask, each pixel's colour against its steel (log R/G, log B/G after a blur of
    STRUCTURE_SIGMA, minus the steel's outside the mask) regressed on its `structure_weights` (the steel's level: the
    median luminance outside the mask); the share of the mean colour that the slope carries, in [0, 1]. 0: the colour
    fills the mask evenly (a stain); 1: it lies on what departs from the steel (rust on a pit). None where no image
    qualifies or the colour is below MIN_STRUCTURED_TINT."""
    weights, colours = [], []
    for pixels, mask in images:
        if mask is None or pixels.ndim != 3:
            continue
        if not DEFECT_SHARE_RANGE[0] <= float(mask.mean()) <= DEFECT_SHARE_RANGE[1]:
            continue
        if is_grayscale(Image.fromarray(pixels)):
            continue
        channels = np.asarray(pixels, dtype=np.float32)
        grey = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float32)
        blurred = np.log(cv2.GaussianBlur(channels, (0, 0), STRUCTURE_SIGMA) + 1.0)
        ratios = np.stack([blurred[..., 0] - blurred[..., 1], blurred[..., 2] - blurred[..., 1]], axis=-1)
        steel = log_tint(channels[~mask].astype(np.float64))
        weights.append(structure_weights(grey, steel_level(grey, mask), mask.astype(np.float32))[mask])
        colours.append(ratios[mask] - steel)
    if not weights:
        return None
    weight, colour = np.concatenate(weights), np.concatenate(colours)
    mean = colour.mean(axis=0)
    if np.hypot(*mean) < MIN_STRUCTURED_TINT or weight.var() == 0:
        return None
    slope = ((weight - weight.mean())[:, None] * (colour - mean)).mean(axis=0) / weight.var()
    return round(float(np.clip(slope @ mean / (mean @ mean), 0.0, 1.0)), 3)


def defect_colour_gains(
    tint: list[float], structure: float | None, painted: Image.Image, slab: Image.Image, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel red and blue gains (relative to green) that paint a defect in its colour `tint` on a window:
    `structure` (`defect_colour_structure`) of it on what departs from the slab's grey level in the painted window
    (`structure_weights` over the mask `weights`), the rest evenly, so that the mask's mean colour is `tint`."""
    share = structure or 0.0
    if share <= 0:
        return np.full(weights.shape, math.exp(tint[0])), np.full(weights.shape, math.exp(tint[1]))
    level = float(np.median(np.asarray(slab.convert("L"), dtype=np.float32)))
    amount = (1.0 - share) + share * structure_weights(
        np.asarray(painted.convert("L"), dtype=np.float32), level, weights
    )
    # Colour laid on dark pixels moves the mask's mean colour (which `defect_tint` measures, by luminance) less than
    # on bright ones: scale each channel's until the mean moves by `tint`.
    inside = weights > 0.5
    target = np.asarray(tint, dtype=np.float64)
    scale = np.ones(2)
    if inside.any():
        before = log_tint(np.asarray(painted.convert("RGB"), dtype=np.float64)[inside])
        for _ in range(COLOUR_SCALE_ITERATIONS):
            red, blue = (np.exp(target[c] * scale[c] * amount) for c in (0, 1))
            coloured = np.asarray(with_white_balance(painted, red, blue), dtype=np.float64)[inside]
            moved = np.divide(log_tint(coloured) - before, target, out=np.ones(2), where=np.abs(target) > 1e-6)
            scale = np.clip(scale / np.maximum(moved, 1e-6), 1.0, MAX_COLOUR_SCALE)
    return np.exp(target[0] * scale[0] * amount), np.exp(target[1] * scale[1] * amount)


def elastic_warp(image: Image.Image, rng: random.Random, amplitude: float = WARP_AMPLITUDE) -> tuple[Image.Image, dict]:
    """Bend `image` by a smooth random displacement field; returns (image, parameters).

    A grid of 3-4 control points per side gets displacements of spread `amplitude` × the image side, which are
    interpolated bicubically to every pixel; the image is resampled there, mirrored at its edges.
    """
    if amplitude < 0:
        raise ValueError(f"The warp amplitude must not be negative, got {amplitude}.")
    width, height = image.size
    grid = rng.randrange(*WARP_GRID)
    sigma = amplitude * min(width, height)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, (2, grid, grid)).astype(np.float32)
    shift_x, shift_y = (cv2.resize(n, (width, height), interpolation=cv2.INTER_CUBIC) for n in noise)
    columns, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    pixels = cv2.remap(
        np.asarray(image), columns + shift_x, rows + shift_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    details = {"warp_grid": grid, "warp_max_shift": round(float(np.hypot(shift_x, shift_y).max()), 1)}
    return Image.fromarray(pixels, mode=None).convert(image.mode), details


def _ramp(length: int, split: float, seam: float) -> np.ndarray:
    """0 before `split`, 1 after it, a linear blend `seam` pixels wide around it."""
    positions = np.arange(length, dtype=np.float32) + 0.5
    return np.clip((positions - split) / max(seam, 1.0) + 0.5, 0.0, 1.0)


def _variants_at_one_level(
    images: list[Image.Image], chosen: list[int], rng: random.Random, min_scale: float, axis: tuple | None = None
) -> list[np.ndarray]:
    """Geometric variants of the `chosen` images at the first's size and mode, as float arrays brought to the
    first's grey level, contrast and white balance, so a seam or an overlay joins textures, not two captures (one
    capture has one exposure and one white balance). `axis`: the axes the level and contrast are taken over (None:
    every pixel and channel together, then each colour channel scaled to the first's mean, as a white balance
    scales it; (0, 1): each channel)."""
    base = images[chosen[0]]
    variants = []
    for index in chosen:
        variant, _ = geometric_variant(images[index].convert(base.mode).resize(base.size), rng, min_scale, sharp=True)
        variants.append(np.asarray(variant, dtype=np.float32))
    mean, std = variants[0].mean(axis=axis), variants[0].std(axis=axis)
    levelled = [mean + (v - v.mean(axis=axis)) * (std / np.maximum(v.std(axis=axis), 1e-3)) for v in variants]
    if levelled[0].ndim == 2 or axis is not None:
        return levelled
    channel_means = levelled[0].mean(axis=(0, 1))
    gains = [
        np.clip(channel_means / np.maximum(v.mean(axis=(0, 1)), 1e-3), 1 / MAX_CHROMA_GAIN, MAX_CHROMA_GAIN)
        for v in levelled
    ]
    return [v * gain for v, gain in zip(levelled, gains, strict=True)]


def mosaic(
    images: list[Image.Image], rng: random.Random, min_scale: float = 0.6
) -> tuple[Image.Image, list[int], dict]:
    """Two or four geometric variants of different images joined at a random split; returns (image, sources, details).

    The canvas has the first chosen image's size and mode; the others are resized to it before cutting, so
    every tile keeps the pixel scale of its own image.
    """
    if len(images) < 2:
        raise ValueError("A mosaic needs at least two images.")
    tiles = 4 if len(images) >= 4 and rng.random() < 0.5 else 2
    chosen = rng.sample(range(len(images)), tiles)
    base = images[chosen[0]]
    width, height = base.size
    variants = _variants_at_one_level(images, chosen, rng, min_scale)
    split_x = rng.uniform(0.3, 0.7) * width
    split_y = rng.uniform(0.3, 0.7) * height
    seam = SEAM_SHARE * min(width, height)
    ramp_x = _ramp(width, split_x, seam)[None, :]
    ramp_y = _ramp(height, split_y, seam)[:, None]
    if tiles == 2:
        vertical = rng.random() < 0.5
        alpha = np.broadcast_to(ramp_x if vertical else ramp_y, (height, width))
        weights = [1.0 - alpha, alpha]
        details = {
            "layout": "left-right" if vertical else "top-bottom",
            "split": round(split_x if vertical else split_y, 1),
        }
    else:
        weights = [(1 - ramp_y) * (1 - ramp_x), (1 - ramp_y) * ramp_x, ramp_y * (1 - ramp_x), ramp_y * ramp_x]
        details = {"layout": "quadrants", "split": [round(split_x, 1), round(split_y, 1)]}
    canvas = np.zeros_like(variants[0])
    for variant, weight in zip(variants, weights, strict=True):
        canvas += variant * (weight if variant.ndim == 2 else weight[..., None])
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), mode=None)
    return image.convert(base.mode), chosen, details


def overlay(
    images: list[Image.Image], rng: random.Random, min_scale: float = 0.6
) -> tuple[Image.Image, list[int], dict]:
    """Geometric variants of two different images laid over each other; returns (image, sources, details).

    Both are brought to the first's grey level and contrast; each pixel then comes mostly from the variant that
    departs further from that level there (a soft choice, smoothed over a few pixels), so a scratch of one and
    the inclusions of the other both keep their contrast, and the background stays one texture.
    """
    if len(images) < 2:
        raise ValueError("An overlay needs at least two images.")
    chosen = rng.sample(range(len(images)), 2)
    base = images[chosen[0]]
    first, second = _variants_at_one_level(images, chosen, rng, min_scale, axis=(0, 1))
    level = first.mean(axis=(0, 1))
    departure = [np.abs(v - level) if v.ndim == 2 else np.abs(v - level).mean(axis=-1) for v in (first, second)]
    margin = cv2.GaussianBlur(departure[1] - departure[0], (0, 0), OVERLAY_SMOOTHING * min(base.size))
    weight = 1.0 / (1.0 + np.exp(-OVERLAY_SHARPNESS * margin))
    share = weight if first.ndim == 2 else weight[..., None]
    pixels = first * (1 - share) + second * share
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mode=None).convert(base.mode)
    return image, chosen, {"second_share": round(float(weight.mean()), 3)}


def check_init_mix(mix: dict[str, float]) -> dict[str, float]:
    """`mix` if it names only known kinds, with shares ≥ 0 and at least one > 0; else a readable ValueError."""
    if unknown := sorted(set(mix) - set(INIT_KINDS)):
        raise ValueError(f"Unknown init kind(s) {', '.join(unknown)}; choose from {', '.join(INIT_KINDS)}.")
    if negative := sorted(kind for kind, share in mix.items() if share < 0):
        raise ValueError(f"Init kind shares must not be negative: {', '.join(f'{k}={mix[k]}' for k in negative)}.")
    if not any(share > 0 for share in mix.values()):
        raise ValueError("The init mix gives no kind a positive share.")
    return mix


def parse_init_mix(text: str) -> dict[str, float]:
    """Parse an init mix such as "source=0.1,geometric=0.3,mosaic=0.3,warp=0.3" (shares, normalised when drawn)."""
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, share = item.partition("=")
        try:
            mix[kind.strip()] = float(share)
        except ValueError:
            raise ValueError(f"The share of {kind.strip()!r} must be a number, got {share.strip()!r}.") from None
    return check_init_mix(mix)


def varied_init(
    images: list[Image.Image],
    rng: random.Random,
    mix: dict[str, float] | None = None,
    min_scale: float = 0.6,
    turn_share: float = 0.0,
) -> VariedInit:
    """One init drawn from `images` (a class's real images): the source as is, a geometric variant, a mosaic or a
    warped geometric variant or an overlay, in the shares of `mix` (default `DEFAULT_INIT_MIX`); then, with
    probability `turn_share`, turned a quarter (recorded as `turn`; with 0 the draws are those made without it). A
    non-square init is not turned: its shape is the camera's (a line camera's strip), and turned it would be an image
    the line never delivers."""
    if not images:
        raise ValueError("Varied inits need at least one image.")
    mix = dict(check_init_mix(mix or DEFAULT_INIT_MIX))
    check_turn_share(turn_share)
    if len(images) < 2:
        mix["geometric"] = mix.get("geometric", 0.0) + mix.pop("mosaic", 0.0) + mix.pop("overlay", 0.0)
    kinds = [k for k in INIT_KINDS if mix.get(k, 0) > 0]
    kind = rng.choices(kinds, weights=[mix[k] for k in kinds])[0]
    if kind == "mosaic":
        image, sources, details = mosaic(images, rng, min_scale)
    elif kind == "overlay":
        image, sources, details = overlay(images, rng, min_scale)
    elif kind in ("geometric", "warp"):
        sources = [rng.randrange(len(images))]
        image, details = geometric_variant(images[sources[0]], rng, min_scale, sharp=True)
        if kind == "warp":
            image, warp = elastic_warp(image, rng)
            details = {**details, **warp}
    else:
        sources = [rng.randrange(len(images))]
        image, details = images[sources[0]].copy(), {}
    if kind != "source":
        image, jitter = exposure_jitter(image, rng)
        details = {**details, **jitter}
    if turn_share > 0 and rng.random() < turn_share and image.width == image.height:
        image, turn = quarter_turn(image, rng)
        details = {**details, **turn}
    return VariedInit(image, kind, sources, details)
