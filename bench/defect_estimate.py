"""How well a capture's defect is found without its mask (`masks.estimate_defect_mask`), against a mill's own masks.

A class fine-tuned on images without masks learns its defects' colour from estimated masks. For each class of a
folder of images with their masks beside them (`<name>_mask.png`, or NEU-DET's Pascal VOC boxes): the share of the
image marked, the share boxed, precision (the marked pixels inside a defect's mask) and recall (a mask's pixels
marked); then the class's defect colour against its steel (`variation.defect_tint`, log R/G and log B/G) from its
masks and from the estimates, over all its images and over draws of `--k` images (as a fine-tune of K shots reads
it): the mean estimate and its distance from the masks' colour; and the boxes the Upload tab suggests
(`masks.suggested_boxes`) against the masks' own (one per component), matched at an IoU of at least 0.3.

    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/rust-mill --defect-colours
    python -m bench.defect_estimate --images /tmp/rust-mill/pool
    python -m bench.defect_estimate --images /tmp/neu-split/pool
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.defect_colour import shown
from engine.box_suggestions import (
    METHOD_LEARNT,
    BoxedImage,
    ClassSuggester,
    cell_map,
    class_suggester,
    fit_cell_classifier,
)
from engine.boxes import from_mask, match_counts
from engine.data import list_images, load_rgb, mask_at, read_mask_image_beside
from engine.evaluation.features import SteelFeatureNet, load_feature_net
from engine.generation.variation import defect_tint
from engine.masks import estimate_defect_mask, suggested_boxes


def class_pairs(folder: Path, limit: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pixels, mask, estimate) of up to `limit` images of a class folder that have a mask beside them."""
    return marked_images(list_images(folder)[:limit])


def marked_images(paths: list[Path]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pixels, mask, estimated defect mask) of each image with a mask or boxes beside it; the others left out."""
    triples = []
    for path in paths:
        mask_image = read_mask_image_beside(path)
        if mask_image is None:
            continue
        pixels = np.asarray(load_rgb(path))
        mask = mask_at(mask_image, (pixels.shape[1], pixels.shape[0]))
        triples.append((pixels, mask, estimate_defect_mask(pixels)))
    return triples


def overlap(triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean per image: share marked, share masked, precision and recall of the marks against the mask."""
    rows = [
        (est.mean(), mask.mean(), (est & mask).sum() / max(est.sum(), 1), (est & mask).sum() / max(mask.sum(), 1))
        for _, mask, est in triples
    ]
    return dict(zip(("marked", "masked", "precision", "recall"), np.mean(rows, axis=0).tolist(), strict=True))


def box_matches(triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], suggest: Callable) -> dict[str, float]:
    """Suggested boxes (`suggest(pixels, estimate)`) against the masks' components: boxes per image of each, the
    share of the masks' boxes a suggestion matches (recall) and of the suggestions that match one (precision)."""
    counts = sum(match_counts(from_mask(mask), suggest(pixels, estimate)) for pixels, mask, estimate in triples)
    return {
        "real": counts[0] / len(triples),
        "suggested": counts[1] / len(triples),
        "recall": counts[2] / max(counts[0], 1),
        "precision": counts[3] / max(counts[1], 1),
    }


def learnt_matches(triples: list, boxed: int, net: SteelFeatureNet) -> tuple[dict, dict, ClassSuggester, float]:
    """The class's first `boxed` images taken as the engineer's boxes: on the others, the estimate's suggestions
    and those of the cell classifier fitted on the boxed ones, with the suggester the Upload tab would use and the
    seconds it took to choose."""
    learnt_from = [BoxedImage(pixels, mask, estimate) for pixels, mask, estimate in triples[:boxed]]
    held_out = triples[boxed:]
    started = time.perf_counter()
    chosen = class_suggester(learnt_from, net)
    seconds = time.perf_counter() - started
    classifier = fit_cell_classifier([(cell_map(image.pixels, net), image.mask) for image in learnt_from])
    learnt = box_matches(
        held_out, lambda pixels, estimate: suggested_boxes(classifier.marked(cell_map(pixels, net), estimate))
    )
    return box_matches(held_out, lambda _, estimate: suggested_boxes(estimate)), learnt, chosen, seconds


