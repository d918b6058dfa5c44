"""bench.latent_redundancy: the latent's principal directions against the encoder's own sampling noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from bench.latent_redundancy import channel_spectrum, main
from engine.training.pretrain import pixels_to_tensor
from tests.support import make_steel_like


@pytest.fixture(scope="module")
def steel_pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([make_steel_like(rng, 32, kind) for kind in ("scratches", "inclusion", "patches") * 2])


def test_directions_are_ordered_and_a_quieter_posterior_shows_less_noise_along_them(tiny_model, steel_pixels):
    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae").eval()
    signal, noise = channel_spectrum(vae, steel_pixels)
    channels = vae.config.latent_channels
    assert signal.shape == noise.shape == (channels,)
    assert torch.all(signal[:-1] >= signal[1:]) and torch.all(noise > 0)
    with torch.no_grad():
        latents = vae.encode(pixels_to_tensor(steel_pixels)).latent_dist.mean
    per_pixel = (latents * vae.config.scaling_factor).permute(0, 2, 3, 1).reshape(-1, channels).double()
    assert signal.sum().item() == pytest.approx(per_pixel.var(0, unbiased=False).sum().item(), rel=1e-6)
    with torch.no_grad():
        vae.quant_conv.bias[channels:] -= 2 * math.log(10)
    quiet_signal, quiet_noise = channel_spectrum(vae, steel_pixels)
    assert torch.allclose(quiet_signal, signal, rtol=1e-5)
    assert torch.allclose(quiet_noise, noise / 100, rtol=1e-3)


def test_the_command_prints_how_many_directions_rise_above_the_noise(tiny_model, steel_pixels, tmp_path, capsys):
    for index, pixels in enumerate(steel_pixels):
        Image.fromarray(pixels).save(tmp_path / f"{index}.png")
    main(["--images", str(tmp_path), "--model", str(tiny_model), "--num", "4"])
    out = capsys.readouterr().out
    assert "4 images, 4 latent channels" in out
    assert "directions whose signal exceeds the posterior's sampling noise:" in out and "of 4" in out
