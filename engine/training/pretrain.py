"""Pretraining the embedded steel prior from a folder of steel images, in resumable stages.

1. autoencoder: AutoencoderKL on random crops (L1 + spectral + KL, optionally perceptual), checkpointed;
1b. decoder: the decoder fine-tuned on the frozen encoder with perceptual, texture and patch-GAN losses;
2. latents: every training image encoded once (the UNet stage never runs the encoder);
3. diffusion: UNet + text encoder on captions that never name a class (generic, or generic plus the image's measured
   appearance), with the shared training loop;
4. the result is saved as an ordinary diffusers folder that `load_pipeline` opens.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from engine.config import (
    CAPTION_KINDS,
    DEFAULT_PRETRAIN_STAGES,
    PRETRAIN_STAGES,
    AutoencoderConfig,
    DecoderConfig,
    TrainConfig,
    pretrain_configs,
)
from engine.data import (
    LabelledImage,
    clean_regions,
    list_images,
    load_rgb,
    read_image_folder,
    read_neu,
    split_neu,
    square_views,
    to_square_pixels,
)
from engine.evaluation.features import load_feature_net
from engine.progress import ProgressFn, append_log
from engine.training.attributes import appearance_captions
from engine.training.losses import feature_maps, perceptual_distance, spectral_loss
from engine.training.prior import PriorSize, build_vae
from engine.training.schedule import replanned_steps

# Captions never name a class: the classes are what the defect tokens learn later.
DEFECT_CAPTIONS = (
    "a grayscale photo of a hot rolled steel strip surface",
    "a grayscale photo of a steel surface with defects",
    "a gray photo of a hot rolled steel surface",
    "an industrial inspection image of a steel strip surface",
)
CLEAN_CAPTIONS = (
    "a grayscale photo of a clean steel surface",
    "a grayscale photo of a defect free steel surface",
    "a clean hot rolled steel strip surface without defects",
)
# A clean crop must be at least this large (in source pixels) so that resizing it does not invent blur.
MIN_CLEAN_CROP = 96


@dataclass
class PretrainSample:
    """One training image (uint8, H×W×3 at the prior's resolution) and its caption."""

    pixels: np.ndarray
    caption: str


def collect_pretrain_samples(
    data: Path, resolution: int, seed: int = 0, captions: str = "generic"
) -> list[PretrainSample]:
    """Training images with captions that never name a class: defect images (a wide one as its square views,
    `data.square_views`), plus clean crops outside the NEU-DET boxes. `captions="appearance"` follows each generic
    caption with the image's measured appearance words (`engine.training.attributes`).

    A NEU folder (with manifest.csv) keeps its validation split out; any other folder is read as
    an ImageFolder tree or a flat folder of images, all used.
    """
    if captions not in CAPTION_KINDS:
        raise ValueError(f"Unknown captions {captions!r}; choose one of {', '.join(CAPTION_KINDS)}.")
    rng = random.Random(seed)
    data = Path(data)
    if (data / "manifest.csv").exists():
        items, _ = split_neu(read_neu(data))
    elif any(p.is_dir() for p in data.iterdir()):
        items = read_image_folder(data)
    else:
        items = [LabelledImage(p, "") for p in list_images(data)]
    if not items:
        raise ValueError(f"No images found in {data}.")
    samples = []
    for item in items:
        image = load_rgb(item.path)
        for view in square_views(image.width, image.height):
            samples.append(PretrainSample(to_square_pixels(image.crop(view), resolution), rng.choice(DEFECT_CAPTIONS)))
        for x0, y0, x1, y1 in clean_regions(image.width, image.height, item.boxes, MIN_CLEAN_CROP):
            side = min(x1 - x0, y1 - y0)
            cx = rng.randint(x0, x1 - side)
            cy = rng.randint(y0, y1 - side)
            crop = image.crop((cx, cy, cx + side, cy + side))
            samples.append(PretrainSample(to_square_pixels(crop, resolution), rng.choice(CLEAN_CAPTIONS)))
    if captions == "appearance":
        described = appearance_captions([s.caption for s in samples], [s.pixels for s in samples])
        samples = [PretrainSample(s.pixels, caption) for s, caption in zip(samples, described, strict=True)]
    return samples


def pixels_to_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 -> float N×3×H×W in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_autoencoder(
    samples: list[PretrainSample],
    config: AutoencoderConfig,
    size: PriorSize,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AutoencoderKL:
    """Train (or resume) the prior's AutoencoderKL; returns the trained model, also saved in `output_dir/final`."""
    out = Path(config.output_dir)
    final = out / "final"
    if (finished := finished_stage(out)) is not None:
        return finished
    config.save(out / "config.json")
    torch.manual_seed(config.seed)
    device = training_device()
    vae = build_vae(size).to(device)
    features = None
    if config.perceptual_weight > 0:
        features = load_feature_net(config.feature_net).to(device)
        features.requires_grad_(False)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s / config.max_train_steps, 1))),
    )
    start_step = 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = state["step"]
    rng = np.random.default_rng(config.seed + start_step)
    stack = np.stack([s.pixels for s in samples])
    vae.train()
    started = time.time()
    step = start_step
    while step < config.max_train_steps:
        batch = _random_crops(stack, config.train_batch_size, config.crop_size, rng)
        x = pixels_to_tensor(batch).to(device)
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        l1 = (reconstruction - x).abs().mean()
        spectral = spectral_loss(reconstruction, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = l1 + config.spectral_weight * spectral + config.kl_weight * kl
        perceptual = torch.zeros(())
        if features is not None:
            with torch.no_grad():
                target_maps = feature_maps(features, x)
            perceptual = perceptual_distance(feature_maps(features, reconstruction), target_maps)
            loss = loss + config.perceptual_weight * perceptual
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step = step + 1
        if (planned := replanned_steps(config, done, start_step, started)) is not None:
            config.max_train_steps = planned
        if done % 25 == 0:
            record = {
                "step": done,
                "l1": l1.item(),
                "spectral": spectral.item(),
                "perceptual": perceptual.item(),
                "kl": kl.item(),
                "elapsed_s": round(time.time() - started, 1),
            }
            append_log(out, record)
        if progress:
            progress(done, config.max_train_steps, f"autoencoder l1 {l1.item():.4f}")
        stop = should_stop is not None and should_stop()
        if done % config.checkpointing_steps == 0 or stop:
            atomic_save(
                {
                    "model": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": done,
                },
                checkpoint,
            )
        if stop:
            raise InterruptedError(f"Autoencoder training stopped at step {done}; resume to continue.")
    vae.eval()
    vae.to("cpu").save_pretrained(final)
    return vae


def finished_stage(out: Path) -> AutoencoderKL | None:
    """The AutoencoderKL an autoencoder stage saved in `out/final` when it finished, else None (and `out` exists)."""
    if (Path(out) / "final" / "config.json").exists():
        return AutoencoderKL.from_pretrained(Path(out) / "final")
    Path(out).mkdir(parents=True, exist_ok=True)
    return None


def training_device() -> torch.device:
    """CUDA when present (the GPU preset), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _random_crops(stack: np.ndarray, batch_size: int, crop: int, rng: np.random.Generator) -> np.ndarray:
    n, h, w, _ = stack.shape
    idx = rng.integers(0, n, batch_size)
    ys = rng.integers(0, h - crop + 1, batch_size)
    xs = rng.integers(0, w - crop + 1, batch_size)
    crops = np.stack([stack[i, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs, strict=True)])
    flips = rng.random(batch_size) < 0.5
    crops[flips] = crops[flips, :, ::-1]
    return crops


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves half a checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


@torch.no_grad()
def encode_pixels(vae: AutoencoderKL, pixels: np.ndarray, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (on the CPU) of uint8 N×H×W×3 images, encoded in batches on the vae's device."""
    means, stds = [], []
    device = next(vae.parameters()).device
    for start in range(0, len(pixels), batch_size):
        dist = vae.encode(pixels_to_tensor(pixels[start : start + batch_size]).to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


def round_trip(
    vae: AutoencoderKL, pixels: np.ndarray, batch_size: int = 32
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches (input, decoded posterior mode) of uint8 N×H×W×3 images through the autoencoder, both in [-1, 1]."""
    for start in range(0, len(pixels), batch_size):
        x = pixels_to_tensor(pixels[start : start + batch_size])
        with torch.no_grad():
            decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        yield x, decoded


def reconstruction_error(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 32) -> float:
    """Mean absolute round-trip error on a [-1, 1] scale."""
    return float(np.mean([(decoded - x).abs().mean().item() for x, decoded in round_trip(vae, images, batch_size)]))


@dataclass
class PretrainResult:
    """The pretrained prior and the figures the model card reports."""

    model_dir: Path
    autoencoder_l1: dict[str, float]
    scaling_factor: float
    diffusion: object
    # Share of NEU validation images whose autoencoder round trip the steel feature network puts in their class.
    round_trip_recognition: dict[str, float] | None = None


def validation_round_trip(vae: AutoencoderKL, data: Path, resolution: int) -> dict[str, float] | None:
    """Round-trip recognition of a NEU folder's validation split (None for another folder or a non-NEU class)."""
    from engine.evaluation.features import load_feature_net
    from engine.training.decoder import round_trip_recognition

    if not (data / "manifest.csv").exists():
        return None
    _, validation = split_neu(read_neu(data))
    net = load_feature_net()
    validation = [item for item in validation if item.class_name in net.classes]
    if not validation:
        return None
    pixels = np.stack([to_square_pixels(load_rgb(item.path), resolution) for item in validation])
    return round_trip_recognition(vae, pixels, [item.class_name for item in validation], net)


def pretrain(
    data: Path,
    out: Path,
    work_dir: Path | None = None,
    size: PriorSize | None = None,
    autoencoder: AutoencoderConfig | None = None,
    diffusion: TrainConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    init_model: Path | None = None,
    decoder: DecoderConfig | None = None,
    stages: tuple[str, ...] = DEFAULT_PRETRAIN_STAGES,
    fresh_denoiser: bool = False,
) -> PretrainResult:
    """Reproduce the prior from images, in resumable stages: autoencoder, its decoder fine-tuned with perceptual and
    adversarial losses (`engine.training.decoder`), scaling factor, then UNet + text encoder.

    With `init_model` (a prior folder, e.g. the shipped one) the autoencoder stage is skipped: the decoder stage
    starts from that model's autoencoder and the diffusion stage continues from its UNet and text encoder (the
    encoder, hence the latents, never change after the first stage). `stages` picks which of the decoder and
    diffusion stages run; without "diffusion" the output is `init_model` with the new decoder. With `fresh_denoiser`
    the diffusion stage keeps only `init_model`'s autoencoder and trains a new UNet and text encoder of `size` on its
    latents (a new diffusion recipe without retraining the autoencoder). The captions are `diffusion.captions` (see
    `collect_pretrain_samples`). `autoencoder.downsampling`, when set, replaces `size`'s for a new autoencoder (a
    4x-down one and the UNet on its grid; `init_model`'s autoencoder is kept as it is). The decoder stage is
    measured and not shipped, so it runs only when `stages` names it.
    """
    if unknown := set(stages) - set(PRETRAIN_STAGES):
        raise ValueError(f"Unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(PRETRAIN_STAGES)}.")
    if "diffusion" not in stages and init_model is None:
        raise ValueError("Without the diffusion stage, give the model to put the new decoder in (init_model).")
    if "decoder" in stages and decoder is not None and decoder.denoised_share > 0 and init_model is None:
        raise ValueError("Decoding denoised latents needs a UNet: give the prior to continue from (init_model).")
    if fresh_denoiser and (init_model is None or "diffusion" not in stages):
        raise ValueError("A fresh denoiser trains on a prior's autoencoder: give init_model and the diffusion stage.")
    from diffusers import StableDiffusionImg2ImgPipeline

    from engine.training.decoder import one_step_denoiser, train_decoder
    from engine.training.loop import TrainingImage, process_state, train
    from engine.training.prior import build_components

    autoencoder = autoencoder or pretrain_configs("cpu")[1]
    size = size or PriorSize.embedded()
    if autoencoder.downsampling and init_model is None:
        size = size.with_autoencoder_downsampling(autoencoder.downsampling)
    if fresh_denoiser:
        # Checked before the images are read: a mismatch would otherwise surface minutes later.
        channels = AutoencoderKL.load_config(Path(init_model), subfolder="vae")["latent_channels"]
        if channels != size.latent_channels:
            raise ValueError(
                f"The autoencoder has {channels} latent channels, the {size.latent_channels}-channel UNet of this"
                " size cannot train on it: pick the size the autoencoder was made for."
            )
    work = Path(work_dir) if work_dir else Path(str(out).rstrip("/") + ".work")
    work.mkdir(parents=True, exist_ok=True)
    diffusion = diffusion or pretrain_configs("cpu")[3]
    autoencoder.output_dir = str(work / "autoencoder")
    autoencoder.resolution = size.resolution
    autoencoder.crop_size = min(autoencoder.crop_size, size.resolution)
    samples = collect_pretrain_samples(Path(data), size.resolution, autoencoder.seed, diffusion.captions)
    stack = np.stack([s.pixels for s in samples])

    # Stages 1-3 run on the main process first; the other processes (under torchrun) then load what it saved.
    state = process_state()
    with state.main_process_first():
        # 1. Autoencoder (or the one of the model to continue from)
        if init_model is not None:
            vae = AutoencoderKL.from_pretrained(Path(init_model), subfolder="vae", dtype=torch.float32)
        else:
            vae = train_autoencoder(samples, autoencoder, size, progress, should_stop)
        vae.eval()

        # 1b. Decoder: perceptual + texture + patch-GAN on the frozen encoder
        round_trip_shares = None
        if "decoder" in stages:
            decoder = decoder or pretrain_configs("cpu")[2]
            decoder.output_dir = str(work / "decoder")
            denoiser = None
            if decoder.denoised_share > 0:
                denoiser = one_step_denoiser(init_model, training_device())
            vae = train_decoder(vae, stack, decoder, progress, should_stop, denoiser)
            vae.eval()
            if state.is_main_process:
                round_trip_shares = validation_round_trip(vae, Path(data), size.resolution)
        if "diffusion" not in stages:
            l1 = {"all": reconstruction_error(vae, stack[:256])}
            if state.is_main_process:
                pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(init_model), safety_checker=None)
                pipe.register_modules(vae=vae)
                pipe.to(torch.float16).save_pretrained(str(out))
            return PretrainResult(Path(out), l1, vae.config.scaling_factor, None, round_trip_shares)

        # 2. Scaling factor: unit variance latents, as SD's 0.18215 was chosen (a continued model keeps its own)
        if init_model is None:
            picks = stack[np.random.default_rng(0).choice(len(stack), min(256, len(stack)), replace=False)]
            vae.register_to_config(scaling_factor=float(1.0 / encode_pixels(vae, picks)[0].std()))
        scaling = vae.config.scaling_factor
        l1 = {"all": reconstruction_error(vae, stack[:256])}

        # 3. Untrained UNet + text encoder beside the trained autoencoder, saved as the starting folder
        init = Path(init_model) if init_model is not None and not fresh_denoiser else work / "init"
        if not (init / "model_index.json").exists():
            components = build_components(size, init / "tmp", seed=autoencoder.seed)
            components["vae"] = vae
            StableDiffusionImg2ImgPipeline(
                **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
            ).save_pretrained(str(init))
            shutil.rmtree(init / "tmp", ignore_errors=True)

    # 4. Diffusion training with the shared loop, saved to `out`
    diffusion.mode = "pretrain"
    diffusion.model = str(init)
    diffusion.output_dir = str(work / "diffusion")
    diffusion.save_dir = str(out)
    diffusion.resolution = size.resolution
    images = [TrainingImage(s.pixels, "", s.caption) for s in samples]
    result = train(diffusion, images, progress, should_stop)
    if init_model is not None and "decoder" in stages and result.status == "completed" and state.is_main_process:
        # The continued model was saved with init_model's autoencoder; the new decoder replaces it.
        vae.to(torch.float16 if diffusion.save_half else torch.float32).save_pretrained(str(Path(out) / "vae"))
    return PretrainResult(Path(out), l1, scaling, result, round_trip_shares)
