"""Lesson 4 checks: ``ddpm_loss`` (L_simple, eq. 14 / Algorithm 1) and ``train_step`` (one optimizer step).

A two-parameter probe model ε_θ(x_t, t) = w·x_t + b·t/T records what it is called with, so the checks can
recover the noise from x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε and compute the exact loss and gradients by hand,
whatever order the implementation draws its random numbers in.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

import ddpm_ref as R
from tests._asserts import expect_close, expect_float, expect_tensor, on_student_side
from tests._fixtures import T, seed_schedule
from tests.harness import Failure, check


class Probe(nn.Module):
    """ε_θ(x_t, t) = w·x_t + b·t/T with scalar parameters w, b; records (x_t, t) of every call."""

    def __init__(self, w: float = 0.5, b: float = 0.3) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        self.calls.append((x.detach().clone(), t.detach().clone().long()))
        return self.w * x + self.b * (t.to(x.dtype) / T).reshape(-1, *([1] * (x.ndim - 1)))


def batch(b: int, seed: int) -> Tensor:
    return torch.rand(b, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def recover_noise(x_t: Tensor, t: Tensor, x0: Tensor, s: R.NoiseSchedule) -> Tensor:
    """ε = (x_t − √ᾱ_t·x0)/√(1 − ᾱ_t), float64."""
    ab = s.alpha_bars[t].reshape(-1, 1, 1, 1)
    return (x_t.double() - ab.sqrt() * x0.double()) / (1 - ab).sqrt()


def probe_loss_and_grads(w: float, b: float, x_t: Tensor, t: Tensor, eps: Tensor) -> tuple[float, float, float]:
    """L = mean((w·x_t + b·τ − ε)²), τ = t/T, and its exact gradients dL/dw = mean(2r·x_t), dL/db = mean(2r·τ)."""
    x = x_t.double()
    tau = (t.double() / T).reshape(-1, 1, 1, 1).expand_as(x)
    r = w * x + b * tau - eps
    return float((r**2).mean()), float((2 * r * x).mean()), float((2 * r * tau).mean())


# ---------------------------------------------------------------------------------------- ddpm_loss


@check("ddpm_loss")
def test_ddpm_loss_value(impl) -> None:
    """With t and noise given: the model sees x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε and t; the loss is mean((ε − ε_θ)²)."""
    s = seed_schedule()
    x0 = batch(6, 0)
    t = torch.tensor([0, 1, 57, 200, 398, 399])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    model = Probe()
    loss = impl.ddpm_loss(model, x0, s, t=t, noise=noise)
    expect_tensor(loss, "ddpm_loss(...)", shape=[], hint="return a scalar: the mean over every pixel of the batch")
    if loss.dtype != torch.float32:
        raise AssertionError(f"ddpm_loss should be float32, got {loss.dtype}")
    if not model.calls:
        raise Failure("ddpm_loss never called the model.", "eps_pred = model(x_t, t)")
    x_seen, t_seen = model.calls[0]
    x_t = (s.alpha_bars[t].sqrt().reshape(-1, 1, 1, 1) * x0 + (1 - s.alpha_bars[t]).sqrt().reshape(-1, 1, 1, 1) * noise)
    if x_seen.shape != x0.shape or not torch.equal(t_seen, t):
        raise AssertionError(
            f"the model should be called as model(x_t, t) with x_t {list(x0.shape)} and the given t {t.tolist()}; "
            f"it got x {list(x_seen.shape)} and t {t_seen.tolist()}"
        )
    expect_close(x_seen, x_t, "the model's input", atol=1e-5, rtol=1e-5, diagnoses=[
        (x0, "the model must see the noised x_t = q_sample(x0, t, noise), not x0"),
        (noise, "the model must see the noised x_t = q_sample(x0, t, noise), not the noise"),
    ], hint="x_t = q_sample(x0, t, noise, schedule)")
    pred = 0.5 * x_t.double() + 0.3 * (t.double() / T).reshape(-1, 1, 1, 1)
    expect_close(loss, ((noise.double() - pred) ** 2).mean(), "ddpm_loss", atol=1e-6, rtol=1e-5, diagnoses=[
        (((x0.double() - pred) ** 2).mean(),
         "the model predicts the noise ε: compare its output with noise, not with x0 (eq. 14)"),
        (((noise.double() - pred) ** 2).sum(), "average the squared error (F.mse_loss), do not sum it"),
        ((noise.double() - pred).abs().mean(), "L_simple is the squared error, not the absolute error"),
        (((x_t.double() - pred) ** 2).mean(), "compare the model's output with the noise ε, not with x_t"),
    ], hint="L_simple = mean((ε − ε_θ(x_t, t))²) = F.mse_loss(model(x_t, t), noise)")
    if not loss.requires_grad:
        raise Failure("ddpm_loss carries no gradient.", "do not call .item(), .detach() or torch.no_grad()")
    loss.backward()
    if model.w.grad is None or model.b.grad is None:
        raise AssertionError("the loss does not reach the model's parameters: compute it from model(x_t, t)")


@check("ddpm_loss")
def test_ddpm_loss_default_sampling(impl) -> None:
    """Without t and noise: one t per sample, uniform on {0, …, T−1}, and ε ~ N(0, I), both from ``generator``."""
    s = seed_schedule()
    x0 = batch(512, 2)
    model = Probe()
    loss = impl.ddpm_loss(model, x0, s, generator=torch.Generator().manual_seed(0))
    expect_tensor(loss, "ddpm_loss(model, x0, schedule, generator=g)", shape=[])
    x_t, t = model.calls[-1]
    if int(t.min()) < 0 or int(t.max()) > T - 1:
        raise Failure(f"t must lie in {{0, …, {T - 1}}}, got values from {int(t.min())} to {int(t.max())}.",
                      "torch.randint(0, T, (B,)) draws 0 … T−1")
    distinct = int(t.unique().numel())
    if distinct < 200 or int(t.min()) > 20 or int(t.max()) < T - 20:
        raise Failure(
            f"t should be uniform on 0 … {T - 1}, one per sample; 512 draws gave {distinct} distinct values from "
            f"{int(t.min())} to {int(t.max())}.",
            "torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)",
        )
    eps = recover_noise(x_t, t, x0, s)
    m, sd = float(eps.mean()), float(eps.std())
    if abs(m) > 0.05 or abs(sd - 1) > 0.05:
        raise Failure(
            f"the noise should be standard normal; it has mean {m:.3f} and std {sd:.3f}.",
            "noise = torch.randn(x0.shape, generator=generator) (randn, not rand)",
        )
    expected, _, _ = probe_loss_and_grads(0.5, 0.3, x_t, t, eps)
    expect_close(loss, expected, "ddpm_loss with t and noise drawn inside", atol=1e-5, rtol=1e-4,
                 hint="the loss must use the same t and noise that made x_t")
    first = float(loss.detach())
    again = float(impl.ddpm_loss(Probe(), x0, s, generator=torch.Generator().manual_seed(0)).detach())
    other = float(impl.ddpm_loss(Probe(), x0, s, generator=torch.Generator().manual_seed(1)).detach())
    if again != first or other == first:
        raise Failure(
            f"the same generator seed should give the same loss and another seed another one; got {first:.6g}, "
            f"{again:.6g} (same seed), {other:.6g} (other seed).",
            "pass generator=generator to torch.randint and torch.randn",
        )


# ---------------------------------------------------------------------------------------- train_step


def _run_step(impl, *, grad_clip: float | None, seed: int, steps: int = 1):
    """``steps`` calls of train_step on a fresh probe and optimizer (SGD, lr 0.1): the plain start of training."""
    s = seed_schedule()
    x0 = batch(8, seed)
    model = Probe()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {} if grad_clip is None else {"grad_clip": grad_clip}
    outs = [impl.train_step(model, opt, x0, s, generator=torch.Generator().manual_seed(seed + 17 * k), **kwargs)
            for k in range(steps)]
    if len(model.calls) < steps:
        raise Failure(f"train_step called the model {len(model.calls)} time(s) in {steps} step(s).",
                      "loss = ddpm_loss(model, x0, schedule, ...), once per step")
    x_t, t = model.calls[0]
    eps = recover_noise(x_t, t, x0, s)
    loss, gw, gb = probe_loss_and_grads(0.5, 0.3, x_t, t, eps)
    return outs[0], model, loss, gw, gb


def _params(model: Probe) -> Tensor:
    return torch.stack([model.w.detach(), model.b.detach()]).double()


@check("train_step")
def test_train_step_returns_loss(impl) -> None:
    """Returns the loss of this step (before the update) as a Python float (loss.item())."""
    out, model, loss, _, _ = _run_step(impl, grad_clip=1e6, seed=0)
    if out is None:
        raise Failure("train_step returned None.", "return loss.item()")
    value = expect_float(out, "train_step's return value")
    x_t, t = model.calls[0]
    s = seed_schedule()
    after, _, _ = probe_loss_and_grads(model.w.item(), model.b.item(), x_t, t, recover_noise(x_t, t, batch(8, 0), s))
    expect_close(value, loss, "train_step's return value", atol=1e-6, rtol=1e-4,
                 diagnoses=[(after, "return the loss computed before optimizer.step(), not after")],
                 hint="return the L_simple of this batch: loss.item() of ddpm_loss(model, x0, schedule, ...)")


@check("train_step")
def test_train_step_updates_parameters(impl) -> None:
    """Two steps θ ← θ − lr·∇L, each with the gradient of its own batch only (no gradient carried over).

    Two real steps on a fresh optimizer expose a missing ``zero_grad`` (the second step would add the first
    step's gradient) whether a correct train_step clears the gradients at the start or at the end of a step.
    """
    _, model, _, gw, gb = _run_step(impl, grad_clip=1e6, seed=1, steps=2)
    s, x0 = seed_schedule(), batch(8, 1)
    start = torch.tensor([0.5, 0.3], dtype=torch.float64)
    g1 = torch.tensor([gw, gb], dtype=torch.float64)
    mid = start - 0.1 * g1
    x_t, t = model.calls[1]
    eps = recover_noise(x_t, t, x0, s)

    def grad_at(theta: Tensor) -> Tensor:
        _, gw_, gb_ = probe_loss_and_grads(float(theta[0]), float(theta[1]), x_t, t, eps)
        return torch.tensor([gw_, gb_], dtype=torch.float64)

    g2 = grad_at(mid)
    up = start + 0.1 * g1
    expect_close(_params(model), mid - 0.1 * g2, "the parameters (w, b) after two SGD steps (lr 0.1)",
                 atol=1e-6, rtol=1e-5, diagnoses=[
                     (mid - 0.1 * (g2 + g1),
                      "call optimizer.zero_grad() in every step: the first step's gradient was added to the second"),
                     (start, "the parameters did not change: call loss.backward() and then optimizer.step()"),
                     (up + 0.1 * grad_at(up), "step down the gradient: minimise the loss (no minus sign in the loss)"),
                 ], hint="optimizer.zero_grad(); loss.backward(); clip; optimizer.step()")


@check("train_step")
def test_train_step_clips_gradients(impl) -> None:
    """The gradient norm is clipped to grad_clip (clip_grad_norm_) between backward and step; default 1.0."""
    for clip in (1e-3, None):
        _, model, _, gw, gb = _run_step(impl, grad_clip=clip, seed=2)
        limit = 1.0 if clip is None else clip
        start = torch.tensor([0.5, 0.3], dtype=torch.float64)
        g = torch.tensor([gw, gb], dtype=torch.float64)
        norm = float(g.norm())
        clipped = g * min(1.0, limit / (norm + 1e-6))
        label = f"the parameters after train_step(..., grad_clip={clip})" if clip else (
            "the parameters after train_step(...) with the default grad_clip=1.0")
        expect_close(_params(model), start - 0.1 * clipped, label, atol=1e-6, rtol=1e-4, diagnoses=[
            (start - 0.1 * g, f"the gradient (norm {norm:.3g}) was not clipped: call torch.nn.utils."
                              "clip_grad_norm_(model.parameters(), grad_clip) after backward() and before step()"),
            (start - 0.1 * g.clamp(-limit, limit),
             "clip the norm of the whole gradient (clip_grad_norm_), not each value (clip_grad_value_)"),
        ], hint=f"after clipping, the gradient norm is min(‖g‖, grad_clip) = {min(norm, limit):.3g}")


# ---------------------------------------------------------------------------------------- the outcome

#: The outcome check's recipe (a small U-Net on 16×16 faces; a few seconds of CPU) and its pass mark.
OUTCOME_STEPS, OUTCOME_LR, OUTCOME_SAMPLES = 200, 0.2, 32
OUTCOME_PASS = 90.0  # MS-SWD ×10³ at 16 px
OUTCOME_CHECK = "train_step_trains_a_model"
#: The recipe's scores, measured by ``python data_scripts/outcome_calibration.py`` (seeds 0–3, 2 CPU cores): the
#: range of MS-SWD ×10³ per kind of ``train_step`` ("correct": the reference and every correct variant of
#: tests/mistakes.py; the others: a step that trains nothing, and each typical mistake the check must catch). The
#: check's message quotes it, and tests/test_course_sync.py keeps lesson 4's text and solutions/README.md equal to it.
OUTCOME_MEASURED: dict[str, tuple[int, int]] = {
    "correct": (50, 64),
    "untrained": (130, 133),
    "train_step_no_zero_grad": (117, 332),
    "train_step_no_clipping": (760, 760),  # diverges: every sample saturates
    "train_step_clips_after_step": (760, 760),
    "train_step_loss_on_x0": (137, 138),
    "train_step_t_continuous": (106, 108),
}


def quoted_range(kind: str, measured: dict[str, tuple[int, int]] = OUTCOME_MEASURED) -> str:
    """``measured[kind]`` (an outcome check's calibration, by default this one's) as the texts quote it, "50–64";
    kind "mistakes": the range over every mistake."""
    if kind == "mistakes":
        ranges = [r for k, r in measured.items() if k not in ("correct", "untrained")]
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    else:
        lo, hi = measured[kind]
    return f"{lo}–{hi}" if lo != hi else f"{lo}"


def outcome_unet() -> nn.Module:
    """The outcome check's network, untrained: a U-Net 16/32, one ResBlock per level, no attention (1×16×16)."""
    return R.UNet(1, channels=(16, 32), num_res_blocks=1, attention=False, groups=8)


def outcome_schedule() -> R.NoiseSchedule:
    """The outcome check's diffusion: cosine schedule, T = 100."""
    return R.NoiseSchedule.from_name("cosine", 100)


@functools.cache
def _reference_outcome_weights() -> dict[str, Tensor]:
    model, _, _ = outcome_model(R.train_step)
    return {k: v.clone() for k, v in model.state_dict().items()}


def reference_outcome_model() -> tuple[nn.Module, R.NoiseSchedule]:
    """:func:`outcome_model` of the reference ``train_step`` (seed 0) as a fresh module (eval mode) and its schedule;
    the training runs once per process, each call loads its weights into a new :func:`outcome_unet`."""
    model = outcome_unet()
    model.load_state_dict(_reference_outcome_weights())
    return model.eval(), outcome_schedule()


def outcome_model(train_step, seed: int = 0) -> tuple[nn.Module, R.NoiseSchedule, list[float]]:
    """The outcome check's U-Net trained by ``train_step``: (model in eval mode, schedule, the loss of every step).

    ``OUTCOME_STEPS`` calls of ``train_step(model, optimizer, x0, schedule, generator=g, grad_clip=1.0)`` on batches
    of 16 of the 90 LFW training faces at 16×16 (cosine schedule, T = 100), plain SGD at ``OUTCOME_LR`` with
    momentum 0.9. The global RNG is left as it was.
    """
    faces = R.lfw_faces("train", size=16)
    schedule = outcome_schedule()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = outcome_unet()
        optimizer = torch.optim.SGD(model.parameters(), lr=OUTCOME_LR, momentum=0.9)
        g = torch.Generator().manual_seed(seed)
        model.train()
        losses = []
        for _ in range(OUTCOME_STEPS):
            x0 = faces[torch.randint(0, len(faces), (16,), generator=g)]
            out = train_step(model, optimizer, x0, schedule, generator=g, grad_clip=1.0)
            losses.append(float(out) if isinstance(out, (int, float, Tensor)) else float("nan"))
    return model.eval(), schedule, losses


def outcome_samples_score(x: object) -> float:
    """MS-SWD ×10³ of samples [N, 1, 16, 16] against the training faces at 16×16, finest level of
    :func:`ddpm_ref.metrics.ms_swd`; non-finite values count as 0, anything but such a tensor scores inf."""
    from ddpm_ref.metrics import ms_swd

    if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, 16, 16) or len(x) < 2:
        return float("inf")
    x = torch.nan_to_num(x.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).clamp(-1, 1)
    return ms_swd(x, R.lfw_faces("train", size=16), seed=0).levels[0][1]


