"""Do the masked repaints' free labels teach where a class's defects are? A localisation check of the clean-slab path.

A masked repaint comes with its mask: a label no one drew. For each draw of a yardstick work folder run with
`--masked-per-class` (its shots, and each class's masked repaints on clean slabs with their masks), each class's
cell classifier (`engine.box_suggestions`: a logistic regression over the steel feature network's cells, the Upload
tab's learnt suggestions) is fitted on

- the shots' own boxes (the engineer's five boxed images: the masks or VOC boxes beside them in `--pool`),
- the shots and the repaints the realism gate kept (what a batch delivers),
- the shots and every repaint, flagged ones included (the gate off),
- the repaints alone,

and its boxes (`suggested_boxes` of the marked cells) are matched to the validation images' own boxes at IoU ≥ 0.3
(`boxes.match_counts`): recall, precision and F1 per class, mean ± std over the draws.

    python -m bench.fewshot_yardstick --pool SPLIT/pool --val SPLIT/val --work W --masked-per-class 100
    python -m bench.placement_labels --work W --pool SPLIT/pool --val SPLIT/val
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.defect_estimate import marked_images
from engine.batch import FLAGGED_FOLDER
from engine.box_suggestions import CellMap, cell_map, f1_of, fit_cell_classifier
from engine.boxes import from_mask, match_counts
from engine.data import list_images
from engine.evaluation.features import SteelFeatureNet, load_feature_net
from engine.masks import suggested_boxes

ARMS = ("shots", "shots + kept repaints", "shots + all repaints", "repaints only")
"""What each class's cell classifier is fitted on."""


def labelled(paths: list[Path], net: SteelFeatureNet) -> list[tuple[CellMap, np.ndarray, np.ndarray]]:
    """(cells, mask, estimated defect mask) of each image with a mask or boxes beside it; images without are left
    out."""
    return [(cell_map(pixels, net), mask, estimate) for pixels, mask, estimate in marked_images(paths)]


def class_counts(
    fits: dict[str, list[tuple[CellMap, np.ndarray, np.ndarray]]],
    held_out: list[tuple[CellMap, np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Per arm, `match_counts` totals over the held-out images of the boxes its classifier suggests."""
    counts = {}
    for arm, examples in fits.items():
        if not examples:
            continue
        classifier = fit_cell_classifier([(cells, mask) for cells, mask, _ in examples])
        counts[arm] = sum(
            match_counts(from_mask(mask), suggested_boxes(classifier.marked(cells, estimate)))
            for cells, mask, estimate in held_out
        )
    return counts


def draw_counts(draw: Path, pool: Path, val: dict[str, list], net: SteelFeatureNet) -> dict[str, dict[str, np.ndarray]]:
    """One draw's counts per class and arm (its shots read from `pool`, where their boxes are)."""
    result = {}
    for class_dir in sorted(p for p in (draw / "shots").iterdir() if p.is_dir()):
        masked = draw / "masked" / class_dir.name
        kept = labelled(list_images(masked), net) if masked.is_dir() else []
        flagged_dir = masked / FLAGGED_FOLDER
        flagged = labelled(list_images(flagged_dir), net) if flagged_dir.is_dir() else []
        shots = labelled([pool / class_dir.name / path.name for path in list_images(class_dir)], net)
        fits = dict(zip(ARMS, (shots, shots + kept, shots + kept + flagged, kept + flagged), strict=True))
        result[class_dir.name] = class_counts(fits, val[class_dir.name])
    return result


def scores(counts: np.ndarray) -> tuple[float, float, float]:
    """Recall, precision and F1 of `match_counts` totals."""
    drawn, suggested, found, right = counts
    return found / max(drawn, 1), right / max(suggested, 1), f1_of(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="A yardstick work folder run with --masked-per-class.")
    parser.add_argument("--pool", type=Path, required=True, help="The pool the draws' shots came from.")
    parser.add_argument("--val", type=Path, required=True, help="The validation images, boxes or masks beside them.")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="The draws to read (default: every one).")
    args = parser.parse_args()
    net = load_feature_net()
    draws = sorted(
        p
        for p in args.work.glob("seed*")
        if (p / "masked").is_dir()
        and (p / "shots").is_dir()
        and (args.seeds is None or int(p.name.removeprefix("seed")) in args.seeds)
    )
    if not draws:
        raise SystemExit(f"No draw with masked repaints in {args.work}: run the yardstick with --masked-per-class.")
    val = {d.name: labelled(list_images(d), net) for d in sorted(p for p in args.val.iterdir() if p.is_dir())}
    per_draw = {draw.name: draw_counts(draw, args.pool, val, net) for draw in draws}
    classes = list(next(iter(per_draw.values())))
    print(f"{len(draws)} draws ({', '.join(per_draw)}); boxes matched at IoU >= 0.3 on the validation images")
    print("| class | " + " | ".join(f"{arm}: recall, precision, F1" for arm in ARMS) + " |")
    print("| --- |" + " --- |" * len(ARMS))
    overall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for name in [*classes, "all classes"]:
        cells = []
        for arm in ARMS:
            rows = []
            for counts in per_draw.values():
                total = (
                    sum(counts[c][arm] for c in classes if arm in counts[c])
                    if name == "all classes"
                    else counts[name].get(arm)
                )
                if total is not None and not isinstance(total, int):
                    rows.append(scores(total))
            if not rows:
                cells.append("–")
                continue
            mean, std = np.mean(rows, axis=0), np.std(rows, axis=0)
            cells.append(f"{mean[0]:.2f}, {mean[1]:.2f}, {mean[2]:.2f} ± {std[2]:.2f}")
            if name == "all classes":
                overall[arm] = [row[2] for row in rows]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for arm in ARMS[1:]:
        if overall[arm] and len(overall[arm]) == len(overall[ARMS[0]]):
            gains = np.subtract(overall[arm], overall[ARMS[0]])
            per = ", ".join(f"{g:+.2f}" for g in gains)
            print(f"F1 over all classes, {arm} − shots: {gains.mean():+.2f} ± {gains.std():.2f} (per draw {per})")


if __name__ == "__main__":
    main()
