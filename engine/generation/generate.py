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
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image, PngImagePlugin

from engine.adapters import TokenInfo
from engine.boxes import from_mask
from engine.config import GenerationConfig
from engine.data import is_grayscale
from engine.generation.exemplars import DefectExemplar, paste_exemplars
from engine.generation.parameters import CandidateParameters, MaskedRepaint, SlabWindow, Window
from engine.generation.pipeline import LoadedPipeline
from engine.generation.placement import propose_masks
from engine.generation.quality import masked_quality
from engine.generation.variation import defect_colour_gains, with_grey_levels, with_white_balance
from engine.masks import (
    MASK_GROW_PX,
    MASK_WINDOW_SCALE,
    MaskWindow,
    feather,
    grow,
    latent_mask,
    mask_array,
    mask_png,
    mask_sha256,
    mirror_pad,
    model_canvas,
    plan_windows,
)
from engine.progress import ProgressFn

# Width of the linear blend at a window's inner border, so a pasted window shows no seam.
FEATHER_PX = 8
SOFTWARE = "steel-defect-studio"
# The mask source of an auto-placed repaint sized and counted by its class's own defects (`learnt_statistics`).
AUTO_PLACE_OWN = "auto-place (own boxes)"
# The mask source of an auto-placed repaint started from the class's real defects pasted in (`exemplars`).
PASTED_DEFECTS = "auto-place (real defects pasted)"


@dataclass
class Candidate:
    """One generated image (same size as the source) and every parameter that made it."""

    image: Image.Image
    seed: int
    params: CandidateParameters
    # The drawn or auto-placed mask (bool, image-sized) of a masked repaint; None for a window img2img.
    mask: np.ndarray | None = None

    def png_bytes(self) -> bytes:
        return png_with_metadata(self.image, self.params)

    def mask_png(self) -> bytes | None:
        """The mask as an 8-bit PNG (white = defect), or None."""
        return None if self.mask is None else mask_png(self.mask)


@dataclass
class GenerationResult:
    candidates: list[Candidate] = field(default_factory=list)
    wall_time_s: float = 0.0


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_sha256(image: Image.Image) -> str:
    """Hash of an image's pixels and size (independent of file encoding)."""
    return sha256_bytes(image.tobytes() + f"{image.mode}{image.size}".encode())


def resolve_token(loaded: LoadedPipeline, class_name: str) -> str:
    """The token string for a class (or a token given directly); raises a readable error if unknown."""
    tokens = loaded.tokens
    if class_name in tokens:
        return tokens[class_name]
    if class_name in tokens.values():
        return class_name
    known = ", ".join(sorted(tokens)) or "none (load an adapter)"
    raise ValueError(f"Unknown defect token {class_name!r}; known tokens: {known}.")


def choose_window(width: int, height: int, config: GenerationConfig) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the rectangle the model repaints (`GenerationConfig.repainted_box`): the user's square, else
    centred, at most 256 px high, a strip along its length."""
    x, y, w, h = config.repainted_box(width, height)
    if min(w, h) < 16:
        raise ValueError(f"The image is too small ({width}×{height}); it needs at least 16 px on each side.")
    if not (0 <= x <= width - w and 0 <= y <= height - h):
        raise ValueError(f"The window ({x}, {y}, {w}×{h} px) does not fit inside the {width}×{height} image.")
    return x, y, w, h


def _feather_ramp(length: int, start: int, extent: int) -> np.ndarray:
    """Paste weights along one side of a window at `start` of `length` in an image `extent` long: a ramp to 0 at
    ends inside the image, 1 at its borders."""
    steps = np.arange(length)
    ramp = np.minimum(steps + 1, FEATHER_PX) / FEATHER_PX
    ramp = np.minimum(ramp, ramp[::-1])
    at_border = (steps < FEATHER_PX) & (start == 0) | (steps >= length - FEATHER_PX) & (start + length == extent)
    return np.where(at_border, 1.0, ramp)


def canvas_multiple(pipe: StableDiffusionImg2ImgPipeline) -> int:
    """The pixels a model canvas's sides are a multiple of: the autoencoder's factor times the UNet's downsampling."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def feather_mask(w: int, h: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Weights (h × w × 1) for pasting a window back: 1 inside, ramping to 0 at borders that lie inside the image."""
    return np.outer(_feather_ramp(h, y, height), _feather_ramp(w, x, width))[..., None]


