"""Lesson 10 checks: ``score_from_eps``, ``dsm_loss``, ``langevin_sample``, ``reverse_sde_sample`` and
``probability_flow_sample`` (scores, Langevin dynamics and the SDE view; ``ddpm_ref.score``).

Conventions: 0-based timesteps; a score model is called as ``model(x, t)`` with ``t`` a LongTensor [B]; the samplers
go from t = T − 1 to 0 with the β of each jump, β = 1 − ᾱ_t/ᾱ_next (β_t for a jump of one; ᾱ = 1 after t = 0):
reverse SDE x ← x + β·(x/2 + s) + √β·z (no z at the last step), probability-flow ODE x ← x + (β/2)·(x + s).

Closed forms come from probe scores (affine in x, recorded calls); distributions from the exact score of Gaussian
mixtures (``GaussianMixtureOracle``: s = −ε*/√(1−ᾱ_t)), so every sampler is checked with no training. For one Gaussian
the exact score is affine, so the chains' moments follow scalar recursions that the checks compute exactly; the
tolerances on sample statistics are about four standard errors of the sample sizes used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import ddpm_ref as R
from ddpm_ref import score as S
from tests._asserts import call, expect_close, expect_tensor, fmt
from tests._fixtures import MIXED_T, gen, seed_schedule
from tests.harness import Failure, check

# ------------------------------------------------------------------------------------------------ shared pieces

#: the lesson's 2-D mixture: three blobs of std 0.1 with weights 0.2 / 0.3 / 0.5
MEANS = torch.tensor([[-0.6, -0.4], [0.6, -0.4], [0.0, 0.6]])
STDS = (0.1, 0.1, 0.1)
WEIGHTS = (0.2, 0.3, 0.5)


def paper_schedule() -> R.NoiseSchedule:
    """T = 1000, linear β from 1e-4 to 0.02 (Ho et al.): ᾱ_{T−1} ≈ 4e-5, the chain starts at pure noise."""
    return R.NoiseSchedule(R.linear_beta_schedule(1000))


def short_schedule() -> R.NoiseSchedule:
    """T = 10, linear β from 1e-3 to 0.3: big steps, so every coefficient of a step shows."""
    return R.NoiseSchedule(R.linear_beta_schedule(10, 1e-3, 0.3))


class OracleScore(nn.Module):
    """The exact score −ε*(x, t)/√(1−ᾱ_t) of a Gaussian mixture under ``schedule`` (computed here, in float64)."""

    def __init__(self, schedule: R.NoiseSchedule, means, stds, weights) -> None:
        super().__init__()
        self.schedule = schedule
        self.oracle = R.GaussianMixtureOracle(schedule, means, stds, weights)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t).reshape(-1).expand(x.shape[0]).long()
        sigma = (1 - self.schedule.alpha_bars[t]).sqrt().reshape(-1, *([1] * (x.ndim - 1)))
        return (-self.oracle(x.double(), t) / sigma).to(x.dtype)


class CleanScore(nn.Module):
    """∇ log p of the mixture itself (no noise), for Langevin: the oracle's score at a t where ᾱ_t = 1 − 1e-8."""

    def __init__(self, means, stds, weights) -> None:
        super().__init__()
        self.score = OracleScore(R.NoiseSchedule(torch.tensor([1e-8], dtype=torch.float64)), means, stds, weights)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.score(x, torch.zeros(x.shape[0], dtype=torch.long))


class GaussianScore(nn.Module):
    """∇ log N(μ, s²I) = −(x − μ)/s²; records the inputs of its first calls."""

    def __init__(self, mu: float | Tensor, s: float) -> None:
        super().__init__()
        self.mu, self.s = torch.as_tensor(mu, dtype=torch.float32), s
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        if len(self.inputs) < 3:
            self.inputs.append(x.detach().clone())
        return -(x - self.mu.to(x.dtype)) / self.s**2


class ConstantScore(nn.Module):
    """A score that is the same vector c everywhere; records its inputs."""

    def __init__(self, c: Tensor) -> None:
        super().__init__()
        self.c = c
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        return self.c.to(x.dtype).expand_as(x)


class ScoreProbe(nn.Module):
    """s(x, t) = a·x + b + c·t: a score model in closed form; records (x, t) of every call (t as a LongTensor [B])."""

    def __init__(self, a: float = -0.5, b: float = 0.3, c: float = 0.01) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))
        self.c = nn.Parameter(torch.tensor(c))
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor, t: Tensor | int) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise AssertionError(f"the model was called with non-integer timesteps {fmt(t)}")
        t = t.long()
        self.calls.append((x.detach().clone(memory_format=torch.contiguous_format),
                           t.clone(memory_format=torch.contiguous_format)))
        return self.a * x + self.b + self.c * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def ts(self) -> list[int]:
        out = []
        for _, t in self.calls:
            if t.numel() and not bool((t == t[0]).all()):
                raise AssertionError(f"one model call mixed timesteps {fmt(t)}: a sampler step uses one t for the "
                                     "batch")
            out.append(int(t[0]) if t.numel() else -1)
        return out


def probe_score(x: Tensor, t: float, a: float = -0.5, b: float = 0.3, c: float = 0.01) -> Tensor:
    return a * x + b + c * t


def mixture_stats(x: Tensor, means: Tensor = MEANS) -> tuple[Tensor, Tensor, Tensor, float]:
    """(fraction per component, mean error per component, std per component, worst distance to a mode) of samples
    x [N, 2], each assigned to the nearest mean."""
    d = ((x.double()[:, None, :] - means.double()[None]) ** 2).sum(-1)
    k = d.argmin(1)
    frac = torch.bincount(k, minlength=len(means)).double() / len(x)
    err, std = torch.zeros(len(means)), torch.zeros(len(means))
    for j in range(len(means)):
        xs = x.double()[k == j]
        if len(xs) > 1:
            err[j] = float((xs.mean(0) - means[j].double()).abs().max())
            std[j] = float(xs.std(0).mean())
        else:
            err[j], std[j] = math.inf, 0.0
    return frac, err, std, float(d.min(1).values.sqrt().max())


