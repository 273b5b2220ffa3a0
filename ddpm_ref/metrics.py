"""Image-quality metrics for images [N, C, H, W] in [−1, 1].

Pairwise (reconstruction): PSNR and SSIM via ``skimage.metrics``. Both map [−1, 1] to [0, 1] first and pass
``data_range=1``: scoring [−1, 1] images with data_range=1 without the mapping doubles the error scale and lowers
PSNR by 20·log10(2) ≈ 6.02 dB (data_range=2 on images already mapped to [0, 1] raises it by as much).

Between two sets (generation): :func:`ms_swd`, the multi-scale sliced Wasserstein distance of Karras et al. 2018
(Progressive Growing of GANs, §5 and appendix D), following the protocol of its published code:

- each image's Laplacian pyramid (5×5 binomial filter, mirror borders, cv2.pyrDown/pyrUp) from the image size
  down to 16 px: 256 px → 256, 128, 64, 32, 16 (the band-pass levels, then the 16-px low-pass residual);
- 128 random 7×7 neighbourhoods per image per level (descriptors of 7·7·C values);
- each channel of a level normalised to mean 0 and std 1 over that set's descriptors (per set, as the code does:
  so a global brightness or contrast shift is *not* seen; :func:`brightness_gap` reports that separately);
- the sliced Wasserstein distance (W1 along each direction: mean |difference| of the sorted projections) over
  4 repeats of 128 random unit directions, averaged; per level and the mean over levels, ×10³.

Where this differs from the paper: (1) images under 32 px would have a single level, so they get one more halving
(24 px → levels 24 and 12; ``pyramid_resolutions``); (2) the paper compares 16,384 images per side with the same
number of descriptors on both sides; here the sets may differ in size, and both sides draw 128 × the larger set's
size descriptors, spread evenly over each set's images. With few images (10 held-out faces) the distance carries a
sampling floor: read it against the yardstick (two real sets) printed beside it, not as an absolute figure.
Deterministic for a ``seed``. :func:`brightness_gap` is the 1-D Wasserstein distance between the two sets'
per-image mean brightness (scipy.stats.wasserstein_distance), in [−1, 1] units.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "psnr",
    "ssim",
    "psnr_per_image",
    "ssim_per_image",
    "to_unit_range",
    "MSSWD",
    "ms_swd",
    "laplacian_pyramid",
    "pyramid_resolutions",
    "sliced_wasserstein",
    "mean_brightness",
    "brightness_gap",
]


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
    from skimage.metrics import peak_signal_noise_ratio  # skimage and scipy load on first use, not with ddpm_ref

    a, b = _pairs(x, y)
    return [float(peak_signal_noise_ratio(a[i], b[i], data_range=1.0)) for i in range(a.shape[0])]


def ssim_per_image(x: Tensor, y: Tensor) -> list[float]:
    """SSIM (Wang et al. 2004, 7×7 window) of each pair, channels on axis 0, data range 1; list of B floats."""
    from skimage.metrics import structural_similarity

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


# ---------------------------------------------------------------------------------------------------------------
# Multi-scale sliced Wasserstein distance (Karras et al. 2018, §5 and appendix D)
# ---------------------------------------------------------------------------------------------------------------

#: the 5×5 binomial kernel of cv2.pyrDown and ProGAN's ``gaussian_filter``: [1, 4, 6, 4, 1]/16, outer product
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_RANGE_TOL = 1e-3  # images may overshoot [−1, 1] by float rounding, not more


@dataclass(frozen=True)
class MSSWD:
    """What :func:`ms_swd` returns: ``levels`` ((resolution in px, distance ×10³), …) finest first, and ``mean``
    over the levels (the paper's "avg" column)."""

    levels: tuple[tuple[int, float], ...]
    mean: float

    def __str__(self) -> str:
        return f"{self.mean:.1f} (" + ", ".join(f"{r}px {d:.1f}" for r, d in self.levels) + ")"


def _binomial_kernel(c: int, x: Tensor, gain: float = 1.0) -> Tensor:
    k1 = _BINOMIAL.to(x.device, x.dtype)
    return (torch.outer(k1, k1) * gain).expand(c, 1, 5, 5)


def _pyr_down(x: Tensor) -> Tensor:
    """cv2.pyrDown: the 5×5 binomial blur with mirror borders (scipy ``mode='mirror'`` is torch's ``reflect``),
    kept at every second row and column. [N, C, H, W] → [N, C, ⌈H/2⌉, ⌈W/2⌉]. The blur is evaluated only where
    it is kept (a stride-2 convolution: the same sums as blurring everything and subsampling, a quarter of them)."""
    k = _binomial_kernel(x.shape[1], x)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, stride=2, groups=x.shape[1])


