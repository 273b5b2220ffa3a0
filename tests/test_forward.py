"""Lesson 2 checks: ``q_sample`` (eq. 4), ``predict_x0`` (eq. 4 solved for x0) and ``q_posterior`` (eqs. 6–7).

The schedule always comes from ``ddpm_ref.NoiseSchedule``; expected values are the closed forms in float64.
Students may compute in float32: tolerances are float32-sized (1e-5, or 1e-4 where 1/√ᾱ_t ≈ 7.6 amplifies).
"""

from __future__ import annotations

import torch

import ddpm_ref as R
from tests._asserts import diagnose, expect_close, expect_tensor, fmt
from tests._fixtures import MIXED_T, T, seed_schedule
from tests.harness import Failure, check


def images(b: int, seed: int, shape: tuple[int, ...] = (3, 8, 8), dtype: torch.dtype = torch.float32):
    """Two [b, *shape] tensors: x in [−1, 1] and standard normal noise, from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, *shape, generator=g, dtype=torch.float64) * 2 - 1
    n = torch.randn(b, *shape, generator=g, dtype=torch.float64)
    return x.to(dtype), n.to(dtype)


def per_sample(table: torch.Tensor, t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
    """table[t] as float64 [B, 1, …, 1]."""
    return table.to(torch.float64)[t].reshape(-1, *([1] * (ndim - 1)))


def forward_closed_form(x0: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """√ᾱ·x0 + √(1−ᾱ)·ε in float64 (eq. 4), ᾱ already [B, 1, …, 1]."""
    return ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()


def _call_on_a_batch(fn, call: str, seed: int):
    """``fn(a, MIXED_T, b, schedule)`` on ``images(6, seed)`` (the calling convention of q_sample and predict_x0),
    checked to return a tensor shaped like ``a``: (out, a, b, schedule)."""
    s = seed_schedule()
    a, b = images(len(MIXED_T), seed)
    out = fn(a, MIXED_T, b, s)
    expect_tensor(out, call, shape=a.shape, dtype=a.dtype, device=a.device)
    return out, a, b, s


# ---------------------------------------------------------------------------------------- q_sample


def _q_sample_diagnoses(s: R.NoiseSchedule, x0, noise, t) -> list:
    nd = x0.ndim
    ab = per_sample(s.alpha_bars, t, nd)
    return [
        (lambda: forward_closed_form(x0, noise, per_sample(s.alphas, t, nd)),
         "you used α_t (alphas); jumping straight to x_t needs the cumulative ᾱ_t (alpha_bars)"),
        (lambda: forward_closed_form(x0, noise, per_sample(s.betas, t, nd)), "did you use β instead of ᾱ?"),
        (lambda: ab * x0.double() + (1 - ab) * noise.double(),
         "take square roots: x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε (those are the mean and the standard deviation)"),
        (lambda: (1 - ab).sqrt() * x0.double() + ab.sqrt() * noise.double(),
         "the coefficients are swapped: √ᾱ_t multiplies x0 and √(1 − ᾱ_t) multiplies ε"),
        (lambda: forward_closed_form(x0, noise, per_sample(s.alpha_bars, (t - 1) % s.T, nd)),
         "t is off by one: timesteps are 0-based here, so use alpha_bars[t], not alpha_bars[t − 1]"),
        (lambda: forward_closed_form(x0, noise, per_sample(s.alpha_bars_prev, t, nd)),
         "t is off by one: you used ᾱ_{t−1} (alpha_bars_prev); q(x_t | x0) uses alpha_bars[t]"),
        (lambda: forward_closed_form(x0, noise, per_sample(s.alpha_bars, (t + 1).clamp(max=s.T - 1), nd)),
         "t is off by one: you used ᾱ_{t+1}; use alpha_bars[t]"),
        (lambda: forward_closed_form(x0, noise, per_sample(s.alpha_bars, t[:1].expand_as(t), nd)),
         "every sample has its own t: pick ᾱ_t per sample, shaped [B, 1, 1, 1] (schedule.gather)"),
    ]


@check("q_sample")
def test_q_sample_values(impl) -> None:
    """x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε (eq. 4) for a batch with one t per sample, t = 0 … 399."""
    out, x0, noise, s = _call_on_a_batch(impl.q_sample, "q_sample(x0 [6, 3, 8, 8], t [6], noise, schedule)", 0)
    expected = forward_closed_form(x0, noise, per_sample(s.alpha_bars, MIXED_T))
    expect_close(out, expected, f"q_sample with t = {MIXED_T.tolist()}", atol=5e-5, rtol=1e-5,
                 diagnoses=_q_sample_diagnoses(s, x0, noise, MIXED_T),
                 hint="x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε with ᾱ_t = schedule.alpha_bars[t]")


@check("q_sample")
def test_q_sample_t0_is_almost_x0(impl) -> None:
    """At t = 0 almost nothing is noised: ᾱ_0 = 0.9999, so x_t = 0.99995·x0 + 0.01·ε ≈ x0."""
    s = seed_schedule()
    x0, noise = images(4, 1)
    t = torch.zeros(4, dtype=torch.long)
    out = expect_tensor(impl.q_sample(x0, t, noise, s), "q_sample at t=0", shape=x0.shape, dtype=x0.dtype)
    expected = forward_closed_form(x0, noise, per_sample(s.alpha_bars, t))
    if not torch.allclose(out.double(), expected, atol=5e-5, rtol=1e-5):
        diff = float((out.double() - x0.double()).abs().max())
        hint = diagnose(out, _q_sample_diagnoses(s, x0, noise, t), 1e-4, 1e-4) or (
            "x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε with ᾱ_t = schedule.alpha_bars[t]")
        raise Failure(
            f"x_t at t=0 should be ≈ x0 (ᾱ_0 = 0.9999, so x_t = 0.99995·x0 + 0.01·ε, within 0.04 of x0); "
            f"yours differs from x0 by up to {diff:.2g} (expected {fmt(expected)}, got {fmt(out)}).",
            hint,
        )


@check("q_sample", hidden=True)
def test_q_sample_general(impl) -> None:
    """Any schedule, float64 images of any size, an int t; uses the given noise and leaves its inputs unchanged."""
    s = R.NoiseSchedule(R.cosine_beta_schedule(1000))
    x0, noise = images(3, 2, shape=(1, 5, 7), dtype=torch.float64)
    x0_copy, noise_copy = x0.clone(), noise.clone()
    t = torch.tensor([999, 10, 500])
    out = impl.q_sample(x0, t, noise, s)
    expect_tensor(out, "q_sample(float64 x0 [3, 1, 5, 7], cosine schedule T=1000)", shape=x0.shape,
                  dtype=torch.float64, hint="compute in x0's dtype (float64 here): schedule.gather casts for you")
    expect_close(out, forward_closed_form(x0, noise, per_sample(s.alpha_bars, t)), "q_sample with a cosine schedule",
                 atol=5e-5, rtol=1e-5, diagnoses=_q_sample_diagnoses(s, x0, noise, t),
                 hint="x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε with the alpha_bars of the schedule passed in")
    if not (torch.equal(x0, x0_copy) and torch.equal(noise, noise_copy)):
        raise Failure("q_sample changed its inputs in place.", "avoid x0.mul_(...) / noise += ...")
    out = impl.q_sample(x0, 250, torch.zeros_like(x0), s)
    expect_tensor(out, "q_sample(x0, t=250 (an int), noise=0)", shape=x0.shape, dtype=torch.float64)
    expect_close(out, s.alpha_bars[250].sqrt() * x0, "q_sample(x0, t=250, noise=0) (must be √ᾱ_250·x0)",
                 atol=1e-5, rtol=1e-5, hint="an int t means the same step for the whole batch; use the noise given")


# ---------------------------------------------------------------------------------------- predict_x0


def _x0_closed_form(x_t, eps, ab):
    return (x_t.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()


@check("predict_x0")
def test_predict_x0_values(impl) -> None:
    """x̂0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t for a batch with one t per sample."""
    out, x_t, eps, s = _call_on_a_batch(impl.predict_x0, "predict_x0(x_t [6, 3, 8, 8], t [6], eps, schedule)", 3)
    ab = per_sample(s.alpha_bars, MIXED_T)
    xd, ed = x_t.double(), eps.double()
    expect_close(out, _x0_closed_form(x_t, eps, ab), f"predict_x0 with t = {MIXED_T.tolist()}", atol=1e-4, rtol=1e-5,
                 diagnoses=[
                     (lambda: (xd - (1 - ab).sqrt() * ed) * ab.sqrt(),
                      "the formula is inverted: divide by √ᾱ_t, do not multiply (x_t = √ᾱ_t·x0 + …)"),
                     (lambda: ab.sqrt() * xd - (1 - ab).sqrt() * ed,
                      "the formula is inverted: solve x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε for x0"),
                     (lambda: (xd + (1 - ab).sqrt() * ed) / ab.sqrt(), "subtract the noise: x_t − √(1 − ᾱ_t)·ε"),
                     (lambda: (xd - (1 - ab) * ed) / ab, "take square roots: √(1 − ᾱ_t) and √ᾱ_t"),
                     (lambda: _x0_closed_form(x_t, eps, per_sample(s.alphas, MIXED_T)),
                      "use ᾱ_t (alpha_bars), not α_t"),
                     (lambda: (xd - ab.sqrt() * ed) / (1 - ab).sqrt(),
                      "√(1 − ᾱ_t) goes with ε and √ᾱ_t divides: x̂0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t"),
                 ], hint="x̂0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t")


@check("predict_x0")
def test_predict_x0_inverts_q_sample(impl) -> None:
    """predict_x0(q_sample(x0, t, ε), t, ε) recovers x0 at every t (every 7th t and t = 399)."""
    s = seed_schedule()
    t = torch.cat([torch.arange(0, T, 7), torch.tensor([T - 1])])
    x0, eps = images(len(t), 4, shape=(1, 4, 4))
    x_t = R.q_sample(x0, t, eps, s)
    out = expect_tensor(impl.predict_x0(x_t, t, eps, s), "predict_x0(q_sample(x0, t, ε), t, ε)", shape=x0.shape,
                        dtype=x0.dtype)
    bad = (out.double() - x0.double()).abs().flatten(1).amax(1)
    if bool((bad > 1e-4).any()):
        worst = int(bad.argmax())
        raise Failure(
            f"predict_x0 should undo q_sample and return x0, but at t={int(t[worst])} it is off by "
            f"{float(bad[worst]):.3g} "
            f"(x0 {fmt(x0[worst])}, yours {fmt(out[worst])}).",
            "solve x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε for x0",
        )


# ---------------------------------------------------------------------------------------- q_posterior


def _posterior(impl, x0, x_t, t, s, label):
    out = impl.q_posterior(x0, x_t, t, s)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise AssertionError(f"{label} should return a pair (mean, variance), got {type(out).__name__}"
                             + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    return out


def _posterior_of_a_batch(impl, seed: int):
    """q_posterior on ``images(6, seed)`` as (x0, x_t) with t = MIXED_T: ((mean, variance), x0, x_t, schedule,
    the call's label)."""
    s = seed_schedule()
    x0, x_t = images(len(MIXED_T), seed)
    label = "q_posterior(x0 [6, 3, 8, 8], x_t, t [6], schedule)"
    return _posterior(impl, x0, x_t, MIXED_T, s, label), x0, x_t, s, label


@check("q_posterior")
def test_q_posterior_mean(impl) -> None:
    """μ̃_t = √ᾱ_{t−1}β_t/(1−ᾱ_t)·x0 + √α_t(1−ᾱ_{t−1})/(1−ᾱ_t)·x_t (eq. 7); at t = 0 it is x0 itself."""
    (mean, _), x0, x_t, s, label = _posterior_of_a_batch(impl, 5)
    expect_tensor(mean, f"the mean of {label}", shape=x0.shape, dtype=x0.dtype, device=x0.device)
    b = per_sample(s.betas, MIXED_T)
    a = per_sample(s.alphas, MIXED_T)
    ab = per_sample(s.alpha_bars, MIXED_T)
    prev = per_sample(s.alpha_bars_prev, MIXED_T)
    x0d, xtd = x0.double(), x_t.double()

    def mu(c0, ct):
        return c0 * x0d + ct * xtd

    c0, ct = prev.sqrt() * b / (1 - ab), a.sqrt() * (1 - prev) / (1 - ab)
    # float32 arithmetic loses ~6e-4 (relative) in 1 − ᾱ_0 = 1e-4: hence 1e-3 here
    expect_close(mean, mu(c0, ct), f"posterior mean with t = {MIXED_T.tolist()}", atol=1e-3, rtol=1e-3, diagnoses=[
        (lambda: mu(ct, c0), "the coefficients are swapped: √ᾱ_{t−1}β_t/(1 − ᾱ_t) multiplies x0"),
        (lambda: mu(ab.sqrt() * b / (1 - ab), ct), "coef_x0 uses √ᾱ_{t−1} (alpha_bars_prev), not √ᾱ_t"),
        (lambda: mu(prev * b / (1 - ab), a * (1 - prev) / (1 - ab)), "take square roots: √ᾱ_{t−1} and √α_t"),
        (lambda: mu(c0, ab.sqrt() * (1 - prev) / (1 - ab)), "coef_xt uses √α_t (one step), not √ᾱ_t"),
    ], hint="μ̃_t = √ᾱ_{t−1}β_t/(1 − ᾱ_t)·x0 + √α_t(1 − ᾱ_{t−1})/(1 − ᾱ_t)·x_t (at t = 0 it is x0 itself)")


@check("q_posterior")
def test_q_posterior_variance(impl) -> None:
    """β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t) (eq. 7), per sample, broadcastable to x ([B, 1, 1, 1]); 0 at t = 0."""
    (_, var), x0, x_t, s, label = _posterior_of_a_batch(impl, 6)
    if not isinstance(var, torch.Tensor):
        raise AssertionError(f"the variance of {label} should be a tensor [B, 1, 1, 1], got {type(var).__name__}")
    try:
        full = torch.broadcast_to(var, x0.shape)
    except RuntimeError:
        raise Failure(
            f"the variance of {label} should broadcast against x ([6, 3, 8, 8]), got shape {list(var.shape)}.",
            "shape it [B, 1, 1, 1] (schedule.gather does)",
        ) from None
    expect_tensor(var, f"the variance of {label}", dtype=x0.dtype, device=x0.device)
    b = per_sample(s.betas, MIXED_T)
    ab = per_sample(s.alpha_bars, MIXED_T)
    prev = per_sample(s.alpha_bars_prev, MIXED_T)
    shape = x0.shape
    expect_close(full, (b * (1 - prev) / (1 - ab)).expand(shape), f"posterior variance with t = {MIXED_T.tolist()}",
                 atol=1e-7, rtol=1e-3, diagnoses=[
                     (lambda: b.expand(shape),
                      "that is β_t; the posterior variance is β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t)"),
                     (lambda: (b * (1 - prev) / (1 - ab)).sqrt().expand(shape),
                      "that is the standard deviation √β̃_t; return the variance β̃_t"),
                 ], hint="β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t), i.e. schedule.posterior_variance[t]")


@check("q_posterior", hidden=True)
def test_q_posterior_consistent_with_marginals(impl) -> None:
    """Averaging the posterior over x_t ~ q(x_t | x0) gives the marginal q(x_{t−1} | x0) = N(√ᾱ_{t−1}x0, 1 − ᾱ_{t−1}).

    The mean is linear: probing with (x0, x_t) = (1, 0) and (0, 1) gives coef_x0 and coef_xt; then
    coef_x0 + coef_xt·√ᾱ_t = √ᾱ_{t−1} and coef_xt²(1 − ᾱ_t) + β̃_t = 1 − ᾱ_{t−1} (cosine schedule, T = 50).
    """
    s = R.NoiseSchedule(R.cosine_beta_schedule(50))
    t = torch.arange(50)
    ones, zeros = torch.ones(50, 1, 1, 1, dtype=torch.float64), torch.zeros(50, 1, 1, 1, dtype=torch.float64)
    m_x0, var = _posterior(impl, ones, zeros, t, s, "q_posterior(x0=1, x_t=0, t)")
    m_xt, _ = _posterior(impl, zeros, ones, t, s, "q_posterior(x0=0, x_t=1, t)")
    c0, ct = m_x0.double().reshape(50), m_xt.double().reshape(50)
    var = torch.broadcast_to(var.double(), (50, 1, 1, 1)).reshape(50)
    ab, prev = s.alpha_bars, s.alpha_bars_prev
    expect_close(c0 + ct * ab.sqrt(), prev.sqrt(), "coef_x0 + coef_xt·√ᾱ_t (must equal √ᾱ_{t−1})", atol=1e-6, rtol=1e-6,
                 hint="the posterior mean must average to √ᾱ_{t−1}·x0: recheck both coefficients of eq. 7")
    expect_close(ct**2 * (1 - ab) + var, 1 - prev, "coef_xt²·(1 − ᾱ_t) + β̃_t (must equal 1 − ᾱ_{t−1})",
                 atol=1e-6, rtol=1e-6, hint="recheck β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t) and the coefficient of x_t")


def test_reference_forward_process_statistics() -> None:
    """Monte Carlo: q_sample of a fixed x0 has mean √ᾱ_t·x0 and variance 1 − ᾱ_t (200 000 draws, 4-σ bands)."""
    s = seed_schedule()
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for t in (0, 100, 399):
        x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
        x_t = R.q_sample(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64), s)
        ab = float(s.alpha_bars[t])
        assert abs(float(x_t.mean()) - ab**0.5 * 0.7) < 4 * (1 - ab) ** 0.5 / n**0.5
        assert abs(float(x_t.var()) - (1 - ab)) < 4 * (1 - ab) * (2 / n) ** 0.5 + 1e-12
