"""Box suggestions that learn from the boxes an engineer has drawn on a class's real defect images.

`masks.suggested_boxes` finds what departs from an image's own steel: spots, scratches and stains, not a texture
over most of the image. Once a few images of a class are boxed, a logistic regression over the cells of the steel
feature network's maps (each cell's features, and its tint and brightness against the image's) learns what the
class's defects look like, textures included. A class's suggester keeps whichever of the two matched the
engineer's own boxes better on held-out folds of the boxed images. `python -m bench.defect_estimate --boxed K`
measures both against a mill's masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.boxes import Box, from_mask, match_counts
from engine.evaluation.features import SteelFeatureNet
from engine.evaluation.fidelity import fit_logistic
from engine.masks import ESTIMATE_MIN_AREA, suggested_boxes

# A class learns its suggestions from this many boxed images on (fewer leave no fold to choose the method by).
MIN_BOXED_IMAGES = 3
# The newest this many boxed images of a class are learnt from (`bench/defect_estimate.py --boxed`: ten give most of
# what is learnt), and a fit takes at most MAX_FIT_CELLS of their cells, drawn at random (as good there as 8192 and
# a third of the time): the choice's six fits take about a second on a CPU.
MAX_BOXED_IMAGES = 20
MAX_FIT_CELLS = 4096
# Held-out folds of the boxed images on which the learnt suggestions and the estimate's are compared.
SELECTION_FOLDS = 5
# The feature maps are taken with the image's short side at this size (the feature network's input size), so a
# cell is about 1/32 of the short side.
CELL_INPUT_SIDE = 128
# A pixel is suggested where the interpolated cell probability reaches this.
CELL_THRESHOLD = 0.5
# A piece of the image's estimate (`masks.estimate_defect_mask`) is kept too where the learnt probability over it
# averages this: a thin scratch the coarse cells only half see.
CONFIRM_ESTIMATE = 0.3
# Ridge of the cell regression: MAX_FIT_CELLS cells in 323 dimensions (the maps of three blocks, tint and brightness).
CELL_L2 = 1e-2
METHOD_LEARNT = "learnt"
METHOD_ESTIMATE = "estimate"


@dataclass(frozen=True)
class CellMap:
    """An image's cells: a row of features per cell (row-major) and the grid's rows and columns."""

    features: np.ndarray
    grid: tuple[int, int]


@torch.no_grad()
def cell_map(pixels: np.ndarray, net: SteelFeatureNet) -> CellMap:
    """The feature network's maps of an image (H×W×3 uint8) after each conv block but the first, brought to the
    second block's grid, with each cell's log tint (R/G, B/G) and log brightness against the image's medians."""
    height, width = pixels.shape[:2]
    grey = cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2GRAY)
    scale = CELL_INPUT_SIDE / min(height, width)
    size = tuple(max(16, round(side * scale / 16) * 16) for side in (height, width))
    x = torch.from_numpy(grey).float()[None, None] / 255.0
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    x = net.stem((x - net.mean) / net.std)
    maps = []
    for module in net.blocks:
        x = module(x)
        if not isinstance(module, torch.nn.MaxPool2d):
            maps.append(x)
    grid = tuple(maps[1].shape[-2:])
    resized = [
        F.adaptive_avg_pool2d(m, grid) if m.shape[-1] > grid[1] else F.interpolate(m, size=grid, mode="bilinear")
        for m in maps[1:]
    ]
    rgb = torch.from_numpy(pixels[..., :3].astype(np.float32) + 1.0).permute(2, 0, 1)[None]
    logs = torch.log(F.adaptive_avg_pool2d(rgb, grid)[0])
    tone = torch.stack([logs[0] - logs[1], logs[2] - logs[1], logs.mean(0)])
    tone = tone - tone.flatten(1).median(1).values[:, None, None]
    features = torch.cat([torch.cat(resized, 1)[0], tone], 0)
    return CellMap(features.flatten(1).T.contiguous().numpy(), (int(grid[0]), int(grid[1])))


def cell_labels(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per cell (row-major) whether at least half of it lies in the boxes' mask."""
    shares = cv2.resize(mask.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
    return shares.flatten() >= 0.5


@dataclass(frozen=True)
class CellClassifier:
    """A logistic regression over standardised cell features; or, where every cell it learnt from was of one kind
    (each image boxed whole, or none), that kind's probability (`constant`) everywhere."""

    linear: torch.nn.Linear | None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    constant: float = 0.0

    @torch.no_grad()
    def probability(self, cells: CellMap, shape: tuple[int, int]) -> np.ndarray:
        """The defect probability of each pixel of an image of `shape` (rows, columns), cells interpolated."""
        if self.linear is None:
            return np.full(shape, self.constant, dtype=np.float32)
        logits = self.linear((torch.from_numpy(cells.features) - self.mean) / self.std).squeeze(1)
        grid = torch.sigmoid(logits).reshape(cells.grid).numpy().astype(np.float32)
        return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)

    def marked(self, cells: CellMap, estimate: np.ndarray) -> np.ndarray:
        """The pixels suggested as defect in an image whose estimated mask is `estimate`: the cells' probability
        over CELL_THRESHOLD, and each piece of the estimate over which it averages CONFIRM_ESTIMATE; pieces under
        the estimate's least area left out."""
        probability = self.probability(cells, estimate.shape)
        marked = probability >= CELL_THRESHOLD
        count, pieces = cv2.connectedComponents(estimate.astype(np.uint8), connectivity=8)
        if count > 1:
            means = np.bincount(pieces.ravel(), probability.ravel(), count) / np.bincount(pieces.ravel(), None, count)
            confirmed = np.flatnonzero(means >= CONFIRM_ESTIMATE)
            marked |= np.isin(pieces, confirmed[confirmed > 0])
        count, labels, stats, _ = cv2.connectedComponentsWithStats(marked.astype(np.uint8), connectivity=8)
        large = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= ESTIMATE_MIN_AREA * marked.size)
        return np.isin(labels, large[large > 0])


