"""Image-oriented generation (StableSDG): img2img from a real slab at a strength, in a window, with metadata."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from engine.config import GenerationConfig
from engine.models import model_resolution

ProgressFn = Callable[[int, int, str], None]
# Width of the linear blend at a window's inner border, so a pasted window shows no seam.
FEATHER_PX = 8
SOFTWARE = "steel-defect-studio"


@dataclass
class Candidate:
    """One generated image (same size as the source) and every parameter that made it."""

    image: Image.Image
    seed: int
    params: dict

    def png_bytes(self) -> bytes:
        return png_with_metadata(self.image, self.params)


@dataclass
class GenerationResult:
    candidates: list[Candidate] = field(default_factory=list)
    wall_time_s: float = 0.0


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_sha256(image: Image.Image) -> str:
    """Hash of an image's pixels and size (independent of file encoding)."""
    return sha256_bytes(image.tobytes() + f"{image.mode}{image.size}".encode())


def known_tokens(pipe) -> dict[str, str]:
    """Class name -> token string for the pipeline's loaded adapter."""
    info = getattr(pipe, "adapter_info", None)
    return {name: t.token for name, t in info.tokens.items()} if info else {}


def resolve_token(pipe, class_name: str) -> str:
    """The token string for a class (or a token given directly); raises a readable error if unknown."""
    tokens = known_tokens(pipe)
    if class_name in tokens:
        return tokens[class_name]
    if class_name in tokens.values():
        return class_name
    known = ", ".join(sorted(tokens)) or "none (load an adapter)"
    raise ValueError(f"Unknown defect token {class_name!r}; known tokens: {known}.")


def choose_window(width: int, height: int, config: GenerationConfig) -> tuple[int, int, int]:
    """(x, y, size) of the square the model repaints: the user's choice, else centred, at most 256 px."""
    size = config.window_size or min(width, height, 256)
    size = min(size, width, height)
    if size < 16:
        raise ValueError(f"The image is too small ({width}×{height}); it needs at least 16 px on each side.")
    x = (width - size) // 2 if config.window_x is None else config.window_x
    y = (height - size) // 2 if config.window_y is None else config.window_y
    if not (0 <= x <= width - size and 0 <= y <= height - size):
        raise ValueError(f"The window ({x}, {y}, {size} px) does not fit inside the {width}×{height} image.")
    return x, y, size


def feather_mask(size: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Weights for pasting a window back: 1 inside, ramping to 0 at borders that lie inside the image."""
    ramp = np.minimum(np.arange(size) + 1, FEATHER_PX) / FEATHER_PX
    ramp = np.minimum(ramp, ramp[::-1])
    along_x = np.where(
        (np.arange(size) < FEATHER_PX) & (x == 0) | (np.arange(size) >= size - FEATHER_PX) & (x + size == width),
        1.0,
        ramp,
    )
    along_y = np.where(
        (np.arange(size) < FEATHER_PX) & (y == 0) | (np.arange(size) >= size - FEATHER_PX) & (y + size == height),
        1.0,
        ramp,
    )
    return np.outer(along_y, along_x)[..., None]


def is_grayscale(image: Image.Image) -> bool:
    if image.mode in ("L", "LA", "I", "I;16"):
        return True
    arr = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool(np.abs(arr[..., 0] - arr[..., 1]).max() <= 2 and np.abs(arr[..., 1] - arr[..., 2]).max() <= 2)


def generate(
    pipe,
    init_image: Image.Image,
    config: GenerationConfig,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """N candidates from one source image: img2img on a window at the model's resolution, pasted back."""
    started = time.time()
    # 1. Check inputs
    token = resolve_token(pipe, config.class_name)
    source = init_image.convert("RGB")
    gray = is_grayscale(init_image)
    x, y, size = choose_window(source.width, source.height, config)
    resolution = model_resolution(pipe)

    # 2. Window at the model's resolution
    window = source.crop((x, y, x + size, y + size)).resize((resolution, resolution), Image.Resampling.LANCZOS)
    prompt = config.prompt_template.format(token=token)
    seeds = [config.seed + i for i in range(config.num_candidates)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    denoise_steps = int(config.steps * config.strength)

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        if progress:
            progress(step + 1, denoise_steps, f"denoising step {step + 1}/{denoise_steps}")
        if should_stop is not None and should_stop():
            pipeline._interrupt = True
        return callback_kwargs

    # 3. Denoise all candidates in one batch
    with torch.inference_mode():
        outputs = pipe(
            prompt=prompt,
            negative_prompt=config.negative_prompt or None,
            image=window,
            strength=config.strength,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            num_images_per_prompt=config.num_candidates,
            generator=generators,
            callback_on_step_end=on_step_end,
        ).images
    if should_stop is not None and should_stop():
        raise InterruptedError("Generation was stopped.")

    # 4. Paste each window back with a feathered border and record its parameters
    weights = feather_mask(size, x, y, source.width, source.height)
    base = np.asarray(source, dtype=np.float32)
    source_hash = image_sha256(init_image)
    info = getattr(pipe, "adapter_info", None)
    candidates = []
    for seed, output in zip(seeds, outputs, strict=True):
        patch = np.asarray(output.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
        merged = base.copy()
        region = merged[y : y + size, x : x + size]
        merged[y : y + size, x : x + size] = region * (1 - weights) + patch * weights
        image = Image.fromarray(np.clip(merged + 0.5, 0, 255).astype(np.uint8))
        if gray:
            image = image.convert("L")
        params = {
            "software": SOFTWARE,
            "class_name": config.class_name,
            "token": token,
            "prompt": prompt,
            "negative_prompt": config.negative_prompt,
            "strength": config.strength,
            "steps": config.steps,
            "guidance_scale": config.guidance_scale,
            "seed": seed,
            "sampler": type(pipe.scheduler).__name__,
            "model_ref": getattr(pipe, "model_ref", ""),
            "model_hash": getattr(pipe, "model_hash", ""),
            "adapter_path": str(info.path) if info else None,
            "adapter_version": info.version if info else None,
            "source_sha256": source_hash,
            "window": {"x": x, "y": y, "size": size},
            "resolution": resolution,
            "width": image.width,
            "height": image.height,
        }
        candidates.append(Candidate(image, seed, params))
    return GenerationResult(candidates, time.time() - started)


def parameters_line(params: dict) -> str:
    """A1111-style one-line summary for the PNG 'parameters' text chunk."""
    return (
        f"{params['prompt']}\nNegative prompt: {params.get('negative_prompt', '')}\n"
        f"Steps: {params['steps']}, Sampler: {params['sampler']}, CFG scale: {params['guidance_scale']}, "
        f"Seed: {params['seed']}, Denoising strength: {params['strength']}, Model hash: {params['model_hash']}, "
        f"Token: {params['token']}, Adapter: {params['adapter_version']}, Source: {params['source_sha256'][:12]}"
    )


def png_with_metadata(image: Image.Image, params: dict) -> bytes:
    """PNG bytes carrying `parameters` (A1111 style) and `studio` (full JSON) text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_line(params))
    info.add_text("studio", json.dumps(params, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_parameters(data: bytes | str) -> dict:
    """The `studio` JSON of a PNG written by `png_with_metadata` (bytes or a path)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as im:
        text = im.text.get("studio") if hasattr(im, "text") else None
    if not text:
        raise ValueError("This PNG carries no studio parameters.")
    return json.loads(text)
