"""Assertions shared by the checks: type, shape, dtype and device first, then values, each with a hint.

Every failure is an ``AssertionError`` whose message says what was expected, what came out and what the
usual mistake is. ``diagnoses`` lists wrong answers that typical mistakes produce: when the student's
output matches one of them, its hint replaces the generic one. A failure with a hint is a
:class:`~tests.harness.Failure`, which keeps the hint as the named mistake (what the class report counts).
"""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tests.harness import CheckSkipped, Failure

#: (wrong answer, or a function returning it; hint shown when the student's output matches it)
Diagnosis = tuple[Any, str]


def fmt(x: Any, n: int = 4, around: int | None = None) -> str:
    """A short readable form of a number or tensor: its first ``n`` values, or ``n`` values of the flattened
    tensor around flat index ``around`` (where two tensors differ most), with "…" where values are left out."""
    if isinstance(x, Tensor):
        flat = x.detach().reshape(-1).to("cpu", torch.float64)
        start = 0 if around is None else min(max(0, around - n // 2), max(0, flat.numel() - n))
        vals = ", ".join(f"{v:.5g}" for v in flat[start:start + n].tolist())
        before = "…, " if start > 0 else ""
        more = ", …" if flat.numel() > start + n else ""
        return f"[{before}{vals}{more}]" if x.ndim else vals
    if isinstance(x, float):
        return f"{x:.6g}"
    return repr(x)


def _hint(text: str) -> str:
    return f" Hint: {text}" if text else ""


def _fail(message: str, hint: str) -> AssertionError:
    """The error of a failed assertion: a :class:`~tests.harness.Failure` naming the mistake when there is a hint."""
    return Failure(message, hint) if hint else AssertionError(message)


def expect_tensor(
    out: Any,
    what: str,
    *,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    finite: bool = True,
    hint: str = "",
) -> Tensor:
    """Assert that ``out`` is a tensor of the given shape, dtype and device (and finite); return it."""
    if isinstance(out, tuple) and len(out) == 1:
        raise Failure(f"{what} should be a tensor, got a 1-tuple.", "remove the trailing comma after it")
    if not isinstance(out, Tensor):
        raise _fail(f"{what} should be a torch.Tensor, got {type(out).__name__}.", hint)
    if shape is not None and tuple(out.shape) != tuple(shape):
        raise _fail(f"{what} should have shape {list(shape)}, got {list(out.shape)}.", hint or _shape_hint(out, shape))
    if dtype is not None and out.dtype != dtype:
        extra = hint or (
            "mixing a float64 schedule table into float32 images gives float64: "
            "cast with .to(x.dtype) or use schedule.gather(...)" if out.dtype == torch.float64 else ""
        )
        raise _fail(f"{what} should have dtype {dtype}, got {out.dtype}.", extra)
    if device is not None and out.device != torch.device(device):
        raise _fail(f"{what} should be on {torch.device(device)} (the device of the input), got {out.device}.",
                    hint or "create new tensors with device=x.device")
    if finite and out.is_floating_point() and not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        extra = hint or "look for a division by zero or log(0)"
        raise _fail(f"{what} has {bad} NaN/inf values.", extra)
    return out


def _shape_hint(out: Tensor, shape: Sequence[int]) -> str:
    if out.ndim < len(shape):
        return "a dimension went missing: a reduction (sum/mean) over the wrong dim, or a squeeze?"
    if out.ndim > len(shape):
        return "an extra dimension: a per-sample factor [B] must be reshaped to [B, 1, 1, 1] before broadcasting"
    return "check the broadcasting of per-sample factors ([B] → [B, 1, 1, 1])"


def _as64(x: Any) -> Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def is_close(a: Any, b: Any, atol: float, rtol: float) -> bool:
    """Whether a and b (tensors or numbers) have the same shape and agree within atol + rtol·|b|."""
    try:
        a64, b64 = _as64(a), _as64(b)
    except Exception:
        return False
    if a64.shape != b64.shape:
        return False
    return bool(torch.allclose(a64, b64, atol=atol, rtol=rtol, equal_nan=False))


def diagnose(actual: Any, diagnoses: Iterable[Diagnosis], atol: float, rtol: float) -> str | None:
    """The hint of the first typical wrong answer that ``actual`` matches, if any."""
    for candidate, text in diagnoses:
        try:
            value = candidate() if callable(candidate) else candidate
        except Exception:
            continue
        if is_close(actual, value, atol, rtol):
            return text
    return None


def expect_close(
    actual: Any,
    expected: Any,
    what: str,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    hint: str = "",
    diagnoses: Iterable[Diagnosis] = (),
) -> None:
    """Assert |actual − expected| ≤ atol + rtol·|expected| everywhere (shapes must match exactly)."""
    a, e = _as64(actual), _as64(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{what} should have shape {list(e.shape)}, got {list(a.shape)}.")
    if bool(torch.allclose(a, e, atol=atol, rtol=rtol)):
        return
    diff = (a - e).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    idx = int(diff.reshape(-1).argmax()) if diff.numel() else 0
    where = f" at index {list(torch.unravel_index(torch.tensor(idx), a.shape))}" if a.ndim else ""
    where = where.replace("tensor(", "").replace(")", "")
    matched = diagnose(actual, diagnoses, max(atol, 1e-4), max(rtol, 1e-4))  # a float32 slip still matches
    message = (f"{what}: expected {fmt(e, around=idx) if a.ndim else fmt(expected)}, "
               f"got {fmt(a, around=idx) if a.ndim else fmt(actual)} "
               f"(largest difference {float(diff.max()):.3g}{where}).")
    if matched:  # a typical mistake's wrong answer: its hint names the mistake
        raise Failure(message, matched)
    raise AssertionError(message + _hint(hint))


def expect_float(out: Any, what: str, *, hint: str = "") -> float:
    """Assert that ``out`` is a Python float (or int); return it as float."""
    if isinstance(out, Tensor):
        raise _fail(f"{what} should be a Python float, got a tensor{fmt(out) and ' ' + fmt(out)}.",
                    hint or "return loss.item() / float(...)")
    if isinstance(out, bool) or not isinstance(out, (float, int)) and not hasattr(out, "__float__"):
        raise _fail(f"{what} should be a Python float, got {type(out).__name__}.", hint)
    return float(out)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``, dropping the cosmetic keyword ``progress`` when its signature does not take it."""
    if "progress" in kwargs:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "progress" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs.pop("progress")
    return fn(*args, **kwargs)


def on_student_side(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` where the student's objects live: here, or in the student's sandboxed process when
    the judge grades (:mod:`tests.judge`; ``fn`` then travels by value and must return plain data). For the few
    steps a check cannot take through a proxy: hooks, backward passes, autocast, in-place edits of parameters."""
    inner = [_unwrapped(a) for a in args]
    inner_kw = {k: _unwrapped(v) for k, v in kwargs.items()}
    if any(type(a).__module__.startswith("tests.judge") for a in (*inner, *inner_kw.values())):
        from tests.judge.remote import owner

        proc = owner(*inner, *inner_kw.values())
        if proc is not None:
            return proc.apply(fn, *inner, **inner_kw)
    return fn(*args, **kwargs)


def _unwrapped(value: Any) -> Any:
    """What a check's function wrapper (``functools.wraps``, as :func:`tests.harness._inputs_kept` wraps an exercise)
    calls: the student's function itself, which a backward pass must reach where it lives."""
    return value.__wrapped__ if isinstance(value, types.FunctionType) and hasattr(value, "__wrapped__") else value


def nudge_parameters(model: nn.Module, scale: float = 0.02, seed: int = 0) -> None:
    """Add small noise to every parameter, so that zero-initialised layers also pass information on."""
    on_student_side(_nudge, model, scale, seed)


def _nudge(model: nn.Module, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def load_reference_weights(student: nn.Module, reference: nn.Module, what: str) -> None:
    """Copy ``reference``'s weights into ``student`` when both name their parameters alike; else skip the check."""
    s, r = student.state_dict(), reference.state_dict()
    same = s.keys() == r.keys() and all(s[k].shape == r[k].shape for k in s)
    if not same:
        raise CheckSkipped(
            f"your {what} names its parameters differently from the reference ({', '.join(list(r)[:4])}, …), "
            "so its outputs cannot be compared with the same weights"
        )
    student.load_state_dict(r)


class Recorder(nn.Module):
    """Wraps a noise predictor and records every call: ``calls`` is a list of (x_t [B, …], t LongTensor [B]).

    Accepts t as an int, a 0-d tensor or a [B] tensor. Holds one dummy parameter so that code which looks
    up the model's device via ``next(model.parameters())`` works.
    """

    def __init__(self, inner: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor, t: Any) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.is_floating_point():
            if not bool((t == t.round()).all()):
                raise AssertionError(f"the model was called with non-integer timesteps {fmt(t)}")
        t = t.long()
        # contiguous copies: an int t expanded to a batch of one has stride 0, which the judge's wire cannot carry
        self.calls.append((x.detach().clone(memory_format=torch.contiguous_format),
                           t.clone(memory_format=torch.contiguous_format)))
        return self.inner(x, t)

    def ts(self) -> list[int]:
        """The timestep of each call (all samples of a call must share it)."""
        out = []
        for _, t in self.calls:
            if t.numel() and not bool((t == t[0]).all()):
                raise AssertionError(
                    f"one model call mixed timesteps {fmt(t)}: a sampler step uses one t for the batch"
                )
            out.append(int(t[0]) if t.numel() else -1)
        return out


def timesteps_summary(ts: Sequence[int]) -> str:
    """'399, 398, 397, …, 1, 0 (400 calls)' for a list of timesteps."""
    if len(ts) <= 8:
        return f"{', '.join(map(str, ts))} ({len(ts)} calls)"
    return f"{', '.join(map(str, ts[:3]))}, …, {', '.join(map(str, ts[-3:]))} ({len(ts)} calls)"
