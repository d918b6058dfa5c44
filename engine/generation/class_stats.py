"""What NEU's training pool shows of each class it holds beyond a user's few images: which ways its defects run and
how its images are exposed. A batch of a known class uses both to reach the class's range, not only its five shots'.

Shipped as `engine/weights/class-stats.json` (training pool only); rebuild it with `python launch.py evaluate
class-stats --neu DATA/neu`. A class with enough images of its own to speak for its line (`MIN_OWN_REFERENCES`, as
for the realism gate) keeps its images' directions and exposure; a class the pool does not know (a new mill's) keeps
its images' directions unless they run both ways (then half its inits are turned) or one way (then the pool's average
share of the other way is turned), and its exposures are modelled with the pool's spread (below).

Directions. Five images of a class can all run one way where the class runs both: NEU's scratches are vertical in
145 of the training pool's 200 images and horizontal in 51, and a draw of five often holds only vertical ones. A
batch's samples keep their inits' direction, so a recognizer trained on them misses the other one. The batch turns
the share of inits that brings its directions to the pool's (`matched_turn_share`). A class the pool does not know
has no such reference, but when its own few images already run both ways its defect evidently runs either way on the
line, and half its inits are turned (`BOTH_WAYS_TURN_SHARE`): each layout then runs both ways, where five shots hold
one or two of the minority direction. When its few images all run one way, nothing says whether the line also shows
the other: the pool's classes say how often a steel defect does on average (`pool_minority_share`: NEU's scratches run
across in 26 % of their directed images, its inclusions in 2 %, three classes never; 5.6 %), and that share of the
inits is turned, so that a class that runs both ways is not learnt one way only, at the cost of a few turned samples
for one that does not. An image's direction is that of
its structure tensor: the log ratio of its vertical to its horizontal gradient energy (a horizontal scratch has
strong vertical gradients), beyond ±`DIRECTION_LOG_RATIO`; images in between (crazing's network, a round pit) have
none, and a quarter turn changes nothing about them that matters.

Exposure. Five images can also all be dark where the class spans the camera's range (one draw's rolled-in scale:
grey means 75–92, the pool's 74–152). `POOL_EXPOSURE_SHARE` of a batch's samples take the grey mean and spread of a
random pool image of the class (`pool_exposure`), after the capture variation. For a class the pool does not know,
what it knows of steel classes in general stands in: how far a class's images spread in exposure about the class's
own centre (`exposure_spread`, pooled over the pool's classes), around the centre of the class's own images
(`modelled_exposures`).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.config import WEIGHTS_DIR
from engine.data import read_neu, split_neu
from engine.generation.parameters import MIN_OWN_REFERENCES
from engine.generation.variation import with_grey_levels

STATS_FILE = WEIGHTS_DIR / "class-stats.json"
# |log(vertical / horizontal gradient energy)| from which an image runs one way (energies 1.65 : 1). On NEU's pool it
# sorts scratches into 145 vertical, 51 horizontal and 4 neither, rolled-in scale 136 horizontal and none vertical,
# crazing into none either way.
DIRECTION_LOG_RATIO = 0.5
# A reference's mix of directions counts from this many images that run one way.
MIN_DIRECTED_IMAGES = 10
# Share of the varied inits turned for a class the pool does not know whose own few images already run both ways:
# half, so each init's layout runs either way as often (`class_turn_share`).
BOTH_WAYS_TURN_SHARE = 0.5
# Gradient scale: blurred first, so the pixel grain does not outweigh the defect's own edges.
BLUR_SIGMA = 1.5
# Share of a known class's samples exposed like a random pool image of the class. Screened at 0.5 only
# (`docs/results.md`, "Exposure of the training pool"): half keep the exposure of their own init images.
POOL_EXPOSURE_SHARE = 0.5
# Exposures drawn for a class the pool does not know, and how far from its images' centre (in standard deviations of
# the pool's spread) a draw may go.
MODELLED_EXPOSURES = 200
MODELLED_EXPOSURE_LIMIT = 2.0


@dataclass(frozen=True)
class DirectionCounts:
    """How many of `images` run horizontally and how many vertically (the rest run neither way)."""

    horizontal: int
    vertical: int
    images: int

    @property
    def directed(self) -> int:
        return self.horizontal + self.vertical

    @property
    def horizontal_share(self) -> float | None:
        """Share of the directed images that run horizontally; None without any."""
        return self.horizontal / self.directed if self.directed else None

    def describe(self) -> str:
        return f"{self.horizontal} horizontal, {self.vertical} vertical of {self.images}"


def direction_of(image: Image.Image) -> str | None:
    """The way the image's structure runs: "horizontal", "vertical" or None (module docstring)."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    grey = cv2.GaussianBlur(grey, (0, 0), BLUR_SIGMA)
    horizontal_energy = float(np.mean(cv2.Sobel(grey, cv2.CV_32F, 1, 0) ** 2))
    vertical_energy = float(np.mean(cv2.Sobel(grey, cv2.CV_32F, 0, 1) ** 2))
    if horizontal_energy <= 0 or vertical_energy <= 0:
        return None
    log_ratio = math.log(vertical_energy / horizontal_energy)
    if log_ratio > DIRECTION_LOG_RATIO:
        return "horizontal"
    if log_ratio < -DIRECTION_LOG_RATIO:
        return "vertical"
    return None