def generate(
    loaded: LoadedPipeline,
    init_image: Image.Image,
    config: GenerationConfig,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    mask: Image.Image | np.ndarray | None = None,
    exemplars: list[DefectExemplar] | None = None,
) -> GenerationResult:
    """N candidates from one source image: img2img on a window at the model's resolution, pasted back.

    With a `mask` (the source's size, white = repaint) or `config.auto_place`, only the masked region is
    repainted and every pixel farther than MASK_GROW_PX from the mask keeps the source's value exactly. With
    `exemplars` (auto-place only), each candidate starts from the source with one of the class's real defects pasted
    at each auto-placed defect (`engine.generation.exemplars`), and its mask is the pasted defects' boxes (the paste
    blends `exemplars.CONTEXT_PX` around each box, so the slab is kept exactly beyond that).
    """
    if exemplars and not config.auto_place:
        raise ValueError("Real defects are pasted at auto-placed defects: ask for auto-place with them.")
    if mask is not None or config.auto_place:
        return _generate_masked(loaded, init_image, config, mask, progress, should_stop, exemplars)
    pipe = loaded.pipe
    started = time.time()
    # 1. Check inputs
    token = resolve_token(loaded, config.class_name)
    source = init_image.convert("RGB")
    gray = is_grayscale(init_image)
    x, y, w, h = choose_window(source.width, source.height, config)
    model_width, model_height = model_canvas(w, h, loaded.resolution, canvas_multiple(pipe))

    # 2. Window at the model's resolution (a strip's on a canvas of its shape)
    crop = source.crop((x, y, x + w, y + h))
    window = crop.resize((model_width, model_height), Image.Resampling.LANCZOS)
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

    # 3. Denoise all candidates in one batch; strength 1.0 starts from pure noise, not from a noised source
    if config.strength < 1.0:
        denoiser, start = pipe, {"image": window, "strength": config.strength}
    else:
        denoiser, start = loaded.text_to_image, {"height": model_height, "width": model_width}
    with torch.inference_mode():
        outputs = denoiser(
            prompt=prompt,
            negative_prompt=config.negative_prompt or None,
            **start,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance(),
            num_images_per_prompt=config.num_candidates,
            generator=generators,
            callback_on_step_end=on_step_end,
        ).images
    if should_stop is not None and should_stop():
        raise InterruptedError("Generation was stopped.")
    crops = [crop] * len(outputs)
    outputs = carry_colour(crops, restore_detail(pipe, crops, outputs, config), config)

    # 4. Paste each window back with a feathered border and record its parameters
    weights = feather_mask(w, h, x, y, source.width, source.height)
    base = np.asarray(source, dtype=np.float32)
    source_hash = image_sha256(init_image)
    candidates = []
    for seed, output in zip(seeds, outputs, strict=True):
        patch = np.asarray(output, dtype=np.float32)
        merged = base.copy()
        region = merged[y : y + h, x : x + w]
        merged[y : y + h, x : x + w] = region * (1 - weights) + patch * weights
        image = Image.fromarray(np.clip(merged + 0.5, 0, 255).astype(np.uint8))
        if gray:
            image = image.convert("L")
        params = _candidate_params(loaded, config, token, prompt, seed, source_hash, image)
        params.window = Window(x, y, w, None if w == h else h)
        candidates.append(Candidate(image, seed, params))
    return GenerationResult(candidates, time.time() - started)


