"""Architecture of the embedded steel prior: Stable Diffusion's components at a CPU-friendly size.

The same builders make the tiny models the tests use, so every engine path runs on real SD classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Words the prior's tokenizer knows as whole tokens: caption words, init words for defect tokens,
# and everyday words an engineer might type into a prompt. Anything else falls back to characters.
VOCABULARY_WORDS = """
a an the of with and or on in at without no not photo picture image grayscale gray grey monochrome
steel metal strip hot rolled cold plate slab sheet coil surface surfaces texture background clean
defect defects defective free flawless smooth rough uniform plain industrial inspection camera
crack cracks cracked crazing craze network fine lines line dark light bright spot spots dot dots
inclusion inclusions particle particles embedded patch patches stain stains blotch area region
pit pits pitted pitting hole holes small large rolled scale scales flake flakes oxide rust
scratch scratches scratched groove grooves long thin straight streak streaks mark marks
horizontal vertical diagonal blob blobs speck specks corrosion wear dent dents bump lump
high low quality sharp blurry detailed close up view top
""".split()


@dataclass(frozen=True)
class PriorSize:
    """Widths of one prior; `embedded()` is the shipped default, `tiny()` the test model."""

    vae_channels: tuple[int, ...]
    latent_channels: int
    unet_channels: tuple[int, ...]
    unet_attention: tuple[bool, ...]
    layers_per_block: int
    text_hidden: int
    text_layers: int
    text_heads: int
    attention_head_dim: int
    resolution: int

    @classmethod
    def embedded(cls) -> PriorSize:
        # 8x down, 32 latent channels: 128 px -> 16x16x32 latents, half as many numbers as grey pixels.
        # The UNet's cost depends on the 16x16 grid, not the channels, so fidelity costs almost nothing;
        # 4 and 16 channels lost crazing's texture (model card).
        return cls(
            vae_channels=(32, 64, 128, 128),
            latent_channels=32,
            unet_channels=(128, 128, 256),
            unet_attention=(False, True, True),
            layers_per_block=1,
            text_hidden=256,
            text_layers=3,
            text_heads=4,
            attention_head_dim=32,
            resolution=128,
        )

    @classmethod
    def large(cls) -> PriorSize:
        # The GPU preset's prior: the embedded autoencoder's shape, a wider UNet with two layers per block and a
        # 6-layer text encoder (about 3x the embedded UNet's parameters).
        return cls(
            vae_channels=(32, 64, 128, 128),
            latent_channels=32,
            unet_channels=(128, 256, 384),
            unet_attention=(False, True, True),
            layers_per_block=2,
            text_hidden=384,
            text_layers=6,
            text_heads=6,
            attention_head_dim=64,
            resolution=128,
        )

    @classmethod
    def tiny(cls) -> PriorSize:
        return cls(
            vae_channels=(8, 16),
            latent_channels=4,
            unet_channels=(16, 32),
            unet_attention=(False, True),
            layers_per_block=1,
            text_hidden=32,
            text_layers=1,
            text_heads=2,
            attention_head_dim=8,
            resolution=32,
        )

    @property
    def autoencoder_downsampling(self) -> int:
        """Pixels per latent cell along a side: the autoencoder halves the resolution between its levels."""
        return 2 ** (len(self.vae_channels) - 1)

    def with_autoencoder_downsampling(self, factor: int) -> PriorSize:
        """This size with a `factor`x down autoencoder (a power of two), as many latent numbers per pixel.

        4x down with the perceptual term keeps NEU's fine grain where 8x cannot (model card, "A finer latent grid").
        """
        if factor < 2 or factor & (factor - 1):
            raise ValueError(f"The autoencoder's downsampling must be a power of two >= 2, got {factor}.")
        levels = factor.bit_length()
        channels = (self.vae_channels + (self.vae_channels[-1],) * levels)[:levels]
        latent_channels = max(1, self.latent_channels * factor**2 // self.autoencoder_downsampling**2)
        return replace(self, vae_channels=channels, latent_channels=latent_channels)


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_tokenizer_files(folder: Path, words: list[str] = VOCABULARY_WORDS) -> CLIPTokenizer:
    """Write a small CLIP BPE vocabulary (`vocab.json`, `merges.txt`) and load it as a CLIPTokenizer.

    Base tokens are CLIP's 256 byte characters with and without `</w>`, so any text tokenizes;
    each listed word gets a chain of merges that makes it a single token.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        # Appending the first pair of the current split at the lowest rank never changes how earlier
        # words tokenize, and repeats until this word is one token.
        pieces = _apply_bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
            pieces = _apply_bpe(pieces, ranks)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab_list)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _apply_bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge adjacent pieces by rank, lowest first, as CLIP's BPE does."""
    pieces = list(pieces)
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:], strict=False))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_vae(size: PriorSize) -> AutoencoderKL:
    n = len(size.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=size.vae_channels,
        layers_per_block=1,
        latent_channels=size.latent_channels,
        norm_num_groups=8,
        sample_size=size.resolution,
    )


