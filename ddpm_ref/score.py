"""Scores, Langevin dynamics and the SDE view of diffusion (Song & Ermon 2019; Song et al. 2021).

Conventions, stated once for the whole module:

- **The score** of a density p is s(x) = ∇_x log p(x). For the marginal of x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε it is
  s(x_t, t) = −E[ε | x_t]/√(1−ᾱ_t) (Tweedie's formula; Vincent 2011): a noise predictor ε_θ is a score model up to
  the factor −1/√(1−ᾱ_t) (:func:`score_from_eps`).
- **A score model** is called like the noise predictors of the course, ``model(x_t, t)`` with ``t`` a LongTensor [B]
  of 0-based timesteps, and returns s_θ(x_t, t) shaped like x_t.
- **Denoising score matching** (Vincent 2011) regresses the score of the noising kernel, −ε/√(1−ᾱ_t), weighted by
  λ(t) = 1 − ᾱ_t (Song & Ermon 2019, eq. 6: λ(σ) = σ²), so that every noise level counts alike:
  L_DSM = E_{t,x0,ε} (1 − ᾱ_t)·‖s_θ(x_t, t) + ε/√(1−ᾱ_t)‖² = E ‖√(1−ᾱ_t)·s_θ(x_t, t) + ε‖², a mean over batch and
  pixels as in L_simple.
- **The SDE view** (Song et al. 2021): the DDPM chain is a discretisation of the VP SDE dx = −½β(t)·x dt + √β(t) dw.
  Its reverse, dx = [−½β·x − β·s(x, t)] dt + √β dw̄, and its probability-flow ODE, dx/dt = −½β·(x + s(x, t)), share
  its marginals. On the schedule's own timesteps (β(t)·dt = β_t), going from t to t − 1:

      reverse SDE (Euler–Maruyama):  x ← x + β_t·(x/2 + s(x, t)) + √β_t·z     (no noise at the last step, t = 0)
      probability-flow ODE (Euler):  x ← x + (β_t/2)·(x + s(x, t))

  With ``steps`` < T the samplers visit :func:`~ddpm_ref.samplers.ddim_timesteps` and use the β of each jump,
  β = 1 − ᾱ_t/ᾱ_prev (ᾱ_prev = 1 after t = 0), which is β_t for a jump of one step (the respacing of Nichol &
  Dhariwal 2021).
- **DDIM (η = 0) is the Euler method of the same ODE in other variables**: with x̄ = x/√ᾱ and σ = √((1−ᾱ)/ᾱ) the ODE
  reads dx̄/dσ = ε(x, t) = −√(1−ᾱ)·s(x, t), and one DDIM step is exactly one Euler step of it (Song et al. 2021,
  DDIM §4.3; Karras et al. 2022). Both solvers converge to the same ODE solution as the steps grow.

Shapes: ``x``, ``x0``, ``eps``, ``noise`` are [B, ...] ([B, 2] for the lesson's points, [B, C, H, W] for images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .diffusion import _draw_t_and_noise, q_sample, randn
from .samplers import _initial_noise, _walk, ddim_timesteps
from .schedule import NoiseSchedule

__all__ = [
    "score_from_eps",
    "eps_from_score",
    "ScoreFromEps",
    "dsm_target",
    "dsm_loss",
    "langevin_sample",
    "jump_betas",
    "reverse_sde_step",
    "probability_flow_step",
    "reverse_sde_sample",
    "probability_flow_sample",
]


def score_from_eps(eps: Tensor, t: Tensor | int, schedule: NoiseSchedule) -> Tensor:
    """s(x_t, t) = −ε/√(1−ᾱ_t): the score of the marginal of x_t from a noise prediction; shaped like ``eps``."""
    return -eps / schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, eps)


def eps_from_score(score: Tensor, t: Tensor | int, schedule: NoiseSchedule) -> Tensor:
    """ε = −√(1−ᾱ_t)·s: the noise prediction a score stands for; shaped like ``score``."""
    return -score * schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, score)


class ScoreFromEps(nn.Module):
    """A noise predictor ``net(x_t, t)`` (a network, :class:`~ddpm_ref.oracle.GaussianMixtureOracle`) presented as a
    score model: ``forward(x_t, t)`` = −net(x_t, t)/√(1−ᾱ_t). The exact ε* of the oracle gives the exact score."""

    def __init__(self, net: nn.Module | Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule) -> None:
        super().__init__()
        self.net, self.schedule = net, schedule

    def forward(self, x_t: Tensor, t: Tensor | int, *args, **kwargs) -> Tensor:
        t = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device) if isinstance(t, int) else t
        return score_from_eps(self.net(x_t, t, *args, **kwargs).to(x_t.dtype), t, self.schedule)


def dsm_target(noise: Tensor, t: Tensor | int, schedule: NoiseSchedule) -> Tensor:
    """∇ log q(x_t | x0) = −ε/√(1−ᾱ_t): the denoising score-matching target (Vincent 2011); shaped like ``noise``."""
    return score_from_eps(noise, t, schedule)


def dsm_loss(
    model: nn.Module,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    t: Tensor | int | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L_DSM = mean over batch and pixels of (1 − ᾱ_t)·(s_θ(x_t, t) + ε/√(1−ᾱ_t))²; a scalar.

    x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (eq. 4 of Ho et al.). The weight λ(t) = 1 − ᾱ_t is Song & Ermon's σ² (2019, eq. 6).
    ``t`` defaults to uniform draws from {0, …, T−1} and ``noise`` to N(0, I), both from ``generator`` and in that
    order, as in ``ddpm_loss``. Computed in float32 even when the model runs under autocast.
    """
    t, noise = _draw_t_and_noise(x0, schedule, t, noise, generator)
    score = model(q_sample(x0, t, noise, schedule), t)
    if score.shape != x0.shape:
        raise ValueError(f"the model must return a score shaped like x0 {tuple(x0.shape)}, got {tuple(score.shape)}")
    weight = schedule.gather(1 - schedule.alpha_bars, t, x0).float()
    return (weight * (score.float() - dsm_target(noise, t, schedule).float()) ** 2).mean()


