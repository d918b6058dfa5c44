"""The steel feature network: a small CNN trained on NEU whose pooled features stand in for Inception's.

Inception features describe ImageNet objects, not rolled-steel texture; a classifier trained on the six
NEU classes gives features in which crazing and scratches sit apart. It feeds KID/FID, the realism score
and the two-sample test, and its head classifies generated images.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from engine.config import WEIGHTS_DIR, ConfigMixin
from engine.data import LabelledImage, load_rgb, read_image_folder, read_neu, split_neu
from engine.progress import ProgressFn

SHIPPED_FEATURES = WEIGHTS_DIR / "steel-features"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class FeatureNetConfig(ConfigMixin):
    """Architecture, input normalisation and training record of a steel feature network."""

    classes: list[str] = field(default_factory=list)
    # 128 px keeps crazing's fine cracks visible after the 200 → 128 resize and costs ~80 MMAC per image.
    input_size: int = 128
    # Channels of the stride-2 stem and of each conv block; the last width is the feature size.
    widths: list[int] = field(default_factory=lambda: [24, 32, 64, 128, 128])
    mean: float = 0.5
    std: float = 0.25
    epochs: int = 0
    seed: int = 0
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    val_per_class: dict[str, float] = field(default_factory=dict)
    train_seconds: float | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input_size must be at least 16, got {self.input_size}.")
        if len(self.widths) < 2:
            raise ValueError("widths needs the stem width and at least one block width.")
        if self.std <= 0:
            raise ValueError("std must be positive.")


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SteelFeatureNet(nn.Module):
    """Stride-2 stem, conv blocks with max-pooling between them, global average pooling, linear head.

    `forward` takes N×C×H×W images in [0, 1] (uint8 is scaled; RGB is averaged to grey; other sizes are
    resized) and returns the N×d pooled features, which is what torchmetrics expects of a `feature` module.
    `classify` returns the class logits.
    """

    def __init__(self, config: FeatureNetConfig) -> None:
        super().__init__()
        if not config.classes:
            raise ValueError("A feature network needs its class names.")
        self.config = config
        widths = config.widths
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            blocks.append(_block(a, b))
            if i < len(widths) - 2:
                blocks.append(nn.MaxPool2d(2))
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(widths[-1], len(config.classes))
        self.num_features = widths[-1]
        self.register_buffer("mean", torch.tensor(config.mean), persistent=False)
        self.register_buffer("std", torch.tensor(config.std), persistent=False)

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Bring any image batch to normalised N×1×S×S float."""
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        size = self.config.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(self.prepare(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))

    @torch.no_grad()
    def features_and_probs(self, x: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and softmax probabilities in eval mode, batched."""
        self.eval()
        feats, probs = [], []
        for start in range(0, len(x), batch_size):
            f = self.embed(x[start : start + batch_size])
            feats.append(f)
            probs.append(self.head(f).softmax(dim=1))
        return torch.cat(feats), torch.cat(probs)


def images_by_class(root: Path | str) -> dict[str, list[Path]]:
    """`<class>/<images>` → {class: paths}."""
    grouped: dict[str, list[Path]] = {}
    for item in read_image_folder(Path(root)):
        grouped.setdefault(item.class_name, []).append(item.path)
    return grouped


def image_to_array(image: Image.Image, size: int, colour: bool = False) -> np.ndarray:
    """Centre square crop, grey (RGB with `colour`), resized to size×size uint8 (antialiased)."""
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    image = image.convert("RGB" if colour else "L")
    if side != size:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def arrays_to_tensor(arrays: list[np.ndarray], size: int, colour: bool = False) -> torch.Tensor:
    """`image_to_array` outputs → N×C×size×size float in [0, 1] (C: 3 with `colour`, else 1)."""
    if not arrays:
        return torch.zeros(0, 3 if colour else 1, size, size)
    stack = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    return stack.permute(0, 3, 1, 2).contiguous() if colour else stack.unsqueeze(1)


def images_to_tensor(images: list[Image.Image], size: int, colour: bool = False) -> torch.Tensor:
    """PIL images → N×C×size×size float in [0, 1] (C: 3 with `colour`, else 1)."""
    return arrays_to_tensor([image_to_array(im, size, colour) for im in images], size, colour)


def load_tensor(paths: list[Path], size: int, colour: bool = False) -> torch.Tensor:
    """Image files → N×C×size×size float in [0, 1] (C: 3 with `colour`, else 1); raises a readable error for an
    unreadable file."""
    return arrays_to_tensor([image_to_array(load_rgb(path), size, colour) for path in paths], size, colour)


def save_feature_net(net: SteelFeatureNet, folder: Path) -> None:
    """Write `model.safetensors` + `config.json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    net.config.save(folder / CONFIG_FILE)


def load_feature_net(folder: Path | str | None = None) -> SteelFeatureNet:
    """Load a saved feature network (default: the shipped NEU one) in eval mode."""
    folder = Path(folder) if folder else SHIPPED_FEATURES
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"No feature network in {folder} (expected {WEIGHTS_FILE} and {CONFIG_FILE}); "
            "train one with `python launch.py evaluate train-features`."
        )
    net = SteelFeatureNet(FeatureNetConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text())))
    net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return net.eval()


@dataclass
class FeatureTrainResult:
    """A trained feature network and its record."""

    net: SteelFeatureNet
    train_accuracy: float
    val_accuracy: float
    val_per_class: dict[str, float]
    seconds: float
    output_dir: Path | None = None


def augment_batch(x: torch.Tensor, generator: torch.Generator, out_size: int) -> torch.Tensor:
    """Random crop-resize (60–100 % of the side), h/v flips and slight brightness/contrast, on a batch."""
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    scale = uniform(0.6, 1.0)
    flip_x = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    tx = (1 - scale) * uniform(-1.0, 1.0)
    ty = (1 - scale) * uniform(-1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * flip_x
    theta[:, 1, 1] = scale * flip_y
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, [n, 1, out_size, out_size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(0.9, 1.1).view(n, 1, 1, 1)
    brightness = uniform(-0.05, 0.05).view(n, 1, 1, 1)
    return ((out - mean) * contrast + mean + brightness).clamp(0, 1)


def accuracy_by_class(
    net: SteelFeatureNet, x: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> tuple[float, dict[str, float]]:
    """Overall and per-class accuracy of the network's head."""
    _, probs = net.features_and_probs(x)
    correct = probs.argmax(dim=1) == labels
    per_class = {c: float(correct[labels == i].float().mean()) for i, c in enumerate(classes) if (labels == i).any()}
    return float(correct.float().mean()), per_class


def fit_feature_network(
    train_items: list[LabelledImage],
    val_items: list[LabelledImage],
    config: FeatureNetConfig,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    progress: ProgressFn | None = None,
) -> FeatureTrainResult:
    """Train a feature network from labelled images (classes from `config.classes`, else from the items)."""
    # 1. Check inputs and load every image once at the network's size
    if not train_items:
        raise ValueError("No training images.")
    if epochs < 1:
        raise ValueError("epochs must be at least 1.")
    classes = config.classes or sorted({it.class_name for it in train_items})
    unknown = {it.class_name for it in train_items + val_items} - set(classes)
    if unknown:
        raise ValueError(f"Images of classes outside the network's classes: {sorted(unknown)}.")
    config.classes = list(classes)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    size = config.input_size
    x_train = load_tensor([it.path for it in train_items], size)
    y_train = torch.tensor([classes.index(it.class_name) for it in train_items])
    x_val = load_tensor([it.path for it in val_items], size)
    y_val = torch.tensor([classes.index(it.class_name) for it in val_items], dtype=torch.long)
    config.mean = float(x_train.mean())
    config.std = float(x_train.std())

    # 2. Model, optimiser, one-cycle schedule
    net = SteelFeatureNet(config)
    steps_per_epoch = max(1, len(x_train) // batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=total)

    # 3. Loop
    step = 0
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            batch = augment_batch(x_train[idx], generator, size)
            loss = F.cross_entropy(net.classify(batch), y_train[idx], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if progress:
                progress(step, total, f"epoch {epoch + 1}/{epochs} step {step}/{total} loss {loss.item():.3f}")

    # 4. Record accuracy on the unaugmented images
    net.eval()
    train_acc, _ = accuracy_by_class(net, x_train, y_train, classes)
    val_acc, val_per_class = accuracy_by_class(net, x_val, y_val, classes) if len(x_val) else (float("nan"), {})
    seconds = time.perf_counter() - start
    config.epochs = epochs
    config.train_accuracy = round(train_acc, 4)
    config.val_accuracy = round(val_acc, 4) if len(x_val) else None
    config.val_per_class = {c: round(a, 4) for c, a in val_per_class.items()}
    config.train_seconds = round(seconds, 1)
    config.threads = torch.get_num_threads()
    return FeatureTrainResult(net, train_acc, val_acc, val_per_class, seconds)


def train_feature_network(
    neu_root: Path,
    out_path: Path,
    epochs: int = 12,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> FeatureTrainResult:
    """Train on the NEU training pool (never its validation split), save to `out_path`, report val accuracy."""
    pool, val = split_neu(read_neu(neu_root))
    config = FeatureNetConfig(seed=seed)
    result = fit_feature_network(pool, val, config, epochs, progress=progress)
    save_feature_net(result.net, out_path)
    result.output_dir = Path(out_path)
    return result
