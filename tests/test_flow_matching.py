"""Lesson 9 checks: ``flow_matching_loss``, ``euler_sample`` and ``heun_sample`` (flow matching, rectified flow).

Conventions (``ddpm_ref.flow``): x_t = (1 − t)·x0 + t·ε with the data at t = 0 and the noise at t = 1; the target
velocity is ε − x0; samplers integrate dx/dt = v(x, t) from t = 1 down to t = 0 on the grid t_i = 1 − i/steps; the
network is called as ``model(x, 1000·t)`` in training and sampling alike.

A probe velocity v(x, τ) = w·x + b + c·τ (τ the network's time input) records every call, so the loss and whole
sampler chains can be computed by hand. Distributions are checked with ``GaussianMixtureVelocity``, the exact
E[ε − x0 | x_t] of Gaussian-mixture data: an ODE sampler driven by it must return the data with no training. For
a single Gaussian the exact velocity is affine in x, so Euler and Heun chains are affine maps of the starting noise
whose coefficients follow from a scalar recursion: few-step discretisation errors are checked exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

import ddpm_ref as R
from ddpm_ref.flow import TIME_SCALE, GaussianMixtureVelocity, flow_times
from tests._asserts import call, expect_close, expect_tensor, fmt
from tests._fixtures import expect_gaussian_samples, gen
from tests.harness import Failure, check

SHAPE = (6, 1, 4, 4)


class Probe(nn.Module):
    """v(x, τ) = w·x + b + c·τ with scalar parameters; records (x, τ) of every call (τ as float64 [B])."""

    def __init__(self, w: float = 0.5, b: float = -0.2, c: float = 3e-4) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))
        self.c = nn.Parameter(torch.tensor(c))
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor, time: Tensor | float) -> Tensor:
        time = torch.as_tensor(time, device=x.device)
        if time.ndim == 0:
            time = time.expand(x.shape[0])
        self.calls.append((x.detach().clone(), time.detach().to(torch.float64).clone()))
        return self.w * x + self.b + self.c * time.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def times(self) -> list[float]:
        """The network time of each call (one value per call: a sampler uses one time for the whole batch)."""
        out = []
        for _, time in self.calls:
            if time.numel() and float(time.max() - time.min()) > 1e-6:
                raise AssertionError(f"one model call mixed times {fmt(time)}: a sampler step uses one t for the batch")
            out.append(float(time[0]) if time.numel() else math.nan)
        return out


def probe_velocity(x: Tensor, time: float, w: float = 0.5, b: float = -0.2, c: float = 3e-4) -> Tensor:
    return w * x + b + c * time


def euler_chain(x: Tensor, steps: int, *, direction: str = "down", sign: float = 1.0, scale: float = TIME_SCALE,
                at: str = "start") -> Tensor:
    """Euler for the probe in float64; the switches build typical mistakes."""
    ts = flow_times(steps) if direction == "down" else flow_times(steps)[::-1]
    x = x.double()
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        v = probe_velocity(x, scale * (t if at == "start" else t_next))
        x = x + sign * (t_next - t) * v
    return x


def heun_chain(x: Tensor, steps: int, *, corrector: str = "new", at: str = "next", sign: float = 1.0) -> Tensor:
    """Heun for the probe in float64; ``corrector``: "new" (correct), "old" (old velocity twice), "only_new"."""
    ts = flow_times(steps)
    x = x.double()
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        h = sign * (t_next - t)
        v = probe_velocity(x, TIME_SCALE * t)
        x_pred = x + h * v
        v2 = probe_velocity(x_pred, TIME_SCALE * (t_next if at == "next" else t))
        if corrector == "new":
            x = x + h * 0.5 * (v + v2)
        elif corrector == "old":
            x = x + h * v
        else:
            x = x + h * v2
    return x


def gaussian_affine_chain(mu: float, s: float, steps: int, method: str) -> tuple[float, float]:
    """(A, B) with output = A·x1 + B for Euler or Heun driven by the exact velocity of N(mu, s²) data.

    For one Gaussian, v*(x, t) = a(t)·x + b(t) with a = (t − (1 − t)s²)/((1 − t)²s² + t²) and b = −(1 − t)·mu·a − mu.
    """
    def ab(t: float) -> tuple[float, float]:
        a = (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2)
        return a, -(1 - t) * mu * a - mu

    big_a, big_b = 1.0, 0.0
    ts = flow_times(steps)
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        h = t_next - t
        a0, b0 = ab(t)
        if method == "euler":
            ka, kb = 1 + h * a0, h * b0
        else:
            a1, b1 = ab(t_next)
            # x̃ = (1 + h·a0)x + h·b0;  x' = x + h/2·(a0·x + b0 + a1·x̃ + b1)
            ka = 1 + h / 2 * (a0 + a1 * (1 + h * a0))
            kb = h / 2 * (b0 + a1 * h * b0 + b1)
        big_a, big_b = ka * big_a, ka * big_b + kb
    return big_a, big_b


def two_point_mixture() -> GaussianMixtureVelocity:
    """Images of constant −0.5 (weight 0.3) or +0.5 (weight 0.7), with a little spread (std 0.05)."""
    return GaussianMixtureVelocity([-0.5, 0.5], [0.05, 0.05], [0.3, 0.7])


def _expect_two_point_mixture(x: Tensor) -> None:
    """Samples x [N, ...] of :func:`two_point_mixture`: 0.7 ± 0.045 of the images have a mean > 0, and every
    image's mean is within 0.1 of −0.5 or +0.5."""
    m = x.flatten(1).mean(1)
    frac, worst = float((m > 0).double().mean()), float(torch.minimum((m + 0.5).abs(), (m - 0.5).abs()).max())
    if abs(frac - 0.7) > 0.045 or worst > 0.1:
        raise AssertionError(f"samples should be images near −0.5 or +0.5 with weights 0.3 / 0.7; the fraction near "
                             f"+0.5 is {frac:.3f} and the worst image mean is {worst:.3g} away from either")