def restore_detail(
    pipe: StableDiffusionImg2ImgPipeline,
    crops: list[Image.Image],
    outputs: list[Image.Image],
    config: GenerationConfig,
) -> list[Image.Image]:
    """Each output (at the model's resolution) brought to its crop's size (the window as cut from the slab), plus
    `config.detail_restore` × (crop − the autoencoder round trip of the crop at the model's resolution, resized
    back to the crop's size).

    The round trip shows exactly what the model's window cannot represent: the grain the autoencoder loses and,
    for a window larger than the model's resolution, the finest grain its resize loses. The generated image lacks
    the same, so adding it restores the source's texture at those scales only, at the slab's own pixel scale.
    """
    weight = config.detail_restore if config.strength < 1.0 else 0.0
    resized = [output.resize(crop.size, Image.Resampling.LANCZOS) for crop, output in zip(crops, outputs, strict=True)]
    if weight == 0.0:
        return resized
    vae = pipe.vae
    residuals = {}
    with torch.inference_mode():
        for crop, output in zip(crops, outputs, strict=True):
            if id(crop) in residuals:
                continue
            window = crop.convert("RGB").resize(output.size, Image.Resampling.LANCZOS)
            pixels = pipe.image_processor.preprocess(window).to(device=vae.device, dtype=vae.dtype)
            decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)
            round_trip = ((decoded[0].float().permute(1, 2, 0).cpu().numpy() + 1) * 127.5).astype(np.float32)
            channels = [
                np.asarray(Image.fromarray(round_trip[..., c]).resize(crop.size, Image.Resampling.LANCZOS))
                for c in range(round_trip.shape[-1])
            ]
            residuals[id(crop)] = np.asarray(crop.convert("RGB"), dtype=np.float32) - np.stack(channels, axis=-1)
    restored = []
    for crop, output in zip(crops, resized, strict=True):
        pixels = np.asarray(output.convert("RGB"), dtype=np.float32) + weight * residuals[id(crop)]
        restored.append(Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)))
    return restored


def carry_colour(crops: list[Image.Image], outputs: list[Image.Image], config: GenerationConfig) -> list[Image.Image]:
    """Each output (at its crop's size) in its crop's colours: the output's luminance, each pixel's chroma the crop's
    scaled with it (`with_grey_levels`), as a camera's white balance and a defect's colour scale with the light.

    The model draws the steel's structure ("a grayscale photo of…"): the embedded prior never saw colour and a grey
    decoder would otherwise leave a colour slab's colour to detail restore alone — added back where the source had it,
    and not at all with restore off. From pure noise (strength 1.0) the layout is not the crop's, so the crop's mean
    colour is carried. A grey crop's output is returned as it is.
    """
    carried = []
    for crop, output in zip(crops, outputs, strict=True):
        if is_grayscale(crop):
            carried.append(output)
            continue
        colours = crop.convert("RGB")
        if config.strength >= 1.0:
            mean = np.asarray(colours, dtype=np.float32).reshape(-1, 3).mean(axis=0)
            colours = Image.new("RGB", crop.size, tuple(int(c + 0.5) for c in mean))
        grey = np.asarray(output.convert("L"), dtype=np.float32)
        carried.append(with_grey_levels(colours, grey))
    return carried


def token_info(loaded: LoadedPipeline, class_name: str) -> TokenInfo | None:
    """What the loaded adapter learnt of a class, or None."""
    return loaded.adapter.tokens.get(class_name) if loaded.adapter else None


def masked_window_base(loaded: LoadedPipeline, class_name: str) -> int:
    """Slab pixels a masked repaint's window holds per model resolution: the prior's scale (MASK_WINDOW_SCALE), or
    the class's own where its adapter learnt it from smaller captures (`TokenInfo.view_side`). A mill whose captures
    are 128 px is then repainted at 128 px a window, as its fine-tune saw them and its whole windows are redrawn,
    not mirror-extended to 200 px and painted at 0.64 of the scale its token learnt."""
    prior = round(loaded.resolution * MASK_WINDOW_SCALE)
    token = token_info(loaded, class_name)
    return min(prior, round(token.view_side)) if token and token.view_side else prior


def defect_colour_of(loaded: LoadedPipeline, class_name: str) -> tuple[list[float] | None, float | None]:
    """The colour its adapter learnt for the class's defects against their steel (`variation.defect_tint`) and how
    far it lies on their structure (`variation.defect_colour_structure`); (None, None) without one."""
    token = token_info(loaded, class_name)
    return (token.defect_tint, token.defect_structure) if token and token.defect_tint else (None, None)


