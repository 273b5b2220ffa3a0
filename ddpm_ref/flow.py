"""Flow matching (Lipman et al. 2023) on the straight path of rectified flow (Liu et al. 2023).

Conventions, stated once for the whole module:

- **Time runs over [0, 1] with the data at t = 0 and pure noise at t = 1** (the direction of the DDPM timesteps:
  larger t, more noise). The path between a data point x0 and a noise sample ε ~ N(0, I) is the straight line

      x_t = (1 − t)·x0 + t·ε                      (Lipman et al. 2023, eq. 20 with σ_min = 0; Liu et al. 2023, eq. 1)

- **The velocity is d x_t / dt = ε − x0** (it points from the data towards the noise). The network v_θ(x_t, t)
  regresses it: L_FM = E_{t ~ U[0, 1], x0, ε} ‖v_θ(x_t, t) − (ε − x0)‖² (Lipman et al. eq. 23, the conditional
  flow-matching loss). Its minimiser is the marginal velocity v*(x, t) = E[ε − x0 | x_t = x].
- **Sampling integrates dx/dt = v(x, t) from t = 1 (x_1 ~ N(0, I)) down to t = 0**, so every step has a negative
  dt = t_next − t: x_{t_next} = x_t + (t_next − t)·v (Euler), or Heun's average of the velocities at both ends.
- **The network sees the time as TIME_SCALE·t = 1000·t** (a float in [0, 1000]), in training and in sampling alike:
  the sinusoidal embedding of the course's ``UNet`` is built for inputs of the size of DDPM timesteps, and t ∈ [0, 1]
  would use only its slowest frequencies.

DDIM (Song et al. 2021) meets this view: with η = 0 it is an Euler step of the probability-flow ODE written in the
variables x/√ᾱ and σ = √((1 − ᾱ)/ᾱ), whose path x0 + σ·ε is also straight (Song et al. §4.3; Karras et al. 2022).

Shapes: images ``x0``, ``x_t``, ``noise`` are [B, C, H, W] (any [B, ...] works); ``t`` is a float tensor [B].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diffusion import randn
from .oracle import register_mixture
from .progress import progress_bar

__all__ = [
    "TIME_SCALE",
    "flow_path",
    "flow_velocity_target",
    "flow_matching_loss",
    "flow_times",
    "euler_sample",
    "heun_sample",
    "GaussianMixtureVelocity",
]

#: the network's time input is TIME_SCALE·t for t ∈ [0, 1] (training and sampling alike)
TIME_SCALE: float = 1000.0


def _per_sample(t: Tensor, x: Tensor) -> Tensor:
    """t [B] → [B, 1, 1, 1] (as many trailing ones as x needs), in x's dtype and device."""
    return t.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _as_times(t: Tensor | float, x: Tensor) -> Tensor:
    """A float, a scalar tensor or a [B] tensor of times in [0, 1] as a float tensor [B] on x's device."""
    t = torch.as_tensor(t, device=x.device)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a float or have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError(f"flow-matching times must lie in [0, 1] (data at 0, noise at 1), got {t.min():.4g}…"
                         f"{t.max():.4g}")
    return t


def flow_path(x0: Tensor, t: Tensor | float, noise: Tensor) -> Tensor:
    """x_t = (1 − t)·x0 + t·ε: the straight path from the data (t = 0) to the noise (t = 1); [B, C, H, W]."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    tt = _per_sample(_as_times(t, x0), x0)
    return (1 - tt) * x0 + tt * noise


def flow_velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """d x_t / dt = ε − x0 along the straight path (constant in t); [B, C, H, W]."""
    return noise - x0


def flow_matching_loss(
    model: nn.Module,
    x0: Tensor,
    *,
    t: Tensor | float | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L_FM = E_{t, x0, ε} ‖v_θ(x_t, 1000·t) − (ε − x0)‖², x_t = (1 − t)·x0 + t·ε (Lipman et al. eq. 23); a scalar.

    ``t`` defaults to uniform draws from [0, 1) (one per image), ``noise`` to N(0, I), both from ``generator``
    and in that order (t first). The network is called as ``model(x_t, TIME_SCALE * t)``. The mean squared error
    is taken in float32 even when the model runs under autocast.
    """
    if t is None:
        gen_device = generator.device if generator is not None else x0.device
        t = torch.rand(x0.shape[0], generator=generator, device=gen_device).to(x0.device)
    t = _as_times(t, x0)
    if noise is None:
        noise = randn(x0.shape, generator=generator, like=x0)
    x_t = flow_path(x0, t, noise)
    v_pred = model(x_t, TIME_SCALE * t)
    if v_pred.shape != x0.shape:
        raise ValueError(f"the model must return a velocity shaped like x0 {tuple(x0.shape)}, got "
                         f"{tuple(v_pred.shape)}")
    return F.mse_loss(v_pred.float(), flow_velocity_target(x0, noise).float())


