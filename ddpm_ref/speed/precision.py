"""Mixed-precision policy: which autocast dtype a device should use, and whether it needs a GradScaler.

GPUs of compute capability ≥ 8 (Ampere and later) run bf16 natively: bf16 autocast, no scaler.
Older GPUs (the T4 is 7.5) report bf16 as supported but emulate it slowly: fp16 autocast with a GradScaler.
On the CPU "auto" means bf16 autocast where the CPU computes bf16 in hardware (AVX512-BF16 or AMX) and fp32
elsewhere, where bf16 is emulated and slower: :func:`cpu_amp`, the one rule for CPU precision (measured by
``ddpm_ref.bench``; the other speed switches are in :mod:`ddpm_ref.speed.perf`).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

__all__ = ["AmpMode", "resolve_amp_dtype", "autocast", "needs_grad_scaler", "cpu_amp", "cpu_has_native_bf16"]

AmpMode = Literal["auto", "off", "fp16", "bf16"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 autocast is emulated."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def cpu_amp() -> str:
    """The ``amp`` mode to train with on this CPU: "bf16" where it computes bf16 in hardware, else "off" (fp32)."""
    return "bf16" if cpu_has_native_bf16() else "off"


def resolve_amp_dtype(device: torch.device | str, amp: AmpMode = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` under ``amp`` (None: full fp32)."""
    device = torch.device(device)
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp != "auto":
        raise ValueError(f"amp must be one of 'auto', 'off', 'fp16', 'bf16', got {amp!r}")
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_amp() == "bf16" else None
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the device when dtype is set, else a no-op context."""
    device = torch.device(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return dtype == torch.float16 and torch.device(device).type == "cuda"
