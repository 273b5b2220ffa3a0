"""Noise schedules: β_t, α_t, ᾱ_t and the posterior coefficients (Ho et al. 2020, §2 and eqs. 4, 6, 7).

Timesteps are 0-based: t ∈ {0, …, T−1}. Index t holds the noise level that the paper calls step t+1,
so ``alpha_bars[0] = 1 − β_0`` (almost clean) and ``alpha_bars[T−1]`` is the noisiest level.
This is the convention of ``diffusers`` schedulers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "linear_beta_schedule",
    "scaled_linear_beta_schedule",
    "cosine_beta_schedule",
    "make_betas",
    "NoiseSchedule",
    "SCHEDULES",
]


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Tensor:
    """β_t evenly spaced from ``beta_start`` (t=0) to ``beta_end`` (t=T−1); float64 [T] (Ho et al. §4)."""
    _check_T(T)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Tensor:
    """The linear schedule with both ends scaled by 1000/T (Nichol & Dhariwal 2021, §3.2).

    The paper's linear schedule was tuned for T=1000. Scaling keeps the total noise ∑β_t about the same
    for other T, so ᾱ_{T−1} stays near 4e-5 (pure noise) instead of 0.0175 at T=400. float64 [T].
    """
    _check_T(T)
    scale = 1000.0 / T
    return linear_beta_schedule(T, beta_start * scale, min(beta_end * scale, 0.999))


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T)+s)/(1+s)·π/2) (Nichol & Dhariwal 2021, eq. 17).

    β_t = 1 − ᾱ(t+1)/ᾱ(t), clipped at ``max_beta``; float64 [T].
    """
    _check_T(T)
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1.0 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)


SCHEDULES = {
    "linear": linear_beta_schedule,
    "scaled_linear": scaled_linear_beta_schedule,
    "cosine": cosine_beta_schedule,
}


def make_betas(name: str, T: int, **kwargs: float) -> Tensor:
    """β for a schedule named ``linear``, ``scaled_linear`` or ``cosine``; float64 [T]."""
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise ValueError(
            f"unknown beta schedule {name!r}; choose one of {sorted(SCHEDULES)}"
        ) from None
    return fn(T, **kwargs)


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int (number of diffusion steps), got {T!r}")


class NoiseSchedule:
    """Every per-timestep constant of a DDPM, computed once in float64.

    Attributes (float64 [T]): ``betas`` β_t, ``alphas`` α_t = 1−β_t, ``alpha_bars`` ᾱ_t = ∏_{s≤t} α_s,
    ``alpha_bars_prev`` ᾱ_{t−1} (1 at t=0), ``sqrt_alpha_bars``, ``sqrt_one_minus_alpha_bars``,
    ``posterior_variance`` β̃_t = β_t(1−ᾱ_{t−1})/(1−ᾱ_t) (eq. 7; 0 at t=0),
    ``posterior_log_variance`` log β̃_t with β̃_1 standing in at t=0 (finite everywhere),
    ``posterior_mean_coef_x0`` √ᾱ_{t−1}β_t/(1−ᾱ_t) and ``posterior_mean_coef_xt`` √α_t(1−ᾱ_{t−1})/(1−ᾱ_t)
    (eq. 7: μ̃_t = coef_x0·x0 + coef_xt·x_t).

    ``gather(values, t, x)`` picks values[t] for a batch and shapes it [B,1,…,1] in x's dtype and device.
    """

    def __init__(self, betas: Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor [T], got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        one = torch.ones(1, dtype=torch.float64, device=betas.device)
        self.alpha_bars_prev = torch.cat([one, self.alpha_bars[:-1]])
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        self.sqrt_one_minus_alpha_bars = (1.0 - self.alpha_bars).sqrt()
        self.posterior_variance = betas * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)
        clipped = self.posterior_variance.clone()
        if clipped.numel() > 1:
            clipped[0] = clipped[1]
        else:
            clipped[0] = betas[0]
        self.posterior_log_variance = clipped.log()
        self.posterior_mean_coef_x0 = betas * self.alpha_bars_prev.sqrt() / (1.0 - self.alpha_bars)
        self.posterior_mean_coef_xt = (1.0 - self.alpha_bars_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bars)

    @classmethod
    def from_name(cls, name: str, T: int, **kwargs: float) -> NoiseSchedule:
        """``NoiseSchedule.from_name("linear", 400)``: see :func:`make_betas`."""
        return cls(make_betas(name, T, **kwargs))

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.T}, beta_0={self.betas[0].item():.3g}, "
            f"beta_T-1={self.betas[-1].item():.3g}, alpha_bar_T-1={self.alpha_bars[-1].item():.4g})"
        )

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """A copy with every table on ``device`` (still float64)."""
        return NoiseSchedule(self.betas.to(device))

    def check_t(self, t: Tensor) -> None:
        """Raise a clear error unless t is an integer tensor with 0 ≤ t ≤ T−1."""
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"t must be an integer (long) tensor of timesteps, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(
                f"timesteps are 0-based: need 0 <= t <= {self.T - 1}, got range "
                f"[{int(t.min())}, {int(t.max())}]"
            )

    def gather(self, values: Tensor, t: Tensor | int, x: Tensor) -> Tensor:
        """values[t] as [B,1,…,1] (one per sample, broadcastable to x) in x's dtype and device."""
        t = as_timesteps(t, x)
        self.check_t(t)
        out = values.to(x.device)[t.to(x.device)].to(x.dtype)
        return out.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def as_timesteps(t: Tensor | int, x: Tensor) -> Tensor:
    """An int or a [B] / scalar tensor of timesteps as a LongTensor [B] on x's device."""
    if isinstance(t, int):
        return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")
    return t
