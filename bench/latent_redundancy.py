"""How much of a prior's latent noise is really noise? Channel redundancy and the layout's effective SNR.

Diffusion adds independent noise to every latent channel, but a latent whose channels move together carries its
layout in a few directions: the UNet can average the channels and read that layout at a far higher signal-to-noise
ratio than the schedule's per-channel one. This bench encodes real images, takes the principal directions of the
latent channels (covariance over all pixels of all images), and prints each direction's share of the variance and,
for a few timesteps of the model's own schedule, the per-channel SNR and the SNR of the strongest direction.
"redundancy" is the strongest direction's variance over the mean channel's: the factor by which that direction's
SNR exceeds the schedule's, the value `pretrain --noise-shift` divides the SNR by to undo it.

    python -m bench.latent_redundancy --images DIR [--model M] [--num 120]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from engine.data import IMAGE_SUFFIXES, load_rgb, to_square_pixels
from engine.generation.pipeline import load_pipeline
from engine.training.pretrain import encode_pixels

TIMESTEPS = (200, 400, 600, 800, 999)


def channel_spectrum(vae, pixels: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """Eigenvalues (descending) of the covariance of the scaled latent's channels over every latent pixel."""
    latents = encode_pixels(vae, pixels, batch_size)[0] * vae.config.scaling_factor
    channels = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    channels = channels - channels.mean(0)
    return torch.linalg.eigvalsh(channels.T @ channels / len(channels)).flip(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, type=Path, help="Folder of images (searched recursively).")
    parser.add_argument("--model", default=None, help="Model folder or hub id (default: the embedded prior).")
    parser.add_argument("--num", type=int, default=120, help="Images to encode (spread over the folder).")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model).pipe
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        parser.error(f"No images under {args.images}.")
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, min(args.num, len(paths))).astype(int)]
    pixels = np.stack([to_square_pixels(load_rgb(p), resolution) for p in picks])
    spectrum = channel_spectrum(pipe.vae, pixels)
    shares = (spectrum / spectrum.sum()).tolist()
    redundancy = spectrum[0].item() / spectrum.mean().item()
    print(f"{len(picks)} images, {len(spectrum)} latent channels")
    print("variance share of the strongest directions: " + ", ".join(f"{s:.3f}" for s in shares[:6]))
    print(f"redundancy (strongest direction / mean channel): {redundancy:.1f}")
    alphas_cumprod = pipe.scheduler.alphas_cumprod
    print(f"{'timestep':>9}{'per-channel SNR':>17}{'strongest-direction SNR':>25}")
    for t in TIMESTEPS:
        snr = (alphas_cumprod[t] / (1 - alphas_cumprod[t])).item()
        print(f"{t:>9}{snr:>17.4f}{snr * spectrum[0].item():>25.4f}")


if __name__ == "__main__":
    main()
