"""The prior's decoder stage: SD's autoencoder recipe (reconstruction + perceptual + patch-GAN) on a frozen encoder.

The compact autoencoder's L1-trained decoder draws steel as soft mottling: crazing's network of fine cracks
and pits' grain are lost in the round trip. This stage keeps the encoder (so latents, and every UNet trained
on them, stay valid) and retrains the decoder with
- L1 on pixels,
- a perceptual distance: LPIPS-style, between unit-normalised activations of the steel feature network,
- a texture term: L1 between Gram matrices of the same activations (what makes grain look like grain),
- a patch-GAN hinge loss (taming-transformers' NLayerDiscriminator), weighted adaptively against the
  reconstruction terms by their gradient norms at the decoder's last layer, as in latent diffusion.
With a `denoiser` (a prior's UNet, `one_step_denoiser`) part of each batch is decoded from the UNet's one-step
denoised estimate of the image's latents instead of the encoder's posterior: what the product decodes are the
UNet's latents, and a decoder fitted only to posteriors draws their deviations as artefacts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from engine.config import DecoderConfig
from engine.evaluation.features import SteelFeatureNet, load_feature_net
from engine.progress import ProgressFn, append_log
from engine.training.losses import feature_maps, perceptual_distance, texture_distance
from engine.training.pretrain import (
    DEFECT_CAPTIONS,
    atomic_save,
    encode_pixels,
    finished_stage,
    pixels_to_tensor,
    round_trip,
    training_device,
)
from engine.training.schedule import replanned_steps

# (latents on the posterior's scale, timestep, generator) -> the prior's denoised estimate of those latents.
Denoiser = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


class PatchDiscriminator(nn.Module):
    """taming-transformers' NLayerDiscriminator on grey images: one real/fake logit per 70 px patch."""

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            modules += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            width = out
        modules.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(dim=1, keepdim=True))


