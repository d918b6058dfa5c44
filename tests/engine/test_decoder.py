"""The autoencoder's perceptual and texture losses; the decoder stage (them and a patch-GAN on a frozen encoder,
checkpointed and resumable); the autoencoder stage trained on them too."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from engine.config import AutoencoderConfig, DecoderConfig
from engine.evaluation.features import load_feature_net
from engine.training.decoder import PatchDiscriminator, one_step_denoiser, round_trip_recognition, train_decoder
from engine.training.losses import feature_maps, perceptual_distance, texture_distance
from engine.training.pretrain import PretrainSample, train_autoencoder
from engine.training.prior import PriorSize
from tests.support import make_steel_like


def _pixels(count: int = 6, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([make_steel_like(rng, size, ("scratches", "inclusion", "plain")[i % 3]) for i in range(count)])


def test_perceptual_and_texture_distances_are_zero_only_for_equal_images():
    net = load_feature_net()
    images = torch.from_numpy(_pixels(2)).permute(0, 3, 1, 2).float() / 127.5 - 1
    same = feature_maps(net, images)
    assert perceptual_distance(same, same).item() < 1e-6 and texture_distance(same, same).item() < 1e-9
    blurred = feature_maps(net, torch.nn.functional.avg_pool2d(images, 3, 1, 1))
    assert perceptual_distance(blurred, same).item() > 1e-3 and texture_distance(blurred, same).item() > 0


def test_patch_discriminator_scores_patches():
    logits = PatchDiscriminator(channels=8)(torch.zeros(2, 3, 64, 64))
    assert logits.shape[0] == 2 and logits.shape[1] == 1 and logits.shape[-1] > 1


def test_decoder_stage_trains_only_the_decoder_and_resumes(tiny_model, tmp_path):
    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae")
    encoder_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    config = DecoderConfig(
        output_dir=str(tmp_path / "decoder"),
        max_train_steps=2,
        train_batch_size=2,
        adversarial_start=0,
        checkpointing_steps=1,
        discriminator_channels=8,
    )
    pixels = _pixels()
    try:
        train_decoder(vae, pixels, config, should_stop=lambda: True)
    except InterruptedError as stopped:
        assert "step 1" in str(stopped)
    assert torch.load(tmp_path / "decoder" / "checkpoint.pt", weights_only=False)["step"] == 1
    trained = train_decoder(vae, pixels, config)
    assert (tmp_path / "decoder" / "final" / "config.json").exists()
    assert all(torch.equal(encoder_before[k], v) for k, v in trained.encoder.state_dict().items())
    assert any(not torch.equal(decoder_before[k], v) for k, v in trained.decoder.state_dict().items())
    scores = round_trip_recognition(trained, pixels, ["crazing", "scratches"] * 3)
    assert set(scores) == {"crazing", "scratches"} and all(0.0 <= v <= 1.0 for v in scores.values())


def test_one_step_denoiser_keeps_lightly_noised_latents_and_redraws_heavily_noised_ones(tiny_model):
    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae")
    denoise = one_step_denoiser(tiny_model)
    with torch.no_grad():
        latents = vae.encode(torch.from_numpy(_pixels(2)).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.mean
    light = denoise(latents, 1, torch.Generator().manual_seed(0))
    heavy = denoise(latents, 900, torch.Generator().manual_seed(0))
    assert light.shape == latents.shape and torch.isfinite(heavy).all()
    # Unclipped and on the posterior's scale: one step of noise barely moves them, 900 steps redraw them.
    assert (light - latents).abs().mean() < 0.25 * (heavy - latents).abs().mean()


def test_decoder_stage_decodes_the_denoisers_latents_for_its_share_of_each_batch(tiny_model, tmp_path):
    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae")
    denoise = one_step_denoiser(tiny_model)
    calls: list[tuple[int, int]] = []

    def counting(latents: torch.Tensor, timestep: int, generator: torch.Generator) -> torch.Tensor:
        calls.append((len(latents), timestep))
        return denoise(latents, timestep, generator)

    config = DecoderConfig(
        output_dir=str(tmp_path / "decoder"),
        max_train_steps=2,
        train_batch_size=4,
        adversarial_weight=0.0,
        denoised_share=0.5,
        denoised_max_timestep=200,
    )
    with pytest.raises(ValueError, match="denoiser"):
        train_decoder(vae, _pixels(), config)
    trained = train_decoder(vae, _pixels(), config, denoiser=counting)
    assert len(calls) == 2 and all(count == 2 and 1 <= t <= 200 for count, t in calls)
    assert (tmp_path / "decoder" / "final" / "config.json").exists() and trained.decoder.training is False
    with pytest.raises(ValueError, match="denoised share"):
        DecoderConfig(denoised_share=1.5)


def test_autoencoder_stage_trains_encoder_and_decoder_on_the_perceptual_term_when_weighted(tmp_path):
    samples = [PretrainSample(pixels, "a steel surface") for pixels in _pixels(6, 32)]
    trained = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"perceptual-{weight}"
        config = AutoencoderConfig(
            output_dir=str(out), crop_size=32, train_batch_size=2, max_train_steps=25, perceptual_weight=weight
        )
        trained[weight] = train_autoencoder(samples, config, PriorSize.tiny())
        logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert logged[-1]["step"] == 25
        assert (logged[-1]["perceptual"] > 0) == (weight > 0)
        assert AutoencoderConfig.load(out / "config.json").perceptual_weight == weight
    # Same seed, same crops: only the perceptual term tells the two apart, in the encoder as in the decoder.
    for part in ("encoder", "decoder"):
        plain = torch.cat([p.flatten() for p in getattr(trained[0.0], part).parameters()])
        perceptual = torch.cat([p.flatten() for p in getattr(trained[1.0], part).parameters()])
        assert not torch.allclose(plain, perceptual)


def test_autoencoder_and_decoder_stages_end_complete_within_a_spent_time_budget(tiny_model, tmp_path):
    from engine.training.schedule import BUDGET_CHECK_STEPS

    samples = [PretrainSample(pixels, "a steel surface") for pixels in _pixels(6, 32)]
    out = tmp_path / "autoencoder"
    config = AutoencoderConfig(
        output_dir=str(out), crop_size=32, train_batch_size=2, max_train_steps=500, max_train_seconds=1e-9
    )
    train_autoencoder(samples, config, PriorSize.tiny())
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == BUDGET_CHECK_STEPS and (out / "final" / "config.json").exists()
    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae")
    decoder = DecoderConfig(
        output_dir=str(tmp_path / "decoder"),
        max_train_steps=500,
        max_train_seconds=1e-9,
        train_batch_size=2,
        discriminator_channels=8,
        checkpointing_steps=5,
    )
    train_decoder(vae, _pixels(), decoder)
    assert torch.load(tmp_path / "decoder" / "checkpoint.pt", weights_only=False)["step"] == BUDGET_CHECK_STEPS
    assert (tmp_path / "decoder" / "final" / "config.json").exists()
