"""The studio's yardstick: K real images per class plus its samples vs classic augmentation and more real images.

For each draw (seed) of K real images per class from the pool: fine-tune tokens + LoRA on just those (CPU
preset), generate N samples per class from those same K images with the product's defaults (`generate
--init DIR --num N`: tuned or default strength, varied inits, realism gate, capture variation), then train
the same small CNN from scratch on each arm (`--recognizer-seeds` of them, averaged) and test it on the
validation split: real only, + ours, ours only, + classic augmentation, + classic + ours, and the same with the
realism gate off (the first N candidates by seed, flagged ones included). A work folder's adapters and samples
are reused, so a rerun with other recognizer settings costs only the recognizers. Diversity: mean distance
(steel features) from each sample, from each classic augmentation and from the geometric part of each (its
layout without exposure, blur and noise: compare `--capture-variation 0` samples with it) to the nearest of the
K real images of its class. A K=20 real-only run is the target. The summary gives issue 10's bars as paired gains
per draw (K + ours against K + classic; K + classic + ours against K + classic). Processes may share a work folder
(`--seeds 0 1` beside `--seeds 2 3`): each draw's result stays in its seed folder, and a summary covers every draw there
that ran with the same options. Give each process its share of the cores (`OMP_NUM_THREADS=1` for two on two cores): two
processes of two threads each generated four times slower with the 4x-grid prior. A draw whose batch the realism gate
ends (`RealismGateError`, at the strength floor: the product stops there too) is recorded as stopped, fails the bars,
and the next draw runs; a class whose batch the gate stepped down to a lower strength is listed with its kept samples
per strength. With `--masked-per-class N`, each draw also paints N masked repaints a class on clean slabs (box-free
regions of pool images outside the shots, as an engineer uploads clean steel; `generate --auto-place --reference
<the class's shots>`) and trains K + masked, K + classic + masked and K + ours + masked: what the clean-slab path
adds to a recognizer of whole images.

    python -m bench.fewshot_yardstick --pool /tmp/neu-split/pool --val /tmp/neu-split/val --work /tmp/fewshot \
        --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.adapters import is_adapter, read_adapter
from engine.batch import (
    DEFAULT_CAPTURE_VARIATION,
    DEFAULT_PER_INIT,
    FLAGGED_FOLDER,
    RealismGateError,
    generate_to_folder,
)
from engine.config import DEFAULT_STEPS
from engine.data import MASK_SUFFIX, list_images, load_rgb, read_image_folder
from engine.evaluation.features import SteelFeatureNet, images_to_tensor, load_feature_net
from engine.evaluation.masked_report import clean_slabs
from engine.evaluation.recognition import RECOGNITION_SIZE, classic_augment, per_class_table, recognition
from engine.generation.generate import read_png_parameters
from engine.generation.pipeline import LoadedPipeline, load_pipeline
from engine.generation.variation import check_turn_share, geometric_variant, parse_init_mix
from engine.quiet import quiet_libraries
from storage.files import write_atomically


def draw_shots(pool: Path, k: int, seed: int, out: Path, with_masks: bool = False) -> Path:
    """Link `k` images a class drawn from `pool` into `out/<class>/` (with their `_mask.png` or Pascal VOC `.xml`
    beside them when `with_masks`; the yardstick's user has images only). The same seed draws the same images."""
    rng = random.Random(seed)
    for class_dir in sorted(p for p in pool.iterdir() if p.is_dir()):
        target = out / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for path in rng.sample(list_images(class_dir), k):
            marks = [path.with_name(path.stem + MASK_SUFFIX), path.with_suffix(".xml")]
            for source in [path] + [mark for mark in marks if with_masks and mark.is_file()]:
                link = target / source.name
                if not link.exists():
                    link.symlink_to(source.resolve())
    return out


def mill_draw_parser(description: str | None, seeds: list[int]) -> argparse.ArgumentParser:
    """The command line of a bench that draws K shots a class from a mill (`--mill` with pool/ and val/, masks beside)
    for each of `--seeds` and works under `--work`; each bench adds its own options."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mill", type=Path, required=True, help="A mill with pool/ and val/ and masks beside.")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    return parser


@torch.no_grad()
def embed(net: SteelFeatureNet, images: list[Image.Image]) -> torch.Tensor:
    """Unit-length steel features of the images."""
    return F.normalize(net.features_and_probs(images_to_tensor(images, net.config.input_size))[0], dim=1)


def nearest_shot_distance(features: torch.Tensor, shots: torch.Tensor) -> torch.Tensor:
    """Cosine distance from each of the unit-length `features` to the nearest of the shots' features."""
    return (1 - features @ shots.T).min(dim=1).values


def distance_to_shots(net: SteelFeatureNet, images: list[Image.Image], shots: list[Image.Image]) -> float:
    """Mean cosine distance (steel features) from each image to the nearest of the shots."""
    return float(nearest_shot_distance(embed(net, images), embed(net, shots)).mean())


DIVERSITY_SIDES = ("ours", "classic", "classic_geometric")
"""What `diversity` measures against the shots: our samples, classic augmentations and their geometric part."""
PER_CLASS = "per_class"
"""A draw's diversity key for each side's distance per class (draws recorded before it have none)."""


def diversity(shots_dir: Path, synthetic_dir: Path, per_class: int, seed: int) -> dict:
    """Distance to the nearest real shot, mean over the classes and per class (`PER_CLASS`): of our samples, of as
    many classic augmentations, and of the geometric part of classic augmentation alone (crop, rotation, mirrors:
    its layouts without the exposure, blur and noise), the reference for samples made with `--capture-variation 0`.
    Per class shows where a mean comes from: pixel noise moves a smooth class's features far."""
    net = load_feature_net()
    rng, geometric_rng = random.Random(seed), random.Random(f"{seed}:geometric")
    by_class = {}
    for class_dir in sorted(p for p in shots_dir.iterdir() if p.is_dir()):
        shots = [load_rgb(p) for p in list_images(class_dir)]
        samples = [load_rgb(p) for p in list_images(synthetic_dir / class_dir.name)]
        augmented = [classic_augment(shots[i % len(shots)], rng) for i in range(per_class)]
        variants = [geometric_variant(shots[i % len(shots)], geometric_rng)[0] for i in range(per_class)]
        distances = [distance_to_shots(net, images, shots) for images in (samples, augmented, variants)]
        by_class[class_dir.name] = dict(zip(DIVERSITY_SIDES, distances, strict=True))
    spread: dict = {
        side: round(float(np.mean([values[side] for values in by_class.values()])), 4) for side in DIVERSITY_SIDES
    }
    spread[PER_CLASS] = {
        side: {name: round(values[side], 4) for name, values in by_class.items()} for side in DIVERSITY_SIDES
    }
    return spread


def ungated_tree(synthetic: Path, out: Path, per_class: int) -> Path | None:
    """The samples the realism gate would have kept had it been off: per class, the first `per_class` candidates
    by seed among the kept and the flagged ones (links). None when the gate flagged nothing."""
    flagged_any = False
    for class_dir in sorted(p for p in synthetic.iterdir() if p.is_dir()):
        flagged = list_images(class_dir / FLAGGED_FOLDER) if (class_dir / FLAGGED_FOLDER).is_dir() else []
        flagged_any = flagged_any or bool(flagged)
        candidates = sorted(list_images(class_dir) + flagged, key=lambda p: read_png_parameters(p.read_bytes()).seed)
        target = out / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for path in candidates[:per_class]:
            link = target / f"{path.parent.name}-{path.name}"
            if not link.exists():
                link.symlink_to(path.resolve())
    return out if flagged_any else None


def stepped_down(synthetic: Path) -> dict[str, dict[str, int]]:
    """The classes whose kept samples were made at more than one strength (the realism gate stepped the batch
    down), each with its kept samples per strength, highest first."""
    stepped = {}
    for class_dir in sorted(p for p in synthetic.iterdir() if p.is_dir()):
        counts = Counter(f"{read_png_parameters(p.read_bytes()).strength:.2f}" for p in list_images(class_dir))
        if len(counts) > 1:
            stepped[class_dir.name] = dict(sorted(counts.items(), reverse=True))
    return stepped


def stepped_line(seed: str | int, stepped: dict[str, dict[str, int]]) -> str:
    """How a draw's step-downs are reported: each class with its kept samples per strength."""
    classes = "; ".join(
        f"{name} " + ", ".join(f"{count} at {strength}" for strength, count in counts.items())
        for name, counts in stepped.items()
    )
    return f"seed {seed}: the realism gate stepped down {classes}"


DEFAULT_FINETUNE_STEPS = 300
"""The draws' fine-tune steps (in place of the preset's own), unless `--finetune-steps` says otherwise."""
DRAW_RESULT = "result.json"
STOPPED = "stopped"
"""A draw's result key when the product's defaults could not make its samples: the class and the gate's message."""
GATE_OFF_ARMS = ["real+synthetic", "synthetic", "real+classic+synth"]
"""The arms trained again on the samples the gate would have kept: those with samples (the others are unchanged)."""
PAIRED_GAINS = {
    "ours - classic": ("real+synthetic", "real+classic", 0.0),
    "classic+ours - classic": ("real+classic+synth", "real+classic", 0.03),
}
"""Issue 10's bars as paired differences between two arms of the same draw: (arm, baseline, the bar)."""
MASKED_ARMS = {"real+synthetic": "real+masked", "real+classic+synth": "real+classic+masked"}
"""The arms trained again with the masked repaints as the samples, and their names in a draw's result."""
MIXED_ARM = "real+synthetic+masked"
"""K real, the samples and the masked repaints: the two kinds of a class's batch together."""
MASKED_GAINS = {
    "masked - real": ("real+masked", "real"),
    "classic+masked - classic": ("real+classic+masked", "real+classic"),
    "ours+masked - ours": (MIXED_ARM, "real+synthetic"),
}
"""What the masked repaints add, as paired differences (no bar: issue 10's bars are the batch's)."""
SLABS_PER_DRAW = 60
"""Clean slabs a draw's masked repaints are painted on (box-free regions of pool images outside the shots)."""
RECALL = "recall"
"""A draw's result key for each arm's recall per class (summed over its recognizer seeds)."""
MASKED_ENDED = "masked_ended"
"""A draw's result key for the classes whose masked repaints the realism gate ended: its message."""
STEPPED = "stepped_down"
"""A draw's result key for the classes whose batch the realism gate stepped down: kept samples per strength."""


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically, so a second yardstick process never reads half a file."""
    write_atomically(path, json.dumps(data, indent=2).encode())


def draws_with_options(work: Path, options: dict) -> dict[str, dict]:
    """Every draw's result in a work folder that was run with these options, by seed: the draws of all the
    processes that shared the folder (for example `--seeds 0 1` and `--seeds 2 3` side by side)."""
    wanted = json.loads(json.dumps(options))
    draws = {}
    for path in sorted(work.glob(f"seed*/{DRAW_RESULT}"), key=lambda p: int(p.parent.name.removeprefix("seed"))):
        saved = json.loads(path.read_text())
        if saved["options"] == wanted:
            draws[path.parent.name.removeprefix("seed")] = saved["result"]
    return draws


def mean_and_std(values: list[float]) -> dict[str, float]:
    """Mean and standard deviation (over draws, ddof 0), rounded to 4 places."""
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}


def stopped_line(seed: str | int, why: dict) -> str:
    """How a stopped draw is reported: its seed, the class the gate stopped at and the gate's message."""
    return f"seed {seed}: stopped at {why['class']}: {why['reason']}"


def summarize(draws: dict[str, dict]) -> tuple[dict, list[str]]:
    """Mean ± std over draws of every arm and distance, and the paired gains the bars name (per draw, since the
    draws differ far more from each other than the arms of one draw do). A draw the realism gate stopped has no
    arms: it is listed, and a bar is not met while any draw stopped. Returns the summary and its lines."""
    stopped = {seed: draw[STOPPED] for seed, draw in draws.items() if STOPPED in draw}
    draws = {seed: draw for seed, draw in draws.items() if STOPPED not in draw}
    summary: dict = {STOPPED: stopped} if stopped else {}
    lines = [f"  {stopped_line(seed, why)}" for seed, why in stopped.items()]
    if not draws:
        return summary, lines
    not_arms = ("diversity", RECALL, STEPPED, MASKED_ENDED)
    arms = list(dict.fromkeys(name for draw in draws.values() for name in draw if name not in not_arms))
    width = max(len(name) for name in [*arms, *PAIRED_GAINS, *MASKED_GAINS]) + 2
    for name in arms:
        values = [draw[name] for draw in draws.values() if name in draw]
        summary[name] = mean_and_std(values)
        partial = f" ({len(values)} of {len(draws)} draws)" if len(values) < len(draws) else ""
        lines.append(f"  {name:<{width}}{summary[name]['mean']:.3f} ± {summary[name]['std']:.3f}{partial}")
    for side in DIVERSITY_SIDES:
        summary[f"diversity_{side}"] = spread = mean_and_std([draw["diversity"][side] for draw in draws.values()])
        lines.append(f"  distance to nearest shot, {side:<18}{spread['mean']:.4f} ± {spread['std']:.4f}")
    diversity_summary, diversity_lines = summarize_diversity_per_class(draws)
    if diversity_summary:
        summary[f"diversity_{PER_CLASS}"] = diversity_summary
        lines += diversity_lines
    for name, (arm, baseline, bar) in PAIRED_GAINS.items():
        gains = [draw[arm] - draw[baseline] for draw in draws.values()]
        summary[name] = gain = mean_and_std(gains)
        verdict = "met" if gain["mean"] >= bar and not stopped else "not met"
        if stopped:
            verdict += f" ({len(stopped)} draw{'s' if len(stopped) > 1 else ''} stopped)"
        per_draw = ", ".join(f"{100 * g:+.1f}" for g in gains)
        lines.append(
            f"  {name:<{width}}{100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f} points (per draw {per_draw});"
            f" bar ≥ {100 * bar:+.0f}: {verdict}"
        )
    for name, (arm, baseline) in MASKED_GAINS.items():
        if all(arm in draw for draw in draws.values()):
            gains = [draw[arm] - draw[baseline] for draw in draws.values()]
            summary[name] = gain = mean_and_std(gains)
            per_draw = ", ".join(f"{100 * g:+.1f}" for g in gains)
            mean, std = 100 * gain["mean"], 100 * gain["std"]
            lines.append(f"  {name:<{width}}{mean:+.1f} ± {std:.1f} points (per draw {per_draw})")
    lines += [f"  {stepped_line(seed, draw[STEPPED])}" for seed, draw in draws.items() if draw.get(STEPPED)]
    recall_summary, recall_lines = summarize_recall(draws)
    if recall_summary:
        summary[RECALL] = recall_summary
        lines += recall_lines
    return summary, lines


def summarize_diversity_per_class(draws: dict[str, dict]) -> tuple[dict, list[str]]:
    """Each side's distance to the nearest shot per class, mean over the draws that recorded it."""
    recorded = [draw["diversity"][PER_CLASS] for draw in draws.values() if PER_CLASS in draw["diversity"]]
    if not recorded:
        return {}, []
    classes = list(recorded[0]["ours"])
    summary = {
        side: {c: round(float(np.mean([draw[side][c] for draw in recorded])), 4) for c in classes}
        for side in DIVERSITY_SIDES
    }
    table = per_class_table([(side, summary[side], ".4f") for side in DIVERSITY_SIDES], classes, 20)
    heading = f"  distance to nearest shot per class ({len(recorded)} of {len(draws)} draws):"
    return summary, [heading, *(f"  {line}" for line in table)]


def summarize_recall(draws: dict[str, dict]) -> tuple[dict, list[str]]:
    """Each arm's recall per class, mean over the draws that recorded it (older draws did not), and the bars' paired
    differences per class: which classes the samples help and which they confuse."""
    recorded = [draw[RECALL] for draw in draws.values() if RECALL in draw]
    if not recorded:
        return {}, []
    classes = list(next(iter(recorded[0].values())))
    arms = [name for name in recorded[0] if all(name in draw for draw in recorded)]
    summary = {
        name: {c: round(float(np.mean([draw[name][c] for draw in recorded])), 4) for c in classes} for name in arms
    }
    rows = [(name, summary[name], ".3f") for name in arms]
    for name, (arm, baseline, _) in PAIRED_GAINS.items():
        if arm in summary and baseline in summary:
            summary[name] = {c: round(summary[arm][c] - summary[baseline][c], 4) for c in classes}
            rows.append((name, {c: 100 * summary[name][c] for c in classes}, "+.1f"))
    width = max(len(name) for name in [*arms, *PAIRED_GAINS]) + 2
    table = per_class_table(rows, classes, width)
    return summary, [f"  recall per class ({len(recorded)} of {len(draws)} draws):", *(f"  {line}" for line in table)]


def generate_samples(
    pipe: LoadedPipeline, shots: Path, synthetic: Path, per_class: int, steps: int, seed: int, options: dict
) -> dict | None:
    """Each class's samples from its shots, as `generate --init <shots> --num N` makes them (a class already
    complete is kept; a class in `options["quarter_turns"]` gets its `--quarter-turns` share, the others the
    default's matched one). Returns the draw's
    stopped result when the realism gate ends a class's batch, else None."""
    turn_shares = options.get("quarter_turns", {})
    options = {name: value for name, value in options.items() if name != "quarter_turns"}
    for class_dir in sorted(p for p in shots.iterdir() if p.is_dir()):
        if (synthetic / class_dir.name).exists() and len(list_images(synthetic / class_dir.name)) >= per_class:
            continue
        try:
            generate_to_folder(
                None,
                None,
                class_dir.name,
                class_dir,
                per_class,
                synthetic / class_dir.name,
                steps=steps,
                seed=seed * 1000,
                pipe=pipe,
                turn_share=turn_shares.get(class_dir.name),
                **options,
            )
        except RealismGateError as error:
            return {STOPPED: {"class": class_dir.name, "reason": str(error)}}
    return None


def draw_slabs(pool: Path, shots: Path, out: Path, seed: int, count: int = SLABS_PER_DRAW) -> Path:
    """Write `count` clean slabs for a draw into `out`: the box-free regions (`masked_report.clean_slabs`) of pool
    images with boxes or masks beside them, the draw's shots left out, in an order the seed draws. What an
    engineer uploads as clean steel, which a mill has plenty of; raises when the pool marks no defects."""
    if out.is_dir() and len(list_images(out)) >= count:
        return out
    shot_names = {(p.parent.name, p.name) for p in shots.glob("*/*")}
    items = [
        item
        for item in read_image_folder(pool, with_boxes=True)
        if item.boxes and (item.class_name, item.path.name) not in shot_names
    ]
    random.Random(f"{seed}:slabs").shuffle(items)
    items = [replace(item, index=position) for position, item in enumerate(items)]
    slabs = clean_slabs(items)[:count]
    if not slabs:
        raise ValueError(f"No clean steel in {pool}: masked repaints need pool images with boxes or masks beside them.")
    out.mkdir(parents=True, exist_ok=True)
    for index, slab in enumerate(slabs):
        slab.save(out / f"slab_{index:03d}.png")
    return out


def generate_masked(
    pipe: LoadedPipeline,
    shots: Path,
    slabs: Path,
    masked: Path,
    per_class: int,
    steps: int,
    seed: int,
    marked_shots: Path | None = None,
) -> dict[str, str]:
    """Each class's masked repaints as `generate --init SLABS --auto-place --reference <the class's shots> --num N`
    makes them (the product's defaults otherwise); with `marked_shots` (the shots with their boxes beside them), as
    `… --exemplars <the class's marked shots>`: the shots' real defects pasted at the auto-placed places. A batch the
    realism gate ends keeps what it made; returns the gate's message per class where it did. A class already
    complete, or already ended by the gate (N flagged), is kept as it is."""
    ended = {}
    for class_dir in sorted(p for p in shots.iterdir() if p.is_dir()):
        out = masked / class_dir.name
        kept = len(list_images(out)) if out.is_dir() else 0
        flagged = len(list_images(out / FLAGGED_FOLDER)) if (out / FLAGGED_FOLDER).is_dir() else 0
        if kept >= per_class:
            continue
        if flagged >= per_class:
            ended[class_dir.name] = f"ended by the realism gate in an earlier run: {kept} kept, {flagged} flagged"
            continue
        try:
            generate_to_folder(
                None,
                None,
                class_dir.name,
                slabs,
                per_class,
                out,
                steps=steps,
                seed=seed * 1000 + 500,
                pipe=pipe,
                auto_place=True,
                realism_reference=class_dir,
                exemplars=marked_shots / class_dir.name if marked_shots else None,
            )
        except RealismGateError as error:
            ended[class_dir.name] = str(error)
    return ended


def linked_union(trees: list[Path], out: Path) -> Path:
    """One `<class>/<images>` tree of links to the images of several (each tree's folder name in each link's)."""
    for tree in trees:
        for class_dir in sorted(p for p in tree.iterdir() if p.is_dir()):
            (out / class_dir.name).mkdir(parents=True, exist_ok=True)
            for path in list_images(class_dir):
                link = out / class_dir.name / f"{tree.name}-{path.name}"
                if not link.exists():
                    link.symlink_to(path.resolve())
    return out


def masked_arms(args: argparse.Namespace, pipe: LoadedPipeline, seed: int, recognize: partial) -> dict:
    """The draw's masked repaints (`--masked-per-class` a class on clean slabs) and the arms trained with them:
    K + masked, K + classic + masked, K + ours + masked; with their recall per class and the classes whose batch
    the gate ended."""
    draw = args.work / f"seed{seed}"
    slabs = draw_slabs(args.pool, draw / "shots", draw / "slabs", seed)
    masked = draw / "masked"
    marked = draw_shots(args.pool, args.k, seed, draw / "marked-shots", with_masks=True) if args.paste_shots else None
    ended = generate_masked(pipe, draw / "shots", slabs, masked, args.masked_per_class, args.steps, seed, marked)
    report = recognize(masked, arms=list(MASKED_ARMS))
    mixed = recognize(linked_union([draw / "synthetic", masked], draw / "mixed"), arms=["real+synthetic"])
    record = {MASKED_ARMS[arm.name]: arm.mean for arm in report.arms} | {MIXED_ARM: mixed.arms[0].mean}
    recall = {MASKED_ARMS[arm.name]: arm.recall(report.classes) for arm in report.arms}
    recall[MIXED_ARM] = mixed.arms[0].recall(mixed.classes)
    return {"arms": record, RECALL: recall, "ended": ended}


def class_shares(text: str) -> dict[str, float]:
    """Parse "scratches=0.5,other class=0.3" into {class: share}."""
    shares = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, share = item.rpartition("=")
        if not name.strip():
            raise argparse.ArgumentTypeError(f"Expected CLASS=SHARE, got {item!r}.")
        try:
            shares[name.strip()] = check_turn_share(float(share))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return shares


def build_parser() -> argparse.ArgumentParser:
    """The yardstick's command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--finetune-steps", type=int, default=DEFAULT_FINETUNE_STEPS)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Sampler steps per sample.")
    parser.add_argument(
        "--recognizer-seeds",
        type=int,
        default=3,
        help="Recognizers trained per arm and draw (each its own seed and classic augmentations); a draw reports "
        "their mean, so the recognizer's own noise does not hide a difference between arms.",
    )
    parser.add_argument(
        "--recognizer-size",
        type=int,
        default=RECOGNITION_SIZE,
        help="Side in pixels the recognizers see (default the protocol's 64; a native-resolution recognizer, for "
        "example 128 or 200, also sees the steel's pixel-scale grain).",
    )
    parser.add_argument("--skip-target", action="store_true", help="Skip the K=20 real-only target.")
    parser.add_argument(
        "--skip-gate-off", action="store_true", help="Skip the arms trained on the first candidates, gate off."
    )
    parser.add_argument(
        "--masked-per-class",
        type=int,
        default=0,
        help="Also make this many masked repaints a class (`generate --auto-place` on clean slabs cut from pool images"
        " outside the shots, the class's shots as the realism reference) and train K + masked, K + classic + masked"
        " and K + ours + masked: what the clean-slab path adds to a recognizer (default 0: not run).",
    )
    parser.add_argument(
        "--paste-shots",
        action="store_true",
        help="Masked repaints start from the shots' real defects pasted at the auto-placed places (`generate"
        " --exemplars`, the shots' boxes from the pool's masks or .xml beside them), as an engineer who boxed them.",
    )
    ablation = parser.add_argument_group("ablations (default: the product's defaults)")
    ablation.add_argument("--strength", type=float, default=None)
    ablation.add_argument("--no-vary", dest="vary", action="store_false")
    ablation.add_argument("--realism-threshold", type=float, default=None)
    ablation.add_argument("--no-realism-gate", action="store_true")
    ablation.add_argument(
        "--strength-floor",
        type=float,
        default=None,
        help="Lowest strength the realism gate steps down to (default the product's 0.4; the strength itself stops"
        " the batch where the gate first flags --per-class candidates).",
    )
    ablation.add_argument("--detail-restore", type=float, default=None)
    ablation.add_argument("--per-init", type=int, default=DEFAULT_PER_INIT, help="Candidates per varied init.")
    ablation.add_argument("--guidance", type=float, default=None, help="Classifier-free guidance scale.")
    ablation.add_argument("--capture-variation", type=float, default=DEFAULT_CAPTURE_VARIATION)
    ablation.add_argument(
        "--init-mix", type=parse_init_mix, default=None, help="Shares of the varied inits' kinds (source=0.1,…)."
    )
    ablation.add_argument(
        "--quarter-turns",
        type=class_shares,
        default={},
        help="Classes whose varied inits are turned a quarter, with the share: `scratches=0.5` is `generate"
        " --quarter-turns 0.5` for scratches, `scratches=0` turns none (default: `generate`'s, matched to the"
        " class's directions in the training pool, or half for a new class whose shots run both ways).",
    )
    ablation.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="Generate every draw with this adapter instead of one fine-tuned on the draw's shots (for example the "
        "shipped tokens, trained on the whole pool: does class knowledge beyond the shots reach the samples?).",
    )
    ablation.add_argument("--finetune-preset", default=None, help="The draws' fine-tune preset (default cpu-quick).")
    ablation.add_argument("--lora-rank", type=int, default=None, help="The draws' fine-tune LoRA rank.")
    ablation.add_argument("--lora-learning-rate", type=float, default=None, help="The draws' fine-tune LoRA lr.")
    ablation.add_argument("--caption-dropout", type=float, default=None, help="The draws' fine-tune caption dropout.")
    return parser


FINETUNE_OPTIONS = ("finetune_preset", "lora_rank", "lora_learning_rate", "caption_dropout")
"""Fine-tune settings a run may change; recorded with a draw's options only when set (the steps when not the
default)."""


def generation_options(args: argparse.Namespace) -> dict:
    """The options every class's `generate_to_folder` gets (the realism threshold and strength floor only when the
    run sets them)."""
    options: dict = {
        "vary": args.vary,
        "detail_restore": args.detail_restore,
        "strength": args.strength,
        "guidance": args.guidance,
        "per_init": args.per_init,
        "capture_variation": args.capture_variation,
        "init_mix": args.init_mix,
    }
    if args.no_realism_gate:
        options["realism_threshold"] = None
    elif args.realism_threshold is not None:
        options["realism_threshold"] = args.realism_threshold
    if args.strength_floor is not None:
        options["strength_floor"] = args.strength_floor
    if args.quarter_turns:
        options["quarter_turns"] = args.quarter_turns
    return options


def recorded_options(args: argparse.Namespace) -> dict:
    """What a draw's result is stored and summarised under: the generation options, and the adapter, fine-tune,
    recognizer and sampler settings only where they depart from the product's (so results of runs before those options
    existed match)."""
    options = generation_options(args)
    if args.adapter is not None:
        options["adapter"] = str(args.adapter.resolve())
    for name in FINETUNE_OPTIONS:
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.finetune_steps != DEFAULT_FINETUNE_STEPS:
        options["finetune_steps"] = args.finetune_steps
    if args.recognizer_size != RECOGNITION_SIZE:
        options["recognizer_size"] = args.recognizer_size
    if args.steps != DEFAULT_STEPS:
        options["sampler_steps"] = args.steps
    if args.masked_per_class:
        options["masked_per_class"] = args.masked_per_class
    if args.paste_shots:
        options["paste_shots"] = True
    return options


def draw_adapter(args: argparse.Namespace, seed: int, shots: Path) -> Path:
    """The adapter a draw generates with: `--adapter`, else tokens + LoRA fine-tuned on the draw's shots (a complete
    fine-tune in the work folder is reused, an interrupted one resumed)."""
    if args.adapter is not None:
        read_adapter(args.adapter)
        return args.adapter
    from engine.batch import finetune_folder

    adapter = args.work / f"seed{seed}" / "adapter"
    if not is_adapter(adapter):
        finetune_folder(
            shots,
            adapter,
            model=args.model,
            preset=args.finetune_preset or "cpu-quick",
            steps=args.finetune_steps,
            seed=seed,
            resume=adapter.exists(),
            lora_rank=args.lora_rank,
            lora_learning_rate=args.lora_learning_rate,
            caption_dropout=args.caption_dropout,
        )
    return adapter


def main() -> None:
    args = build_parser().parse_args()
    quiet_libraries()
    generation = generation_options(args)
    results: dict = {
        "options": {
            **recorded_options(args),
            "k": args.k,
            "per_class": args.per_class,
            "recognizer_seeds": args.recognizer_seeds,
        },
        "seeds": {},
    }
    started = time.time()
    if not args.skip_target:
        target = recognition(args.pool, args.val, k=20, seeds=len(args.seeds))
        results["k20_real"] = {"mean": target.arms[0].mean, "std": target.arms[0].std}
        print(f"K=20 real only: {target.arms[0].mean:.3f} ± {target.arms[0].std:.3f}", flush=True)
    for seed in args.seeds:
        shots = draw_shots(args.pool, args.k, seed, args.work / f"seed{seed}" / "shots")
        pipe = load_pipeline(args.model, draw_adapter(args, seed, shots))
        synthetic = args.work / f"seed{seed}" / "synthetic"
        stopped = generate_samples(pipe, shots, synthetic, args.per_class, args.steps, seed, generation)
        if stopped is not None:
            write_json(args.work / f"seed{seed}" / DRAW_RESULT, {"options": results["options"], "result": stopped})
            print(stopped_line(seed, stopped[STOPPED]), flush=True)
            continue
        recognize = partial(
            recognition,
            shots,
            args.val,
            k=args.k,
            seeds=args.recognizer_seeds,
            classic_augment_per_class=args.per_class,
            image_size=args.recognizer_size,
        )
        report = recognize(synthetic)
        spread = diversity(shots, synthetic, args.per_class, seed)
        record = {arm.name: arm.mean for arm in report.arms} | {"diversity": spread}
        record[RECALL] = {arm.name: arm.recall(report.classes) for arm in report.arms}
        if stepped := stepped_down(synthetic):
            record[STEPPED] = stepped
            print(stepped_line(seed, stepped), flush=True)
        ungated = (
            None
            if args.skip_gate_off
            else ungated_tree(synthetic, args.work / f"seed{seed}" / "ungated", args.per_class)
        )
        if args.masked_per_class:
            masked = masked_arms(args, pipe, seed, recognize)
            record |= masked["arms"]
            record[RECALL] |= masked[RECALL]
            if masked["ended"]:
                record[MASKED_ENDED] = masked["ended"]
                print(f"seed {seed}: the realism gate ended the masked repaints of {', '.join(masked['ended'])}")
        if ungated is not None:
            gate_off = recognize(ungated, arms=GATE_OFF_ARMS)
            for arm in gate_off.arms:
                record[f"{arm.name} (gate off)"] = arm.mean
        write_json(args.work / f"seed{seed}" / DRAW_RESULT, {"options": results["options"], "result": record})
        print(f"seed {seed}: " + ", ".join(f"{a.name} {a.mean:.3f}" for a in report.arms), flush=True)
        print(
            f"seed {seed}: distance to nearest shot, ours {spread['ours']:.4f}, classic {spread['classic']:.4f},"
            f" classic geometric part {spread['classic_geometric']:.4f}"
        )
    results["seeds"] = draws_with_options(args.work, results["options"])
    summary, lines = summarize(results["seeds"])
    print(f"\nK={args.k}, {len(results['seeds'])} draws (seeds {' '.join(results['seeds'])}; mean ± std over draws):")
    print("\n".join(lines))
    results["summary"] = summary
    results["wall_s"] = round(time.time() - started, 1)
    write_json(args.work / "yardstick.json", results)
    print(f"results -> {args.work / 'yardstick.json'} ({results['wall_s']} s)")


if __name__ == "__main__":
    main()
