"""Job settings as dataclasses: one object per job, built alike by the CLI and the UI."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

# The shipped model folders (the prior, its tokens, the steel feature network, placement statistics).
WEIGHTS_DIR = Path(__file__).parent / "weights"
EMBEDDED_MODEL = WEIGHTS_DIR / "steel-prior"
# A masked repaint changes only the mask, so it starts from more noise than a whole-window img2img: the masked
# report on NEU (`docs/results.md`) paints small defects at 0.9-1.0 and almost nothing at 0.6. Tokens may store
# their own.
DEFAULT_MASKED_STRENGTH = 0.9


class ConfigMixin:
    """JSON round-trip for the config dataclasses."""

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: Path):
        return cls.from_dict(json.loads(Path(path).read_text()))


# A whole-window generation repaints at most this many slab pixels a side unless a window size is chosen.
MAX_DEFAULT_WINDOW = 256
# A window much longer than wide is generated at a non-square size; beyond this the UNet leaves its training regime.
MAX_WINDOW_ASPECT = 4.0


# Classifier-free guidance: image-oriented samples were tuned at 3. Where the token draws from (nearly) pure noise —
# strength 1.0, or inside a masked repaint's mask, where the slab holds no defect — it is all the prompt has, and the
# higher scale made the samples markedly more their class (`docs/results.md`, "Pure noise" and "Masked repaints at
# the token's own guidance").
DEFAULT_GUIDANCE = 3.0
PURE_NOISE_GUIDANCE = 12.0
# Sampler steps of every generation: DPM-Solver++ gives a usable sample in 20 (12 denoising steps at strength 0.6);
# twice as many stayed inside the few-shot yardstick's spread (`docs/results.md`, "Measured and not adopted").
DEFAULT_STEPS = 20
# Realism gate of batch generation (realism score 0-1, see engine.evaluation.realism.RealismScorer): flagged,
# not dropped.
DEFAULT_REALISM_THRESHOLD = 0.3


@dataclass
class GenerationConfig(ConfigMixin):
    """One image-oriented generation request."""

    class_name: str
    num_candidates: int = 4
    # 0.4 keeps the slab's layout and lets the prior redraw its texture and defects' detail: with the embedded prior
    # that generates, the few-shot yardstick's best (0.6 redraws texture classes; `docs/results.md`).
    strength: float = 0.4
    steps: int = DEFAULT_STEPS
    # None: DEFAULT_GUIDANCE, or PURE_NOISE_GUIDANCE for a sample drawn from pure noise or a mask (see `guidance`).
    guidance_scale: float | None = None
    seed: int = 0
    prompt_template: str = "a grayscale photo of a steel surface with {token}"
    negative_prompt: str = ""
    # Share of the source's fine detail that the model's window cannot carry, added back to each output at the
    # slab's pixel scale (ignored at strength 1.0): output + (window − round trip of the window), the round trip
    # being the autoencoder's at the model's resolution, resized back. The embedded prior's L1 decoder blurs grain
    # (a crazing round trip is recognised 5 % of the time) and a window larger than the model's resolution loses
    # its finest grain in the resize; restoring the residual keeps the steel's grain and small defects' edges.
    # 0 gives the raw decoder output.
    detail_restore: float = 1.0
    # Window (x, y) of the model-sized square inside a larger slab; None centres it.
    window_x: int | None = None
    window_y: int | None = None
    window_size: int | None = None
    # Without a drawn mask, place defect masks like real ones of the class (engine.generation.placement) and
    # repaint only them.
    auto_place: bool = False

    def window_side(self, width: int, height: int) -> int:
        """The side of the square repainted in a width×height slab: the chosen size, else the short side up to
        MAX_DEFAULT_WINDOW px; never more than the slab."""
        return min(self.window_size or min(width, height, MAX_DEFAULT_WINDOW), width, height)

    def window_box(self, width: int, height: int) -> tuple[int, int, int]:
        """(x, y, side) of the square repainted in a width×height slab: the chosen position, else centred."""
        side = self.window_side(width, height)
        x = (width - side) // 2 if self.window_x is None else self.window_x
        y = (height - side) // 2 if self.window_y is None else self.window_y
        return x, y, side

    def repainted_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x, y, w, h) of the rectangle repainted in a width×height slab: with no window chosen, a slab whose short
        side fits the default window is repainted along its length, centred, up to MAX_WINDOW_ASPECT times its short
        side (a line camera's strip redrawn whole on a canvas of its shape, not only its centred square); otherwise
        the square of `window_box`."""
        x, y, side = self.window_box(width, height)
        chosen = (self.window_x, self.window_y, self.window_size) != (None, None, None)
        if chosen or min(width, height) > MAX_DEFAULT_WINDOW or width == height:
            return x, y, side, side
        length = min(max(width, height), int(MAX_WINDOW_ASPECT * side))
        if width > height:
            return (width - length) // 2, 0, length, side
        return 0, (height - length) // 2, side, length

    def guidance(self, masked: bool = False) -> float:
        """The guidance scale a sample is made with: the chosen one, else PURE_NOISE_GUIDANCE for a masked repaint or
        at strength 1.0 (nothing but the token then tells what to draw), else DEFAULT_GUIDANCE."""
        if self.guidance_scale is not None:
            return self.guidance_scale
        return PURE_NOISE_GUIDANCE if masked or self.strength >= 1.0 else DEFAULT_GUIDANCE

    def centred_on(self, x: float, y: float, width: int, height: int) -> GenerationConfig:
        """This config with its window centred as near (x, y) as the slab allows."""
        side = self.window_side(width, height)
        left = min(max(round(x - side / 2), 0), width - side)
        top = min(max(round(y - side / 2), 0), height - side)
        return replace(self, window_x=left, window_y=top)

    def __post_init__(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"Strength must be in (0, 1], got {self.strength}.")
        if self.steps < 1 or self.steps > 500:
            raise ValueError(f"Steps must be between 1 and 500, got {self.steps}.")
        if int(self.steps * self.strength) < 1:
            raise ValueError(
                f"steps × strength must be at least 1 (got {self.steps} × {self.strength}); raise one of them."
            )
        if not 1 <= self.num_candidates <= 64:
            raise ValueError(f"Number of candidates must be between 1 and 64, got {self.num_candidates}.")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"Seed must be between 0 and 2**32-1, got {self.seed}.")
        if not 0.0 <= self.detail_restore <= 1.0:
            raise ValueError(f"Detail restore must be between 0 and 1, got {self.detail_restore}.")
        if self.guidance_scale is not None and not 0 <= self.guidance_scale <= 30:
            raise ValueError(f"Guidance scale must be between 0 and 30, got {self.guidance_scale}.")