def expect_mixture(x: Tensor, sampler: str, *, frac_tol: float, mean_tol: float, std_range: tuple[float, float],
                   hint: str) -> None:
    """Samples of the lesson's mixture: weights 0.2 / 0.3 / 0.5 within ``frac_tol``, each blob's mean within
    ``mean_tol`` of its mode and its std within ``std_range`` (0.1 plus the sampler's discretisation error)."""
    frac, err, std, _ = mixture_stats(x)
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    if float((frac - w).abs().max()) > frac_tol or float(err.max()) > mean_tol or not (
            std_range[0] <= float(std.min()) and float(std.max()) <= std_range[1]):
        raise Failure(f"{sampler} driven by the exact score of the three-blob mixture: expected weights "
                      f"{fmt(w)} (± {frac_tol}), blob means within {mean_tol} of the modes and blob stds in "
                      f"[{std_range[0]}, {std_range[1]}]; got weights {fmt(frac)}, mean errors {fmt(err)}, stds "
                      f"{fmt(std)}.", hint)


# ------------------------------------------------------------------------------------------------ score_from_eps


def _score_inputs() -> tuple[Tensor, Tensor, R.NoiseSchedule]:
    eps = torch.randn(6, 2, generator=gen(0))
    return eps, MIXED_T.clone(), seed_schedule()


def _score_closed_form(eps: Tensor, t: Tensor, s: R.NoiseSchedule, *, table: str = "alpha_bars", sign: float = -1.0,
                       power: float = 0.5, op: str = "div") -> Tensor:
    vals = {"alpha_bars": s.alpha_bars, "alphas": s.alphas, "prev": s.alpha_bars_prev,
            "sqrt_ab": 1 - s.alpha_bars.sqrt()}[table]
    sigma = ((1 - vals[t]) ** power).reshape(-1, *([1] * (eps.ndim - 1)))
    return sign * (eps.double() / sigma if op == "div" else eps.double() * sigma)


SCORE_HINT = "s = −ε/√(1 − ᾱ_t): schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, eps), then −eps / that"


def _score_diagnoses(eps: Tensor, t: Tensor, s: R.NoiseSchedule) -> list:
    return [
        (lambda: _score_closed_form(eps, t, s, sign=1.0),
         "wrong sign: the score points towards the data, against the noise: s = −ε/√(1 − ᾱ_t)"),
        (lambda: _score_closed_form(eps, t, s, power=1.0),
         "divide by the noise's standard deviation √(1 − ᾱ_t), not by its variance 1 − ᾱ_t"),
        (lambda: _score_closed_form(eps, t, s, op="mul"),
         "divide ε by √(1 − ᾱ_t) (the score grows as the noise shrinks), do not multiply"),
        (lambda: _score_closed_form(eps, t, s, table="alphas"),
         "you used α_t (alphas); the noise of x_t has the cumulative variance 1 − ᾱ_t (alpha_bars)"),
        (lambda: _score_closed_form(eps, t, s, table="prev"),
         "timesteps are 0-based: use ᾱ_t = alpha_bars[t], not ᾱ_{t−1} (alpha_bars_prev)"),
        (lambda: _score_closed_form(eps, t, s, table="sqrt_ab", power=1.0),
         "the noise's standard deviation is √(1 − ᾱ_t), not 1 − √ᾱ_t"),
    ]


@check("score_from_eps")
def test_score_from_eps_values(impl) -> None:
    """s = −ε/√(1 − ᾱ_t) for 6 points [6, 2] at t = [0, 1, 57, 200, 398, 399] of the seed schedule (within 0.1 %:
    1 − ᾱ_t computed in float32 is exact enough; every typical mistake is off by far more)."""
    eps, t, s = _score_inputs()
    out = expect_tensor(impl.score_from_eps(eps.clone(), t.clone(), s), "score_from_eps(eps [6, 2], t, schedule)",
                        shape=eps.shape, dtype=torch.float32, hint=SCORE_HINT)
    expect_close(out, _score_closed_form(eps, t, s), f"score_from_eps with t = {fmt(t, 6)}", atol=1e-4, rtol=1e-3,
                 diagnoses=_score_diagnoses(eps, t, s), hint=SCORE_HINT)


@check("score_from_eps")
def test_score_from_eps_images_and_int_t(impl) -> None:
    """Images [3, 1, 4, 4] with an int t = 57: the per-sample factor broadcast over every pixel."""
    eps, s = torch.randn(3, 1, 4, 4, generator=gen(1)), seed_schedule()
    out = expect_tensor(impl.score_from_eps(eps.clone(), 57, s), "score_from_eps(eps [3, 1, 4, 4], 57, schedule)",
                        shape=eps.shape, dtype=torch.float32,
                        hint="schedule.gather(values, t, eps) broadcasts an int t over the batch and the pixels")
    t = torch.full((3,), 57)
    expect_close(out, _score_closed_form(eps, t, s), "score_from_eps with t = 57", atol=1e-4, rtol=1e-3,
                 diagnoses=_score_diagnoses(eps, t, s), hint=SCORE_HINT)


def mixture_log_density(x: Tensor, t: Tensor, s: R.NoiseSchedule, means: Tensor, stds, weights) -> Tensor:
    """log p_t(x) of the mixture's marginal Σ_k w_k N(√ᾱ_t μ_k, (ᾱ_t s_k² + 1 − ᾱ_t) I), per sample (float64)."""
    ab = s.alpha_bars[t].reshape(-1, 1)
    v = ab * torch.tensor(stds, dtype=torch.float64)[None] ** 2 + 1 - ab  # [B, K]
    diff = x[:, None, :] - ab.sqrt()[..., None] * means.double()[None]  # [B, K, D]
    d = x.shape[-1]
    logp = (-0.5 * (diff**2).sum(-1) / v - 0.5 * d * torch.log(2 * math.pi * v)
            + torch.tensor(weights, dtype=torch.float64).log()[None])
    return torch.logsumexp(logp, dim=1)


@check("score_from_eps", hidden=True)
def test_score_from_eps_is_the_gradient_of_the_log_density(impl) -> None:
    """With the exact ε* of the three-blob mixture, score_from_eps gives ∇_x log p_t(x), computed by autograd from
    the marginal density itself, at t = 0 … 999 of the paper's schedule."""
    s = paper_schedule()
    oracle = R.GaussianMixtureOracle(s, MEANS, STDS, WEIGHTS)
    t = torch.tensor([0, 3, 50, 200, 500, 999])
    x = (torch.randn(6, 2, generator=gen(2), dtype=torch.float64) * 0.5).requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture_log_density(x, t, s, MEANS, STDS, WEIGHTS).sum(), x)
    eps = oracle(x.detach(), t)
    out = impl.score_from_eps(eps, t, s)
    expect_close(out, grad, "score_from_eps(ε*, t) against ∇ log p_t(x) by autograd", atol=1e-6, rtol=1e-6,
                 diagnoses=_score_diagnoses(eps, t, s), hint=SCORE_HINT)


