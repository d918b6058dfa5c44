"""The few-shot recognition protocol: does adding synthetic (or classically augmented) images to K real
images per class help a classifier trained from scratch?

Every arm trains the same small ResNet for the same number of steps, so extra data never buys extra
compute; the test set is a separate real ImageFolder tree. A grey mill's recognizer sees grey images; a colour
mill's (any real training or test image in colour) sees colour, as a user's own recognizer would.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn

from engine.data import is_grayscale, load_rgb
from engine.evaluation.features import arrays_to_tensor, image_to_array, images_by_class, load_tensor
from engine.generation.variation import geometric_variant, photometric_jitter
from engine.progress import ProgressFn

# The classifier sees 64 px images (grey for a grey mill): enough for NEU's textures, ~0.04 s per step on one core.
RECOGNITION_SIZE = 64
RECOGNITION_STEPS = 300


def classic_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """One classic augmentation: crop-resize, ±10° rotation, flips, brightness/contrast, blur, noise. A grey image
    comes out grey ("L"); a colour one stays colour, its noise one plane for every channel."""
    image, _ = geometric_variant(image.convert("L") if is_grayscale(image) else image.convert("RGB"), rng)
    width, height = image.size
    image, _ = photometric_jitter(image, rng)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.5:
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(2, 8), (height, width))
        pixels = np.asarray(image, dtype=np.float64)
        pixels = pixels + (noise if pixels.ndim == 2 else noise[..., None])
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    return image


class _BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class RecognitionNet(nn.Module):
    """A small ResNet for the protocol: stride-2 stem and three residual stages (16/32/64 channels), on grey
    (`in_channels` 1) or colour (3) images."""

    def __init__(self, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64), in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        self.stages = nn.Sequential(
            _BasicBlock(widths[0], widths[0], 1),
            _BasicBlock(widths[0], widths[1], 2),
            _BasicBlock(widths[1], widths[2], 2),
        )
        self.head = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem((x - 0.5) / 0.25)).mean(dim=(2, 3)))


def train_recognizer(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    steps: int,
    batch_size: int,
    seed: int,
    learning_rate: float = 2e-3,
) -> RecognitionNet:
    """Train from scratch for exactly `steps` class-balanced batches (random flips), whatever the set's size, on
    x's channels (N×1×H×W grey or N×3×H×W colour)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = RecognitionNet(num_classes, in_channels=x.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    # Class-balanced sampling: a class uniformly, then one of its images uniformly.
    present = torch.tensor([c for c in range(num_classes) if (y == c).any()])
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    model.train()
    for _ in range(steps):
        picks = present[torch.randint(len(present), (batch_size,), generator=generator)]
        offsets = (torch.rand(batch_size, generator=generator) * counts[picks]).long()
        idx = order[starts[picks] + offsets]
        batch = x[idx]
        flip_x = torch.rand(batch_size, 1, 1, 1, generator=generator) < 0.5
        flip_y = torch.rand(batch_size, 1, 1, 1, generator=generator) < 0.5
        batch = torch.where(flip_x, batch.flip(3), batch)
        batch = torch.where(flip_y, batch.flip(2), batch)
        loss = F.cross_entropy(model(batch), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


@torch.no_grad()
def _confusion(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch_size: int = 256
) -> np.ndarray:
    """Test counts by true class (rows) and predicted class (columns)."""
    predictions = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    pairs = torch.bincount(y * num_classes + predictions, minlength=num_classes * num_classes)
    return pairs.reshape(num_classes, num_classes).numpy()


@dataclass
class ArmResult:
    """One training set of the protocol, over seeds."""

    name: str
    accuracies: list[float]
    train_sizes: list[int]
    mean: float = 0.0
    std: float = 0.0
    gain: float | None = None
    # Test counts summed over seeds: rows the true class, columns the predicted one (the report's class order).
    confusion: list[list[int]] | None = None

    def recall(self, classes: list[str]) -> dict[str, float]:
        """Per class, the share of its test images recognised as it (over all seeds)."""
        counts = np.asarray(self.confusion)
        return {c: round(float(counts[i, i] / max(counts[i].sum(), 1)), 4) for i, c in enumerate(classes)}


@dataclass
class RecognitionReport:
    """Test accuracy of a classifier trained from scratch on each arm, mean ± std over seeds."""

    k: int
    seeds: int
    steps: int
    classes: list[str]
    n_test: int
    arms: list[ArmResult]
    classic_per_class: int = 0
    n_synthetic: int = 0
    seconds: float = 0.0
    # True when the recognizers saw colour (a colour mill), False for grey.
    colour: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"Recognition: K={self.k} real per class, {self.seeds} seeds, {self.steps} steps per model, "
            f"{self.n_test} test images, {len(self.classes)} classes, {'colour' if self.colour else 'grey'} "
            f"({self.seconds:.0f} s)",
            f"{'arm':<20}{'train imgs':>11}{'accuracy':>18}{'gain':>9}",
        ]
        for arm in self.arms:
            accuracy = f"{arm.mean:.3f} ± {arm.std:.3f}"
            gain = "-" if arm.gain is None else f"{arm.gain:+.3f}"
            lines.append(f"{arm.name:<20}{int(np.mean(arm.train_sizes)):>11}{accuracy:>18}{gain:>9}")
        lines.append("gain: accuracy minus the 'real' arm's, both means over the same seeds.")
        lines.append("Recall per class (test images of the class recognised as it, all seeds):")
        rows = [(arm.name, arm.recall(self.classes), ".3f") for arm in self.arms]
        lines += per_class_table(rows, self.classes, 20, corner="arm")
        return "\n".join(lines)


