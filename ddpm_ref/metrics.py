"""Image-quality metrics for images in [−1, 1]: PSNR and SSIM via ``skimage.metrics``.

Both map [−1, 1] to [0, 1] first and pass ``data_range=1``: scoring [−1, 1] images with data_range=1
without the mapping doubles the error scale and lowers PSNR by 20·log10(2) ≈ 6.02 dB (data_range=2 on images
already mapped to [0, 1] raises it by as much).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

__all__ = ["psnr", "ssim", "psnr_per_image", "ssim_per_image", "to_unit_range"]


def to_unit_range(x: Tensor) -> np.ndarray:
    """[B, C, H, W] tensor in [−1, 1] → float64 numpy array in [0, 1] (clipped)."""
    return ((x.detach().to("cpu", torch.float64) + 1.0) / 2.0).clamp(0.0, 1.0).numpy()


def _pairs(x: Tensor, y: Tensor) -> tuple[np.ndarray, np.ndarray]:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected [B, C, H, W] tensors, got shape {tuple(x.shape)}")
    return to_unit_range(x), to_unit_range(y)


def psnr_per_image(x: Tensor, y: Tensor) -> list[float]:
    """PSNR in dB of each image pair, data range 1 after mapping to [0, 1]; list of B floats."""
    a, b = _pairs(x, y)
    return [float(peak_signal_noise_ratio(a[i], b[i], data_range=1.0)) for i in range(a.shape[0])]


def ssim_per_image(x: Tensor, y: Tensor) -> list[float]:
    """SSIM (Wang et al. 2004, 7×7 window) of each pair, channels on axis 0, data range 1; list of B floats."""
    a, b = _pairs(x, y)
    return [
        float(structural_similarity(a[i], b[i], data_range=1.0, channel_axis=0))
        for i in range(a.shape[0])
    ]


def psnr(x: Tensor, y: Tensor) -> float:
    """Mean PSNR (dB) over the batch of [B, C, H, W] images in [−1, 1]; inf when every pair is identical."""
    return float(np.mean(psnr_per_image(x, y)))


def ssim(x: Tensor, y: Tensor) -> float:
    """Mean SSIM over the batch of [B, C, H, W] images in [−1, 1]."""
    return float(np.mean(ssim_per_image(x, y)))