def _pyr_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    """cv2.pyrUp: zeros between the samples, mirror borders, then the blur with 4× the kernel. [N, C, h, w] →
    [N, C, *size]. Computed as a stride-2 transposed convolution, which skips the products with the inserted
    zeros (equal to the zero-filled blur up to float rounding); the zero-filled image's mirror border is built
    from x's own samples: the first row/column mirrors x's second one, the last mirrors x's next-to-last one when
    the size is odd and repeats x's last one when it is even (the mirrored sample next to the edge is a zero)."""
    (h, w), c = size, x.shape[1]
    x = F.pad(x, (1, 0, 1, 0), mode="reflect")
    x = torch.cat([x, x[:, :, -1:] if h % 2 == 0 else x[:, :, -2:-1]], dim=2)
    x = torch.cat([x, x[:, :, :, -1:] if w % 2 == 0 else x[:, :, :, -2:-1]], dim=3)
    up = F.conv_transpose2d(x, _binomial_kernel(c, x, gain=4.0), stride=2, groups=c)
    return up[:, :, 4 : 4 + h, 4 : 4 + w]


def laplacian_pyramid(x: Tensor, num_levels: int) -> list[Tensor]:
    """ProGAN's ``generate_laplacian_pyramid``: band-pass levels finest first, then the low-pass residual.

    x [N, C, H, W] → ``num_levels`` tensors [N, C, ⌈H/2^i⌉, ⌈W/2^i⌉].
    """
    levels = [x]
    for _ in range(1, num_levels):
        levels.append(_pyr_down(levels[-1]))
        levels[-2] = levels[-2] - _pyr_up(levels[-1], (levels[-2].shape[-2], levels[-2].shape[-1]))
    return levels


