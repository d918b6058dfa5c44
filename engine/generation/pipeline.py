"""The one place a diffusion pipeline is built: the embedded prior, a local SD folder or a hub id, plus adapters."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from engine.adapters import EMBEDDED_TOKENS, LORA_FILE, TOKENS_FILE, AdapterInfo, read_adapter
from engine.config import EMBEDDED_MODEL


@dataclass(frozen=True)
class LoadedPipeline:
    """A built img2img pipeline with what it was built from: the resolved model, its hash and the adapter."""

    pipe: StableDiffusionImg2ImgPipeline
    model_ref: str
    model_hash: str
    adapter: AdapterInfo | None = None

    @property
    def resolution(self) -> int:
        """The pixel size the model was trained at."""
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    @cached_property
    def text_to_image(self) -> StableDiffusionPipeline:
        """The same components (tokens and LoRA included) as a text-to-image pipeline, for strength 1.0: SD's schedule
        keeps √ᾱ ≈ 7 % of the source at its last step, so img2img at strength 1.0 still follows the source's layout."""
        pipe = StableDiffusionPipeline.from_pipe(self.pipe)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def tokens(self) -> dict[str, str]:
        """Class name -> token string of the loaded adapter."""
        return {name: t.token for name, t in self.adapter.tokens.items()} if self.adapter else {}


def resolve_model(model_ref: str | os.PathLike | None) -> str:
    """Map None/"default"/"embedded" to the shipped prior; check that a local folder is a diffusers model."""
    if model_ref in (None, "", "default", "embedded"):
        model_ref = EMBEDDED_MODEL
    path = Path(model_ref).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path} is not a diffusers model folder (it has no model_index.json).")
        return str(path.resolve())
    if str(model_ref).count("/") == 1 and not str(model_ref).startswith((".", "/")):
        return str(model_ref)
    raise FileNotFoundError(f"Model not found: {model_ref} (give a diffusers folder or a hub id like org/name).")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU; bfloat16/float16 on CUDA."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@lru_cache(maxsize=8)
def model_hash(model_ref: str) -> str:
    """Short sha256 over a model folder's weight files (for a hub id, the id itself)."""
    path = Path(model_ref)
    if not path.is_dir():
        return hashlib.sha256(model_ref.encode()).hexdigest()[:12]
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.suffix in (".safetensors", ".bin", ".json", ".txt") and file.is_file():
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def load_pipeline(
    model_ref: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedPipeline:
    """Build an img2img pipeline from a model folder or hub id, with an adapter folder's tokens and LoRA loaded.

    `adapter=None` on the embedded model loads its shipped defect tokens.
    """
    resolved = resolve_model(model_ref)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    offline = not Path(resolved).exists() and os.environ.get("HF_HUB_OFFLINE") == "1"
    if offline:
        raise FileNotFoundError(f"Model {resolved} is not a local folder and the hub is offline.")
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        resolved, dtype=dtype, safety_checker=None, requires_safety_checker=False, feature_extractor=None
    )
    if adapter is None and Path(resolved) == EMBEDDED_MODEL.resolve() and (EMBEDDED_TOKENS / TOKENS_FILE).exists():
        adapter = EMBEDDED_TOKENS
    info = None
    if adapter is not None:
        info = read_adapter(adapter)
        for token in info.tokens.values():
            pipe.load_textual_inversion(str(info.path / token.embedding_file), token=token.token)
        if info.has_lora:
            pipe.load_lora_weights(str(info.path), weight_name=LORA_FILE)
    pipe.to(device)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, resolved, model_hash(resolved), info)
