"""The one diffusion training loop: pretraining a prior and TI + LoRA fine-tuning are two configs of it.

Order (as in diffusers' textual_inversion and train_dreambooth_lora examples): accelerator → load →
freeze → attach trainable parts (new tokens, LoRA) → encode latents once → prepare → resume → loop →
save in library formats → previews from the reloaded files.

Under `accelerate launch` or `torchrun` every process trains on its own share of each step's batch (the global
batch is `train_batch_size` × processes), Accelerate averages the gradients, and only the main process writes
config, log, checkpoints and the saved model; the others wait at barriers.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel, compute_snr
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from engine.adapters import ESTIMATED_MASKS, LORA_FILE, write_adapter_index
from engine.config import TrainConfig
from engine.generation.pipeline import model_hash, resolve_model
from engine.generation.placement import learnt_statistics
from engine.generation.variation import defect_colour_structure, defect_tint
from engine.masks import estimate_defect_mask
from engine.progress import ProgressFn, StepFn, StopFn, TrainingStep, append_log
from engine.training.attributes import shared_words
from engine.training.pretrain import encode_pixels
from engine.training.schedule import replanned_steps

# Captions for fine-tuning; the first is also the generation prompt's default.
TOKEN_TEMPLATES = (
    "a grayscale photo of a steel surface with {token}",
    "a photo of {token} on a hot rolled steel strip",
    "a steel strip surface with {token}",
    "an inspection image of {token}",
    "{token}",
)
# Sensible words to start each NEU token from (textual inversion initialisation).
INIT_WORDS = {
    "crazing": "cracks",
    "inclusion": "inclusion",
    "patches": "patches",
    "pitted_surface": "pits",
    "rolled-in_scale": "scale",
    "scratches": "scratches",
}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class TrainingImage:
    """One training image at the model's resolution (uint8 H×W×3) with its class ('' in pretraining) and caption.

    `mask` (bool H×W, True = defect) marks where the defect is, for the masked loss; None: unknown or everywhere.
    A wide image trains as several square views (`data.square_views`); its first carries `image_mask`, the whole
    image's defect mask at the views' scale, and `size`, the image's own (width, height): what the class's
    auto-place statistics count, per image and in its own pixels (a view would cut a defect or count it twice).
    """

    pixels: np.ndarray
    class_name: str = ""
    caption: str = ""
    mask: np.ndarray | None = None
    image_mask: np.ndarray | None = None
    size: tuple[int, int] | None = None


@dataclass
class TrainResult:
    """What a training run produced."""

    status: str
    output_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    previews: list[Path] = field(default_factory=list)
    # The checkpoint step this run continued from (None: it started from scratch).
    resumed_from: int | None = None

    @property
    def final_loss(self) -> float | None:
        tail = self.losses[-50:]
        return float(np.mean(tail)) if tail else None


def process_state() -> PartialState:
    """This process's place among those `torchrun`/`accelerate launch` started (one process when run plainly).

    On a machine without a GPU the processes join over gloo (Accelerate needs `cpu=True` to see them).
    """
    return PartialState(cpu=_cpu_only())


def shared_value(make: Callable[[], object]) -> object:
    """`make()` on the main process, handed to every process (for a name all processes must agree on)."""
    state = process_state()
    if state.num_processes == 1:
        return make()
    from accelerate.utils import broadcast_object_list

    holder = [make() if state.is_main_process else None]
    return broadcast_object_list(holder)[0]


def _cpu_only() -> bool:
    return not torch.cuda.is_available()


def token_for(class_name: str) -> str:
    return f"<{class_name}>"


def init_words_for(classes: list[str], images: list[TrainingImage], tokenizer: CLIPTokenizer) -> dict[str, str]:
    """Where each new class token starts (textual inversion initialisation), as words the tokenizer knows.

    A NEU class starts from its word in INIT_WORDS. Any other class starts from the last word of its own name that no
    other class's name shares and the tokenizer knows whole — the head of an English compound ("surface scratch" ->
    "scratch", "rolled pit" -> "pit", "edge crack" -> "crack") — or else from "defect", followed by the
    appearance words most of its images carry (`engine.training.attributes.shared_words`): the words the embedded
    prior was pretrained on, so that classes with uninformative names ("type 1", "type 2") start apart, each near
    what its images look like.
    """
    by_class = {c: [im.pixels for im in images if im.class_name == c] for c in classes}
    appearance = shared_words(by_class) if any(c not in INIT_WORDS for c in classes) else {}
    words = {}
    for class_name in classes:
        if class_name in INIT_WORDS:
            words[class_name] = INIT_WORDS[class_name]
            continue
        others = {w for c in classes if c != class_name for w in _name_words(c)}
        own = [w for w in _name_words(class_name) if w not in others and len(tokenizer.tokenize(w)) == 1]
        words[class_name] = " ".join([own[-1] if own else "defect", *appearance.get(class_name, [])])
    return words


def _name_words(class_name: str) -> list[str]:
    """The alphabetic words of a class name of three letters or more ("pitted_surface 2" -> pitted, surface)."""
    return [w for w in re.findall(r"[a-z]+", class_name.lower()) if len(w) >= 3]


def train(
    config: TrainConfig,
    images: list[TrainingImage],
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_step: StepFn | None = None,
) -> TrainResult:
    """Run (or resume) one training job; a stopped job keeps its last checkpoint and can be resumed.

    `progress` gets a line per step for people; `on_step` the step's figures for programs (the studio's bar).
    """
    started = time.time()
    if not images:
        raise ValueError("No training images.")
    out = Path(config.output_dir)

    # 1. Accelerator and seed
    # The learning-rate schedule counts optimizer steps: without step_scheduler_with_optimizer=False Accelerate steps
    # it once per process, so N processes would run through it N times faster.
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        project_dir=str(out),
        cpu=_cpu_only(),
        step_scheduler_with_optimizer=False,
    )
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    if main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")
    accelerator.wait_for_everyone()
    set_seed(config.seed)

    # 2. Load components and freeze what is not trained
    model_ref = resolve_model(config.model)
    tokenizer = CLIPTokenizer.from_pretrained(model_ref, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model_ref, subfolder="text_encoder", dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(model_ref, subfolder="vae", dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(model_ref, subfolder="unet", dtype=torch.float32)
    noise_scheduler = DDPMScheduler.from_pretrained(model_ref, subfolder="scheduler", **_schedule_overrides(config))
    vae.requires_grad_(False)

    # 3. Attach trainable parts
    if config.mode == "finetune":
        chosen = init_words_for(config.classes, images, tokenizer)
        config.init_words = {c: config.init_words.get(c) or chosen[c] for c in config.classes}
    new_token_ids, param_groups, ema = _attach_trainable(config, tokenizer, text_encoder, unet)
    if config.mode == "finetune" and main:
        config.save(out / "config.json")  # with the init word each new token started from
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    original_embeddings = text_encoder.get_input_embeddings().weight.detach().clone()
    keep_rows = torch.ones(len(tokenizer), dtype=torch.bool)
    keep_rows[list(new_token_ids.values())] = False

    # 4. Encode every image once (and its mirror): the loop never runs the encoder; the main process caches them
    vae.to(accelerator.device)
    with accelerator.main_process_first():
        data = _encode_training_set(vae, tokenizer, images, config, out, write_cache=main)

    # 5. Optimizer, schedule, prepare
    optimizer = torch.optim.AdamW(param_groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config))
    unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(unet, text_encoder, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)

    # 6. Resume from the newest checkpoint (written with any number of processes)
    global_step = 0
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        global_step = int(checkpoint.name.split("-")[1])
    resumed_from = global_step if checkpoint is not None else None
    losses: list[float] = []
    # One generator, seeded alike on every process: each draws the whole step's batch and keeps its own share.
    generator = torch.Generator().manual_seed(config.seed + global_step)
    share = slice(rank * config.train_batch_size, (rank + 1) * config.train_batch_size)
    global_batch = config.train_batch_size * world
    window_started, window_steps = time.time(), 0
    loop_started, first_step = time.time(), global_step

    # 7. Loop
    unet.train()
    text_encoder.train()
    status = "completed"
    while global_step < config.max_train_steps:
        with accelerator.accumulate(unet):
            batch = _draw_batch(data, generator, global_batch, share, noise_scheduler, config, accelerator.device)
            loss = _batch_loss(batch, unet, text_encoder, noise_scheduler, config.snr_gamma)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_([p for g in param_groups for p in g["params"]], 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if new_token_ids:
                with torch.no_grad():
                    weight = accelerator.unwrap_model(text_encoder).get_input_embeddings().weight
                    weight[keep_rows] = original_embeddings[keep_rows].to(weight.dtype)
        if ema is not None:
            ema.step(unet.parameters())
        global_step += 1
        window_steps += 1
        step_loss = accelerator.reduce(loss.detach(), reduction="mean").item() if world > 1 else loss.item()
        losses.append(step_loss)
        if main:
            report = TrainingStep(global_step, config.max_train_steps, step_loss)
            if on_step:
                on_step(report)
            if progress:
                progress(report.step, report.total, report.message)
        if global_step % 10 == 0:
            index = batch.index
            seen = accelerator.gather(index.to(accelerator.device)).cpu().view(world, -1) if world > 1 else index[None]
            if main:
                elapsed = time.time() - window_started
                entry = {
                    "step": global_step,
                    "loss": float(np.mean(losses[-10:])),
                    "lr": lr_scheduler.get_last_lr()[0],
                    "elapsed_s": round(time.time() - started, 1),
                    "processes": world,
                    "images_per_s_per_process": round(window_steps * config.train_batch_size / max(elapsed, 1e-9), 2),
                    "batch_by_process": seen.tolist(),
                }
                append_log(out, entry)
            window_started, window_steps = time.time(), 0
        stop_now = should_stop is not None and should_stop()
        if world > 1:
            stop_now = accelerator.reduce(torch.tensor(float(stop_now), device=accelerator.device), "sum").item() > 0
        if (planned := replanned_steps(config, global_step, first_step, loop_started)) is not None:
            if world > 1:
                planned = int(accelerator.gather(torch.tensor([planned], device=accelerator.device)).min().item())
            config.max_train_steps = planned
        if global_step % config.checkpointing_steps == 0 or stop_now:
            save_checkpoint(accelerator, out, global_step, config.checkpoints_total_limit)
        if stop_now and global_step < config.max_train_steps:
            status = "stopped"
            break

    # 8. Save in library formats (only a complete run writes its index file, last)
    result = TrainResult(status, out, global_step, losses, time.time() - started, resumed_from=resumed_from)
    if status == "completed" and main:
        unet = accelerator.unwrap_model(unet)
        text_encoder = accelerator.unwrap_model(text_encoder)
        if config.mode == "finetune":
            _save_adapter(config, out, unet, text_encoder, new_token_ids, model_ref, images)
        else:
            if ema is not None:
                ema.copy_to(unet.parameters())
            _save_prior(config, vae, text_encoder, tokenizer, unet, noise_scheduler)
        result.wall_time_s = time.time() - started

    # 9. Tear down: drop the DDP wrappers while their process group still lives. A Reducer that outlives the group
    # destroys it on its own, joining gloo's threads while holding the GIL that those threads may wait for (a hang).
    del unet, text_encoder, optimizer, lr_scheduler
    accelerator.free_memory()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _attach_trainable(
    config: TrainConfig, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, unet: UNet2DConditionModel
) -> tuple[dict[str, int], list[dict], EMAModel | None]:
    """Make trainable what the job trains: a fine-tune's new class tokens and LoRA on the frozen UNet, or (pretraining)
    the whole UNet and text encoder, with an EMA of the UNet when `config.ema_decay`. Returns the new token ids
    (class -> id), the optimizer's parameter groups and the EMA."""
    if config.mode != "finetune":
        unet.requires_grad_(True)
        text_encoder.requires_grad_(True)
        param_groups = [
            {"params": list(unet.parameters()) + list(text_encoder.parameters()), "lr": config.learning_rate}
        ]
        ema = None
        if config.ema_decay:
            ema = EMAModel(
                unet.parameters(), decay=config.ema_decay, model_cls=UNet2DConditionModel, model_config=unet.config
            )
        return {}, param_groups, ema
    new_token_ids = _add_tokens(config, tokenizer, text_encoder)
    text_encoder.requires_grad_(False)
    text_encoder.get_input_embeddings().weight.requires_grad_(True)
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=LORA_TARGETS,
        )
    )
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    param_groups = [
        {"params": [text_encoder.get_input_embeddings().weight], "lr": config.ti_learning_rate, "weight_decay": 0.0},
        {"params": lora_params, "lr": config.lora_learning_rate},
    ]
    return new_token_ids, param_groups, None


