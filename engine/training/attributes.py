"""Appearance captions for pretraining: words for what an image measurably looks like, never for its class.

SD's text pathway is useful because its captions describe the image; generic captions ("a photo of a steel
surface") leave the prior's cross-attention with nothing to learn, so a defect token later has little to steer
with. These captions name measured appearance instead — brightness, contrast, grain, large-scale blotches, line
orientation, small dark spots, thin bright streaks — each by where the image falls among the data it is trained on
(its terciles), so any mill's images get the same treatment and no label is read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields

import cv2
import numpy as np

# Least difference from the local mean (0-1 intensity scale, ≈ 15 grey levels) for a dark spot or bright streak.
MIN_MARK_CONTRAST = 0.06
# Every word used here is in the prior's vocabulary (engine.training.prior.VOCABULARY_WORDS).
ORIENTATION_WORDS = ("horizontal lines", "diagonal lines", "vertical lines", "diagonal lines")


@dataclass(frozen=True)
class Appearance:
    """Measured appearance of one grey image (values on a 0-1 intensity scale)."""

    brightness: float
    contrast: float
    grain: float
    blotch: float
    line_strength: float
    line_angle: float
    dark_spots: float
    bright_streaks: float


def measure(pixels: np.ndarray) -> Appearance:
    """Appearance of one image (uint8, H×W grey or H×W×3 RGB, measured on its luminance)."""
    gray = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    g = gray.astype(np.float32) / 255.0
    side = min(g.shape)
    smooth = cv2.GaussianBlur(g, (0, 0), side / 128)
    local = cv2.GaussianBlur(g, (0, 0), side / 16)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
    energy = jxx + jyy + 1e-12
    # Structure tensor: coherence is how much one gradient direction dominates; lines run across it.
    coherence = float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / energy)
    gradient_angle = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    detail = smooth - local
    # Spots and streaks stand out from their surroundings by twice the image's own detail spread, and by at least
    # MIN_MARK_CONTRAST, so that the grain of a plain surface is not counted as marks.
    threshold = max(2.0 * float(detail.std()), MIN_MARK_CONTRAST)
    dark = (detail < -threshold).astype(np.uint8)
    bright = (detail > threshold).astype(np.uint8)
    return Appearance(
        brightness=float(g.mean()),
        contrast=float(g.std()),
        grain=float((g - smooth).std() + (smooth - cv2.GaussianBlur(g, (0, 0), side / 64)).std()),
        blotch=float(local.std()),
        line_strength=coherence,
        line_angle=float((np.degrees(gradient_angle) + 90.0) % 180.0),
        dark_spots=float(_small_components(dark, side) / side**2 * 1e4),
        bright_streaks=float(_elongated_share(bright, side)),
    )


def _small_components(binary: np.ndarray, side: int) -> int:
    """How many connected regions are small spots (up to 1/250 of the image's area)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return int(((areas >= 2) & (areas <= side * side / 250)).sum()) if count > 1 else 0


def _elongated_share(binary: np.ndarray, side: int) -> float:
    """Share of the image's side covered by the longest thin bright region (long axis over short ≥ 4)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    longest = 0.0
    for width, height in stats[1:, [cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT]]:
        long, short = max(width, height), max(1, min(width, height))
        if long / short >= 4:
            longest = max(longest, long / side)
    return longest


@dataclass(frozen=True)
class AppearanceScale:
    """Tercile bounds of each measure over a training set: the words say where an image falls in its data."""

    low: Appearance
    high: Appearance

    @classmethod
    def fit(cls, measured: list[Appearance]) -> AppearanceScale:
        if not measured:
            raise ValueError("Need at least one image to fit an appearance scale.")
        names = [f.name for f in fields(Appearance)]
        table = np.array([[getattr(m, n) for n in names] for m in measured], dtype=np.float64)
        low, high = np.quantile(table, 1 / 3, axis=0), np.quantile(table, 2 / 3, axis=0)
        return cls(Appearance(*map(float, low)), Appearance(*map(float, high)))

    def words(self, appearance: Appearance) -> list[str]:
        """The appearance words of one image, in a fixed order."""
        a, low, high = appearance, self.low, self.high
        words = []
        if a.brightness <= low.brightness:
            words.append("dark")
        elif a.brightness > high.brightness:
            words.append("bright")
        if a.contrast <= low.contrast:
            words.append("uniform")
        elif a.contrast > high.contrast:
            words.append("dark and light")
        if a.grain > high.grain:
            words.append("fine texture")
        elif a.grain <= low.grain:
            words.append("smooth")
        if a.blotch > high.blotch:
            words.append("large dark blotch" if a.brightness <= high.brightness else "large blotch")
        if a.line_strength > high.line_strength:
            words.append(ORIENTATION_WORDS[int(((a.line_angle + 22.5) % 180.0) // 45)])
        if a.dark_spots > high.dark_spots:
            words.append("small dark spots")
        if a.bright_streaks > high.bright_streaks and a.bright_streaks > 0:
            words.append("thin bright streaks")
        return words


def appearance_captions(stems: list[str], images: list[np.ndarray]) -> list[str]:
    """One caption per image: its stem (a generic caption) followed by its appearance words."""
    if len(stems) != len(images):
        raise ValueError(f"{len(stems)} caption stems for {len(images)} images.")
    measured = [measure(image) for image in images]
    scale = AppearanceScale.fit(measured)
    return [", ".join([stem, *scale.words(m)]) for stem, m in zip(stems, measured, strict=True)]


def shared_words(images_by_class: dict[str, list[np.ndarray]], min_share: float = 0.5) -> dict[str, list[str]]:
    """The appearance words at least `min_share` of each class's images carry, on a scale fitted to all of them.

    The scale is the classes' own terciles, so the words say how a class differs from the others in its set.
    """
    measured = {name: [measure(image) for image in images] for name, images in images_by_class.items()}
    if not any(measured.values()):
        return {name: [] for name in measured}
    scale = AppearanceScale.fit([m for ms in measured.values() for m in ms])
    words = {}
    for name, ms in measured.items():
        counts = Counter(word for m in ms for word in scale.words(m))
        words[name] = [word for word, count in counts.items() if count >= min_share * len(ms)]
    return words
