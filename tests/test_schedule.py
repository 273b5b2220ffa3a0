"""Lesson 1 checks: ``linear_beta_schedule``, ``cosine_beta_schedule`` and ``NoiseSchedule``.

Expected values are closed forms evaluated with Python floats (Ho et al. 2020 §2, §4 and eqs. 4, 6, 7;
Nichol & Dhariwal 2021 eq. 17), plus a hand-computed three-step schedule. Schedules are float64 by contract.
"""

from __future__ import annotations

import math

import torch

import ddpm_ref as R
from tests._asserts import expect_close, expect_tensor
from tests.harness import Failure, check

SEED_T = 400  # the seed run: T=400, linear β from 1e-4 to 0.02


def linear_closed_form(T: int, start: float, end: float) -> list[float]:
    """β_t = start + t·(end − start)/(T − 1), t = 0 … T−1."""
    return [start + (end - start) * t / (T - 1) for t in range(T)]


def cosine_f(t: float, T: int, s: float) -> float:
    """f(t) = cos²(((t/T) + s)/(1 + s) · π/2) (Nichol & Dhariwal 2021, eq. 17)."""
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


def cosine_closed_form(T: int, s: float = 0.008, max_beta: float = 0.999) -> list[float]:
    """β_t = min(1 − f(t+1)/f(t), max_beta)."""
    return [min(1 - cosine_f(t + 1, T, s) / cosine_f(t, T, s), max_beta) for t in range(T)]


def cumprod(xs: list[float]) -> list[float]:
    out, acc = [], 1.0
    for x in xs:
        acc *= x
        out.append(acc)
    return out


def _t64(xs: list[float]) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


# ---------------------------------------------------------------------------------------- linear_beta_schedule


def _check_linear(impl, T: int, start: float, end: float, call: str, *args, **kwargs) -> None:
    out = impl.linear_beta_schedule(*args, **kwargs)
    expect_tensor(out, call, shape=[T], dtype=torch.float64,
                  hint="schedules are float64: torch.linspace(beta_start, beta_end, T, dtype=torch.float64)")
    expected = _t64(linear_closed_form(T, start, end))
    expect_close(out, expected, call, atol=1e-12, rtol=1e-9, diagnoses=[
        (_t64([start + (end - start) * t / T for t in range(T)]),
         "the last β must equal beta_end: step by (end − start)/(T − 1), not /T (linspace includes both ends)"),
        (expected.flip(0), "β grows from beta_start at t=0 to beta_end at t=T−1, not the other way round"),
        (_t64(linear_closed_form(T, 1e-4, 0.02)), "use the beta_start and beta_end arguments, not fixed numbers"),
    ], hint=f"β_t = beta_start + t·(beta_end − beta_start)/(T − 1): β_0 = {start}, β_{{T−1}} = {end}")


@check("linear_beta_schedule")
def test_linear_beta_schedule_values(impl) -> None:
    """β_t evenly spaced from β_0 = 1e-4 to β_{T−1} = 0.02 (T = 400, the seed run), and custom ends at T = 10."""
    _check_linear(impl, SEED_T, 1e-4, 0.02, "linear_beta_schedule(400)", SEED_T)
    _check_linear(impl, 10, 1e-3, 0.05, "linear_beta_schedule(10, beta_start=1e-3, beta_end=0.05)",
                  10, beta_start=1e-3, beta_end=0.05)


@check("linear_beta_schedule", hidden=True)
def test_linear_beta_schedule_other_arguments(impl) -> None:
    """Positional arguments, T = 1000 and T = 2."""
    _check_linear(impl, 1000, 1e-4, 0.02, "linear_beta_schedule(1000)", 1000)
    _check_linear(impl, 2, 5e-4, 0.3, "linear_beta_schedule(2, 5e-4, 0.3)", 2, 5e-4, 0.3)


# ---------------------------------------------------------------------------------------- cosine_beta_schedule


