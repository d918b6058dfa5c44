"""Evaluating generated steel images: fidelity (KID/FID), a per-image realism score, a two-sample test,
the few-shot recognition protocol and strength tuning.

All distances use the steel feature network (engine/features.py) unless Inception weights are given.
`launch.py evaluate train-features …` trains that network; `… neu-split …` writes NEU's split as
ImageFolder trees of links so the CLI commands can run on it; `… reference-features …` writes the
shipped per-class NEU features the realism score compares with.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from engine.data import list_images, load_rgb, read_neu, split_neu
from engine.features import (
    SHIPPED_FEATURES,
    WEIGHTS_FILE,
    SteelFeatureNet,
    images_by_class,
    images_to_tensor,
    load_feature_net,
    load_tensor,
)
from engine.progress import ProgressFn

REPO_ROOT = Path(__file__).resolve().parents[1]
# Per-class features of NEU's training pool, shipped beside the network (features only, never NEU images).
SHIPPED_REFERENCE_FEATURES = SHIPPED_FEATURES / "reference-features.safetensors"
REFERENCE_FEATURES_COMMAND = "python launch.py evaluate reference-features --data <NEU folder>"

# KID: 100 subsets as in the KID paper, each as large as the smaller set allows (at most 1000): the
# mean is then the most precise; the ± is the spread from resampling the larger set (0 for equal sizes).
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000
# StableSDG's range: below 0.3 img2img returns the init image nearly unchanged.
DEFAULT_STRENGTHS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _r(value: float | None, digits: int = 5) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def class_images(folder: Path | str, class_name: str) -> list[Path]:
    """The class's images: `folder/<class>/` when it exists, else the images directly in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Folder not found: {folder}")
    paths = list_images(folder / class_name) if (folder / class_name).is_dir() else list_images(folder)
    if not paths:
        raise ValueError(f"No images of {class_name!r} in {folder} (expected {folder / class_name}/ or images).")
    return paths


# ---------------------------------------------------------------------------------------------------------
# Feature extractors for KID/FID


class InceptionFeatures(nn.Module):
    """torchmetrics' InceptionV3 (torch-fidelity's FID network) loaded from a local weights file.

    Takes the same N×1×S×S [0, 1] batches as the steel network and returns 2048-d pool features.
    """

    input_size = 299
    num_features = 2048

    def __init__(self, weights_path: Path | str) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file not found: {path}")
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise ValueError("--inception-weights needs the torch-fidelity package (pip install torch-fidelity).")
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.inception(pixels.expand(-1, 3, -1, -1))


def _input_size(extractor: nn.Module) -> int:
    if isinstance(extractor, SteelFeatureNet):
        return extractor.config.input_size
    return int(extractor.input_size)


# ---------------------------------------------------------------------------------------------------------
# KID / FID


@dataclass
class SetDistance:
    """KID (mean ± std over subsets) and FID between two image sets; None where a set is too small."""

    n_a: int
    n_b: int
    kid_mean: float | None = None
    kid_std: float | None = None
    kid_subset_size: int | None = None
    fid: float | None = None


def set_distance(
    a: torch.Tensor, b: torch.Tensor, extractor: nn.Module, seed: int = 0, batch_size: int = 64
) -> SetDistance:
    """KID and FID via torchmetrics with `extractor` as the feature module; `a` is the 'fake' side."""
    result = SetDistance(len(a), len(b))
    n = min(len(a), len(b))
    if n < 2:
        return result
    extractor.eval()
    subset = min(KID_MAX_SUBSET, n)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=extractor, subsets=KID_SUBSETS, subset_size=subset)
        fid = FrechetInceptionDistance(feature=extractor)
    for tensor, real in ((a, False), (b, True)):
        for start in range(0, len(tensor), batch_size):
            chunk = tensor[start : start + batch_size]
            kid.update(chunk, real=real)
            fid.update(chunk, real=real)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    result.kid_mean = _r(kid_mean.item(), 6)
    result.kid_std = _r(kid_std.item(), 6)
    result.kid_subset_size = subset
    result.fid = _r(fid.compute().item(), 4)
    return result


@dataclass
class ClassFidelity:
    """Fidelity of one class's generated images (class_name 'all' for the pooled classes)."""

    class_name: str
    distance: SetDistance
    # Share of generated images the steel network assigns to their folder's class, and the mean
    # probability it gives that class; None when the network does not know the class.
    recognition_rate: float | None = None
    mean_confidence: float | None = None
    reference: SetDistance | None = None


