"""Image losses of the prior's autoencoder stages: spectral, perceptual and texture distances.

The perceptual network is the shipped steel feature network (it ships offline, where LPIPS's VGG cannot).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.evaluation.features import SteelFeatureNet


def spectral_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between log-amplitude spectra: rewards keeping fine texture that plain L1 lets blur away.

    The log makes a missing weak high frequency cost as much as a wrong strong low one.
    """
    pred_amp = torch.fft.rfft2(prediction.float(), norm="ortho").abs()
    target_amp = torch.fft.rfft2(target.float(), norm="ortho").abs()
    return (torch.log(pred_amp + 1e-2) - torch.log(target_amp + 1e-2)).abs().mean()


def feature_maps(net: SteelFeatureNet, images: torch.Tensor) -> list[torch.Tensor]:
    """Activations of the stem and of every conv block for images in [-1, 1], at their own scale.

    No resize: a crop is seen at the pixel scale the network learnt (it is convolutional up to its pooling).
    """
    x = ((images + 1) / 2).mean(dim=1, keepdim=True)
    x = net.stem((x - net.mean) / net.std)
    maps = [x]
    for module in net.blocks:
        x = module(x)
        if not isinstance(module, nn.MaxPool2d):
            maps.append(x)
    return maps


def perceptual_distance(pred_maps: list[torch.Tensor], target_maps: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS without learnt weights: squared distance of channel-normalised activations, averaged over layers."""
    total = 0.0
    for p, t in zip(pred_maps, target_maps, strict=True):
        p = p / (p.norm(dim=1, keepdim=True) + 1e-8)
        t = t / (t.norm(dim=1, keepdim=True) + 1e-8)
        total = total + (p - t).pow(2).sum(dim=1).mean()
    return total / len(pred_maps)


def gram(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def texture_distance(pred_maps: list[torch.Tensor], target_maps: list[torch.Tensor]) -> torch.Tensor:
    """Gram-matrix (texture statistics) L1, averaged over layers."""
    return sum((gram(p) - gram(t)).abs().mean() for p, t in zip(pred_maps, target_maps, strict=True)) / len(pred_maps)
