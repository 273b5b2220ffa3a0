"""The Gaussian-diffusion math: forward process, posterior and the training loss (Ho et al. 2020), and the
v-parametrisation of the same model (Salimans & Ho 2022).

Shapes: images ``x0``, ``x_t``, ``noise`` are [B, C, H, W] (any [B, ...] works); ``t`` is a LongTensor [B]
of 0-based timesteps (an int is broadcast). Every constant comes from a :class:`NoiseSchedule`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schedule import NoiseSchedule, as_timesteps

__all__ = ["q_sample", "predict_x0", "predict_eps", "q_posterior", "ddpm_loss", "v_target", "VPrediction", "v_loss",
           "randn"]


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
    t, noise = _draw_t_and_noise(x0, schedule, t, noise, generator)
    eps_pred = model(q_sample(x0, t, noise, schedule), t)
    _same_shape(eps_pred, noise, "model output", "noise")
    return F.mse_loss(eps_pred.float(), noise.float())


def v_target(x0: Tensor, noise: Tensor, t: Tensor | int, schedule: NoiseSchedule) -> Tensor:
    """The velocity v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho 2022, §4), the v-parametrisation's target; [B, C, H, W]."""
    _same_shape(x0, noise, "x0", "noise")
    return (
        schedule.gather(schedule.sqrt_alpha_bars, t, x0) * noise
        - schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, x0) * x0
    )


class VPrediction(nn.Module):
    """A network ``net(x_t, t, ...)`` that predicts v (:func:`v_target`), presented as an ε-model.

    ``forward(x_t, t, ...)`` returns ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂ [B, C, H, W], so every sampler, the reconstruction and
    DDIM run it unchanged; then x̂0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂ (:func:`predict_x0` of that ε̂), whose error is at most
    the error of v̂ at every t, where an ε-network's error is multiplied by √((1−ᾱ_t)/ᾱ_t) (×4.5 at the seed's
    ᾱ_{T−1}, ×6000 at the cosine schedule's). ``output="v"`` returns v̂ itself (the training target of
    :func:`v_loss`). The schedule is an attribute, not buffers: checkpoints hold the network's weights only.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.net, self.schedule = net, schedule

    def forward(self, x_t: Tensor, t: Tensor, *args, output: str = "eps", **kwargs) -> Tensor:
        v = self.net(x_t, t, *args, **kwargs)
        if output == "v":
            return v
        if output != "eps":
            raise ValueError(f"output must be 'eps' or 'v', got {output!r}")
        s = self.schedule  # ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂
        return s.gather(s.sqrt_one_minus_alpha_bars, t, v) * x_t.to(v.dtype) + s.gather(s.sqrt_alpha_bars, t, v) * v


def v_loss(model: nn.Module, x0: Tensor, schedule: NoiseSchedule, *, t: Tensor | None = None,
           noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """E_{t,x0,ε} ‖v − v_θ(x_t, t)‖² with x_t as in eq. 4 (Salimans & Ho 2022); a scalar, for a :class:`VPrediction`.

    Equal to L_simple weighted by 1/ᾱ_t (‖v̂ − v‖² = ‖ε̂ − ε‖²/ᾱ_t): the noisiest steps, where each image's overall
    brightness and layout are decided, count most. ``t`` and ``noise`` are drawn as in :func:`ddpm_loss`.
    """
    t, noise = _draw_t_and_noise(x0, schedule, t, noise, generator)
    v_pred = model(q_sample(x0, t, noise, schedule), t, output="v")
    target = v_target(x0, noise, t, schedule)
    _same_shape(v_pred, target, "model output", "v")
    return F.mse_loss(v_pred.float(), target.float())


def _draw_t_and_noise(x0: Tensor, schedule: NoiseSchedule, t: Tensor | None, noise: Tensor | None,
                      generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """t uniform in {0, …, T−1} [B] and ε ~ N(0, I) like x0, both from ``generator``, unless given."""
    if t is None:
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=gen_device).to(x0.device)
    else:
        t = as_timesteps(t, x0)
    if noise is None:
        noise = randn(x0.shape, generator=generator, like=x0)
    return t, noise


def randn(shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """N(0, I) noise of ``shape`` in ``like``'s dtype and device, drawn on the generator's own device."""
    gen_device = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=like.dtype).to(like.device)


def _same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