@dataclass
class FidelityReport:
    """Per-class and overall KID/FID, class recognition, and the real-vs-real reference beside them."""

    classes: list[ClassFidelity]
    overall: ClassFidelity
    extractor: str
    generated_dir: str
    real_dir: str
    reference_dir: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        head = f"{'class':<18}{'n_gen':>6}{'n_real':>7}{'KID':>22}{'FID':>10}{'recog':>7}{'conf':>6}"
        if self.reference_dir:
            head += f"  | {'ref KID':>22}{'ref FID':>9}"
        lines = [f"Fidelity ({self.extractor} features): {self.generated_dir} vs {self.real_dir}", head]
        for row in [*self.classes, self.overall]:
            d = row.distance
            kid = f"{_fmt(d.kid_mean, '.5f')} ± {_fmt(d.kid_std, '.5f')}" if d.kid_mean is not None else "-"
            line = (
                f"{row.class_name:<18}{d.n_a:>6}{d.n_b:>7}{kid:>22}{_fmt(d.fid, '.2f'):>10}"
                f"{_fmt(row.recognition_rate, '.2f'):>7}{_fmt(row.mean_confidence, '.2f'):>6}"
            )
            if self.reference_dir and row.reference:
                r = row.reference
                ref_kid = f"{_fmt(r.kid_mean, '.5f')} ± {_fmt(r.kid_std, '.5f')}" if r.kid_mean is not None else "-"
                line += f"  | {ref_kid:>22}{_fmt(r.fid, '.2f'):>9}"
            lines.append(line)
        lines.append(
            "KID/FID: lower is closer to the real images; ref = real vs real at the same sizes (the floor). "
            "Pooled class-balanced sets give 'all' a small negative KID offset, which ref shares."
        )
        return "\n".join(lines)


def _recognition(net: SteelFeatureNet, images: torch.Tensor, class_name: str) -> tuple[float | None, float | None]:
    if class_name not in net.classes or len(images) == 0:
        return None, None
    _, probs = net.features_and_probs(images)
    index = net.classes.index(class_name)
    return _r((probs.argmax(1) == index).float().mean().item(), 4), _r(probs[:, index].mean().item(), 4)


def fidelity(
    generated_dir: Path | str,
    real_dir: Path | str,
    reference_dir: Path | str | None = None,
    feature_net: SteelFeatureNet | None = None,
    inception_weights: Path | str | None = None,
    seed: int = 0,
) -> FidelityReport:
    """KID/FID of generated vs real ImageFolder trees per class and overall, plus class recognition.

    Only the generated tree's classes are compared; the real (and reference) tree must hold them all.
    With `reference_dir` (a second real split, disjoint from `real_dir`) the same distances are
    computed reference vs real, which shows what 'as good as real' looks like at these set sizes
    (the reference is subsampled to the generated count per class).
    """
    # 1. Check inputs
    generated = images_by_class(generated_dir)
    real = images_by_class(real_dir)
    reference = images_by_class(reference_dir) if reference_dir else None
    for name, tree in (("real", real), ("reference", reference)):
        if tree is not None and (missing := sorted(set(generated) - set(tree))):
            raise ValueError(f"The {name} folder has no images of: {', '.join(missing)}.")
    net = feature_net or load_feature_net()
    net.eval()
    extractor: nn.Module = InceptionFeatures(inception_weights) if inception_weights else net
    size = _input_size(extractor)
    net_size = net.config.input_size

    # 2. Load each image once at the extractor's size (and the network's, for recognition)
    def load(tree: dict[str, list[Path]] | None, s: int) -> dict[str, torch.Tensor]:
        return {c: load_tensor(tree[c], s) for c in generated} if tree else {}

    gen_x, real_x, ref_x = load(generated, size), load(real, size), load(reference, size)
    gen_net = gen_x if net_size == size else load(generated, net_size)
    # FID is biased by set size: the reference is cut to the generated count so both rows share the bias.
    generator = torch.Generator().manual_seed(seed)
    ref_x = {c: x[torch.randperm(len(x), generator=generator)[: len(gen_x[c])]] for c, x in ref_x.items()}

    # 3. Per class, then pooled over the classes
    rows = []
    for c in generated:
        rate, confidence = _recognition(net, gen_net[c], c)
        ref = set_distance(ref_x[c], real_x[c], extractor, seed) if reference else None
        rows.append(ClassFidelity(c, set_distance(gen_x[c], real_x[c], extractor, seed), rate, confidence, ref))
    pooled_gen, pooled_real = torch.cat(list(gen_x.values())), torch.cat(list(real_x.values()))
    known = [row for row in rows if row.recognition_rate is not None]
    weights = [row.distance.n_a for row in known]
    overall = ClassFidelity(
        "all",
        set_distance(pooled_gen, pooled_real, extractor, seed),
        _r(np.average([r.recognition_rate for r in known], weights=weights), 4) if known else None,
        _r(np.average([r.mean_confidence for r in known], weights=weights), 4) if known else None,
        set_distance(torch.cat(list(ref_x.values())), pooled_real, extractor, seed) if reference else None,
    )
    return FidelityReport(
        rows,
        overall,
        "inception" if inception_weights else "steel",
        str(generated_dir),
        str(real_dir),
        str(reference_dir) if reference_dir else None,
    )


