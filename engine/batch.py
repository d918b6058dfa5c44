"""Headless jobs on folders: the CLI's `generate` and `finetune` (the UI goes through the same engine calls)."""

from __future__ import annotations

import logging
import random
import shutil
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import gather_object
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image

from engine.adapters import proposed_strength
from engine.config import DEFAULT_REALISM_THRESHOLD, DEFAULT_STEPS, GenerationConfig, finetune_config, seconds_of
from engine.data import MASK_SUFFIX, list_images, load_rgb
from engine.evaluation.realism import class_realism_scorer
from engine.generation.class_stats import class_exposures, class_turn_share, pool_exposure
from engine.generation.exemplars import read_exemplars
from engine.generation.generate import Candidate, defect_colour_of, generate, resolve_token, token_info
from engine.generation.parameters import MIN_FEW_SHOT_REFERENCES, Realism, repainted_region
from engine.generation.pipeline import LoadedPipeline, load_pipeline, resolve_model
from engine.generation.variation import capture_variation as vary_capture
from engine.generation.variation import (
    check_init_mix,
    check_turn_share,
    grain_range,
    tint_spread,
    tint_variation,
    varied_init,
)
from engine.progress import ProgressFn, StepFn, StopFn
from engine.training.loop import TrainResult, images_from_folder, latest_checkpoint, process_state, train

logger = logging.getLogger(__name__)

# Varied inits: candidates per init (2 keeps a batch's model call efficient and its layouts many).
DEFAULT_PER_INIT = 2
# When the gate has flagged a whole batch's worth at one strength, the rest is made this much lower (less of the
# init redrawn, so closer to the real images), down to the floor; a floor at or above the strength stops instead.
GATE_STRENGTH_STEP = 0.1
# Two steps below the default strength, as 0.4 was below 0.6: a new mill's faint class still finishes its batch.
DEFAULT_STRENGTH_FLOOR = 0.2
# Capture variation of batch samples (exposure, and pixel grain brought to the init images';
# engine.generation.variation), applied after the realism gate. 1 is the measured default (`docs/results.md`, "Capture
# variation"); 0 turns it off.
DEFAULT_CAPTURE_VARIATION = 1.0
FLAGGED_FOLDER = "flagged"
# Candidates are written here under their slot number first, then renamed once the batch is complete.
PARTS_FOLDER = ".parts"


class RealismGateError(ValueError):
    """Batch generation flagged as many candidates as it was asked for at every strength down to its floor before
    making enough: a setting to change."""


def init_images(init: Path) -> list[Path]:
    """The init image, or every image in a folder; raises a readable error if there is none."""
    init = Path(init)
    if not init.exists():
        raise FileNotFoundError(f"Init image or folder not found: {init}")
    paths = list_images(init) if init.is_dir() else [init]
    if not paths:
        raise ValueError(f"No images in {init}.")
    return paths


def default_strength(pipe: LoadedPipeline, class_name: str, masked: bool = False) -> float:
    """The token's tuned strength (for a masked repaint when `masked`) in the pipeline's adapter, else the default."""
    return proposed_strength(pipe.adapter.path if pipe.adapter else None, class_name, masked)


@dataclass(frozen=True)
class CaptureModel:
    """What a batch's capture variation draws from: its `amount` (0: none), the init images' `grain` range and
    `tint` spread (`variation.tint_spread`), and the `exposures` half of the samples may take."""

    amount: float
    grain: tuple[float, float]
    exposures: list[list[float]]
    tint: tuple[float, float]