def fit_cell_classifier(examples: list[tuple[CellMap, np.ndarray]]) -> CellClassifier:
    """A cell classifier from (cells, boxes' mask) pairs; a constant one where the cells are all one kind."""
    features = np.concatenate([cells.features for cells, _ in examples])
    labels = np.concatenate([cell_labels(mask, cells.grid) for cells, mask in examples])
    if len(labels) > MAX_FIT_CELLS:
        drawn = np.random.default_rng(0).choice(len(labels), MAX_FIT_CELLS, replace=False)
        features, labels = features[drawn], labels[drawn]
    if labels.all() or not labels.any():
        return CellClassifier(None, constant=float(labels[0]))
    features = torch.from_numpy(features).float()
    mean, std = features.mean(0), features.std(0) + 1e-6
    linear = fit_logistic((features - mean) / std, torch.from_numpy(labels.astype(np.float32)), l2=CELL_L2)
    return CellClassifier(linear.eval(), mean, std)


@dataclass(frozen=True)
class BoxedImage:
    """A boxed real defect image as the suggester learns from it: pixels (H×W×3 uint8), its boxes' mask (H×W bool),
    its estimated defect mask (`masks.estimate_defect_mask`) and, when already made, its `cell_map`."""

    pixels: np.ndarray
    mask: np.ndarray
    estimate: np.ndarray
    cells: CellMap | None = None


@dataclass(frozen=True)
class ClassSuggester:
    """How a class's boxes are suggested: `method` is METHOD_LEARNT (with its classifier) or METHOD_ESTIMATE;
    `boxed_images` how many boxed images it was chosen on, and the fold scores (F1 of boxes matched at IoU 0.3)."""

    method: str
    boxed_images: int
    classifier: CellClassifier | None = None
    learnt_f1: float | None = None
    estimate_f1: float | None = None

    def boxes(self, pixels: np.ndarray, estimate: np.ndarray, net: SteelFeatureNet, label: str = "") -> list[Box]:
        """Suggested boxes for an image (H×W×3 uint8) whose estimated defect mask is `estimate`."""
        if self.classifier is None:
            return suggested_boxes(estimate, label)
        return suggested_boxes(self.classifier.marked(cell_map(pixels, net), estimate), label)


def f1_of(counts: np.ndarray) -> float:
    """F1 of `boxes.match_counts` totals (drawn, suggested, drawn found, suggestions right)."""
    drawn, suggested, found, right = counts
    recall, precision = found / max(drawn, 1), right / max(suggested, 1)
    return 2 * recall * precision / (recall + precision) if recall + precision else 0.0


def class_suggester(boxed: list[BoxedImage], net: SteelFeatureNet) -> ClassSuggester:
    """The suggester for a class from its boxed images: the learnt one where, fitted on all but a fold, it matches
    the held-out fold's boxes better (F1 over SELECTION_FOLDS folds) than the estimate does; else the estimate."""
    if len(boxed) < MIN_BOXED_IMAGES:
        return ClassSuggester(METHOD_ESTIMATE, len(boxed))
    cells = [image.cells or cell_map(image.pixels, net) for image in boxed]
    folds = min(SELECTION_FOLDS, len(boxed))
    learnt, estimated = np.zeros(4, dtype=int), np.zeros(4, dtype=int)
    for fold in range(folds):
        held_out = [i for i in range(len(boxed)) if i % folds == fold]
        rest = [(cells[i], boxed[i].mask) for i in range(len(boxed)) if i % folds != fold]
        classifier = fit_cell_classifier(rest)
        for i in held_out:
            drawn = from_mask(boxed[i].mask)
            found = suggested_boxes(classifier.marked(cells[i], boxed[i].estimate))
            learnt += match_counts(drawn, found)
            estimated += match_counts(drawn, suggested_boxes(boxed[i].estimate))
    learnt_f1, estimate_f1 = f1_of(learnt), f1_of(estimated)
    if learnt_f1 <= estimate_f1:
        return ClassSuggester(METHOD_ESTIMATE, len(boxed), None, learnt_f1, estimate_f1)
    classifier = fit_cell_classifier([(c, image.mask) for c, image in zip(cells, boxed, strict=True)])
    return ClassSuggester(METHOD_LEARNT, len(boxed), classifier, learnt_f1, estimate_f1)