@dataclass
class _EncodedSet:
    """What the loop draws its batches from: every image's (and mirror's) latent distribution, loss weights and
    caption token ids, with the autoencoder's scaling and the training crop's side in latent cells."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    loss_weights: torch.Tensor
    input_ids: torch.Tensor
    empty_ids: torch.Tensor
    scaling: float
    shift: float
    crop: int | None


@dataclass
class _Batch:
    """This process's share of one step: image indices (on the CPU), scaled latents, noise, timesteps, weights, ids."""

    index: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor
    input_ids: torch.Tensor


def _encode_training_set(
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    images: list[TrainingImage],
    config: TrainConfig,
    out: Path,
    write_cache: bool,
) -> _EncodedSet:
    """Latents (cached for resume), loss weights and tokenized captions of the whole training set."""
    latent_mean, latent_std, captions = _encode_images(vae, images, config, out, write_cache=write_cache)
    tokenize = dict(padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    return _EncodedSet(
        latent_mean=latent_mean,
        latent_std=latent_std,
        loss_weights=_loss_weights(images, config, latent_mean.shape[-2:]),
        input_ids=tokenizer(captions, truncation=True, **tokenize).input_ids,
        empty_ids=tokenizer("", **tokenize).input_ids[0],
        scaling=vae.config.scaling_factor,
        shift=vae.config.shift_factor or 0.0,
        crop=latent_crop_size(config, latent_mean.shape[-1]),
    )


def _draw_batch(
    data: _EncodedSet,
    generator: torch.Generator,
    global_batch: int,
    share: slice,
    noise_scheduler: DDPMScheduler,
    config: TrainConfig,
    device: torch.device,
) -> _Batch:
    """Draw the whole step's batch from `generator` (alike on every process) and keep this process's `share`.

    In order: images, their latent samples, crop corners, noise, timesteps and dropped captions. Every process draws
    the whole batch, so a step's images do not depend on how many processes share it.
    """
    global_index = torch.randint(0, len(data.input_ids), (global_batch,), generator=generator)
    index = global_index[share]
    draws = torch.randn((global_batch, *data.latent_mean.shape[1:]), generator=generator)[share]
    latents = data.latent_mean[index] + data.latent_std[index] * draws
    weights = data.loss_weights[index]
    if data.crop is not None:
        corners = torch.randint(0, latents.shape[-1] - data.crop + 1, (global_batch, 2), generator=generator)[share]
        latents, weights = random_crops(latents, corners, data.crop), random_crops(weights, corners, data.crop)
    latents = ((latents - data.shift) * data.scaling).to(device)
    noise = torch.randn((global_batch, *latents.shape[1:]), generator=generator)[share].to(device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (global_batch,), generator=generator)
    input_ids = data.input_ids[index]
    if config.caption_dropout > 0:
        dropped = (torch.rand(global_batch, generator=generator) < config.caption_dropout)[share]
        input_ids[dropped] = data.empty_ids
    return _Batch(index, latents, noise, timesteps[share].to(device), weights.to(device), input_ids.to(device))


def _batch_loss(
    batch: _Batch,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    noise_scheduler: DDPMScheduler,
    snr_gamma: float | None,
) -> torch.Tensor:
    """The denoising loss of one batch: noise the latents, predict ε (or v) from them and their captions."""
    noisy = noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
    hidden = text_encoder(batch.input_ids)[0]
    prediction = unet(noisy, batch.timesteps, hidden).sample
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps)
    else:
        target = batch.noise
    return _diffusion_loss(prediction, target, batch.timesteps, noise_scheduler, snr_gamma, batch.weights)