# ---------------------------------------------------------------------------------------------------------
# Realism score per image


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
    """

    def __init__(
        self, feature_net: SteelFeatureNet, reference_images_by_class: dict[str, list[Image.Image]], k: int = 5
    ) -> None:
        self._setup(feature_net, k)
        size = self.net.config.input_size
        for class_name, images in reference_images_by_class.items():
            self._check_count(class_name, len(images))
            self._add_class(class_name, self.net.features_and_probs(images_to_tensor(images, size))[0])

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

    @staticmethod
    def _check_count(class_name: str, count: int) -> None:
        if count < 2:
            raise ValueError(f"Class {class_name!r} needs at least 2 reference images, got {count}.")

    def _add_class(self, class_name: str, feats: torch.Tensor) -> None:
        feats = F.normalize(feats, dim=1)
        distances = torch.cdist(feats, feats)
        distances.fill_diagonal_(float("inf"))
        kk = min(self.k, len(feats) - 1)
        self._refs[class_name] = feats
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
        refs, real_knn = self._refs[class_name], self._real_knn[class_name]
        kk = min(self.k, len(refs) - 1)
        knn = torch.cdist(F.normalize(feats, dim=1), refs).topk(kk, largest=False).values.mean(1).numpy()
        median, q90 = np.quantile(real_knn, 0.5), np.quantile(real_knn, 0.9)
        index = self.net.classes.index(class_name) if class_name in self.net.classes else None
        scores = []
        for distance, p in zip(knn, probs, strict=True):
            z = max(0.0, (distance - median) / max(q90 - median, 1e-6))
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


# A class's own real images judge typicality from this many on: the leave-one-out distances of fewer are noise.
MIN_OWN_REFERENCES = 10


def class_realism_scorer(class_name: str, real_images: list[Image.Image]) -> RealismScorer | None:
    """A realism scorer for one class: the shipped NEU features for a NEU class, else its own real images.

    None when neither serves: a new class with fewer than MIN_OWN_REFERENCES images, or no feature network.
    """
    try:
        net = load_feature_net()
    except FileNotFoundError:
        return None
    try:
        shipped = load_reference_features()
    except (FileNotFoundError, ValueError):
        shipped = {}
    if class_name in shipped:
        return RealismScorer.from_features(net, {class_name: shipped[class_name]})
    if len(real_images) >= MIN_OWN_REFERENCES:
        return RealismScorer(net, {class_name: real_images})
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


# ---------------------------------------------------------------------------------------------------------
# Two-sample test


@dataclass
class TwoSampleReport:
    """Cross-validated accuracy of telling generated from real features (0.5 = indistinguishable)."""

    accuracy_mean: float
    accuracy_std: float
    accuracies: list[float]
    n_per_side: int
    folds: int
    classes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        return (
            f"Two-sample test (logistic regression on steel features, {self.folds}-fold CV, "
            f"{self.n_per_side} images per side, classes {', '.join(self.classes)})\n"
            f"accuracy {self.accuracy_mean:.3f} ± {self.accuracy_std:.3f} over {len(self.accuracies)} seeds "
            f"(0.5 = indistinguishable, 1.0 = always told apart)"
        )


# Light L2: ~100 images per side in 128-d; a 10× stronger penalty took blurred NEU (σ 1.5) from 0.78 to 0.71.
def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, iterations: int = 100) -> nn.Linear:
    model = nn.Linear(x.shape[1], 1)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y) + l2 * model.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def _cv_accuracy(x: torch.Tensor, y: torch.Tensor, folds: int, rng: np.random.Generator) -> float:
    """Stratified k-fold accuracy of a standardised logistic regression."""
    fold_of = np.zeros(len(y), dtype=int)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(y.numpy() == label))
        fold_of[members] = np.arange(len(members)) % folds
    correct = 0
    for fold in range(folds):
        test = torch.from_numpy(fold_of == fold)
        mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
        model = _fit_logistic((x[~test] - mean) / std, y[~test])
        with torch.no_grad():
            predicted = model((x[test] - mean) / std).squeeze(1) > 0
        correct += int((predicted == (y[test] > 0.5)).sum())
    return correct / len(y)


def two_sample_test(
    generated_dir: Path | str,
    real_dir: Path | str,
    seeds: int | Sequence[int] = 3,
    feature_net: SteelFeatureNet | None = None,
    folds: int = 5,
) -> TwoSampleReport:
    """Can a linear classifier on steel features tell generated from real? Balanced per class, per seed."""
    # 1. Check inputs: the classes of the generated tree, each with ≥ 2 images on both sides
    generated, real = images_by_class(generated_dir), images_by_class(real_dir)
    classes = [c for c in generated if c in real]
    if not classes:
        raise ValueError("The generated and real folders share no class folder.")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("Give at least one seed.")
    net = (feature_net or load_feature_net()).eval()
    size = net.config.input_size

    # 2. Features once
    feats = {}
    for c in classes:
        feats[c] = (net.features_and_probs(load_tensor(generated[c], size))[0],)
        feats[c] += (net.features_and_probs(load_tensor(real[c], size))[0],)
    per_side = sum(min(len(g), len(r)) for g, r in feats.values())
    if per_side < folds:
        raise ValueError(f"Need at least {folds} images per side for {folds}-fold cross-validation.")

    # 3. Per seed: balanced subsample per class, cross-validated accuracy
    accuracies = []
    for seed in seed_list:
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for gen_f, real_f in feats.values():
            m = min(len(gen_f), len(real_f))
            xs += [gen_f[rng.choice(len(gen_f), m, replace=False)], real_f[rng.choice(len(real_f), m, replace=False)]]
            ys += [torch.ones(m), torch.zeros(m)]
        accuracies.append(_cv_accuracy(torch.cat(xs), torch.cat(ys), folds, rng))
    return TwoSampleReport(
        round(float(np.mean(accuracies)), 4),
        round(float(np.std(accuracies)), 4),
        [round(a, 4) for a in accuracies],
        per_side,
        folds,
        classes,
    )


# ---------------------------------------------------------------------------------------------------------
# Strength tuning


@dataclass
class StrengthRow:
    """One strength of the sweep."""

    strength: float
    n: int
    kid_mean: float | None
    kid_std: float | None
    fid: float | None
    recognition_rate: float | None


@dataclass
class StrengthReport:
    """The sweep's table and the chosen strength.

    `lowest_kid_strength` has the lowest KID; `best_strength` is the largest strength whose KID is within
    one subset-std of that lowest one: as realistic as the best within noise, but changing the init more
    (low strengths score well partly by returning the init image).
    """

    class_name: str
    best_strength: float
    lowest_kid_strength: float
    rows: list[StrengthRow] = field(default_factory=list)
    n_val: int = 0
    saved_to: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"Strength sweep for {self.class_name} (KID vs {self.n_val} real validation images)",
            f"{'strength':>8}{'n':>5}{'KID':>24}{'FID':>10}{'recog':>7}",
        ]
        for row in self.rows:
            kid = f"{_fmt(row.kid_mean, '.5f')} ± {_fmt(row.kid_std, '.5f')}"
            mark = "  <- chosen" if row.strength == self.best_strength else ""
            mark += "  (lowest KID)" if row.strength == self.lowest_kid_strength else ""
            lines.append(
                f"{row.strength:>8.2f}{row.n:>5}{kid:>24}{_fmt(row.fid, '.2f'):>10}"
                f"{_fmt(row.recognition_rate, '.2f'):>7}{mark}"
            )
        if self.saved_to:
            lines.append(f"default_strength {self.best_strength} written to {self.saved_to}")
        return "\n".join(lines)


def tune_strength(
    generate_fn: Callable[[float], list[Image.Image]],
    class_name: str,
    val_dir: Path | str,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    feature_net: SteelFeatureNet | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> StrengthReport:
    """Generate at each strength and score by KID against the class's real validation images."""
    # 1. Check inputs
    if not strengths:
        raise ValueError("Give at least one strength.")
    if bad := [s for s in strengths if not 0 < s <= 1]:
        raise ValueError(f"Strengths must be in (0, 1], got {bad}.")
    net = (feature_net or load_feature_net()).eval()
    size = net.config.input_size
    real = load_tensor(class_images(val_dir, class_name), size)
    if len(real) < 2:
        raise ValueError(f"Need at least 2 validation images of {class_name!r}.")

    # 2. Generate and score each strength
    rows = []
    for i, strength in enumerate(strengths):
        images = generate_fn(float(strength))
        if len(images) < 2:
            raise ValueError(f"generate_fn returned {len(images)} images at strength {strength}; need at least 2.")
        generated = images_to_tensor(images, size)
        distance = set_distance(generated, real, net, seed)
        rate, _ = _recognition(net, generated, class_name)
        rows.append(StrengthRow(float(strength), len(images), distance.kid_mean, distance.kid_std, distance.fid, rate))
        if progress:
            progress(i + 1, len(strengths), f"strength {strength:.2f}: KID {_fmt(distance.kid_mean, '.5f')}")

    # 3. Lowest KID, then the strongest setting tied with it
    lowest = min(rows, key=lambda r: r.kid_mean)
    tied = [r for r in rows if r.kid_mean - r.kid_std <= lowest.kid_mean + lowest.kid_std]
    best = max(tied, key=lambda r: r.strength)
    return StrengthReport(class_name, best.strength, lowest.strength, rows, len(real))


