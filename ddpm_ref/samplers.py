"""Reverse process: ancestral DDPM sampling (Algorithm 2), DDIM (Song et al. 2021) and reconstruction.

``model(x_t, t)`` predicts the noise ε_θ [B, C, H, W] from x_t [B, C, H, W] and t, a LongTensor [B] of
0-based timesteps. The chain starts at t = T−1 and the step at t = 0 returns the clean image, with no
noise added (the convention of ``diffusers``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from .diffusion import predict_eps, predict_x0, q_posterior, q_sample, randn
from .progress import progress_bar
from .schedule import NoiseSchedule, as_timesteps

__all__ = [
    "p_sample",
    "p_sample_loop",
    "sample",
    "ddim_timesteps",
    "ddim_step",
    "ddim_sample",
    "reconstruct",
]

Variance = Literal["posterior", "beta"]
Spacing = Literal["trailing", "leading", "linspace"]


@torch.no_grad()
def p_sample(
    model: nn.Module,
    x_t: Tensor,
    t: Tensor | int,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    variance: Variance = "posterior",
    noise: Tensor | None = None,
) -> Tensor:
    """One step of Algorithm 2: x_{t−1} = μ̃_t(x̂0, x_t) + σ_t·z, z ~ N(0, I); [B, C, H, W].

    x̂0 = (x_t − √(1−ᾱ_t)·ε_θ)/√ᾱ_t is clipped to [−1, 1] when ``clip_x0``; μ̃_t is eq. 7. σ_t² is
    β̃_t (``variance="posterior"``, the default) or β_t (``"beta"``); both choices are in §3.2.
    No noise is added where t = 0: that step returns μ̃_0, the clean estimate.
    """
    t = as_timesteps(t, x_t)
    schedule.check_t(t)
    eps = model(x_t, t)
    x0 = predict_x0(x_t, t, eps.to(x_t.dtype), schedule)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    mean, post_var = q_posterior(x0, x_t, t, schedule)
    if variance == "posterior":
        var = post_var
    elif variance == "beta":
        var = schedule.gather(schedule.betas, t, x_t)
    else:
        raise ValueError(f"variance must be 'posterior' (β̃_t) or 'beta' (β_t), got {variance!r}")
    if noise is None:
        noise = randn(x_t.shape, generator=generator, like=x_t)
    nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
    return mean + nonzero * var.sqrt() * noise


def _steps_to_keep(T_from: int, intermediate_steps: Iterable[int] | None, n: int = 10) -> set[int]:
    if intermediate_steps is not None:
        return {int(s) for s in intermediate_steps}
    return {int(round(v)) for v in np.linspace(T_from, 0, n)}


@torch.no_grad()
def p_sample_loop(
    model: nn.Module,
    x_t: Tensor,
    t_start: int,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    variance: Variance = "posterior",
    progress: bool = True,
    return_intermediates: bool = False,
    intermediate_steps: Iterable[int] | None = None,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """Run the reverse chain from x_{t_start} through t = t_start, …, 0 and return the clean image.

    With ``return_intermediates`` also returns {t: x_t} (on the CPU) for the chosen t
    (default: 10 evenly spaced from t_start down to 0), where x_t is the input to the step at t.
    """
    if not 0 <= t_start < schedule.T:
        raise ValueError(f"t_start must be in [0, {schedule.T - 1}] (0-based), got {t_start}")
    keep = _steps_to_keep(t_start, intermediate_steps) if return_intermediates else set()
    frames: dict[int, Tensor] = {}
    x = x_t
    for t in progress_bar(range(t_start, -1, -1), desc="DDPM sampling", disable=not progress, leave=False):
        if t in keep:
            frames[t] = x.detach().cpu()
        x = p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, variance=variance)
    return (x, frames) if return_intermediates else x


def _default_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


def _initial_noise(model: nn.Module, shape: Sequence[int], generator: torch.Generator | None,
                   device: torch.device | str | None, x_T: Tensor | None) -> Tensor:
    """Where every sampler starts: x_T ~ N(0, I) of ``shape`` from ``generator`` on the model's device (or
    ``device``), or the ``x_T`` given, moved there (the caller's tensor is not changed)."""
    device = _default_device(model, device)
    if x_T is None:
        return randn(tuple(shape), generator=generator, like=torch.empty(0, device=device))
    return x_T.to(device)


def _walk(ts: Sequence[int], x: Tensor, step: Callable[[Tensor, int, int], Tensor], *, desc: str, progress: bool,
          return_intermediates: bool) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """x through ``step(x, t, t_prev)`` for each t of the decreasing grid ``ts`` (t_prev: the next t, −1 after the
    last), under a progress bar; with ``return_intermediates`` also {t: x before the step at t} (CPU)."""
    frames: dict[int, Tensor] = {}
    for i, t in enumerate(progress_bar(ts, desc=desc, disable=not progress, leave=False)):
        if return_intermediates:
            frames[t] = x.detach().cpu()
        x = step(x, t, ts[i + 1] if i + 1 < len(ts) else -1)
    return (x, frames) if return_intermediates else x


@torch.no_grad()
def sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    return_intermediates: bool = False,
    intermediate_steps: Iterable[int] | None = None,
    progress: bool = True,
    clip_x0: bool = True,
    variance: Variance = "posterior",
    x_T: Tensor | None = None,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """Algorithm 2: draw x_{T−1} ~ N(0, I) of ``shape`` [B, C, H, W] and denoise it for all T steps.

    Returns the samples [B, C, H, W] (and {t: x_t} with ``return_intermediates``; see p_sample_loop).
    ``x_T`` replaces the starting noise (to reuse fixed noise for previews).
    """
    return p_sample_loop(
        model, _initial_noise(model, shape, generator, device, x_T), schedule.T - 1, schedule,
        generator=generator, clip_x0=clip_x0, variance=variance, progress=progress,
        return_intermediates=return_intermediates, intermediate_steps=intermediate_steps,
    )


def ddim_timesteps(T: int, steps: int, spacing: Spacing = "trailing") -> list[int]:
    """The decreasing subsequence of {0, …, T−1} that DDIM visits (spacings as in ``diffusers``).

    ``trailing`` starts at T−1 (Lin et al. 2023), ``leading`` at (steps−1)·⌊T/steps⌋,
    ``linspace`` spreads from T−1 to 0.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"DDIM steps must be between 1 and T={T}, got {steps}")
    if spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    elif spacing == "leading":
        ts = (np.arange(0, steps) * (T // steps))[::-1]
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, steps))[::-1].astype(np.int64)
    else:
        raise ValueError(f"spacing must be 'trailing', 'leading' or 'linspace', got {spacing!r}")
    return [int(v) for v in ts]


@torch.no_grad()
def ddim_step(
    model: nn.Module,
    x_t: Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    *,
    eta: float = 0.0,
    clip_x0: bool = True,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM update from t to t_prev < t (Song et al. 2021, eq. 12); t_prev = −1 means ᾱ = 1.

    x_{t_prev} = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z with σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev).
    When x̂0 is clipped, ε̂ is recomputed from the clipped x̂0. η = 0 is deterministic; η = 1 is DDPM-like.
    """
    tt = as_timesteps(t, x_t)
    eps = model(x_t, tt).to(x_t.dtype)
    x0 = predict_x0(x_t, tt, eps, schedule)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = predict_eps(x_t, tt, x0, schedule)
    ab_t = schedule.alpha_bars[t].item()
    ab_prev = schedule.alpha_bars[t_prev].item() if t_prev >= 0 else 1.0
    sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5
    x_prev = ab_prev**0.5 * x0 + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0:
        if noise is None:
            noise = randn(x_t.shape, generator=generator, like=x_t)
        x_prev = x_prev + sigma * noise
    return x_prev


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int = 50,
    eta: float = 0.0,
    spacing: Spacing = "trailing",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    clip_x0: bool = True,
    progress: bool = True,
    return_intermediates: bool = False,
    x_T: Tensor | None = None,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """DDIM sampling in ``steps`` model calls instead of T (Song et al. 2021); [B, C, H, W].

    With ``return_intermediates`` also returns {t: x_t} (CPU) for every visited t.
    """
    def step(x: Tensor, t: int, t_prev: int) -> Tensor:
        return ddim_step(model, x, t, t_prev, schedule, eta=eta, clip_x0=clip_x0, generator=generator)

    return _walk(ddim_timesteps(schedule.T, steps, spacing), _initial_noise(model, shape, generator, device, x_T), step,
                 desc="DDIM sampling", progress=progress, return_intermediates=return_intermediates)


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    x0: Tensor,
    t_start: int,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_x0: bool = True,
    variance: Variance = "posterior",
    progress: bool = False,
    return_noised: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Noise x0 [B, C, H, W] to x_{t_start} with q_sample (eq. 4), then denoise from t_start to 0.

    Returns the reconstruction [B, C, H, W] (and the noised x_{t_start} with ``return_noised``).
    The smaller t_start, the more of x0 survives; t_start = T−1 is plain generation.
    """
    if not 0 <= t_start < schedule.T:
        raise ValueError(f"t_start must be in [0, {schedule.T - 1}] (0-based), got {t_start}")
    if noise is None:
        noise = randn(x0.shape, generator=generator, like=x0)
    x_t = q_sample(x0, t_start, noise, schedule)
    out = p_sample_loop(
        model, x_t, t_start, schedule,
        generator=generator, clip_x0=clip_x0, variance=variance, progress=progress,
    )
    return (out, x_t) if return_noised else out