def _check_cosine(impl, T: int, call: str, s: float = 0.008, max_beta: float = 0.999, pass_args: bool = False) -> None:
    out = impl.cosine_beta_schedule(T, s=s, max_beta=max_beta) if pass_args else impl.cosine_beta_schedule(T)
    expect_tensor(out, call, shape=[T], dtype=torch.float64, hint=(
        "T values of β need T+1 values of f: f(0), …, f(T) from torch.arange(T + 1) / T; "
        "schedules are float64"))
    expected = _t64(cosine_closed_form(T, s, max_beta))
    unclipped = _t64([1 - cosine_f(t + 1, T, s) / cosine_f(t, T, s) for t in range(T)])
    no_square = _t64([min(1 - math.sqrt(cosine_f(t + 1, T, s) / cosine_f(t, T, s)), max_beta) for t in range(T)])
    expect_close(out, expected, call, atol=1e-9, rtol=1e-7, diagnoses=[
        (unclipped, f"clip β at max_beta={max_beta}: unclipped, the last β is 1 and ᾱ_{{T−1}} = 0 (x0 is erased)"),
        (no_square, "f(t) is the cosine squared: cos(((t/T) + s)/(1 + s)·π/2) ** 2"),
        (_t64(cosine_closed_form(T, 0.0, max_beta)), "the offset s goes inside: ((t/T) + s)/(1 + s)"),
        (_t64(cosine_closed_form(T, 0.008, 0.999)), "use the s and max_beta arguments, not fixed numbers"),
        (_t64([cosine_f(t + 1, T, s) / cosine_f(0, T, s) for t in range(T)]),
         "that is ᾱ_t = f(t+1)/f(0); the schedule returns β_t = 1 − ᾱ_t/ᾱ_{t−1} = 1 − f(t+1)/f(t)"),
    ], hint="β_t = min(1 − f(t+1)/f(t), max_beta) with f(t) = cos²(((t/T) + s)/(1 + s)·π/2)")


@check("cosine_beta_schedule")
def test_cosine_beta_schedule_values(impl) -> None:
    """β_t = min(1 − f(t+1)/f(t), 0.999), f(t) = cos²(((t/T)+0.008)/1.008·π/2), at T = 400 and T = 10."""
    _check_cosine(impl, SEED_T, "cosine_beta_schedule(400)")
    _check_cosine(impl, 10, "cosine_beta_schedule(10)")


@check("cosine_beta_schedule", hidden=True)
def test_cosine_beta_schedule_other_arguments(impl) -> None:
    """Non-default s and max_beta are used (T = 50, s = 0.02, max_beta = 0.5 clips the last few steps)."""
    _check_cosine(impl, 50, "cosine_beta_schedule(50, s=0.02, max_beta=0.5)", s=0.02, max_beta=0.5, pass_args=True)


# ---------------------------------------------------------------------------------------- NoiseSchedule

# A three-step schedule computed by hand: β = (0.1, 0.2, 0.5).
HAND_BETAS = [0.1, 0.2, 0.5]
HAND = {
    "alphas": [0.9, 0.8, 0.5],
    "alpha_bars": [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.5],  # 0.9, 0.72, 0.36
    "alpha_bars_prev": [1.0, 0.9, 0.72],
    # β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    "posterior_variance": [0.1 * 0.0 / 0.1, 0.2 * 0.1 / 0.28, 0.5 * 0.28 / 0.64],
    # √ᾱ_{t−1} β_t / (1 − ᾱ_t)
    "posterior_mean_coef_x0": [1.0 * 0.1 / 0.1, math.sqrt(0.9) * 0.2 / 0.28, math.sqrt(0.72) * 0.5 / 0.64],
    # √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    "posterior_mean_coef_xt": [0.0, math.sqrt(0.8) * 0.1 / 0.28, math.sqrt(0.5) * 0.28 / 0.64],
}


