"""The Gaussian-diffusion math: forward process, posterior and the training loss (Ho et al. 2020).

Shapes: images ``x0``, ``x_t``, ``noise`` are [B, C, H, W] (any [B, ...] works); ``t`` is a LongTensor [B]
of 0-based timesteps (an int is broadcast). Every constant comes from a :class:`NoiseSchedule`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schedule import NoiseSchedule, as_timesteps

__all__ = ["q_sample", "predict_x0", "predict_eps", "q_posterior", "ddpm_loss", "randn"]


def q_sample(x0: Tensor, t: Tensor | int, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Sample q(x_t | x_0) in one jump: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (eq. 4). Returns [B, C, H, W]."""
    _same_shape(x0, noise, "x0", "noise")
    return (
        schedule.gather(schedule.sqrt_alpha_bars, t, x0) * x0
        + schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, x0) * noise
    )


def predict_x0(x_t: Tensor, t: Tensor | int, eps: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Invert eq. 4 for x0 given the noise: x̂0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t. Returns [B, C, H, W]."""
    _same_shape(x_t, eps, "x_t", "eps")
    return (
        x_t - schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, x_t) * eps
    ) / schedule.gather(schedule.sqrt_alpha_bars, t, x_t)


def predict_eps(x_t: Tensor, t: Tensor | int, x0: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Invert eq. 4 for the noise given x0: ε = (x_t − √ᾱ_t·x0) / √(1−ᾱ_t). Returns [B, C, H, W]."""
    _same_shape(x_t, x0, "x_t", "x0")
    return (
        x_t - schedule.gather(schedule.sqrt_alpha_bars, t, x_t) * x0
    ) / schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, x_t)


def q_posterior(x0: Tensor, x_t: Tensor, t: Tensor | int, schedule: NoiseSchedule) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t−1} | x_t, x_0) (eqs. 6–7).

    μ̃_t = √ᾱ_{t−1}β_t/(1−ᾱ_t)·x0 + √α_t(1−ᾱ_{t−1})/(1−ᾱ_t)·x_t  →  [B, C, H, W];
    β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t  →  [B, 1, 1, 1] (0 at t = 0, where the posterior is x0 itself).
    """
    _same_shape(x0, x_t, "x0", "x_t")
    mean = (
        schedule.gather(schedule.posterior_mean_coef_x0, t, x_t) * x0
        + schedule.gather(schedule.posterior_mean_coef_xt, t, x_t) * x_t
    )
    return mean, schedule.gather(schedule.posterior_variance, t, x_t)


def ddpm_loss(
    model: nn.Module,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L_simple = E_{t,x0,ε} ‖ε − ε_θ(√ᾱ_t·x0 + √(1−ᾱ_t)·ε, t)‖² (eq. 14, Algorithm 1); a scalar.

    ``t`` defaults to uniform draws from {0, …, T−1} and ``noise`` to N(0, I), both from ``generator``.
    The mean squared error is taken in float32 even when the model runs under autocast.
    """
    if t is None:
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=gen_device).to(x0.device)
    else:
        t = as_timesteps(t, x0)
    if noise is None:
        noise = randn(x0.shape, generator=generator, like=x0)
    x_t = q_sample(x0, t, noise, schedule)
    eps_pred = model(x_t, t)
    _same_shape(eps_pred, noise, "model output", "noise")
    return F.mse_loss(eps_pred.float(), noise.float())


def randn(shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """N(0, I) noise of ``shape`` in ``like``'s dtype and device, drawn on the generator's own device."""
    gen_device = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=like.dtype).to(like.device)


def _same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