# Pretraining captions: "generic" says only "steel surface"; "appearance" adds the image's measured appearance words
# (engine.training.attributes). Neither names a class.
CAPTION_KINDS = ("generic", "appearance")


@dataclass
class TrainConfig(ConfigMixin):
    """One diffusion training job: pretraining a prior or TI + LoRA fine-tuning of defect tokens.

    mode "pretrain" trains UNet and text encoder from captions; mode "finetune" trains one new token
    per class (textual inversion) plus LoRA on the UNet attention, with everything else frozen.
    """

    mode: str = "finetune"
    model: str = str(EMBEDDED_MODEL)
    output_dir: str = "runs/run"
    # Pretraining: where the finished model folder goes (default: output_dir) and whether to store fp16.
    save_dir: str | None = None
    save_half: bool = False
    # Fine-tuning
    classes: list[str] = field(default_factory=list)
    init_words: dict[str, str] = field(default_factory=dict)
    lora_rank: int = 8
    lora_alpha: int = 8
    ti_learning_rate: float = 5e-3
    lora_learning_rate: float = 1e-3
    # Masked loss (DefectFill/AnomalyDiffusion): weight of the diffusion loss outside an image's defect mask,
    # relative to 1 inside it. 1.0 is the plain loss; images without a mask are always weighted uniformly.
    background_loss_weight: float = 1.0
    # Shared
    resolution: int = 128
    train_batch_size: int = 16
    max_train_steps: int = 300
    # Wall-clock budget of the loop (seconds, this run; None: none): every 25 steps the planned steps shrink to what
    # the measured rate fits in it, and the learning-rate schedule follows (`engine.training.schedule`).
    max_train_seconds: float | None = None
    learning_rate: float = 3e-4
    lr_warmup_steps: int = 50
    weight_decay: float = 1e-2
    snr_gamma: float | None = 5.0
    # Pretraining only: the noise schedule to train with; None keeps the model's. "v_prediction" with a zero
    # terminal SNR (Lin et al. 2024) trains the last step on pure noise, which is where strength 1.0 starts.
    prediction_type: str | None = None
    zero_terminal_snr: bool | None = None
    # Pretraining only: divide the schedule's SNR by this (`engine.training.prior.shifted_betas`); None keeps the
    # model's schedule.
    noise_shift: float | None = None
    # Share of captions replaced by "" so classifier-free guidance has an unconditional model.
    caption_dropout: float = 0.0
    ema_decay: float | None = None
    checkpointing_steps: int = 100
    checkpoints_total_limit: int = 2
    validation_steps: int = 0
    seed: int = 0
    mixed_precision: str = "no"
    hflip: bool = True
    # Vertical mirrors as well (pretraining: a rolled strip looks alike upside down; doubles the set again).
    vflip: bool = False
    # Train on random square crops of this many pixels of each latent (the UNet is convolutional, its attention
    # works on any grid): a step costs about (crop / resolution)^2 of a full one. None trains on whole images.
    crop_size: int | None = None
    # Pretraining only: one of CAPTION_KINDS.
    captions: str = "generic"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("pretrain", "finetune"):
            raise ValueError(f"mode must be 'pretrain' or 'finetune', got {self.mode!r}.")
        if self.max_train_steps < 1:
            raise ValueError("max_train_steps must be at least 1.")
        if self.max_train_seconds is not None and not self.max_train_seconds > 0:
            raise ValueError(f"max_train_seconds must be positive, got {self.max_train_seconds}.")
        if self.train_batch_size < 1:
            raise ValueError("train_batch_size must be at least 1.")
        if self.checkpointing_steps < 1:
            raise ValueError("checkpointing_steps must be at least 1.")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}.")
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError("A zero terminal SNR needs prediction_type 'v_prediction' (epsilon is undefined there).")
        if self.noise_shift is not None and self.noise_shift < 1:
            raise ValueError(f"noise_shift divides the SNR and must be at least 1, got {self.noise_shift}.")
        if self.captions not in CAPTION_KINDS:
            raise ValueError(f"captions must be one of {', '.join(CAPTION_KINDS)}, got {self.captions!r}.")
        if not 0.0 <= self.background_loss_weight <= 1.0:
            raise ValueError(f"background_loss_weight must be between 0 and 1, got {self.background_loss_weight}.")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be at least 1, got {self.lora_rank}.")
        if not self.lora_learning_rate > 0:
            raise ValueError(f"lora_learning_rate must be positive, got {self.lora_learning_rate}.")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}.")
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError(f"crop_size must be at least 1 pixel, got {self.crop_size}.")