def closed_forms(betas: list[float]) -> dict[str, list[float]]:
    """Every NoiseSchedule table from β by the formulas of Ho et al. (eqs. 4, 6, 7), in Python floats."""
    alphas = [1 - b for b in betas]
    ab = cumprod(alphas)
    prev = [1.0, *ab[:-1]]
    return {
        "alphas": alphas,
        "alpha_bars": ab,
        "alpha_bars_prev": prev,
        "posterior_variance": [b * (1 - p) / (1 - a) for b, p, a in zip(betas, prev, ab, strict=True)],
        "posterior_mean_coef_x0": [math.sqrt(p) * b / (1 - a) for b, p, a in zip(betas, prev, ab, strict=True)],
        "posterior_mean_coef_xt": [
            math.sqrt(al) * (1 - p) / (1 - a) for al, p, a in zip(alphas, prev, ab, strict=True)
        ],
    }


def test_closed_forms_match_the_hand_computed_schedule() -> None:
    """The Python closed forms used by the checks reproduce the hand-computed three-step schedule."""
    got = closed_forms(HAND_BETAS)
    for name, values in HAND.items():
        pairs = zip(got[name], values, strict=True)
        assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15) for a, b in pairs), name


def _schedules() -> list[tuple[str, list[float]]]:
    seed = linear_closed_form(SEED_T, 1e-4, 0.02)
    return [("NoiseSchedule(β = [0.1, 0.2, 0.5])", HAND_BETAS), ("NoiseSchedule(linear_beta_schedule(400))", seed)]


def _table(sched, name: str, T: int, label: str) -> torch.Tensor:
    if not hasattr(sched, name) or getattr(sched, name) is None:
        raise AssertionError(f"{label} has no attribute `{name}`: set self.{name} in __init__")
    return expect_tensor(getattr(sched, name), f"{label}.{name}", shape=[T], dtype=torch.float64,
                         hint="keep every table float64 (compute from the float64 betas, no .float())")


def _expected(betas: list[float]) -> dict[str, torch.Tensor]:
    return {k: _t64(v) for k, v in (HAND if betas is HAND_BETAS else closed_forms(betas)).items()}


@check("NoiseSchedule")
def test_NoiseSchedule_alphas_and_alpha_bars(impl) -> None:
    """α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s (eq. 4), ᾱ_{t−1} with ᾱ_{−1} = 1; hand-computed and seed schedules."""
    for label, betas in _schedules():
        sched = impl.NoiseSchedule(_t64(betas))
        T, exp = len(betas), _expected(betas)
        alphas = _table(sched, "alphas", T, label)
        expect_close(alphas, exp["alphas"], f"{label}.alphas", atol=1e-12, rtol=1e-12,
                     diagnoses=[(exp["alphas"].new_tensor(betas), "α_t = 1 − β_t, not β_t")], hint="α_t = 1 − β_t")
        ab = _table(sched, "alpha_bars", T, label)
        a = exp["alphas"]
        expect_close(ab, exp["alpha_bars"], f"{label}.alpha_bars", atol=1e-12, rtol=1e-9, diagnoses=[
            (torch.cumsum(a, 0), "ᾱ is a cumulative product: torch.cumprod, not torch.cumsum"),
            (a, "ᾱ_t is the product α_0·α_1·…·α_t (torch.cumprod), not α_t itself"),
            (torch.cumprod(exp["alphas"].new_tensor(betas), 0), "ᾱ is the cumulative product of α = 1 − β, not of β"),
            (torch.cumprod(a.flip(0), 0).flip(0), "ᾱ_t multiplies α_0 … α_t: cumprod from the start, not the end"),
        ], hint="ᾱ_t = α_0·α_1·…·α_t = torch.cumprod(alphas, dim=0)")
        prev = _table(sched, "alpha_bars_prev", T, label)
        expect_close(prev, exp["alpha_bars_prev"], f"{label}.alpha_bars_prev", atol=1e-12, rtol=1e-9, diagnoses=[
            (torch.cat([a.new_zeros(1), exp["alpha_bars"][:-1]]), "ᾱ_{−1} is an empty product, 1, not 0"),
            (exp["alpha_bars"], "alpha_bars_prev is ᾱ shifted right by one: [1, ᾱ_0, …, ᾱ_{T−2}]"),
            (torch.cat([exp["alpha_bars"][1:], a.new_ones(1)]), "shift ᾱ to the right ([1, ᾱ_0, …]), not to the left"),
        ], hint="alpha_bars_prev = [1, ᾱ_0, ᾱ_1, …, ᾱ_{T−2}]")


