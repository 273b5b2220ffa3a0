"""Lesson 5 checks: ``p_sample`` (one step of Algorithm 2) and ``sample`` (the whole reverse chain).

One step is compared with the closed form μ̃_t(clip(x̂0), x_t) + σ_t·z (eqs. 7, 11; σ_t² = β̃_t or β_t) for a
fixed noise predictor. Whole chains are driven by ``ddpm_ref.GaussianMixtureOracle``, the exact E[ε | x_t] of
a known data distribution, so a correct sampler must return that distribution with no training at all.
Distribution tests use ``scaled_linear_beta_schedule(400)`` (ᾱ_{T−1} ≈ 4e-5: the chain starts at pure noise).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import expit
from torch import Tensor

import ddpm_ref as R
from tests._asserts import Recorder, call, expect_close, expect_tensor, timesteps_summary
from tests._fixtures import (
    MIXED_T,
    POINT_MASS_IMAGE,
    T,
    expect_gaussian_samples,
    expect_point_mass,
    expect_two_point_mixture,
    fixed_eps,
    gen,
    noise_reaching_schedule,
    noisy_inputs,
    seed_schedule,
    two_point_oracle,
)
from tests.harness import Failure, check


def step_closed_form(s: R.NoiseSchedule, x_t: Tensor, t: Tensor, noise: Tensor, *, clip: bool = True,
                     variance: str = "posterior", add_noise_at_0: bool = False, recompute: bool = True) -> Tensor:
    """μ̃_t(x̂0, x_t) + σ_t·z in float64, x̂0 = (x_t − √(1−ᾱ_t)ε_θ)/√ᾱ_t (clipped), σ_t = 0 at t = 0."""
    sh = (-1, *([1] * (x_t.ndim - 1)))
    x = x_t.double()
    eps = fixed_eps(x, t)
    ab = s.alpha_bars[t].reshape(sh)
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    if clip:
        x0 = x0.clamp(-1, 1)
    mean = s.posterior_mean_coef_x0[t].reshape(sh) * x0 + s.posterior_mean_coef_xt[t].reshape(sh) * x
    var = (s.posterior_variance if variance == "posterior" else s.betas)[t].reshape(sh)
    mask = torch.ones_like(var) if add_noise_at_0 else (t != 0).double().reshape(sh)
    return mean + mask * var.sqrt() * noise.double()


def _inputs(b: int, seed: int, scale: float = 1.5) -> tuple[Tensor, Tensor]:
    return noisy_inputs(b, seed, scale)


def _p_sample(impl, model, x_t, t, s, **kwargs) -> Tensor:
    out = impl.p_sample(model, x_t, t, s, **kwargs)
    return expect_tensor(out, "p_sample(model, x_t [B, 1, 4, 4], t, schedule, ...)", shape=x_t.shape,
                         dtype=x_t.dtype, device=x_t.device)




# ---------------------------------------------------------------------------------------- p_sample


@check("p_sample")
def test_p_sample_step(impl) -> None:
    """x_{t−1} = μ̃_t(clip(x̂0), x_t) + √β̃_t·z with the given noise z, one t per sample (t = 0 adds no noise)."""
    s = seed_schedule()
    x_t, z = _inputs(len(MIXED_T), 0)
    out = _p_sample(impl, Recorder(fixed_eps), x_t, MIXED_T, s, noise=z)
    expect_close(out, step_closed_form(s, x_t, MIXED_T, z), f"p_sample with t = {MIXED_T.tolist()}", atol=1e-4,
                 rtol=1e-4, diagnoses=[
                     (lambda: step_closed_form(s, x_t, MIXED_T, z, clip=False),
                      "with clip_x0=True (the default) clip x̂0 to [−1, 1] before the posterior mean"),
                     (lambda: step_closed_form(s, x_t, MIXED_T, z, variance="beta"),
                      "σ_t² is the posterior variance β̃_t by default (variance='posterior'), not β_t"),
                     (lambda: step_closed_form(s, x_t, MIXED_T, z * 0),
                      "add the noise: x_{t−1} = μ̃ + σ_t·z with z = noise (or fresh N(0, I) if noise is None)"),
                     (lambda: step_closed_form(s, x_t, MIXED_T, z * (s.posterior_variance[MIXED_T].reshape(-1, 1, 1, 1)
                                                                     .sqrt())),
                      "σ_t is a standard deviation: multiply z by √β̃_t, not by β̃_t"),
                 ], hint="x̂0 = predict_x0(x_t, t, model(x_t, t)), clipped; μ̃ from q_posterior; + √β̃_t·z where t > 0")


@check("p_sample")
def test_p_sample_no_noise_at_t0(impl) -> None:
    """At t = 0 the step returns the clean estimate μ̃_0 = clip(x̂0) with no noise, for both variance choices."""
    s = seed_schedule()
    x_t, z = _inputs(4, 1)
    t = torch.zeros(4, dtype=torch.long)
    for variance in ("posterior", "beta"):
        out = _p_sample(impl, Recorder(fixed_eps), x_t, t, s, noise=z, variance=variance)
        expect_close(out, step_closed_form(s, x_t, t, z, variance=variance), f"p_sample at t=0 (variance={variance!r})",
                     atol=1e-4, rtol=1e-4, diagnoses=[
                         (lambda v=variance: step_closed_form(s, x_t, t, z, variance=v, add_noise_at_0=True),
                          "noise was added at t = 0: the last step returns the mean, with no noise "
                          "(multiply the noise by (t > 0))"),
                         (lambda v=variance: step_closed_form(s, x_t, t, z, variance=v, clip=False),
                          "with clip_x0=True (the default) clip x̂0 to [−1, 1] before the posterior mean"),
                     ], hint="at t = 0 the posterior mean is x̂0 itself (coef_x0 = 1, coef_xt = 0)")


@check("p_sample")
def test_p_sample_clip_x0(impl) -> None:
    """clip_x0=True clamps x̂0 to [−1, 1] before the posterior mean; clip_x0=False does not."""
    s = seed_schedule()
    x_t, z = _inputs(6, 2, scale=3.0)
    t = torch.full((6,), 150)
    for clip in (True, False):
        out = _p_sample(impl, Recorder(fixed_eps), x_t, t, s, noise=z, clip_x0=clip)
        expect_close(out, step_closed_form(s, x_t, t, z, clip=clip), f"p_sample(..., clip_x0={clip})", atol=1e-4,
                     rtol=1e-4, diagnoses=[
                         (lambda c=clip: step_closed_form(s, x_t, t, z, clip=not c),
                          "clip x̂0 exactly when clip_x0 is True: x0 = x0.clamp(-1, 1)"),
                     ], hint="clip x̂0 (not x_t or the mean) to [−1, 1] when clip_x0")


@check("p_sample")
def test_p_sample_fresh_noise(impl) -> None:
    """Without ``noise``, z ~ N(0, I) is drawn from ``generator``: same seed, same step; another seed, another step."""
    s = seed_schedule()
    x_t = torch.zeros(2000, 1, 2, 2)
    t = torch.full((2000,), 200)
    model = Recorder(lambda x, t: torch.zeros_like(x))
    a = _p_sample(impl, model, x_t, t, s, generator=gen(0))
    b = _p_sample(impl, model, x_t, t, s, generator=gen(0))
    c = _p_sample(impl, model, x_t, t, s, generator=gen(1))
    if not torch.equal(a, b) or torch.equal(a, c):
        raise Failure(
            "p_sample should draw its noise from the generator it is given: the same seed must give the same step "
            "and another seed another step.",
            "z = torch.randn(x_t.shape, generator=generator)",
        )
    sigma = float(s.posterior_variance[200].sqrt())
    z = (a.double() - step_closed_form(s, x_t, t, torch.zeros_like(x_t))) / sigma
    m, sd = float(z.mean()), float(z.std())
    if abs(m) > 0.05 or abs(sd - 1) > 0.05:
        raise Failure(
            f"the noise of a step should be σ_t·z with z ~ N(0, I) (σ_200 = {sigma:.4f}); (x_{{t−1}} − μ̃)/σ_t has mean "
            f"{m:.3f} and std {sd:.3f}.",
            "torch.randn (not rand), times √β̃_t",
        )


@check("p_sample", hidden=True)
def test_p_sample_variance_beta(impl) -> None:
    """variance='beta' uses σ_t² = β_t (the other choice of §3.2) for t > 0."""
    s = seed_schedule()
    x_t, z = _inputs(len(MIXED_T), 3)
    out = _p_sample(impl, Recorder(fixed_eps), x_t, MIXED_T, s, noise=z, variance="beta")
    expect_close(out, step_closed_form(s, x_t, MIXED_T, z, variance="beta"), "p_sample(..., variance='beta')",
                 atol=1e-4, rtol=1e-4, diagnoses=[
                     (lambda: step_closed_form(s, x_t, MIXED_T, z),
                      "variance='beta' means σ_t² = β_t (schedule.betas); 'posterior' means β̃_t"),
                     (lambda: step_closed_form(s, x_t, MIXED_T, z, variance="beta", add_noise_at_0=True),
                      "noise was added at t = 0: the last step returns the mean, with no noise"),
                     (lambda: step_closed_form(s, x_t, MIXED_T, z, variance="beta", clip=False),
                      "with clip_x0=True (the default) clip x̂0 to [−1, 1] before the posterior mean"),
                 ], hint="σ_t² = β_t for variance='beta'")


def _chain_with(p_sample, model, s: R.NoiseSchedule, x: Tensor, g: torch.Generator) -> Tensor:
    for t in range(s.T - 1, -1, -1):
        x = p_sample(model, x, torch.full((x.shape[0],), t), s, generator=g)
    return x


@check("p_sample", hidden=True)
def test_p_sample_chain_returns_the_data(impl) -> None:
    """400 of your steps from N(0, I), driven by the exact ε* of N(0.3, 0.2²) data: mean 0.3 ± 0.01, std 0.2 ± 0.015.

    (The exact expectation for this sampler is std 0.192: β̃_t slightly under-disperses; 8000 values.)
    """
    s = noise_reaching_schedule()
    oracle = R.GaussianMixtureOracle(s, [0.3], [0.2])
    x = _chain_with(impl.p_sample, oracle, s, torch.randn(2000, 1, 2, 2, generator=gen(0)), gen(1))
    expect_tensor(x, "the end of the chain", shape=[2000, 1, 2, 2])
    m, sd = float(x.mean()), float(x.std())
    if abs(m - 0.3) > 0.01 or abs(sd - 0.2) > 0.015:
        raise Failure(
            f"running your p_sample from t = 399 to 0 with the exact noise predictor of N(0.3, 0.2²) data gave "
            f"mean {m:.4f} and std {sd:.4f}.",
            "check the posterior mean, σ_t and the noise",
        )


# ---------------------------------------------------------------------------------------- sample


def _sample(impl, model, s, shape, seed: int) -> Tensor:
    out = call(impl.sample, model, s, shape, generator=gen(seed), device="cpu", progress=False)
    if isinstance(out, tuple):
        raise AssertionError("sample(...) should return the samples tensor (a tuple only with return_intermediates)")
    return expect_tensor(out, f"sample(model, schedule, shape={list(shape)})", shape=shape, dtype=torch.float32)


@check("sample")
def test_sample_visits_every_t_in_order(impl) -> None:
    """Starts from x_{T−1} ~ N(0, I) and calls the model once at each t = T−1, T−2, …, 0 (seed schedule, T = 400)."""
    s = seed_schedule()
    model = Recorder(lambda x, t: torch.zeros_like(x))
    _sample(impl, model, s, (64, 1, 4, 4), 0)
    ts = model.ts()
    expected = list(range(T - 1, -1, -1))
    if ts != expected:
        if ts == expected[::-1]:
            hint = "the reverse loop runs in the wrong direction: go from t = T − 1 down to 0 (reversed(range(T)))"
        elif ts == expected[:-1]:
            hint = "the loop stops before t = 0: the step at t = 0 returns the clean image"
        elif ts == expected[1:]:
            hint = "start at t = T − 1 (timesteps are 0-based), not T − 2"
        else:
            hint = "for t in reversed(range(schedule.T)): x = p_sample(model, x, t, schedule, ...)"
        raise Failure(
            f"the model should be called at t = {timesteps_summary(expected)}; it was called at t = "
            f"{timesteps_summary(ts)}.",
            hint,
        )
    x_start = model.calls[0][0]
    m, sd = float(x_start.mean()), float(x_start.std())
    if abs(m) > 0.15 or abs(sd - 1) > 0.1:
        raise Failure(
            f"the chain should start from pure noise x_{{T−1}} ~ N(0, I); the first x_t has mean {m:.3f} and std "
            f"{sd:.3f}.",
            "x = torch.randn(shape, generator=generator)",
        )


@check("sample")
def test_sample_gaussian_data(impl) -> None:
    """Driven by the exact ε* of data N(0.3, 0.2²), samples have mean 0.3 ± 0.01 and std 0.2 ± 0.015 (8000 values).

    The exact expectation of this sampler is std 0.192 (see test_ddpm_gaussian_std_matches_the_exact_recursion).
    """
    s = noise_reaching_schedule()
    x = _sample(impl, R.GaussianMixtureOracle(s, [0.3], [0.2]), s, (2000, 1, 2, 2), 0)
    expect_gaussian_samples(x, "noise predictor", "sample()",
                            hint="start from N(0, I) at t = T−1 and apply p_sample down to t = 0")


@check("sample", hidden=True)
def test_sample_point_mass(impl) -> None:
    """Data = one fixed 2×2 image: every sample equals it (within 1e-3)."""
    s = noise_reaching_schedule()
    x = _sample(impl, R.GaussianMixtureOracle(s, POINT_MASS_IMAGE, [0.0]), s, (200, 1, 2, 2), 1)
    expect_point_mass(x, "sample")


@check("sample", hidden=True)
def test_sample_two_point_mixture(impl) -> None:
    """Data = images of constant −0.5 (weight 0.3) or +0.5 (weight 0.7): 0.7 ± 0.045 of 1000 samples are +0.5."""
    s = noise_reaching_schedule()
    x = _sample(impl, two_point_oracle(s), s, (1000, 1, 4, 4), 2)
    expect_two_point_mixture(x)


@check("sample")
def test_sample_draws_faces_from_a_trained_model(impl) -> None:
    """The outcome: your sampler draws faces from a trained network, as close to the training faces as the reference
    sampler's. The network is lesson 4's outcome model (a U-Net 16/32 trained on the faces at 16×16 by 200 steps of
    the reference ``train_step``, :func:`tests.test_loss.reference_outcome_model`); 32 samples from the same noise
    seed by yours and by ``ddpm_ref.sample``, scored by MS-SWD ×10³ at 16 px against the training faces. Pass: at
    most ``OUTCOME_PASS`` (what the reference and an untrained network score: ``OUTCOME_MEASURED``).
    """
    from tests.test_loss import OUTCOME_PASS, OUTCOME_SAMPLES, outcome_samples_score, reference_outcome_model

    model, schedule = reference_outcome_model()
    shape = (OUTCOME_SAMPLES, 1, 16, 16)
    with torch.random.fork_rng():
        x = _sample(impl, model, schedule, shape, 1)
    score = outcome_samples_score(x)
    if score <= OUTCOME_PASS:
        return
    with torch.random.fork_rng():
        ref = outcome_samples_score(R.sample(model, schedule, shape, generator=gen(1), progress=False))
    raise Failure(
        f"samples of a trained U-Net drawn by your sample() should score MS-SWD ≤ {OUTCOME_PASS:.0f} at 16 px against "
        f"the training faces (the reference sampler, same model and noise seed: {ref:.1f}); yours score {score:.1f}.",
        "start from N(0, I) at t = T−1, apply p_sample at every t down to 0, and return the last x",
    )


# ---------------------------------------------------------------------------------------- reference facts


def gaussian_chain_moments(
    s: R.NoiseSchedule, mu: float, sd: float, variance: str = "posterior"
) -> tuple[float, float]:
    """Exact mean and std of DDPM sampling driven by ε* for data N(mu, sd²) (no clipping), from x_{T−1} ~ N(0, 1).

    E[x0 | x_t] = mu + k_t(x_t − √ᾱ_t·mu) with k_t = sd²√ᾱ_t/(ᾱ_t·sd² + 1 − ᾱ_t), so each step is affine:
    x_{t−1} = A_t·x_t + B_t + σ_t·z, A_t = coef_x0·k_t + coef_xt, B_t = coef_x0·(mu − k_t√ᾱ_t·mu).
    """
    m, v = 0.0, 1.0
    for t in range(s.T - 1, -1, -1):
        ab = float(s.alpha_bars[t])
        k = sd**2 * math.sqrt(ab) / (ab * sd**2 + 1 - ab)
        c0, ct = float(s.posterior_mean_coef_x0[t]), float(s.posterior_mean_coef_xt[t])
        a, b = c0 * k + ct, c0 * (mu - k * math.sqrt(ab) * mu)
        var = float((s.posterior_variance if variance == "posterior" else s.betas)[t]) if t > 0 else 0.0
        m, v = a * m + b, a * a * v + var
    return m, math.sqrt(v)


def test_ddpm_gaussian_std_matches_the_exact_recursion() -> None:
    """Sampling N(0.3, 0.2²) with β̃_t gives std 0.192, not 0.2: the exact affine recursion predicts it.

    Fixed-small variance β̃_t leaves out coef_x0²·Var[x0 | x_t] at each step, so the chain under-disperses
    slightly; σ_t² = β_t over-disperses instead. 32 000 values, 4-σ bands (≈ 0.004).
    """
    s = noise_reaching_schedule()
    oracle = R.GaussianMixtureOracle(s, [0.3], [0.2])
    for variance in ("posterior", "beta"):
        m_exact, sd_exact = gaussian_chain_moments(s, 0.3, 0.2, variance)
        x = R.sample(oracle, s, (2000, 1, 4, 4), generator=gen(0), progress=False, variance=variance)
        assert abs(float(x.mean()) - m_exact) < 0.005 and abs(float(x.std()) - sd_exact) < 0.004, (
            variance, float(x.mean()), float(x.std()), m_exact, sd_exact)
        if variance == "posterior":
            assert 0.19 < sd_exact < 0.195
        else:
            assert sd_exact > 0.2


def mixture_weight_after_prior_mismatch(s: R.NoiseSchedule, w_plus: float, a: float, d: int) -> float:
    """P(+) for point masses ±a (weights w_plus, 1 − w_plus) in d pixels when x_{T−1} ~ N(0, I) replaces the marginal.

    The exact reverse process picks + with probability r(x_{T−1}) = σ(L + 2c·Σx/v), L = log(w+/w−),
    c = √ᾱ_{T−1}·a, v = 1 − ᾱ_{T−1}; with Σx ~ N(0, d) this is E[σ(L + (2c√d/v)·Z)] (Gauss–Hermite).
    """
    ab = float(s.alpha_bars[-1])
    logit = math.log(w_plus / (1 - w_plus))
    scale = 2 * math.sqrt(ab) * a * math.sqrt(d) / (1 - ab)
    z, w = np.polynomial.hermite_e.hermegauss(80)
    return float(np.sum(w * expit(logit + scale * z)) / math.sqrt(2 * math.pi))


def test_seed_schedule_biases_the_mixture_weights() -> None:
    """The seed schedule (ᾱ_{T−1} = 0.0175) starts the chain from the wrong distribution, and it shows.

    Data: 16×16 images of constant −0.5 (weight 0.3) or +0.5 (weight 0.7). x_{T−1} still holds
    √0.0175·(±0.5) per pixel, which N(0, I) lacks; summed over 256 pixels that pulls the weights toward
    50/50: the exact reverse process gives 0.621 instead of 0.7 (closed form above). For 3×256×256 images
    the same model gives 0.50 with the seed schedule, 0.60 with scaled_linear and 0.70 with cosine; at
    16×16, scaled_linear and cosine give 0.700. 600 samples: tolerance 0.06 (3 σ).
    """
    def weight(name: str, d: int) -> float:
        return mixture_weight_after_prior_mismatch(R.NoiseSchedule.from_name(name, T), 0.7, 0.5, d)

    s = seed_schedule()
    oracle = R.GaussianMixtureOracle(s, [-0.5, 0.5], [0.0, 0.0], [0.3, 0.7])
    x = R.sample(oracle, s, (600, 1, 16, 16), generator=gen(0), progress=False)
    frac = float((x.flatten(1).mean(1) > 0).double().mean())
    expected = weight("linear", 256)
    assert 0.61 < expected < 0.63
    assert abs(frac - expected) < 0.06 and frac < 0.67, (frac, expected)
    assert abs(weight("scaled_linear", 256) - 0.7) < 1e-3 and abs(weight("cosine", 256) - 0.7) < 1e-4
    big = 3 * 256 * 256
    assert abs(weight("linear", big) - 0.5) < 0.01
    assert 0.59 < weight("scaled_linear", big) < 0.62
    assert abs(weight("cosine", big) - 0.7) < 1e-3