def _add_tokens(config: TrainConfig, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> dict[str, int]:
    """Add one token per class, initialised to the mean embedding of its init words; returns class -> token id."""
    if not config.classes:
        raise ValueError("Fine-tuning needs at least one class.")
    tokens = [token_for(c) for c in config.classes]
    tokenizer.add_tokens(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    ids = {}
    with torch.no_grad():
        for class_name, token in zip(config.classes, tokens, strict=True):
            word_ids = tokenizer.encode(config.init_words[class_name], add_special_tokens=False)
            token_id = tokenizer.convert_tokens_to_ids(token)
            weight[token_id] = weight[word_ids].mean(dim=0)
            ids[class_name] = token_id
    return ids


@torch.no_grad()
def _encode_images(
    vae: AutoencoderKL, images: list[TrainingImage], config: TrainConfig, out: Path, write_cache: bool = True
):
    """Latent mean/std of every image (and its mirrors), cached in the run folder for resume (when `write_cache`).

    The cache is used only when it was made from as many images with the same captions.
    """
    rng = random.Random(config.seed)
    captions = []
    for _ in range(_mirror_count(config)):
        for im in images:
            if config.mode == "finetune":
                captions.append(rng.choice(TOKEN_TEMPLATES).format(token=token_for(im.class_name)))
            else:
                captions.append(im.caption)
    cache = out / "latents.pt"
    if cache.exists():
        data = torch.load(cache)
        if data["count"] == len(images) and data["captions"] == captions:
            return data["mean"], data["std"], captions
    pixels = np.stack([im.pixels for im in images])
    if config.hflip:
        pixels = np.concatenate([pixels, pixels[:, :, ::-1]])
    if config.vflip:
        pixels = np.concatenate([pixels, pixels[:, ::-1]])
    mean, std = encode_pixels(vae, pixels)
    if write_cache:
        torch.save({"count": len(images), "mean": mean, "std": std, "captions": captions}, cache)
    return mean, std, captions


def _loss_weights(images: list[TrainingImage], config: TrainConfig, latent_size: torch.Size) -> torch.Tensor:
    """Per-latent-pixel loss weights (N×1×h×w, mirrors included): 1 on the defect, `background_loss_weight` off it.

    A mask is area-averaged to the latent grid, so a latent pixel half on the defect gets a weight half-way.
    Images without a mask, and every image when the weight is 1, weigh all pixels alike.
    """
    height, width = latent_size
    weights = torch.ones(len(images), 1, height, width)
    if config.background_loss_weight < 1.0:
        for i, image in enumerate(images):
            if image.mask is not None and image.mask.any():
                mask = torch.from_numpy(np.ascontiguousarray(image.mask, dtype=np.float32))[None, None]
                share = F.adaptive_avg_pool2d(mask, (height, width))[0]
                weights[i] = config.background_loss_weight + (1.0 - config.background_loss_weight) * share
    if config.hflip:
        weights = torch.cat([weights, weights.flip(-1)])
    if config.vflip:
        weights = torch.cat([weights, weights.flip(-2)])
    return weights


def latent_crop_size(config: TrainConfig, latent_size: int) -> int | None:
    """The side in latent cells of the training crops `config.crop_size` asks for (None: whole latents)."""
    if config.crop_size is None:
        return None
    cell = config.resolution // latent_size
    if config.crop_size % cell or not cell <= config.crop_size <= config.resolution:
        raise ValueError(
            f"crop_size must be a multiple of the latent cell ({cell} px) up to the resolution ({config.resolution}),"
            f" got {config.crop_size}."
        )
    return config.crop_size // cell


def random_crops(batch: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """One size×size crop of each N×C×H×W item, its top-left corner (row, column) from the N×2 `corners`."""
    return torch.stack(
        [item[:, y : y + size, x : x + size] for item, (y, x) in zip(batch, corners.tolist(), strict=True)]
    )


def _mirror_count(config: TrainConfig) -> int:
    """How many copies of each image the loop sees: itself and its enabled mirrors."""
    return (2 if config.hflip else 1) * (2 if config.vflip else 1)


def _diffusion_loss(
    prediction, target, timesteps, noise_scheduler, snr_gamma: float | None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE, optionally with min-SNR-gamma weighting (Hang et al. 2023) and a per-pixel (masked-loss) weight map.

    A weight map is normalised per image, so the masked loss changes where an image's loss comes from, not its scale.
    """
    squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if weights is None:
        per_sample = squared.mean(dim=(1, 2, 3))
    else:
        per_sample = (squared * weights).mean(dim=(1, 2, 3)) / weights.mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    snr = compute_snr(noise_scheduler, timesteps)
    snr_weights = torch.clamp(snr, max=snr_gamma) / snr
    if noise_scheduler.config.prediction_type == "v_prediction":
        snr_weights = torch.clamp(snr, max=snr_gamma) / (snr + 1)
    return (per_sample * snr_weights).mean()


def warmup_cosine(config: TrainConfig) -> Callable[[int], float]:
    """The learning-rate factor at an optimizer step: linear warmup, then cosine down to a tenth."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, config.lr_warmup_steps))
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / config.max_train_steps, 1.0))))

    return factor


