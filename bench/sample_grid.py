"""Write a grid of generated samples per class (model output only, never the source images).

python -m bench.sample_grid --init-root /tmp/neu-split/pool --out engine/weights/steel-prior-tokens/samples.png

One row per class at each of `--strengths` (default: the product's default strength, then 1.0, pure noise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from engine.config import DEFAULT_STEPS, GenerationConfig
from engine.data import list_images, load_rgb
from engine.generation.generate import generate
from engine.generation.pipeline import load_pipeline
from engine.quiet import quiet_libraries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--init-root", type=Path, required=True, help="ImageFolder of init images per class.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strengths", type=float, nargs="+", default=[GenerationConfig.strength, 1.0])
    parser.add_argument("--per-row", type=int, default=6)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--tile", type=int, default=128)
    args = parser.parse_args()
    quiet_libraries()
    pipe = load_pipeline(args.model, args.adapter)
    rows = []
    for class_name in sorted(pipe.tokens):
        sources = list_images(args.init_root / class_name)[-args.per_row :]
        for strength in args.strengths:
            tiles = []
            for i, path in enumerate(sources):
                config = GenerationConfig(
                    class_name=class_name, num_candidates=1, strength=strength, steps=args.steps, seed=i
                )
                image = generate(pipe, load_rgb(path), config).candidates[0].image
                tiles.append(np.asarray(image.convert("L").resize((args.tile, args.tile))))
            rows.append(np.concatenate(tiles, axis=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    print(f"grid: {len(rows)} rows ({', '.join(map(str, args.strengths))} strength per class) -> {args.out}")


if __name__ == "__main__":
    main()