def _candidate_params(
    loaded: LoadedPipeline,
    config: GenerationConfig,
    token: str,
    prompt: str,
    seed: int,
    source_hash: str,
    image: Image.Image,
    masked: bool = False,
) -> CandidateParameters:
    """Every parameter that made a candidate, for its PNG metadata and its database row."""
    info = loaded.adapter
    return CandidateParameters(
        class_name=config.class_name,
        token=token,
        prompt=prompt,
        negative_prompt=config.negative_prompt,
        strength=config.strength,
        steps=config.steps,
        guidance_scale=config.guidance(masked),
        detail_restore=config.detail_restore if config.strength < 1.0 else 0.0,
        seed=seed,
        sampler=type(loaded.pipe.scheduler).__name__,
        model_ref=loaded.model_ref,
        model_hash=loaded.model_hash,
        adapter_path=str(info.path) if info else None,
        adapter_version=info.version if info else None,
        source_sha256=source_hash,
        resolution=loaded.resolution,
        width=image.width,
        height=image.height,
        software=SOFTWARE,
    )


@dataclass
class _MaskJob:
    """One window of one candidate's mask, denoised in a batch with others of the same canvas size."""

    candidate: int
    window: MaskWindow
    seed: int


def _part_seed(seed: int, part: int) -> int:
    """The seed of a candidate's second, third, … window: distinct, and reproducible from the candidate's seed."""
    return seed if part == 0 else int(np.random.SeedSequence([seed, part]).generate_state(1)[0])