def count_directions(images: list[Image.Image]) -> DirectionCounts:
    """The directions of `images`."""
    directions = [direction_of(image) for image in images]
    return DirectionCounts(directions.count("horizontal"), directions.count("vertical"), len(images))


def matched_turn_share(reference: DirectionCounts, inits: DirectionCounts) -> float:
    """The share of inits to turn a quarter so that, in expectation, their directed ones run horizontally as often as
    the reference's do: with h the inits' horizontal share and r the reference's, turning a share t gives
    h + t (1 - 2h) = r. 0 when either has too few directed images (or the inits none), or when turning cannot
    move the inits towards the reference (clipped to 0-1)."""
    target = reference.horizontal_share if reference.directed >= MIN_DIRECTED_IMAGES else None
    current = inits.horizontal_share
    if target is None or current is None or math.isclose(current, 0.5):
        return 0.0
    return float(min(1.0, max(0.0, (target - current) / (1 - 2 * current))))


@dataclass(frozen=True)
class TurnChoice:
    """The quarter-turn share a batch uses for a class, and why."""

    share: float
    reason: str


def class_turn_share(class_name: str, images: list[Image.Image], stats: dict | None = None) -> TurnChoice:
    """The share of a class's varied inits to turn (`matched_turn_share`), made from its init `images`: their own
    directions when there are MIN_OWN_REFERENCES of them (the user's line speaks for itself: no turn), else the
    training pool's directions of a class it knows (`stats`, default the shipped ones), else, for a class whose few
    images run both ways (its defect runs either way on this line), BOTH_WAYS_TURN_SHARE, else for one whose directed
    images run one way the pool's `pool_minority_share`, else (no directed image) none."""
    inits = count_directions(images)
    if len(images) >= MIN_OWN_REFERENCES:
        return TurnChoice(0.0, f"the class's {len(images)} images set its directions ({inits.describe()})")
    stats = _pool_statistics(stats)
    entry = stats["classes"].get(class_name) if stats is not None else None
    if entry is None:
        if inits.horizontal and inits.vertical:
            return TurnChoice(
                BOTH_WAYS_TURN_SHARE, f"the class's images run both ways ({inits.describe()}): each may run either way"
            )
        minority = pool_minority_share(stats) if stats is not None and inits.directed else 0.0
        if minority > 0:
            return TurnChoice(
                minority,
                f"the class's images run one way ({inits.describe()}); a steel class runs the other way in "
                f"{100 * minority:.0f} % of its directed images on average in the training pool",
            )
        return TurnChoice(0.0, "no directions known for the class beyond its images")
    reference = DirectionCounts(entry["horizontal"], entry["vertical"], entry["images"])
    share = matched_turn_share(reference, inits)
    return TurnChoice(
        share, f"the training pool's {class_name} run {reference.describe()}; the init images {inits.describe()}"
    )


def pool_minority_share(stats: dict) -> float:
    """The share of a directed class's images that run its less common way, averaged over the pool's classes with
    MIN_DIRECTED_IMAGES directed ones: what a new class whose few images run one way is expected to hold of the other
    way (NEU's pool: scratches 26 %, inclusions 2 %, three classes none; 5.6 %)."""
    counts = [DirectionCounts(e["horizontal"], e["vertical"], e["images"]) for e in stats["classes"].values()]
    shares = [min(c.horizontal_share, 1 - c.horizontal_share) for c in counts if c.directed >= MIN_DIRECTED_IMAGES]
    return float(np.mean(shares)) if shares else 0.0


@dataclass(frozen=True)
class ExposureChoice:
    """The (grey mean, grey standard deviation) exposures a batch maps a class's samples to, and why."""

    exposures: list[list[float]]
    reason: str


def class_exposures(class_name: str, images: list[Image.Image], stats: dict | None = None) -> ExposureChoice:
    """The exposures for a batch of a class from its init `images`: none with MIN_OWN_REFERENCES of them (the class
    keeps its images' exposure), else every pool image's of a class the pool knows (`stats`, default the shipped
    ones), else `modelled_exposures` about the images' own."""
    if len(images) >= MIN_OWN_REFERENCES:
        return ExposureChoice([], f"the class's {len(images)} images set its exposure")
    stats = _pool_statistics(stats)
    if stats is None or not images:
        return ExposureChoice([], "no exposures known for the class beyond its images")
    entry = stats["classes"].get(class_name)
    if entry is not None:
        exposures = entry.get("exposures", [])
        means = [mean for mean, _ in exposures] or [0.0]
        return ExposureChoice(
            exposures,
            f"the training pool's {len(exposures)} {class_name} (grey mean {min(means):.0f}–{max(means):.0f})",
        )
    spread = exposure_spread(stats)
    mean, std = np.exp(_log_exposure_centre(images))
    deviation = np.sqrt(np.diag(spread))
    return ExposureChoice(
        modelled_exposures(images, spread),
        f"drawn about its {len(images)} images' grey mean {mean:.0f} and std {std:.0f} with the spread of a"
        f" training pool class (log sd {deviation[0]:.2f} and {deviation[1]:.2f})",
    )