def generate_to_folder(
    model: str | None,
    adapter: Path | None,
    class_name: str,
    init: Path,
    num: int,
    out: Path,
    strength: float | None = None,
    steps: int = DEFAULT_STEPS,
    guidance: float | None = None,
    seed: int = 0,
    batch: int = 8,
    window_size: int | None = None,
    pipe: LoadedPipeline | None = None,
    mask: Path | None = None,
    auto_place: bool = False,
    vary: bool = True,
    per_init: int = DEFAULT_PER_INIT,
    realism_threshold: float | None = DEFAULT_REALISM_THRESHOLD,
    realism_reference: Path | None = None,
    exemplars: Path | None = None,
    detail_restore: float | None = None,
    capture_variation: float = DEFAULT_CAPTURE_VARIATION,
    init_mix: dict[str, float] | None = None,
    strength_floor: float | None = DEFAULT_STRENGTH_FLOOR,
    turn_share: float | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    model_turn: AbstractContextManager | None = None,
) -> list[Path]:
    """Write `num` PNGs to `out` from the init image(s); returns their paths. `progress` hears how many are kept
    after every varied init (every `batch` candidates without variation); `should_stop` (one process: the studio's
    stop button) is asked then too, and a stopped batch files what it made and returns the kept ones. Each init's
    denoising runs inside `model_turn` (a reusable context: the studio's model lock, so that a preview on the same
    pipeline waits for one init, not for the whole batch).

    With `vary` (the default, not with `mask`), every `per_init` candidates start from a new varied init made
    from all the init images (the image as is, a geometric variant, a mosaic, a warped variant or an overlay, in
    the shares of `init_mix`, default `DEFAULT_INIT_MIX`; `engine.generation.variation`), recorded in each PNG's
    metadata; without it the init images are used in turn, `batch` candidates each. `turn_share` of the varied
    inits are turned a quarter, for a defect that runs in any direction though the init images show one; None
    (the default) turns the share that brings the inits' directions to those the training pool knows for the
    class (`engine.generation.class_stats.class_turn_share`, which also covers a class it does not know).
    With `mask` (an image of the init images' size, white = repaint) or `auto_place`, only the masked region is
    repainted; each PNG then gets its mask beside it as `<name>_mask.png` and its boxes in the metadata. With
    `exemplars` (auto-place only: a folder of the class's real defect images with masks or boxes beside them), each
    candidate starts from its slab with those real defects pasted at the auto-placed places, and its mask and boxes
    are the pasted defects' (`engine.generation.exemplars`; each paste in its metadata).
    With a `realism_threshold` and a realism reference for the class (`class_realism_scorer` of the class's real
    defect images: the images in `realism_reference`, by default the init images when the batch repaints them whole;
    a masked batch's inits are clean slabs, never its reference, so without `realism_reference` it has the shipped
    NEU features for a NEU class and no gate for another), candidates scoring below it are flagged: written to
    `out/flagged/`, not counted in `num`, and replaced. Once `num` are flagged at one strength, the rest of the
    batch is made `GATE_STRENGTH_STEP` lower (each PNG records its strength), down to `strength_floor`; flagging
    `num` more at the floor (or at the first strength when the floor is None or not below it, and in a masked
    repaint) ends the batch with `RealismGateError`, the kept samples written.
    Then every candidate gets `capture_variation` (the exposure of another capture, and the pixel grain of the init
    images, recorded in its metadata; the realism score is the model's render's); in a varied batch, half of them
    then take the exposure of one of the class's pool images, or for a class the pool does not know one drawn about
    the init images' with the spread of a pool class (`class_stats.class_exposures`, `pool_exposure`; not with ten
    or more init images, nor with `capture_variation` 0). Colour samples last get a white balance drawn with the
    spread of the init images' own (`variation.tint_variation`; grey ones, and a class whose images share one tint,
    none).
    Under `torchrun` the processes take turns at the inits (each round, N consecutive attempts) and the files are
    named in attempt order, so N processes write the same files, with the same pixels, as one.
    """
    _check_settings(num, strength, per_init, capture_variation, strength_floor, init_mix, turn_share)
    extra = {"guidance_scale": guidance} if guidance is not None else {}
    if detail_restore is not None:
        extra["detail_restore"] = detail_restore
    # GenerationConfig checks the rest before the model loads (strength 1 stands in for a tuned default).
    GenerationConfig(class_name, min(batch, num), strength or 1.0, steps, seed=seed, window_size=window_size, **extra)
    if mask is not None and auto_place:
        raise ValueError("Give --mask or --auto-place, not both.")
    mask_image = _read_mask(mask) if mask is not None else None
    if exemplars is not None and not auto_place:
        raise ValueError("Real defects (--exemplars) are pasted at auto-placed defects: add --auto-place.")
    pasted = read_exemplars(init_images(exemplars)) if exemplars is not None else None
    if exemplars is not None and not pasted:
        raise ValueError(f"No image in {exemplars} has a defect mask or boxes beside it to paste from.")
    vary = vary and mask_image is None
    masked = mask_image is not None or auto_place
    # A varied batch that repaints whole images uses what the training pool knows of the class.
    uses_pool = vary and not masked
    if turn_share and not vary:
        raise ValueError("Quarter turns apply to varied inits; not with --mask or --no-vary.")
    paths = init_images(init)
    images = [load_rgb(path) for path in paths]
    names = [path.name for path in paths]
    state = process_state()
    if turn_share is None:
        turn_share = _matched_turn_share(class_name, images, state.is_main_process) if uses_pool else 0.0
    # Under torchrun every process makes its share of the candidates, on its own device.
    pipe = pipe or load_pipeline(model, adapter, device=state.device if state.num_processes > 1 else None)
    resolve_token(pipe, class_name)
    strength = strength if strength is not None else default_strength(pipe, class_name, masked)
    tint, structure = defect_colour_of(pipe, class_name)
    if masked and tint is not None and state.is_main_process:
        logger.info(
            "Painting %s in the colour its adapter learnt against the steel (log R/G %+.3f, log B/G %+.3f; %.0f %% of "
            "it on what the model draws, the rest over the mask) on colour slabs.",
            class_name,
            *tint,
            100 * (structure or 0.0),
        )
    own = info.own_defects if (info := token_info(pipe, class_name)) else None
    if auto_place and own is not None and state.is_main_process:
        logger.info(
            "Auto-placing the defects of %s sized and counted like its own %d (from the images its adapter was "
            "fine-tuned on), not NEU's.",
            class_name,
            len(own["boxes"]),
        )
    # A masked repaint at a lower strength paints less of the defect, which the gate would flag more, not less.
    strength_floor = None if masked else strength_floor
    defect_images = [] if masked else images
    if realism_reference is not None and realism_threshold is not None:
        defect_images = [load_rgb(path) for path in init_images(realism_reference)]
    realism = (
        class_realism_scorer(class_name, defect_images, any_direction=turn_share > 0)
        if realism_threshold is not None
        else None
    )
    scorer, reference = realism or (None, None)
    if realism_threshold is not None and scorer is None and state.is_main_process:
        slabs = " (a masked batch's inits are clean slabs: give the class's real defect images as its reference)"
        logger.warning(
            "No realism reference for %r (%d real defect images%s; a class without NEU's shipped features needs "
            "%d): the realism gate is off for this batch.",
            class_name,
            len(defect_images),
            slabs if masked and realism_reference is None else "",
            MIN_FEW_SHOT_REFERENCES,
        )
    out = Path(out)
    parts = out / PARTS_FOLDER
    if state.is_main_process:
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
    state.wait_for_everyone()
    per_attempt = min(per_init if vary else batch, num)
    capture = CaptureModel(
        capture_variation,
        grain_range(images),
        _class_exposures(class_name, images, state.is_main_process) if uses_pool and capture_variation else [],
        _tint_spread(class_name, images, state.is_main_process) if capture_variation else (0.0, 0.0),
    )
    attempts: list[tuple[int, bool]] = []  # (slot, below the threshold) of the candidates this process made
    strengths = [strength]
    phase_start = 0  # the first slot made at the current strength
    first_attempt = 0  # the first attempt of the current round
    stopped = False
    while True:
        attempt = first_attempt + state.process_index
        image, lineage = _attempt_init(images, names, attempt, seed, vary, init_mix, turn_share)
        if mask_image is not None and mask_image.size != image.size:
            size = f"{image.width}×{image.height}"
            raise ValueError(
                f"The mask is {mask_image.width}×{mask_image.height} but {lineage['sources'][0]} is {size}."
            )
        config = GenerationConfig(
            class_name=class_name,
            num_candidates=per_attempt,
            strength=strengths[-1],
            steps=steps,
            seed=seed + attempt * per_attempt,
            window_size=window_size,
            auto_place=auto_place,
            **extra,
        )
        with model_turn or nullcontext():
            candidates = generate(pipe, image, config, mask=mask_image, exemplars=pasted).candidates
        crops = [repainted_region(c.image, c.params) for c in candidates]
        scores = scorer.score_many(crops, class_name) if scorer else [None] * len(candidates)
        for offset, (candidate, score) in enumerate(zip(candidates, scores, strict=True)):
            candidate.params.source_file = lineage["sources"][0]
            candidate.params.init = lineage
            if score is not None:
                candidate.params.realism = Realism(**asdict(score), reference=reference)
            slot = attempt * per_attempt + offset
            low = _write_part(candidate, parts, slot, realism_threshold, capture, seed)
            attempts.append((slot, low))
        outcome = _assign_names(sorted(_gather(state, attempts)), class_name, num, phase_start)
        if progress is not None:
            flagged = f", {outcome.flagged} below the realism threshold" if outcome.flagged else ""
            progress(outcome.kept, num, f"{outcome.kept}/{num} samples kept{flagged}")
        if outcome.kept < num and should_stop is not None and should_stop():
            stopped = True
            break
        if outcome.exhausted_at is None:
            if outcome.kept >= num:
                break
            first_attempt += state.num_processes
            continue
        lower = round(strengths[-1] - GATE_STRENGTH_STEP, 6)
        if strength_floor is None or lower < strength_floor - 1e-6 or int(steps * lower) < 1:
            break
        # Attempts after the one that used up the flags are made again at the lower strength (same inits, same
        # seeds); under torchrun some were already made at the old one. That attempt's candidates after the flag
        # that used them up are dropped, so no sample after it keeps the old strength.
        first_attempt = outcome.exhausted_at // per_attempt + 1
        phase_start = first_attempt * per_attempt
        attempts = [(slot, low) for slot, low in attempts if slot <= outcome.exhausted_at]
        if state.is_main_process:
            logger.warning(
                "The realism gate flagged %d %s candidates at strength %.2f for %d kept; the rest at %.2f.",
                num,
                class_name,
                strengths[-1],
                outcome.kept,
                lower,
            )
        strengths.append(lower)
    _file_parts(parts, out, [slot for slot, _ in attempts], outcome.names)
    state.wait_for_everyone()
    if state.is_main_process:
        shutil.rmtree(parts, ignore_errors=True)
    if outcome.kept < num and not stopped:
        tried = ", ".join(f"{value:.2f}" for value in strengths)
        raise RealismGateError(
            f"{outcome.flagged} candidates fell below the realism threshold {realism_threshold} for "
            f"{outcome.kept} kept (strength {tried}); lower --realism-threshold or --strength-floor, or check the "
            "adapter."
        )
    return [out / f"{class_name}_{i:05d}.png" for i in range(min(outcome.kept, num))]


