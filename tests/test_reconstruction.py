"""Lesson 6 checks: ``reconstruct`` (partial noising then denoising), ``psnr`` and ``ssim``.

Metrics take [B, C, H, W] images in [−1, 1], map them to [0, 1] and score each pair with data range 1,
then average over the batch. PSNR = 10·log10(1/MSE) on the [0, 1] scale; scoring [−1, 1] images with data
range 1 (forgetting the mapping) doubles the error scale and makes it 20·log10(2) ≈ 6.02 dB too low.
SSIM is skimage's (7×7 window, channels on axis 0).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

import ddpm_ref as R
from tests._asserts import Recorder, call, expect_close, expect_float, expect_tensor, fmt, timesteps_summary
from tests._fixtures import T, gen, seed_schedule
from tests.harness import Failure, check

SIX_DB = 20 * math.log10(2)  # 6.0206 dB: how much too low PSNR is when [−1, 1] images are scored as [0, 1]


# ---------------------------------------------------------------------------------------- reconstruct


def _reconstruct(impl, model, x0, t_start, s, **kwargs):
    return call(impl.reconstruct, model, x0, t_start, s, progress=False, **kwargs)


@check("reconstruct")
def test_reconstruct_starts_at_t_start(impl) -> None:
    """x_{t_start} = q_sample(x0, t_start, noise), then one model call at each t = t_start, …, 0 (t_start = 100)."""
    s = seed_schedule()
    x0 = torch.rand(3, 1, 4, 4, generator=gen(0)) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen(1))
    model = Recorder(lambda x, t: torch.zeros_like(x))
    out = _reconstruct(impl, model, x0, 100, s, noise=noise, generator=gen(2))
    expect_tensor(out, "reconstruct(model, x0 [3, 1, 4, 4], t_start=100, schedule, noise=...)", shape=x0.shape,
                  dtype=x0.dtype)
    ts, expected = model.ts(), list(range(100, -1, -1))
    if ts != expected:
        if ts == list(range(T - 1, -1, -1)):
            hint = "noise x0 to t_start only and start the reverse steps at t_start, not at T − 1"
        elif ts == expected[::-1]:
            hint = "denoise from t_start down to 0, not upwards"
        else:
            hint = "for t in range(t_start, -1, -1): x = p_sample(model, x, t, schedule, ...)"
        raise Failure(f"reconstruct(t_start=100) should call the model at t = {timesteps_summary(expected)}; "
                      f"it called it at t = {timesteps_summary(ts)}.", hint)
    ab = s.alpha_bars[100]
    expect_close(model.calls[0][0], ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double(),
                 "the first x_t the model sees", atol=1e-5, rtol=1e-5, diagnoses=[
                     (x0, "noise x0 first: x_{t_start} = q_sample(x0, t_start, noise, schedule)"),
                     (lambda: R.q_sample(x0, T - 1, noise, s),
                      "noise x0 to t_start only (not to T − 1): that would be plain generation"),
                 ], hint="x_{t_start} = q_sample(x0, t_start, noise, schedule), using the noise given")


@check("reconstruct")
def test_reconstruct_keeps_the_image(impl) -> None:
    """Data = constant 8×8 images ±0.6 (50/50); reconstructing +0.6 from t_start = 150 gives +0.6 for all 200 samples.

    Starting from T − 1 (plain generation) returns −0.6 for about 35% of them.
    """
    s = seed_schedule()
    oracle = R.GaussianMixtureOracle(s, [-0.6, 0.6], [0.0, 0.0])
    x0 = torch.full((200, 1, 8, 8), 0.6)
    out = _reconstruct(impl, oracle, x0, 150, s, generator=gen(3))
    expect_tensor(out, "reconstruct(oracle, x0 [200, 1, 8, 8], t_start=150, schedule)", shape=x0.shape,
                  dtype=x0.dtype)
    err = (out - x0).abs().flatten(1).amax(1)
    if float(err.max()) > 1e-2:
        kept = int((err < 1e-2).sum())
        raise Failure(
            f"with data = constant images of ±0.6, reconstructing +0.6 from t_start = 150 should give +0.6 back; "
            f"only {kept} of 200 did (worst off by {float(err.max()):.3g}).",
            "noise x0 to t_start (q_sample), then denoise from t_start, not from T − 1",
        )


@check("reconstruct", hidden=True)
def test_reconstruct_return_noised(impl) -> None:
    """return_noised=True gives (reconstruction, x_{t_start}) with x_{t_start} = q_sample(x0, t_start, noise)."""
    s = seed_schedule()
    x0 = torch.rand(2, 1, 4, 4, generator=gen(4)) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen(5))
    out = _reconstruct(impl, Recorder(lambda x, t: torch.zeros_like(x)), x0, 20, s, noise=noise, return_noised=True)
    if not isinstance(out, tuple) or len(out) != 2:
        raise AssertionError("reconstruct(..., return_noised=True) should return (reconstruction, x_t_start)")
    expect_tensor(out[0], "the reconstruction", shape=x0.shape, dtype=x0.dtype)
    expect_close(out[1], R.q_sample(x0, 20, noise, s), "the returned x_{t_start}", atol=1e-5, rtol=1e-5,
                 hint="return x_{t_start} = q_sample(x0, t_start, noise, schedule), where the reverse steps start")


# ---------------------------------------------------------------------------------------- psnr


def _images(b: int, seed: int, c: int = 3, hw: int = 8) -> Tensor:
    return torch.rand(b, c, hw, hw, generator=gen(seed)) * 1.6 - 0.8  # inside [−1, 1] with room for ±0.2 noise


def _signs(shape: tuple[int, ...], seed: int) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen(seed)).float() * 2 - 1


@check("psnr")
def test_psnr_identical_is_inf(impl) -> None:
    """psnr(x, x) = inf (MSE = 0), as a Python float."""
    x = _images(2, 0)
    with warnings.catch_warnings():  # log10(1/0): the division by zero is the point here
        warnings.simplefilter("ignore", RuntimeWarning)
        value = expect_float(impl.psnr(x, x.clone()), "psnr(x, x)")
    if value != math.inf:
        raise Failure(f"psnr of identical images should be inf (the MSE is 0), got {value}.",
                      "10·log10(1/MSE) with MSE = 0 is +inf; skimage's peak_signal_noise_ratio returns it")


@check("psnr")
def test_psnr_known_noise(impl) -> None:
    """Every pixel off by ±0.1 on [−1, 1] = ±0.05 on [0, 1]: MSE = 0.0025, PSNR = 10·log10(1/0.0025) = 26.02 dB."""
    x = _images(2, 1)
    y = x + 0.1 * _signs(tuple(x.shape), 2)
    mse = (0.1 / 2) ** 2  # by hand, on the [0, 1] scale
    expected = 10 * math.log10(1 / mse)  # 26.0206 dB
    value = expect_float(impl.psnr(x, y), "psnr(x, x ± 0.1)")
    expect_close(value, expected, "psnr(x, x ± 0.1) in dB", atol=1e-3, rtol=0, diagnoses=[
        (expected - SIX_DB, f"that is {SIX_DB:.2f} dB too low: the images are in [−1, 1], twice the error scale of "
                            "[0, 1]; map them with (x + 1)/2 before scoring with data_range=1 (or use data_range=2)"),
        (expected + SIX_DB, f"that is {SIX_DB:.2f} dB too high: the data range must match the scale: data_range=1 "
                            "for images mapped to [0, 1], data_range=2 for [−1, 1]"),
        (10 * math.log10(2 / (0.1**2)), "data_range enters squared: PSNR = 10·log10(range²/MSE)"),
        (10 * math.log10(mse), "PSNR = 10·log10(1/MSE) (MAX²/MSE), not 10·log10(MSE)"),
    ], hint="PSNR = 10·log10(1/MSE) with MSE on the [0, 1] scale")


@check("psnr")
def test_psnr_batch_mean(impl) -> None:
    """The mean of the per-image PSNRs: 26.02 dB and 13.98 dB average to 20.00 dB (not 16.73 from the pooled MSE)."""
    x = _images(2, 3)
    scale = torch.tensor([0.1, 0.4]).reshape(2, 1, 1, 1)
    y = x + scale * _signs(tuple(x.shape), 4)
    y = y.clamp(-1, 1)
    per_image = [10 * math.log10(1 / float((((y[i] - x[i]) / 2) ** 2).mean())) for i in range(2)]
    pooled = 10 * math.log10(1 / float((((y - x) / 2) ** 2).mean()))
    value = expect_float(impl.psnr(x, y), "psnr of a batch of 2")
    expected = sum(per_image) / 2
    expect_close(value, expected, f"psnr of a batch whose images score {per_image[0]:.2f} and {per_image[1]:.2f} dB",
                 atol=1e-3, rtol=0, diagnoses=[
                     (pooled, "score each image on its own and average the PSNRs; one MSE over the whole batch "
                              "gives the PSNR of the pooled error"),
                     (expected - SIX_DB, f"that is {SIX_DB:.2f} dB too low: map [−1, 1] to [0, 1] first"),
                     (pooled - SIX_DB, "map [−1, 1] to [0, 1] first, and average per-image PSNRs"),
                     (per_image[0], "average over every image of the batch, not just the first"),
                 ], hint="psnr = mean over i of 10·log10(1/MSE_i)")


# ---------------------------------------------------------------------------------------- ssim


def _smooth_images(b: int, seed: int, c: int = 3, hw: int = 24) -> Tensor:
    """Smooth random images in [−0.8, 0.8] (SSIM is about structure: blur some noise)."""
    x = torch.randn(b, c, hw // 4, hw // 4, generator=gen(seed))
    x = torch.nn.functional.interpolate(x, size=(hw, hw), mode="bilinear", align_corners=False)
    return 0.8 * torch.tanh(x)


def _skimage_ssim(x: Tensor, y: Tensor, *, mapped: bool = True, data_range: float = 1.0, **kw) -> float:
    a, b = x.double().numpy(), y.double().numpy()
    if mapped:
        a, b = (a + 1) / 2, (b + 1) / 2
    return float(np.mean([structural_similarity(a[i], b[i], data_range=data_range, **kw) for i in range(len(a))]))


@check("ssim")
def test_ssim_identical_is_one(impl) -> None:
    """ssim(x, x) = 1, as a Python float."""
    x = _smooth_images(2, 0)
    value = expect_float(impl.ssim(x, x.clone()), "ssim(x, x)")
    expect_close(value, 1.0, "ssim(x, x)", atol=1e-6, rtol=0, hint="identical images have SSIM 1")


@check("ssim")
def test_ssim_matches_skimage(impl) -> None:
    """Mean over the batch of skimage SSIM on [0, 1] images (data_range=1, channel_axis=0), 3 × 3×24×24 pairs."""
    x = _smooth_images(3, 1)
    y = (x + 0.15 * torch.randn(x.shape, generator=gen(2))).clamp(-1, 1)
    value = expect_float(impl.ssim(x, y), "ssim(x, y)")
    expected = _skimage_ssim(x, y, channel_axis=0)
    expect_close(value, expected, "ssim(x, y) of 3 noisy image pairs", atol=1e-4, rtol=0, diagnoses=[
        (lambda: _skimage_ssim(x, y, mapped=False, channel_axis=0),
         "images are in [−1, 1]: map them to [0, 1] with (x + 1)/2 before SSIM with data_range=1"),
        (lambda: _skimage_ssim(x, y, mapped=False, data_range=2.0, channel_axis=0),
         "map [−1, 1] to [0, 1] and use data_range=1: SSIM's constants depend on the range, and unlike PSNR it "
         "is not shift-invariant"),
        (lambda: _skimage_ssim(x, y), "pass channel_axis=0 for [C, H, W] images (else C is read as a spatial axis)"),
        (lambda: _skimage_ssim(x[:1], y[:1], channel_axis=0), "average over every image of the batch"),
    ], hint="mean over i of structural_similarity((x_i + 1)/2, (y_i + 1)/2, data_range=1, channel_axis=0)")


# ---------------------------------------------------------------------------------------- reference facts


def test_psnr_without_the_range_mapping_is_6db_too_low() -> None:
    """Scoring [−1, 1] images as if they were [0, 1] doubles the error scale: −20·log10(2) = −6.02 dB exactly."""
    from skimage.metrics import peak_signal_noise_ratio

    x = _images(3, 5)
    y = x + 0.05 * torch.randn(x.shape, generator=gen(6))
    y = y.clamp(-1, 1)
    right = R.psnr(x, y)
    wrong = float(np.mean([peak_signal_noise_ratio(x[i].double().numpy(), y[i].double().numpy(), data_range=1.0)
                           for i in range(3)]))
    assert abs((right - wrong) - SIX_DB) < 1e-9, (wrong, right)
    assert abs(right - np.mean([10 * math.log10(4 / float(((x[i] - y[i]).double() ** 2).mean())) for i in range(3)])) \
        < 1e-9, fmt(torch.tensor(right))