# ---------------------------------------------------------------------------------------- flow_matching_loss


def _inputs(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = gen(seed)
    x0 = torch.rand(SHAPE, generator=g) * 2 - 1
    noise = torch.randn(SHAPE, generator=g)
    t = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.93, 1.0])
    return x0, noise, t


def loss_closed_form(x0: Tensor, noise: Tensor, t: Tensor, *, target_sign: float = 1.0, swap: bool = False,
                     scale: float = TIME_SCALE, reduce: str = "mean") -> float:
    tt = t.double().reshape(-1, 1, 1, 1)
    a, e = x0.double(), noise.double()
    x_t = tt * a + (1 - tt) * e if swap else (1 - tt) * a + tt * e
    r = probe_velocity(x_t, scale * tt) - target_sign * (e - a)
    return float((r**2).mean() if reduce == "mean" else (r**2).sum())


def _loss(impl, model, x0, **kwargs) -> Tensor:
    out = impl.flow_matching_loss(model, x0, **kwargs)
    out = expect_tensor(out, "flow_matching_loss(model, x0, ...)", shape=(), hint="return the mean squared error "
                        "as a 0-d tensor (F.mse_loss(...)), not .item() or a per-pixel tensor")
    return out


@check("flow_matching_loss")
def test_flow_matching_loss_value(impl) -> None:
    """Given t and ε: mean((v_θ((1 − t)·x0 + t·ε, 1000·t) − (ε − x0))²), a 0-d tensor the gradient flows through."""
    x0, noise, t = _inputs(0)
    model = Probe()
    out = _loss(impl, model, x0, t=t, noise=noise)
    if not out.requires_grad:
        raise Failure("the loss does not depend on the model's parameters (requires_grad is False).",
                      "do not compute it under torch.no_grad() or detach it")
    expect_close(out, loss_closed_form(x0, noise, t), f"flow_matching_loss with t = {fmt(t)}", atol=1e-5,
                 rtol=1e-4, diagnoses=[
                     (lambda: loss_closed_form(x0, noise, t, target_sign=-1.0),
                      "the target has the wrong sign: the velocity along x_t = (1 − t)·x0 + t·ε is "
                      "d x_t/dt = ε − x0 (from the data towards the noise), not x0 − ε"),
                     (lambda: loss_closed_form(x0, noise, t, swap=True),
                      "the path endpoints are swapped: x_t = (1 − t)·x0 + t·ε puts the data at t = 0 and the noise "
                      "at t = 1"),
                     (lambda: loss_closed_form(x0, noise, t, scale=1.0),
                      "the network's time input must be TIME_SCALE·t = 1000·t (as in the samplers), not t itself"),
                     (lambda: loss_closed_form(x0, noise, t, reduce="sum"),
                      "take the mean over batch and pixels (F.mse_loss), not the sum"),
                 ], hint="x_t = (1 − t)·x0 + t·ε; loss = F.mse_loss(model(x_t, TIME_SCALE * t), ε − x0)")


