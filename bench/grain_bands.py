"""Does a sample carry the steel's grain at its own pixel scale? Band energies of real images and samples, per class.

The embedded prior draws a window at 128 px, so whatever a slab has above that scale must come from elsewhere
(detail restore, the init). This bench splits every image (as grey) into two detail bands and prints their RMS in
grey levels, per class, for a real folder and any number of sample folders (each with one subfolder per class):

- fine: the image minus the image resized to `--model-size` and back (what the model's resize loses);
- mid: that resized image minus the image resized to half of `--model-size` and back (the prior's own finest scale).

A folder whose bands sit well below the real folder's is softer than real steel: a recognizer that sees full
resolution can tell its images apart by their blur.

    python -m bench.grain_bands --real /tmp/neu-split/val --samples W/seed0/synthetic W2/seed0/synthetic
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data import load_rgb
from engine.evaluation.features import images_by_class

BANDS = ("fine", "mid")


def _through(image: Image.Image, side: int) -> np.ndarray:
    """`image` resized (Lanczos) to side × side and back to its own size."""
    small = image.resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(small.resize(image.size, Image.Resampling.LANCZOS), dtype=np.float32)


def lost_in_resize(image: Image.Image, side: int) -> np.ndarray:
    """The grey detail a resize to side × side and back loses: the image minus that round trip."""
    grey = image.convert("L")
    return np.asarray(grey, dtype=np.float32) - _through(grey, side)


def grain_bands(image: Image.Image, model_size: int = 128) -> dict[str, float]:
    """RMS (grey levels) of an image's fine band (lost by a resize to `model_size`) and mid band (lost between
    `model_size` and half of it)."""
    grey = image.convert("L")
    fine = lost_in_resize(grey, model_size)
    at_model = np.asarray(grey, dtype=np.float32) - fine
    mid = at_model - _through(grey, model_size // 2)
    return {"fine": float(np.sqrt(np.mean(fine**2))), "mid": float(np.sqrt(np.mean(mid**2)))}


def folder_bands(folder: Path, model_size: int = 128) -> dict[str, dict[str, float]]:
    """Mean band RMS per class of a folder with one subfolder per class."""
    result = {}
    for name, paths in images_by_class(folder).items():
        bands = [grain_bands(load_rgb(path), model_size) for path in paths]
        result[name] = {band: round(float(np.mean([b[band] for b in bands])), 2) for band in BANDS}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, required=True, help="Real images, one subfolder per class.")
    parser.add_argument(
        "--samples", type=Path, nargs="+", required=True, help="Sample folders, one subfolder per class."
    )
    parser.add_argument("--model-size", type=int, default=128, help="The model's window resolution (default 128).")
    args = parser.parse_args()
    folders = [args.real, *args.samples]
    tables = [folder_bands(folder, args.model_size) for folder in folders]
    print("band RMS in grey levels, fine / mid, per class; folders: " + ", ".join(str(f) for f in folders))
    for name in sorted(tables[0]):
        cells = [f"{t[name]['fine']:.2f} / {t[name]['mid']:.2f}" if name in t else "—" for t in tables]
        print(f"{name:18s} " + " | ".join(cells))


if __name__ == "__main__":
    main()