def _matched_turn_share(class_name: str, images: list[Image.Image], log: bool) -> float:
    """The quarter-turn share matched to the class's known directions, logged."""
    choice = class_turn_share(class_name, images)
    if log:
        logger.info(
            "Quarter turns for %s: %.0f %% of the varied inits (%s).", class_name, 100 * choice.share, choice.reason
        )
    return choice.share


def _tint_spread(class_name: str, images: list[Image.Image], log: bool) -> tuple[float, float]:
    """The init images' white-balance spread, which the samples' tints are drawn with, logged when it is not zero."""
    spread = tint_spread(images)
    if log and any(spread):
        logger.info(
            "Tints for %s: drawn with the spread of its %d images' white balance (log sd R/G %.3f, B/G %.3f).",
            class_name,
            len(images),
            *spread,
        )
    return spread


def _class_exposures(class_name: str, images: list[Image.Image], log: bool) -> list[list[float]]:
    """The exposures half the class's samples are mapped to, logged."""
    choice = class_exposures(class_name, images)
    if log and choice.exposures:
        logger.info("Exposures for %s: %s.", class_name, choice.reason)
    return choice.exposures


def _check_settings(
    num: int,
    strength: float | None,
    per_init: int,
    capture_variation: float,
    strength_floor: float | None,
    init_mix: dict[str, float] | None,
    turn_share: float | None,
) -> None:
    """Raise a readable error for a batch setting out of range."""
    if num < 1:
        raise ValueError("--num must be at least 1.")
    if strength is not None and not 0 < strength <= 1:
        raise ValueError(f"Strength must be in (0, 1], got {strength}.")
    if per_init < 1:
        raise ValueError("Candidates per init must be at least 1.")
    if capture_variation < 0:
        raise ValueError(f"The capture variation must not be negative, got {capture_variation}.")
    if strength_floor is not None and not 0 < strength_floor <= 1:
        raise ValueError(f"The strength floor must be in (0, 1], got {strength_floor}.")
    if init_mix is not None:
        check_init_mix(init_mix)
    if turn_share is not None:
        check_turn_share(turn_share)