@check("flow_matching_loss")
def test_flow_matching_loss_calls_the_model_on_the_path(impl) -> None:
    """One call, with x_t = (1 − t)·x0 + t·ε (data at t = 0) and the time input 1000·t."""
    x0, noise, t = _inputs(1)
    model = Probe()
    _loss(impl, model, x0, t=t, noise=noise)
    if len(model.calls) != 1:
        raise AssertionError(f"the loss should call the model once, on the whole batch; it called it "
                             f"{len(model.calls)} times")
    x_in, time_in = model.calls[0]
    tt = t.double().reshape(-1, 1, 1, 1)
    expect_close(x_in, (1 - tt) * x0.double() + tt * noise.double(), "the model's input x_t", atol=1e-5, rtol=1e-5,
                 diagnoses=[(tt * x0.double() + (1 - tt) * noise.double(),
                             "the path endpoints are swapped: x_t = (1 − t)·x0 + t·ε puts the data at t = 0 and the "
                             "noise at t = 1")],
                 hint="x_t = (1 − t)·x0 + t·ε with t reshaped to [B, 1, 1, 1]")
    expect_close(time_in.reshape(-1), TIME_SCALE * t.double(), "the model's time input", atol=1e-3, rtol=1e-6,
                 diagnoses=[(t.double(), "the network's time input must be TIME_SCALE·t = 1000·t (as in the "
                                         "samplers), not t itself")],
                 hint="call model(x_t, TIME_SCALE * t) with a float tensor [B]")


@check("flow_matching_loss")
def test_flow_matching_loss_draws_t_and_noise(impl) -> None:
    """Without t and ε: t ~ U[0, 1] per image and ε ~ N(0, I), both from ``generator`` (same seed, same loss)."""
    x0 = torch.zeros(4000, 1, 2, 2)
    losses = []
    for seed in (0, 0, 1):
        model = Probe()
        losses.append(float(_loss(impl, model, x0, generator=gen(seed)).detach()))
    if losses[0] != losses[1] or losses[0] == losses[2]:
        raise Failure(f"with the same generator seed the loss should repeat and with another seed change; got "
                      f"{losses}.", "draw t and ε from `generator`")
    time_in = model.calls[0][1].reshape(-1)
    t = time_in / TIME_SCALE
    lo, hi, mean, frac_int = float(t.min()), float(t.max()), float(t.mean()), float((time_in % 1 == 0).double().mean())
    if lo < 0 or hi > 1 or abs(mean - 0.5) > 0.02 or hi - lo < 0.99 or frac_int > 0.5:
        if float(time_in.max()) <= 1.0:
            hint = "the network's time input must be TIME_SCALE·t = 1000·t (as in the samplers), not t itself"
        else:
            hint = "t = torch.rand(B, generator=generator): continuous and uniform on [0, 1], one per image"
        raise Failure(
            f"t should be uniform on [0, 1] and the network should see 1000·t; the 4000 network times / 1000 range "
            f"over [{lo:.4f}, {hi:.4f}] with mean {mean:.4f}"
            + (", and they are whole numbers (integer timesteps)" if frac_int > 0.5 else "") + ".", hint)
    # with x0 = 0 and a zero velocity the loss is mean(ε²), whatever the path and the time input
    value = float(_loss(impl, Probe(0.0, 0.0, 0.0), x0, generator=gen(2)).detach())
    if abs(value - 1) > 0.05:
        raise Failure(f"with x0 = 0 and a model that returns 0 the loss is mean(ε²), ≈ 1 for ε ~ N(0, I); "
                      f"yours is {value:.4f}.", "ε = torch.randn(x0.shape, generator=generator)")