# Presets: CPU-quick is sized to fine-tune one class from ~20 images in a few minutes on 2 cores;
# GPU-quality trains longer with a larger batch and rank.
PRESETS: dict[str, dict] = {
    "cpu-quick": {"train_batch_size": 8, "max_train_steps": 200, "lora_rank": 8, "checkpointing_steps": 50},
    "cpu-thorough": {"train_batch_size": 16, "max_train_steps": 600, "lora_rank": 8, "checkpointing_steps": 100},
    "gpu-quality": {
        "train_batch_size": 32,
        "max_train_steps": 2000,
        "lora_rank": 16,
        "checkpointing_steps": 250,
        "mixed_precision": "bf16",
    },
}


def finetune_config(preset: str = "cpu-quick", **overrides) -> TrainConfig:
    """A fine-tune TrainConfig from a named preset plus overrides."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(mode="finetune", **values)


@dataclass
class AutoencoderConfig(ConfigMixin):
    """Training of the prior's AutoencoderKL."""

    output_dir: str = "runs/vae"
    resolution: int = 128
    crop_size: int = 64
    train_batch_size: int = 16
    max_train_steps: int = 2000
    # Wall-clock budget of this stage (seconds), as `TrainConfig.max_train_seconds`.
    max_train_seconds: float | None = None
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    spectral_weight: float = 0.1
    # SD's autoencoder recipe adds a perceptual loss with the encoder free to learn what it asks for (the decoder
    # stage adds it on a frozen encoder). The steel feature network's LPIPS-style distance; 0 keeps the shipped recipe.
    perceptual_weight: float = 0.0
    # Pixels per latent cell along a side; None keeps the prior size's (8). 4 with the perceptual term keeps steel's
    # fine grain (model card, "A finer latent grid").
    downsampling: int | None = None
    feature_net: str | None = None
    checkpointing_steps: int = 250
    seed: int = 0