def _attempt_init(
    images: list[Image.Image],
    names: list[str],
    attempt: int,
    seed: int,
    vary: bool,
    init_mix: dict[str, float] | None,
    turn_share: float = 0.0,
) -> tuple[Image.Image, dict]:
    """The init image of an attempt and its lineage: a varied init drawn from the attempt's own seed, or the init
    images in turn."""
    if vary:
        init_item = varied_init(images, random.Random(f"{seed}:{attempt}"), init_mix, turn_share=turn_share)
        return init_item.image, init_item.describe(names)
    index = attempt % len(images)
    return images[index], {"kind": "source", "sources": [names[index]]}


def _write_part(
    candidate: Candidate,
    parts: Path,
    slot: int,
    realism_threshold: float | None,
    capture: CaptureModel,
    seed: int,
) -> bool:
    """Mark the candidate against the realism gate, give it its `capture` variation and write it (and its mask) to
    `parts` under its slot number; returns whether the gate flags it."""
    params = candidate.params
    low = params.realism is not None and params.realism.score < realism_threshold
    if params.realism is not None:
        params.realism_threshold, params.pre_rejected = realism_threshold, low
    if capture.amount:
        rng = random.Random(f"{seed}:capture:{slot}")
        candidate.image, details = vary_capture(candidate.image, rng, capture.grain, capture.amount)
        exposure_rng, tint_rng = random.Random(f"{seed}:exposure:{slot}"), random.Random(f"{seed}:tint:{slot}")
        candidate.image, exposed = pool_exposure(candidate.image, exposure_rng, capture.exposures)
        candidate.image, tinted = tint_variation(candidate.image, tint_rng, capture.tint, capture.amount)
        params.capture = {"amount": capture.amount, **details, **exposed, **tinted}
    (parts / f"{slot:08d}.png").write_bytes(candidate.png_bytes())
    if (mask_bytes := candidate.mask_png()) is not None:
        (parts / f"{slot:08d}{MASK_SUFFIX}").write_bytes(mask_bytes)
    return low