# ------------------------------------------------------------------------------------------------ dsm_loss


def _dsm_inputs(seed: int) -> tuple[Tensor, Tensor, Tensor, R.NoiseSchedule]:
    g = gen(seed)
    x0 = torch.rand(6, 2, generator=g) * 2 - 1
    noise = torch.randn(6, 2, generator=g)
    return x0, noise, MIXED_T.clone(), seed_schedule()


def dsm_closed_form(x0: Tensor, noise: Tensor, t: Tensor, s: R.NoiseSchedule, *, weight: str = "var",
                    target_sign: float = -1.0, target_power: float = 0.5, table: str = "alpha_bars",
                    reduce: str = "mean") -> float:
    ab = {"alpha_bars": s.alpha_bars, "alphas": s.alphas}[table][t].reshape(-1, 1)
    a, e = x0.double(), noise.double()
    x_t = ab.sqrt() * a + (1 - ab).sqrt() * e
    target = target_sign * e / (1 - ab) ** target_power
    lam = {"var": 1 - ab, "none": torch.ones_like(ab), "std": (1 - ab).sqrt()}[weight]
    r = lam * (probe_score(x_t, t.double().reshape(-1, 1)) - target) ** 2
    return float(r.mean() if reduce == "mean" else r.sum())


DSM_HINT = ("x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε; target −ε/√(1 − ᾱ_t); loss = mean((1 − ᾱ_t)·(model(x_t, t) − target)²), "
            "the weight reshaped to [B, 1, …]")


def _dsm(impl, model, x0, s, **kwargs) -> Tensor:
    out = impl.dsm_loss(model, x0, s, **kwargs)
    return expect_tensor(out, "dsm_loss(model, x0, schedule, ...)", shape=(),
                         hint="return the mean as a 0-d tensor, not .item() or a per-sample tensor")


@check("dsm_loss")
def test_dsm_loss_value(impl) -> None:
    """Given t and ε: mean((1 − ᾱ_t)·(s_θ(x_t, t) + ε/√(1 − ᾱ_t))²), a 0-d tensor the gradient flows through."""
    x0, noise, t, s = _dsm_inputs(3)
    out = _dsm(impl, ScoreProbe(), x0, s, t=t, noise=noise)
    if not out.requires_grad:
        raise Failure("the loss does not depend on the model's parameters (requires_grad is False).",
                      "do not compute it under torch.no_grad() or detach it")
    expect_close(out, dsm_closed_form(x0, noise, t, s), f"dsm_loss with t = {fmt(t, 6)}", atol=1e-5, rtol=1e-4,
                 diagnoses=[
                     (lambda: dsm_closed_form(x0, noise, t, s, weight="none"),
                      "the weighting λ(t) = 1 − ᾱ_t is missing: without it the small-noise steps, whose target "
                      "−ε/√(1 − ᾱ_t) is huge, swamp the loss"),
                     (lambda: dsm_closed_form(x0, noise, t, s, weight="std"),
                      "the weight is λ(t) = 1 − ᾱ_t (the noise's variance σ², Song & Ermon 2019), not √(1 − ᾱ_t)"),
                     (lambda: dsm_closed_form(x0, noise, t, s, target_sign=1.0),
                      "the target has the wrong sign: ∇ log q(x_t | x0) = −ε/√(1 − ᾱ_t) points back to the data"),
                     (lambda: dsm_closed_form(x0, noise, t, s, target_power=1.0),
                      "the target is −ε/√(1 − ᾱ_t) (divide by the standard deviation), not −ε/(1 − ᾱ_t)"),
                     (lambda: dsm_closed_form(x0, noise, t, s, table="alphas"),
                      "you used α_t (alphas); x_t and the target need the cumulative ᾱ_t (alpha_bars)"),
                     (lambda: dsm_closed_form(x0, noise, t, s, reduce="sum"),
                      "take the mean over the batch and the coordinates, not the sum"),
                 ], hint=DSM_HINT)


@check("dsm_loss")
def test_dsm_loss_calls_the_model_on_x_t(impl) -> None:
    """One call, on x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε with the given 0-based t."""
    x0, noise, t, s = _dsm_inputs(4)
    model = ScoreProbe()
    _dsm(impl, model, x0, s, t=t, noise=noise)
    if len(model.calls) != 1:
        raise AssertionError(f"the loss should call the model once, on the whole batch; it called it "
                             f"{len(model.calls)} times")
    x_in, t_in = model.calls[0]
    ab = s.alpha_bars[t].reshape(-1, 1)
    expect_close(t_in, t, "the model's timesteps", atol=0, rtol=0, hint="call model(x_t, t) with the t given")
    expect_close(x_in, ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double(), "the model's input x_t",
                 atol=1e-5, rtol=1e-5, diagnoses=[
                     (s.alphas[t].reshape(-1, 1).sqrt() * x0.double() + (1 - s.alphas[t].reshape(-1, 1)).sqrt()
                      * noise.double(), "you used α_t (alphas); x_t needs the cumulative ᾱ_t (alpha_bars)")],
                 hint="x_t = q_sample(x0, t, noise, schedule)")


