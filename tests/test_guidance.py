"""Lesson 8 checks: ``LabelEmbedding``, ``drop_labels``, ``guided_eps`` and ``cfg_sample`` (classifier-free guidance).

Convention (Ho & Salimans 2022 with w = 1 + their w): ε̂ = ε(x_t, t, ∅) + w·(ε(x_t, t, c) − ε(x_t, t, ∅)); w = 0 is
the unconditional model, w = 1 the conditional one. The guided noise estimate is compared with its closed form for a
fixed, label-dependent stand-in for ε_θ; whole guided chains are driven by ``LabelledGaussianMixtureOracle``, whose
conditional and unconditional ε are exact, so a correct sampler returns the mixture at w = 0 and each class's own
distribution at w = 1, with no training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

import ddpm_ref as R
from tests._asserts import (
    call,
    expect_close,
    expect_tensor,
    fmt,
    nudge_parameters,
    on_student_side,
    timesteps_summary,
)
from tests.harness import Failure, check

NUM_CLASSES = 5  # the stand-in model's classes; its null label is 5


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fake_eps(x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """A deterministic, label-dependent stand-in for ε_θ(x_t, t, c): 0.6·x + 0.15·(c − 2) + 0.002·t (∅ = 5 too)."""
    sh = (-1, *([1] * (x.ndim - 1)))
    return 0.6 * x + 0.15 * (labels.to(x.dtype) - 2).reshape(sh) + 0.002 * t.to(x.dtype).reshape(sh)


class CondRecorder(nn.Module):
    """A conditional noise predictor ``model(x, t, labels)`` that records every call as (x, t [B], labels [B]).

    ``num_classes`` is its null label. Holds one dummy parameter (for code that looks up the model's device).
    """

    def __init__(self, inner: Callable[[Tensor, Tensor, Tensor], Tensor], num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.inner = inner
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(self, x: Tensor, t, labels=None) -> Tensor:
        if labels is None:
            raise AssertionError("the model was called without labels: call model(x_t, t, labels) (∅ is a label "
                                 f"too: num_classes = {self.num_classes})")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        labels = torch.as_tensor(labels, device=x.device)
        if labels.shape != (x.shape[0],):
            raise AssertionError(f"the model was called with labels of shape {list(labels.shape)} for a batch of "
                                 f"{x.shape[0]}: one label per image")
        self.calls.append((x.detach().clone(), t.clone().long(), labels.clone().long()))
        return self.inner(x, t.long(), labels.long())


def guided_closed_form(x: Tensor, t: Tensor, labels: Tensor, w: float, *, null: int = NUM_CLASSES,
                       form: str = "course") -> Tensor:
    """ε̂ of :func:`fake_eps` in float64; ``form`` gives the typical wrong variants."""
    x, t = x.double(), torch.as_tensor(t).expand(x.shape[0])
    cond, uncond = fake_eps(x, t, labels), fake_eps(x, t, torch.full_like(labels, null))
    if form == "swapped":
        return cond + w * (uncond - cond)
    if form == "one_plus_w":
        return cond + w * (cond - uncond)
    if form == "cond_only":
        return cond
    if form == "uncond_only":
        return uncond
    return uncond + w * (cond - uncond)


# ---------------------------------------------------------------------------------------- LabelEmbedding


def _embed(impl, num_classes: int, dim: int) -> nn.Module:
    torch.manual_seed(0)
    module = impl.LabelEmbedding(num_classes, dim)
    if not on_student_side(isinstance, module, nn.Module):
        raise AssertionError(f"LabelEmbedding(...) should be an nn.Module, got {type(module).__name__}")
    return module


def _embed_call(module: nn.Module, labels: Tensor, num_classes: int, dim: int) -> Tensor:
    try:
        out = module(labels)
    except IndexError as e:
        if int(labels.max()) == num_classes:
            raise Failure(
                f"the null label ∅ = num_classes = {num_classes} raised IndexError ({e}).",
                "the null label needs its own row: a table of num_classes + 1 rows, nn.Embedding(num_classes + 1, dim)",
            ) from None
        raise
    return expect_tensor(out, f"LabelEmbedding({num_classes}, {dim})(labels [{labels.shape[0]}])",
                         shape=(labels.shape[0], dim), dtype=torch.float32)


@check("LabelEmbedding")
def test_LabelEmbedding_shapes_and_null_label(impl) -> None:
    """LabelEmbedding(10, 32) maps labels [B] in 0…10 (10 = the null label ∅) to [B, 32], one vector per label."""
    module = _embed(impl, 10, 32)
    labels = torch.arange(11)
    out = _embed_call(module, labels, 10, 32)
    distinct = torch.cdist(out.detach().double(), out.detach().double())[~torch.eye(11, dtype=torch.bool)].min()
    if float(distinct) < 1e-6:
        raise Failure("two different labels (or a label and ∅) got the same vector: every label, and the "
                      "null label, needs its own learned vector.", "nn.Embedding(num_classes + 1, dim)")
    again = _embed_call(module, torch.tensor([3, 10, 3, 0]), 10, 32)
    expect_close(again, out[[3, 10, 3, 0]], "the vectors of labels [3, 10, 3, 0]", atol=1e-6, rtol=1e-6,
                 hint="the same label must always give the same vector, whatever else is in the batch")


def _label_gradients(module: nn.Module, labels: Tensor) -> tuple[int, bool]:
    """(number of trainable parameters, whether a loss on the output gives one of them a non-zero gradient)."""
    params = [p for p in module.parameters() if p.requires_grad]
    module(labels).square().sum().backward()
    return len(params), any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params)


#: a small unconditional UNet of ddpm_ref; with num_classes=3 its label embedding is the student's
LABEL_UNET = {"in_channels": 1, "channels": (8, 16), "num_res_blocks": 1, "attention": False}


def _label_unet_outputs(module: nn.Module, x: Tensor, t: Tensor) -> tuple[list[Tensor], Tensor]:
    """ddpm_ref's UNet(num_classes=3) with ``module`` as its label embedding (parameters nudged): the outputs for
    labels 0, 1, 2, ∅ = 3, and for no labels."""
    own = R.unet.LabelEmbedding
    R.unet.LabelEmbedding = lambda n, dim: nn.Embedding(n + 1, dim)  # a stand-in, replaced by ``module`` below
    try:
        torch.manual_seed(0)
        net = R.UNet(**LABEL_UNET, num_classes=3)
    finally:
        R.unet.LabelEmbedding = own
    net.label_embed = module
    nudge_parameters(net, 0.05)
    net.eval()
    with torch.no_grad():
        return [net(x, t, torch.full((4,), c)) for c in range(4)], net(x, t)


@check("LabelEmbedding")
def test_LabelEmbedding_is_learned(impl) -> None:
    """The vectors are parameters: a loss on the output gives a gradient to them."""
    module = _embed(impl, 4, 16)
    labels = torch.tensor([0, 1, 2, 3])
    _embed_call(module, labels, 4, 16)
    trainable, reached = on_student_side(_label_gradients, module, labels)
    if not trainable:
        raise AssertionError("LabelEmbedding has no trainable parameters: the label vectors must be learned "
                             "(nn.Embedding, or an nn.Parameter table)")
    if not reached:
        raise AssertionError("no gradient reached LabelEmbedding's parameters: do not detach the vectors or "
                             "build them under torch.no_grad()")


@check("LabelEmbedding")
def test_LabelEmbedding_in_the_unet(impl) -> None:
    """In ddpm_ref's UNet(num_classes=3) in place of its own: the output depends on the label, and no label = ∅."""
    emb_dim = R.UNet(**LABEL_UNET).time_embed[-1].out_features
    module = _embed(impl, 3, emb_dim)
    outs, none = on_student_side(_label_unet_outputs, module, torch.randn(4, 1, 8, 8, generator=gen(0)),
                                 torch.full((4,), 100))
    for c in range(3):
        if torch.allclose(outs[c], outs[c + 1], atol=1e-6):
            raise AssertionError(f"the UNet gives the same output for labels {c} and {c + 1}: the label vectors "
                                 "must differ (random initialisation, as nn.Embedding does)")
    expect_close(none, outs[3], "UNet(x, t) with no labels vs labels = ∅ = 3", atol=1e-5, rtol=1e-5,
                 hint="the null label is index num_classes")


@check("LabelEmbedding", hidden=True)
def test_LabelEmbedding_any_size(impl) -> None:
    """num_classes = 1 and an odd width work; a mixed batch gives each label its own vector."""
    module = _embed(impl, 1, 7)
    out = _embed_call(module, torch.tensor([0, 1, 1, 0]), 1, 7)
    expect_close(out[0], out[3], "two samples with label 0", atol=1e-6, rtol=1e-6)
    if torch.allclose(out[0], out[1]):
        raise AssertionError("label 0 and ∅ (= 1) got the same vector with num_classes = 1")


# ---------------------------------------------------------------------------------------- drop_labels


def _drop(impl, labels: Tensor, p: float, null: int, seed: int) -> Tensor:
    out = impl.drop_labels(labels, p, null, generator=gen(seed))
    return expect_tensor(out, f"drop_labels(labels [{labels.shape[0]}], p_uncond={p}, null_label={null})",
                         shape=labels.shape, dtype=torch.long)


def _many_labels(n: int = 40000, k: int = 10) -> Tensor:
    return torch.arange(n) % k


@check("drop_labels")
def test_drop_labels_extremes(impl) -> None:
    """p_uncond = 0 keeps every label; p_uncond = 1 makes every label the null label."""
    labels = _many_labels(1000)
    kept = _drop(impl, labels.clone(), 0.0, 10, 0)
    if not torch.equal(kept, labels):
        raise AssertionError(f"with p_uncond = 0 no label should change; {int((kept != labels).sum())} of 1000 did")
    gone = _drop(impl, labels.clone(), 1.0, 10, 0)
    if not bool((gone == 10).all()):
        n = int((gone != 10).sum())
        raise Failure(
            f"with p_uncond = 1 every label should become the null label 10; {n} of 1000 did not.",
            "without dropped labels the null label is never trained, and guidance then amplifies an untrained ε(x, ∅)")


@check("drop_labels")
def test_drop_labels_rate(impl) -> None:
    """p_uncond = 0.2: 20 % ± 1 % of 40 000 labels become ∅, the others stay exactly what they were."""
    labels = _many_labels()
    out = _drop(impl, labels.clone(), 0.2, 10, 1)
    dropped = out == 10
    frac = float(dropped.double().mean())
    if frac == 0.0:
        raise Failure("no label was dropped with p_uncond = 0.2: the null label is never trained, so "
                      "ε(x_t, ∅) stays untrained noise and guidance amplifies it.",
                      "replace each label by null_label where torch.rand(B, generator=generator) < p_uncond")
    if abs(frac - 0.2) > 0.01:
        hint = ("is the comparison the wrong way round (u > p_uncond drops 1 − p)?" if abs(frac - 0.8) < 0.01
                else "each label is dropped independently with probability p_uncond")
        raise Failure(f"with p_uncond = 0.2, {frac:.3f} of the labels became ∅.", hint)
    if not torch.equal(out[~dropped], labels[~dropped]):
        raise AssertionError("labels that are not dropped must stay as they were")


@check("drop_labels")
def test_drop_labels_uses_the_generator(impl) -> None:
    """The draws come from ``generator``: the same seed gives the same drops, another seed other drops."""
    labels = _many_labels(2000)
    a, b, c = (_drop(impl, labels.clone(), 0.5, 10, s) for s in (3, 3, 4))
    if not torch.equal(a, b) or torch.equal(a, c):
        raise Failure("drop_labels should draw from the generator it is given: same seed, same result; "
                      "another seed, another.", "torch.rand(labels.shape, generator=generator)")


@check("drop_labels")
def test_drop_labels_leaves_the_input_alone(impl) -> None:
    """The labels passed in are not modified in place (the caller still needs them)."""
    labels = _many_labels(1000)
    before = labels.clone()
    _drop(impl, labels, 0.5, 10, 5)
    if not torch.equal(labels, before):
        raise AssertionError("drop_labels changed its input in place: return a new tensor (torch.where, or clone "
                             "first)")


@check("drop_labels", hidden=True)
def test_drop_labels_every_class_alike(impl) -> None:
    """Each class is dropped at the same rate (0.3 ± 0.025 per class, 4000 labels each)."""
    labels = _many_labels()
    out = _drop(impl, labels.clone(), 0.3, 10, 6)
    rates = [float((out[labels == c] == 10).double().mean()) for c in range(10)]
    if max(abs(r - 0.3) for r in rates) > 0.025:
        raise AssertionError(f"drop rates per class {[round(r, 3) for r in rates]}, expected 0.3 each")


# ---------------------------------------------------------------------------------------- guided_eps


def _inputs(b: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = gen(seed)
    x = torch.randn(b, 1, 4, 4, generator=g)
    t = torch.randint(0, 300, (b,), generator=g)
    labels = torch.randint(0, NUM_CLASSES, (b,), generator=g)
    return x, t, labels


def _guided(impl, model, x, t, labels, w, **kwargs) -> Tensor:
    out = impl.guided_eps(model, x, t, labels, w, **kwargs)
    return expect_tensor(out, f"guided_eps(model, x_t [{x.shape[0]}, 1, 4, 4], t, labels, w={w})", shape=x.shape,
                         dtype=x.dtype)


def _guided_diagnoses(x, t, labels, w, null: int = NUM_CLASSES) -> list:
    """The typical wrong forms of ε̂, each with its hint: every guided_eps check tries them first, so that one
    mistake is named the same way by every check it fails."""
    return [
        (lambda: guided_closed_form(x, t, labels, w, form="swapped", null=null),
         "conditional and unconditional estimates are swapped: ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅)), with ∅ the "
         "null label"),
        (lambda: guided_closed_form(x, t, labels, w, form="one_plus_w", null=null),
         "that is the (1 + w) form of Ho & Salimans, (1 + w)·ε(x, c) − w·ε(x, ∅): in this course w = 1 is the "
         "conditional model, so ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅))"),
        (lambda: guided_closed_form(x, t, labels, w, form="cond_only", null=null),
         "this is ε(x, c) alone: mix in ε(x, ∅)"),
        (lambda: guided_closed_form(x, t, labels, w, form="uncond_only", null=null),
         "this is ε(x, ∅) alone: the conditional half must carry the labels"),
    ]


@check("guided_eps")
def test_guided_eps_formula(impl) -> None:
    """ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅)) for w = 0, 1, 2.5 and 0.5 (∅ = model.num_classes)."""
    x, t, labels = _inputs(6, 0)
    for w in (2.5, 0.5, 0.0, 1.0):  # w = 2.5 first: there every typical mistake gives its own answer
        out = _guided(impl, CondRecorder(fake_eps), x, t, labels, w)
        expect_close(out, guided_closed_form(x, t, labels, w), f"guided_eps with w = {w}", atol=1e-5, rtol=1e-5,
                     diagnoses=_guided_diagnoses(x, t, labels, w),
                     hint="ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅)); w = 0 unconditional, w = 1 conditional")


@check("guided_eps")
def test_guided_eps_one_forward_pass(impl) -> None:
    """One model call on the doubled batch: [x_t, x_t], [t, t], [labels, ∅] (in either order of halves)."""
    x, t, labels = _inputs(6, 1)
    model = CondRecorder(fake_eps)
    _guided(impl, model, x, t, labels, 2.0)
    if len(model.calls) != 1:
        raise AssertionError(f"guided_eps called the model {len(model.calls)} times: use one forward pass on the "
                             "doubled batch, model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))")
    xs, ts, ys = model.calls[0]
    if xs.shape[0] != 12:
        raise AssertionError(f"the model call had a batch of {xs.shape[0]}, expected 2·B = 12 (conditional and "
                             "unconditional halves)")
    want = sorted(labels.tolist() + [NUM_CLASSES] * 6)
    if sorted(ys.tolist()) != want:
        raise AssertionError(f"the labels of the model call were {ys.tolist()}; expected the labels "
                             f"{labels.tolist()} once and the null label {NUM_CLASSES} once per image")


@check("guided_eps")
def test_guided_eps_null_label(impl) -> None:
    """∅ is ``model.num_classes`` by default; ``null_label=`` overrides it."""
    x, t, labels = _inputs(4, 2)
    out = _guided(impl, CondRecorder(fake_eps, num_classes=7), x, t, labels, 2.0)
    expect_close(out, guided_closed_form(x, t, labels, 2.0, null=7), "guided_eps with model.num_classes = 7",
                 atol=1e-5, rtol=1e-5, diagnoses=_guided_diagnoses(x, t, labels, 2.0, null=7),
                 hint="the null label is model.num_classes when null_label is None")
    out = _guided(impl, CondRecorder(fake_eps), x, t, labels, 2.0, null_label=9)
    expect_close(out, guided_closed_form(x, t, labels, 2.0, null=9), "guided_eps(..., null_label=9)", atol=1e-5,
                 rtol=1e-5, diagnoses=_guided_diagnoses(x, t, labels, 2.0, null=9),
                 hint="use null_label when it is given")


@check("guided_eps", hidden=True)
def test_guided_eps_int_t(impl) -> None:
    """An int t is one timestep for the whole batch."""
    x, _, labels = _inputs(5, 3)
    out = _guided(impl, CondRecorder(fake_eps), x, 123, labels, 3.0)
    expect_close(out, guided_closed_form(x, torch.tensor(123), labels, 3.0), "guided_eps with t = 123 (an int)",
                 atol=1e-5, rtol=1e-5, diagnoses=_guided_diagnoses(x, torch.tensor(123), labels, 3.0))


@check("guided_eps", hidden=True)
def test_guided_eps_with_the_oracle(impl) -> None:
    """With the exact oracle: w = 0 gives ε*(x, ∅) and w = 1 gives ε*(x, c) exactly."""
    s = R.NoiseSchedule.from_name("cosine", 200)
    oracle = R.LabelledGaussianMixtureOracle(s, [-0.5, 0.1, 0.6], [0.1, 0.2, 0.1])
    x = torch.randn(9, 1, 2, 2, generator=gen(4))
    t = torch.full((9,), 120)
    labels = torch.arange(9) % 3
    for w, want, what in ((0.0, oracle(x, t), "ε*(x, ∅)"), (1.0, oracle(x, t, labels), "ε*(x, c)")):
        out = _guided(impl, oracle, x, t, labels, w)
        expect_close(out, want, f"guided_eps of the oracle at w = {w} (should be {what})", atol=1e-5, rtol=1e-5,
                     hint="w = 0 is the unconditional model and w = 1 the conditional one")


# ---------------------------------------------------------------------------------------- cfg_sample


def _cfg(impl, model, s, shape, labels, w, seed: int = 0, **kwargs) -> Tensor:
    out = call(impl.cfg_sample, model, s, shape, labels, w, generator=gen(seed), progress=False, **kwargs)
    return expect_tensor(out, f"cfg_sample(model, schedule, shape={list(shape)}, labels, w={w})", shape=shape,
                         dtype=torch.float32)


def _last_step_closed_form(x: Tensor, labels: Tensor, w: float, s: R.NoiseSchedule, *, mistake: str = "") -> Tensor:
    """The one step at t = 0 of a T = 1 chain: clip(x̂0(ε̂)) (μ̃_0 = x̂0; no noise)."""
    t = torch.zeros(x.shape[0], dtype=torch.long)
    ab = float(s.alpha_bars[0])

    def x0_of(eps: Tensor) -> Tensor:
        return (x.double() - math.sqrt(1 - ab) * eps) / math.sqrt(ab)

    if mistake == "x0_mixed_after_clipping":
        x0_c = x0_of(fake_eps(x.double(), t, labels)).clamp(-1, 1)
        x0_u = x0_of(fake_eps(x.double(), t, torch.full_like(labels, NUM_CLASSES))).clamp(-1, 1)
        return x0_u + w * (x0_c - x0_u)
    x0 = x0_of(guided_closed_form(x, t, labels, w, form=mistake or "course"))
    return x0 if mistake == "no_clip" else x0.clamp(-1, 1)


@check("cfg_sample")
def test_cfg_sample_guides_the_noise_estimate(impl) -> None:
    """A one-step chain (T = 1) from a given x_T: x̂0 from ε̂ = ε(∅) + w·(ε(c) − ε(∅)), then clipped to [−1, 1]."""
    s = R.NoiseSchedule(torch.tensor([0.5], dtype=torch.float64))
    x_T = 2.5 * torch.randn(64, 1, 2, 2, generator=gen(5))
    labels = torch.arange(64) % NUM_CLASSES
    w = 3.0
    model = CondRecorder(fake_eps)
    out = _cfg(impl, model, s, x_T.shape, labels, w, x_T=x_T)
    for _, _, ys in model.calls:
        cond = ys != NUM_CLASSES
        mixed = int(cond.sum()) != 64 if len(ys) == 2 * 64 else 0 < int(cond.sum()) < len(ys)
        if mixed:
            raise AssertionError(
                f"a model call carried the null label on {int((~cond).sum())} of its {len(ys)} images where "
                "the requested labels were expected: labels are dropped only in training, never at sampling time")
    expect_close(out, _last_step_closed_form(x_T, labels, w, s), "cfg_sample with T = 1 (one step, at t = 0)",
                 atol=1e-4, rtol=1e-4, diagnoses=[
                     (lambda: _last_step_closed_form(x_T, labels, w, s, mistake="x0_mixed_after_clipping"),
                      "guidance was applied to x̂0 with the ε formula after clipping each x̂0: guide the noise "
                      "estimate ε̂ (guided_eps), then compute x̂0 from ε̂ and clip that"),
                     (lambda: _last_step_closed_form(x_T, labels, w, s, mistake="no_clip"),
                      "clip x̂0 (computed from ε̂) to [−1, 1] when clip_x0 is True"),
                     (lambda: _last_step_closed_form(x_T, labels, w, s, mistake="swapped"),
                      "conditional and unconditional estimates are swapped"),
                     (lambda: _last_step_closed_form(x_T, labels, w, s, mistake="one_plus_w"),
                      "that is the (1 + w) form: in this course w = 1 is the conditional model"),
                 ], hint="each step: ε̂ = guided_eps(model, x, t, labels, w); x̂0 from ε̂, clipped; posterior "
                         "mean (+ noise for t > 0) — ddpm_ref.p_sample with ε̂ as the model does all of it")


def two_class_oracle(s: R.NoiseSchedule, sep: float = 0.45, sd: float = 0.15) -> R.LabelledGaussianMixtureOracle:
    """Class 0: N(−sep, sd²), weight 0.3; class 1: N(+sep, sd²), weight 0.7."""
    return R.LabelledGaussianMixtureOracle(s, [-sep, sep], [sd, sd], [0.3, 0.7])


def oracle_schedule() -> R.NoiseSchedule:
    return R.NoiseSchedule.from_name("cosine", 200)


@check("cfg_sample")
def test_cfg_sample_w0_returns_the_mixture(impl) -> None:
    """w = 0 ignores the labels: asked for class 0 or class 1, samples follow the whole mixture (0.7 ± 0.045 near +)."""
    s = oracle_schedule()
    oracle = two_class_oracle(s)
    n = 1000
    for c in (0, 1):
        x = _cfg(impl, oracle, s, (n, 1, 2, 2), torch.full((n,), c), 0.0, seed=c)
        frac = float((x.flatten(1).mean(1) > 0).double().mean())
        if abs(frac - 0.7) > 0.045:
            raise Failure(
                f"at w = 0 (unconditional) the samples asked for class {c} should follow the mixture, 70 % near "
                f"+0.45; {frac:.3f} were.", "w = 0 means ε̂ = ε(x, ∅), the unconditional estimate")


@check("cfg_sample")
def test_cfg_sample_w1_returns_each_class(impl) -> None:
    """w = 1 is the conditional model: each class's samples have its mean (± 0.015) and std 0.142 (± 0.01).

    Each class is N(±0.45, 0.15²); DDPM with σ_t² = β̃_t and T = 200 under-disperses slightly: the exact std of the
    chain is 0.142 (``gaussian_chain_moments`` of test_sampling.py). 2000 values per class.
    """
    s = oracle_schedule()
    oracle = two_class_oracle(s)
    n = 1000
    labels = torch.arange(n) % 2
    x = _cfg(impl, oracle, s, (n, 1, 2, 2), labels, 1.0, seed=2)
    for c, mu in ((0, -0.45), (1, 0.45)):
        xc = x[labels == c]
        m, sd = float(xc.mean()), float(xc.std())
        if abs(m - mu) > 0.015 or abs(sd - 0.142) > 0.01:
            raise Failure(
                f"at w = 1 the samples of class {c} should follow N({mu}, 0.15²) (std 0.142 after 200 DDPM steps); "
                f"they have mean {m:.3f} and std "
                f"{sd:.3f}.", "image i is guided towards labels[i]; w = 1 means ε̂ = ε(x, c)")


def _mean_distance_to_other_class(x: Tensor, labels: Tensor, means: tuple[float, float]) -> list[float]:
    return [float((x[labels == c] - means[1 - c]).abs().mean()) for c in (0, 1)]


@check("cfg_sample", hidden=True)
def test_cfg_sample_guidance_moves_away_from_the_other_class(impl) -> None:
    """Overlapping classes N(∓0.15, 0.25²): for w = 1, 2, 4 the mean distance of each class's samples to the other
    class's mean grows with w (by at least 0.02 per step)."""
    s = oracle_schedule()
    oracle = two_class_oracle(s, sep=0.15, sd=0.25)
    n = 1000
    labels = torch.arange(n) % 2
    dists = []
    for w in (1.0, 2.0, 4.0):
        x = _cfg(impl, oracle, s, (n, 1, 1, 1), labels, w, seed=7)
        dists.append(_mean_distance_to_other_class(x, labels, (-0.15, 0.15)))
    for c in (0, 1):
        d = [row[c] for row in dists]
        if not (d[1] - d[0] > 0.02 and d[2] - d[1] > 0.02):
            raise Failure(
                f"class {c}: mean distance to the other class at w = 1, 2, 4 is {[round(v, 3) for v in d]}; it "
                "should grow with w.", "ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅))")


@check("cfg_sample", hidden=True)
def test_cfg_sample_visits_every_t_once(impl) -> None:
    """T = 50: the model is asked at t = 49, 48, …, 0, in that order (once or twice per step)."""
    s = R.NoiseSchedule.from_name("cosine", 50)
    model = CondRecorder(fake_eps)
    labels = torch.arange(8) % NUM_CLASSES
    _cfg(impl, model, s, (8, 1, 2, 2), labels, 2.0)
    ts = []
    for _, t, _ in model.calls:
        if not bool((t == t[0]).all()):
            raise AssertionError(f"one model call mixed timesteps {fmt(t)}")
        if not ts or ts[-1] != int(t[0]):
            ts.append(int(t[0]))
    expected = list(range(49, -1, -1))
    if ts != expected:
        raise Failure(f"the steps should run at t = {timesteps_summary(expected)}; they ran at t = "
                      f"{timesteps_summary(ts)}.", "for t in reversed(range(schedule.T))")


@check("cfg_sample", hidden=True)
def test_cfg_sample_starts_from_noise(impl) -> None:
    """Without x_T the chain starts from N(0, I) drawn from ``generator``: same seed, same samples."""
    s = R.NoiseSchedule.from_name("cosine", 20)
    labels = torch.arange(16) % 2
    oracle = two_class_oracle(s)
    a = _cfg(impl, oracle, s, (16, 1, 2, 2), labels, 2.0, seed=3)
    b = _cfg(impl, oracle, s, (16, 1, 2, 2), labels, 2.0, seed=3)
    c = _cfg(impl, oracle, s, (16, 1, 2, 2), labels, 2.0, seed=4)
    if not torch.equal(a, b) or torch.equal(a, c):
        raise AssertionError("cfg_sample should draw all its noise from the generator it is given: the same seed "
                             "must give the same samples and another seed others")


# ---------------------------------------------------------------------------------------- reference facts


def test_unconditional_unet_is_unchanged() -> None:
    """UNet() without num_classes has exactly the parameters it had before labels existed, and rejects labels."""
    net = R.UNet(in_channels=1, channels=(8, 16), num_res_blocks=1, attention=False)
    assert not any(k.startswith("label_embed") for k in net.state_dict())
    try:
        net(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    except ValueError as e:
        assert "num_classes" in str(e)
    else:
        raise AssertionError("an unconditional UNet accepted labels")


def test_shipped_checkpoint_still_loads() -> None:
    model, _ = R.load_pretrained_lfw_tiny()
    assert model.num_classes is None


def test_conditional_unet_rejects_bad_labels() -> None:
    net = R.UNet(in_channels=1, channels=(8, 16), num_res_blocks=1, attention=False, num_classes=3)
    x, t = torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    for bad in (torch.tensor([0, 4]), torch.tensor([-1, 0]), torch.tensor([0])):
        try:
            net(x, t, bad)
        except ValueError:
            continue
        raise AssertionError(f"labels {bad.tolist()} were accepted")


def test_oracle_classes_and_null() -> None:
    """The labelled oracle's ∅ is the plain mixture oracle; a class with one component is that Gaussian's oracle."""
    s = oracle_schedule()
    oracle = R.LabelledGaussianMixtureOracle(s, [-0.5, 0.2, 0.6], [0.1, 0.2, 0.1], [0.2, 0.5, 0.3], classes=[0, 1, 0])
    x = torch.randn(6, 1, 2, 2, generator=gen(0))
    t = torch.full((6,), 80)
    plain = R.GaussianMixtureOracle(s, [-0.5, 0.2, 0.6], [0.1, 0.2, 0.1], [0.2, 0.5, 0.3])
    assert torch.allclose(oracle(x, t), plain(x, t))
    assert torch.allclose(oracle(x, t, torch.full((6,), 2)), plain(x, t))
    one = R.GaussianMixtureOracle(s, [0.2], [0.2])
    assert torch.allclose(oracle(x, t, torch.ones(6, dtype=torch.long)), one(x, t))
    pair = R.GaussianMixtureOracle(s, [-0.5, 0.6], [0.1, 0.1], [0.2, 0.3])
    assert torch.allclose(oracle(x, t, torch.zeros(6, dtype=torch.long)), pair(x, t))
    assert oracle.num_classes == 2


def test_guided_eps_matches_diffusers_formula() -> None:
    """diffusers' pipelines: noise_uncond + guidance_scale·(noise_text − noise_uncond) on a chunked doubled batch."""
    model = CondRecorder(fake_eps)
    x, t, labels = _inputs(4, 9)
    for scale in (1.0, 7.5):
        noise = model(torch.cat([x] * 2), torch.cat([t] * 2), torch.cat([torch.full_like(labels, 5), labels]))
        noise_uncond, noise_text = noise.chunk(2)
        want = noise_uncond + scale * (noise_text - noise_uncond)
        assert torch.allclose(R.guided_eps(model, x, t, labels, scale), want, atol=1e-6)


def test_conditional_training_step_learns_the_null_label() -> None:
    """cfg_train_step drops labels at rate p_uncond and trains both the conditional and the ∅ rows."""
    torch.manual_seed(0)
    net = R.UNet(in_channels=1, channels=(8, 16), num_res_blocks=1, attention=False, num_classes=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    s = R.NoiseSchedule.from_name("cosine", 50)
    before = net.label_embed.embedding.weight.detach().clone()
    R.cfg_train_step(net, opt, torch.zeros(64, 1, 8, 8), torch.arange(64) % 3, s, p_uncond=0.5, generator=gen(0))
    changed = (net.label_embed.embedding.weight.detach() - before).abs().sum(1) > 0
    assert changed.tolist() == [True, True, True, True]
    net2 = R.UNet(in_channels=1, channels=(8, 16), num_res_blocks=1, attention=False, num_classes=3)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1)
    before = net2.label_embed.embedding.weight.detach().clone()
    R.cfg_train_step(net2, opt2, torch.zeros(64, 1, 8, 8), torch.arange(64) % 3, s, p_uncond=0.0, generator=gen(0))
    changed = (net2.label_embed.embedding.weight.detach() - before).abs().sum(1) > 0
    assert changed.tolist() == [True, True, True, False]  # p_uncond = 0: ∅ is never trained


def test_digits() -> None:
    x, y = R.digits("train")
    xt, yt = R.digits("test")
    assert x.shape == (1500, 1, 8, 8) and xt.shape == (297, 1, 8, 8) and y.dtype == torch.long
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert sorted(set(y.tolist())) == list(range(10)) and sorted(set(yt.tolist())) == list(range(10))
    big, _ = R.digits("all", size=16)
    assert big.shape == (1797, 1, 16, 16)


def test_cli_trains_and_samples_the_digits_preset(tmp_path) -> None:
    """``train --preset digits-cfg`` trains a conditional model; ``sample --label --guidance`` guides it."""
    from ddpm_ref.checkpoint import model_from_checkpoint
    from ddpm_ref.cli import main

    out = tmp_path / "run"
    assert main(["train", "--preset", "digits-cfg", "--max-steps", "3", "--out", str(out), "--no-progress"]) == 0
    model, schedule, config = model_from_checkpoint(out / "checkpoints" / "ckpt_latest.pt")
    assert model.num_classes == 10 and config.p_uncond == 0.1 and schedule.T == 200
    assert main(["sample", "--ckpt", str(out), "--label", "3", "--guidance", "2", "--n", "2", "--sampler", "ddim",
                 "--steps", "4"]) == 0
    assert len(list((out / "generated").glob("sample_*.png"))) == 2
    assert main(["sample", "--ckpt", str(out), "--label", "10", "--n", "2"]) == 2  # not a class


def test_trainer_drops_labels_at_p_uncond(tmp_path) -> None:
    """The conditional Trainer passes labels dropped to ∅ at rate p_uncond to the model."""
    from ddpm_ref.config import get_config
    from ddpm_ref.train import Trainer

    seen: list[Tensor] = []
    trainer = Trainer(get_config("digits-cfg", max_steps=4), tmp_path, progress=False, write_outputs=False)
    forward = trainer.model.forward

    def spy(x, t, labels=None):
        seen.append(labels.clone())
        return forward(x, t, labels)

    trainer.model.forward = spy
    trainer.fit()
    labels = torch.cat(seen)
    assert labels.shape == (4 * 64,) and 0 < int((labels == 10).sum()) < 0.3 * len(labels)

