"""The colour a masked repaint paints its defect in, on a mill whose defects have colours of their own.

A QA engineer paints a defect onto a clean slab (an auto-placed mask at the class's masked strength). The slab's
colours are carried onto the render; a defect whose colour is its own (rust, a temper colour) takes the colour its
adapter learnt against the steel at fine-tuning (`defect_tint` in `tokens.json`, from its images' masks). For each
draw: K shots a class with their masks beside them, a fine-tune (the studio's CPU preset), then `--per-class`
auto-placed repaints per class on clean slabs (the box-free regions of the validation images, every class's in
turn), each measured with `variation.defect_tint` against its own mask, with the learnt colour and with it removed
(same seeds: the colour of the slab, as before the adapter kept one). Real: the validation images' defects against
their steel, measured alike. Prints per class the real, learnt and painted colours (log R/G, log B/G) and the
distance of each painted colour from the real one; then where the colour lies, `variation.defect_colour_structure`
of the real defects, learnt, of the painted ones, and of the same repaints with the learnt colour laid evenly over
the mask (as before the adapter learnt where it lies): 0 the mask's colour is even, 1 it lies on what departs from
the steel.

    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/rust-mill --defect-colours
    python -m bench.defect_colour --mill /tmp/rust-mill --work /tmp/defect-colour --seeds 0 1 2
    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/pit-mill --defect-colours structure
    python -m bench.defect_colour --mill /tmp/pit-mill --work /tmp/defect-structure --seeds 0 1 2

With `--estimated-masks` the shots come without their masks, as a user's captures do: the fine-tune learns the
colour from masks it estimates from the images (`masks.estimate_defect_mask`), and "before" is what such a class
painted until it did (the slab's colour).

    python -m bench.defect_colour --mill /tmp/rust-mill --work /tmp/defect-colour-estimated --seeds 0 1 2 \
        --estimated-masks
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from bench.fewshot_yardstick import draw_shots, mill_draw_parser
from engine.adapters import is_adapter
from engine.batch import default_strength, finetune_folder
from engine.boxes import from_mask
from engine.config import DEFAULT_STEPS, GenerationConfig
from engine.data import LabelledImage, list_images, load_rgb, read_mask_beside
from engine.evaluation.masked_report import MIN_CLEAN_SIDE, clean_slabs
from engine.generation.generate import generate
from engine.generation.pipeline import LoadedPipeline, load_pipeline
from engine.generation.variation import defect_colour_structure, defect_tint
from engine.quiet import quiet_libraries
from storage.files import write_atomically


def masked_pixels(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An image's RGB pixels and its defect mask beside it (None without one)."""
    pixels = np.asarray(load_rgb(path))
    mask = read_mask_beside(path, pixels.shape[0]) if pixels.shape[0] == pixels.shape[1] else None
    return pixels, mask


def real_colours(val: Path) -> dict[str, dict]:
    """Each class's defect colour against its steel over its validation images, and where in the masks it lies."""
    colours = {}
    for folder in sorted(p for p in val.iterdir() if p.is_dir()):
        pairs = [masked_pixels(path) for path in list_images(folder)]
        colours[folder.name] = {"colour": defect_tint(pairs), "structure": defect_colour_structure(pairs)}
    return colours


def clean_slabs_of(val: Path, count: int) -> list[Image.Image]:
    """Up to `count` box-free regions of the validation images (their masks' components as boxes), every class's in
    turn (`masked_report.clean_slabs`)."""
    items = []
    for folder in sorted(p for p in val.iterdir() if p.is_dir()):
        for index, path in enumerate(list_images(folder)):
            if (mask := masked_pixels(path)[1]) is not None:
                items.append(LabelledImage(path, folder.name, from_mask(mask), index))
    return clean_slabs(items, MIN_CLEAN_SIDE)[:count]


def painted_colours(pipe: LoadedPipeline, class_name: str, slabs: list[Image.Image], seed: int) -> dict:
    """One auto-placed repaint per slab: each one's defect colour against the slab (None where the mask is too
    small) and where in their masks the colour lies, over all of them."""
    strength = default_strength(pipe, class_name, masked=True)
    pairs = []
    for number, slab in enumerate(slabs):
        config = GenerationConfig(class_name, 1, strength, DEFAULT_STEPS, seed=seed + number, auto_place=True)
        candidate = generate(pipe, slab, config).candidates[0]
        pairs.append((np.asarray(candidate.image.convert("RGB")), candidate.mask))
    return {"colours": [defect_tint([pair]) for pair in pairs], "structure": defect_colour_structure(pairs)}