def colours(triples: list, k: int, draws: int, seed: int) -> dict:
    """The class's defect colour from its masks and from the estimates, over all images and over `draws` of k."""
    rng = random.Random(seed)
    drawn = [rng.sample(triples, min(k, len(triples))) for _ in range(draws)]
    estimated = [defect_tint([(p, e) for p, _, e in group]) for group in drawn]
    return {
        "masks": defect_tint([(p, m) for p, m, _ in triples]),
        "estimated": defect_tint([(p, e) for p, _, e in triples]),
        "k_shots": [c for c in estimated if c is not None],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="Class folders of images with masks beside them.")
    parser.add_argument("--per-class", type=int, default=60, help="Images read per class.")
    parser.add_argument("--k", type=int, default=5, help="Shots per draw for the colour a fine-tune would learn.")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--boxed",
        type=int,
        nargs="*",
        default=[],
        help="Also the suggestions learnt from a class's first K boxed images (`engine.box_suggestions`), on the "
        "others, for each K given.",
    )
    args = parser.parse_args()
    net = load_feature_net() if args.boxed else None
    learnt_lines = [
        "| class | boxed | the Upload tab's choice (fold F1: learnt, estimate) | "
        "boxes: masks' / estimate's / learnt's | estimate: recall, precision | learnt: recall, precision | "
        "the choice: recall, precision | seconds to choose |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines = [
        "| class | images | marked | masked | precision | recall | colour from masks | from estimates | "
        f"K = {args.k} estimates (mean ± std of distance to masks') | boxes: masks' / suggested | box recall | "
        "box precision |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for folder in sorted(p for p in args.images.iterdir() if p.is_dir()):
        triples = class_pairs(folder, args.per_class)
        if not triples:
            continue
        found = overlap(triples)
        boxes = box_matches(triples, lambda _, estimate: suggested_boxes(estimate))
        for boxed in args.boxed:
            learnt_lines.append(learnt_row(folder.name, triples, boxed, net))
        tint = colours(triples, args.k, args.draws, args.seed)
        spread = "–"
        if tint["k_shots"] and tint["masks"] is not None:
            gaps = [float(np.hypot(*np.subtract(c, tint["masks"]))) for c in tint["k_shots"]]
            mean = [round(float(v), 3) for v in np.mean(tint["k_shots"], axis=0)]
            spread = f"{shown(mean)} ({np.mean(gaps):.3f} ± {np.std(gaps):.3f})"
        lines.append(
            f"| {folder.name} | {len(triples)} | {found['marked']:.2f} | {found['masked']:.2f} | "
            f"{found['precision']:.2f} | {found['recall']:.2f} | {shown(tint['masks'])} | {shown(tint['estimated'])} | "
            f"{spread} | {boxes['real']:.1f} / {boxes['suggested']:.1f} | {boxes['recall']:.2f} | "
            f"{boxes['precision']:.2f} |"
        )
    print("\n".join(lines))
    if args.boxed:
        print("\nBoxes suggested on the images after the first K, learnt from those K:\n")
        print("\n".join(learnt_lines))


def learnt_row(name: str, triples: list, boxed: int, net: SteelFeatureNet) -> str:
    """One class's row of the learnt suggestions' table."""
    estimate, learnt, chosen, seconds = learnt_matches(triples, boxed, net)
    picked = learnt if chosen.method == METHOD_LEARNT else estimate
    scores = "" if chosen.learnt_f1 is None else f" ({chosen.learnt_f1:.2f}, {chosen.estimate_f1:.2f})"
    return (
        f"| {name} | {boxed} | {chosen.method}{scores} | {estimate['real']:.1f} / {estimate['suggested']:.1f} / "
        f"{learnt['suggested']:.1f} | {estimate['recall']:.2f}, {estimate['precision']:.2f} | "
        f"{learnt['recall']:.2f}, {learnt['precision']:.2f} | {picked['recall']:.2f}, {picked['precision']:.2f} | "
        f"{seconds:.1f} |"
    )


if __name__ == "__main__":
    main()