def _adaptive_weight(reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """Latent diffusion's balance: the GAN term's gradient at the last layer is scaled to the reconstruction's."""
    rec_grad = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def one_step_denoiser(model_dir: str | Path, device: torch.device | str = "cpu") -> Denoiser:
    """The prior's UNet as a `Denoiser`: noise the latents to a timestep and take its one-step clean estimate.

    The estimate (`DDPMScheduler.step(...).pred_original_sample`, whatever the model predicts) is conditioned on a
    generic pretraining caption, as the UNet saw its images. Latents are moved to and from the UNet's space with
    the model's own VAE scaling and shift factors, as the training loop does.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model_dir = Path(model_dir)
    vae_config = AutoencoderKL.load_config(model_dir, subfolder="vae")
    scaling, shift = vae_config["scaling_factor"], vae_config.get("shift_factor") or 0.0
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", dtype=torch.float32).to(device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", dtype=torch.float32).to(device)
    # No clipping: latents are not images in [-1, 1].
    scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler", clip_sample=False)
    ids = tokenizer(
        DEFECT_CAPTIONS[0], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids.to(device)
    with torch.no_grad():
        caption = text_encoder(ids)[0]

    @torch.no_grad()
    def denoise(latents: torch.Tensor, timestep: int, generator: torch.Generator) -> torch.Tensor:
        clean = (latents - shift) * scaling
        noise = torch.randn(clean.shape, generator=generator).to(clean.device)
        t = torch.full((len(clean),), timestep, dtype=torch.long, device=clean.device)
        noisy = scheduler.add_noise(clean, noise, t)
        prediction = unet(noisy, t, encoder_hidden_states=caption.expand(len(clean), -1, -1)).sample
        return scheduler.step(prediction, timestep, noisy).pred_original_sample / scaling + shift

    return denoise


def train_decoder(
    vae: AutoencoderKL,
    pixels: np.ndarray,
    config: DecoderConfig,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    denoiser: Denoiser | None = None,
) -> AutoencoderKL:
    """Fine-tune (or resume) the decoder of `vae` on uint8 N×H×W×3 images; returns it, saved in output_dir/final.

    `config.denoised_share` of each batch decodes `denoiser`'s latents (required when that share is positive).
    """
    if config.denoised_share > 0 and denoiser is None:
        raise ValueError("A positive denoised share needs a denoiser: the UNet of a prior to continue from.")
    out = Path(config.output_dir)
    final = out / "final"
    if (finished := finished_stage(out)) is not None:
        return finished
    config.save(out / "config.json")
    torch.manual_seed(config.seed)
    device = training_device()
    features = load_feature_net(config.feature_net).to(device)
    features.requires_grad_(False)
    discriminator = PatchDiscriminator(config.discriminator_channels).to(device)
    vae.to(device)
    vae.requires_grad_(False)
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate, betas=(0.5, 0.9))
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.learning_rate, betas=(0.5, 0.9))
    start_step = 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        vae.decoder.load_state_dict(state["decoder"])
        vae.post_quant_conv.load_state_dict(state["post_quant_conv"])
        discriminator.load_state_dict(state["discriminator"])
        optimizer.load_state_dict(state["optimizer"])
        disc_optimizer.load_state_dict(state["disc_optimizer"])
        start_step = state["step"]
        # The config's learning rate wins over the saved one, so a resumed run can be continued more gently.
        for group in [*optimizer.param_groups, *disc_optimizer.param_groups]:
            group["lr"] = config.learning_rate
    pixels = np.concatenate([pixels, pixels[:, :, ::-1]])
    vae.eval()
    latent_mean, latent_std = encode_pixels(vae, pixels)
    vae.decoder.train()
    generator = torch.Generator().manual_seed(config.seed + start_step)
    factor = pixels.shape[1] // latent_mean.shape[-1]
    latent_size = latent_mean.shape[-1]
    crop = max(1, min(latent_size, config.crop_size // factor))
    last_layer = vae.decoder.conv_out.weight
    started = time.time()
    step = start_step
    while step < config.max_train_steps:
        index = torch.randint(0, len(pixels), (config.train_batch_size,), generator=generator)
        y, x = (int(v) for v in torch.randint(0, latent_size - crop + 1, (2,), generator=generator))
        target = pixels_to_tensor(
            pixels[index.numpy(), y * factor : (y + crop) * factor, x * factor : (x + crop) * factor]
        )
        mean, std = latent_mean[index], latent_std[index]
        latents = (mean + std * torch.randn(mean.shape, generator=generator)).to(device)
        denoised = round(config.denoised_share * len(latents))
        if denoised:
            timestep = int(torch.randint(1, config.denoised_max_timestep + 1, (1,), generator=generator))
            latents[:denoised] = denoiser(latents[:denoised], timestep, generator)
        latents = latents[:, :, y : y + crop, x : x + crop]
        target = target.to(device)
        reconstruction = vae.decode(latents).sample
        pred_maps = feature_maps(features, reconstruction)
        with torch.no_grad():
            target_maps = feature_maps(features, target)
        l1 = (reconstruction - target).abs().mean()
        perceptual = perceptual_distance(pred_maps, target_maps)
        texture = texture_distance(pred_maps, target_maps)
        rec_loss = l1 + config.perceptual_weight * perceptual + config.texture_weight * texture
        use_gan = step >= config.adversarial_start and config.adversarial_weight > 0
        adversarial = torch.zeros(())
        gan_weight = torch.zeros(())
        if use_gan:
            discriminator.requires_grad_(False)
            adversarial = -discriminator(reconstruction).mean()
            gan_weight = config.adversarial_weight * _adaptive_weight(rec_loss, adversarial, last_layer)
        loss = rec_loss + gan_weight * adversarial
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        disc_loss = torch.zeros(())
        if use_gan:
            discriminator.requires_grad_(True)
            real = discriminator(target)
            fake = discriminator(reconstruction.detach())
            disc_loss = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
            disc_optimizer.zero_grad(set_to_none=True)
            disc_loss.backward()
            disc_optimizer.step()
        done = step = step + 1
        if (planned := replanned_steps(config, done, start_step, started)) is not None:
            config.max_train_steps = planned
        if done % 10 == 0:
            record = {
                "step": done,
                "l1": round(l1.item(), 5),
                "perceptual": round(perceptual.item(), 5),
                "texture": round(texture.item(), 6),
                "adversarial": round(adversarial.item(), 4),
                "gan_weight": round(float(gan_weight), 4),
                "discriminator": round(disc_loss.item(), 4),
                "elapsed_s": round(time.time() - started, 1),
            }
            append_log(out, record)
        if progress:
            progress(done, config.max_train_steps, f"decoder l1 {l1.item():.4f} perceptual {perceptual.item():.4f}")
        stop = should_stop is not None and should_stop()
        if done % config.checkpointing_steps == 0 or stop:
            atomic_save(
                {
                    "decoder": vae.decoder.state_dict(),
                    "post_quant_conv": vae.post_quant_conv.state_dict(),
                    "discriminator": discriminator.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "disc_optimizer": disc_optimizer.state_dict(),
                    "step": done,
                },
                checkpoint,
            )
        if stop:
            raise InterruptedError(f"Decoder training stopped at step {done}; resume to continue.")
    vae.requires_grad_(False)
    vae.eval()
    vae.to("cpu").save_pretrained(final)
    return vae


@torch.no_grad()
def round_trip_recognition(
    vae: AutoencoderKL,
    pixels: np.ndarray,
    labels: list[str],
    features: SteelFeatureNet | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Share of images whose autoencoder round trip (posterior mean) the steel feature network puts in their class."""
    features = features or load_feature_net()
    hits: dict[str, list[bool]] = {}
    batches = round_trip(vae, pixels, batch_size)
    for start, (_, decoded) in zip(range(0, len(pixels), batch_size), batches, strict=True):
        predicted = features.classify((decoded + 1) / 2).argmax(dim=1)
        for label, guess in zip(labels[start : start + batch_size], predicted.tolist(), strict=True):
            hits.setdefault(label, []).append(features.classes[guess] == label)
    return {label: float(np.mean(values)) for label, values in sorted(hits.items())}