def latest_checkpoint(folder: Path) -> Path | None:
    """The `checkpoint-N` folder with the largest N, if any."""
    checkpoints = [p for p in Path(folder).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int) -> None:
    """Save state to a temporary folder and rename it, so a kill never leaves a half checkpoint; prune old ones.

    Every process writes its random state into the folder; the main process writes the rest, renames and prunes.
    """
    final = out / f"checkpoint-{step}"
    partial = out / f".partial-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        checkpoints = sorted(
            (p for p in out.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1])
        )
        for old in checkpoints[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_adapter(
    config, out: Path, unet, text_encoder, new_token_ids: dict[str, int], model_ref: str, images: list[TrainingImage]
) -> None:
    """Write the TI embeddings, the LoRA and, last, `tokens.json` that marks the adapter complete, with each class's
    defect colour against its steel (`variation.defect_tint`) and how far it lies on the defects' structure
    (`variation.defect_colour_structure`), read inside its colour images' defect masks or, where none came with one,
    masks estimated from the images (`class_defect_masks`); from the masks that came with them, the sizes and counts
    of its defects for auto-place (`placement.learnt_statistics`); and the median short side of its images (the
    scale it learnt)."""
    weight = text_encoder.get_input_embeddings().weight.detach().cpu()
    tokens = {}
    for class_name, token_id in new_token_ids.items():
        file = f"learned_embeds-{class_name}.safetensors"
        save_file({token_for(class_name): weight[token_id].clone().contiguous()}, str(out / file))
        tokens[class_name] = {
            "token": token_for(class_name),
            "embedding_file": file,
            "init_word": config.init_words.get(class_name, ""),
        }
        masked, estimated = class_defect_masks(images, class_name)
        if (tint := defect_tint(masked)) is not None:
            tokens[class_name]["defect_tint"] = tint
            tokens[class_name]["defect_structure"] = defect_colour_structure(masked)
            if estimated:
                tokens[class_name]["defect_masks"] = ESTIMATED_MASKS
        if (placement := class_placement(images, class_name)) is not None:
            tokens[class_name]["placement"] = placement
        if sides := [min(im.size) for im in images if im.class_name == class_name and im.size]:
            tokens[class_name]["view_side"] = float(statistics.median(sides))
    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionImg2ImgPipeline.save_lora_weights(str(out), unet_lora_layers=lora, weight_name=LORA_FILE)
    index = {
        "tokens": tokens,
        "base_model": model_ref,
        "base_model_hash": model_hash(model_ref),
        "steps": config.max_train_steps,
    }
    write_adapter_index(out, index)


def _schedule_overrides(config: TrainConfig) -> dict:
    """Noise-schedule settings a pretraining job changes from its model's scheduler (none when fine-tuning).

    Training draws timesteps uniformly, so the sampler's timestep spacing is left to `build_scheduler` at save.
    """
    if config.mode != "pretrain":
        return {}
    overrides = {}
    if config.prediction_type is not None:
        overrides["prediction_type"] = config.prediction_type
    if config.zero_terminal_snr is not None:
        overrides["rescale_betas_zero_snr"] = config.zero_terminal_snr
    if config.noise_shift is not None:
        from engine.training.prior import shifted_betas

        overrides["trained_betas"] = shifted_betas(config.noise_shift)
    return overrides


def _save_prior(config: TrainConfig, vae, text_encoder, tokenizer, unet, noise_scheduler: DDPMScheduler) -> None:
    """Save the pretrained prior as an ordinary diffusers folder (fp16 weights keep it small), with the sampler
    for the noise schedule it was trained on."""
    from engine.training.prior import build_scheduler

    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(
            noise_scheduler.config.prediction_type,
            bool(noise_scheduler.config.rescale_betas_zero_snr),
            noise_scheduler.config.trained_betas,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    target = Path(config.save_dir) if config.save_dir else Path(config.output_dir) / "model"
    pipe.to(torch.float16 if config.save_half else torch.float32).save_pretrained(str(target))


def class_defect_masks(
    images: list[TrainingImage], class_name: str
) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], bool]:
    """(pixels, defect mask) of a class's fine-tuning images, and whether the masks are estimated: where none of its
    images came with a mask, each image's is estimated from the image itself (`masks.estimate_defect_mask`), so a
    class fine-tuned on bare captures still learns its defects' colour against their steel."""
    pairs = [(im.pixels, im.mask) for im in images if im.class_name == class_name]
    if any(mask is not None for _, mask in pairs):
        return pairs, False
    return [(pixels, estimate_defect_mask(pixels)) for pixels, _ in pairs], True