def _generate_masked(
    loaded: LoadedPipeline,
    init_image: Image.Image,
    config: GenerationConfig,
    mask: Image.Image | np.ndarray | None,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
    exemplars: list[DefectExemplar] | None = None,
) -> GenerationResult:
    """Masked repaint (padding-mask-crop): each window around the mask is denoised at the model's resolution
    with the known latents blended back after every step, then pasted through the feathered grown mask."""
    pipe = loaded.pipe
    started = time.time()
    # 1. Check inputs and get one mask per candidate (drawn once, or auto-placed from each candidate's seed)
    token = resolve_token(loaded, config.class_name)
    if mask is not None and config.auto_place:
        raise ValueError("Give a mask or ask for auto-place, not both.")
    if config.window_x is not None or config.window_y is not None:
        raise ValueError("A masked repaint places its windows around the mask; leave the window position unset.")
    source = init_image.convert("RGB")
    width, height = source.size
    choose_window(width, height, config)
    seeds = [config.seed + i for i in range(config.num_candidates)]
    placement = info.placement if (info := token_info(loaded, config.class_name)) and mask is None else None
    if mask is not None:
        masks = [mask_array(mask, width, height)] * len(seeds)
    else:
        masks = [
            mask_array(propose_masks(config.class_name, width, height, seed, statistics=placement)[0], width, height)
            for seed in seeds
        ]
    starts, pastes = [source] * len(seeds), [[] for _ in seeds]
    if exemplars:
        pasted = [paste_exemplars(source, exemplars, placed, seed) for placed, seed in zip(masks, seeds, strict=True)]
        starts, masks, pastes = (list(part) for part in zip(*pasted, strict=True))

    # 2. Mirror-extend a slab smaller than the window; grow each mask and plan its windows on that canvas
    resolution = loaded.resolution
    multiple = canvas_multiple(pipe)
    base = config.window_size or masked_window_base(loaded, config.class_name)
    pad_x, pad_y = max(0, base - width), max(0, base - height)
    distinct = {id(start): start for start in starts}
    padded = {key: Image.fromarray(mirror_pad(np.asarray(start), pad_x, pad_y)) for key, start in distinct.items()}
    canvases = [padded[id(start)] for start in starts]
    planned: dict[int, tuple[np.ndarray, list[MaskWindow]]] = {}
    jobs: list[_MaskJob] = []
    for index, (seed, drawn) in enumerate(zip(seeds, masks, strict=True)):
        if id(drawn) not in planned:
            grown = np.pad(grow(drawn), ((pad_y, pad_y), (pad_x, pad_x)))
            planned[id(drawn)] = (feather(grown), plan_windows(grown, base, resolution, multiple))
        jobs += [_MaskJob(index, w, _part_seed(seed, part)) for part, w in enumerate(planned[id(drawn)][1])]

    # 3. Denoise the windows, batched by canvas size
    prompt = config.prompt_template.format(token=token)
    batches: dict[tuple[int, int], list[int]] = {}
    for number, job in enumerate(jobs):
        batches.setdefault((job.window.model_width, job.window.model_height), []).append(number)
    denoise_steps = int(config.steps * config.strength)
    total = denoise_steps * len(batches)
    outputs: dict[int, Image.Image] = {}
    for batch_number, numbers in enumerate(batches.values()):
        done = batch_number * denoise_steps

        def on_step(step: int, pipeline, done: int = done) -> None:
            if progress:
                progress(done + step + 1, total, f"denoising step {done + step + 1}/{total}")
            if should_stop is not None and should_stop():
                pipeline._interrupt = True

        batch_jobs = [jobs[n] for n in numbers]
        batch_canvases = [canvases[job.candidate] for job in batch_jobs]
        images = _denoise_windows(pipe, batch_canvases, batch_jobs, prompt, config, on_step)
        if should_stop is not None and should_stop():
            raise InterruptedError("Generation was stopped.")
        outputs.update(zip(numbers, images, strict=True))

    # 4. Paste each window, in the class's defect colour, through its part of the feathered mask; measure and record
    gray = is_grayscale(init_image)
    # Pasted real defects carry their own colour.
    tint, structure = (None, None) if gray or exemplars else defect_colour_of(loaded, config.class_name)
    merged = [np.asarray(canvas, dtype=np.float32) for canvas in canvases]
    for number, job in enumerate(jobs):
        w = job.window
        weights = planned[id(masks[job.candidate])][0][w.y : w.y + w.height, w.x : w.x + w.width]
        weights = (weights * w.region)[..., None]
        painted = outputs[number]
        if tint is not None:
            slab_window = canvases[job.candidate].crop((w.x, w.y, w.x + w.width, w.y + w.height))
            painted = with_white_balance(
                painted, *defect_colour_gains(tint, structure, painted, slab_window, weights[..., 0])
            )
        patch = np.asarray(painted, dtype=np.float32)
        target = merged[job.candidate][w.y : w.y + w.height, w.x : w.x + w.width]
        merged[job.candidate][w.y : w.y + w.height, w.x : w.x + w.width] = target * (1 - weights) + patch * weights
    source_hash = image_sha256(init_image)
    candidates = []
    for index, (seed, drawn) in enumerate(zip(seeds, masks, strict=True)):
        pixels = merged[index][pad_y : pad_y + height, pad_x : pad_x + width]
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
        if gray:
            image = image.convert("L")
        params = _candidate_params(loaded, config, token, prompt, seed, source_hash, image, masked=True)
        params.masked = MaskedRepaint(
            windows=[_on_slab(job.window, pad_x, pad_y, width, height) for job in jobs if job.candidate == index],
            window_scale=round(jobs[0].window.width / jobs[0].window.model_width, 4) if jobs else None,
            mask_source=_mask_source(mask is not None, placement is not None, bool(exemplars)),
            mask_sha256=mask_sha256(drawn),
            mask_grow_px=MASK_GROW_PX,
            boxes=from_mask(drawn, config.class_name),
            defect_tint=tint,
            defect_structure=structure,
            quality=masked_quality(source, image, drawn),
            pasted=pastes[index],
        )
        candidates.append(Candidate(image, seed, params, drawn))
    return GenerationResult(candidates, time.time() - started)


def _mask_source(drawn: bool, own_statistics: bool, pasted: bool) -> str:
    """How a masked repaint's mask came about, as its metadata records it."""
    if drawn:
        return "drawn"
    return PASTED_DEFECTS if pasted else AUTO_PLACE_OWN if own_statistics else "auto-place"


