"""Independent cross-check of ``ddpm_ref`` against ``diffusers``' DDPMScheduler and DDIMScheduler.

The schedulers are built from a config (nothing is downloaded). diffusers keeps its tables in float32, so the
tolerances are float32-sized. Both libraries use 0-based timesteps and return the clean image at t = 0.
Note: our ``scaled_linear_beta_schedule`` (linear ends × 1000/T, Nichol & Dhariwal) is *not* diffusers'
``"scaled_linear"`` (linear in √β, from latent diffusion); it equals diffusers' ``"linear"`` with scaled ends.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import ddpm_ref as R
from tests._fixtures import fixed_eps, gen

diffusers = pytest.importorskip("diffusers")

T = 400


def ddpm_scheduler(**kwargs) -> diffusers.DDPMScheduler:
    config = {"num_train_timesteps": T, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
              "clip_sample": True, "variance_type": "fixed_small"} | kwargs
    return diffusers.DDPMScheduler(**config)


def ddim_scheduler(spacing: str) -> diffusers.DDIMScheduler:
    return diffusers.DDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                   clip_sample=True, set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing)


def close(a: Tensor, b: Tensor, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


def test_betas_and_alpha_bars_match_diffusers() -> None:
    """linear = "linear", cosine = "squaredcos_cap_v2" (max β 0.999), scaled_linear = "linear" with ends × 1000/T."""
    close(ddpm_scheduler().betas, R.linear_beta_schedule(T), atol=1e-9, rtol=1e-6)
    close(ddpm_scheduler(beta_schedule="squaredcos_cap_v2").betas, R.cosine_beta_schedule(T), atol=1e-7, rtol=1e-5)
    close(ddpm_scheduler(beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T).betas,
          R.scaled_linear_beta_schedule(T), atol=1e-9, rtol=1e-6)
    assert not torch.allclose(ddpm_scheduler(beta_schedule="scaled_linear").betas.double(),
                              R.scaled_linear_beta_schedule(T), rtol=1e-2)  # different schedules, same name
    for name, config in (("linear", {}), ("cosine", {"beta_schedule": "squaredcos_cap_v2"})):
        s = R.NoiseSchedule.from_name(name, T)
        close(ddpm_scheduler(**config).alphas_cumprod, s.alpha_bars, atol=1e-7, rtol=1e-5)
    assert abs(float(ddpm_scheduler().alphas_cumprod[-1]) - 0.0175) < 1e-4  # the seed schedule's last ᾱ, again


def test_add_noise_matches_q_sample() -> None:
    """DDPMScheduler.add_noise(x0, ε, t) = q_sample(x0, t, ε) for one t per sample."""
    s = R.NoiseSchedule(R.linear_beta_schedule(T))
    x0 = torch.rand(5, 3, 8, 8, generator=gen(0)) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen(1))
    t = torch.tensor([0, 1, 150, 398, 399])
    close(ddpm_scheduler().add_noise(x0, noise, t), R.q_sample(x0, t, noise, s))


def test_posterior_variance_matches_get_variance() -> None:
    """fixed_small = β̃_t (diffusers clamps t = 0 to 1e-20), fixed_large = β_t.

    diffusers recomputes β_t as 1 − ᾱ_t/ᾱ_{t−1} in float32, which cancels to ~5e-8 absolute error.
    """
    s = R.NoiseSchedule(R.linear_beta_schedule(T))
    sched = ddpm_scheduler()
    small = torch.stack([sched._get_variance(t, variance_type="fixed_small") for t in range(T)])
    large = torch.stack([sched._get_variance(t, variance_type="fixed_large") for t in range(T)])
    close(small[1:], s.posterior_variance[1:], atol=1e-7, rtol=1e-4)
    assert float(small[0]) <= 1e-20 and float(s.posterior_variance[0]) == 0.0
    close(large, s.betas, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("t", [0, 1, 57, 200, 399])
def test_ddpm_step_matches_p_sample(t: int) -> None:
    """One DDPMScheduler.step (clip_sample=True) = p_sample with clip_x0: same generator seed, same noise.

    Checked for fixed_small (β̃_t) against variance="posterior" and fixed_large (β_t) against variance="beta".
    """
    s = R.NoiseSchedule(R.linear_beta_schedule(T))
    x_t = 1.5 * torch.randn(4, 3, 8, 8, generator=gen(t))
    eps = fixed_eps(x_t, torch.full((4,), t))
    for variance_type, variance in (("fixed_small", "posterior"), ("fixed_large", "beta")):
        theirs = ddpm_scheduler(variance_type=variance_type).step(eps, t, x_t, generator=gen(99)).prev_sample
        ours = R.p_sample(fixed_eps, x_t, t, s, generator=gen(99), variance=variance)
        close(ours, theirs, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_ddim_step_matches_diffusers(spacing: str) -> None:
    """DDIMScheduler.step(eta, use_clipped_model_output=True) = ddim_step, η ∈ {0, 0.7}, 50 of 400 steps.

    diffusers steps from t to t − T//steps and uses ᾱ = 1 past t = 0 (set_alpha_to_one): with T divisible by
    the number of steps that is exactly the next entry of ddim_timesteps, then t_prev = −1.
    """
    s = R.NoiseSchedule(R.linear_beta_schedule(T))
    sched = ddim_scheduler(spacing)
    sched.set_timesteps(50)
    ts = R.ddim_timesteps(T, 50, spacing)
    assert sched.timesteps.tolist() == ts
    for i in (0, 20, 49):
        t, t_prev = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
        x_t = 2.0 * torch.randn(4, 3, 8, 8, generator=gen(i))
        z = torch.randn(x_t.shape, generator=gen(100 + i))
        eps = fixed_eps(x_t, torch.full((4,), t))
        for eta in (0.0, 0.7):
            theirs = sched.step(eps, t, x_t, eta=eta, use_clipped_model_output=True, variance_noise=z).prev_sample
            ours = R.ddim_step(fixed_eps, x_t, t, t_prev, s, eta=eta, noise=z)
            close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_ddim_timesteps_match_set_timesteps() -> None:
    """ddim_timesteps(T, steps, spacing) = DDIMScheduler.set_timesteps(steps).timesteps for all three spacings."""
    for spacing in ("trailing", "leading", "linspace"):
        for total, steps in ((400, 50), (400, 30), (1000, 50), (400, 400), (400, 1), (10, 3), (1000, 7)):
            sched = diffusers.DDIMScheduler(num_train_timesteps=total, steps_offset=0, timestep_spacing=spacing)
            sched.set_timesteps(steps)
            assert sched.timesteps.tolist() == R.ddim_timesteps(total, steps, spacing), (spacing, total, steps)