@check("dsm_loss")
def test_dsm_loss_draws_t_and_noise(impl) -> None:
    """Without t and ε: t uniform on {0, …, T − 1} (both ends reached), ε ~ N(0, I), both from ``generator``; with
    x0 = 0 and a zero score the weighted loss is mean(ε²) ≈ 1 at every t."""
    s = short_schedule()
    x0 = torch.zeros(4000, 2)
    losses = [float(_dsm(impl, ScoreProbe(0.0, 0.0, 0.0), x0, s, generator=gen(seed)).detach()) for seed in (0, 0, 1)]
    if losses[0] != losses[1] or losses[0] == losses[2]:
        raise Failure(f"with the same generator seed the loss should repeat and with another seed change; got "
                      f"{fmt(torch.tensor(losses))}.", "draw t and ε from `generator`")
    model = ScoreProbe()
    _dsm(impl, model, x0, s, generator=gen(5))
    t_in = model.calls[0][1]
    counts = torch.bincount(t_in, minlength=s.T + 1)
    if int(t_in.min()) != 0 or int(t_in.max()) != s.T - 1 or float(counts[: s.T].min()) < 300:
        hint = ("timesteps are 0-based: draw t = torch.randint(0, T, …), which includes 0"
                if int(t_in.min()) >= 1 else "t = torch.randint(0, schedule.T, (B,), generator=generator)")
        raise Failure(f"with T = {s.T} and 4000 points, t should be uniform on {{0, …, {s.T - 1}}}; the drawn t range "
                      f"over [{int(t_in.min())}, {int(t_in.max())}] with counts {counts.tolist()}.", hint)
    if abs(losses[0] - 1) > 0.06:
        raise Failure(f"with x0 = 0 and a zero score the weighted loss is mean((1 − ᾱ_t)·ε²/(1 − ᾱ_t)) = mean(ε²) ≈ 1; "
                      f"yours is {losses[0]:.4f}.",
                      "weight by λ(t) = 1 − ᾱ_t and use the target −ε/√(1 − ᾱ_t); draw ε with "
                      "torch.randn(x0.shape, generator=generator)")


@check("dsm_loss", hidden=True)
def test_dsm_loss_of_a_score_is_the_ddpm_loss_of_its_noise(impl) -> None:
    """(1 − ᾱ)·‖s + ε/√(1 − ᾱ)‖² = ‖ε − (−√(1 − ᾱ)·s)‖²: the DSM loss of the exact score of the mixture equals L_simple
    of the exact ε*, for 2000 points and given t and ε (the seed schedule)."""
    s = seed_schedule()
    g = gen(6)
    x0 = MEANS[torch.multinomial(torch.tensor(WEIGHTS), 2000, True, generator=g)] + 0.1 * torch.randn(2000, 2,
                                                                                                     generator=g)
    t = torch.randint(0, s.T, (2000,), generator=g)
    noise = torch.randn(2000, 2, generator=g)
    value = float(_dsm(impl, OracleScore(s, MEANS, STDS, WEIGHTS), x0, s, t=t, noise=noise).detach())
    expected = float(R.ddpm_loss(R.GaussianMixtureOracle(s, MEANS, STDS, WEIGHTS), x0, s, t=t, noise=noise))
    if abs(value - expected) > 1e-4 * max(1.0, expected):
        raise Failure(f"with the exact score the loss should equal L_simple of the exact ε*, {expected:.5f}; yours is "
                      f"{value:.5f}.", DSM_HINT)


# ------------------------------------------------------------------------------------------------ langevin_sample


def _langevin(impl, score_fn, x, **kwargs) -> Tensor:
    out = impl.langevin_sample(score_fn, x, **kwargs)
    return expect_tensor(out, f"langevin_sample(score_fn, x {list(x.shape)}, ...)", shape=x.shape, dtype=x.dtype)


LANGEVIN_HINT = ("x = x + (step_size / 2) * score_fn(x) + math.sqrt(step_size) * torch.randn(x.shape, "
                 "generator=generator)")


@check("langevin_sample")
def test_langevin_sample_one_step(impl) -> None:
    """One step from 4000 points with a constant score c = (2, −1) and δ = 0.25: the score sees x, and
    (x' − x − (δ/2)·c)/√δ is N(0, I) (mean within 0.06 of 0, std within 0.05 of 1)."""
    x = torch.full((4000, 2), 0.3)
    c = torch.tensor([2.0, -1.0])
    score = ConstantScore(c)
    out = _langevin(impl, score, x.clone(), step_size=0.25, steps=1, generator=gen(7))
    if len(score.inputs) != 1:
        raise Failure(f"one step should call score_fn once; it was called {len(score.inputs)} times.",
                      "one call of score_fn per step")
    expect_close(score.inputs[0], x, "the input of score_fn", atol=1e-6, hint="evaluate the score at the current x")
    z = (out.double() - x.double() - 0.125 * c.double()) / 0.5
    m, sd = z.mean(0), z.std(0)
    if float(m.abs().max()) <= 0.06 and float((sd - 1).abs().max()) <= 0.05:
        return
    drift = (out.double() - x.double()).mean(0)
    spread = float((out.double() - x.double()).std(0).mean())
    if abs(spread - 0.25) < 0.03:
        hint = "the noise is √δ·z (standard deviation √δ), not δ·z"
    elif abs(spread - math.sqrt(0.5)) < 0.04:
        hint = "the noise is √δ·z, not √(2δ)·z: the drift is δ/2·∇log p and the noise √δ·z"
    elif float((drift - 0.25 * c).abs().max()) < 0.05:
        hint = "the drift is (δ/2)·∇log p(x), half the step size, not δ·∇log p(x)"
    elif float((drift + 0.125 * c).abs().max()) < 0.05:
        hint = "wrong sign: Langevin climbs the log-density, x + (δ/2)·∇log p(x)"
    elif spread < 1e-6:
        hint = "every step adds noise √δ·z: without it Langevin is plain gradient ascent"
    else:
        hint = LANGEVIN_HINT
    raise Failure(f"one step with δ = 0.25 and a constant score c = {fmt(c)}: expected (x' − x − (δ/2)·c)/√δ of mean 0 "
                  f"and std 1, got mean {fmt(m)} and std {fmt(sd)}.", hint)


def ar1_moments(x0: float, mu: float, s: float, delta: float, n: int) -> tuple[float, float]:
    """Mean and std after n Langevin steps on N(μ, s²) from the point x0: x' = μ + a·(x − μ) + √δ·z, a = 1 − δ/(2s²)."""
    a = 1 - delta / (2 * s**2)
    mean = mu + a**n * (x0 - mu)
    var = delta * (1 - a ** (2 * n)) / (1 - a**2)
    return mean, math.sqrt(var)


