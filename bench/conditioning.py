"""How much does a prior follow its prompt? The change of the UNet's noise prediction between prompts.

For each timestep, the root-mean-square difference between the noise predicted for two prompts, relative to the
prediction's own RMS, averaged over noise draws: between the empty prompt and a generic caption, between appearance
captions (`pretrain --captions appearance`), and between the adapter's defect tokens. Classifier-free guidance
multiplies these differences by its scale; a prior whose prediction hardly moves cannot be steered to a class.

    python -m bench.conditioning [--model M] [--adapter RUN] [--draws 8]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from engine.generation.pipeline import load_pipeline

GENERIC = "a grayscale photo of a hot rolled steel strip surface"
APPEARANCE = (
    f"{GENERIC}, dark, uniform, smooth, vertical lines",
    f"{GENERIC}, bright, fine texture, small dark spots",
    f"{GENERIC}, bright, dark and light, fine texture, large blotch",
    f"{GENERIC}, dark, vertical lines, thin bright streaks",
)
TIMESTEPS = (999, 700, 400, 100)


@torch.no_grad()
def prompt_effect(pipe, prompts: list[str], draws: int = 8, seed: int = 0) -> dict[int, float]:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Model folder or hub id (default: the embedded prior).")
    parser.add_argument("--adapter", default=None, help="Adapter run folder (default: the shipped tokens).")
    parser.add_argument("--draws", type=int, default=8)
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


if __name__ == "__main__":
    main()
