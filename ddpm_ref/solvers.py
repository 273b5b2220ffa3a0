"""Few-step ODE samplers for an ε-model: DPM-Solver++(2M) (Lu et al. 2022) and Heun's method in the
σ-parametrisation of Karras et al. (2022).

Both integrate the probability-flow ODE of the DDPM, whose Euler discretisation is DDIM with η = 0
(Song et al. 2021, §4.3). Notation, with 0-based timesteps t of a discrete :class:`NoiseSchedule`:

- α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) (so x_t = α_t·x0 + σ_t·ε, eq. 4), and the half log-SNR
  λ_t = log(α_t/σ_t) (:func:`log_snr`);
- Karras' variables x̄ = x/√ᾱ_t and σ̄_t = √((1 − ᾱ_t)/ᾱ_t) = σ_t/α_t (:func:`karras_sigmas`); the ODE reads
  dx̄/dσ̄ = ε(x, t) = (x̄ − x̂0)/σ̄ (Karras et al. eq. 4 with D = x̂0).

x̂0 is :func:`~ddpm_ref.diffusion.predict_x0` of the model's ε̂, clipped to [−1, 1] when ``clip_x0`` (then ε̂ is
recomputed from the clipped x̂0, as in DDIM). **Clipping makes the right-hand side non-smooth**: the orders of
accuracy below hold with ``clip_x0=False`` (or while no x̂0 leaves [−1, 1]).

**Grid and last step.** The samplers visit ``ts = ddim_timesteps(T, steps, spacing)`` (the model is called only at
integer timesteps) and end with a jump to ᾱ = 1 (t = −1, σ = 0, λ = +∞), which returns the clean image; that jump is
first order in every solver (it returns x̂0 for DPM-Solver++, an Euler step for Heun), as in ``diffusers`` with
``final_sigmas_type="zero"``. With ``spacing="trailing"`` (the default, as for DDIM) the last visited timestep
round(T/steps) − 1 moves with ``steps``, and the final jump from it costs O(σ̄²) ∝ 1/steps (x̂0 = E[x0 | x_t] is not
the ODE's end point): Heun's error then falls like steps^−1.2 from 125 to 500 steps (tests/test_solvers.py), not like
steps^−2; DPM-Solver++(2M) measured on the same grids still falls about like steps^−2 up to 500 steps, its own error
making up for most of the jump's. ``spacing="linspace"`` always ends at t = 0, where the jump is the same for every
``steps``, and shows the orders cleanly (``data_scripts/solver_orders.py`` prints both).

Shapes: ``x_T`` and the samples are [B, C, H, W] (any [B, ...] works); the model is called as ``model(x, t)`` with t a
LongTensor [B]. Steps and NFE (model calls): DDIM and DPM-Solver++(2M) take one call per step, Heun two per step
but one on its last (2·steps − 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .diffusion import predict_eps, predict_x0
from .samplers import Spacing, _initial_noise, _walk, ddim_timesteps
from .schedule import NoiseSchedule, as_timesteps

__all__ = [
    "log_snr",
    "karras_sigmas",
    "solver_timesteps",
    "denoise",
    "dpm_solver_pp_2m_step",
    "dpm_solver_pp_2m_sample",
    "karras_heun_step",
    "karras_heun_sample",
    "karras_euler_sample",
]

Intermediates = tuple[Tensor, dict[int, Tensor]]


def log_snr(schedule: NoiseSchedule) -> Tensor:
    """λ_t = log(α_t/σ_t) = log √ᾱ_t − log √(1 − ᾱ_t), float64 [T] (Lu et al. 2022, §2); decreasing in t."""
    return schedule.sqrt_alpha_bars.log() - schedule.sqrt_one_minus_alpha_bars.log()


def karras_sigmas(schedule: NoiseSchedule) -> Tensor:
    """σ̄_t = √((1 − ᾱ_t)/ᾱ_t) = √(1 − ᾱ_t)/√ᾱ_t, float64 [T]: the noise level of x̄ = x/√ᾱ_t (Karras et al. 2022)."""
    return schedule.sqrt_one_minus_alpha_bars / schedule.sqrt_alpha_bars


def _alpha_sigma_lambda(schedule: NoiseSchedule, t: int) -> tuple[float, float, float]:
    """(α_t, σ_t, λ_t) as Python floats; t = −1 is the clean end ᾱ = 1: (1, 0, +∞)."""
    if t < 0:
        return 1.0, 0.0, math.inf
    return float(schedule.sqrt_alpha_bars[t]), float(schedule.sqrt_one_minus_alpha_bars[t]), float(log_snr(schedule)[t])


def solver_timesteps(schedule: NoiseSchedule, steps: int, spacing: Spacing = "trailing") -> list[int]:
    """:func:`~ddpm_ref.samplers.ddim_timesteps` with a sampler's own one-line errors for a bad ``steps``."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int (the number of solver steps), got {steps!r}")
    if not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be between 1 and T={schedule.T} (one model call per timestep at most), "
                         f"got {steps}")
    return ddim_timesteps(schedule.T, steps, spacing)