def gaussian_minimum_loss(mu: float, s: float, n: int = 20001) -> float:
    """E_t[Var(ε − x0 | x_t)] per pixel for x0 ~ N(mu, s²): the least value any velocity can reach (trapezoid in t).

    Var(ε − x0) = 1 + s², Cov(ε − x0, x_t) = t − (1 − t)s², Var(x_t) = (1 − t)²s² + t².
    """
    t = np.linspace(0, 1, n)
    var = 1 + s**2 - (t - (1 - t) * s**2) ** 2 / ((1 - t) ** 2 * s**2 + t**2)
    return float(np.trapezoid(var, t))


@check("flow_matching_loss", hidden=True)
def test_flow_matching_loss_minimised_by_the_exact_velocity(impl) -> None:
    """For N(0.3, 0.2²) data the exact velocity v* scores the least possible loss E_t Var(ε − x0 | x_t) ≈ 0.3142.

    20 000 images of 2×2: the Monte-Carlo standard error is ≈ 0.0025; the band is 0.01.
    """
    g = gen(3)
    x0 = 0.3 + 0.2 * torch.randn(20000, 1, 2, 2, generator=g)
    oracle = GaussianMixtureVelocity([0.3], [0.2])
    value = float(_loss(impl, oracle, x0, generator=g).detach())
    best = gaussian_minimum_loss(0.3, 0.2)
    if abs(value - best) > 0.01:
        raise Failure(
            f"with the exact velocity field of N(0.3, 0.2²) data your loss is {value:.4f}; the least any velocity can "
            f"reach is E_t[Var(ε − x0 | x_t)] = {best:.4f}.",
            "check the path (1 − t)·x0 + t·ε, the target ε − x0 and the time input 1000·t")


# ---------------------------------------------------------------------------------------- samplers (shared)


def _sample(impl, name: str, model, shape, **kwargs) -> Tensor:
    out = call(getattr(impl, name), model, shape, device="cpu", progress=False, **kwargs)
    if isinstance(out, tuple):
        raise AssertionError(f"{name}(...) should return the samples tensor (a tuple only with return_intermediates)")
    return expect_tensor(out, f"{name}(model, shape={list(shape)}, ...)", shape=shape, dtype=torch.float32)


def _expect_gaussian_data(impl, name: str, steps: int, seed: int, std_tol: float, hint: str) -> None:
    """Driven by the exact velocity of N(0.3, 0.2²) data, ``steps`` steps return mean 0.3 ± 0.01, std 0.2 ± std_tol."""
    method = "Euler" if name == "euler_sample" else "Heun"
    x = _sample(impl, name, GaussianMixtureVelocity([0.3], [0.2]), (2000, 1, 2, 2), steps=steps, generator=gen(seed))
    expect_gaussian_samples(x, "velocity", f"{steps} {method} steps", std_tol=std_tol, hint=hint)


def _expect_exact_recursion(impl, name: str, steps: int, seed: int, hint: str) -> None:
    """``steps`` steps on N(0.3, 0.2²) data: output = A·x1 + B with the (A, B) of the exact recursion."""
    method = "euler" if name == "euler_sample" else "heun"
    x1 = torch.randn(500, 1, 2, 2, generator=gen(seed))
    out = _sample(impl, name, GaussianMixtureVelocity([0.3], [0.2]), x1.shape, steps=steps, x1=x1.clone())
    a, b = gaussian_affine_chain(0.3, 0.2, steps, method)
    expect_close(out, a * x1.double() + b, f"{steps} {method.title()} steps with the exact velocity of N(0.3, 0.2²)",
                 atol=1e-4, rtol=1e-4, hint=hint)


def _expect_two_point_data(impl, name: str, steps: int, seed: int) -> None:
    """Constant images −0.5 (0.3) / +0.5 (0.7): 0.7 ± 0.045 of 1000 samples are near +0.5."""
    _expect_two_point_mixture(_sample(impl, name, two_point_mixture(), (1000, 1, 4, 4), steps=steps,
                                      generator=gen(seed)))


