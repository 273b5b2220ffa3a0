"""Checks of the contract every exercise shares, in every lesson: four classes of mistakes that checks of the
default call let through.

1. **Options honoured and passed on**, falsy-but-valid values included (a label 0, ``eta=0.0``, ``clip_x0=False``,
   t = 0): an exercise called with non-default options must give what the reference gives with them.
2. **Inputs left alone**: every call of an exercise must leave the tensors it was given as they were (the harness
   fails any call that changes a tensor argument, :func:`tests.harness.isolated`; the checks here pass every tensor
   an exercise takes, ``x_T``, ``x1``, ``noise`` and labels included, and modules' inputs are compared by hand).
3. **Randomness from the generator only**: where an exercise takes ``generator``, the same seed gives the same
   output, another seed another output, and torch's global random state is untouched.
4. **Small and edge inputs**: a batch of 1 or 8, t = 0 and t = T − 1, per-channel errors that differ.

Every check is deterministic (fixed seeds) and takes well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import ddpm_ref as R
from tests._asserts import Recorder, call, expect_close, expect_tensor, fmt, load_reference_weights, on_student_side
from tests.harness import Failure, check

# ------------------------------------------------------------------------------------------------ shared helpers


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def short_schedule() -> R.NoiseSchedule:
    """T = 10, linear β from 1e-3 to 0.2: β_1 = 0.0231 is 24× β̃_1, so the two variance choices differ at a glance."""
    return R.NoiseSchedule(R.linear_beta_schedule(10, 1e-3, 0.2))


def half_eps(x: Tensor, t: Any) -> Tensor:
    """A deterministic stand-in for ε_θ: 0.5·x_t (x̂0 ≈ x_t near t = 0, so clipping matters for |x_t| > 1)."""
    return 0.5 * x


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return a == b


def _show(a: Any) -> str:
    return fmt(a) if isinstance(a, Tensor) else f"{float(a):.6g}"


def expect_generator_only(run: Callable[[torch.Generator], Any], what: str, hint: str) -> None:
    """``run(generator)`` draws only from ``generator``: torch's global random state is untouched, the same seed
    gives the same output and another seed another output."""
    state = torch.random.get_rng_state()
    a = run(gen(0))
    if not torch.equal(torch.random.get_rng_state(), state):
        torch.random.set_rng_state(state)
        raise Failure(f"{what} with a generator: expected torch's global random state untouched, got it advanced "
                      "(a draw ignored the generator).",
                      f"draw every random number from the generator and pass generator=generator on to every call "
                      f"that draws ({hint}); torch.randn_like, torch.rand_like and a draw without generator= use the "
                      "global state")
    b, c = run(gen(0)), run(gen(1))
    if not _same(a, b):
        raise Failure(f"{what}: expected the same output for two generators seeded 0, got {_show(a)} and {_show(b)}.",
                      f"draw only from the generator ({hint}), never from a fresh or a global one")
    if _same(a, c):
        raise Failure(f"{what}: expected different outputs for generators seeded 0 and 1, got {_show(a)} for both.",
                      f"draw the random numbers from the generator you are given ({hint})")


def expect_unchanged(before: Tensor, after: Tensor, what: str, hint: str) -> None:
    """``after`` (an input after the call) still equals ``before`` (its clone from before the call)."""
    if after.shape != before.shape or not torch.equal(after, before):
        raise Failure(f"{what}: expected the input unchanged after the call, got it changed in place.", hint)


def expect_last_two_steps(calls: list[tuple[Tensor, Tensor]], out: Tensor, eps: Callable[[Tensor, Any], Tensor],
                          s: R.NoiseSchedule, clip: bool, variance: str, what: str, hint: str) -> None:
    """The last two steps of a chain driven by ``eps`` (recorded model inputs at t = 1 and t = 0): the step 1 → 0 is
    μ̃(x̂0, x_1) + σ_1·z with the given ``clip`` and ``variance`` (z ~ N(0, I): checked over ≥ 1000 values), and the
    output is μ̃(x̂0, x_0) with no noise."""
    (x1, t1), (x0, t0) = calls[-2], calls[-1]
    if int(t1[0]) != 1 or int(t0[0]) != 0:
        raise AssertionError(f"{what}: the last two model calls should be at t = 1 and t = 0, got t = {int(t1[0])} "
                             f"and {int(t0[0])}")
    zeros = torch.zeros_like(x1)
    mean = R.p_sample(eps, x1, 1, s, clip_x0=clip, variance=variance, noise=zeros)
    sigma = float((s.posterior_variance if variance == "posterior" else s.betas)[1].sqrt())
    z = (x0.double() - mean.double()) / sigma
    m, sd = float(z.mean()), float(z.std())
    if abs(m) > 0.15 or abs(sd - 1) > 0.15:
        raise Failure(f"{what} with clip_x0={clip}, variance={variance!r}: expected the step from t = 1 to 0 to be "
                      f"μ̃ + σ_1·z with σ_1 = {sigma:.4g} ((x_0 − μ̃)/σ_1 of mean 0, std 1), got mean {m:.3g} and std "
                      f"{sd:.3g}.", hint)
    expect_close(out, R.p_sample(eps, x0, 0, s, clip_x0=clip, variance=variance, noise=zeros),
                 f"{what} with clip_x0={clip}: the last step (t = 0)", atol=1e-4, rtol=1e-4, hint=hint)


OPTIONS_HINT = "pass clip_x0=clip_x0 and variance=variance on to every p_sample step"
IN_PLACE_HINT = ("build new tensors (x = x + …, x = step(x)) instead of writing into the caller's tensor "
                 "(x[...] = …, x += …, x.copy_(…)); start from x_T.clone() if you update x in place")


def _kept(x: Tensor) -> Tensor:
    """A contiguous copy of what a probe model saw (an expanded t of a batch of one has stride 0, which the judge's
    wire cannot carry)."""
    return x.detach().clone(memory_format=torch.contiguous_format)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _is_module(obj: Any) -> bool:
    return isinstance(obj, nn.Module)


# ------------------------------------------------------------------------------------------------ lesson 1


@check("cosine_beta_schedule")
def test_cosine_beta_schedule_falsy_arguments(impl) -> None:
    """s = 0.0 is a valid offset (falsy but given): the schedule of f(t) = cos²(t/T·π/2) at T = 20, clipped at 0.999."""
    out = expect_tensor(impl.cosine_beta_schedule(20, 0.0), "cosine_beta_schedule(20, 0.0)", shape=[20],
                        dtype=torch.float64)
    expect_close(out, R.cosine_beta_schedule(20, 0.0), "cosine_beta_schedule(20, s=0.0)", atol=1e-9, rtol=1e-7,
                 diagnoses=[(lambda: R.cosine_beta_schedule(20), "s = 0.0 was replaced by the default 0.008: test "
                             "`is None`, never the value's truth")],
                 hint="use s and max_beta exactly as given")


@check("NoiseSchedule", hidden=True)
def test_NoiseSchedule_small_inputs(impl) -> None:
    """A float64 β of T = 3 stays as it was; the tables match eq. 4 and 7; gather at the int t = 0 and t = T − 1 of
    one image gives [1, 1, 1, 1]."""
    betas = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    before = betas.clone()
    s = impl.NoiseSchedule(betas)
    expect_unchanged(before, betas, "NoiseSchedule(betas)", "compute α = 1 − β as a new tensor (1.0 - betas); "
                     "never betas.mul_(…), betas -= … or betas[...] = … on the β you were given")
    ref = R.NoiseSchedule(before)
    for name in ("alphas", "alpha_bars", "alpha_bars_prev", "posterior_variance"):
        expect_close(getattr(s, name), getattr(ref, name), f"NoiseSchedule(β = [0.1, 0.2, 0.3]).{name}", atol=1e-9,
                     rtol=1e-9, hint="each table from β as given")
    x = torch.zeros(1, 3, 2, 2)
    for t in (0, 2):
        out = expect_tensor(s.gather(ref.alpha_bars, t, x), f"gather(alpha_bars, {t}, x [1, 3, 2, 2])",
                            shape=[1, 1, 1, 1], dtype=torch.float32)
        expect_close(out.reshape(()), ref.alpha_bars[t], f"gather(alpha_bars, {t}, x [1, 3, 2, 2])", atol=1e-7,
                     rtol=1e-6, hint="an int t is one timestep for the whole batch, t = 0 included")


# ------------------------------------------------------------------------------------------------ lesson 2


def _one_image(seed: int) -> tuple[Tensor, Tensor]:
    g = gen(seed)
    return torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 4, 4, generator=g)


INT_T_HINT = ("the same formula as for a batch with one t per image: an int t is one timestep for the whole batch, "
              "t = 0 included (schedule.gather(values, t, x) takes both)")


@check("q_sample", hidden=True)
def test_q_sample_edge_timesteps(impl) -> None:
    """One image, at the int t = 0 and t = T − 1 and at t = tensor([0]): x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε."""
    s = R.NoiseSchedule(R.linear_beta_schedule(400))
    x0, noise = _one_image(1)
    for t in (0, 399, torch.tensor([0])):
        out = expect_tensor(impl.q_sample(x0, t, noise, s), f"q_sample(x0 [1, 1, 4, 4], t = {t!r}, ...)",
                            shape=x0.shape, dtype=torch.float32)
        expect_close(out, R.q_sample(x0, t, noise, s), f"q_sample of one image at t = {t!r}", atol=1e-5, rtol=1e-5,
                     hint=INT_T_HINT)


@check("predict_x0")
def test_predict_x0_int_t_and_one_image(impl) -> None:
    """One image, at the int t = 0 and t = T − 1: x̂0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t; the inputs stay as they were."""
    s = R.NoiseSchedule(R.linear_beta_schedule(400))
    x_t, eps = _one_image(2)
    for t in (0, 399):
        out = expect_tensor(impl.predict_x0(x_t, t, eps, s), f"predict_x0(x_t [1, 1, 4, 4], t = {t}, ...)",
                            shape=x_t.shape, dtype=torch.float32)
        expect_close(out, R.predict_x0(x_t, t, eps, s), f"predict_x0 of one image at t = {t}", atol=1e-4, rtol=1e-5,
                     hint=INT_T_HINT)


@check("q_posterior", hidden=True)
def test_q_posterior_int_t_and_one_image(impl) -> None:
    """One image at the int t = 0 (mean x0, variance 0) and t = T − 1: eq. 7, variance broadcastable to x."""
    s = R.NoiseSchedule(R.linear_beta_schedule(400))
    x0, x_t = _one_image(3)
    for t in (0, 399):
        out = impl.q_posterior(x0, x_t, t, s)
        if not isinstance(out, tuple) or len(out) != 2:
            raise AssertionError(f"q_posterior(..., t = {t}) should return (mean, variance), got {type(out).__name__}")
        mean, var = R.q_posterior(x0, x_t, t, s)
        expect_close(out[0], mean, f"q_posterior mean of one image at t = {t}", atol=1e-3, rtol=1e-3, hint=INT_T_HINT)
        expect_close(torch.as_tensor(out[1]).expand_as(x0), var.expand_as(x0),
                     f"q_posterior variance of one image at t = {t}", atol=1e-7, rtol=1e-4, hint=INT_T_HINT)


# ------------------------------------------------------------------------------------------------ lesson 3


def _module(impl, name: str, *args: Any, **kwargs: Any) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = getattr(impl, name)(*args, **kwargs)
    if not on_student_side(_is_module, module):
        raise AssertionError(f"{name}(...) should be an nn.Module")
    return module


def _forward_keeps(module: nn.Module, inputs: tuple[Tensor, ...], what: str, hint: str) -> Tensor:
    """module(*inputs) in eval mode, every input compared with its clone afterwards."""
    before = [x.clone() for x in inputs]
    module.eval()
    with torch.no_grad():
        out = module(*inputs)
    for name, b, x in zip(("first", "second"), before, inputs, strict=False):
        expect_unchanged(b, x, f"{what} ({name} input)", hint)
    return out


@check("SinusoidalTimeEmbedding")
def test_SinusoidalTimeEmbedding_options_and_edges(impl) -> None:
    """max_period = 100 is used; one timestep t = 0 gives [0 … 0, 1 … 1] of shape [1, dim]; t stays as it was."""
    module = _module(impl, "SinusoidalTimeEmbedding", 8, max_period=100.0)
    t = torch.tensor([0, 1, 7, 399])
    out = expect_tensor(_forward_keeps(module, (t,), "SinusoidalTimeEmbedding(8, max_period=100)(t)",
                                       "compute t.float() as a new tensor"), "SinusoidalTimeEmbedding(8, 100.0)(t [4])",
                        shape=[4, 8], dtype=torch.float32)
    expect_close(out, R.SinusoidalTimeEmbedding(8, max_period=100.0)(t), "SinusoidalTimeEmbedding(8, max_period=100)",
                 atol=1e-5, rtol=1e-5, diagnoses=[
                     (lambda: R.SinusoidalTimeEmbedding(8)(t),
                      "max_period was ignored: f_i = max_period^(−i/h), not 10000^(−i/h)")],
                 hint="f_i = max_period^(−i/h), h = dim/2")
    one = expect_tensor(_module(impl, "SinusoidalTimeEmbedding", 6)(torch.tensor([0])),
                        "SinusoidalTimeEmbedding(6)(t = tensor([0]))", shape=[1, 6], dtype=torch.float32,
                        hint="keep the batch dimension for a batch of one: no .squeeze()")
    expect_close(one, torch.tensor([[0.0, 0, 0, 1, 1, 1]]), "SinusoidalTimeEmbedding(6)(t = [0])", atol=1e-6,
                 rtol=0, hint="sin(0) = 0, cos(0) = 1")


RESIDUAL_HINT = ("add the residual into a new tensor (out = x + h, or h = h + skip(x)); x += …, or h += x where h is "
                 "x itself (an identity skip), writes into the caller's input")


@check("ResBlock")
def test_ResBlock_one_image_leaves_its_inputs_alone(impl) -> None:
    """One image through ResBlock(8, 8, 16) (identity skip) and ResBlock(8, 16, 16): [1, C_out, 5, 3], with x and emb
    unchanged."""
    for cin, cout in ((8, 8), (8, 16)):
        block = _module(impl, "ResBlock", cin, cout, 16, groups=4)
        g = gen(cin + cout)
        x, emb = torch.randn(1, cin, 5, 3, generator=g), torch.randn(1, 16, generator=g)
        out = _forward_keeps(block, (x, emb), f"ResBlock({cin}, {cout}, 16)(x, emb)", RESIDUAL_HINT)
        expect_tensor(out, f"ResBlock({cin}, {cout}, 16)(x [1, {cin}, 5, 3], emb [1, 16])", shape=[1, cout, 5, 3],
                      dtype=torch.float32, hint="keep the batch dimension for a batch of one: no .squeeze()")


@check("ResBlock", hidden=True)
def test_ResBlock_honours_groups_and_dropout(impl) -> None:
    """dropout = 0.5 drops in train mode (two calls differ) and not in eval mode; dropout = 0.0 never; groups = 4
    with the reference's weights gives the reference's output (that part skipped if parameter names differ)."""
    g = gen(5)
    x, emb = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 16, generator=g)
    for p in (0.5, 0.0):
        block = _module(impl, "ResBlock", 8, 8, 16, groups=4, dropout=p)
        on_student_side(_nudge, block)
        block.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            a, b = block(x, emb), block(x, emb)
        if (p > 0) == torch.equal(a, b):
            raise Failure(f"ResBlock(8, 8, 16, dropout={p}) in train mode: expected two calls to "
                          f"{'differ (dropout)' if p else 'agree (no dropout)'}, got them "
                          f"{'equal' if p else 'different'}.",
                          "nn.Dropout(dropout) between the second SiLU and conv2, with the dropout you are given")
    block, ref = _module(impl, "ResBlock", 8, 16, 16, groups=4), _module(R, "ResBlock", 8, 16, 16, groups=4)
    on_student_side(_nudge, ref)
    load_reference_weights(block, ref, "ResBlock")
    block.eval(), ref.eval()
    with torch.no_grad():
        expect_close(block(x, emb), ref(x, emb), "ResBlock(8, 16, 16, groups=4) with the reference's weights",
                     atol=1e-4, rtol=1e-4, diagnoses=[(lambda: _reference_groups_ignored(ref, x, emb),
                                                       "groups was ignored: nn.GroupNorm(math.gcd(groups, channels), "
                                                       "channels) with the groups you are given")],
                     hint="the same block as for the default groups, with the groups you are given")


def _reference_groups_ignored(ref: nn.Module, x: Tensor, emb: Tensor) -> Tensor:
    """What the reference block computes with its weights but GroupNorms of the default 32 groups."""
    other = R.ResBlock(8, 16, 16)
    other.load_state_dict(ref.state_dict())
    with torch.no_grad():
        return other.eval()(x, emb)


def _nudge(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@check("SelfAttention")
def test_SelfAttention_one_image_leaves_its_input_alone(impl) -> None:
    """One image [1, 8, 3, 5] through SelfAttention(8, 2, groups=4): the shape kept and x unchanged."""
    attn = _module(impl, "SelfAttention", 8, 2, groups=4)
    on_student_side(_nudge, attn)
    x = torch.randn(1, 8, 3, 5, generator=gen(6))
    out = _forward_keeps(attn, (x,), "SelfAttention(8, 2)(x)", RESIDUAL_HINT)
    expect_tensor(out, "SelfAttention(8, 2)(x [1, 8, 3, 5])", shape=[1, 8, 3, 5], dtype=torch.float32,
                  hint="keep the batch dimension for a batch of one: no .squeeze()")


@check("UNet")
def test_UNet_honours_its_options(impl) -> None:
    """out_channels, attention=False, num_res_blocks and time_emb_dim change the model as the reference's do; dropout
    = 0.5 drops in train mode; one image and t = 0 keep the shape, and x and t stay as they were."""
    base = {"in_channels": 1, "channels": (8, 16), "groups": 4}
    variants = [{}, {"attention": False}, {"num_res_blocks": 1}, {"time_emb_dim": 24}, {"out_channels": 2}]
    ref_counts = [_param_count(R.UNet(**base, **v)) for v in variants]
    counts = [on_student_side(_param_count, _module(impl, "UNet", **base, **v)) for v in variants]
    for v, n, r in zip(variants[1:], counts[1:], ref_counts[1:], strict=True):
        if (n == counts[0]) != (r == ref_counts[0]):
            (name, value), = v.items()
            raise Failure(f"UNet(in_channels=1, channels=(8, 16), {name}={value}): expected a model other than the "
                          f"default's ({r} parameters against {ref_counts[0]} in the reference), got the same "
                          f"{n} parameters.", f"use the argument {name} where you build the model")
    model = _module(impl, "UNet", **base, out_channels=2)
    x, t = torch.randn(1, 1, 8, 8, generator=gen(7)), torch.tensor([0])
    out = _forward_keeps(model, (x, t), "UNet(...)(x, t)", "never write into x or t (x += …, t.mul_(…))")
    expect_tensor(out, "UNet(in_channels=1, out_channels=2, ...)(x [1, 1, 8, 8], t = [0])", shape=[1, 2, 8, 8],
                  dtype=torch.float32, hint="the last conv maps to out_channels (in_channels when None)")
    model = _module(impl, "UNet", **base, dropout=0.5)
    on_student_side(_nudge, model)
    model.train()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        a, b = model(x, t), model(x, t)
    if torch.equal(a, b):
        raise Failure("UNet(..., dropout=0.5) in train mode: expected two calls to differ (dropout), got them equal.",
                      "pass dropout=dropout on to every ResBlock")


# ------------------------------------------------------------------------------------------------ lesson 4


class TinyEps(nn.Module):
    """ε_θ(x_t, t) = w·x_t + b·t/T (T = 10) with scalar parameters; records the t of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.b = nn.Parameter(torch.tensor(0.3))
        self.ts: list[Tensor] = []

    def forward(self, x: Tensor, t: Any) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.reshape(1).repeat(x.shape[0]) if t.ndim == 0 else t
        self.ts.append(_kept(t.long()))
        return self.w * x + self.b * (t.to(x.dtype) / 10).reshape(-1, *([1] * (x.ndim - 1)))