def denoise(model: nn.Module, x_t: Tensor, t: int, schedule: NoiseSchedule, *, clip_x0: bool) -> tuple[Tensor, Tensor]:
    """One model call: (x̂0, ε̂), each [B, C, H, W]. x̂0 = predict_x0(x_t, t, ε_θ(x_t, t)), clipped to [−1, 1] when
    ``clip_x0``, and then ε̂ recomputed from it (predict_eps), exactly as in :func:`~ddpm_ref.samplers.ddim_step`."""
    tt = as_timesteps(t, x_t)
    eps = model(x_t, tt).to(x_t.dtype)
    x0 = predict_x0(x_t, tt, eps, schedule)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = predict_eps(x_t, tt, x0, schedule)
    return x0, eps


@torch.no_grad()
def dpm_solver_pp_2m_step(
    model: nn.Module,
    x_t: Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    *,
    last: tuple[int, Tensor] | None = None,
    clip_x0: bool = True,
) -> tuple[Tensor, Tensor]:
    """One step of DPM-Solver++(2M) from t to t_prev < t (Lu et al. 2022, Algorithm 2); t_prev = −1 means ᾱ = 1.

    The ODE's exact solution in λ is x_{t_prev} = (σ_{t_prev}/σ_t)·x_t + σ_{t_prev}·∫ e^λ·x̂0(λ) dλ over
    [λ_t, λ_{t_prev}] (Lu et al. 2022). With h = λ_{t_prev} − λ_t and x̂0_t = x̂0(x_t, t) (one model call), the step
    takes x̂0 ≈ D in the integral, x̂0_t corrected by the finite difference of the step before:

        x_{t_prev} = (σ_{t_prev}/σ_t)·x_t − α_{t_prev}·(e^{−h} − 1)·D,   D = (1 + 1/(2r))·x̂0_t − 1/(2r)·x̂0_last,

    r = (λ_t − λ_last)/h, where ``last = (t_last, x̂0_last)`` is the timestep (t_last > t) and x̂0 of the step
    before. Without ``last`` (the first step) D = x̂0_t: first order, which is DDIM with η = 0 exactly. The jump to
    t_prev = −1 (σ = 0, e^{−h} = 0) returns x̂0_t and is first order too (diffusers' ``final_sigmas_type="zero"``).

    Returns (x_{t_prev}, x̂0_t), both [B, C, H, W]; pass ``(t, x̂0_t)`` as ``last`` to the next step.
    """
    if not -1 <= t_prev < t < schedule.T:
        raise ValueError(f"need -1 <= t_prev < t <= {schedule.T - 1} (0-based; t_prev = -1 is the clean end), got "
                         f"t={t}, t_prev={t_prev}")
    x0, _ = denoise(model, x_t, t, schedule, clip_x0=clip_x0)
    if t_prev < 0:
        return x0, x0
    _, sigma, lam = _alpha_sigma_lambda(schedule, t)
    alpha_next, sigma_next, lam_next = _alpha_sigma_lambda(schedule, t_prev)
    h = lam_next - lam
    d = x0
    if last is not None:
        t_last, x0_last = last
        if not t < t_last < schedule.T:
            raise ValueError(f"the last step's timestep must lie between t={t} and T-1={schedule.T - 1}, got {t_last}")
        r = (lam - _alpha_sigma_lambda(schedule, t_last)[2]) / h
        d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_last
    return (sigma_next / sigma) * x_t - alpha_next * math.expm1(-h) * d, x0


@torch.no_grad()
def karras_heun_step(
    model: nn.Module,
    x_t: Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    *,
    clip_x0: bool = True,
    second_order: bool = True,
) -> Tensor:
    """One step of Heun's method on dx̄/dσ̄ = ε from σ̄_t to σ̄_{t_prev} (Karras et al. 2022, Algorithm 1 with
    no churn); t_prev = −1 means σ̄ = 0 (ᾱ = 1). x_t and the result are in the DDPM's variables, [B, C, H, W].

    x̄ = x_t/√ᾱ_t, h = σ̄_{t_prev} − σ̄_t < 0, d = ε̂(x_t, t) (the noise prediction is the slope);
    Euler predictor x̄' = x̄ + h·d; corrector x̄_{t_prev} = x̄ + h·(d + d')/2 with d' = ε̂(√ᾱ_{t_prev}·x̄', t_prev).
    Two model calls; one (the Euler step alone, which is DDIM's step with η = 0) when ``second_order`` is off or
    t_prev = −1, where ε is not defined (Karras et al. skip the corrector there too). Returns √ᾱ_{t_prev}·x̄_{t_prev}.
    """
    if not -1 <= t_prev < t < schedule.T:
        raise ValueError(f"need -1 <= t_prev < t <= {schedule.T - 1} (0-based; t_prev = -1 is the clean end), got "
                         f"t={t}, t_prev={t_prev}")
    alpha, sigma, _ = _alpha_sigma_lambda(schedule, t)
    alpha_next, sigma_next, _ = _alpha_sigma_lambda(schedule, t_prev)
    s, s_next = sigma / alpha, sigma_next / alpha_next  # σ̄_t, σ̄_{t_prev}
    x_bar = x_t / alpha
    x0, d = denoise(model, x_t, t, schedule, clip_x0=clip_x0)
    if t_prev < 0:
        return x0  # x̄ + (0 − σ̄_t)·ε̂ = x̂0, without the rounding (a clipped x̂0 stays within [−1, 1])
    x_bar_next = x_bar + (s_next - s) * d
    if second_order:
        _, d_next = denoise(model, alpha_next * x_bar_next, t_prev, schedule, clip_x0=clip_x0)
        x_bar_next = x_bar + (s_next - s) * 0.5 * (d + d_next)
    return alpha_next * x_bar_next


