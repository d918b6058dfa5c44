"""A colour mill made from a grey split, to measure the studio on colour captures with names it does not know.

Each class (in sorted order) gets a tint — red/green/blue gains, a multiplicative colour cast like a lamp's or a
scale's — times a log-normal jitter of `--jitter` per channel per image (the white balance of one capture), and is
saved as JPEG (quality 90) under `colour type N/<stem> photo.jpg`. With `--one-camera` every class gets the first
tint: one camera over the whole line, so colour tells no class from another and only each capture's white balance
varies (what a real mill's colour captures are like when its defects have no colour of their own). The names sort as
the source's do, so a yardstick draw picks the same shots from both. `--size N` resizes every image to N × N first
(Lanczos): a camera of another resolution over the same field, such as a mill whose captures are 128 px JPEGs.
`--aspect A` keeps a horizontal band A times wider than high of each image (after `--size`; its height at a random
offset, the masks cut alike): a line camera's wide strips of the same steel.
`--defect-colours` also colours each class's defects inside their boxes (`box`: over the box; `structure`: on what
departs from the steel). Nothing is written inside the repository unless `--out` points there; never commit the
output (it is made of the source images).

    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/colour-mill
    python -m bench.fewshot_yardstick --pool /tmp/colour-mill/pool --val /tmp/colour-mill/val --work W --seeds 0
    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/colour-mill-128 --size 128
    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/rust-mill --defect-colours   # bench.defect_colour
    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/pit-rust-mill --defect-colours structure
    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/camera-mill --one-camera
    python -m bench.colour_mill --split /tmp/neu-split --out /tmp/strip-mill --aspect 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.boxes import to_mask
from engine.data import MASK_SUFFIX, list_images, load_rgb, parse_voc
from engine.generation.variation import steel_level, structure_weights

TINTS = ((1.10, 1.00, 0.85), (1.05, 1.00, 0.95), (1.12, 0.98, 0.80), (1.00, 1.00, 1.05), (1.08, 1.00, 0.90))
TINTS += ((1.02, 1.00, 1.00),)
# With `--defect-colours`, the colour of each class's defects against its steel (red, green, blue gains inside its
# boxes): rust, a blue temper colour, none, a darker rust, brown scale, a bright bluish metal.
DEFECT_TINTS = ((1.30, 0.95, 0.70), (0.85, 1.00, 1.20), (1.00, 1.00, 1.00), (1.20, 0.95, 0.80), (1.15, 1.00, 0.85))
DEFECT_TINTS += ((0.92, 1.00, 1.12),)
# The defect colour fades over this many pixels (σ of a Gaussian) at a box's edge.
DEFECT_EDGE_SIGMA = 2.0
# Where in its boxes a class's defect colour lies: over the whole box (a stain), or on what departs from the steel's
# grey level (`variation.structure_weights`; rust in a pit, oxide on a scratch), as much on the box on average.
DEFECT_COLOUR_PLACES = ("box", "structure")
SPLITS = ("pool", "val")


def make_colour_mill(
    split: Path,
    out: Path,
    jitter: float = 0.04,
    seed: int = 0,
    size: int | None = None,
    defect_colours: str | None = None,
    one_camera: bool = False,
    aspect: float | None = None,
) -> dict[str, int]:
    """Write the colour mill of `split` (`pool/` and `val/`, one folder per class) to `out`, each image resized to
    `size` × `size` when given; returns images per folder (`"pool/colour type 1"`: count).

    With `defect_colours` ("box" or "structure", DEFECT_COLOUR_PLACES), an image with Pascal VOC boxes beside it
    (`<stem>.xml`, as in a NEU split) also gets its class's DEFECT_TINTS inside them, over the boxes or on the
    defects' structure, and its boxes as `<name>_mask.png` beside it (what fine-tuning reads). With `one_camera`,
    every class takes the first tint. With `aspect`, each image is cut to a band `aspect` times wider than high."""
    if defect_colours not in (None, *DEFECT_COLOUR_PLACES):
        raise ValueError(f"Defect colours go on one of {DEFECT_COLOUR_PLACES}, not {defect_colours!r}.")
    if size is not None and size < 8:
        raise ValueError(f"The image size must be at least 8 px, got {size}.")
    if aspect is not None and aspect < 1:
        raise ValueError(f"A band is at least as wide as high: the aspect must be at least 1, got {aspect}.")
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in (Path(split) / SPLITS[0]).iterdir() if p.is_dir())
    written = {}
    for part in SPLITS:
        for number, name in enumerate(classes):
            tint = np.asarray(TINTS[0 if one_camera else number % len(TINTS)])
            folder = Path(out) / part / f"colour type {number + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            paths = list_images(Path(split) / part / name)
            for path in paths:
                image = load_rgb(path).convert("L")
                boxes = path.with_suffix(".xml")
                mask = None
                if defect_colours and boxes.is_file():
                    mask = Image.fromarray(to_mask(parse_voc(boxes), *image.size, clamp=True).astype(np.uint8) * 255)
                if size is not None:
                    image = image.resize((size, size), Image.Resampling.LANCZOS)
                    mask = mask.resize((size, size), Image.Resampling.BOX) if mask else None
                if aspect is not None:
                    height = max(1, round(image.width / aspect))
                    top = int(rng.integers(0, image.height - height + 1))
                    band = (0, top, image.width, top + height)
                    image = image.crop(band)
                    mask = mask.crop(band) if mask else None
                grey = np.asarray(image, dtype=np.float32)
                gains = tint * np.exp(rng.normal(0.0, jitter, 3))
                if mask is not None:
                    mask = mask.point(lambda value: 255 if value >= 128 else 0)
                    mask.save(folder / f"{path.stem} photo{MASK_SUFFIX}")
                    inside = cv2.GaussianBlur(np.asarray(mask, dtype=np.float32) / 255, (0, 0), DEFECT_EDGE_SIGMA)
                    if defect_colours == "structure":
                        box = np.asarray(mask) > 0
                        inside = inside * structure_weights(grey, steel_level(grey, box), box.astype(np.float32))
                    defect = np.asarray(DEFECT_TINTS[number % len(DEFECT_TINTS)])
                    gains = gains * defect ** inside[..., None]
                pixels = np.clip(grey[..., None] * gains + 0.5, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{path.stem} photo.jpg", quality=90)
            written[f"{part}/{folder.name}"] = len(paths)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, required=True, help="A split with pool/ and val/ (evaluate neu-split).")
    parser.add_argument("--out", type=Path, required=True, help="Where the colour mill goes (outside the repository).")
    parser.add_argument("--jitter", type=float, default=0.04, help="Per-image log-normal σ of each channel's gain.")
    parser.add_argument("--size", type=int, default=None, help="Resize every image to SIZE × SIZE px (Lanczos).")
    parser.add_argument(
        "--defect-colours",
        nargs="?",
        const="box",
        choices=DEFECT_COLOUR_PLACES,
        help="Colour each class's defects inside its boxes (over them, or on the defects' structure); masks beside.",
    )
    parser.add_argument(
        "--one-camera", action="store_true", help="Every class the same tint: only each capture's white balance varies."
    )
    parser.add_argument("--aspect", type=float, default=None, help="Keep a band ASPECT times wider than high.")
    args = parser.parse_args()
    made = make_colour_mill(
        args.split,
        args.out,
        args.jitter,
        size=args.size,
        defect_colours=args.defect_colours,
        one_camera=args.one_camera,
        aspect=args.aspect,
    )
    for folder, count in made.items():
        print(f"{folder}: {count} images")


if __name__ == "__main__":
    main()