def per_class_table(
    rows: Sequence[tuple[str, dict[str, float], str]], classes: Sequence[str], label_width: int, corner: str = ""
) -> list[str]:
    """The lines of a table with a column per class, headed by the classes' full names (a mill's names may share
    their first dozen characters: "colour type 1" … "colour type 6"), and a row per (name, value per class, format)."""
    width = max([8, *map(len, classes)]) + 2
    lines = [f"{corner:<{label_width}}" + "".join(f"{c:>{width}}" for c in classes)]
    for name, values, spec in rows:
        lines.append(f"{name:<{label_width}}" + "".join(f"{format(values[c], spec):>{width}}" for c in classes))
    return lines


def recognition(
    train_dir: Path | str,
    test_dir: Path | str,
    synthetic_dir: Path | str | None = None,
    k: int = 5,
    seeds: int = 3,
    classic_augment_per_class: int = 0,
    steps: int = RECOGNITION_STEPS,
    batch_size: int = 32,
    image_size: int = RECOGNITION_SIZE,
    progress: ProgressFn | None = None,
    arms: Sequence[str] | None = None,
) -> RecognitionReport:
    """The few-shot protocol: K real per class, alone and with synthetic and/or classic augmentation.

    Arms: 'real' (K per class), 'real+synthetic', 'synthetic' (only), 'real+classic' (K plus N classic
    augmentations per class) and 'real+classic+synth'. Every arm trains the same RecognitionNet from
    scratch for the same number of steps, so more data never means more compute. The synthetic images
    are the same for every seed. The recognizers see colour when any real training or test image is in colour,
    else grey. `arms` trains only those named (gains need 'real' among them), for a caller
    that compares many synthetic sets against one baseline.
    """
    # 1. Check inputs
    start = time.perf_counter()
    train, test = images_by_class(train_dir), images_by_class(test_dir)
    classes = sorted(train)
    if unknown := sorted(set(test) - set(classes)):
        raise ValueError(f"Test classes missing from the training folder: {', '.join(unknown)}.")
    if k < 1 or seeds < 1 or steps < 1:
        raise ValueError("k, seeds and steps must be at least 1.")
    if short := [c for c in classes if len(train[c]) < k]:
        raise ValueError(f"Fewer than K={k} training images in: {', '.join(short)}.")
    if classic_augment_per_class < 0:
        raise ValueError("The number of classic augmentations must not be negative.")
    synthetic = images_by_class(synthetic_dir) if synthetic_dir else {}
    if unknown := sorted(set(synthetic) - set(classes)):
        raise ValueError(f"Synthetic classes missing from the training folder: {', '.join(unknown)}.")

    # 2. Load the test set and the synthetic set once, in colour when the real images are
    colour = any(not is_grayscale(load_rgb(p)) for tree in (test, train) for paths in tree.values() for p in paths)

    def labels(tree: dict[str, list[Path]]) -> torch.Tensor:
        return torch.tensor([classes.index(c) for c, paths in tree.items() for _ in paths], dtype=torch.long)

    def pixels(tree: dict[str, list[Path]]) -> torch.Tensor:
        return load_tensor([p for paths in tree.values() for p in paths], image_size, colour)

    x_test, y_test = pixels(test), labels(test)
    x_syn, y_syn = (pixels(synthetic), labels(synthetic)) if synthetic else (None, None)
    available = ["real"]
    if synthetic:
        available += ["real+synthetic", "synthetic"]
    if classic_augment_per_class:
        available += ["real+classic"] + (["real+classic+synth"] if synthetic else [])
    if arms is not None:
        if missing := sorted(set(arms) - set(available)):
            runnable = ", ".join(available)
            raise ValueError(f"Arm(s) {', '.join(missing)} need inputs not given; these can run: {runnable}.")
        available = [name for name in available if name in arms]
    arms = available
    results = {name: ArmResult(name, [], []) for name in arms}
    confusions = {name: np.zeros((len(classes), len(classes)), dtype=np.int64) for name in arms}

    # 3. Per seed: draw K real per class, build the arms, train and test each
    total, done = seeds * len(arms), 0
    for seed in range(seeds):
        rng = random.Random(seed)
        shots = {c: rng.sample(train[c], k) for c in classes}
        x_real, y_real = pixels(shots), labels(shots)
        x_classic = y_classic = None
        if classic_augment_per_class:
            augmented, y_list = [], []
            for c, paths in shots.items():
                sources = [load_rgb(p) for p in paths]
                for i in range(classic_augment_per_class):
                    augmented.append(image_to_array(classic_augment(sources[i % k], rng), image_size, colour))
                    y_list.append(classes.index(c))
            x_classic = arrays_to_tensor(augmented, image_size, colour)
            y_classic = torch.tensor(y_list, dtype=torch.long)
        sets = {
            "real": (x_real, y_real),
            "real+synthetic": (_cat(x_real, x_syn), _cat(y_real, y_syn)),
            "synthetic": (x_syn, y_syn),
            "real+classic": (_cat(x_real, x_classic), _cat(y_real, y_classic)),
            "real+classic+synth": (_cat(x_real, x_classic, x_syn), _cat(y_real, y_classic, y_syn)),
        }
        for name in arms:
            x, y = sets[name]
            model = train_recognizer(x, y, len(classes), steps, batch_size, seed)
            confusion = _confusion(model, x_test, y_test, len(classes))
            confusions[name] += confusion
            results[name].accuracies.append(round(float(np.trace(confusion) / len(y_test)), 4))
            results[name].train_sizes.append(len(x))
            done += 1
            if progress:
                progress(done, total, f"seed {seed} {name}: {results[name].accuracies[-1]:.3f}")

    # 4. Summaries and gains over the real arm
    base = float(np.mean(results["real"].accuracies)) if "real" in results else None
    for arm in results.values():
        arm.mean = round(float(np.mean(arm.accuracies)), 4)
        arm.std = round(float(np.std(arm.accuracies)), 4)
        arm.gain = None if arm.name == "real" or base is None else round(arm.mean - base, 4)
        arm.confusion = confusions[arm.name].tolist()
    return RecognitionReport(
        k,
        seeds,
        steps,
        classes,
        len(x_test),
        list(results.values()),
        classic_augment_per_class,
        0 if x_syn is None else len(x_syn),
        round(time.perf_counter() - start, 1),
        colour,
    )


def _cat(*tensors: torch.Tensor | None) -> torch.Tensor | None:
    present = [t for t in tensors if t is not None]
    return torch.cat(present) if present else None