def _on_slab(window: MaskWindow, pad_x: int, pad_y: int, width: int, height: int) -> SlabWindow:
    """A window planned on the mirror-extended canvas, as the part of it that lies on the slab."""
    x0, y0 = max(window.x - pad_x, 0), max(window.y - pad_y, 0)
    x1, y1 = min(window.x + window.width - pad_x, width), min(window.y + window.height - pad_y, height)
    return SlabWindow(x0, y0, x1 - x0, y1 - y0)


def _denoise_windows(
    pipe,
    canvases: list[Image.Image],
    jobs: list[_MaskJob],
    prompt: str,
    config: GenerationConfig,
    on_step: Callable[[int, object], None],
) -> list[Image.Image]:
    """img2img on same-sized windows; after every step the latents outside each window's mask are replaced by
    the window's own latents noised to the next timestep (diffusers' inpainting for a 4-channel UNet, as a step
    callback so that it works for any number of latent channels). `canvases`: each job's canvas. Returns each
    window's image at its size on the canvas, its detail restored there."""
    windows = [job.window for job in jobs]
    crops = [
        canvas.crop((w.x, w.y, w.x + w.width, w.y + w.height)) for canvas, w in zip(canvases, windows, strict=True)
    ]
    images = [
        crop.resize((w.model_width, w.model_height), Image.Resampling.LANCZOS)
        for crop, w in zip(crops, windows, strict=True)
    ]
    vae = pipe.vae
    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(images).to(device=vae.device, dtype=vae.dtype)
        known = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
        noise = torch.stack(
            [torch.randn(known.shape[1:], generator=torch.Generator().manual_seed(job.seed)) for job in jobs]
        ).to(device=known.device, dtype=known.dtype)
        repaint = torch.from_numpy(
            np.stack([latent_mask(w.region, w.model_width, w.model_height, pipe.vae_scale_factor) for w in windows])
        )[:, None].to(device=known.device, dtype=known.dtype)

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        timesteps = pipeline.scheduler.timesteps[-pipeline.num_timesteps :]
        if step + 1 < len(timesteps):
            target = pipeline.scheduler.add_noise(known, noise, timesteps[step + 1].repeat(len(jobs)))
        else:
            target = known
        latents = callback_kwargs["latents"]
        callback_kwargs["latents"] = (target * (1 - repaint) + latents * repaint).to(latents.dtype)
        on_step(step, pipeline)
        return callback_kwargs

    with torch.inference_mode():
        outputs = pipe(
            prompt=[prompt] * len(jobs),
            negative_prompt=[config.negative_prompt] * len(jobs) if config.negative_prompt else None,
            image=images,
            strength=config.strength,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance(masked=True),
            generator=[torch.Generator().manual_seed(job.seed) for job in jobs],
            callback_on_step_end=on_step_end,
        ).images
    return carry_colour(crops, restore_detail(pipe, crops, outputs, config), config)


def parameters_line(params: CandidateParameters) -> str:
    """A1111-style one-line summary for the PNG 'parameters' text chunk."""
    return (
        f"{params.prompt}\nNegative prompt: {params.negative_prompt}\n"
        f"Steps: {params.steps}, Sampler: {params.sampler}, CFG scale: {params.guidance_scale}, "
        f"Seed: {params.seed}, Denoising strength: {params.strength}, Model hash: {params.model_hash}, "
        f"Token: {params.token}, Adapter: {params.adapter_version}, Source: {params.source_sha256[:12]}"
    )


def png_with_metadata(image: Image.Image, params: CandidateParameters) -> bytes:
    """PNG bytes carrying `parameters` (A1111 style) and `studio` (full JSON) text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_line(params))
    info.add_text("studio", json.dumps(params.as_dict(), sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_parameters(data: bytes | str) -> CandidateParameters:
    """The parameters in a PNG written by `png_with_metadata` (bytes or a path)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as im:
        text = im.text.get("studio") if hasattr(im, "text") else None
    if not text:
        raise ValueError("This PNG carries no studio parameters.")
    return CandidateParameters.from_dict(json.loads(text))