def trained_outcome_weights(train_step, seed: int) -> tuple[dict[str, Tensor], list[float]]:
    """Run where ``train_step`` lives (:func:`on_student_side`: one request for the whole training instead of one per
    step): :func:`outcome_model`'s weights and losses, as plain data."""
    model, _, losses = outcome_model(train_step, seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def outcome_score(train_step, seed: int = 0, sample=None) -> tuple[float, list[float]]:
    """Train with ``train_step`` (:func:`outcome_model`, where the student's code lives), then here draw
    ``OUTCOME_SAMPLES`` samples from fixed noise with ``sample`` (default: the reference sampler, Algorithm 2) from
    the same U-Net with the trained weights and score them: (MS-SWD ×10³ at 16 px, losses)."""
    weights, losses = on_student_side(trained_outcome_weights, train_step, seed)
    model, schedule = outcome_unet(), outcome_schedule()
    model.load_state_dict(weights)
    model.eval()
    with torch.random.fork_rng():
        x = (sample or R.sample)(model, schedule, (OUTCOME_SAMPLES, 1, 16, 16),
                                 generator=torch.Generator().manual_seed(1), progress=False)
    return outcome_samples_score(x), losses


@check("train_step")
def test_train_step_trains_a_model(impl) -> None:
    """The outcome: 200 of your steps train a small U-Net whose samples look like the training faces.

    :func:`outcome_score`: a U-Net 16/32 on the LFW faces at 16×16, plain SGD (lr 0.2, momentum 0.9) so that every
    part of a step shows in the result: without ``zero_grad`` the gradients pile up, and at this rate only a gradient
    clipped to norm 1 before ``optimizer.step()`` keeps training stable. Score: MS-SWD ×10³ at 16 px of 32 samples
    against the training faces (lower is closer); pass mark ``OUTCOME_PASS``. ``OUTCOME_MEASURED`` holds what correct
    steps, an untrained model and each typical mistake score over seeds 0–3 (about 7 s each).
    """
    score, losses = outcome_score(impl.train_step)
    if score <= OUTCOME_PASS:
        return
    finite = [v for v in losses if v == v and abs(v) != float("inf")]
    if len(finite) < len(losses):
        hint = ("the loss became nan/inf: training diverged. Clip the gradient norm (clip_grad_norm_) after "
                "backward() and before optimizer.step(), and clear the gradients every step")
    else:
        hint = ("each step must clear the old gradients (zero_grad), compare the model's output with the noise ε, "
                "not x0 (ddpm_loss), draw t uniformly from {0, …, T−1}, and clip before optimizer.step()")
    first, last = (sum(finite[:20]) / max(len(finite[:20]), 1), sum(finite[-20:]) / max(len(finite[-20:]), 1))
    raise Failure(
        f"a small U-Net trained by {OUTCOME_STEPS} of your train_step calls should sample faces with MS-SWD ≤ "
        f"{OUTCOME_PASS:.0f} at 16 px (a correct step reaches {quoted_range('correct')}, an untrained model "
        f"{quoted_range('untrained')}); yours scores "
        f"{score:.1f} (mean loss {first:.3g} over the first 20 steps, {last:.3g} over the last 20).",
        hint,
    )