def class_placement(images: list[TrainingImage], class_name: str) -> dict | None:
    """A class's own auto-place statistics from the defect masks of its fine-tuning images, as the adapter records
    them (`placement.learnt_statistics`); None without a defect."""
    own = [(im.image_mask, im.size) for im in images if im.class_name == class_name and im.image_mask is not None]
    return learnt_statistics(own)


def images_from_folder(dataset: Path, classes: list[str] | None, resolution: int) -> list[TrainingImage]:
    """Fine-tuning images from an ImageFolder tree, resized to the model's resolution: a square image whole, a wide
    one as the squares of its short side that cover it (`data.square_views`), each at the scale generation redraws
    a window of it.

    An image's defect mask, for the masked loss, is `<name>_mask.png` beside it (white = defect) or, failing
    that, the boxes of a Pascal VOC `<name>.xml` beside it.
    """
    from engine.data import load_rgb, mask_at, read_image_folder, read_mask_image_beside, square_views, to_square_pixels

    items = read_image_folder(dataset)
    if classes:
        unknown = set(classes) - {it.class_name for it in items}
        if unknown:
            raise ValueError(f"No images for class(es) {', '.join(sorted(unknown))} in {dataset}.")
        items = [it for it in items if it.class_name in classes]
    images = []
    for it in items:
        image = load_rgb(it.path)
        mask = read_mask_image_beside(it.path)
        if mask is not None and mask.size != image.size:
            mask = mask.resize(image.size, Image.Resampling.NEAREST)
        views = square_views(*image.size)
        scale = resolution / min(image.size)
        for number, box in enumerate(views):
            pixels = to_square_pixels(image.crop(box), resolution)
            view_mask = None if mask is None else mask_at(mask.crop(box), (resolution, resolution))
            image_mask = None
            if number == 0 and mask is not None:
                whole = (round(image.width * scale), round(image.height * scale))
                image_mask = view_mask if len(views) == 1 else mask_at(mask, whole)
            size = image.size if number == 0 else None
            images.append(TrainingImage(pixels, it.class_name, mask=view_mask, image_mask=image_mask, size=size))
    return images