def _times_hint(ts: list[float], expected: list[float], steps: int) -> str:
    def same(a: list[float], b: list[float]) -> bool:
        return len(a) == len(b) and all(abs(x - y) < 1e-2 for x, y in zip(a, b, strict=True))

    if same(ts, expected[::-1]) or (ts and ts[0] < ts[-1]):
        return "integrate from t = 1 (noise) down to t = 0 (data): the times must decrease"
    if same(ts, [e / TIME_SCALE for e in expected]):
        return "the network's time input is TIME_SCALE·t = 1000·t, as in training, not t itself"
    if all(abs(x - round(x)) < 1e-9 for x in ts) and max(ts, default=0) <= steps:
        return "the network's time input is 1000·t for t on the grid 1, 1 − 1/steps, …, not the step index"
    return f"call the model at 1000·t for t = 1, 1 − 1/{steps}, … (t_i = 1 − i/steps)"


# ---------------------------------------------------------------------------------------- euler_sample


@check("euler_sample")
def test_euler_sample_calls_the_model_on_the_time_grid(impl) -> None:
    """10 steps: one call at each 1000·t for t = 1, 0.9, …, 0.1 (in that order), starting from x_1 ~ N(0, I)."""
    model = Probe(0.0, 0.0, 0.0)
    _sample(impl, "euler_sample", model, (512, 1, 2, 2), steps=10, generator=gen(0))
    ts = model.times()
    expected = [TIME_SCALE * t for t in flow_times(10)[:-1]]
    if len(ts) != len(expected) or any(abs(a - b) > 1e-2 for a, b in zip(ts, expected, strict=True)):
        extra = ""
        if len(ts) == len(expected) + 1:
            extra = " (one call too many: the last step starts at t = 1/steps and lands on t = 0)"
        raise Failure(f"euler_sample(steps=10) should call the model at times "
                      f"{fmt(torch.tensor(expected), 10)}; it called it at {fmt(torch.tensor(ts), 11)}{extra}.",
                      _times_hint(ts, expected, 10))
    x_start = model.calls[0][0]
    m, sd = float(x_start.mean()), float(x_start.std())
    if abs(m) > 0.1 or abs(sd - 1) > 0.08:
        raise Failure(f"sampling should start from pure noise x_1 ~ N(0, I); the first input has mean {m:.3f} "
                      f"and std {sd:.3f}.", "x = torch.randn(shape, generator=generator)")


@check("euler_sample")
def test_euler_sample_steps(impl) -> None:
    """From a given x1, 7 Euler steps x ← x + (t_next − t)·v(x, 1000·t) with t_next − t = −1/7 (a probe velocity)."""
    x1 = torch.randn(SHAPE, generator=gen(1))
    out = _sample(impl, "euler_sample", Probe(), SHAPE, steps=7, x1=x1.clone())
    expect_close(out, euler_chain(x1, 7), "euler_sample(..., steps=7, x1=x1)", atol=1e-4, rtol=1e-4, diagnoses=[
        (lambda: euler_chain(x1, 7, sign=-1.0),
         "wrong sign of the step: going from t = 1 down to 0 the step is dt = t_next − t = −1/steps, so "
         "x ← x − v/steps"),
        (lambda: euler_chain(x1, 7, direction="up"),
         "wrong time direction: integrate from t = 1 (noise) down to t = 0 (data)"),
        (lambda: euler_chain(x1, 7, direction="up", sign=-1.0),
         "wrong time direction: integrate from t = 1 (noise) down to t = 0 (data)"),
        (lambda: euler_chain(x1, 7, scale=1.0),
         "the network's time input is TIME_SCALE·t = 1000·t, as in training, not t itself"),
        (lambda: euler_chain(x1, 7, at="end"),
         "Euler evaluates the velocity at the start of each step (t), not at its end (t_next)"),
    ], hint="for t, t_next in zip(ts[:-1], ts[1:]): x = x + (t_next − t) * model(x, TIME_SCALE * t)")


@check("euler_sample")
def test_euler_sample_returns_the_data(impl) -> None:
    """Driven by the exact velocity of N(0.3, 0.2²) data, 200 Euler steps give mean 0.3 ± 0.01, std 0.2 ± 0.01."""
    _expect_gaussian_data(impl, "euler_sample", 200, 2, 0.01, "start from N(0, I) at t = 1 and step down to t = 0")


@check("euler_sample", hidden=True)
def test_euler_sample_few_steps_match_the_exact_recursion(impl) -> None:
    """5 steps on N(0.3, 0.2²) data: output = A·x1 + B with the (A, B) of the exact Euler recursion (std ≈ 0.11)."""
    _expect_exact_recursion(impl, "euler_sample", 5, 3, "x ← x + (t_next − t)·v(x, 1000·t) on t_i = 1 − i/steps")