def build_text_encoder(size: PriorSize, vocab_size: int, pad_token_id: int, eos_token_id: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=size.text_hidden,
        intermediate_size=size.text_hidden * 2,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        max_position_embeddings=77,
        pad_token_id=pad_token_id,
        bos_token_id=vocab_size - 2,
        eos_token_id=eos_token_id,
        projection_dim=size.text_hidden,
    )
    return CLIPTextModel(config)


def build_unet(size: PriorSize, vae_scale_factor: int) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in size.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(size.unet_attention))
    return UNet2DConditionModel(
        sample_size=size.resolution // vae_scale_factor,
        in_channels=size.latent_channels,
        out_channels=size.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=size.unet_channels,
        layers_per_block=size.layers_per_block,
        cross_attention_dim=size.text_hidden,
        attention_head_dim=size.attention_head_dim,
        norm_num_groups=min(32, size.unet_channels[0] // 2),
    )


def shifted_betas(shift: float) -> list[float]:
    """SD's scaled-linear betas with every step's signal-to-noise ratio divided by `shift`.

    A latent whose channels move together (the prior's 32 channels of grey steel put most of their variance in one
    direction) keeps its layout through noise that SD's 4-channel latent would lose: the UNet reads the shared
    component at `shift` times the per-channel SNR. Dividing the SNR by that redundancy gives each timestep the noise
    level it has for SD (Hoogeboom et al. 2023 shift the schedule alike for resolution).
    """
    if shift < 1:
        raise ValueError(f"A noise shift divides the SNR and must be at least 1, got {shift}.")
    alphas_cumprod = torch.cumprod(1 - build_scheduler().betas.double(), 0)
    snr = alphas_cumprod / (1 - alphas_cumprod) / shift
    shifted = snr / (1 + snr)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), shifted[:-1]])
    return (1 - shifted / previous).tolist()


def build_scheduler(
    prediction_type: str = "epsilon", zero_terminal_snr: bool = False, trained_betas: list[float] | None = None
) -> DPMSolverMultistepScheduler:
    """SD's noise schedule (or `trained_betas`, e.g. `shifted_betas`) with DPM-Solver++: good previews in ~20 steps.

    With `zero_terminal_snr` the betas are rescaled so the last step is pure noise and sampling starts there
    ("trailing" spacing), as Lin et al. (2024) prescribe with v-prediction.
    """
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        trained_betas=trained_betas,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_terminal_snr,
        timestep_spacing="trailing" if zero_terminal_snr else "linspace",
        steps_offset=1,
    )


def build_components(size: PriorSize, folder: Path, seed: int = 0) -> dict:
    """Fresh, untrained components of an SD-architecture model; the tokenizer files go to `folder/tokenizer`."""
    torch.manual_seed(seed)
    tokenizer = write_tokenizer_files(Path(folder) / "tokenizer")
    vocab = tokenizer.get_vocab()
    vae = build_vae(size)
    text_encoder = build_text_encoder(size, len(vocab), vocab["<|endoftext|>"], vocab["<|endoftext|>"])
    unet = build_unet(size, size.autoencoder_downsampling)
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": build_scheduler(),
    }