def _expect_gaussian_chain(impl, *, x0: float, mu: float, s: float, delta: float, n: int, seed: int) -> None:
    x = torch.full((5000, 2), x0)
    out = _langevin(impl, GaussianScore(mu, s), x, step_size=delta, steps=n, generator=gen(seed))
    mean, std = ar1_moments(x0, mu, s, delta, n)
    m, sd = float(out.double().mean()), float(out.double().std())
    if abs(m - mean) > 4 * std / 100 + 1e-6 or abs(sd - std) > 0.03 * std:
        drift2 = ar1_moments(x0, mu, s, 2 * delta, n)  # the drift δ·s with noise √δ: a = 1 − δ/s²
        a2 = 1 - delta / s**2
        var2 = delta * (1 - a2 ** (2 * n)) / (1 - a2**2)
        a = 1 - delta / (2 * s**2)
        var_delta = delta**2 * (1 - a ** (2 * n)) / (1 - a**2)
        if abs(sd - math.sqrt(var_delta)) < 0.05 * math.sqrt(var_delta) + 1e-6:
            hint = "the noise is √δ·z (standard deviation √δ), not δ·z"
        elif abs(m - drift2[0]) < 0.02 and abs(sd - math.sqrt(var2)) < 0.05 * math.sqrt(var2):
            hint = "the drift is (δ/2)·∇log p(x), half the step size, not δ·∇log p(x)"
        else:
            hint = LANGEVIN_HINT
        raise Failure(f"{n} steps of δ = {delta} on N({mu}, {s}²) from x = {x0}: the chain is "
                      f"x' = μ + a·(x − μ) + √δ·z "
                      f"with a = 1 − δ/(2s²), so the points should have mean {mean:.4f} and std {std:.4f}; got mean "
                      f"{m:.4f} and std {sd:.4f}.", hint)


@check("langevin_sample")
def test_langevin_sample_gaussian_stationary_law(impl) -> None:
    """300 steps of δ = 0.004 on N(0.5, 0.2²) from x = −1 (10 000 coordinates): mean 0.5, and the stationary std of
    unadjusted Langevin √(δ/(1 − a²)) = 0.2026 with a = 1 − δ/(2s²) (0.2 as δ → 0), within 3 %."""
    _expect_gaussian_chain(impl, x0=-1.0, mu=0.5, s=0.2, delta=0.004, n=300, seed=8)


@check("langevin_sample")
def test_langevin_sample_mixture_modes(impl) -> None:
    """500 steps of δ = 2e-3 from 3000 points drawn from the mixture itself with the exact score: the points stay
    on the mixture (weights within 0.04, blob means within 0.02, stds 0.1 within 0.015)."""
    g = gen(9)
    x = MEANS[torch.multinomial(torch.tensor(WEIGHTS), 3000, True, generator=g)] + 0.1 * torch.randn(3000, 2,
                                                                                                    generator=g)
    out = _langevin(impl, CleanScore(MEANS, STDS, WEIGHTS), x, step_size=2e-3, steps=500, generator=g)
    expect_mixture(out, "langevin_sample (500 steps from the mixture)", frac_tol=0.04, mean_tol=0.02,
                   std_range=(0.085, 0.115), hint=LANGEVIN_HINT)


@check("langevin_sample", hidden=True)
def test_langevin_sample_exact_chain_few_steps(impl) -> None:
    """5 steps of δ = 0.1 on N(−0.2, 0.5²) from x = 1: mean and std of the exact AR(1) chain (within 4 standard
    errors and 3 %)."""
    _expect_gaussian_chain(impl, x0=1.0, mu=-0.2, s=0.5, delta=0.1, n=5, seed=10)


@check("langevin_sample", hidden=True)
def test_langevin_sample_overlapping_mixture_weights(impl) -> None:
    """Two overlapping blobs at x = ∓0.4 (std 0.3, weights 0.3 / 0.7) in 2-D: 4000 chains from N(0, I), 400 steps of
    δ = 0.01, reach the mixture: the fraction with x > 0 is P(x > 0) = 0.3·Φ(−4/3) + 0.7·Φ(4/3) ≈ 0.6090 ± 0.035."""
    means = torch.tensor([[-0.4, 0.0], [0.4, 0.0]])
    g = gen(11)
    x = torch.randn(4000, 2, generator=g)
    out = _langevin(impl, CleanScore(means, (0.3, 0.3), (0.3, 0.7)), x, step_size=0.01, steps=400, generator=g)
    phi = 0.5 * (1 + math.erf((0.4 / 0.3) / math.sqrt(2)))
    expected = 0.3 * (1 - phi) + 0.7 * phi
    frac = float((out[:, 0] > 0).double().mean())
    if abs(frac - expected) > 0.035:
        raise Failure(f"Langevin on two overlapping blobs: expected a fraction {expected:.4f} of the points at x > 0, "
                      f"got {frac:.4f}.", LANGEVIN_HINT)


# ------------------------------------------------------------------------------------------------ reverse_sde_sample


def _sample(impl, name: str, model, s, shape, **kwargs) -> Tensor:
    out = call(getattr(impl, name), model, s, shape, device="cpu", progress=False, **kwargs)
    if isinstance(out, tuple):
        raise AssertionError(f"{name}(...) should return the samples tensor (a tuple only with return_intermediates)")
    return expect_tensor(out, f"{name}(model, schedule, shape={list(shape)}, ...)", shape=shape, dtype=torch.float32)


def _expect_timesteps(model: ScoreProbe, expected: list[int], name: str) -> None:
    ts = model.ts()
    if ts == expected:
        return
    if ts == expected[::-1]:
        hint = "go backwards: from t = T − 1 (noise) down to t = 0 (data)"
    elif ts == [t + 1 for t in expected]:
        hint = "timesteps are 0-based: the chain visits T − 1, …, 0, not T, …, 1"
    elif ts == expected[:-1]:
        hint = "the chain ends with the step at t = 0 (its last model call is at t = 0)"
    else:
        hint = "for t in ddim_timesteps(schedule.T, steps): one model call per visited t, from T − 1 down to 0"
    raise Failure(f"{name} should call the model at t = {expected[:4]} … {expected[-3:]} ({len(expected)} calls); it "
                  f"called it at {ts[:4]} … {ts[-3:]} ({len(ts)} calls).", hint)