@dataclass
class DecoderConfig(ConfigMixin):
    """Fine-tuning the prior's decoder as SD's autoencoder was trained: L1 + perceptual + patch-GAN.

    The encoder stays frozen, so the latent space (and every UNet trained on it) is unchanged, as with
    SD's own `ft-MSE`/`ft-EMA` decoders. The perceptual network is the shipped steel feature network: an
    LPIPS-style distance between its unit-normalised activations plus a texture term (their Gram matrices).
    """

    output_dir: str = "runs/decoder"
    # Random crops (pixels; the decoder is convolutional), seen by the feature network at their own scale.
    crop_size: int = 64
    train_batch_size: int = 8
    max_train_steps: int = 2000
    # Wall-clock budget of this stage (seconds), as `TrainConfig.max_train_seconds`.
    max_train_seconds: float | None = None
    learning_rate: float = 1e-4
    perceptual_weight: float = 1.0
    texture_weight: float = 100.0
    adversarial_weight: float = 0.5
    # The discriminator joins after this many steps, once the perceptual terms have moved the decoder.
    adversarial_start: int = 200
    discriminator_channels: int = 32
    # Share of each batch decoded from the prior's own latents rather than encoder posteriors: the UNet's one-step
    # denoised estimate of the image's latents, noised to a random timestep up to `denoised_max_timestep`. A
    # decoder fitted only to posteriors renders the UNet's off-posterior latents as artefacts; these teach it to
    # draw steel from them. Needs a UNet, so a prior to continue from (`pretrain --init-model`).
    denoised_share: float = 0.0
    denoised_max_timestep: int = 300
    checkpointing_steps: int = 250
    seed: int = 0
    feature_net: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.denoised_share <= 1.0:
            raise ValueError(f"The denoised share must be in [0, 1], got {self.denoised_share}.")
        if not 1 <= self.denoised_max_timestep <= 999:
            raise ValueError(f"The denoised latents' timestep must be in [1, 999], got {self.denoised_max_timestep}.")


# The prior's pretraining stages, in order. The decoder stage (perceptual + patch-GAN on a frozen encoder) is measured
# and not shipped, so only the other two run unless it is named.
PRETRAIN_STAGES = ("autoencoder", "decoder", "diffusion")
DEFAULT_PRETRAIN_STAGES = ("autoencoder", "diffusion")