@torch.no_grad()
def dpm_solver_pp_2m_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int = 20,
    spacing: Spacing = "trailing",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    clip_x0: bool = True,
    progress: bool = True,
    return_intermediates: bool = False,
    x_T: Tensor | None = None,
) -> Tensor | Intermediates:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in ``steps`` model calls; [B, C, H, W].

    x_T ~ N(0, I) of ``shape`` from ``generator`` (or ``x_T``, not changed); then :func:`dpm_solver_pp_2m_step` over
    ``ts = ddim_timesteps(T, steps, spacing)`` and a last jump to t = −1: the first step and the last are first
    order, every other one second order. Equals ``diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, solver_type="midpoint", final_sigmas_type="zero")`` with the same timesteps (``clip_x0``:
    ``thresholding=True, sample_max_value=1.0``). With ``return_intermediates`` also returns {t: x_t} (CPU) for every
    visited t.
    """
    last: tuple[int, Tensor] | None = None  # (t, x̂0) of the step before

    def step(x: Tensor, t: int, t_prev: int) -> Tensor:
        nonlocal last
        x, x0 = dpm_solver_pp_2m_step(model, x, t, t_prev, schedule, last=last, clip_x0=clip_x0)
        last = (t, x0)
        return x

    return _walk(solver_timesteps(schedule, steps, spacing), _initial_noise(model, shape, generator, device, x_T), step,
                 desc="DPM-Solver++(2M)", progress=progress, return_intermediates=return_intermediates)


def _karras_sample(model: nn.Module, schedule: NoiseSchedule, shape: Sequence[int], *, steps: int, spacing: Spacing,
                   generator: torch.Generator | None, device: torch.device | str | None, clip_x0: bool, progress: bool,
                   return_intermediates: bool, x_T: Tensor | None, second_order: bool) -> Tensor | Intermediates:
    def step(x: Tensor, t: int, t_prev: int) -> Tensor:
        return karras_heun_step(model, x, t, t_prev, schedule, clip_x0=clip_x0, second_order=second_order)

    return _walk(solver_timesteps(schedule, steps, spacing), _initial_noise(model, shape, generator, device, x_T), step,
                 desc="Heun (Karras)" if second_order else "Euler (Karras)", progress=progress,
                 return_intermediates=return_intermediates)


@torch.no_grad()
def karras_heun_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int = 10,
    spacing: Spacing = "trailing",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    clip_x0: bool = True,
    progress: bool = True,
    return_intermediates: bool = False,
    x_T: Tensor | None = None,
) -> Tensor | Intermediates:
    """Heun's method on the probability-flow ODE dx̄/dσ̄ = ε (Karras et al. 2022, Algorithm 1, deterministic) over
    ``ts = ddim_timesteps(T, steps, spacing)`` and σ̄ = 0; 2·steps − 1 model calls (the last step is Euler);
    [B, C, H, W].

    x_T ~ N(0, I) of ``shape`` from ``generator`` (or ``x_T``, not changed). Equals ``diffusers.HeunDiscreteScheduler``
    with the same timesteps (``clip_x0``: ``clip_sample=True``). Not :func:`ddpm_ref.flow.heun_sample`, which
    integrates a flow-matching velocity. With ``return_intermediates`` also returns {t: x_t} (CPU) for every visited t.
    """
    return _karras_sample(model, schedule, shape, steps=steps, spacing=spacing, generator=generator, device=device,
                          clip_x0=clip_x0, progress=progress, return_intermediates=return_intermediates, x_T=x_T,
                          second_order=True)


@torch.no_grad()
def karras_euler_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int = 20,
    spacing: Spacing = "trailing",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    clip_x0: bool = True,
    progress: bool = True,
    return_intermediates: bool = False,
    x_T: Tensor | None = None,
) -> Tensor | Intermediates:
    """Euler's method on dx̄/dσ̄ = ε over the same grid as :func:`karras_heun_sample`, ``steps`` model calls.

    x̄ + (σ̄_{t_prev} − σ̄_t)·ε̂ = x̂0 + σ̄_{t_prev}·ε̂, so x_{t_prev} = √ᾱ_{t_prev}·x̂0 + √(1 − ᾱ_{t_prev})·ε̂: this is
    :func:`~ddpm_ref.samplers.ddim_sample` with η = 0, written as an ODE solver (equal to float rounding).
    """
    return _karras_sample(model, schedule, shape, steps=steps, spacing=spacing, generator=generator, device=device,
                          clip_x0=clip_x0, progress=progress, return_intermediates=return_intermediates, x_T=x_T,
                          second_order=False)