@check("reverse_sde_sample")
def test_reverse_sde_sample_calls_every_timestep(impl) -> None:
    """T = 10: one model call at each t = 9, 8, …, 0, the first on x_T when given, on N(0, I) noise otherwise."""
    s = short_schedule()
    x_T = torch.randn(500, 2, generator=gen(12))
    model = ScoreProbe()
    _sample(impl, "reverse_sde_sample", model, s, x_T.shape, x_T=x_T.clone(), generator=gen(0))
    _expect_timesteps(model, list(range(s.T - 1, -1, -1)), "reverse_sde_sample")
    expect_close(model.calls[0][0], x_T, "the first model input", atol=1e-6, hint="start from x_T when it is given")
    model = ScoreProbe()
    _sample(impl, "reverse_sde_sample", model, s, (4000, 2), generator=gen(13))
    m, sd = float(model.calls[0][0].mean()), float(model.calls[0][0].std())
    if abs(m) > 0.05 or abs(sd - 1) > 0.05:
        raise Failure(f"sampling should start from x_{{T−1}} ~ N(0, I); the first input has mean {m:.3f} and std "
                      f"{sd:.3f}.", "x = torch.randn(shape, generator=generator) when x_T is None")


SDE_HINT = ("x ← x + β·(x/2 + s(x, t)) + √β·z at every t from T − 1 down to 1, and x ← x + β·(x/2 + s(x, 0)) at t = 0 "
            "(β of the jump: 1 − ᾱ_t/ᾱ_next)")


def _step_residuals(model: ScoreProbe, out: Tensor, s: R.NoiseSchedule) -> list[tuple[int, float, Tensor, Tensor]]:
    """(t, β_t, x before the step at t, x after it) for every recorded call of a full-length chain."""
    xs = [c[0].double() for c in model.calls] + [out.double()]
    ts = model.ts()
    return [(t, float(s.betas[t]), xs[i], xs[i + 1]) for i, t in enumerate(ts)]


@check("reverse_sde_sample")
def test_reverse_sde_sample_steps(impl) -> None:
    """T = 10, 4000 points from x_T = 2 + N(0, I) with s(x, t) = −0.5·x + 0.3 + 0.01·t: for t ≥ 1,
    (x_{t−1} − x_t − β_t·(x_t/2 + s))/√β_t is N(0, 1) (mean within 0.07, std within 0.06), and the step at t = 0
    adds no noise: x_out = x_0 + β_0·(x_0/2 + s(x_0, 0)) within 1e-4."""
    s = short_schedule()
    x_T = 2 + torch.randn(4000, 2, generator=gen(14))
    model = ScoreProbe()
    out = _sample(impl, "reverse_sde_sample", model, s, x_T.shape, x_T=x_T.clone(), generator=gen(15))
    _expect_timesteps(model, list(range(s.T - 1, -1, -1)), "reverse_sde_sample")
    for t, beta, x, x_next in _step_residuals(model, out, s):
        sc = probe_score(x, t)
        mean = x + beta * (0.5 * x + sc)
        if t == 0:
            if float((x_next - mean).abs().max()) > 1e-4:
                noisy = float((x_next - mean).std()) > 0.5 * math.sqrt(beta)
                raise Failure(f"the step at t = 0 should be x + β_0·(x/2 + s(x, 0)) with no noise; it is off by up to "
                              f"{float((x_next - mean).abs().max()):.3g}.",
                              "the last step (t = 0) adds no noise: it returns the clean estimate" if noisy else
                              SDE_HINT)
            continue
        z = (x_next - mean) / math.sqrt(beta)
        m, sd = float(z.mean()), float(z.std())
        if abs(m) <= 0.07 and abs(sd - 1) <= 0.06:
            continue
        candidates = [
            (x + 0.5 * beta * (x + sc), 1.0, "the reverse SDE's drift is β·(x/2 + s): the score has the full "
             "coefficient β (the ODE's is β/2, because the SDE's noise also spreads the points)"),
            (x + beta * (-0.5 * x + sc), 1.0, "the reverse drift is +β·x/2: the forward SDE pulls x in by −β·x/2, "
             "and the reverse pushes it back out"),
            (x + beta * (0.5 * x - sc), 1.0, "wrong sign of the score: the reverse SDE moves along +β·s, up the "
             "log-density"),
            (mean, beta**0.5, "the noise is √β·z (standard deviation √β), not β·z"),
            (x + beta * sc, 1.0, "the drift misses the term β·x/2 of the reverse VP SDE"),
        ]
        hint = SDE_HINT
        for cand_mean, scale, text in candidates:
            zc = (x_next - cand_mean) / (math.sqrt(beta) * scale)
            if abs(float(zc.mean())) <= 0.07 and abs(float(zc.std()) - 1) <= 0.06:
                hint = text
                break
        raise Failure(f"the step at t = {t} (β_t = {beta:.4g}): expected (x_{{t−1}} − x_t − β_t·(x_t/2 + s))/√β_t "
                      "of mean "
                      f"0 and std 1, got mean {m:.3g} and std {sd:.3g}.", hint)


@check("reverse_sde_sample")
def test_reverse_sde_sample_mixture(impl) -> None:
    """The exact score of the three-blob mixture, the paper's schedule (T = 1000), 2000 points: weights within 0.04,
    blob means within 0.02, stds 0.1 within 0.015."""
    s = paper_schedule()
    out = _sample(impl, "reverse_sde_sample", OracleScore(s, MEANS, STDS, WEIGHTS), s, (2000, 2), generator=gen(16))
    expect_mixture(out, "reverse_sde_sample", frac_tol=0.04, mean_tol=0.02, std_range=(0.085, 0.115), hint=SDE_HINT)


def sde_gaussian_moments(s: R.NoiseSchedule, mu: float, sd: float, plan: list[tuple[int, float]],
                         kind: str) -> tuple[float, float]:
    """Mean and std of the output of the reverse SDE / ODE from N(0, 1) driven by the exact (affine) score of
    N(μ, sd²) data: s(x, t) = −(x − √ᾱ_t·μ)/v_t with v_t = ᾱ_t·sd² + 1 − ᾱ_t."""
    m, var = 0.0, 1.0
    for i, (t, beta) in enumerate(plan):
        ab = float(s.alpha_bars[t])
        v = ab * sd**2 + 1 - ab
        c = 0.5 * beta if kind == "ode" else beta
        k = 1 + 0.5 * beta - c / v  # x ← k·x + c·√ᾱ·μ/v (+ √β z)
        m = k * m + c * math.sqrt(ab) * mu / v
        var = k**2 * var + (beta if kind == "sde" and i < len(plan) - 1 else 0.0)
    return m, math.sqrt(var)