@check("euler_sample", hidden=True)
def test_euler_sample_two_point_mixture(impl) -> None:
    """Constant images −0.5 (0.3) / +0.5 (0.7), 50 steps: 0.7 ± 0.045 of 1000 samples are near +0.5."""
    _expect_two_point_data(impl, "euler_sample", 50, 4)


# ---------------------------------------------------------------------------------------- heun_sample


@check("heun_sample")
def test_heun_sample_calls_the_model(impl) -> None:
    """5 steps, 10 calls: at 1000·t_i on x, then at 1000·t_{i+1} on the Euler prediction x̃ = x + (t_{i+1} − t_i)·v."""
    x1 = torch.randn(SHAPE, generator=gen(5))
    model = Probe()
    _sample(impl, "heun_sample", model, SHAPE, steps=5, x1=x1.clone())
    ts = model.times()
    grid = flow_times(5)
    expected = [TIME_SCALE * t for a, b in zip(grid[:-1], grid[1:], strict=True) for t in (a, b)]
    if len(ts) != len(expected) or any(abs(a - b) > 1e-2 for a, b in zip(ts, expected, strict=True)):
        hint = _times_hint(ts, expected, 5)
        if len(ts) == len(expected) and all(abs(a - b) < 1e-2 for a, b in zip(ts[::2], expected[::2], strict=True)):
            hint = "evaluate the corrector's velocity at the end of the step, t_next, not at t"
        elif len(ts) == len(expected) // 2:
            hint = "each Heun step calls the model twice: at (x, t) and at the predicted (x̃, t_next)"
        raise Failure(f"heun_sample(steps=5) should call the model at times {fmt(torch.tensor(expected), 10)}; "
                      f"it called it at {fmt(torch.tensor(ts), 10)}.", hint)
    x, xs = x1.double(), []
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        x_in, _ = model.calls[2 * i]
        pred_in, _ = model.calls[2 * i + 1]
        xs.append(x_in)
        x_pred = x_in.double() + (t_next - t) * probe_velocity(x_in.double(), TIME_SCALE * t)
        expect_close(pred_in, x_pred, f"the input of the corrector's call in step {i + 1}", atol=1e-4, rtol=1e-4,
                     diagnoses=[(x_in, "evaluate the second velocity at the Euler prediction x̃ = x + h·v, not at x")],
                     hint="x̃ = x + (t_next − t)·v(x, 1000·t)")
    expect_close(xs[0], x, "the first model input", atol=1e-6, hint="start from x1 when it is given")


@check("heun_sample")
def test_heun_sample_steps(impl) -> None:
    """From a given x1, 4 Heun steps x ← x + h·(v(x, t) + v(x̃, t_next))/2 with x̃ = x + h·v(x, t), h = −1/4."""
    x1 = torch.randn(SHAPE, generator=gen(6))
    out = _sample(impl, "heun_sample", Probe(), SHAPE, steps=4, x1=x1.clone())
    expect_close(out, heun_chain(x1, 4), "heun_sample(..., steps=4, x1=x1)", atol=1e-4, rtol=1e-4, diagnoses=[
        (lambda: heun_chain(x1, 4, corrector="old"),
         "the corrector used the old velocity twice, which is just an Euler step: average v(x, t) with the new "
         "velocity v(x̃, t_next) at the predicted point"),
        (lambda: heun_chain(x1, 4, corrector="only_new"),
         "the corrector averages both velocities: x + h·(v(x, t) + v(x̃, t_next))/2, not x + h·v(x̃, t_next)"),
        (lambda: heun_chain(x1, 4, at="start"),
         "evaluate the corrector's velocity at the end of the step, t_next, not at t"),
        (lambda: heun_chain(x1, 4, sign=-1.0),
         "wrong sign of the step: going from t = 1 down to 0, h = t_next − t = −1/steps"),
    ], hint="h = t_next − t; v = model(x, 1000·t); x̃ = x + h·v; x = x + h·(v + model(x̃, 1000·t_next))/2")


