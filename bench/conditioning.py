"""How much does a prior follow its prompt? The change of the UNet's noise prediction between prompts, and of the
samples the product makes.

For each timestep, the root-mean-square difference between the noise predicted for two prompts, relative to the
prediction's own RMS, averaged over noise draws: between the empty prompt and a generic caption, between appearance
captions (`pretrain --captions appearance`), and between the adapter's defect tokens. Classifier-free guidance
multiplies these differences by its scale; a prior whose prediction hardly moves cannot be steered to a class.

With `--init-root` (class folders), the same question where the product asks it: image-oriented samples of each
class (its first image, `--strength`, the default guidance and detail restore), made again with one thing changed —
the fine-tune's LoRA off, another class's token, no guidance (1) — and compared pixel by pixel (mean |Δ| in grey
levels). The change between two noise seeds of the same settings is the scale to read them against: a conditioning
that moves the samples far less than a new seed does is not what makes them.

    python -m bench.conditioning [--model M] [--adapter RUN] [--draws 8] [--init-root DIR --strength 0.6]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from engine.config import DEFAULT_STEPS, GenerationConfig
from engine.data import list_images, load_rgb
from engine.generation.generate import generate
from engine.generation.pipeline import LoadedPipeline, load_pipeline

GENERIC = "a grayscale photo of a hot rolled steel strip surface"
APPEARANCE = (
    f"{GENERIC}, dark, uniform, smooth, vertical lines",
    f"{GENERIC}, bright, fine texture, small dark spots",
    f"{GENERIC}, bright, dark and light, fine texture, large blotch",
    f"{GENERIC}, dark, vertical lines, thin bright streaks",
)
TIMESTEPS = (999, 700, 400, 100)


@torch.no_grad()
def prompt_effect(
    pipe: StableDiffusionImg2ImgPipeline, prompts: list[str], draws: int = 8, seed: int = 0
) -> dict[int, float]:
    """Timestep -> mean over prompt pairs and noise draws of RMS(ε(p) − ε(q)) / RMS(ε(p))."""
    hidden = pipe.encode_prompt(prompts, pipe.device, 1, False)[0]
    latent_side = pipe.unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((draws, pipe.unet.config.in_channels, latent_side, latent_side), generator=generator)
    effect = {}
    for t in TIMESTEPS:
        timestep = torch.full((draws,), t)
        predictions = [pipe.unet(noise, timestep, h.expand(draws, -1, -1)).sample for h in hidden]
        ratios = [
            ((a - b).pow(2).mean(dim=(1, 2, 3)).sqrt() / a.pow(2).mean(dim=(1, 2, 3)).sqrt()).mean().item()
            for a, b in itertools.combinations(predictions, 2)
        ]
        effect[t] = sum(ratios) / len(ratios)
    return effect


def _grey_samples(loaded: LoadedPipeline, image: Image.Image, config: GenerationConfig) -> np.ndarray:
    candidates = generate(loaded, image, config).candidates
    return np.stack([np.asarray(c.image.convert("L"), dtype=np.float64) for c in candidates])


def sample_effect(
    loaded: LoadedPipeline,
    init_by_class: dict[str, Image.Image],
    strength: float,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Class -> mean |Δ| (grey levels) between its default samples and the same made with one change: "noise seed"
    (the next seeds), "LoRA off", "other token" (the next class's), "guidance 1". The pipeline is left as found."""
    classes = list(init_by_class)
    effect = {}
    for index, (class_name, image) in enumerate(init_by_class.items()):
        config = GenerationConfig(class_name, 2, strength, steps, seed=seed)
        base = _grey_samples(loaded, image, config)
        variants = {
            "noise seed": GenerationConfig(class_name, 2, strength, steps, seed=seed + 2),
            "guidance 1": GenerationConfig(class_name, 2, strength, steps, seed=seed, guidance_scale=1.0),
        }
        if len(classes) > 1:
            other = classes[(index + 1) % len(classes)]
            variants["other token"] = GenerationConfig(other, 2, strength, steps, seed=seed)
        row = {name: float(np.abs(_grey_samples(loaded, image, c) - base).mean()) for name, c in variants.items()}
        if loaded.pipe.get_list_adapters():
            loaded.pipe.disable_lora()
            try:
                row["LoRA off"] = float(np.abs(_grey_samples(loaded, image, config) - base).mean())
            finally:
                loaded.pipe.enable_lora()
        effect[class_name] = row
    return effect


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Model folder or hub id (default: the embedded prior).")
    parser.add_argument("--adapter", default=None, help="Adapter run folder (default: the shipped tokens).")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--init-root", type=Path, default=None, help="Class folders: also measure the samples.")
    parser.add_argument("--strength", type=float, default=0.6)
    args = parser.parse_args(argv)
    loaded = load_pipeline(args.model, adapter=args.adapter)
    sets = {"empty vs generic": ["", GENERIC], "appearance captions": list(APPEARANCE)}
    if loaded.tokens:
        sets["defect tokens"] = [f"a grayscale photo of a steel surface with {t}" for t in loaded.tokens.values()]
    print(f"Change of the noise prediction between prompts (RMS, share of the prediction's RMS); {args.draws} draws")
    print(f"{'prompts':<22}" + "".join(f"{f't={t}':>9}" for t in TIMESTEPS))
    for name, prompts in sets.items():
        effect = prompt_effect(loaded.pipe, prompts, args.draws)
        print(f"{name:<22}" + "".join(f"{effect[t]:>9.4f}" for t in TIMESTEPS))
    if args.init_root is None:
        return
    folders = sorted(p for p in args.init_root.iterdir() if p.is_dir() and p.name in loaded.tokens and list_images(p))
    inits = {p.name: load_rgb(list_images(p)[0]) for p in folders}
    effect = sample_effect(loaded, inits, args.strength)
    columns = list(dict.fromkeys(name for row in effect.values() for name in row))
    print(f"\nChange of the samples (mean |Δ|, grey levels) at strength {args.strength}, each class's first image")
    print(f"{'class':<18}" + "".join(f"{c:>13}" for c in columns))
    for class_name, row in effect.items():
        print(f"{class_name:<18}" + "".join(f"{row[c]:>13.2f}" if c in row else f"{'—':>13}" for c in columns))


if __name__ == "__main__":
    main()
