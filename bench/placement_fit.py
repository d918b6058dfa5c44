"""How well auto-place sizes and counts a new mill's defects: from the class's own five shots, or from NEU's pool.

A class the studio does not know by name gets NEU's boxes of every class pooled (`placement.GENERIC`); one fine-tuned
on images with defect masks or boxes beside them now has its own (`placement.learnt_statistics`, as the fine-tune
reads them: `loop.images_from_folder` and `loop.class_placement`, masks at the model's resolution, sizes in the
images' own pixels). For each draw of K shots a class (`fewshot_yardstick.draw_shots`), the validation images' defects
(the connected components of their masks) are compared with `--per-class` auto-placed masks on a slab of the
validation images' size, drawn with the class's own statistics, with the pooled ones (what a new class got before),
and with the shipped statistics of the NEU class the mill's class was made from (the sorted order; a bound: 200
images' boxes): the energy distance between the boxes' (log width, log height) and the mean defects per image.
Prints a table per class, means over the draws.

    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/rust-mill --defect-colours
    python -m bench.placement_fit --mill /tmp/rust-mill --work /tmp/placement-fit --seeds 0 1 2 3 4
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.fewshot_yardstick import draw_shots, mill_draw_parser
from engine.boxes import from_mask
from engine.data import list_images, read_mask_beside
from engine.generation.placement import load_statistics, propose_masks
from engine.training.loop import class_placement, images_from_folder

# Masks at the embedded prior's resolution, as its fine-tune reads them.
FINETUNE_RESOLUTION = 128
ARMS = ("own", "pooled", "NEU class")


def defects(masks: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The (log width, log height) of every connected component of the masks and the mean count per mask."""
    boxes = [from_mask(mask, min_area=1) for mask in masks]
    sizes = np.log([[b.width, b.height] for found in boxes for b in found]).reshape(-1, 2)
    return sizes, float(np.mean([len(found) for found in boxes]))


def energy_distance(first: np.ndarray, second: np.ndarray) -> float:
    """The energy distance between two samples of 2-D points (0 for one distribution)."""

    def mean_gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a[:, None] - b[None], axis=2).mean())

    return 2 * mean_gap(first, second) - mean_gap(first, first) - mean_gap(second, second)


def class_masks(folder: Path) -> tuple[list[np.ndarray], tuple[int, int]]:
    """The defect masks of a folder's images at their own size, and that size (the first image's)."""
    paths = list_images(folder)
    with Image.open(paths[0]) as first:
        size = first.size
    masks = [mask for path in paths if (mask := read_mask_beside(path, size[0])) is not None]
    return masks, size


def draw(mill: Path, work: Path, seed: int, k: int, per_class: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Per class and arm: (energy distance to the validation defects, mean defects per auto-placed mask)."""
    shots = draw_shots(mill / "pool", k, seed, work / f"seed{seed}" / "shots", with_masks=True)
    shot_images = images_from_folder(shots, None, FINETUNE_RESOLUTION)
    shipped = load_statistics()
    neu_names = sorted(shipped["classes"])
    result = {}
    for number, folder in enumerate(sorted(p for p in (mill / "val").iterdir() if p.is_dir())):
        masks, (width, height) = class_masks(folder)
        real, real_count = defects(masks)
        neu = neu_names[number % len(neu_names)]
        statistics = {
            "own": class_placement(shot_images, folder.name),
            "pooled": shipped,
            "NEU class": {**shipped, "classes": {neu: shipped["classes"][neu]}},
        }
        result[folder.name] = {}
        for arm, stats in statistics.items():
            name = neu if arm == "NEU class" else folder.name
            placed = propose_masks(name, width, height, seed, per_class, statistics=stats)
            sizes, count = defects([np.asarray(mask) > 0 for mask in placed])
            result[folder.name][arm] = (energy_distance(real, sizes), count)
        result[folder.name]["real"] = (0.0, real_count)
    return result


def table(draws: list[dict]) -> list[str]:
    """Per class: each arm's energy distance to the validation defects and defects per image, means over draws."""
    lines = [
        "| class | real defects / image | " + " | ".join(f"{arm}: distance, defects / image" for arm in ARMS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in ARMS) + " |",
    ]
    for class_name in draws[0]:
        cells = [f"{np.mean([d[class_name]['real'][1] for d in draws]):.2f}"]
        for arm in ARMS:
            distance = np.mean([d[class_name][arm][0] for d in draws])
            count = np.mean([d[class_name][arm][1] for d in draws])
            cells.append(f"{distance:.3f}, {count:.2f}")
        lines.append(f"| {class_name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = mill_draw_parser(__doc__, seeds=[0, 1, 2, 3, 4])
    parser.add_argument("--per-class", type=int, default=40, help="Auto-placed masks per class and draw.")
    args = parser.parse_args()
    draws = [draw(args.mill, args.work, seed, args.k, args.per_class) for seed in args.seeds]
    print("\n".join(table(draws)))


if __name__ == "__main__":
    main()
