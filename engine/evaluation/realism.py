"""The per-image realism score (used on every generation and by the batch realism gate) and the shipped
per-class NEU reference features it compares with (`launch.py evaluate reference-features`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from engine.data import load_rgb, read_neu, split_neu
from engine.evaluation.features import (
    SHIPPED_FEATURES,
    WEIGHTS_FILE,
    SteelFeatureNet,
    images_by_class,
    images_to_tensor,
    load_feature_net,
    load_tensor,
)
from engine.generation.parameters import MIN_FEW_SHOT_REFERENCES, MIN_OWN_REFERENCES
from engine.progress import ProgressFn

# Per-class features of NEU's training pool, shipped beside the network (features only, never NEU images).
SHIPPED_REFERENCE_FEATURES = SHIPPED_FEATURES / "reference-features.safetensors"


REFERENCE_FEATURES_COMMAND = "python launch.py evaluate reference-features --data <NEU folder>"

# The seven flips and rotations that, with the image itself, make its eight dihedral variants.
FLIPS_AND_ROTATIONS = (
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def dihedral_variants(image: Image.Image) -> list[Image.Image]:
    """The image and its seven flips and rotations."""
    return [image] + [image.transpose(t) for t in FLIPS_AND_ROTATIONS]


@dataclass
class RealismScore:
    """0–1 realism of one image for its intended class, with the two parts it combines."""

    score: float
    # None for a class the feature network was not trained on (the score is then the typicality alone).
    class_probability: float | None
    knn_distance: float
    # Share of the class's real images whose own k-NN distance (to the other real images) is smaller.
    distance_percentile: float
    predicted_class: str


class RealismScorer:
    """Scores a candidate by the classifier's probability of its class and how typical its feature is.

    Typicality compares the candidate's mean distance to its k nearest real features (L2-normalised)
    with the same leave-one-out distance of each real image: 1 up to the real median, halving with each
    (q90 − median) beyond it. The score is the geometric mean of probability and typicality; for a class
    the network does not know (a user's own class) it is the typicality alone.
    With `flips_and_rotations` each reference image joins with its eight dihedral variants and a real image's
    distance leaves out all eight of its own (so a few images give a distribution of distances, not a handful).
    """

    def __init__(
        self,
        feature_net: SteelFeatureNet,
        reference_images_by_class: dict[str, list[Image.Image]],
        k: int = 5,
        flips_and_rotations: bool = False,
    ) -> None:
        self._setup(feature_net, k)
        size = self.net.config.input_size
        copies = len(FLIPS_AND_ROTATIONS) + 1 if flips_and_rotations else 1
        for class_name, images in reference_images_by_class.items():
            self._check_count(class_name, len(images))
            if flips_and_rotations:
                images = [variant for image in images for variant in dihedral_variants(image)]
            features = self.net.features_and_probs(images_to_tensor(images, size))[0]
            self._add_class(class_name, features, torch.arange(len(images)) // copies)

    @classmethod
    def from_folder(
        cls, feature_net: SteelFeatureNet, folder: Path | str, per_class: int | None = None, k: int = 5
    ) -> RealismScorer:
        """Reference images from an ImageFolder tree (the first `per_class` of each class)."""
        refs = {c: [load_rgb(p) for p in paths[:per_class]] for c, paths in images_by_class(folder).items()}
        return cls(feature_net, refs, k)

    @classmethod
    def from_features(
        cls, feature_net: SteelFeatureNet, features_by_class: dict[str, torch.Tensor], k: int = 5
    ) -> RealismScorer:
        """Reference features computed earlier by the same network (e.g. the shipped NEU ones)."""
        scorer = cls.__new__(cls)
        scorer._setup(feature_net, k)
        for class_name, feats in features_by_class.items():
            scorer._check_count(class_name, len(feats))
            if feats.ndim != 2 or feats.shape[1] != scorer.net.num_features:
                raise ValueError(
                    f"Reference features of {class_name!r} have shape {tuple(feats.shape)}; the network gives "
                    f"{scorer.net.num_features} per image. Rebuild them with this network."
                )
            scorer._add_class(class_name, feats.float())
        return scorer

    def _setup(self, feature_net: SteelFeatureNet, k: int) -> None:
        if k < 1:
            raise ValueError("k must be at least 1.")
        self.net = feature_net.eval()
        self.k = k
        self._refs: dict[str, torch.Tensor] = {}
        self._real_knn: dict[str, np.ndarray] = {}
        self._neighbours: dict[str, int] = {}

    @staticmethod
    def _check_count(class_name: str, count: int) -> None:
        if count < 2:
            raise ValueError(f"Class {class_name!r} needs at least 2 reference images, got {count}.")

    def _add_class(self, class_name: str, feats: torch.Tensor, sources: torch.Tensor | None = None) -> None:
        """Add a class's reference features; `sources` numbers the real image each came from (default: its own)."""
        feats = F.normalize(feats, dim=1)
        sources = torch.arange(len(feats)) if sources is None else sources
        same_source = sources[:, None] == sources[None, :]
        distances = torch.cdist(feats, feats).masked_fill(same_source, float("inf"))
        kk = min(self.k, int((~same_source).sum(1).min()))
        self._refs[class_name] = feats
        self._neighbours[class_name] = kk
        self._real_knn[class_name] = np.sort(distances.topk(kk, largest=False).values.mean(1).numpy())

    @property
    def classes(self) -> list[str]:
        return list(self._refs)

    def score(self, image: Image.Image, class_name: str) -> RealismScore:
        """Realism of one image for `class_name`."""
        return self.score_many([image], class_name)[0]

    def score_many(self, images: list[Image.Image], class_name: str) -> list[RealismScore]:
        """Realism of several images for `class_name`, in one forward pass."""
        if class_name not in self._refs:
            raise ValueError(f"No reference images for class {class_name!r}; known: {', '.join(self._refs)}.")
        feats, probs = self.net.features_and_probs(images_to_tensor(images, self.net.config.input_size))
        refs, real_knn, kk = self._refs[class_name], self._real_knn[class_name], self._neighbours[class_name]
        knn = torch.cdist(F.normalize(feats, dim=1), refs).topk(kk, largest=False).values.mean(1).numpy()
        median, q90 = np.quantile(real_knn, 0.5), np.quantile(real_knn, 0.9)
        index = self.net.classes.index(class_name) if class_name in self.net.classes else None
        scores = []
        for distance, p in zip(knn, probs, strict=True):
            z = max(0.0, float(distance - median) / max(float(q90 - median), 1e-6))
            typicality = 0.5**z
            class_probability = float(p[index]) if index is not None else None
            score = math.sqrt(class_probability * typicality) if class_probability is not None else typicality
            scores.append(
                RealismScore(
                    score=round(score, 4),
                    class_probability=round(class_probability, 4) if class_probability is not None else None,
                    knn_distance=round(float(distance), 4),
                    distance_percentile=round(float(np.searchsorted(real_knn, distance) / len(real_knn)), 4),
                    predicted_class=self.net.classes[int(p.argmax())],
                )
            )
        return scores


def feature_net_digest(folder: Path | str | None = None) -> str:
    """Short sha256 of a saved feature network's weights: reference features name the network they came from."""
    folder = Path(folder) if folder else SHIPPED_FEATURES
    return hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]


