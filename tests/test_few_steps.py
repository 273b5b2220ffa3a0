"""Lesson 12 checks: ``karras_heun_step`` and ``dpm_solver_pp_2m_step`` (few-step ODE solvers; ``ddpm_ref.solvers``).

Notation (0-based timesteps, t_prev = −1 is the clean end ᾱ = 1): α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), Karras' noise level
σ̄_t = σ_t/α_t and x̄ = x/α_t (the ODE reads dx̄/dσ̄ = ε̂), the half log-SNR λ_t = log(α_t/σ_t). x̂0 and ε̂ come from one
model call, x̂0 clipped to [−1, 1] and ε̂ recomputed from it when ``clip_x0`` (as in DDIM).

- Heun: x̄' = x̄ + h·d with h = σ̄_{t_prev} − σ̄_t, d = ε̂(x_t, t); corrector x̄ + h·(d + d')/2 with
  d' = ε̂(α_{t_prev}·x̄', t_prev); one call (the Euler step, which is DDIM's) without ``second_order`` or at t_prev = −1
  (returns x̂0).
- DPM-Solver++(2M): x_{t_prev} = (σ_{t_prev}/σ_t)·x_t − α_{t_prev}·(e^{−h} − 1)·D, h = λ_{t_prev} − λ_t,
  D = (1 + 1/(2r))·x̂0_t − x̂0_last/(2r), r = (λ_t − λ_last)/h with ``last = (t_last, x̂0_last)``; D = x̂0_t without
  ``last``; returns (x_{t_prev}, x̂0_t), and (x̂0_t, x̂0_t) at t_prev = −1.

One step is checked against closed forms computed here in float64 with a fixed stand-in predictor (``fixed_eps``,
whose x̂0 leaves [−1, 1], so clipping shows); whole chains of the student's steps against the exact solution of the
probability-flow ODE of Gaussian data (known in closed form), where the fitted order of the error shows whether the
solver is second order.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

import ddpm_ref as R
from tests._asserts import Recorder, expect_close, expect_tensor
from tests._fixtures import fixed_eps, gen, seed_schedule
from tests.harness import Failure, check

# ------------------------------------------------------------------------------------------------ closed forms


def _coefs(s: R.NoiseSchedule, t: int) -> tuple[float, float]:
    """(α_t, σ_t) as floats; (1, 0) for t = −1."""
    if t < 0:
        return 1.0, 0.0
    return float(s.alpha_bars[t]) ** 0.5, (1 - float(s.alpha_bars[t])) ** 0.5


def _denoise(x: Tensor, t: int, s: R.NoiseSchedule, clip: bool, recompute: bool = True,
             model_t: int | None = None) -> tuple[Tensor, Tensor]:
    """(x̂0, ε̂) of ``fixed_eps`` at x (float64); ``model_t`` is the timestep the model is told (a mistake's)."""
    a, sig = _coefs(s, t)
    eps = fixed_eps(x, torch.full((x.shape[0],), t if model_t is None else model_t))
    x0 = (x - sig * eps) / a
    if clip:
        x0 = x0.clamp(-1, 1)
        if recompute:
            eps = (x - a * x0) / sig
    return x0, eps


def heun_closed_form(s: R.NoiseSchedule, x_t: Tensor, t: int, t_prev: int, *, clip: bool = False,
                     second: bool = True, slope_t: str = "t_prev", scaled: bool = True, average: bool = True,
                     from_predictor: bool = False, rescale: bool = True, karras: bool = True,
                     recompute: bool = True, wrap_end: bool = False) -> Tensor:
    """Heun's step in float64 (the switches build typical mistakes): ``slope_t`` "t" evaluates d' at t, ``scaled``
    False calls the model on x̄' itself, ``average`` False uses d' alone, ``from_predictor`` starts the corrector at
    x̄', ``rescale`` False returns x̄, ``karras`` False steps x by σ instead of x̄ by σ̄, ``wrap_end`` reads
    ᾱ_{−1} as alpha_bars[−1]."""
    x = x_t.double()
    a, sig = _coefs(s, t)
    x0, d = _denoise(x, t, s, clip, recompute)
    if t_prev < 0 and not wrap_end:
        return x0
    tp = s.T - 1 if t_prev < 0 else t_prev  # the timestep whose coefficients are used
    a_p, sig_p = _coefs(s, tp)
    if not karras:  # the step in x and σ, no change of variables
        h, xb = sig_p - sig, x
    else:
        h, xb = sig_p / a_p - sig / a, x / a
    pred = xb + h * d
    if second:
        x_in = (a_p * pred if karras else pred) if scaled else pred
        _, d2 = _denoise(x_in, tp, s, clip, recompute, model_t=t if slope_t == "t" else t_prev)
        slope = 0.5 * (d + d2) if average else d2
        pred = (pred if from_predictor else xb) + h * slope
    if not karras:
        return pred
    return a_p * pred if rescale else pred


def _lam(s: R.NoiseSchedule, t: int) -> float:
    a, sig = _coefs(s, t)
    return math.log(a / sig)


def dpm_closed_form(s: R.NoiseSchedule, x_t: Tensor, t: int, t_prev: int, *, last: tuple[int, Tensor] | None = None,
                    clip: bool = False, r_form: str = "lambda", swap: bool = False, h_sign: float = 1.0,
                    ratio: str = "sigma", wrap_end: bool = False) -> tuple[Tensor, Tensor]:
    """DPM-Solver++(2M)'s step in float64 → (x_{t_prev}, x̂0_t) (the switches build typical mistakes): ``r_form``
    "one" takes r = 1, "inverse" h/(λ_t − λ_last), "t" (t_last − t)/(t − t_prev); ``swap`` trades the roles of x̂0_t
    and x̂0_last; ``h_sign`` −1 uses e^{h}; ``ratio`` "alpha" scales x_t by α_{t_prev}/α_t; ``wrap_end`` reads
    ᾱ_{−1} as alpha_bars[−1]."""
    x = x_t.double()
    x0, _ = _denoise(x, t, s, clip)
    if t_prev < 0 and not wrap_end:
        return x0, x0
    tp = s.T - 1 if t_prev < 0 else t_prev
    a, sig = _coefs(s, t)
    a_p, sig_p = _coefs(s, tp)
    h = _lam(s, tp) - _lam(s, t)
    d = x0
    if last is not None:
        t_last, x0_last = last
        r = {"lambda": (_lam(s, t) - _lam(s, t_last)) / h, "one": 1.0,
             "inverse": h / (_lam(s, t) - _lam(s, t_last)), "t": (t_last - t) / (t - tp)}[r_form]
        a0, a1 = (x0_last.double(), x0) if swap else (x0, x0_last.double())
        d = (1 + 0.5 / r) * a0 - (0.5 / r) * a1
    scale = sig_p / sig if ratio == "sigma" else a_p / a
    return scale * x - a_p * math.expm1(-h_sign * h) * d, x0


ZERO_IS_A_TIMESTEP = ("you returned x̂0 at t_prev = 0: t_prev = 0 is the last timestep, not the clean end (only "
                      "t_prev = −1 is): test t_prev < 0, never the value's truth")


def _inputs(b: int, seed: int, scale: float = 1.0) -> Tensor:
    return scale * torch.randn(b, 1, 4, 4, generator=gen(seed))


# ------------------------------------------------------------------------------------------------ karras_heun_step

HEUN_HINT = ("x̄ = x_t/√ᾱ_t, σ̄ = √((1 − ᾱ)/ᾱ), h = σ̄_{t_prev} − σ̄_t; d = ε̂(x_t, t); x̄' = x̄ + h·d; "
             "d' = ε̂(√ᾱ_{t_prev}·x̄', t_prev); return √ᾱ_{t_prev}·(x̄ + h·(d + d')/2)")


def _heun(impl, model, x_t: Tensor, t: int, t_prev: int, s: R.NoiseSchedule, **kwargs) -> Tensor:
    out = impl.karras_heun_step(model, x_t, t, t_prev, s, **kwargs)
    opts = "".join(f", {k}={v}" for k, v in kwargs.items())
    return expect_tensor(out, f"karras_heun_step(model, x_t [B, 1, 4, 4], t={t}, t_prev={t_prev}{opts})",
                         shape=x_t.shape, dtype=x_t.dtype, device=x_t.device,
                         hint="return √ᾱ_{t_prev}·x̄_{t_prev} in the dtype of x_t (use Python floats: .item())")


def _heun_diagnoses(s: R.NoiseSchedule, x_t: Tensor, t: int, t_prev: int, clip: bool = False) -> list:
    def f(**kw):
        return lambda: heun_closed_form(s, x_t, t, t_prev, clip=clip, **kw)

    return [
        (f(second=False), "the corrector is missing: with second_order, evaluate d' = ε̂ at the Euler point and "
                          "step with the average (d + d')/2"),
        (f(rescale=False), "you returned x̄ = x/√ᾱ; return the DDPM's variable x_{t_prev} = √ᾱ_{t_prev}·x̄_{t_prev}"),
        (f(scaled=False), "the model takes x = √ᾱ·x̄, not x̄: call it on √ᾱ_{t_prev}·x̄' at t_prev"),
        (f(slope_t="t"), "evaluate the second slope d' at t_prev, where the Euler point x̄' lies, not at t"),
        (f(average=False), "average the two slopes: x̄ + h·(d + d')/2, not x̄ + h·d'"),
        (f(from_predictor=True), "the corrector starts from x̄ (the start of the step), not from the Euler point x̄'"),
        (f(karras=False), "step x̄ = x/√ᾱ along σ̄ = √((1 − ᾱ)/ᾱ) (dx̄/dσ̄ = ε̂), not x along σ = √(1 − ᾱ)"),
    ] + ([
        (lambda: _denoise(x_t.double(), t, s, clip)[0], ZERO_IS_A_TIMESTEP),
    ] if t_prev == 0 else []) + ([
        (f(recompute=False), "after clipping x̂0, recompute ε̂ = (x − √ᾱ·x̂0)/√(1 − ᾱ) from it: that ε̂ is the slope"),
        (lambda: heun_closed_form(s, x_t, t, t_prev, clip=False), "clip x̂0 to [−1, 1] when clip_x0 (and recompute ε̂ "
         "from it)"),
    ] if clip else [])


@check("karras_heun_step")
def test_karras_heun_step_euler_is_ddim(impl) -> None:
    """second_order=False, clip_x0=False: one model call at t, x̄ + h·ε̂, which is DDIM's step with η = 0 (399 → 299,
    200 → 150, 10 → 0)."""
    s = seed_schedule()
    x_t = _inputs(4, 0)
    for t, t_prev in ((399, 299), (200, 150), (10, 0)):
        model = Recorder(fixed_eps)
        out = _heun(impl, model, x_t, t, t_prev, s, clip_x0=False, second_order=False)
        if model.ts() != [t]:
            raise Failure(f"karras_heun_step(t={t}, t_prev={t_prev}, second_order=False) should call the model once, "
                          f"at t = {t}; it called it at t = {model.ts()}.",
                          "without second_order the step is Euler's alone: one model call at t, no corrector")
        expect_close(out, heun_closed_form(s, x_t, t, t_prev, second=False),
                     f"karras_heun_step(t={t}, t_prev={t_prev}, second_order=False)", atol=1e-4, rtol=1e-4,
                     diagnoses=_heun_diagnoses(s, x_t, t, t_prev)[1:], hint=HEUN_HINT)


@check("karras_heun_step")
def test_karras_heun_step_corrector(impl) -> None:
    """second_order=True, clip_x0=False: calls at t and t_prev, the second on √ᾱ_{t_prev}·x̄'; the trapezoid
    x̄ + h·(d + d')/2 (399 → 349, 120 → 60, 30 → 0)."""
    s = seed_schedule()
    x_t = _inputs(4, 1, 1.5)
    for t, t_prev in ((399, 349), (120, 60), (30, 0)):
        model = Recorder(fixed_eps)
        out = _heun(impl, model, x_t, t, t_prev, s, clip_x0=False)
        ts = model.ts()
        if ts == [t]:
            raise Failure(f"karras_heun_step(t={t}, t_prev={t_prev}) called the model once; Heun's step needs a "
                          "second call at t_prev.",
                          "the corrector is missing: with second_order, evaluate d' = ε̂ at the Euler point and "
                          "step with the average (d + d')/2")
        if ts == [t, t]:
            raise Failure(f"karras_heun_step(t={t}, t_prev={t_prev}) called the model at t = {ts}.",
                          "evaluate the second slope d' at t_prev, where the Euler point x̄' lies, not at t")
        if ts != [t, t_prev]:
            raise AssertionError(f"karras_heun_step(t={t}, t_prev={t_prev}) should call the model at t = {t} and then "
                                 f"at {t_prev}; it called it at t = {ts}. Hint: {HEUN_HINT}")
        expect_close(out, heun_closed_form(s, x_t, t, t_prev), f"karras_heun_step(t={t}, t_prev={t_prev})",
                     atol=1e-4, rtol=1e-4, diagnoses=_heun_diagnoses(s, x_t, t, t_prev), hint=HEUN_HINT)


@check("karras_heun_step")
def test_karras_heun_step_last_step(impl) -> None:
    """t_prev = −1 (σ̄ = 0, ᾱ = 1): one call, and x̄ + (0 − σ̄_t)·ε̂ = x̂0 is returned, clipped or not."""
    s = seed_schedule()
    x_t = _inputs(4, 2, 2.0)
    wrap = "t_prev = −1 means ᾱ = 1 (σ̄ = 0), but alpha_bars[−1] is Python's last element ᾱ_{T−1}"
    for clip in (False, True):
        model = Recorder(fixed_eps)
        try:
            out = _heun(impl, model, x_t, 7, -1, s, clip_x0=clip)
        except (ValueError, TypeError, ZeroDivisionError, IndexError) as e:
            raise Failure(f"karras_heun_step(t=7, t_prev=-1, clip_x0={clip}) raised {type(e).__name__}: {e}.",
                          f"{wrap}: use 1.0 when t_prev < 0, and skip the corrector there") from e
        expect_close(out, heun_closed_form(s, x_t, 7, -1, clip=clip), f"karras_heun_step(t=7, t_prev=-1, "
                     f"clip_x0={clip})", atol=1e-4, rtol=1e-4, diagnoses=[
                         (lambda c=clip: heun_closed_form(s, x_t, 7, -1, clip=c, wrap_end=True),
                          f"{wrap}: use 1.0 when t_prev < 0"),
                         (lambda c=clip: heun_closed_form(s, x_t, 7, -1, clip=c, wrap_end=True, second=False),
                          f"{wrap}: use 1.0 when t_prev < 0"),
                     ], hint="with t_prev = −1, σ̄_{t_prev} = 0 and ᾱ_{t_prev} = 1, so the step returns x̂0")
        if len(model.calls) != 1:
            raise Failure(f"karras_heun_step(t=7, t_prev=-1) called the model {len(model.calls)} times (at t = "
                          f"{model.ts()}).", "skip the corrector when t_prev = −1: ε̂ is not defined at σ̄ = 0, and "
                          "the Euler step already lands on x̂0")


@check("karras_heun_step")
def test_karras_heun_step_clip(impl) -> None:
    """clip_x0=True (the default): x̂0 clipped to [−1, 1] and ε̂ recomputed from it, at both calls (200 → 150)."""
    s = seed_schedule()
    x_t = _inputs(4, 3, 3.0)
    out = _heun(impl, Recorder(fixed_eps), x_t, 200, 150, s)
    expect_close(out, heun_closed_form(s, x_t, 200, 150, clip=True), "karras_heun_step(t=200, t_prev=150, "
                 "clip_x0=True)", atol=1e-4, rtol=1e-4, diagnoses=_heun_diagnoses(s, x_t, 200, 150, clip=True),
                 hint="ε̂ = predict_eps(x, t, x̂0.clamp(−1, 1), schedule) when clip_x0, at both model calls")


def _gaussian_problem() -> tuple[R.NoiseSchedule, R.GaussianMixtureOracle, Tensor, Tensor]:
    """Data N(0.3, 0.5²) per pixel under the paper's schedule (T = 1000): the probability-flow ODE's solution is
    x̄(σ̄) = μ + (x̄_T − μ)·√(s² + σ̄²)/√(s² + σ̄_T²); the exact end of a "linspace" chain is x̂0 of that x at t = 0."""
    s = R.NoiseSchedule(R.linear_beta_schedule(1000))
    mu, std = 0.3, 0.5
    model = R.GaussianMixtureOracle(s, [mu], [std])
    x_T = torch.randn(64, 4, generator=gen(0), dtype=torch.float64)
    sig = s.sqrt_one_minus_alpha_bars / s.sqrt_alpha_bars
    x_bar_0 = mu + (x_T / s.sqrt_alpha_bars[-1] - mu) * (std**2 + sig[0] ** 2).sqrt() / (std**2 + sig[-1] ** 2).sqrt()
    x_0 = s.sqrt_alpha_bars[0] * x_bar_0
    exact = R.predict_x0(x_0, 0, model(x_0, torch.zeros(64, dtype=torch.long)), s)
    return s, model, x_T, exact


def _order(impl, name: str, steps: tuple[int, ...], bounds: tuple[float, float], hint: str) -> None:
    """Chains of the student's steps over ddim_timesteps(1000, n, "linspace") and the last jump to −1, on Gaussian
    data, x̂0 not clipped: the fitted log-log slope of the error against the steps must lie within ``bounds``, and the
    error of the longest chain must be at most twice the reference's."""
    s, model, x_T, exact = _gaussian_problem()
    errors = []
    for n in steps:
        ts = R.ddim_timesteps(s.T, n, "linspace")
        x, last = x_T.clone(), None
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            if name == "karras_heun_step":
                x = impl.karras_heun_step(model, x, t, t_prev, s, clip_x0=False)
            else:
                x, x0 = impl.dpm_solver_pp_2m_step(model, x, t, t_prev, s, last=last, clip_x0=False)
                last = (t, x0)
        errors.append(float((x.double() - exact).pow(2).mean().sqrt()))
    if not all(math.isfinite(e) for e in errors):
        raise Failure(f"chains of your {name} on Gaussian data ended with NaN or inf (steps {list(steps)}).", hint)
    slope = float(np.polyfit(np.log(steps), np.log(errors), 1)[0])
    sampler = R.karras_heun_sample if name == "karras_heun_step" else R.dpm_solver_pp_2m_sample
    ref = sampler(model, s, x_T.shape, steps=steps[-1], spacing="linspace", x_T=x_T, clip_x0=False, progress=False)
    ref_error = float((ref - exact).pow(2).mean().sqrt())
    if errors[-1] > 2 * ref_error + 1e-6:
        raise Failure(f"a chain of {steps[-1]} of your {name} steps on Gaussian data ends {errors[-1]:.3g} (RMSE) from "
                      f"the ODE's exact solution; the reference's chain ends {ref_error:.3g} from it.", hint)
    if not bounds[0] < slope < bounds[1]:
        raise Failure(f"chains of your {name} on Gaussian data (the ODE's exact solution known): the error should "
                      f"fall like steps^−2 (a fitted slope in ({bounds[0]}, {bounds[1]})) over {list(steps)} steps; "
                      f"got errors {', '.join(f'{e:.3g}' for e in errors)}, a slope of {slope:.2f}.", hint)


@check("karras_heun_step", hidden=True)
def test_karras_heun_step_is_second_order(impl) -> None:
    """Chains of 8, 16, 32 and 64 steps on Gaussian data: the error against the exact solution falls like steps^−2
    (measured −2.0; Euler, DDIM's step, gives −1)."""
    _order(impl, "karras_heun_step", (8, 16, 32, 64), (-2.4, -1.7), HEUN_HINT)


@check("karras_heun_step", hidden=True)
def test_karras_heun_step_batch_of_one_int_timesteps(impl) -> None:
    """One image [1, 1, 4, 4] from t = 1 to t_prev = 0 (int timesteps, the smallest step)."""
    s = seed_schedule()
    x_t = _inputs(1, 4)
    out = _heun(impl, Recorder(fixed_eps), x_t, 1, 0, s, clip_x0=False)
    expect_close(out, heun_closed_form(s, x_t, 1, 0), "karras_heun_step(t=1, t_prev=0) on one image", atol=1e-4,
                 rtol=1e-4, diagnoses=_heun_diagnoses(s, x_t, 1, 0), hint=HEUN_HINT)


# ------------------------------------------------------------------------------------------------ dpm_solver_pp_2m_step

DPM_HINT = ("λ = log(√ᾱ/√(1 − ᾱ)), h = λ_{t_prev} − λ_t, r = (λ_t − λ_last)/h, D = (1 + 1/(2r))·x̂0_t − x̂0_last/(2r) "
            "(D = x̂0_t without last); x_{t_prev} = (σ_{t_prev}/σ_t)·x_t − √ᾱ_{t_prev}·(e^{−h} − 1)·D")


def _dpm(impl, model, x_t: Tensor, t: int, t_prev: int, s: R.NoiseSchedule, **kwargs) -> tuple[Tensor, Tensor]:
    out = impl.dpm_solver_pp_2m_step(model, x_t, t, t_prev, s, **kwargs)
    what = f"dpm_solver_pp_2m_step(model, x_t, t={t}, t_prev={t_prev}, ...)"
    if not isinstance(out, tuple) or len(out) != 2:
        raise Failure(f"{what} should return a pair (x_{{t_prev}}, x̂0_t), got {type(out).__name__}.",
                      "return x_prev, x0: the next step needs this step's x̂0 as its `last`")
    x_prev = expect_tensor(out[0], f"{what}[0] (x_t_prev)", shape=x_t.shape, dtype=x_t.dtype, device=x_t.device,
                           hint="compute with Python floats (.item()) so that x keeps the dtype of x_t")
    x0 = expect_tensor(out[1], f"{what}[1] (x̂0_t)", shape=x_t.shape, dtype=x_t.dtype, device=x_t.device)
    return x_prev, x0


def _dpm_diagnoses(s: R.NoiseSchedule, x_t: Tensor, t: int, t_prev: int, last=None, clip: bool = False) -> list:
    def f(**kw):
        return lambda: dpm_closed_form(s, x_t, t, t_prev, last=last, clip=clip, **kw)[0]

    out = []
    if last is not None:
        out += [
            (f(r_form="one"), "r = (λ_t − λ_last)/h is the ratio of the two steps in λ, not 1: on this grid the "
                              "steps differ, so D = 1.5·x̂0_t − 0.5·x̂0_last is off"),
            (f(r_form="inverse"), "r = (λ_t − λ_last)/h (the step before over this step), not h/(λ_t − λ_last)"),
            (f(r_form="t"), "measure the steps in λ = log(α/σ), not in timesteps: r = (λ_t − λ_last)/h"),
            (f(swap=True), "D extrapolates from the newest x̂0: D = (1 + 1/(2r))·x̂0_t − x̂0_last/(2r), not with the "
                           "two swapped"),
            (lambda: dpm_closed_form(s, x_t, t, t_prev, clip=clip)[0],
             "the second-order step uses `last`: D = (1 + 1/(2r))·x̂0_t − x̂0_last/(2r) when last is given"),
        ]
    out += [
        (f(h_sign=-1.0), "the factor is e^{−h} − 1 with h = λ_{t_prev} − λ_t > 0 (λ grows towards the data), not "
                         "e^{h} − 1"),
        (f(ratio="alpha"), "the data-prediction form scales x_t by σ_{t_prev}/σ_t (with σ = √(1 − ᾱ)), not by "
                           "α_{t_prev}/α_t"),
    ]
    if t_prev == 0:
        out.append((lambda: _denoise(x_t.double(), t, s, clip)[0], ZERO_IS_A_TIMESTEP))
    if clip:
        out.append((lambda: dpm_closed_form(s, x_t, t, t_prev, last=last)[0], "clip x̂0 to [−1, 1] when clip_x0"))
    return out


@check("dpm_solver_pp_2m_step")
def test_dpm_solver_pp_2m_step_first_order(impl) -> None:
    """Without ``last`` (the first step), clip_x0=False: (σ_{t_prev}/σ_t)·x_t − α_{t_prev}·(e^{−h} − 1)·x̂0_t, which is
    DDIM's step with η = 0; one model call at t; returns (x_{t_prev}, x̂0_t) (399 → 299, 200 → 150, 10 → 0)."""
    s = seed_schedule()
    x_t = _inputs(4, 10)
    for t, t_prev in ((399, 299), (200, 150), (10, 0)):
        model = Recorder(fixed_eps)
        x_prev, x0 = _dpm(impl, model, x_t, t, t_prev, s, clip_x0=False)
        if model.ts() != [t]:
            raise Failure(f"dpm_solver_pp_2m_step(t={t}, t_prev={t_prev}) should call the model once, at t = {t}; it "
                          f"called it at t = {model.ts()}.", "one model call per step: the second order comes from "
                          "the x̂0 of the step before (`last`), not from another call")
        want, want_x0 = dpm_closed_form(s, x_t, t, t_prev)
        expect_close(x0, want_x0, f"dpm_solver_pp_2m_step(t={t}, t_prev={t_prev})[1], x̂0_t", atol=1e-4, rtol=1e-4,
                     diagnoses=[(x_prev.detach(), "return (x_prev, x0): the second element is this step's x̂0_t, the "
                                 "first x_{t_prev}")],
                     hint="x̂0_t = predict_x0(x_t, t, model(x_t, t), schedule): the model's clean image at t")
        expect_close(x_prev, want, f"dpm_solver_pp_2m_step(t={t}, t_prev={t_prev}, clip_x0=False)[0]", atol=1e-4,
                     rtol=1e-4, diagnoses=_dpm_diagnoses(s, x_t, t, t_prev), hint=DPM_HINT)


@check("dpm_solver_pp_2m_step")
def test_dpm_solver_pp_2m_step_second_order(impl) -> None:
    """With ``last = (t_last, x̂0_last)``: D = (1 + 1/(2r))·x̂0_t − x̂0_last/(2r), r = (λ_t − λ_last)/h, on uneven
    steps (350 → 300 → 150, 40 → 30 → 5), clip_x0=False."""
    s = seed_schedule()
    x_t = _inputs(4, 11)
    x0_last = 0.5 * torch.randn(4, 1, 4, 4, generator=gen(12))
    for t_last, t, t_prev in ((350, 300, 150), (40, 30, 5)):
        last = (t_last, x0_last)
        x_prev, _ = _dpm(impl, Recorder(fixed_eps), x_t, t, t_prev, s, last=last, clip_x0=False)
        expect_close(x_prev, dpm_closed_form(s, x_t, t, t_prev, last=last)[0],
                     f"dpm_solver_pp_2m_step(t={t}, t_prev={t_prev}, last=({t_last}, x̂0_last), clip_x0=False)[0]",
                     atol=1e-4, rtol=1e-4, diagnoses=_dpm_diagnoses(s, x_t, t, t_prev, last), hint=DPM_HINT)


@check("dpm_solver_pp_2m_step")
def test_dpm_solver_pp_2m_step_last_step(impl) -> None:
    """t_prev = −1 (σ = 0, λ = +∞): the jump returns (x̂0_t, x̂0_t), first order even with ``last``; clipped or not."""
    s = seed_schedule()
    x_t = _inputs(4, 13, 2.0)
    wrap = "t_prev = −1 means ᾱ = 1 (σ = 0, e^{−h} = 0), but alpha_bars[−1] is Python's last element ᾱ_{T−1}"
    for clip in (False, True):
        for last in (None, (23, 0.5 * torch.randn(4, 1, 4, 4, generator=gen(14)))):
            shown = "None" if last is None else "(23, …)"
            label = f"dpm_solver_pp_2m_step(t=7, t_prev=-1, last={shown}, clip_x0={clip})"
            try:
                x_prev, x0 = _dpm(impl, Recorder(fixed_eps), x_t, 7, -1, s, last=last, clip_x0=clip)
            except (ValueError, TypeError, ZeroDivisionError, OverflowError, IndexError) as e:
                raise Failure(f"{label} raised {type(e).__name__}: {e}.",
                              f"{wrap}: at t_prev = −1 return (x̂0, x̂0)") from e
            want, _ = dpm_closed_form(s, x_t, 7, -1, clip=clip)
            if not bool(torch.isfinite(x_prev).all()):
                raise Failure(f"{label}[0] has NaN/inf values.", "at t_prev = −1 return (x̂0, x̂0): the jump to σ = 0 "
                              "is first order (h = ∞, so r = 0 and the correction 1/(2r) blows up)")
            expect_close(x_prev, want, f"{label}[0]", atol=1e-4, rtol=1e-4, diagnoses=[
                (lambda c=clip, la=last: dpm_closed_form(s, x_t, 7, -1, last=la, clip=c, wrap_end=True)[0],
                 f"{wrap}: at t_prev = −1 return (x̂0, x̂0)"),
                (lambda c=clip: dpm_closed_form(s, x_t, 7, -1, clip=c, wrap_end=True)[0],
                 f"{wrap}: at t_prev = −1 return (x̂0, x̂0)"),
            ], hint="with t_prev = −1, σ_{t_prev} = 0 and e^{−h} = 0: the step returns x̂0_t")
            expect_close(x0, want, f"{label}[1]", atol=1e-4, rtol=1e-4, hint="the second element is x̂0_t")


@check("dpm_solver_pp_2m_step")
def test_dpm_solver_pp_2m_step_clip(impl) -> None:
    """clip_x0=True (the default): x̂0_t clipped to [−1, 1], in D and in what is returned (first and second order)."""
    s = seed_schedule()
    x_t = _inputs(4, 15, 3.0)
    x0_last = torch.randn(4, 1, 4, 4, generator=gen(16)).clamp(-1, 1)
    for last in (None, (250, x0_last)):
        x_prev, x0 = _dpm(impl, Recorder(fixed_eps), x_t, 200, 120, s, last=last)
        want, want_x0 = dpm_closed_form(s, x_t, 200, 120, last=last, clip=True)
        expect_close(x0, want_x0, "dpm_solver_pp_2m_step(t=200, t_prev=120, clip_x0=True)[1]", atol=1e-4, rtol=1e-4,
                     hint="clip x̂0 to [−1, 1] when clip_x0, and return the clipped one")
        shown = "None" if last is None else "(250, …)"
        expect_close(x_prev, want, f"dpm_solver_pp_2m_step(t=200, t_prev=120, last={shown}, clip_x0=True)[0]",
                     atol=1e-4, rtol=1e-4,
                     diagnoses=_dpm_diagnoses(s, x_t, 200, 120, last, clip=True), hint=DPM_HINT)


@check("dpm_solver_pp_2m_step", hidden=True)
def test_dpm_solver_pp_2m_step_is_second_order(impl) -> None:
    """Chains of 64, 128 and 256 steps (each passing its x̂0 on as the next ``last``) on Gaussian data: the error falls
    like steps^−2 (measured −2.0; the first-order step, DDIM's, gives −1)."""
    _order(impl, "dpm_solver_pp_2m_step", (64, 128, 256), (-2.4, -1.7), DPM_HINT)


@check("dpm_solver_pp_2m_step", hidden=True)
def test_dpm_solver_pp_2m_step_batch_of_one(impl) -> None:
    """One image [1, 1, 4, 4] from t = 2 to t_prev = 1 with last = (3, x̂0_last), clip_x0=False."""
    s = seed_schedule()
    x_t = _inputs(1, 17)
    last = (3, 0.3 * torch.ones(1, 1, 4, 4))
    x_prev, _ = _dpm(impl, Recorder(fixed_eps), x_t, 2, 1, s, last=last, clip_x0=False)
    expect_close(x_prev, dpm_closed_form(s, x_t, 2, 1, last=last)[0], "dpm_solver_pp_2m_step(t=2, t_prev=1, "
                 "last=(3, …)) on one image", atol=1e-4, rtol=1e-4,
                 diagnoses=_dpm_diagnoses(s, x_t, 2, 1, last), hint=DPM_HINT)


# ------------------------------------------------------------------------------------------------ reference facts


def test_closed_forms_are_the_reference() -> None:
    """The closed forms above are ddpm_ref's steps (so a check's expected value is the reference's)."""
    s = seed_schedule()
    x_t = _inputs(3, 20, 2.5)
    for clip in (False, True):
        for t, t_prev in ((399, 250), (60, 0), (9, -1)):
            for second in (False, True):
                ref = R.karras_heun_step(fixed_eps, x_t, t, t_prev, s, clip_x0=clip, second_order=second)
                torch.testing.assert_close(ref.double(), heun_closed_form(s, x_t, t, t_prev, clip=clip, second=second),
                                           atol=2e-5, rtol=1e-5)
            last = (min(t + 37, 399), torch.randn(3, 1, 4, 4, generator=gen(21)))
            for la in (None, last) if t < 399 else (None,):
                a, a0 = R.dpm_solver_pp_2m_step(fixed_eps, x_t, t, t_prev, s, last=la, clip_x0=clip)
                b, b0 = dpm_closed_form(s, x_t, t, t_prev, last=la, clip=clip)
                torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-5)
                torch.testing.assert_close(a0.double(), b0, atol=2e-5, rtol=1e-5)