def default_init_folder(val_dir: Path | str, class_name: str) -> Path:
    """Init images when none are given: `<class>/` in a `pool` or `train` folder beside the validation one."""
    val_dir = Path(val_dir)
    for sibling in ("pool", "train"):
        candidate = val_dir.parent / sibling / class_name
        if candidate.is_dir() and candidate.resolve() != (val_dir / class_name).resolve():
            return candidate
    raise ValueError(f"No init images: pass --init (no pool/{class_name} or train/{class_name} beside {val_dir}).")


def tune_adapter_strength(
    adapter: Path | str,
    class_name: str,
    val_dir: Path | str,
    init: Path | str | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    num: int = 16,
    model: str | None = None,
    steps: int = 20,
    seed: int = 0,
    save: bool = True,
    feature_net: SteelFeatureNet | None = None,
    progress: ProgressFn | None = None,
) -> StrengthReport:
    """Tune one token of an adapter: generate `num` images per strength from the init images, save the best."""
    import tempfile

    from engine.adapters import read_adapter, save_tuned_strength
    from engine.batch import generate_to_folder
    from engine.models import load_pipeline

    # 1. Check inputs and load the pipeline once
    tokens = read_adapter(adapter).tokens
    if class_name not in tokens:
        raise ValueError(f"The adapter has no token for {class_name!r}; it has {', '.join(tokens)}.")
    init = Path(init) if init else default_init_folder(val_dir, class_name)
    class_images(val_dir, class_name)
    pipe = load_pipeline(model, adapter)

    # 2. Sweep, each strength's images in a temporary folder
    with tempfile.TemporaryDirectory(prefix="tune-strength-") as tmp:

        def generate_fn(strength: float) -> list[Image.Image]:
            out = Path(tmp) / f"{strength:.2f}"
            paths = generate_to_folder(
                None,
                None,
                class_name,
                init,
                num,
                out,
                strength=strength,
                steps=steps,
                seed=seed,
                pipe=pipe,
                realism_threshold=None,
            )
            return [load_rgb(p) for p in paths]

        report = tune_strength(generate_fn, class_name, val_dir, strengths, feature_net, seed, progress)

    # 3. Store the choice with the token
    if save:
        report.saved_to = str(save_tuned_strength(adapter, class_name, report.best_strength))
    return report


# ---------------------------------------------------------------------------------------------------------
# NEU split as ImageFolder trees


def export_neu_split(neu_root: Path | str, out: Path | str) -> dict[str, int]:
    """Write `pool/<class>/` and `val/<class>/` symlinks to NEU's split under `out` (outside the repo).

    Each image's NEU-DET annotation is linked beside it as `<image stem>.xml`, so fine-tuning there can use the
    masked loss.
    """
    out = Path(out).resolve()
    if out == REPO_ROOT or REPO_ROOT in out.parents:
        raise ValueError(f"{out} is inside the repository; NEU images must stay outside it (use e.g. /tmp/neu-split).")
    pool, val = split_neu(read_neu(Path(neu_root)))
    counts = {}
    for name, items in (("pool", pool), ("val", val)):
        for item in items:
            target = out / name / item.class_name / item.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(item.path.resolve())
            xml_target = target.with_suffix(".xml")
            if xml_target.is_symlink() or xml_target.exists():
                xml_target.unlink()
            if item.annotation is not None:
                xml_target.symlink_to(item.annotation.resolve())
        counts[name] = len(items)
    return counts
