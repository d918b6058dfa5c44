"""Headless jobs on folders: the CLI's `generate` and `finetune` (the UI goes through the same engine calls)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image

from engine.config import DEFAULT_MASKED_STRENGTH, GenerationConfig, finetune_config
from engine.data import MASK_SUFFIX, list_images, load_rgb
from engine.generate import generate, resolve_token
from engine.models import load_pipeline, resolve_model
from engine.train import TrainResult, images_from_folder, latest_checkpoint, train

DEFAULT_STRENGTH = 0.6


def init_images(init: Path) -> list[Path]:
    """The init image, or every image in a folder; raises a readable error if there is none."""
    init = Path(init)
    if not init.exists():
        raise FileNotFoundError(f"Init image or folder not found: {init}")
    paths = list_images(init) if init.is_dir() else [init]
    if not paths:
        raise ValueError(f"No images in {init}.")
    return paths


def default_strength(pipe, class_name: str, masked: bool = False) -> float:
    """The token's tuned strength (for a masked repaint when `masked`) when the adapter stores one, else the default."""
    info = getattr(pipe, "adapter_info", None)
    token = info.tokens.get(class_name) if info else None
    tuned = (token.masked_strength if masked else token.default_strength) if token else None
    return tuned or (DEFAULT_MASKED_STRENGTH if masked else DEFAULT_STRENGTH)


def generate_to_folder(
    model: str | None,
    adapter: Path | None,
    class_name: str,
    init: Path,
    num: int,
    out: Path,
    strength: float | None = None,
    steps: int = 20,
    guidance: float | None = None,
    seed: int = 0,
    batch: int = 8,
    window_size: int | None = None,
    pipe=None,
    mask: Path | None = None,
    auto_place: bool = False,
) -> list[Path]:
    """Write `num` PNGs in total to `out`, cycling through the init images; returns the paths.

    With `mask` (an image of the init images' size, white = repaint) or `auto_place`, only the masked region is
    repainted; each PNG then gets its mask beside it as `<name>_mask.png` and its boxes in the metadata.
    """
    if num < 1:
        raise ValueError("--num must be at least 1.")
    if strength is not None and not 0 < strength <= 1:
        raise ValueError(f"Strength must be in (0, 1], got {strength}.")
    # Every other setting is checked before the model loads (strength 1 stands in for a tuned default).
    extra = {"guidance_scale": guidance} if guidance is not None else {}
    GenerationConfig(class_name, min(batch, num), strength or 1.0, steps, seed=seed, window_size=window_size, **extra)
    if mask is not None and auto_place:
        raise ValueError("Give --mask or --auto-place, not both.")
    mask_image = _read_mask(mask) if mask is not None else None
    sources = init_images(init)
    pipe = pipe or load_pipeline(model, adapter)
    resolve_token(pipe, class_name)
    masked = mask_image is not None or auto_place
    strength = strength if strength is not None else default_strength(pipe, class_name, masked)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    source_index = 0
    while len(written) < num:
        path = sources[source_index % len(sources)]
        source_index += 1
        count = min(batch, num - len(written))
        config = GenerationConfig(
            class_name=class_name,
            num_candidates=count,
            strength=strength,
            steps=steps,
            seed=seed + len(written),
            window_size=window_size,
            auto_place=auto_place,
            **extra,
        )
        try:
            image = load_rgb(path)
        except OSError as error:
            raise ValueError(f"Cannot read image {path}: {error}") from error
        if mask_image is not None and mask_image.size != image.size:
            size = f"{image.width}×{image.height}"
            raise ValueError(f"The mask is {mask_image.width}×{mask_image.height} but {path.name} is {size}.")
        for candidate in generate(pipe, image, config, mask=mask_image).candidates:
            candidate.params["source_file"] = path.name
            target = out / f"{class_name}_{len(written):05d}.png"
            target.write_bytes(candidate.png_bytes())
            mask_bytes = candidate.mask_png()
            if mask_bytes is not None:
                target.with_name(target.stem + MASK_SUFFIX).write_bytes(mask_bytes)
            written.append(target)
    return written


def _read_mask(path: Path) -> Image.Image:
    """A mask image from disk (white = repaint); raises a readable error if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mask not found: {path}")
    try:
        with Image.open(path) as opened:
            return opened.convert("L")
    except OSError as error:
        raise ValueError(f"Cannot read mask {path}: {error}") from error


def finetune_folder(
    dataset: Path,
    out: Path,
    model: str | None = None,
    classes: list[str] | None = None,
    preset: str = "cpu-quick",
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpointing_steps: int | None = None,
    background_loss_weight: float | None = None,
) -> TrainResult:
    """TI + LoRA fine-tune on `<class>/<images>`; the run folder becomes a loadable adapter when complete.

    Images with a defect mask beside them (`<name>_mask.png` or VOC `<name>.xml`) train with the masked loss when
    `background_loss_weight` (or the preset's) is below 1.
    """
    out = Path(out)
    if out.exists() and latest_checkpoint(out) is not None and not resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out.")
    resolved = resolve_model(model)
    resolution = _resolution_of(resolved)
    images = images_from_folder(dataset, classes, resolution)
    found = sorted({im.class_name for im in images})
    config = finetune_config(
        preset,
        model=resolved,
        output_dir=str(out),
        classes=classes or found,
        max_train_steps=steps,
        train_batch_size=batch_size,
        seed=seed,
        resolution=resolution,
        checkpointing_steps=checkpointing_steps,
        background_loss_weight=background_loss_weight,
    )
    return train(config, images, progress, should_stop)


def _resolution_of(model_ref: str) -> int:
    """The model's pixel resolution, read from its configs without loading weights."""
    unet_config = UNet2DConditionModel.load_config(model_ref, subfolder="unet")
    vae_config = AutoencoderKL.load_config(model_ref, subfolder="vae")
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    return int(unet_config["sample_size"] * scale)