def _images(b: int, seed: int, c: int = 1) -> Tensor:
    return torch.rand(b, c, 4, 4, generator=gen(seed)) * 2 - 1


@check("ddpm_loss")
def test_ddpm_loss_int_t_and_given_noise(impl) -> None:
    """An int t (0 and T − 1) and the given noise are used as given, for a batch of one image and one of 16.

    A loss that redraws an int t at random lands on it by chance (1 in T per image); the batch of 16 makes that
    mistake show every time."""
    s = short_schedule()
    for x0 in (_images(1, 1), _images(16, 4)):
        noise, b = torch.randn(x0.shape, generator=gen(2)), x0.shape[0]
        for t in (0, 9):
            out = impl.ddpm_loss(TinyEps(), x0, s, t=t, noise=noise)
            expect_tensor(out, f"ddpm_loss(model, x0 [{b}, 1, 4, 4], schedule, t={t}, noise=…)", shape=[])
            expected = R.ddpm_loss(TinyEps(), x0, s, t=torch.full((b,), t), noise=noise)
            expect_close(out.detach(), expected.detach(),
                         f"ddpm_loss of {b} image(s) with t={t} (an int) and the given noise", atol=1e-6, rtol=1e-5,
                         hint="the same loss as for a tensor t: an int t is one timestep for the batch (t = 0 "
                         "included: draw t only when it is None), and the noise given is the ε of x_t")