def exposure_spread(stats: dict) -> np.ndarray:
    """The 2 × 2 covariance of (log grey mean, log grey std) of the pool's images about their class's own mean,
    pooled over its classes: how widely one steel class's captures vary in exposure."""
    deviations = []
    for entry in stats["classes"].values():
        logs = np.log(np.maximum(np.asarray(entry.get("exposures", []), dtype=np.float64).reshape(-1, 2), 1e-3))
        if len(logs) > 1:
            deviations.append(logs - logs.mean(axis=0))
    if not deviations:
        return np.zeros((2, 2))
    stacked = np.concatenate(deviations)
    return stacked.T @ stacked / max(len(stacked) - len(deviations), 1)


def modelled_exposures(
    images: list[Image.Image], spread: np.ndarray, count: int = MODELLED_EXPOSURES
) -> list[list[float]]:
    """`count` exposures drawn from a log-normal with the `images`' mean log grey mean and std as its centre and
    `spread` as its covariance (truncated at MODELLED_EXPOSURE_LIMIT standard deviations per draw); the same
    images give the same draws."""
    if not images:
        return []
    centre = _log_exposure_centre(images)
    factor = np.linalg.cholesky(spread + 1e-9 * np.eye(2))
    rng = np.random.default_rng(int(1e6 * abs(centre).sum()) % 2**32)
    normals = np.clip(rng.standard_normal((count, 2)), -MODELLED_EXPOSURE_LIMIT, MODELLED_EXPOSURE_LIMIT)
    draws = np.exp(centre + normals @ factor.T)
    draws[:, 0] = np.clip(draws[:, 0], 0, 255)
    return [[round(float(mean), 1), round(float(std), 1)] for mean, std in draws]


def _log_exposure_centre(images: list[Image.Image]) -> np.ndarray:
    """The mean (log grey mean, log grey std) of `images`."""
    return np.log(np.maximum(np.asarray([grey_exposure(image) for image in images]), 1e-3)).mean(axis=0)


def _pool_statistics(stats: dict | None) -> dict | None:
    """`stats`, else the shipped statistics, or None where the file is missing."""
    if stats is not None:
        return stats
    try:
        return load_class_statistics()
    except FileNotFoundError:
        return None


def grey_exposure(image: Image.Image) -> tuple[float, float]:
    """The image's grey mean and standard deviation."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    return float(grey.mean()), float(grey.std())


def pool_exposure(
    image: Image.Image, rng: random.Random, exposures: list[list[float]], share: float = POOL_EXPOSURE_SHARE
) -> tuple[Image.Image, dict]:
    """With probability `share`, the image with the grey mean and spread of one of `exposures` (a linear map of its
    grey levels; a colour pixel keeps its colour, `with_grey_levels`); returns (image, {"pool_exposure": [mean,
    std]} or {})."""
    if not exposures or rng.random() >= share:
        return image, {}
    mean, std = rng.choice(exposures)
    own_mean, own_std = grey_exposure(image)
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    exposed = with_grey_levels(image, (grey - own_mean) * (std / max(own_std, 1e-3)) + mean)
    return exposed, {"pool_exposure": [mean, std]}


def class_statistics(neu_root: Path) -> dict:
    """Per class of NEU's training pool (never its validation split): its images' directions and exposures."""
    pool, _ = split_neu(read_neu(Path(neu_root)))
    by_class: dict[str, list[Path]] = {}
    for item in pool:
        by_class.setdefault(item.class_name, []).append(item.path)
    classes = {}
    for class_name, paths in sorted(by_class.items()):
        images = []
        for path in sorted(paths):
            with Image.open(path) as opened:
                images.append(opened.convert("L"))
        exposures = [[round(value, 1) for value in grey_exposure(image)] for image in images]
        classes[class_name] = {**asdict(count_directions(images)), "exposures": exposures}
    return {
        "source": "NEU training pool (engine.data.split_neu), engine.generation.class_stats",
        "log_ratio": DIRECTION_LOG_RATIO,
        "classes": classes,
    }


def write_class_statistics(neu_root: Path, out: Path = STATS_FILE) -> tuple[Path, dict]:
    """Compute and write the statistics; returns (path, the statistics per class)."""
    stats = class_statistics(neu_root)
    Path(out).write_text(json.dumps(stats, separators=(",", ":")) + "\n")
    return Path(out), stats["classes"]


def load_class_statistics(path: Path = STATS_FILE) -> dict:
    """The shipped statistics; raises a readable error if the file is missing."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"No class statistics at {path}; run `python launch.py evaluate class-stats --neu DIR`."
        )
    return json.loads(Path(path).read_text())