def _file_parts(parts: Path, out: Path, slots: list[int], names: dict[int, str]) -> None:
    """Move this process's written slots (and their masks) to their names under `out`; delete the unnamed ones."""
    for slot in slots:
        target = names.get(slot)
        for suffix in (".png", MASK_SUFFIX):
            part = parts / f"{slot:08d}{suffix}"
            if target is not None and part.exists():
                (out / target).parent.mkdir(parents=True, exist_ok=True)
                part.replace((out / target).with_name(Path(target).stem + suffix))
            else:
                part.unlink(missing_ok=True)


@dataclass
class _Assignment:
    """Which candidate slots become which files, once enough are kept or the current strength flagged too many."""

    names: dict[int, str]
    kept: int
    flagged: int
    exhausted_at: int | None  # the slot whose flag made the current strength's `num`th


def _assign_names(slots: list[tuple[int, bool]], class_name: str, num: int, phase_start: int = 0) -> _Assignment:
    """Name the candidates in slot order: kept ones `<class>_00000.png`…, flagged ones `flagged/…`, until `num` are
    kept or `num` are flagged from `phase_start` (the current strength's first slot) on.

    Slot order is the order one process would make them in, so any number of processes writes the same files.
    """
    names: dict[int, str] = {}
    kept = flagged = flagged_in_phase = 0
    for slot, low in slots:
        if low:
            names[slot] = f"{FLAGGED_FOLDER}/{class_name}_flagged_{flagged:05d}.png"
            flagged += 1
            flagged_in_phase += slot >= phase_start
            if flagged_in_phase >= num:
                return _Assignment(names, kept, flagged, exhausted_at=slot)
        else:
            names[slot] = f"{class_name}_{kept:05d}.png"
            kept += 1
            if kept >= num:
                break
    return _Assignment(names, kept, flagged, exhausted_at=None)


def _gather(state: PartialState, attempts: list[tuple[int, bool]]) -> list[tuple[int, bool]]:
    """Every process's (slot, flagged) pairs; the slots of one round are complete on every process."""
    if state.num_processes == 1:
        return list(attempts)
    return [tuple(item) for item in gather_object(attempts)]


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
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_step: StepFn | None = None,
    checkpointing_steps: int | None = None,
    background_loss_weight: float | None = None,
    mixed_precision: str | None = None,
    lora_rank: int | None = None,
    lora_learning_rate: float | None = None,
    caption_dropout: float | None = None,
    max_minutes: float | None = None,
) -> TrainResult:
    """TI + LoRA fine-tune on `<class>/<images>`; the run folder becomes a loadable adapter when complete.

    Images with a defect mask beside them (`<name>_mask.png` or VOC `<name>.xml`) train with the masked loss when
    `background_loss_weight` (or the preset's) is below 1. `lora_rank` sets the LoRA's alpha alike (scale 1); None
    keeps the preset's value of each setting. `max_minutes` ends the run within that wall-clock budget, its
    schedule shortened to fit (`TrainConfig.max_train_seconds`).
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
        mixed_precision=mixed_precision,
        lora_rank=lora_rank,
        lora_alpha=lora_rank,
        lora_learning_rate=lora_learning_rate,
        caption_dropout=caption_dropout,
        max_train_seconds=seconds_of(max_minutes),
    )
    return train(config, images, progress, should_stop, on_step)


def _resolution_of(model_ref: str) -> int:
    """The model's pixel resolution, read from its configs without loading weights."""
    unet_config = UNet2DConditionModel.load_config(model_ref, subfolder="unet")
    vae_config = AutoencoderKL.load_config(model_ref, subfolder="vae")
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    return int(unet_config["sample_size"] * scale)