def pyramid_resolutions(size: int, min_res: int = 16, nhood: int = 7) -> list[int]:
    """The pyramid's resolutions for ``size``-px images: halve while the result stays ≥ ``min_res`` (the paper: 16).

    Small-image adaptation: images under 2·min_res px would get one level (no multi-scale at all), so they are
    halved once more when a ``nhood``-px neighbourhood still fits: 24 px → [24, 12]; 256 px → [256, …, 16].
    """
    res = [size]
    while (res[-1] + 1) // 2 >= min_res:
        res.append((res[-1] + 1) // 2)
    if len(res) == 1 and (size + 1) // 2 >= nhood:
        res.append((size + 1) // 2)
    return res


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """Mean over the directions of the 1-D Wasserstein-1 distance of the projections (ProGAN's ``sliced_wasserstein``).

    a, b [M, D] with the same M; directions [D, P] with unit columns. For equal-size sets W1 along a direction is
    the mean |difference| of the sorted projections.
    """
    # one contiguous row per direction: numpy's row sort is faster than its column sort (same values), and
    # several times faster than torch's sort on a CPU
    pa = np.sort(np.ascontiguousarray((a @ directions).numpy().T), axis=1)
    pb = np.sort(np.ascontiguousarray((b @ directions).numpy().T), axis=1)
    return float(np.abs(pa - pb).mean(dtype=np.float64))


def _check_set(name: str, x: object, min_images: int) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an image set [N, C, H, W] in [-1, 1], got {got}")
    if x.shape[0] < min_images:
        raise ValueError(f"{name} holds {x.shape[0]} image(s); pass at least {min_images} per set")
    if not x.is_floating_point():
        raise ValueError(f"{name} has dtype {x.dtype}; pass float images in [-1, 1] (uint8: x / 127.5 - 1)")
    lo, hi = float(x.min()), float(x.max())
    if not (-1 - _RANGE_TOL <= lo and hi <= 1 + _RANGE_TOL):  # also catches NaN
        raise ValueError(f"{name} has values in [{lo:.3g}, {hi:.3g}]; images must lie in [-1, 1] "
                         "([0, 1] images: x * 2 - 1)")
    return x


def _descriptors(x: Tensor, num_levels: int, count: int, nhood: int, g: torch.Generator,
                 chunk: int) -> list[Tensor]:
    """``count`` random nhood×nhood neighbourhoods per pyramid level of the set x [N, C, H, W].

    Descriptor j comes from image ⌊j·N/count⌋ (128 per image when count = 128·N, the paper's setting); its top-left
    corner is uniform over the positions where the whole neighbourhood fits (ProGAN's ``randint(H, S − H)``).
    The positions depend only on the generator, the set's size and shape. Returns [count, C·nhood²] float32 per
    level, each channel normalised to mean 0, std 1 over the set (ProGAN's ``finalize_descriptors``).
    """
    n, c, h, w = x.shape
    shapes = [(h, w)]
    for _ in range(1, num_levels):
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    img = torch.arange(count) * n // count  # contiguous blocks: image i owns descriptors [⌈i·count/n⌉, …)
    corners = [(torch.randint(0, lh - nhood + 1, (count,), generator=g),
                torch.randint(0, lw - nhood + 1, (count,), generator=g)) for lh, lw in shapes]
    out = [torch.empty(count, c, nhood, nhood) for _ in shapes]
    d = torch.arange(nhood)
    bounds = torch.searchsorted(img, torch.arange(0, n + chunk, chunk).clamp_max(n)).tolist()
    for s, (lo, hi) in zip(range(0, n, chunk), itertools.pairwise(bounds), strict=True):
        pyramid = laplacian_pyramid(x[s : s + chunk].detach().to("cpu", torch.float32), num_levels)
        which = (img[lo:hi] - s)[:, None, None]
        for level, (ys, xs), o in zip(pyramid, corners, out, strict=True):
            rows = (ys[lo:hi, None] + d)[:, :, None]  # [k, nhood, 1]
            cols = (xs[lo:hi, None] + d)[:, None, :]  # [k, 1, nhood]
            o[lo:hi] = level[which, :, rows, cols].permute(0, 3, 1, 2)  # [k, nhood, nhood, C] → [k, C, …]
    for i, desc in enumerate(out):
        mean = desc.mean(dim=(0, 2, 3), keepdim=True)
        std = desc.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-8)
        out[i] = ((desc - mean) / std).reshape(count, -1)
    return out


def ms_swd(
    a: Tensor,
    b: Tensor,
    *,
    seed: int = 0,
    patches_per_image: int = 128,
    nhood: int = 7,
    dir_repeats: int = 4,
    dirs_per_repeat: int = 128,
    min_res: int = 16,
    same_positions: bool = False,
    chunk: int = 64,
) -> MSSWD:
    """Multi-scale sliced Wasserstein distance ×10³ between two image sets (Karras et al. 2018, §5; module docs).

    a [Na, C, H, W], b [Nb, C, H, W] in [−1, 1], Na, Nb ≥ 2, H, W ≥ 14. Both sides draw ``patches_per_image`` ×
    max(Na, Nb) descriptors per level. ``same_positions=True`` (needs Na = Nb) makes b's neighbourhoods sit where
    a's do, so a set against itself gives exactly 0; otherwise the two sides' positions are independent draws and a
    set against itself gives the sampling floor. Deterministic for a ``seed``; directions are shared by both sides.
    """
    _check_set("ms_swd: a", a, 2)
    _check_set("ms_swd: b", b, 2)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"ms_swd: the sets must have the same [C, H, W], got {tuple(a.shape[1:])} and "
                         f"{tuple(b.shape[1:])} (resize one, or map grayscale to RGB with x.expand(-1, 3, -1, -1))")
    if min(a.shape[-2:]) < 2 * nhood:
        raise ValueError(f"ms_swd: images of {a.shape[-2]}×{a.shape[-1]} px are too small for {nhood}×{nhood} "
                         f"neighbourhoods at two scales; need at least {2 * nhood}×{2 * nhood}")
    if same_positions and a.shape[0] != b.shape[0]:
        raise ValueError(f"ms_swd: same_positions needs sets of equal size, got {a.shape[0]} and {b.shape[0]}")
    resolutions = pyramid_resolutions(min(a.shape[-2:]), min_res, nhood)
    count = patches_per_image * max(a.shape[0], b.shape[0])
    seeds = (seed * 3 + 1, seed * 3 + (1 if same_positions else 2))
    da = _descriptors(a, len(resolutions), count, nhood, torch.Generator().manual_seed(seeds[0]), chunk)
    db = _descriptors(b, len(resolutions), count, nhood, torch.Generator().manual_seed(seeds[1]), chunk)
    g = torch.Generator().manual_seed(seed * 3)
    levels = []
    for res, xa, xb in zip(resolutions, da, db, strict=True):
        dists = []
        for _ in range(dir_repeats):
            dirs = torch.randn(xa.shape[1], dirs_per_repeat, generator=g)
            dists.append(sliced_wasserstein(xa, xb, dirs / dirs.norm(dim=0, keepdim=True)))
        levels.append((res, 1e3 * float(np.mean(dists))))
    return MSSWD(tuple(levels), float(np.mean([d for _, d in levels])))


def mean_brightness(x: Tensor) -> Tensor:
    """Per-image mean over channels and pixels: [N, C, H, W] → [N] (float64)."""
    return x.detach().to("cpu", torch.float64).mean(dim=(1, 2, 3))


def brightness_gap(a: Tensor, b: Tensor) -> float:
    """1-D Wasserstein distance between the per-image mean brightness of sets a and b ([−1, 1] units)."""
    _check_set("brightness_gap: a", a, 1)
    _check_set("brightness_gap: b", b, 1)
    from scipy.stats import wasserstein_distance  # loaded on first use, not with every lesson

    return float(wasserstein_distance(mean_brightness(a).numpy(), mean_brightness(b).numpy()))
