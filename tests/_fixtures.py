"""Fixed inputs shared by the check modules: the seed schedule, seeded generators, a stand-in noise predictor.

Every value here is deterministic, so a check that uses them gives the same verdict on every run.
"""

from __future__ import annotations

import torch
from torch import Tensor

import ddpm_ref as R
from tests._asserts import fmt

#: the seed run's number of steps
T = 400
#: one timestep per sample, both ends included
MIXED_T = torch.tensor([0, 1, 57, 200, 398, 399])


def seed_schedule() -> R.NoiseSchedule:
    """The seed run's schedule: T = 400, linear β from 1e-4 to 0.02 (ᾱ_{T−1} ≈ 0.0175: not pure noise)."""
    return R.NoiseSchedule(R.linear_beta_schedule(T))


def noise_reaching_schedule() -> R.NoiseSchedule:
    """The 1000/T-scaled linear schedule at T = 400 (ᾱ_{T−1} ≈ 4e-5: the chain starts at pure noise)."""
    return R.NoiseSchedule(R.scaled_linear_beta_schedule(T))


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def fixed_eps(x: Tensor, t: Tensor | int) -> Tensor:
    """A deterministic stand-in for ε_θ: 0.8·x_t + 0.05·t/T (x̂0 leaves [−1, 1] for some pixels, so clipping
    matters)."""
    return 0.8 * x + 0.05 * (torch.as_tensor(t).to(x.dtype) / T).reshape(-1, *([1] * (x.ndim - 1)))


def noisy_inputs(b: int, seed: int, scale: float) -> tuple[Tensor, Tensor]:
    """(x_t = scale·N(0, I), z = N(0, I)), both [b, 1, 4, 4], from one generator seeded ``seed``."""
    g = gen(seed)
    return scale * torch.randn(b, 1, 4, 4, generator=g), torch.randn(b, 1, 4, 4, generator=g)


def two_point_oracle(s: R.NoiseSchedule) -> R.GaussianMixtureOracle:
    """The exact ε* of constant images of −0.5 (weight 0.3) or +0.5 (weight 0.7) under schedule ``s``."""
    return R.GaussianMixtureOracle(s, [-0.5, 0.5], [0.0, 0.0], [0.3, 0.7])


def expect_two_point_mixture(x: Tensor) -> None:
    """Samples x [N, C, H, W] of :func:`two_point_oracle`: each within 1e-2 of −0.5 or +0.5, and 0.7 ± 0.045 of
    them +0.5 (about 3 standard errors of a fraction over 1000 samples)."""
    near = torch.minimum((x + 0.5).abs(), (x - 0.5).abs()).flatten(1).amax(1)
    frac = float((x.flatten(1).mean(1) > 0).double().mean())
    if float(near.max()) > 1e-2 or abs(frac - 0.7) > 0.045:
        raise AssertionError(
            f"samples should be constant images of −0.5 or +0.5 with weights 0.3 / 0.7; the fraction of +0.5 is "
            f"{frac:.3f} and the worst sample is {float(near.max()):.3g} away from either"
        )


#: data = this one fixed 2×2 image (a point mass) [1, 1, 2, 2]
POINT_MASS_IMAGE = torch.tensor([[-0.5, 0.2], [0.7, 0.9]]).reshape(1, 1, 2, 2)


def expect_point_mass(x: Tensor, samples: str) -> None:
    """Every sample of ``x`` [N, 1, 2, 2] within 1e-3 of :data:`POINT_MASS_IMAGE` (``samples`` names them)."""
    err = float((x - POINT_MASS_IMAGE).abs().max())
    if err > 1e-3:
        raise AssertionError(f"with data = one fixed image {fmt(POINT_MASS_IMAGE)}, every {samples} should equal it; "
                             f"the worst is off by {err:.3g}")


def expect_gaussian_samples(x: Tensor, driver: str, sampler: str, *, std_tol: float = 0.015, hint: str = "") -> None:
    """Samples ``x`` of data N(0.3, 0.2²): mean 0.3 ± 0.01 and std 0.2 ± ``std_tol``. ``driver`` names the exact
    predictor that drove ``sampler`` (e.g. "noise predictor", "velocity"); ``hint`` ends the message."""
    m, sd = float(x.mean()), float(x.std())
    if abs(m - 0.3) > 0.01 or abs(sd - 0.2) > std_tol:
        raise AssertionError(f"with the exact {driver} of N(0.3, 0.2²) data, {sampler} should return mean ≈ 0.3 and "
                             f"std ≈ 0.2; got mean {m:.4f}, std {sd:.4f}" + (f". Hint: {hint}" if hint else ""))
