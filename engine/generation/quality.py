"""Per-sample quality of a masked repaint: is the background preserved, and did the masked region change?"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

# Wang et al. (2004): Gaussian window σ 1.5, K1 0.01, K2 0.03 on 8-bit data.
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
# Identical images have infinite PSNR; JSON has no infinity, so it is reported as this ceiling.
PSNR_CEILING_DB = 100.0
# Beyond this many σ the Gaussian window has no weight: pixels farther than that from a change keep SSIM 1.
SSIM_REACH_PX = int(4 * SSIM_SIGMA) + 1


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of every pixel's Gaussian neighbourhood between two grey float images (0–255)."""
    mu_a, mu_b = gaussian_filter(a, SSIM_SIGMA), gaussian_filter(b, SSIM_SIGMA)
    var_a = gaussian_filter(a * a, SSIM_SIGMA) - mu_a**2
    var_b = gaussian_filter(b * b, SSIM_SIGMA) - mu_b**2
    cov = gaussian_filter(a * b, SSIM_SIGMA) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    return numerator / ((mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2))


def psnr(squared_error_sum: float, count: int) -> float:
    """PSNR in dB of 8-bit data from a sum of squared errors over `count` pixels (capped at the ceiling)."""
    if count == 0 or squared_error_sum == 0:
        return PSNR_CEILING_DB
    return float(min(PSNR_CEILING_DB, 10 * np.log10(255.0**2 * count / squared_error_sum)))


def masked_quality(source: Image.Image, output: Image.Image, mask: np.ndarray) -> dict[str, float]:
    """Background preservation outside `mask` and change inside it, on grey values.

    background_psnr / background_ssim: output vs source outside the drawn mask (the feathered rim counts as
    background, so a visible seam lowers them); mask_change: mean absolute change inside the mask (0–1);
    mask_ssim: SSIM inside the mask (low: the defect region was repainted).
    """
    a, b = _gray(source), _gray(output)
    if a.shape != b.shape or a.shape != mask.shape:
        raise ValueError(f"Source {a.shape}, output {b.shape} and mask {mask.shape} must have the same size.")
    changed = a != b
    rows, cols = np.nonzero(changed | mask)
    y0, y1 = max(rows.min() - SSIM_REACH_PX, 0), rows.max() + SSIM_REACH_PX + 1
    x0, x1 = max(cols.min() - SSIM_REACH_PX, 0), cols.max() + SSIM_REACH_PX + 1
    # Outside this crop both images are identical over the whole Gaussian window, so SSIM there is exactly 1.
    local = ssim_map(a[y0:y1, x0:x1], b[y0:y1, x0:x1])
    inside_crop = mask[y0:y1, x0:x1]
    outside = ~mask
    n_outside = int(outside.sum())
    untouched = n_outside - int((~inside_crop).sum())
    background_ssim = (float(local[~inside_crop].sum()) + untouched) / n_outside if n_outside else 1.0
    difference = b - a
    return {
        "background_psnr": round(psnr(float((difference[outside] ** 2).sum()), n_outside), 3),
        "background_ssim": round(background_ssim, 5),
        "mask_change": round(float(np.abs(difference[mask]).mean() / 255), 5),
        "mask_ssim": round(float(local[inside_crop].mean()), 5),
    }