@torch.no_grad()
def langevin_sample(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unadjusted Langevin dynamics: ``steps`` times x ← x + (δ/2)·∇log p(x) + √δ·z, z ~ N(0, I); returns [B, ...].

    ``score_fn(x)`` is ∇log p(x) [B, ...]; δ = ``step_size``. Every step adds noise (the chain's stationary law tends
    to p as δ → 0). ``x`` itself is left unchanged; steps = 0 returns it as it is.
    """
    if steps < 0 or step_size < 0:
        raise ValueError(f"steps and step_size must be >= 0, got {steps} and {step_size}")
    for _ in range(steps):
        x = x + 0.5 * step_size * score_fn(x).to(x.dtype) + step_size**0.5 * randn(x.shape, generator=generator, like=x)
    return x


def jump_betas(schedule: NoiseSchedule, steps: int | None = None) -> list[tuple[int, float]]:
    """(t, β of the jump from t to the next visited timestep) for the timesteps a ``steps``-step sampler visits
    (all T when ``steps`` is None): β = 1 − ᾱ_t/ᾱ_next, with ᾱ = 1 after t = 0."""
    ts = ddim_timesteps(schedule.T, schedule.T if steps is None else steps)
    ab = schedule.alpha_bars
    out = []
    for i, t in enumerate(ts):
        ab_next = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        out.append((t, 1.0 - float(ab[t]) / ab_next))
    return out


def _score_at(model: nn.Module, x: Tensor, t: int) -> Tensor:
    return model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)).to(x.dtype)


def reverse_sde_step(model: nn.Module, x: Tensor, t: int, beta: float, *, last: bool,
                     generator: torch.Generator | None = None) -> Tensor:
    """x + β·(x/2 + s(x, t)) + √β·z: one Euler–Maruyama step of the reverse VP SDE (no z when ``last``)."""
    out = x + beta * (0.5 * x + _score_at(model, x, t))
    if not last:
        out = out + beta**0.5 * randn(x.shape, generator=generator, like=x)
    return out


def probability_flow_step(model: nn.Module, x: Tensor, t: int, beta: float) -> Tensor:
    """x + (β/2)·(x + s(x, t)): one Euler step of the probability-flow ODE."""
    return x + 0.5 * beta * (x + _score_at(model, x, t))


def _run_chain(kind: str, model: nn.Module, schedule: NoiseSchedule, x: Tensor, steps: int | None,
               generator: torch.Generator | None, progress: bool,
               return_intermediates: bool) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    betas = dict(jump_betas(schedule, steps))  # {t: β of the jump from t}, in the order visited

    def step(x: Tensor, t: int, t_prev: int) -> Tensor:
        if kind == "sde":
            return reverse_sde_step(model, x, t, betas[t], last=t_prev < 0, generator=generator)
        return probability_flow_step(model, x, t, betas[t])

    out = _walk(list(betas), x, step, desc="reverse SDE" if kind == "sde" else "probability-flow ODE",
                progress=progress, return_intermediates=return_intermediates)
    if not return_intermediates:
        return out
    x, frames = out
    frames[-1] = x.detach().cpu()
    return x, frames


@torch.no_grad()
def reverse_sde_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    x_T: Tensor | None = None,
    progress: bool = True,
    return_intermediates: bool = False,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """Euler–Maruyama on the reverse VP SDE (Song et al. 2021, eq. 6) from x_{T−1} ~ N(0, I) down to t = 0.

    ``model(x, t)`` is a score model. At each visited t (all T by default, else ``steps`` of them):
    x ← x + β·(x/2 + s(x, t)) + √β·z with β the jump's (β_t for a jump of one), z from ``generator``; the last step
    adds no noise. ``x_T`` replaces the starting noise. With ``return_intermediates`` also returns {t: x before the
    step at t} and {−1: the output} (CPU).
    """
    x = _initial_noise(model, shape, generator, device, x_T)
    return _run_chain("sde", model, schedule, x, steps, generator, progress, return_intermediates)


@torch.no_grad()
def probability_flow_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    x_T: Tensor | None = None,
    progress: bool = True,
    return_intermediates: bool = False,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """Euler's method on the probability-flow ODE dx/dt = −½β(t)·(x + s(x, t)) from x_{T−1} to t = 0; deterministic.

    ``model(x, t)`` is a score model. At each visited t: x ← x + (β/2)·(x + s(x, t)) with β the jump's. The only
    randomness is the starting noise (``generator``, or ``x_T``). With ``return_intermediates`` also returns
    {t: x before the step at t} and {−1: the output} (CPU).
    """
    x = _initial_noise(model, shape, generator, device, x_T)
    return _run_chain("ode", model, schedule, x, steps, generator, progress, return_intermediates)