@check("reverse_sde_sample", hidden=True)
def test_reverse_sde_sample_gaussian_moments(impl) -> None:
    """N(0.3, 0.2²) data with its exact score, T = 1000, 10 000 coordinates: mean and std of the exact
    Euler–Maruyama recursion (within 4 standard errors and 3 %)."""
    s = paper_schedule()
    out = _sample(impl, "reverse_sde_sample", OracleScore(s, [0.3], [0.2], [1.0]), s, (5000, 2), generator=gen(17))
    m, sd = sde_gaussian_moments(s, 0.3, 0.2, S.jump_betas(s), "sde")
    got_m, got_sd = float(out.double().mean()), float(out.double().std())
    if abs(got_m - m) > 4 * sd / 100 or abs(got_sd - sd) > 0.03 * sd:
        raise Failure(f"with the exact score of N(0.3, 0.2²) data the reverse SDE should give mean {m:.4f} and std "
                      f"{sd:.4f}; got mean {got_m:.4f} and std {got_sd:.4f}.", SDE_HINT)


# ---------------------------------------------------------------------------------------- probability_flow_sample


def ode_chain(x: Tensor, s: R.NoiseSchedule, plan: list[tuple[int, float]], *, coef: float = 0.5,
              x_sign: float = 1.0, s_sign: float = 1.0) -> Tensor:
    """The probability-flow Euler chain of the probe score in float64; the switches build typical mistakes."""
    x = x.double()
    for t, beta in plan:
        x = x + 0.5 * beta * x_sign * x + coef * beta * s_sign * probe_score(x, t)
    return x


ODE_HINT = "x ← x + (β/2)·(x + s(x, t)) at every visited t from T − 1 down to 0, no noise (β = 1 − ᾱ_t/ᾱ_next)"


@check("probability_flow_sample")
def test_probability_flow_sample_steps(impl) -> None:
    """T = 10 from a given x_T with s(x, t) = −0.5·x + 0.3 + 0.01·t: x ← x + (β_t/2)·(x + s(x, t)) at t = 9, …, 0,
    exactly (within 1e-4); the same x_T gives the same output whatever the generator."""
    s = short_schedule()
    x_T = torch.randn(8, 2, generator=gen(18))
    model = ScoreProbe()
    out = _sample(impl, "probability_flow_sample", model, s, x_T.shape, x_T=x_T.clone(), generator=gen(0))
    _expect_timesteps(model, list(range(s.T - 1, -1, -1)), "probability_flow_sample")
    again = _sample(impl, "probability_flow_sample", ScoreProbe(), s, x_T.shape, x_T=x_T.clone(), generator=gen(1))
    if not torch.equal(out, again):
        raise Failure("the probability-flow ODE is deterministic: the same x_T must give the same output, but two runs "
                      "with different generators differ.", "add no noise along the way: the ODE's only randomness is "
                      "the starting x_T")
    plan = S.jump_betas(s)
    expect_close(out, ode_chain(x_T, s, plan), "probability_flow_sample(..., x_T=x_T) with T = 10", atol=1e-4,
                 rtol=1e-4, diagnoses=[
                     (lambda: ode_chain(x_T, s, plan, coef=1.0),
                      "the probability-flow ODE has half the SDE's score coefficient: (β/2)·s, not β·s"),
                     (lambda: ode_chain(x_T, s, plan, x_sign=-1.0),
                      "the reverse drift is +(β/2)·x: the forward process pulls x in by −(β/2)·x, the reverse pushes "
                      "it back out"),
                     (lambda: ode_chain(x_T, s, plan, s_sign=-1.0),
                      "wrong sign of the score: the ODE moves along +(β/2)·s, towards the data"),
                 ], hint=ODE_HINT)


@check("probability_flow_sample")
def test_probability_flow_sample_converges_to_ddim(impl) -> None:
    """DDIM (η = 0) is Euler on the same ODE in x/√ᾱ and σ = √((1 − ᾱ)/ᾱ): from the same 500 starting points of the
    three-blob mixture, the mean distance between your ODE and DDIM is below 0.13 at 50 steps and below 0.008 at 1000
    steps (about 1/steps: both are first-order solvers of one ODE)."""
    s = paper_schedule()
    model = OracleScore(s, MEANS, STDS, WEIGHTS)
    x_T = torch.randn(500, 2, generator=gen(19))
    gaps = []
    for steps, bound in ((50, 0.13), (1000, 0.008)):
        ode = _sample(impl, "probability_flow_sample", model, s, x_T.shape, x_T=x_T.clone(), steps=steps)
        ddim = R.ddim_sample(model.oracle, s, x_T.shape, steps=steps, x_T=x_T, clip_x0=False, progress=False)
        gap = float((ode.double() - ddim.double()).norm(dim=1).mean())
        gaps.append(gap)
        if gap > bound:
            raise Failure(f"with {steps} steps, the probability-flow ODE and DDIM (η = 0) from the same x_T should "
                          f"agree within a mean distance of {bound}; yours are {gap:.4f} apart.",
                          "visit ddim_timesteps(schedule.T, steps) and use the β of each jump, 1 − ᾱ_t/ᾱ_next (ᾱ = 1 "
                          "after t = 0); x ← x + (β/2)·(x + s(x, t))")


@check("probability_flow_sample")
def test_probability_flow_sample_mixture(impl) -> None:
    """The exact score of the three-blob mixture, T = 1000, all steps, 2000 points: weights within 0.04, blob means
    within 0.02, stds within [0.085, 0.12] (Euler widens the blobs a little)."""
    s = paper_schedule()
    out = _sample(impl, "probability_flow_sample", OracleScore(s, MEANS, STDS, WEIGHTS), s, (2000, 2),
                  generator=gen(20))
    expect_mixture(out, "probability_flow_sample", frac_tol=0.04, mean_tol=0.02, std_range=(0.085, 0.12),
                   hint=ODE_HINT)


