"""Lesson 7 checks: ``ddim_step`` (Song et al. 2021, eq. 12) and ``ddim_sample``.

x_{t_prev} = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev − σ²)·ε̂ + σ·z, σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev) (eq. 16),
ᾱ_prev = 1 when t_prev = −1; with clip_x0, x̂0 is clipped to [−1, 1] and ε̂ recomputed from it.
Whole chains are checked against the exact ε* of known data (``ddpm_ref.GaussianMixtureOracle``).
"""

from __future__ import annotations

import torch
from torch import Tensor

import ddpm_ref as R
from tests import _fixtures as fx
from tests._asserts import Recorder, call, expect_close, expect_tensor, timesteps_summary
from tests._fixtures import T, fixed_eps, gen, noise_reaching_schedule, noisy_inputs, seed_schedule
from tests.harness import Failure, check


def ddim_closed_form(s: R.NoiseSchedule, x_t: Tensor, t: int, t_prev: int, *, eta: float = 0.0, clip: bool = True,
                     noise: Tensor | None = None, recompute: bool = True, ab_prev: float | None = None,
                     sigma_in_direction: bool = True) -> Tensor:
    """Eq. 12 in float64 for the fixed predictor (the ``ab_prev``/``recompute``/… switches build typical mistakes)."""
    x = x_t.double()
    eps = fixed_eps(x, torch.full((x.shape[0],), t))
    ab = float(s.alpha_bars[t])
    if ab_prev is None:
        ab_prev = float(s.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
    x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
    if clip:
        x0 = x0.clamp(-1, 1)
        if recompute:
            eps = (x - ab**0.5 * x0) / (1 - ab) ** 0.5
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
    direction = max(1 - ab_prev - (sigma**2 if sigma_in_direction else 0.0), 0.0) ** 0.5
    out = ab_prev**0.5 * x0 + direction * eps
    if sigma > 0 and noise is not None:
        out = out + sigma * noise.double()
    return out




def _inputs(b: int, seed: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    return noisy_inputs(b, seed, scale)


def _step(impl, x_t, t, t_prev, s, **kwargs) -> Tensor:
    out = impl.ddim_step(Recorder(fixed_eps), x_t, t, t_prev, s, **kwargs)
    return expect_tensor(out, f"ddim_step(model, x_t [B, 1, 4, 4], t={t}, t_prev={t_prev}, ...)", shape=x_t.shape,
                         dtype=x_t.dtype, device=x_t.device)


# ---------------------------------------------------------------------------------------- ddim_step


@check("ddim_step")
def test_ddim_step_deterministic(impl) -> None:
    """η = 0, no clipping: x_{t_prev} = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev)·ε̂ for jumps 399→391, 200→150, 10→0."""
    s = seed_schedule()
    x_t, _ = _inputs(4, 0)
    for t, t_prev in ((399, 391), (200, 150), (10, 0)):
        out = _step(impl, x_t, t, t_prev, s, eta=0.0, clip_x0=False)
        ab_t = float(s.alpha_bars[t])
        expect_close(out, ddim_closed_form(s, x_t, t, t_prev, clip=False), f"ddim_step(t={t}, t_prev={t_prev}, eta=0)",
                     atol=1e-4, rtol=1e-4, diagnoses=[
                         (lambda t=t, ab=ab_t: ddim_closed_form(s, x_t, t, t - 1, clip=False),
                          "jump to t_prev, not to t − 1: use ᾱ_{t_prev} = alpha_bars[t_prev]"),
                         (lambda t=t, ab=ab_t: ddim_closed_form(s, x_t, t, t, clip=False, ab_prev=ab),
                          "ᾱ_prev is alpha_bars[t_prev], not alpha_bars[t]"),
                         (lambda t=t, tp=t_prev: ddim_closed_form(s, x_t, t, tp, clip=False,
                                                                  ab_prev=float(s.alphas[tp])),
                          "use the cumulative ᾱ (alpha_bars), not α"),
                     ], hint="x̂0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t; x_prev = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev)·ε (eq. 12, η = 0)")


@check("ddim_step")
def test_ddim_step_last_step_returns_x0(impl) -> None:
    """t_prev = −1 means ᾱ_prev = 1: the last step returns x̂0 (clipped), with no noise for any η."""
    s = seed_schedule()
    x_t, z = _inputs(4, 1)
    wrap = "t_prev = −1 means ᾱ_prev = 1 (the clean image), but alpha_bars[−1] is Python's last element ᾱ_{T−1}"
    for eta in (0.0, 0.5):
        try:
            out = _step(impl, x_t, 7, -1, s, eta=eta, noise=z)
        except (ValueError, TypeError, ZeroDivisionError) as e:  # √ of a negative number, complex numbers, …
            raise Failure(
                f"ddim_step(t=7, t_prev=-1, eta={eta}) raised {type(e).__name__}: {e}.",
                f"{wrap}: use 1.0 when t_prev < 0",
            ) from e
        expect_close(out, ddim_closed_form(s, x_t, 7, -1, eta=eta, noise=z), f"ddim_step(t=7, t_prev=-1, eta={eta})",
                     atol=1e-4, rtol=1e-4, diagnoses=[
                         (lambda e=eta: ddim_closed_form(s, x_t, 7, -1, eta=e, noise=z,
                                                         ab_prev=float(s.alpha_bars[-1])),
                          f"{wrap}, almost pure noise: use 1.0 when t_prev < 0"),
                         (lambda e=eta: ddim_closed_form(s, x_t, 7, -1, eta=e, noise=z, ab_prev=float(s.alpha_bars[0])),
                          "at the last step (t_prev = −1) use ᾱ_prev = 1, not ᾱ_0"),
                     ], hint="with t_prev = −1, ᾱ_prev = 1 and σ = 0, so x_prev = x̂0")


@check("ddim_step")
def test_ddim_step_clip_recomputes_eps(impl) -> None:
    """clip_x0=True clips x̂0 to [−1, 1] and recomputes ε̂ = (x_t − √ᾱ_t·x̂0)/√(1 − ᾱ_t) from it."""
    s = seed_schedule()
    x_t, _ = _inputs(4, 2, scale=3.0)
    out = _step(impl, x_t, 120, 100, s, eta=0.0, clip_x0=True)
    expect_close(out, ddim_closed_form(s, x_t, 120, 100), "ddim_step(t=120, t_prev=100, clip_x0=True)", atol=1e-4,
                 rtol=1e-4, diagnoses=[
                     (lambda: ddim_closed_form(s, x_t, 120, 100, recompute=False),
                      "after clipping x̂0, recompute ε̂ = (x_t − √ᾱ_t·x̂0)/√(1 − ᾱ_t) so that x̂0 and ε̂ agree"),
                     (lambda: ddim_closed_form(s, x_t, 120, 100, clip=False), "clip x̂0 to [−1, 1] when clip_x0"),
                 ], hint="x̂0 = clamp(x̂0, −1, 1), then ε̂ from the clipped x̂0")


@check("ddim_step")
def test_ddim_step_eta(impl) -> None:
    """η > 0 adds σ·z with σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev) and shrinks the direction to √(1−ᾱ_prev−σ²)."""
    s = seed_schedule()
    x_t, z = _inputs(4, 3)
    for eta, (t, t_prev) in ((1.0, (300, 250)), (0.5, (50, 20))):
        out = _step(impl, x_t, t, t_prev, s, eta=eta, clip_x0=False, noise=z)
        expect_close(out, ddim_closed_form(s, x_t, t, t_prev, eta=eta, clip=False, noise=z),
                     f"ddim_step(t={t}, t_prev={t_prev}, eta={eta}, noise=z)", atol=1e-4, rtol=1e-4, diagnoses=[
                         (lambda e=eta, t=t, tp=t_prev: ddim_closed_form(s, x_t, t, tp, eta=e, clip=False, noise=z,
                                                                         sigma_in_direction=False),
                          "with noise, the direction term shrinks: √(1 − ᾱ_prev − σ²)·ε̂"),
                         (lambda t=t, tp=t_prev: ddim_closed_form(s, x_t, t, tp, clip=False),
                          "η > 0 adds σ·z (z = noise, or fresh N(0, I) if noise is None)"),
                     ], hint="σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev) (eq. 16)")


@check("ddim_step", hidden=True)
def test_ddim_step_fresh_noise(impl) -> None:
    """η = 1 without ``noise``: z ~ N(0, I) from ``generator`` (same seed, same step); over t → t − 1, σ² = β̃_t."""
    s = seed_schedule()
    x_t = torch.zeros(2000, 1, 2, 2)
    a = _step(impl, x_t, 200, 199, s, eta=1.0, clip_x0=False, generator=gen(0))
    b = _step(impl, x_t, 200, 199, s, eta=1.0, clip_x0=False, generator=gen(0))
    c = _step(impl, x_t, 200, 199, s, eta=1.0, clip_x0=False, generator=gen(1))
    if not torch.equal(a, b) or torch.equal(a, c):
        raise Failure(
            "with η > 0 and no noise given, draw z from the generator: the same seed must give the same step and "
            "another seed another one.",
            "torch.randn(x_t.shape, generator=generator)",
        )
    sigma = float(s.posterior_variance[200].sqrt())  # η = 1 over one step: σ² = β̃_t
    z = (a.double() - ddim_closed_form(s, x_t, 200, 199, eta=1.0, clip=False)) / sigma
    m, sd = float(z.mean()), float(z.std())
    if abs(m) > 0.05 or abs(sd - 1) > 0.05:
        raise Failure(
            f"with η = 1 from t = 200 to 199, σ should be √β̃_200 = {sigma:.4f} and z ~ N(0, I); (x_prev − mean)/σ "
            f"has mean {m:.3f} and std {sd:.3f}.",
            "σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev)",
        )


# ---------------------------------------------------------------------------------------- ddim_sample


def _sample(impl, model, s, shape, **kwargs) -> Tensor:
    out = call(impl.ddim_sample, model, s, shape, device="cpu", progress=False, **kwargs)
    if isinstance(out, tuple):
        raise AssertionError(
            "ddim_sample(...) should return the samples tensor (a tuple only with return_intermediates)"
        )
    return expect_tensor(out, f"ddim_sample(model, schedule, shape={list(shape)}, ...)", shape=shape,
                         dtype=torch.float32)


@check("ddim_sample")
def test_ddim_sample_visits_timesteps(impl) -> None:
    """50 steps visit ddim_timesteps(400, 50, spacing) in order: 399, 391, …, 7 ('trailing', the default), 392 … 0."""
    s = seed_schedule()
    for spacing in ("trailing", "leading"):
        model = Recorder(lambda x, t: torch.zeros_like(x))
        kwargs = {"steps": 50, "generator": gen(0)} | ({} if spacing == "trailing" else {"spacing": spacing})
        _sample(impl, model, s, (8, 1, 4, 4), **kwargs)
        ts, expected = model.ts(), R.ddim_timesteps(T, 50, spacing)
        if ts != expected:
            if ts == expected[::-1]:
                hint = "go from the noisiest timestep down to the cleanest"
            elif spacing == "trailing" and ts == R.ddim_timesteps(T, 50, "leading"):
                hint = "the default spacing is 'trailing' (it starts at T − 1)"
            else:
                hint = f"visit ts = ddim_timesteps(schedule.T, steps, spacing) in order ({spacing!r} here)"
            raise Failure(
                f"ddim_sample(steps=50{'' if spacing == 'trailing' else ', spacing=' + repr(spacing)}) should call the "
                f"model at t = {timesteps_summary(expected)}; it called it at t = {timesteps_summary(ts)}.",
                hint,
            )


@check("ddim_sample")
def test_ddim_sample_deterministic_chain(impl) -> None:
    """η = 0 from a given x_T: exactly the chain of DDIM steps over ddim_timesteps(400, 20), ending at t_prev = −1."""
    s = seed_schedule()
    x_T = torch.randn(4, 1, 4, 4, generator=gen(1))
    out = _sample(impl, Recorder(fixed_eps), s, (4, 1, 4, 4), steps=20, x_T=x_T.clone())
    ts = R.ddim_timesteps(T, 20)

    def chain(last: int) -> Tensor:
        x = x_T.double()
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else last
            x = ddim_closed_form(s, x, t, t_prev)
        return x

    expect_close(out, chain(-1), "ddim_sample(..., steps=20, eta=0, x_T=x)", atol=1e-4, rtol=1e-4, diagnoses=[
        (lambda: chain(0), "after the last timestep step to t_prev = −1 (ᾱ_prev = 1), not to t = 0"),
        (lambda: ddim_closed_form(s, x_T, ts[0], -1), "loop over all the timesteps, one ddim_step each"),
    ], hint="for i, t in enumerate(ts): x = ddim_step(model, x, t, ts[i + 1] if i + 1 < len(ts) else −1, ...)")


@check("ddim_sample")
def test_ddim_sample_point_mass(impl) -> None:
    """Data = one fixed 2×2 image: 20 DDIM steps from noise return it for every sample (within 1e-3)."""
    s = noise_reaching_schedule()
    x = _sample(impl, R.GaussianMixtureOracle(s, fx.POINT_MASS_IMAGE, [0.0]), s, (200, 1, 2, 2), steps=20,
                generator=gen(2))
    fx.expect_point_mass(x, "DDIM sample")


@check("ddim_sample", hidden=True)
def test_ddim_sample_gaussian_data(impl) -> None:
    """Data N(0.3, 0.2²), η = 0, 400 steps (the ODE limit): mean 0.3 ± 0.01, std 0.2 ± 0.015 (8000 values).

    Fewer steps shrink the spread (ODE discretisation): 50 steps give std ≈ 0.174, 400 give 0.196.
    """
    s = noise_reaching_schedule()
    x = _sample(impl, R.GaussianMixtureOracle(s, [0.3], [0.2]), s, (2000, 1, 2, 2), steps=T, generator=gen(3))
    fx.expect_gaussian_samples(x, "noise predictor", "400 DDIM steps")


@check("ddim_sample", hidden=True)
def test_ddim_sample_two_point_mixture(impl) -> None:
    """Data = constant images −0.5 (0.3) / +0.5 (0.7), 50 steps: 0.7 ± 0.045 of 1000 samples are +0.5."""
    s = noise_reaching_schedule()
    x = _sample(impl, fx.two_point_oracle(s), s, (1000, 1, 4, 4), steps=50, generator=gen(4))
    fx.expect_two_point_mixture(x)


# ---------------------------------------------------------------------------------------- reference facts


def test_ddim_few_steps_shrink_a_gaussian() -> None:
    """50 deterministic DDIM steps on N(0.3, 0.2²) data give std ≈ 0.174 (400 steps: 0.196), mean still 0.3.

    The probability-flow ODE maps N(0, I) onto the data exactly, but its Euler-like discretisation with
    8-step jumps under-shoots the spread by ~13%. 32 000 values; the bands are 6× the sampling error.
    """
    s = noise_reaching_schedule()
    oracle = R.GaussianMixtureOracle(s, [0.3], [0.2])
    stds = {}
    for steps in (50, 400):
        x = R.ddim_sample(oracle, s, (2000, 1, 4, 4), steps=steps, generator=gen(0), progress=False)
        assert abs(float(x.mean()) - 0.3) < 0.006
        stds[steps] = float(x.std())
    assert 0.168 < stds[50] < 0.180 and 0.190 < stds[400] < 0.202, stds


def test_ddim_eta1_over_consecutive_steps_is_ddpm() -> None:
    """With t_prev = t − 1 and η = 1, σ² = β̃_t and the DDIM step equals the DDPM step p_sample (same noise)."""
    s = seed_schedule()
    x_t, z = _inputs(4, 5, scale=2.0)
    model = Recorder(fixed_eps)
    for t in (1, 150, 399):
        a = R.ddim_step(model, x_t, t, t - 1, s, eta=1.0, noise=z)
        b = R.p_sample(model, x_t, t, s, noise=z)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
