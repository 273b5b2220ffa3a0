"""Analytic noise predictors: the exact optimum E[ε | x_t] for data whose distribution is known.

For data x0 ~ Σ_k w_k N(μ_k, s_k² I) and x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε, the marginal of x_t is
Σ_k w_k N(√ᾱ_t μ_k, v_k I) with v_k = ᾱ_t s_k² + 1 − ᾱ_t, and the minimiser of the DDPM loss is

    ε*(x_t, t) = Σ_k r_k(x_t) · √(1−ᾱ_t) (x_t − √ᾱ_t μ_k) / v_k,   r_k ∝ w_k N(x_t; √ᾱ_t μ_k, v_k I).

A sampler driven by ε* must return the data distribution: this tests samplers with no training.
s_k = 0 gives point masses; one component gives a Gaussian.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .schedule import NoiseSchedule

__all__ = ["GaussianMixtureOracle", "register_mixture"]


def register_mixture(
    module: nn.Module,
    means: Tensor | Sequence[float],
    stds: Sequence[float] | Tensor,
    weights: Sequence[float] | Tensor | None = None,
) -> None:
    """Check a mixture Σ_k w_k N(μ_k, s_k² I) and store it as float64 buffers ``means`` [K, *shape] (or [K]),
    ``stds`` [K] and ``weights`` [K] (normalised to sum 1; default uniform) on ``module``."""
    means = torch.as_tensor(means, dtype=torch.float64)
    k = means.shape[0]
    stds = torch.as_tensor(stds, dtype=torch.float64).reshape(k)
    if weights is None:
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(k)
    if (stds < 0).any() or (weights <= 0).any():
        raise ValueError("stds must be >= 0 and weights > 0")
    module.register_buffer("means", means)
    module.register_buffer("stds", stds)
    module.register_buffer("weights", weights / weights.sum())


class GaussianMixtureOracle(nn.Module):
    """ε*(x_t, t) for x0 ~ Σ_k w_k N(μ_k, s_k² I). x [B, *shape], t LongTensor [B] → [B, *shape].

    ``means`` [K, *shape] (or K floats, broadcast over pixels), ``stds`` and ``weights`` K floats.
    Computed in float64 and returned in x's dtype.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        means: Tensor | Sequence[float],
        stds: Sequence[float] | Tensor,
        weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        self.schedule = schedule
        register_mixture(self, means, stds, weights)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.eps_given_log_weights(x, t, self.weights.to(x.device).log()[None])

    def eps_given_log_weights(self, x: Tensor, t: Tensor, log_weights: Tensor) -> Tensor:
        """ε* for the mixture re-weighted per sample: ``log_weights`` [B, K] or [1, K] (−inf drops a component)."""
        xd = x.to(torch.float64)
        b = x.shape[0]
        ab = self.schedule.alpha_bars.to(x.device)[t.to(x.device)].reshape(b, 1)  # [B, 1]
        flat = xd.reshape(b, 1, -1)  # [B, 1, D]
        mu = self.means.to(x.device).reshape(self.means.shape[0], -1)  # [K, D] or [K, 1]
        mu = mu.expand(-1, flat.shape[-1])[None]  # [1, K, D]
        v = ab * self.stds.to(x.device)[None] ** 2 + 1 - ab  # [B, K]
        diff = flat - ab.sqrt()[..., None] * mu  # [B, K, D]
        d = flat.shape[-1]
        logp = -0.5 * (diff**2).sum(-1) / v - 0.5 * d * v.log() + log_weights.to(x.device, torch.float64)
        r = torch.softmax(logp, dim=1)  # [B, K]
        eps = ((r / v)[..., None] * diff).sum(1) * (1 - ab).sqrt()  # [B, D]
        return eps.reshape(x.shape).to(x.dtype)