def flow_times(steps: int) -> list[float]:
    """The time grid of a sampler with ``steps`` steps: 1, 1 − 1/steps, …, 1/steps, 0 (steps + 1 points)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [1.0 - i / steps for i in range(steps + 1)]


def _start(model: nn.Module, shape: Sequence[int], generator: torch.Generator | None,
           device: torch.device | str | None, x1: Tensor | None) -> Tensor:
    if device is None:
        p = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = p.device if p is not None else torch.device("cpu")
    if x1 is None:
        return randn(tuple(shape), generator=generator, like=torch.empty(0, device=device))
    return x1.to(device)


def _velocity(model: nn.Module, x: Tensor, t: float) -> Tensor:
    tt = torch.full((x.shape[0],), TIME_SCALE * t, dtype=torch.float32, device=x.device)
    return model(x, tt).to(x.dtype)


def _euler_step(model: nn.Module, x: Tensor, t: float, t_next: float) -> Tensor:
    """x_{t_next} = x_t + (t_next − t)·v_θ(x_t, t): one model call."""
    return x + (t_next - t) * _velocity(model, x, t)


def _heun_step(model: nn.Module, x: Tensor, t: float, t_next: float) -> Tensor:
    """Predictor x̃ = x + h·v_θ(x, t), corrector x + h·(v_θ(x, t) + v_θ(x̃, t_next))/2, h = t_next − t: two calls."""
    h = t_next - t
    v = _velocity(model, x, t)
    x_pred = x + h * v
    v_next = _velocity(model, x_pred, t_next)
    return x + h * 0.5 * (v + v_next)


def _integrate(
    model: nn.Module,
    step: Callable[[nn.Module, Tensor, float, float], Tensor],
    desc: str,
    x: Tensor,
    steps: int,
    *,
    progress: bool,
    return_intermediates: bool,
) -> Tensor | tuple[Tensor, dict[float, Tensor]]:
    """Take ``step(model, x, t, t_next)`` along :func:`flow_times` from x = x_1 at t = 1 down to t = 0.

    With ``return_intermediates`` also returns {t_i: x_{t_i}} (CPU) for every grid time, 0 included."""
    ts = flow_times(steps)
    frames: dict[float, Tensor] = {}
    for t, t_next in progress_bar(list(zip(ts[:-1], ts[1:], strict=True)), desc=desc, disable=not progress,
                                  leave=False):
        if return_intermediates:
            frames[t] = x.detach().cpu()
        x = step(model, x, t, t_next)
    if return_intermediates:
        frames[0.0] = x.detach().cpu()
    return (x, frames) if return_intermediates else x


@torch.no_grad()
def euler_sample(model: nn.Module, shape: Sequence[int], *, steps: int = 50, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, x1: Tensor | None = None, progress: bool = True,
                 return_intermediates: bool = False) -> Tensor | tuple[Tensor, dict[float, Tensor]]:
    """Euler's method for dx/dt = v_θ(x, t) from t = 1 to t = 0 in ``steps`` model calls; [B, C, H, W].

    x_1 ~ N(0, I) of ``shape`` (or ``x1``); on the grid t_i = 1 − i/steps:
    x_{t_{i+1}} = x_{t_i} + (t_{i+1} − t_i)·v_θ(x_{t_i}, 1000·t_i), with t_{i+1} − t_i = −1/steps < 0.
    With ``return_intermediates`` also returns {t_i: x_{t_i}} (CPU) for every grid time, 0 included.
    """
    return _integrate(model, _euler_step, "Euler sampling", _start(model, shape, generator, device, x1), steps,
                      progress=progress, return_intermediates=return_intermediates)


@torch.no_grad()
def heun_sample(model: nn.Module, shape: Sequence[int], *, steps: int = 25, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, x1: Tensor | None = None, progress: bool = True,
                return_intermediates: bool = False) -> Tensor | tuple[Tensor, dict[float, Tensor]]:
    """Heun's method (the explicit trapezoidal rule) from t = 1 to t = 0 in ``steps`` steps, 2·steps model calls.

    On the grid t_i = 1 − i/steps, with h = t_{i+1} − t_i < 0:
    predictor x̃ = x + h·v_θ(x, t_i) (an Euler step); corrector x_{t_{i+1}} = x + h·(v_θ(x, t_i) + v_θ(x̃, t_{i+1}))/2,
    the **new** velocity at the predicted point averaged with the old one (Karras et al. 2022, Algorithm 1, which
    skips the corrector at its singular end point; the velocity of flow matching is finite at t = 0).
    Second-order accurate: its error shrinks like 1/steps², Euler's like 1/steps.
    """
    return _integrate(model, _heun_step, "Heun sampling", _start(model, shape, generator, device, x1), steps,
                      progress=progress, return_intermediates=return_intermediates)


class GaussianMixtureVelocity(nn.Module):
    """The exact flow-matching velocity v*(x, t) = E[ε − x0 | x_t = x] for x0 ~ Σ_k w_k N(μ_k, s_k² I).

    Called like the network: ``oracle(x, TIME_SCALE * t)``, x [B, *shape], time [B] → [B, *shape].
    Given component k, x_t ~ N((1 − t)μ_k, v_k I) with v_k = (1 − t)²s_k² + t², and (x0, ε, x_t) are jointly
    Gaussian, so E[ε − x0 | x_t, k] = (t − (1 − t)s_k²)(x_t − (1 − t)μ_k)/v_k − μ_k; the mixture weighs these by
    the posterior r_k(x_t) ∝ w_k N(x_t; (1 − t)μ_k, v_k I). An ODE sampler driven by v* carries N(0, I) at t = 1
    exactly onto the data at t = 0, so any error it shows is its own discretisation: this tests samplers with no
    training. ``means`` [K, *shape] (or K floats), ``stds`` and ``weights`` K floats; float64 inside, returned in
    x's dtype. With s_k = 0 (point masses) v* diverges off the support as t → 0; v_k is floored at 1e-12.
    """

    def __init__(
        self,
        means: Tensor | Sequence[float],
        stds: Sequence[float] | Tensor,
        weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        register_mixture(self, means, stds, weights)

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        b = x.shape[0]
        t = (torch.as_tensor(time, device=x.device).to(torch.float64) / TIME_SCALE).expand(b).reshape(b, 1)  # [B, 1]
        flat = x.to(torch.float64).reshape(b, 1, -1)  # [B, 1, D]
        d = flat.shape[-1]
        mu = self.means.to(x.device).reshape(self.means.shape[0], -1).expand(-1, d)[None]  # [1, K, D]
        s2 = self.stds.to(x.device)[None] ** 2  # [1, K]
        v = ((1 - t) ** 2 * s2 + t**2).clamp_min(1e-12)  # [B, K]
        diff = flat - (1 - t)[..., None] * mu  # [B, K, D]
        logp = -0.5 * (diff**2).sum(-1) / v - 0.5 * d * v.log() + self.weights.to(x.device).log()[None]
        r = torch.softmax(logp, dim=1)  # [B, K]
        coef = (t - (1 - t) * s2) / v  # [B, K]
        vel = (r[..., None] * (coef[..., None] * diff - mu)).sum(1)  # [B, D]
        return vel.reshape(x.shape).to(x.dtype)
