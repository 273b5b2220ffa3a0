"""``torch.compile`` with a clean fallback: a compiler that fails on this machine leaves the eager model running."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .precision import autocast

__all__ = ["CompileResult", "compile_model"]


@dataclass
class CompileResult:
    """What :func:`compile_model` returned: the module to call, and why it is eager if compiling failed."""

    model: nn.Module
    compiled: bool
    error: str | None = None


def compile_model(
    model: nn.Module,
    *,
    mode: str | None = None,
    example: Sequence[Tensor] | None = None,
    backward: bool = False,
    amp_dtype: torch.dtype | None = None,
    backend: str | Any = "inductor",
) -> CompileResult:
    """``torch.compile(model)`` with a clean fallback: any failure returns the eager model and the reason.

    Compilation is lazy, so with ``example`` (e.g. ``(x [B, C, H, W], t [B])``) one trial call runs now (under
    autocast ``amp_dtype``; with a backward pass of the output's sum when ``backward``; gradients are then
    cleared) and a compiler error surfaces here instead of in the first training step. The compiled module
    shares its parameters with ``model``; :func:`ddpm_ref.training.ema.unwrap` returns the bare model.
    """
    try:
        compiled = torch.compile(model, mode=mode, backend=backend, dynamic=False)
        if example is not None:
            device = example[0].device
            with autocast(device, amp_dtype):
                out = compiled(*example)
            if backward:
                out.float().sum().backward()
                model.zero_grad(set_to_none=True)
        return CompileResult(compiled, True)
    except Exception as e:  # no compiler, unsupported GPU, a graph break that errors: run eager
        model.zero_grad(set_to_none=True)
        torch._dynamo.reset()
        reason = _reason(e)
        warnings.warn(f"torch.compile failed, running eager instead ({reason})", stacklevel=2)
        return CompileResult(model, False, reason)


def _reason(e: BaseException) -> str:
    """One line naming the exception and its root cause (the compiler's own error, not dynamo's wrapper)."""
    root = e
    for _ in range(10):  # dynamo keeps the backend's error in inner_exception, others chain it as __cause__
        inner = getattr(root, "inner_exception", None) or root.__cause__
        if not isinstance(inner, BaseException) or inner is root:
            break
        root = inner
    first = next((ln.strip() for ln in str(root).splitlines() if ln.strip()), "")
    where = f"{type(e).__name__} ← " if root is not e else ""
    return f"{where}{type(root).__name__}: {first}"[:300]