@check("NoiseSchedule")
def test_NoiseSchedule_posterior_variance(impl) -> None:
    """β̃_t = β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t) (eq. 7), 0 at t = 0."""
    for label, betas in _schedules():
        sched = impl.NoiseSchedule(_t64(betas))
        T, exp = len(betas), _expected(betas)
        var = _table(sched, "posterior_variance", T, label)
        b, ab, prev = _t64(betas), exp["alpha_bars"], exp["alpha_bars_prev"]
        if abs(float(var[0])) > 1e-12:
            msg = (f"{label}.posterior_variance[0] should be 0 (at t=0 the posterior is x0 itself), "
                   f"got {float(var[0]):.4g}.")
            if math.isclose(float(var[0]), betas[0]):
                raise Failure(msg, "that is β_0: the posterior variance is β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t), not β_t")
            raise AssertionError(msg)
        expect_close(var, exp["posterior_variance"], f"{label}.posterior_variance", atol=1e-12, rtol=1e-9, diagnoses=[
            (b, "that is β_t; the posterior variance is β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t)"),
            (b * (1 - ab) / (1 - prev).clamp_min(1e-300), "the ratio is upside down: (1 − ᾱ_{t−1})/(1 − ᾱ_t)"),
            (b * (1 - ab), "divide by (1 − ᾱ_t): β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t)"),
        ], hint="β̃_t = β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)")


@check("NoiseSchedule")
def test_NoiseSchedule_posterior_mean_coefs(impl) -> None:
    """μ̃_t = coef_x0·x0 + coef_xt·x_t (eq. 7): coef_x0 = √ᾱ_{t−1}β_t/(1−ᾱ_t), coef_xt = √α_t(1−ᾱ_{t−1})/(1−ᾱ_t)."""
    for label, betas in _schedules():
        sched = impl.NoiseSchedule(_t64(betas))
        T, exp = len(betas), _expected(betas)
        b, a, ab, prev = _t64(betas), exp["alphas"], exp["alpha_bars"], exp["alpha_bars_prev"]
        c0 = _table(sched, "posterior_mean_coef_x0", T, label)
        ct = _table(sched, "posterior_mean_coef_xt", T, label)
        swap = "the two coefficients are swapped: coef_x0 = √ᾱ_{t−1}·β_t/(1 − ᾱ_t) multiplies x0"
        expect_close(c0, exp["posterior_mean_coef_x0"], f"{label}.posterior_mean_coef_x0", atol=1e-12, rtol=1e-9,
                     diagnoses=[
                         (exp["posterior_mean_coef_xt"], swap),
                         (ab.sqrt() * b / (1 - ab), "coef_x0 uses √ᾱ_{t−1} (alpha_bars_prev), not √ᾱ_t"),
                         (prev * b / (1 - ab), "take the square root: √ᾱ_{t−1}"),
                     ], hint="coef_x0 = √ᾱ_{t−1}·β_t/(1 − ᾱ_t); it is 1 at t = 0")
        expect_close(ct, exp["posterior_mean_coef_xt"], f"{label}.posterior_mean_coef_xt", atol=1e-12, rtol=1e-9,
                     diagnoses=[
                         (exp["posterior_mean_coef_x0"], swap),
                         (a * (1 - prev) / (1 - ab), "take the square root: √α_t"),
                         (ab.sqrt() * (1 - prev) / (1 - ab), "coef_xt uses √α_t (one step), not √ᾱ_t"),
                     ], hint="coef_xt = √α_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t); it is 0 at t = 0")