@check("ddpm_loss")
def test_ddpm_loss_reaches_both_ends(impl) -> None:
    """64 batches of 8 with T = 10: every t in {0, …, 9} is drawn, t = 0 and t = 9 included (a uniform draw misses
    one of them with probability 2·0.9⁵¹²)."""
    s = short_schedule()
    model, g = TinyEps(), gen(3)
    x0 = _images(8, 4)
    for _ in range(64):
        impl.ddpm_loss(model, x0, s, generator=g)
    seen = sorted({int(v) for t in model.ts for v in t.reshape(-1).tolist()})
    if seen != list(range(10)):
        raise Failure(f"ddpm_loss over 64 batches of 8 with T = 10: expected t to take every value 0 … 9, got "
                      f"{seen}.", "torch.randint(0, schedule.T, (B,), generator=generator): 0-based, both ends "
                      "included (randint's high end is excluded)")


@check("ddpm_loss")
def test_ddpm_loss_uses_only_its_generator(impl) -> None:
    """Without t and noise, ddpm_loss draws only from ``generator`` (8 images)."""
    s, x0 = short_schedule(), _images(8, 5)
    expect_generator_only(lambda g: float(impl.ddpm_loss(TinyEps(), x0, s, generator=g).detach()),
                          "ddpm_loss(model, x0 [8], schedule, generator=g)",
                          "torch.randint(..., generator=generator), torch.randn(x0.shape, generator=generator)")


@check("train_step")
def test_train_step_uses_only_its_generator(impl) -> None:
    """One step on a fresh model and SGD optimizer draws only from ``generator``: the same seed gives the same loss
    and parameters, another seed another loss; x0 stays as it was."""
    s, x0 = short_schedule(), _images(8, 6)

    def run(g: torch.Generator) -> Tensor:
        model = TinyEps()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = impl.train_step(model, opt, x0, s, generator=g)
        return torch.tensor([float(loss), float(model.w.detach()), float(model.b.detach())], dtype=torch.float64)

    expect_generator_only(run, "train_step(model, optimizer, x0 [8], schedule, generator=g)",
                          "ddpm_loss(model, x0, schedule, generator=generator)")


# ------------------------------------------------------------------------------------------------ lesson 5


@check("p_sample")
def test_p_sample_int_t_and_one_image(impl) -> None:
    """One image at the int t = 0 (the mean, no noise) and t = 5 with the given noise, both variance choices."""
    s = short_schedule()
    x_t, z = (2 * v for v in _one_image(8))
    for t in (0, 5):
        for variance in ("posterior", "beta"):
            out = impl.p_sample(Recorder(half_eps), x_t, t, s, noise=z, variance=variance, clip_x0=False)
            expect_tensor(out, f"p_sample(model, x_t [1, 1, 4, 4], t={t}, ...)", shape=x_t.shape, dtype=torch.float32)
            expect_close(out, R.p_sample(half_eps, x_t, t, s, noise=z, variance=variance, clip_x0=False),
                         f"p_sample of one image at t={t} (an int), variance={variance!r}, clip_x0=False", atol=1e-4,
                         rtol=1e-4, hint=INT_T_HINT + "; no noise at t = 0")


@check("p_sample")
def test_p_sample_uses_only_its_generator(impl) -> None:
    """Without ``noise``, one step of 8 images at t = 5 draws only from ``generator``."""
    s, x_t = short_schedule(), torch.randn(8, 1, 4, 4, generator=gen(9))
    expect_generator_only(lambda g: impl.p_sample(Recorder(half_eps), x_t, torch.full((8,), 5), s, generator=g),
                          "p_sample(model, x_t [8], t = 5, schedule, generator=g)",
                          "torch.randn(x_t.shape, generator=generator)")


def _chain_x_T(b: int, seed: int) -> Tensor:
    return 2.5 * torch.randn(b, 1, 2, 2, generator=gen(seed))


@check("sample")
def test_sample_honours_its_options(impl) -> None:
    """T = 10 from a given x_T (500 images): the first model call sees x_T, which stays as it was; clip_x0 and
    variance reach every step (both settings of each)."""
    s = short_schedule()
    for clip, variance in ((False, "beta"), (True, "posterior")):
        x_T = _chain_x_T(500, 10)
        model = Recorder(half_eps)
        out = call(impl.sample, model, s, x_T.shape, generator=gen(11), clip_x0=clip, variance=variance,
                   x_T=x_T, progress=False)
        out = expect_tensor(out, "sample(..., x_T=x_T)", shape=x_T.shape, dtype=torch.float32)
        if not torch.equal(model.calls[0][0], x_T):
            raise Failure("sample(..., x_T=x_T): expected the first model call to see x_T, got another x "
                          f"({fmt(model.calls[0][0])} against {fmt(x_T)}).",
                          "start the chain from x_T when it is given (draw noise only when x_T is None)")
        expect_last_two_steps(model.calls, out, half_eps, s, clip, variance, "sample", OPTIONS_HINT)


