"""How much of a prior's latent noise is really noise? Channel redundancy and the layout's effective SNR.

Diffusion adds independent noise to every latent channel, but a latent whose channels move together carries its
layout in a few directions: the UNet can average the channels and read that layout at a far higher signal-to-noise
ratio than the schedule's per-channel one. This bench encodes real images, takes the principal directions of the
latent channels (covariance over all pixels of all images), and prints each direction's share of the variance and,
for a few timesteps of the model's own schedule, the per-channel SNR and the SNR of the strongest direction.
"redundancy" is the strongest direction's variance over the mean channel's: the factor by which that direction's
SNR exceeds the schedule's, the value `pretrain --noise-shift` divides the SNR by to undo it.

It also prints, per direction, the encoder's own posterior noise (the sampling std the autoencoder and the UNet are
trained with): a direction whose signal is below that noise carries nothing a decoder trained on samples can use,
so the count of directions above it is the latent's real width.

    python -m bench.latent_redundancy --images DIR [--model M] [--num 120]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from engine.data import IMAGE_SUFFIXES, load_rgb, to_square_pixels
from engine.generation.pipeline import load_pipeline
from engine.training.pretrain import encode_pixels

TIMESTEPS = (200, 400, 600, 800, 999)


def _per_pixel(latents: torch.Tensor) -> torch.Tensor:
    """N×C×H×W → (N·H·W)×C in float64."""
    return latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()


def channel_spectrum(vae: AutoencoderKL, pixels: np.ndarray, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance of the scaled posterior mean along each principal direction of its channels (descending), and the
    posterior's own sampling variance along the same directions (covariances over every latent pixel)."""
    mean, std = encode_pixels(vae, pixels, batch_size)
    channels = _per_pixel(mean * vae.config.scaling_factor)
    channels = channels - channels.mean(0)
    signal, directions = torch.linalg.eigh(channels.T @ channels / len(channels))
    signal, directions = signal.flip(0), directions.flip(1)
    noise = _per_pixel(std * vae.config.scaling_factor).pow(2).mean(0) @ directions.pow(2)
    return signal, noise


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
    spectrum, noise = channel_spectrum(pipe.vae, pixels)
    shares = (spectrum / spectrum.sum()).tolist()
    redundancy = spectrum[0].item() / spectrum.mean().item()
    print(f"{len(picks)} images, {len(spectrum)} latent channels")
    print("variance share of the strongest directions: " + ", ".join(f"{s:.3f}" for s in shares[:6]))
    print(f"redundancy (strongest direction / mean channel): {redundancy:.1f}")
    above = int((spectrum > noise).sum())
    print(f"directions whose signal exceeds the posterior's sampling noise: {above} of {len(spectrum)}")
    print(f"{'direction':>9}{'signal variance':>17}{'posterior noise':>17}")
    for index, (signal_variance, noise_variance) in enumerate(zip(spectrum.tolist(), noise.tolist(), strict=True)):
        print(f"{index:>9}{signal_variance:>17.5f}{noise_variance:>17.5f}")
    alphas_cumprod = pipe.scheduler.alphas_cumprod
    print(f"{'timestep':>9}{'per-channel SNR':>17}{'strongest-direction SNR':>25}")
    for t in TIMESTEPS:
        snr = (alphas_cumprod[t] / (1 - alphas_cumprod[t])).item()
        print(f"{t:>9}{snr:>17.4f}{snr * spectrum[0].item():>25.4f}")


if __name__ == "__main__":
    main()