@check("NoiseSchedule")
def test_NoiseSchedule_gather(impl) -> None:
    """gather(values, t, x) → values[t] shaped [B, 1, …, 1] in x's dtype and device (t a LongTensor [B] or an int)."""
    sched = impl.NoiseSchedule(_t64(linear_closed_form(SEED_T, 1e-4, 0.02)))
    values = torch.arange(SEED_T, dtype=torch.float64) * 0.5
    x = torch.zeros(3, 2, 4, 4)
    t = torch.tensor([0, 5, 399])
    out = expect_tensor(sched.gather(values, t, x), "gather(values, t=[0, 5, 399], x [3, 2, 4, 4])",
                        shape=[3, 1, 1, 1], dtype=torch.float32, device=x.device,
                        hint="pick values[t], then .reshape(B, 1, 1, 1) and .to(x.dtype)")
    expect_close(out, torch.tensor([0.0, 2.5, 199.5]).reshape(3, 1, 1, 1), "gather(values, t=[0, 5, 399], x)",
                 atol=1e-6, rtol=0, hint="gather returns values[t] for each sample's own t")
    out = expect_tensor(sched.gather(values, 7, x), "gather(values, t=7, x [3, 2, 4, 4])", shape=[3, 1, 1, 1],
                        dtype=torch.float32, hint="an int t means the same step for every sample of the batch")
    expect_close(out, torch.full((3, 1, 1, 1), 3.5), "gather(values, t=7, x)", atol=1e-6, rtol=0)
    x2 = torch.zeros(2, 5, dtype=torch.float64)
    out = expect_tensor(sched.gather(values, torch.tensor([1, 2]), x2), "gather(values, t=[1, 2], x [2, 5] float64)",
                        shape=[2, 1], dtype=torch.float64,
                        hint="shape the result [B] + [1] * (x.ndim − 1) so it broadcasts against any x")
    expect_close(out, torch.tensor([[0.5], [1.0]], dtype=torch.float64), "gather(values, t=[1, 2], x [2, 5])",
                 atol=1e-12, rtol=0)


@check("NoiseSchedule", hidden=True)
def test_NoiseSchedule_consistent_with_marginals(impl) -> None:
    """The posterior (eq. 7) agrees with the marginals (eq. 4), for the cosine schedule at T = 50.

    If x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε and x_{t−1} ~ N(coef_x0·x0 + coef_xt·x_t, β̃_t), then x_{t−1} must have
    mean √ᾱ_{t−1}·x0 and variance 1 − ᾱ_{t−1}: coef_x0 + coef_xt·√ᾱ_t = √ᾱ_{t−1} and
    coef_xt²·(1 − ᾱ_t) + β̃_t = 1 − ᾱ_{t−1}.
    """
    betas = cosine_closed_form(50)
    sched = impl.NoiseSchedule(_t64(betas))
    exp = closed_forms(betas)
    T = len(betas)
    c0, ct = _table(sched, "posterior_mean_coef_x0", T, "NoiseSchedule"), _table(
        sched, "posterior_mean_coef_xt", T, "NoiseSchedule")
    var = _table(sched, "posterior_variance", T, "NoiseSchedule")
    ab, prev = _t64(exp["alpha_bars"]), _t64(exp["alpha_bars_prev"])
    expect_close(c0 + ct * ab.sqrt(), prev.sqrt(), "coef_x0 + coef_xt·√ᾱ_t (must equal √ᾱ_{t−1})", atol=1e-9, rtol=1e-9,
                 hint="the posterior mean must average to √ᾱ_{t−1}·x0: recheck both coefficients of eq. 7")
    expect_close(ct**2 * (1 - ab) + var, 1 - prev, "coef_xt²·(1 − ᾱ_t) + β̃_t (must equal 1 − ᾱ_{t−1})",
                 atol=1e-9, rtol=1e-9, hint="recheck β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t) and coef_xt")


# ---------------------------------------------------------------------------------------- reference facts