@check("sample")
def test_sample_uses_only_its_generator(impl) -> None:
    """8 images with T = 10 draw only from ``generator`` (the start and every step); one image keeps its shape."""
    s = short_schedule()
    expect_generator_only(lambda g: call(impl.sample, Recorder(half_eps), s, (8, 1, 2, 2), generator=g,
                                         progress=False),
                          "sample(model, schedule, (8, 1, 2, 2), generator=g)",
                          "x = torch.randn(shape, generator=generator), then p_sample(..., generator=generator)")
    out = call(impl.sample, Recorder(half_eps), s, (1, 1, 2, 2), generator=gen(0), progress=False)
    expect_tensor(out, "sample(model, schedule, (1, 1, 2, 2))", shape=[1, 1, 2, 2], dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ lesson 6


@check("reconstruct")
def test_reconstruct_edge_t_start(impl) -> None:
    """t_start = 0 (falsy but valid) noises to t = 0 and takes one step, at t = 0 (no noise); t_start = T − 1 starts
    at T − 1; the noise given is used and x0 and the noise stay as they were."""
    s = short_schedule()
    x0, noise = _images(3, 12), torch.randn(3, 1, 4, 4, generator=gen(13))
    model = Recorder(half_eps)
    out = expect_tensor(impl.reconstruct(model, x0, 0, s, noise=noise, generator=gen(0)),
                        "reconstruct(model, x0, 0, schedule, noise=…)", shape=x0.shape, dtype=torch.float32)
    ts = model.ts()
    if ts != [0]:
        raise Failure(f"reconstruct(..., t_start=0): expected one model call, at t = 0, got calls at t = {ts}.",
                      "t_start = 0 is a valid start (the smallest noise): test `is None`, never the value's truth, "
                      "and loop for t in range(t_start, -1, -1)")
    expect_close(out, R.reconstruct(half_eps, x0, 0, s, noise=noise), "reconstruct(..., t_start=0)", atol=1e-4,
                 rtol=1e-4, hint="x_0 = q_sample(x0, 0, noise), then one step at t = 0 (the mean, no noise)")
    model = Recorder(half_eps)
    impl.reconstruct(model, x0, 9, s, noise=noise, generator=gen(0))
    if model.ts()[:1] != [9]:
        raise Failure(f"reconstruct(..., t_start=9) with T = 10: expected the first call at t = 9, got "
                      f"{model.ts()[:1]}.", "start the reverse steps at t_start itself")


@check("reconstruct")
def test_reconstruct_honours_its_options(impl) -> None:
    """From t_start = 5 (500 images): clip_x0 and variance reach every step (both settings of each)."""
    s = short_schedule()
    x0 = 2.5 * torch.randn(500, 1, 2, 2, generator=gen(14))
    for clip, variance in ((False, "beta"), (True, "posterior")):
        model = Recorder(half_eps)
        out = impl.reconstruct(model, x0, 5, s, generator=gen(15), clip_x0=clip, variance=variance)
        out = expect_tensor(out, "reconstruct(model, x0, 5, schedule, ...)", shape=x0.shape, dtype=torch.float32)
        expect_last_two_steps(model.calls, out, half_eps, s, clip, variance, "reconstruct", OPTIONS_HINT)


@check("reconstruct")
def test_reconstruct_uses_only_its_generator(impl) -> None:
    """Without ``noise``, reconstructing 8 images from t_start = 5 draws only from ``generator``."""
    s, x0 = short_schedule(), _images(8, 16)
    expect_generator_only(lambda g: impl.reconstruct(Recorder(half_eps), x0, 5, s, generator=g),
                          "reconstruct(model, x0 [8], 5, schedule, generator=g)",
                          "noise = torch.randn(x0.shape, generator=generator), then p_sample(..., generator=generator)")


def _channel_errors(b: int) -> tuple[Tensor, Tensor]:
    """y and x = y + a per-channel error (±0.02, ±0.1, ±0.4 on [−1, 1]), clipped to [−1, 1]."""
    g = gen(17 + b)
    y = torch.rand(b, 3, 8, 8, generator=g) * 1.2 - 0.6
    sign = torch.randint(0, 2, (b, 3, 8, 8), generator=g) * 2 - 1
    x = y + sign * torch.tensor([0.02, 0.1, 0.4]).reshape(1, 3, 1, 1)
    return x, y


def _psnr_by_definition(x: Tensor, y: Tensor) -> float:
    mse = (((x.double() + 1) / 2 - (y.double() + 1) / 2) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


def _psnr_channel_mean(x: Tensor, y: Tensor) -> float:
    mse = (((x.double() + 1) / 2 - (y.double() + 1) / 2) ** 2).flatten(2).mean(2)
    return float((10 * torch.log10(1 / mse)).mean())


@check("psnr")
def test_psnr_channels_differ(impl) -> None:
    """Errors that differ by channel, for one image and for two: each image's PSNR comes from its MSE over all
    C·H·W values (not a mean of per-channel PSNRs); the inputs stay as they were."""
    for b in (1, 2):
        x, y = _channel_errors(b)
        out = impl.psnr(x, y)
        if isinstance(out, Tensor):
            out = float(out)
        expect_close(float(out), _psnr_by_definition(x, y), f"psnr of {b} 3-channel image(s) with per-channel errors",
                     atol=1e-3, rtol=1e-4, diagnoses=[
                         (lambda x=x, y=y: _psnr_channel_mean(x, y),
                          "PSNR averaged over channels: an image's PSNR is 10·log10(1/MSE) with the MSE over all "
                          "its values, channels included")],
                     hint="map to [0, 1], MSE per image over C·H·W, 10·log10(1/MSE), then the mean over the batch")


@check("ssim")
def test_ssim_channels_differ(impl) -> None:
    """Errors that differ by channel, for one image: skimage's SSIM with channel_axis=0 on [0, 1]; the inputs stay
    as they were."""
    from skimage.metrics import structural_similarity

    x, y = _channel_errors(1)
    a, b = ((x.double() + 1) / 2).numpy(), ((y.double() + 1) / 2).numpy()
    expected = float(structural_similarity(a[0], b[0], data_range=1.0, channel_axis=0))
    out = impl.ssim(x, y)
    expect_close(float(out), expected, "ssim of one 3-channel image with per-channel errors", atol=1e-4, rtol=1e-4,
                 diagnoses=[(lambda: float(np.mean([structural_similarity(a[0].mean(0), b[0].mean(0),
                                                                          data_range=1.0)])),
                             "SSIM of the channel mean: score the colour image with channel_axis=0")],
                 hint="structural_similarity(a[i], b[i], data_range=1.0, channel_axis=0) on images mapped to [0, 1]")


# ------------------------------------------------------------------------------------------------ lesson 7


@check("ddim_step")
def test_ddim_step_uses_only_its_generator(impl) -> None:
    """η = 1 without ``noise`` draws only from ``generator``; η = 0.0 adds no noise: any seed, one output."""
    s, x_t = short_schedule(), torch.randn(8, 1, 4, 4, generator=gen(18))
    expect_generator_only(lambda g: impl.ddim_step(Recorder(half_eps), x_t, 7, 4, s, eta=1.0, generator=g),
                          "ddim_step(model, x_t [8], 7, 4, schedule, eta=1.0, generator=g)",
                          "torch.randn(x_t.shape, generator=generator)")
    a, b = (impl.ddim_step(Recorder(half_eps), x_t, 7, 4, s, eta=0.0, generator=gen(k)) for k in (0, 1))
    if not torch.equal(a, b):
        raise Failure("ddim_step(..., eta=0.0): expected the same output for any generator (η = 0 adds no noise), "
                      "got different ones.", "σ = η·…: with eta=0.0 (a valid, falsy η) the step is deterministic")


def _point_mass_oracle(s: R.NoiseSchedule, value: float) -> R.GaussianMixtureOracle:
    return R.GaussianMixtureOracle(s, [value], [0.0])


@check("ddim_sample")
def test_ddim_sample_honours_its_options(impl) -> None:
    """From a given x_T (which stays as it was): η = 1 reaches the steps (two seeds, two outputs) and η = 0.0 does
    not; clip_x0 reaches the steps (data = the constant 3: clipped → 1, unclipped → 3); steps = 1 calls the model
    once, at T − 1."""
    s = short_schedule()
    x_T = torch.randn(4, 1, 2, 2, generator=gen(19))
    for eta in (1.0, 0.0):
        a, b = (call(impl.ddim_sample, Recorder(half_eps), s, x_T.shape, steps=5, eta=eta, generator=gen(k),
                     x_T=x_T, progress=False) for k in (0, 1))
        if torch.equal(a, b) == (eta > 0):
            raise Failure(f"ddim_sample(..., eta={eta}) from one x_T: expected generators seeded 0 and 1 to give "
                          f"{'different' if eta else 'the same'} samples, got {'the same' if eta else 'different'}.",
                          "pass eta=eta (and generator=generator) on to every ddim_step")
    for clip, value in ((True, 1.0), (False, 3.0)):
        out = call(impl.ddim_sample, _point_mass_oracle(s, 3.0), s, x_T.shape, steps=5, clip_x0=clip,
                   generator=gen(0), x_T=x_T, progress=False)
        expect_close(out, torch.full_like(x_T, value), f"ddim_sample(..., clip_x0={clip}) of data = the constant 3",
                     atol=1e-3, rtol=0, hint="pass clip_x0=clip_x0 on to every ddim_step")
    model = Recorder(half_eps)
    call(impl.ddim_sample, model, s, x_T.shape, steps=1, generator=gen(0), x_T=x_T, progress=False)
    if model.ts() != [9]:
        raise Failure(f"ddim_sample(..., steps=1) with T = 10: expected one model call at t = 9, got "
                      f"{model.ts()}.", "ddim_timesteps(schedule.T, steps, spacing), then one ddim_step per timestep")


@check("ddim_sample")
def test_ddim_sample_uses_only_its_generator(impl) -> None:
    """η = 1 without x_T (8 images, 5 steps) draws only from ``generator``; one image keeps its shape."""
    s = short_schedule()
    expect_generator_only(lambda g: call(impl.ddim_sample, Recorder(half_eps), s, (8, 1, 2, 2), steps=5, eta=1.0,
                                         generator=g, progress=False),
                          "ddim_sample(model, schedule, (8, 1, 2, 2), steps=5, eta=1.0, generator=g)",
                          "x = torch.randn(shape, generator=generator), ddim_step(..., generator=generator)")
    out = call(impl.ddim_sample, Recorder(half_eps), s, (1, 1, 2, 2), steps=5, generator=gen(0), progress=False)
    expect_tensor(out, "ddim_sample(model, schedule, (1, 1, 2, 2), steps=5)", shape=[1, 1, 2, 2], dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ lesson 8


class CondProbe(nn.Module):
    """A conditional stand-in for ε_θ(x_t, t, c) = 0.5·x + 0.1·(c − 2); records (x, t, labels) of every call;
    ``num_classes`` (5) is its null label."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(self, x: Tensor, t: Any, labels: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.reshape(1).repeat(x.shape[0]) if t.ndim == 0 else t
        self.calls.append((_kept(x), _kept(t.long()), _kept(labels.long())))
        return 0.5 * x + 0.1 * (labels.to(x.dtype) - 2).reshape(-1, *([1] * (x.ndim - 1)))


def _cond_eps(x: Tensor, labels: Tensor) -> Tensor:
    return 0.5 * x + 0.1 * (labels.to(x.dtype) - 2).reshape(-1, *([1] * (x.ndim - 1)))


def _guided_closed_form(x: Tensor, labels: Tensor, w: float, null: int) -> Tensor:
    uncond = _cond_eps(x, torch.full_like(labels, null))
    return uncond + w * (_cond_eps(x, labels) - uncond)


@check("LabelEmbedding")
def test_LabelEmbedding_one_label(impl) -> None:
    """One label, 0, gives [1, dim]: the same vector as label 0 in a batch; the labels stay as they were."""
    module = _module(impl, "LabelEmbedding", 3, 6)
    one, many = torch.tensor([0]), torch.tensor([2, 0, 3])
    out = _forward_keeps(module, (one,), "LabelEmbedding(3, 6)(labels)", "look the labels up; never write into them")
    out = expect_tensor(out, "LabelEmbedding(3, 6)(labels = tensor([0]))", shape=[1, 6], dtype=torch.float32,
                        hint="keep the batch dimension for a batch of one: no .squeeze()")
    with torch.no_grad():
        both = expect_tensor(module(many), "LabelEmbedding(3, 6)(labels [3])", shape=[3, 6], dtype=torch.float32)
    expect_close(out[0], both[1], "the vector of label 0 alone and in a batch", atol=1e-6, rtol=1e-6,
                 hint="one vector per label, whatever the batch")


@check("drop_labels")
def test_drop_labels_small_batches(impl) -> None:
    """400 batches of 8 labels at p_uncond = 0.1, null label 0 (falsy but valid): the number dropped per batch
    follows Binomial(8, 0.1): 43 % of batches drop none (± 8 %), the rate is 0.1 ± 0.02, and a batch can drop 2."""
    labels = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    g = gen(20)
    counts = []
    for _ in range(400):
        out = impl.drop_labels(labels, 0.1, 0, generator=g)
        out = expect_tensor(out, "drop_labels(labels [8], 0.1, 0)", shape=[8], dtype=torch.long)
        kept = out == labels
        if not bool((kept | (out == 0)).all()):
            raise Failure(f"drop_labels(labels [8], 0.1, null_label=0): expected each label kept or 0, got "
                          f"{out.tolist()}.", "the null label is the value you are given, 0 included")
        counts.append(int((~kept).sum()))
    none, rate, most = counts.count(0) / len(counts), sum(counts) / (8 * len(counts)), max(counts)
    if abs(none - 0.9**8) > 0.08 or abs(rate - 0.1) > 0.02 or most < 2:
        raise Failure(f"drop_labels on 400 batches of 8 at p_uncond = 0.1: expected about {0.9**8:.0%} of batches "
                      f"with no drop, a rate of 0.1 and some batches dropping 2 or more, got {none:.0%}, {rate:.3f} "
                      f"and at most {most}.", "drop each label on its own coin, torch.rand(labels.shape, "
                      "generator=generator) < p_uncond, not a fixed number round(p·B) per batch")


@check("drop_labels")
def test_drop_labels_uses_only_its_generator(impl) -> None:
    """Dropping at p_uncond = 0.5 draws only from ``generator`` (64 labels)."""
    labels = torch.arange(64) % 10
    expect_generator_only(lambda g: impl.drop_labels(labels, 0.5, 10, generator=g),
                          "drop_labels(labels [64], 0.5, 10, generator=g)",
                          "torch.rand(labels.shape, generator=generator)")


@check("guided_eps")
def test_guided_eps_null_label_zero(impl) -> None:
    """null_label = 0 (falsy but valid) is the null label, for one image at the int t = 0 and for a batch."""
    for b in (1, 4):
        x = torch.randn(b, 1, 4, 4, generator=gen(21 + b))
        labels = torch.arange(1, b + 1)
        out = impl.guided_eps(CondProbe(), x, 0, labels, 3.0, null_label=0)
        out = expect_tensor(out, f"guided_eps(model, x_t [{b}], 0, labels, 3.0, null_label=0)", shape=x.shape,
                            dtype=torch.float32)
        expect_close(out, _guided_closed_form(x, labels, 3.0, 0), f"guided_eps(..., null_label=0), {b} image(s)",
                     atol=1e-5, rtol=1e-5, diagnoses=[
                         (lambda x=x, labels=labels: _guided_closed_form(x, labels, 3.0, 5),
                          "null_label = 0 was replaced by model.num_classes: test `null_label is None`, never "
                          "`null_label or …` (0 is a valid label)")],
                     hint="ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅)) with ∅ = the null_label given")


@check("cfg_sample")
def test_cfg_sample_honours_its_options(impl) -> None:
    """T = 10 from a given x_T (400 images), null_label = 0, w = 2: the first call sees x_T (which stays as it was),
    the ∅ half of every call is label 0, and clip_x0 and variance reach every step (both settings of each)."""
    s = short_schedule()
    labels = torch.arange(400) % 4 + 1
    for clip, variance in ((False, "beta"), (True, "posterior")):
        x_T = _chain_x_T(400, 22)
        model = CondProbe()
        out = call(impl.cfg_sample, model, s, x_T.shape, labels, 2.0, generator=gen(23), null_label=0,
                   clip_x0=clip, variance=variance, x_T=x_T, progress=False)
        out = expect_tensor(out, "cfg_sample(..., x_T=x_T)", shape=x_T.shape, dtype=torch.float32)
        first = model.calls[0][0][:400]
        if not torch.equal(first, x_T):
            raise Failure("cfg_sample(..., x_T=x_T): expected the first model call to see x_T, got another x.",
                          "start the chain from x_T when it is given (draw noise only when x_T is None)")
        used = {int(v) for _, _, lab in model.calls for v in lab.tolist()}
        if 5 in used or 0 not in used:
            raise Failure(f"cfg_sample(..., null_label=0): expected the model to see ∅ = 0, got the labels "
                          f"{sorted(used)}.", "pass null_label=null_label on to guided_eps (0 is a valid null label)")
        per_t: dict[int, tuple[Tensor, Tensor]] = {}
        for x, t, _ in model.calls:  # one call on the doubled batch or two calls per step: x is the same
            per_t.setdefault(int(t[0]), (x[:400], t[:400]))
        calls = [per_t[1], per_t[0]]

        def eps(x: Tensor, t: Any) -> Tensor:
            return _guided_closed_form(x, labels, 2.0, 0).to(x.dtype)

        expect_last_two_steps(calls, out, eps, s, clip, variance, "cfg_sample",
                              OPTIONS_HINT.replace("p_sample step", "step"))


@check("cfg_sample")
def test_cfg_sample_uses_only_its_generator(impl) -> None:
    """8 images (labels 0 … 3) with T = 10 draw only from ``generator``; one image keeps its shape."""
    s = short_schedule()
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    expect_generator_only(lambda g: call(impl.cfg_sample, CondProbe(), s, (8, 1, 2, 2), labels, 2.0, generator=g,
                                         progress=False),
                          "cfg_sample(model, schedule, (8, 1, 2, 2), labels, 2.0, generator=g)",
                          "x = torch.randn(shape, generator=generator), noise = torch.randn(..., generator=generator)")
    out = call(impl.cfg_sample, CondProbe(), s, (1, 1, 2, 2), torch.tensor([0]), 2.0, generator=gen(0),
               progress=False)
    expect_tensor(out, "cfg_sample(model, schedule, (1, 1, 2, 2), labels = [0], 2.0)", shape=[1, 1, 2, 2],
                  dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ lesson 9


class VelocityProbe(nn.Module):
    """v_θ(x, s) = 0.5·x + 0.001·s (s the network time 1000·t); records (x, s) of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor, s: Any) -> Tensor:
        s = torch.as_tensor(s, device=x.device, dtype=torch.float32)
        s = s.reshape(1).repeat(x.shape[0]) if s.ndim == 0 else s
        self.calls.append((_kept(x), _kept(s)))
        return 0.5 * x + 0.001 * s.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


@check("flow_matching_loss")
def test_flow_matching_loss_t_zero_and_one_image(impl) -> None:
    """t = 0.0 (falsy but valid: the data end) and t = 1.0 are used as given, for one image with the given noise."""
    x0, noise = _images(1, 24), torch.randn(1, 1, 4, 4, generator=gen(25))
    for t in (0.0, 1.0):
        out = impl.flow_matching_loss(VelocityProbe(), x0, t=t, noise=noise)
        out = expect_tensor(out, f"flow_matching_loss(model, x0 [1], t={t}, noise=…)", shape=[])
        expect_close(out.detach(), R.flow_matching_loss(VelocityProbe(), x0, t=t, noise=noise).detach(),
                     f"flow_matching_loss with t={t}", atol=1e-5, rtol=1e-5,
                     hint="mean((v(x_t, 1000·t) − (ε − x0))²), x_t = (1 − t)·x0 + t·ε at the t given (0.0 included: "
                     "draw t only when it is None)")


@check("flow_matching_loss")
def test_flow_matching_loss_uses_only_its_generator(impl) -> None:
    """Without t and noise, the loss of 8 images draws only from ``generator``."""
    x0 = _images(8, 26)
    expect_generator_only(lambda g: float(impl.flow_matching_loss(VelocityProbe(), x0, generator=g).detach()),
                          "flow_matching_loss(model, x0 [8], generator=g)",
                          "torch.rand(B, generator=generator), torch.randn(x0.shape, generator=generator)")


def _ode_contract(impl, name: str) -> None:
    sampler = getattr(impl, name)
    expect_generator_only(lambda g: call(sampler, VelocityProbe(), (8, 1, 2, 2), steps=3, generator=g,
                                         progress=False),
                          f"{name}(model, (8, 1, 2, 2), steps=3, generator=g)",
                          "x = torch.randn(shape, generator=generator)")
    x1 = torch.randn(1, 1, 2, 2, generator=gen(27))
    model = VelocityProbe()
    out = call(sampler, model, x1.shape, steps=1, generator=gen(0), x1=x1, progress=False)
    out = expect_tensor(out, f"{name}(model, (1, 1, 2, 2), steps=1, x1=x1)", shape=[1, 1, 2, 2], dtype=torch.float32)
    if not model.calls or not torch.equal(model.calls[0][0], x1):
        raise Failure(f"{name}(..., x1=x1): expected the first model call to see x1, got another x.",
                      "start from x1 when it is given (draw noise only when x1 is None)")
    ref = getattr(R, name)(VelocityProbe(), x1.shape, steps=1, x1=x1, progress=False)
    expect_close(out, ref, f"{name}(..., steps=1, x1=x1): one step from t = 1 to 0", atol=1e-5, rtol=1e-5,
                 hint="one step of size −1 from t = 1 (network time 1000) to t = 0")


@check("euler_sample")
def test_euler_sample_generator_and_one_step(impl) -> None:
    """8 images draw only from ``generator``; one image from a given x1 (which stays as it was) in one step."""
    _ode_contract(impl, "euler_sample")


@check("heun_sample")
def test_heun_sample_generator_and_one_step(impl) -> None:
    """8 images draw only from ``generator``; one image from a given x1 (which stays as it was) in one step."""
    _ode_contract(impl, "heun_sample")


# ------------------------------------------------------------------------------------------------ lesson 10


def _score_probe_module():
    from tests.test_score import ScoreProbe, short_schedule

    return ScoreProbe, short_schedule


@check("score_from_eps", hidden=True)
def test_score_from_eps_edge_timesteps(impl) -> None:
    """One point at t = 0 (an int, falsy but valid) and at t = T − 1 (a tensor [1]); float32 in, float32 out."""
    s = R.NoiseSchedule(R.linear_beta_schedule(1000))
    eps = torch.randn(1, 2, generator=gen(40))
    for t in (0, torch.tensor([999])):
        out = expect_tensor(impl.score_from_eps(eps, t, s), f"score_from_eps(eps [1, 2], t={fmt(t)}, schedule)",
                            shape=[1, 2], dtype=torch.float32)
        expect_close(out, R.score_from_eps(eps, t, s), f"score_from_eps at t = {fmt(t)}", atol=1e-4, rtol=1e-3,
                     hint="s = −ε/√(1 − ᾱ_t) at the t given (0 included), in the dtype of eps")


@check("dsm_loss")
def test_dsm_loss_int_t_zero_and_one_point(impl) -> None:
    """t = 0 (an int, falsy but valid: the least noise) and t = T − 1, for one point and for 16, with the given noise.

    The model must be asked at that t and no other. A loss that redraws t = 0 at random lands on 0 by chance
    (1 in T per point), so the 16 points make that mistake show every time."""
    ScoreProbe, short = _score_probe_module()
    s = short()
    for x0 in (torch.tensor([[0.4, -0.7]]), torch.randn(16, 2, generator=gen(43))):
        noise, what = torch.randn(x0.shape, generator=gen(41)), f"x0 [{x0.shape[0]}, 2]"
        for t in (0, s.T - 1):
            probe = ScoreProbe()
            out = impl.dsm_loss(probe, x0, s, t=t, noise=noise)
            out = expect_tensor(out, f"dsm_loss(model, {what}, schedule, t={t}, noise=…)", shape=[])
            asked = sorted({int(v) for _, ts in probe.calls for v in ts})
            if asked != [t]:
                raise AssertionError(f"dsm_loss(model, {what}, schedule, t={t}, noise=…) called the model at "
                                     f"t = {asked}, expected t = {t} only: draw t only when it is None (0 included)")
            expect_close(out.detach(), R.dsm_loss(ScoreProbe(), x0, s, t=t, noise=noise).detach(),
                         f"dsm_loss of {what} with t={t}", atol=1e-5, rtol=1e-5,
                         hint="use the t given (0 included: draw t only when it is None), as an int broadcast over "
                         "the batch")


@check("dsm_loss")
def test_dsm_loss_uses_only_its_generator(impl) -> None:
    """Without t and noise, the loss of 8 points draws only from ``generator``."""
    ScoreProbe, short = _score_probe_module()
    x0 = torch.randn(8, 2, generator=gen(42))
    expect_generator_only(lambda g: float(impl.dsm_loss(ScoreProbe(), x0, short(), generator=g).detach()),
                          "dsm_loss(model, x0 [8, 2], schedule, generator=g)",
                          "torch.randint(0, T, (B,), generator=generator), torch.randn(x0.shape, generator=generator)")


class _Pull(nn.Module):
    """The score of N(0, I): −x."""

    def forward(self, x: Tensor) -> Tensor:
        return -x


@check("langevin_sample")
def test_langevin_sample_zero_steps_and_one_point(impl) -> None:
    """steps = 0 and step_size = 0.0 (falsy but valid) leave x where it is; one point [1, 2] keeps its shape."""
    x = torch.tensor([[0.5, -1.5]])
    for kwargs in ({"step_size": 0.1, "steps": 0}, {"step_size": 0.0, "steps": 3}):
        out = expect_tensor(impl.langevin_sample(_Pull(), x, generator=gen(0), **kwargs),
                            f"langevin_sample(score_fn, x [1, 2], {kwargs})", shape=[1, 2])
        expect_close(out, x, f"langevin_sample with {kwargs}", atol=1e-7, rtol=0,
                     hint="use steps and step_size as given (0 included): 0 steps, or steps of size 0, leave x as it "
                     "is")


@check("langevin_sample")
def test_langevin_sample_uses_only_its_generator(impl) -> None:
    """Three steps of 8 points draw only from ``generator``."""
    x = torch.randn(8, 2, generator=gen(43))
    expect_generator_only(lambda g: impl.langevin_sample(_Pull(), x, step_size=0.1, steps=3, generator=g),
                          "langevin_sample(score_fn, x [8, 2], step_size=0.1, steps=3, generator=g)",
                          "z = torch.randn(x.shape, generator=generator) at every step")


def _jump_plan(s: R.NoiseSchedule, steps: int) -> list[tuple[int, float]]:
    ts = R.ddim_timesteps(s.T, steps)
    ab = s.alpha_bars
    return [(t, 1 - float(ab[t]) / (float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0)) for i, t in enumerate(ts)]


def _expect_visits(model, expected: list[int], what: str) -> None:
    ts = model.ts()
    if ts != expected:
        raise Failure(f"{what}: expected model calls at t = {expected}, got t = {ts}.",
                      "with steps given, visit ddim_timesteps(schedule.T, steps) (all T steps when steps is None)")


@check("reverse_sde_sample")
def test_reverse_sde_sample_honours_steps(impl) -> None:
    """steps = 4 of T = 10: calls at ddim_timesteps(10, 4); the last jump, from t = 0, is x + β·(x/2 + s) with
    β = 1 − ᾱ_0 and no noise; one point [1, 2] from a given x_T."""
    ScoreProbe, short = _score_probe_module()
    s = short()
    x_T = 2 + torch.randn(2000, 2, generator=gen(44))
    model = ScoreProbe()
    out = call(impl.reverse_sde_sample, model, s, x_T.shape, steps=4, x_T=x_T, generator=gen(45), progress=False)
    out = expect_tensor(out, "reverse_sde_sample(..., steps=4)", shape=list(x_T.shape), dtype=torch.float32)
    plan = _jump_plan(s, 4)
    _expect_visits(model, [t for t, _ in plan], "reverse_sde_sample(..., steps=4)")
    for i, (t, beta) in enumerate(plan):
        x = model.calls[i][0].double()
        x_next = model.calls[i + 1][0].double() if i + 1 < len(plan) else out.double()
        mean = x + beta * (0.5 * x + model.a.item() * x + model.b.item() + model.c.item() * t)
        if i + 1 == len(plan):
            expect_close(x_next, mean, "reverse_sde_sample(..., steps=4): the last step (t = 0, no noise)", atol=1e-4,
                         rtol=1e-4, hint="the last step adds no noise")
            continue
        z = (x_next - mean) / math.sqrt(beta)
        if abs(float(z.mean())) > 0.08 or abs(float(z.std()) - 1) > 0.08:
            raise Failure(f"reverse_sde_sample(..., steps=4), the jump from t = {t} (β = 1 − ᾱ_t/ᾱ_next = {beta:.4g}): "
                          f"expected (x' − x − β·(x/2 + s))/√β of mean 0 and std 1, got mean {float(z.mean()):.3g} and "
                          f"std {float(z.std()):.3g}.",
                          "a jump over several timesteps uses β = 1 − ᾱ_t/ᾱ_next (ᾱ_next = 1 after t = 0), not β_t")
    one = call(impl.reverse_sde_sample, ScoreProbe(), s, (1, 2), x_T=x_T[:1], generator=gen(0), progress=False)
    expect_tensor(one, "reverse_sde_sample(..., shape=(1, 2), x_T=x_T[:1])", shape=[1, 2], dtype=torch.float32)


@check("reverse_sde_sample")
def test_reverse_sde_sample_uses_only_its_generator(impl) -> None:
    """8 points, T = 10: the starting noise and every step's noise come from ``generator`` only."""
    ScoreProbe, short = _score_probe_module()
    expect_generator_only(lambda g: call(impl.reverse_sde_sample, ScoreProbe(), short(), (8, 2), generator=g,
                                         progress=False),
                          "reverse_sde_sample(model, schedule, (8, 2), generator=g)",
                          "x = torch.randn(shape, generator=generator), z = torch.randn(x.shape, generator=generator)")


@check("probability_flow_sample")
def test_probability_flow_sample_honours_steps(impl) -> None:
    """steps = 4 of T = 10 from a given x_T: calls at ddim_timesteps(10, 4), each jump x + (β/2)·(x + s) with
    β = 1 − ᾱ_t/ᾱ_next (exactly); one point [1, 2] keeps its shape."""
    ScoreProbe, short = _score_probe_module()
    s = short()
    x_T = torch.randn(6, 2, generator=gen(46))
    model = ScoreProbe()
    out = call(impl.probability_flow_sample, model, s, x_T.shape, steps=4, x_T=x_T, progress=False)
    out = expect_tensor(out, "probability_flow_sample(..., steps=4)", shape=[6, 2], dtype=torch.float32)
    plan = _jump_plan(s, 4)
    _expect_visits(model, [t for t, _ in plan], "probability_flow_sample(..., steps=4)")
    x = x_T.double()
    for t, beta in plan:
        x = x + 0.5 * beta * (x + (-0.5 * x + 0.3 + 0.01 * t))
    betas_t = x_T.double()
    for t, _ in plan:
        beta = float(s.betas[t])
        betas_t = betas_t + 0.5 * beta * (betas_t + (-0.5 * betas_t + 0.3 + 0.01 * t))
    expect_close(out, x, "probability_flow_sample(..., steps=4, x_T=x_T)", atol=1e-4, rtol=1e-4,
                 diagnoses=[(betas_t, "a jump over several timesteps uses β = 1 − ᾱ_t/ᾱ_next (ᾱ_next = 1 after t = 0), "
                                      "not β_t")],
                 hint="x ← x + (β/2)·(x + s(x, t)) with β = 1 − ᾱ_t/ᾱ_next")
    one = call(impl.probability_flow_sample, ScoreProbe(), s, (1, 2), x_T=x_T[:1], progress=False)
    expect_tensor(one, "probability_flow_sample(..., shape=(1, 2), x_T=x_T[:1])", shape=[1, 2], dtype=torch.float32)


@check("probability_flow_sample")
def test_probability_flow_sample_uses_only_its_generator(impl) -> None:
    """8 points, T = 10: the starting noise comes from ``generator`` only (and nothing else is random)."""
    ScoreProbe, short = _score_probe_module()
    expect_generator_only(lambda g: call(impl.probability_flow_sample, ScoreProbe(), short(), (8, 2), generator=g,
                                         progress=False),
                          "probability_flow_sample(model, schedule, (8, 2), generator=g)",
                          "x = torch.randn(shape, generator=generator) when x_T is None")


# ------------------------------------------------------------------------------------------------ lesson 11


@check("reparameterize")
def test_reparameterize_uses_only_its_generator(impl) -> None:
    """Latents [8, 4, 2, 2] draw ε only from ``generator`` (the same seed, the same z; the global state untouched)."""
    g = gen(50)
    mean, logvar = torch.randn(8, 4, 2, 2, generator=g), torch.randn(8, 4, 2, 2, generator=g)
    expect_generator_only(lambda gg: impl.reparameterize(mean, logvar, gg),
                          "reparameterize(mean [8, 4, 2, 2], logvar, generator=g)",
                          "eps = torch.randn(mean.shape, generator=generator)")


@check("reparameterize", hidden=True)
def test_reparameterize_one_sample_float64_and_tiny_variance(impl) -> None:
    """One sample [1, 3] in float64 stays float64; logvar = −30 (σ ≈ 3e-7) gives z = μ to within 1e-5."""
    mean = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    z = expect_tensor(impl.reparameterize(mean, torch.full_like(mean, -30.0), gen(51)),
                      "reparameterize(mean [1, 3] float64, logvar = −30, g)", shape=[1, 3], dtype=torch.float64,
                      hint="draw ε in the dtype of mean: torch.randn(mean.shape, generator=generator, "
                           "dtype=mean.dtype)")
    expect_close(z, mean, "reparameterize with logvar = −30", atol=1e-5, rtol=0,
                 hint="z = mean + exp(0.5·logvar)·ε: a tiny variance leaves z at the mean")


@check("kl_divergence")
def test_kl_divergence_flat_and_one_sample(impl) -> None:
    """Latents [2, 4, 3, 3] give the KL of the same latents flattened to [2, 36]; one sample [1, 5] in float64."""
    g = gen(52)
    mean, logvar = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    a = expect_tensor(impl.kl_divergence(mean, logvar), "kl_divergence(mean [2, 4, 3, 3], logvar)", shape=[])
    b = expect_tensor(impl.kl_divergence(mean.flatten(1), logvar.flatten(1)), "kl_divergence(mean [2, 36], logvar)",
                      shape=[])
    expect_close(a, b, "kl_divergence of [2, 4, 3, 3] latents against the same latents as [2, 36]", atol=1e-4,
                 rtol=1e-5, hint="sum over every dimension but the first (flatten(1).sum(1)), whatever the shape")
    m1, l1 = torch.randn(1, 5, generator=g, dtype=torch.float64), torch.randn(1, 5, generator=g, dtype=torch.float64)
    out = expect_tensor(impl.kl_divergence(m1, l1), "kl_divergence(mean [1, 5] float64, logvar)", shape=[])
    expect_close(out, 0.5 * (m1**2 + l1.exp() - 1 - l1).sum(), "kl_divergence of one sample", atol=1e-6, rtol=1e-6,
                 hint="½·Σ(μ² + exp(logvar) − 1 − logvar) over the sample's entries")


@check("latent_scale_factor")
def test_latent_scale_factor_one_sample_and_float64(impl) -> None:
    """One sample's latents [1, 4, 4, 4] (every entry counts) and float64 latents [10, 8]: s = 1/std."""
    for z in (3 * torch.randn(1, 4, 4, 4, generator=gen(53)),
              0.2 * torch.randn(10, 8, generator=gen(54), dtype=torch.float64) - 1):
        out = impl.latent_scale_factor(z)
        try:
            value = float(out.detach().reshape(())) if isinstance(out, Tensor) else float(out)
        except (TypeError, ValueError, RuntimeError):
            raise Failure(f"latent_scale_factor(latents {list(z.shape)}) should return a number, got "
                          f"{type(out).__name__}.", "return 1.0 / float(latents.std())") from None
        want = 1 / float(z.double().std())
        if abs(value - want) > 1e-2 * want:  # either std (1/N or 1/(N − 1)) of 64 entries
            raise Failure(f"latent_scale_factor(latents {list(z.shape)} {str(z.dtype).removeprefix('torch.')}): "
                          f"expected {want:.6g}, got {value:.6g}.",
                          "s = 1 / latents.std() over every entry, the batch of one included")


@check("patchify")
def test_patchify_one_image_float64_and_non_contiguous(impl) -> None:
    """One image [1, 2, 4, 4] in float64 (dtype kept), and a transposed (non-contiguous) input: the same tokens as
    its contiguous copy."""
    x = torch.randn(1, 2, 4, 4, generator=gen(55), dtype=torch.float64)
    out = expect_tensor(impl.patchify(x, 2), "patchify(x [1, 2, 4, 4] float64, 2)", shape=[1, 4, 8],
                        dtype=torch.float64)
    expect_close(out, R.patchify(x, 2), "patchify of one float64 image", atol=0, rtol=0,
                 hint="reshape and permute only: the values and dtype pass through unchanged")
    xt = torch.randn(2, 3, 8, 4, generator=gen(56)).transpose(2, 3)  # [2, 3, 4, 8], not contiguous
    try:
        out = impl.patchify(xt, 2)
    except RuntimeError as e:
        raise Failure(f"patchify(x.transpose(2, 3), 2) raised {type(e).__name__}: {e}",
                      "use .reshape (which copies when it must), not .view, after a permute") from None
    expect_close(expect_tensor(out, "patchify(non-contiguous x [2, 3, 4, 8], 2)", shape=[2, 8, 12]),
                 R.patchify(xt.contiguous(), 2), "patchify of a non-contiguous input", atol=0, rtol=0,
                 hint="the memory layout must not change the tokens")


def _parameter_count(block: nn.Module) -> int:
    return sum(p.numel() for p in block.parameters())


@check("DiTBlock")
def test_DiTBlock_honours_mlp_ratio_and_one_token(impl) -> None:
    """mlp_ratio sets the MLP's hidden width (r·D): going from 4 to 2 removes as many parameters as in the
    reference; one sample of one token [1, 1, 32] keeps its shape (and a fresh block returns it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        counts = [on_student_side(_parameter_count, impl.DiTBlock(32, 4, mlp_ratio=r)) for r in (4.0, 2.0)]
        block = impl.DiTBlock(32, 4)
    want = _parameter_count(R.DiTBlock(32, 4, mlp_ratio=4.0)) - _parameter_count(R.DiTBlock(32, 4, mlp_ratio=2.0))
    if counts[0] - counts[1] != want:
        raise Failure(f"DiTBlock(32, 4, mlp_ratio=4.0) and mlp_ratio=2.0 differ by {counts[0] - counts[1]} "
                      f"parameters; a hidden width of r·D makes them differ by {want}.",
                      "the MLP is Linear(dim, int(dim * mlp_ratio)) → GELU(approximate='tanh') → "
                      "Linear(int(dim * mlp_ratio), dim): use the mlp_ratio given")
    x, c = torch.randn(1, 1, 32, generator=gen(57)), torch.randn(1, 32, generator=gen(58))
    with torch.no_grad():
        out = block(x, c)
    expect_close(expect_tensor(out, "DiTBlock(32, 4)(x [1, 1, 32], c [1, 32])", shape=[1, 1, 32]), x,
                 "a fresh DiTBlock on one token", atol=1e-6, rtol=0,
                 hint="index the gates as gate[:, None] (one per sample, broadcast over the tokens)")


# ------------------------------------------------------------------------------------------------ lesson 12


def _solver_step(impl, name: str, x_t: Tensor, t: int, t_prev: int, s: R.NoiseSchedule, **kwargs) -> Tensor:
    model = Recorder(half_eps)
    out = getattr(impl, name)(model, x_t, t, t_prev, s, **kwargs)
    if name == "dpm_solver_pp_2m_step":
        if not isinstance(out, tuple) or len(out) != 2:
            raise Failure(f"{name}(...) should return a pair (x_{{t_prev}}, x̂0_t), got {type(out).__name__}.",
                          "return x_prev, x0")
        out = out[0]
    return expect_tensor(out, f"{name}(model, x_t {list(x_t.shape)}, t={t}, t_prev={t_prev}, ...)",
                         shape=x_t.shape, dtype=x_t.dtype)


@check("karras_heun_step")
def test_karras_heun_step_options_and_edges(impl) -> None:
    """clip_x0=False and second_order=False (falsy but given) honoured and passed on to both evaluations; t_prev = 0
    is a timestep like any other (the corrector runs there); one image [1, 1, 2, 2] with |x̂0| > 1 (T = 10)."""
    s = short_schedule()
    x_t = torch.tensor([[[[3.0, -2.5], [0.4, 1.8]]]])
    for kwargs in ({"clip_x0": False}, {"second_order": False}, {"clip_x0": False, "second_order": False}, {}):
        for t, t_prev in ((9, 4), (3, 0)):
            out = _solver_step(impl, "karras_heun_step", x_t, t, t_prev, s, **kwargs)
            want = R.karras_heun_step(half_eps, x_t, t, t_prev, s, **kwargs)
            hint = ("t_prev = 0 is the last timestep, not the clean end (only t_prev = −1 is): the corrector runs "
                    "there" if t_prev == 0 else "use clip_x0 and second_order exactly as given (False included) in "
                    "both evaluations of ε̂")
            expect_close(out, want, f"karras_heun_step(t={t}, t_prev={t_prev}, {kwargs}) on one image", atol=1e-4,
                         rtol=1e-4, hint=hint)


@check("dpm_solver_pp_2m_step")
def test_dpm_solver_pp_2m_step_options_and_edges(impl) -> None:
    """clip_x0=False (falsy but given) honoured; t_prev = 0 is a timestep (the second-order step runs there), and so
    is t_last = t + 1; one image [1, 1, 2, 2] with |x̂0| > 1 (T = 10)."""
    s = short_schedule()
    x_t = torch.tensor([[[[3.0, -2.5], [0.4, 1.8]]]])
    x0_last = torch.tensor([[[[0.5, -0.9], [0.2, 0.7]]]])
    for clip in (False, True):
        for t, t_prev, last in ((9, 4, None), (4, 0, (9, x0_last)), (2, 1, (3, x0_last))):
            out = _solver_step(impl, "dpm_solver_pp_2m_step", x_t, t, t_prev, s, last=last, clip_x0=clip)
            want, _ = R.dpm_solver_pp_2m_step(half_eps, x_t, t, t_prev, s, last=last, clip_x0=clip)
            hint = ("t_prev = 0 is the last timestep, not the clean end (only t_prev = −1 is): the step runs there "
                    "as anywhere else" if t_prev == 0 else "use clip_x0 exactly as given (False included)")
            expect_close(out, want, f"dpm_solver_pp_2m_step(t={t}, t_prev={t_prev}, last="
                         f"{'None' if last is None else (last[0], '…')}, clip_x0={clip}) on one image", atol=1e-4,
                         rtol=1e-4, hint=hint)