# Pretraining presets: "cpu" is the recipe of the shipped prior on 2 CPU cores; "gpu" trains a prior of the same
# (embedded) size on one H100/H200-class GPU within time budgets (bf16, large batches, about 10 minutes in all): an
# autoencoder trained from scratch with the perceptual term (SD's recipe), then a UNet and text encoder on appearance
# captions (the one from-scratch recipe whose UNet followed its text on the CPU) for some twenty times the shipped
# UNet's images. `--size large` and `--autoencoder-downsampling 4 --crop-size 64` (the finer grid that keeps grain,
# model card) are the larger variants; a 4x grid costs previews about 3.5x the time on a CPU.
PRETRAIN_PRESETS: dict[str, dict] = {
    "cpu": {
        "size": "embedded",
        "autoencoder_steps": 2000,
        "autoencoder_batch_size": 16,
        "decoder_steps": 2000,
        "decoder_batch_size": 8,
        "steps": 5000,
        "batch_size": 32,
        "learning_rate": 3e-4,
        "mixed_precision": "no",
    },
    "gpu": {
        "size": "embedded",
        "autoencoder_steps": 6000,
        "autoencoder_batch_size": 64,
        "autoencoder_perceptual_weight": 1.0,
        "autoencoder_max_minutes": 2.0,
        "decoder_steps": 2000,
        "decoder_batch_size": 32,
        "decoder_max_minutes": 2.0,
        "steps": 40000,
        "batch_size": 128,
        "max_minutes": 4.5,
        "vflip": True,
        "captions": "appearance",
        "learning_rate": 4e-4,
        "mixed_precision": "bf16",
    },
}


def pretrain_configs(
    preset: str = "cpu", seed: int = 0, **overrides: object
) -> tuple[str, AutoencoderConfig, DecoderConfig, TrainConfig]:
    """(size name, autoencoder, decoder and diffusion configs) of a pretraining preset plus overrides (None: keep)."""
    if preset not in PRETRAIN_PRESETS:
        raise ValueError(f"Unknown pretraining preset {preset!r}; choose one of {', '.join(PRETRAIN_PRESETS)}.")
    values = {**PRETRAIN_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    steps = values["steps"]
    autoencoder = AutoencoderConfig(
        max_train_steps=values["autoencoder_steps"],
        train_batch_size=values["autoencoder_batch_size"],
        perceptual_weight=values.get("autoencoder_perceptual_weight", 0.0),
        downsampling=values.get("autoencoder_downsampling"),
        max_train_seconds=seconds_of(values.get("autoencoder_max_minutes")),
        seed=seed,
        checkpointing_steps=max(1, min(250, values["autoencoder_steps"] // 4)),
    )
    decoder = DecoderConfig(
        max_train_steps=values["decoder_steps"],
        train_batch_size=values["decoder_batch_size"],
        denoised_share=values.get("decoder_denoised_share", 0.0),
        max_train_seconds=seconds_of(values.get("decoder_max_minutes")),
        seed=seed,
        checkpointing_steps=max(1, min(250, values["decoder_steps"] // 4)),
    )
    diffusion = TrainConfig(
        mode="pretrain",
        max_train_steps=steps,
        max_train_seconds=seconds_of(values.get("max_minutes")),
        train_batch_size=values["batch_size"],
        learning_rate=values["learning_rate"],
        lr_warmup_steps=min(200, steps // 10 + 1),
        vflip=values.get("vflip", False),
        captions=values.get("captions", "generic"),
        prediction_type=values.get("prediction_type"),
        zero_terminal_snr=values.get("zero_terminal_snr"),
        noise_shift=values.get("noise_shift"),
        crop_size=values.get("crop_size"),
        ema_decay=0.999,
        checkpointing_steps=max(1, min(250, steps // 4)),
        caption_dropout=0.1,
        seed=seed,
        mixed_precision=values["mixed_precision"],
        save_half=values["size"] != "tiny",
    )
    return values["size"], autoencoder, decoder, diffusion


def seconds_of(minutes: float | None) -> float | None:
    """A budget given in minutes, in seconds (None stays None)."""
    return None if minutes is None else 60.0 * minutes