def test_seed_schedule_never_reaches_pure_noise() -> None:
    """With T = 400 and linear β from 1e-4 to 0.02, ᾱ_{T−1} = ∏(1 − β_t) ≈ 0.0175, not ≈ 0.

    The last latent x_{T−1} = √ᾱ·x0 + √(1−ᾱ)·ε still holds √0.0175 ≈ 13% of the image, so sampling
    from x_{T−1} ~ N(0, I) starts from the wrong distribution (the linear ends were tuned for T = 1000,
    where ᾱ_{T−1} ≈ 4e-5). ``scaled_linear_beta_schedule`` (ends × 1000/T) and ``cosine_beta_schedule`` fix it.
    """
    betas = linear_closed_form(SEED_T, 1e-4, 0.02)
    last = math.exp(math.fsum(math.log1p(-b) for b in betas))
    assert abs(last - 0.0175) < 5e-5, last
    assert 0.13 < math.sqrt(last) < 0.135  # 13% of the signal survives
    sched = R.NoiseSchedule(R.linear_beta_schedule(SEED_T))
    assert math.isclose(float(sched.alpha_bars[-1]), last, rel_tol=1e-9)
    # the paper's T = 1000 schedule does reach noise, and so do the two fixes at T = 400
    assert math.exp(math.fsum(math.log1p(-b) for b in linear_closed_form(1000, 1e-4, 0.02))) < 1e-4
    scaled = R.NoiseSchedule(R.scaled_linear_beta_schedule(SEED_T)).alpha_bars[-1].item()
    cosine = R.NoiseSchedule(R.cosine_beta_schedule(SEED_T)).alpha_bars[-1].item()
    assert scaled < 1e-4 and cosine < 1e-6, (scaled, cosine)
    # scaling keeps the total noise ∑β of the T = 1000 schedule
    assert math.isclose(R.scaled_linear_beta_schedule(SEED_T).sum().item(),
                        math.fsum(linear_closed_form(1000, 1e-4, 0.02)), rel_tol=1e-9)


def test_reference_schedules_match_closed_forms() -> None:
    """ddpm_ref's schedules and tables equal the closed forms (the checks' oracle is independent of ddpm_ref)."""
    torch.testing.assert_close(R.linear_beta_schedule(SEED_T), _t64(linear_closed_form(SEED_T, 1e-4, 0.02)),
                               atol=1e-15, rtol=1e-12)
    torch.testing.assert_close(R.cosine_beta_schedule(SEED_T), _t64(cosine_closed_form(SEED_T)), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(R.scaled_linear_beta_schedule(SEED_T), _t64(linear_closed_form(SEED_T, 2.5e-4, 0.05)),
                               atol=1e-15, rtol=1e-12)
    sched = R.NoiseSchedule(_t64(HAND_BETAS))
    for name, values in HAND.items():
        torch.testing.assert_close(getattr(sched, name), _t64(values), atol=1e-12, rtol=1e-12, msg=name)
    assert torch.isfinite(sched.posterior_log_variance).all()


def test_reference_schedules_reject_bad_input() -> None:
    """Bad arguments give one clear ValueError / TypeError naming the problem."""
    cases = [
        (lambda: R.linear_beta_schedule(0), "positive int"),
        (lambda: R.linear_beta_schedule(10, 0.1, 0.01), "beta_start <= beta_end"),
        (lambda: R.make_betas("quadratic", 10), "unknown beta schedule"),
        (lambda: R.NoiseSchedule(torch.tensor([0.1, 1.0])), "(0, 1)"),
        (lambda: R.NoiseSchedule(torch.tensor([0.1, 0.2])).gather(torch.zeros(2), torch.tensor([2]), torch.zeros(1, 3)),
         "0-based"),
        (lambda: R.NoiseSchedule(torch.tensor([0.1, 0.2])).gather(torch.zeros(2), torch.tensor([0.5]), torch.zeros(1)),
         "integer"),
    ]
    for fn, words in cases:
        try:
            fn()
        except (ValueError, TypeError) as e:
            assert words in str(e) and "\n" not in str(e), str(e)
        else:
            raise AssertionError(f"no error raised (expected one mentioning {words!r})")