@check("probability_flow_sample", hidden=True)
def test_probability_flow_sample_gaussian_affine_map(impl) -> None:
    """N(0.3, 0.2²) data with its exact (affine) score, 40 steps: the output is the affine image A·x_T + B of the
    exact Euler recursion (within 1e-4)."""
    s = paper_schedule()
    x_T = torch.randn(200, 2, generator=gen(21))
    out = _sample(impl, "probability_flow_sample", OracleScore(s, [0.3], [0.2], [1.0]), s, x_T.shape,
                  x_T=x_T.clone(), steps=40)
    a, b = 1.0, 0.0
    for t, beta in S.jump_betas(s, 40):
        ab = float(s.alpha_bars[t])
        v = ab * 0.04 + 1 - ab
        k = 1 + 0.5 * beta - 0.5 * beta / v
        a, b = k * a, k * b + 0.5 * beta * math.sqrt(ab) * 0.3 / v
    expect_close(out, a * x_T.double() + b, "probability_flow_sample with the exact score of N(0.3, 0.2²), 40 steps",
                 atol=1e-4, rtol=1e-4, hint=ODE_HINT)


# ------------------------------------------------------------------------------------------------ reference facts


def test_score_from_eps_inverts_eps_from_score() -> None:
    s = seed_schedule()
    eps = torch.randn(6, 2, generator=gen(30), dtype=torch.float64)
    torch.testing.assert_close(S.eps_from_score(R.score_from_eps(eps, MIXED_T, s), MIXED_T, s), eps)


def test_oracle_score_is_the_gradient_of_the_marginal() -> None:
    s = paper_schedule()
    t = torch.tensor([0, 10, 300, 999])
    x = torch.randn(4, 2, dtype=torch.float64, generator=gen(31)).requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture_log_density(x, t, s, MEANS, STDS, WEIGHTS).sum(), x)
    score = R.ScoreFromEps(R.GaussianMixtureOracle(s, MEANS, STDS, WEIGHTS), s)(x.detach(), t)
    torch.testing.assert_close(score, grad, atol=1e-9, rtol=1e-9)


def test_dsm_loss_is_l_simple_of_the_implied_noise() -> None:
    s = seed_schedule()
    x0 = torch.randn(64, 2, generator=gen(32))
    model = ScoreProbe()
    t, noise = torch.randint(0, s.T, (64,), generator=gen(33)), torch.randn(64, 2, generator=gen(34))
    implied = lambda x, tt: S.eps_from_score(model(x, tt), tt, s)  # noqa: E731
    torch.testing.assert_close(R.dsm_loss(model, x0, s, t=t, noise=noise),
                               R.ddpm_loss(implied, x0, s, t=t, noise=noise), atol=1e-6, rtol=1e-6)


def test_ddim_is_euler_in_xbar_and_sigma_for_a_score_model() -> None:
    """One DDIM step (η = 0, no clipping) is x̄' = x̄ + (σ' − σ)·ε with ε = −√(1 − ᾱ)·s, x̄ = x/√ᾱ, σ = √((1−ᾱ)/ᾱ)."""
    s = paper_schedule()
    model = OracleScore(s, MEANS, STDS, WEIGHTS)
    x = torch.randn(16, 2, generator=gen(35), dtype=torch.float64)
    for t, t_prev in ((999, 900), (500, 480), (20, 0), (0, -1)):
        ab = float(s.alpha_bars[t])
        ab_prev = float(s.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
        eps = S.eps_from_score(model(x, torch.full((16,), t)), t, s)
        sigma, sigma_prev = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev)
        euler = (x / math.sqrt(ab) + (sigma_prev - sigma) * eps) * math.sqrt(ab_prev)
        ddim = R.ddim_step(model.oracle, x, t, t_prev, s, clip_x0=False)
        torch.testing.assert_close(ddim, euler, atol=1e-10, rtol=1e-10)


def test_probability_flow_and_ddim_converge_together() -> None:
    """The gap between the two first-order solvers of one ODE shrinks about like 1/steps."""
    s = paper_schedule()
    model = OracleScore(s, MEANS, STDS, WEIGHTS)
    x_T = torch.randn(300, 2, generator=gen(36))
    gaps = []
    for steps in (25, 100, 400):
        ode = R.probability_flow_sample(model, s, x_T.shape, steps=steps, x_T=x_T, progress=False)
        ddim = R.ddim_sample(model.oracle, s, x_T.shape, steps=steps, x_T=x_T, clip_x0=False, progress=False)
        gaps.append(float((ode - ddim).norm(dim=1).mean()))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < gaps[0] / 8, gaps


def test_ddim_cross_checked_with_diffusers_is_the_ode_step() -> None:
    """diffusers' DDIMScheduler (η = 0, no clipping), fed ε = −√(1 − ᾱ)·s of the exact score, takes the Euler step of
    the probability-flow ODE in (x̄, σ)."""
    import pytest

    diffusers = pytest.importorskip("diffusers")
    s = paper_schedule()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                    clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    sched.set_timesteps(20)
    model = OracleScore(s, MEANS, STDS, WEIGHTS)
    x = torch.randn(32, 2, generator=gen(37), dtype=torch.float64)
    ts = [int(t) for t in sched.timesteps]
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = S.eps_from_score(model(x, torch.full((32,), t)), t, s)
        ab, ab_prev = float(s.alpha_bars[t]), float(s.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
        sigma, sigma_prev = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev)
        euler = (x / math.sqrt(ab) + (sigma_prev - sigma) * eps) * math.sqrt(ab_prev)
        theirs = sched.step(eps, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(theirs.double(), euler, atol=1e-6, rtol=1e-6)
        x = euler


def test_samplers_record_intermediates_and_refuse_bad_steps() -> None:
    s = short_schedule()
    x, frames = R.reverse_sde_sample(ScoreProbe(), s, (4, 2), generator=gen(38), progress=False,
                                     return_intermediates=True)
    assert sorted(frames) == list(range(-1, s.T)) and torch.equal(frames[-1], x)
    x, frames = R.probability_flow_sample(ScoreProbe(), s, (4, 2), steps=3, generator=gen(38), progress=False,
                                          return_intermediates=True)
    assert sorted(frames, reverse=True) == [*R.ddim_timesteps(s.T, 3), -1] and torch.equal(frames[-1], x)
    try:
        R.langevin_sample(GaussianScore(0.0, 1.0), torch.zeros(2, 2), step_size=-1.0, steps=3)
    except ValueError as e:
        assert ">= 0" in str(e)
    else:
        raise AssertionError("no ValueError for a negative step size")