def save_reference_features(
    features_by_class: dict[str, torch.Tensor], out: Path | str, feature_net_folder: Path | str | None = None
) -> Path:
    """Write per-class reference features (float16) with the digest of the network that made them."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {c: f.detach().to(torch.float16).contiguous() for c, f in features_by_class.items()}
    save_file(tensors, str(out), metadata={"feature_net": feature_net_digest(feature_net_folder)})
    return out


SHIPPED_REFERENCE = "NEU training pool (shipped features)"


def class_realism_scorer(
    class_name: str,
    real_images: list[Image.Image],
    feature_net: SteelFeatureNet | None = None,
    shipped: dict[str, torch.Tensor] | None = None,
    any_direction: bool = False,
) -> tuple[RealismScorer, str] | None:
    """The realism scorer for one class and a description of its reference: the class's own real images from
    MIN_OWN_REFERENCES on (the user's steel), else the shipped NEU features for a NEU class, else (a new mill's
    class) its own real images from MIN_FEW_SHOT_REFERENCES on with their flips and rotations.

    None when none serves (a new class with fewer images) or there is no feature network. `feature_net` and
    `shipped` (NEU reference features by class) are loaded when not given. `any_direction` (candidates turned a
    quarter) adds the flips and rotations to the class's own images from MIN_OWN_REFERENCES on too.
    """
    try:
        net = feature_net if feature_net is not None else load_feature_net()
    except FileNotFoundError:
        return None
    if len(real_images) >= MIN_OWN_REFERENCES:
        scorer = RealismScorer(net, {class_name: real_images}, flips_and_rotations=any_direction)
        turned = " with their flips and rotations" if any_direction else ""
        return scorer, f"{len(real_images)} of the class's own real images{turned}"
    if shipped is None:
        try:
            shipped = load_reference_features()
        except (FileNotFoundError, ValueError):
            shipped = {}
    if class_name in shipped:
        return RealismScorer.from_features(net, {class_name: shipped[class_name]}), SHIPPED_REFERENCE
    if len(real_images) >= MIN_FEW_SHOT_REFERENCES:
        scorer = RealismScorer(net, {class_name: real_images}, flips_and_rotations=True)
        return scorer, f"{len(real_images)} of the class's own real images with their flips and rotations"
    return None


def load_reference_features(
    path: Path | str | None = None, feature_net_folder: Path | str | None = None
) -> dict[str, torch.Tensor]:
    """Per-class reference features (default: the shipped NEU ones); refuses ones made by another network."""
    path = Path(path) if path else SHIPPED_REFERENCE_FEATURES
    if not path.is_file():
        raise FileNotFoundError(f"No reference features at {path}; build them with `{REFERENCE_FEATURES_COMMAND}`.")
    with safe_open(str(path), framework="pt") as handle:
        made_by = (handle.metadata() or {}).get("feature_net")
        features = {name: handle.get_tensor(name).float() for name in handle.keys()}
    if made_by != feature_net_digest(feature_net_folder):
        raise ValueError(
            f"The reference features in {path} were made by another feature network; "
            f"rebuild them with `{REFERENCE_FEATURES_COMMAND}`."
        )
    return features


def build_neu_reference_features(
    neu_root: Path | str,
    out: Path | str | None = None,
    feature_net_folder: Path | str | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, int]:
    """Features of NEU's training pool per class (never its validation split), written to `out`; returns counts."""
    pool, _ = split_neu(read_neu(Path(neu_root)))
    net = load_feature_net(feature_net_folder)
    size = net.config.input_size
    by_class: dict[str, list[Path]] = {}
    for item in pool:
        by_class.setdefault(item.class_name, []).append(item.path)
    features = {}
    for i, (class_name, paths) in enumerate(sorted(by_class.items())):
        features[class_name] = net.features_and_probs(load_tensor(paths, size))[0]
        if progress:
            progress(i + 1, len(by_class), f"{class_name}: {len(paths)} images")
    save_reference_features(features, Path(out) if out else SHIPPED_REFERENCE_FEATURES, feature_net_folder)
    return {c: len(f) for c, f in features.items()}