@check("heun_sample")
def test_heun_sample_returns_the_data(impl) -> None:
    """Driven by the exact velocity of N(0.3, 0.2²) data, 25 Heun steps give mean 0.3 ± 0.01, std 0.2 ± 0.006."""
    _expect_gaussian_data(impl, "heun_sample", 25, 7, 0.006,
                          "predictor x̃ = x + h·v, corrector with the average of v(x, t) and v(x̃, t_next)")


@check("heun_sample", hidden=True)
def test_heun_sample_few_steps_match_the_exact_recursion(impl) -> None:
    """3 steps on N(0.3, 0.2²) data: output = A·x1 + B with the (A, B) of the exact Heun recursion."""
    _expect_exact_recursion(impl, "heun_sample", 3, 8, "predictor x̃ = x + h·v(x, 1000·t); corrector "
                                                          "x + h·(v(x, 1000·t) + v(x̃, 1000·t_next))/2")


@check("heun_sample", hidden=True)
def test_heun_sample_two_point_mixture(impl) -> None:
    """Constant images −0.5 (0.3) / +0.5 (0.7), 25 steps: 0.7 ± 0.045 of 1000 samples are near +0.5."""
    _expect_two_point_data(impl, "heun_sample", 25, 9)


# ---------------------------------------------------------------------------------------- reference facts