def draw(
    mill: Path,
    work: Path,
    seed: int,
    k: int,
    per_class: int,
    model: str | None,
    finetune_steps: int | None = None,
    estimated_masks: bool = False,
) -> dict:
    """One draw: shots with masks (without them: `estimated_masks`), their fine-tune, and each class painted in its
    learnt colour where it learnt it lies, in it laid evenly, and without it."""
    folder = work / f"seed{seed}"
    shots = draw_shots(mill / "pool", k, seed, folder / "shots", with_masks=not estimated_masks)
    adapter = folder / "adapter"
    if not is_adapter(adapter):
        finetune_folder(shots, adapter, model=model, steps=finetune_steps, seed=seed, resume=adapter.exists())
    pipe = load_pipeline(model, adapter)
    slabs = clean_slabs_of(mill / "val", per_class)
    result = {}
    for class_name, token in pipe.adapter.tokens.items():
        learnt, structure = token.defect_tint, token.defect_structure
        painted = painted_colours(pipe, class_name, slabs, seed)
        token.defect_structure = None
        even = painted_colours(pipe, class_name, slabs, seed)
        token.defect_tint = None
        slab_coloured = painted_colours(pipe, class_name, slabs, seed)
        token.defect_tint, token.defect_structure = learnt, structure
        result[class_name] = {
            "learnt": learnt,
            "learnt_structure": structure,
            "painted": painted["colours"],
            "painted_structure": painted["structure"],
            "even_structure": even["structure"],
            "slab_coloured": slab_coloured["colours"],
        }
    return result


def mean_colour(colours: list) -> list[float] | None:
    measured = [c for c in colours if c is not None]
    return [round(float(v), 3) for v in np.mean(measured, axis=0)] if measured else None


def mean_structure(values: list) -> str:
    measured = [v for v in values if v is not None]
    return f"{np.mean(measured):.2f}" if measured else "–"


def shown(colour: list[float] | None) -> str:
    """A colour (log R/G, log B/G) as a table cell."""
    return "–" if colour is None else f"{colour[0]:+.3f} / {colour[1]:+.3f}"


def table(real: dict, draws: dict[int, dict]) -> list[str]:
    """Per class: real, learnt (mean over draws) and painted colours, and each painted colour's distance from real;
    then where the colour lies in the masks: real, learnt, painted, and painted evenly (means over the draws)."""
    lines = [
        "| class | real | learnt | painted | slab's colour (before) | painted − real | before − real |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    for class_name, measured in real.items():
        reference = measured["colour"]
        rows = [d[class_name] for d in draws.values() if class_name in d]
        learnt = mean_colour([r["learnt"] for r in rows])
        painted = mean_colour([c for r in rows for c in r["painted"]])
        before = mean_colour([c for r in rows for c in r["slab_coloured"]])
        gaps = [
            f"{np.hypot(*np.subtract(c, reference)):.3f}" if c is not None and reference is not None else "–"
            for c in (painted, before)
        ]
        lines.append(
            f"| {class_name} | {shown(reference)} | {shown(learnt)} | {shown(painted)} | {shown(before)} | "
            f"{gaps[0]} | {gaps[1]} |"
        )
    lines += [
        "",
        "| class | where the colour lies: real | learnt | painted | painted evenly (before) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for class_name, measured in real.items():
        rows = [d[class_name] for d in draws.values() if class_name in d]
        cells = [mean_structure([measured["structure"]])]
        cells += [
            mean_structure([r[key] for r in rows])
            for key in ("learnt_structure", "painted_structure", "even_structure")
        ]
        lines.append(f"| {class_name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = mill_draw_parser(__doc__, seeds=[0, 1, 2])
    parser.add_argument("--model", default=None, help="Base model (default: the embedded prior).")
    parser.add_argument("--per-class", type=int, default=6, help="Repaints per class and draw.")
    parser.add_argument("--finetune-steps", type=int, default=None, help="Default: the CPU preset's.")
    parser.add_argument(
        "--estimated-masks", action="store_true", help="Shots without their masks: the fine-tune estimates them."
    )
    args = parser.parse_args()
    quiet_libraries()
    real = real_colours(args.mill / "val")
    draws = {}
    for seed in args.seeds:
        draws[seed] = draw(
            args.mill, args.work, seed, args.k, args.per_class, args.model, args.finetune_steps, args.estimated_masks
        )
        write_atomically(args.work / f"seed{seed}" / "colours.json", json.dumps(draws[seed], indent=2).encode())
    print("\n".join(table(real, draws)))


if __name__ == "__main__":
    main()