def test_velocity_oracle_matches_the_noise_oracle() -> None:
    """v*(x, t) = (E[ε | x_t] − x)/(1 − t), with E[ε | x_t] from GaussianMixtureOracle in DDPM variables.

    x_t = (1 − t)x0 + tε = c·(√ᾱ x0 + √(1 − ᾱ) ε) with c = √((1 − t)² + t²), √ᾱ = (1 − t)/c: an independent formula.
    """
    means, stds, w = [-0.5, 0.6], [0.1, 0.2], [0.3, 0.7]
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    c = ((1 - t) ** 2 + t**2).sqrt()
    ab = ((1 - t) / c) ** 2
    schedule = R.NoiseSchedule(torch.cat([1 - ab[:1], 1 - ab[1:] / ab[:-1]]))
    eps_oracle = R.GaussianMixtureOracle(schedule, means, stds, w)
    x = torch.randn(50, 1, 2, 2, dtype=torch.float64, generator=gen(0))
    eps = eps_oracle(x / c.reshape(-1, 1, 1, 1), torch.arange(50))
    expected = (eps - x) / (1 - t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(GaussianMixtureVelocity(means, stds, w)(x, TIME_SCALE * t), expected, atol=1e-9,
                               rtol=1e-9)


def test_reference_loss_reaches_the_gaussian_minimum() -> None:
    """The exact velocity's loss is E_t Var(ε − x0 | x_t) (Monte Carlo, 50 000 images, standard error ≈ 0.0016); a
    20 % slower field is worse."""
    g = gen(1)
    x0 = 0.3 + 0.2 * torch.randn(50000, 1, 2, 2, generator=g)
    oracle = GaussianMixtureVelocity([0.3], [0.2])
    value = float(R.flow_matching_loss(oracle, x0, generator=gen(2)))
    assert abs(value - gaussian_minimum_loss(0.3, 0.2)) < 0.006
    slower = float(R.flow_matching_loss(lambda x, tau: 0.8 * oracle(x, tau), x0, generator=gen(2)))
    assert slower > value + 0.02


def test_euler_is_first_order_and_heun_second_order() -> None:
    """Exact affine recursions on N(0.3, 0.2²): doubling the steps halves Euler's std error and quarters Heun's."""
    def std_error(steps: int, method: str) -> float:
        a, _ = gaussian_affine_chain(0.3, 0.2, steps, method)
        return abs(abs(a) - 0.2)

    for n in (20, 40, 80):
        assert 1.8 < std_error(n, "euler") / std_error(2 * n, "euler") < 2.2
        assert 3.5 < std_error(n, "heun") / std_error(2 * n, "heun") < 4.5
    # at equal model calls (2n Euler steps = n Heun steps) Heun wins from 20 calls on
    for calls in (20, 40, 100):
        assert std_error(calls // 2, "heun") < std_error(calls, "euler") / 1.5, calls


def test_samplers_match_the_exact_recursions() -> None:
    x1 = torch.randn(64, 1, 2, 2, generator=gen(3))
    oracle = GaussianMixtureVelocity([0.3], [0.2])
    for steps in (1, 3, 10):
        for method, fn in (("euler", R.euler_sample), ("heun", R.heun_sample)):
            a, b = gaussian_affine_chain(0.3, 0.2, steps, method)
            out = fn(oracle, x1.shape, steps=steps, x1=x1, progress=False)
            torch.testing.assert_close(out.double(), a * x1.double() + b, atol=1e-5, rtol=1e-5)


def test_ddim_is_an_euler_step_of_the_probability_flow_ode() -> None:
    """DDIM (η = 0, no clipping): x'/√ᾱ' = x/√ᾱ + (σ' − σ)·ε̂ with σ = √((1 − ᾱ)/ᾱ), Euler in (x/√ᾱ, σ)."""
    s = R.NoiseSchedule.from_name("cosine", 300)
    model = Probe(0.8, 0.05, 1e-4)
    x = torch.randn(SHAPE, generator=gen(4), dtype=torch.float64)
    for t, t_prev in ((299, 250), (120, 60), (10, 0)):
        ab, ab_prev = float(s.alpha_bars[t]), float(s.alpha_bars[t_prev])
        out = R.ddim_step(model, x, t, t_prev, s, clip_x0=False)
        eps = model(x, torch.full((x.shape[0],), t))
        sigma, sigma_prev = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev)
        euler = (x / math.sqrt(ab) + (sigma_prev - sigma) * eps) * math.sqrt(ab_prev)
        torch.testing.assert_close(out, euler, atol=1e-10, rtol=1e-10)


def test_bad_inputs_say_what_is_wrong() -> None:
    x0 = torch.zeros(2, 1, 4, 4)
    cases = [(lambda: R.flow_matching_loss(Probe(), x0, t=torch.tensor([0.5, 2.0])), "[0, 1]"),
             (lambda: R.flow_matching_loss(Probe(), x0, noise=torch.zeros(2, 1, 4, 5)), "same shape"),
             (lambda: R.euler_sample(Probe(), x0.shape, steps=0, progress=False), "steps must be >= 1")]
    for fn, phrase in cases:
        try:
            fn()
        except ValueError as e:
            assert phrase in str(e), str(e)
        else:
            raise AssertionError(f"no ValueError mentioning {phrase!r}")


def test_intermediates_cover_the_grid() -> None:
    x, frames = R.heun_sample(Probe(), SHAPE, steps=4, generator=gen(5), progress=False, return_intermediates=True)
    assert sorted(frames, reverse=True) == flow_times(4) and torch.equal(frames[0.0], x)


def test_lfw_flow_trains_and_samples_from_the_command_line(tmp_path, capsys) -> None:
    """``train --preset lfw-flow`` learns with the flow-matching loss, writes Heun previews, and ``sample`` runs
    Euler or Heun on its checkpoint (and refuses the DDPM samplers)."""
    from ddpm_ref.checkpoint import model_from_checkpoint
    from ddpm_ref.cli import main

    out = tmp_path / "run"
    tiny = ["--model-channels", "8,16", "--num-res-blocks", "1", "--batch-size", "30", "--dataset-repeat", "1",
            "--epochs", "1", "--preview-n", "2", "--preview-every", "1", "--warmup-steps", "1", "--no-progress"]
    assert main(["train", "--preset", "lfw-flow", "--out", str(out), *tiny]) == 0
    assert (out / "previews" / "epoch_0001.png").is_file()
    model, _, config = model_from_checkpoint(out)
    assert config.objective == "flow" and config.name == "lfw-flow"
    faces = R.lfw_faces("train")[:8]
    # the trained network is a velocity model: the training loss recomputed with the reference is finite
    assert math.isfinite(float(R.flow_matching_loss(model, faces, generator=gen(0)).detach()))
    for sampler in ("euler", "heun"):
        assert main(["sample", "--ckpt", str(out), "--n", "2", "--sampler", sampler, "--steps", "3", "--strip"]) == 0
    assert (out / "generated" / "grid.png").is_file() and (out / "reverse_process.png").is_file()
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(out), "--sampler", "ddim"]) == 2
    assert "flow-matching model" in capsys.readouterr().err
    assert main(["reconstruct", "--ckpt", str(out)]) == 2
