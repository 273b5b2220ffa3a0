"""Exponential moving average of the parameters, on torch's own ``torch.optim.swa_utils.AveragedModel``.

θ_ema ← decay·θ_ema + (1 − decay)·θ after every optimizer step (the first update copies θ). Only parameters are
averaged (``use_buffers=False``): the U-Net's buffers (the sinusoidal frequencies) are constants, and a
schedule never lives in the model. Previews, samples and evaluation use ``ema.module``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["make_ema", "ema_state", "load_ema_state", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DataParallel / DistributedDataParallel / AveragedModel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel, AveragedModel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def make_ema(model: nn.Module, decay: float = 0.999) -> AveragedModel:
    """An EMA copy of the (unwrapped) model; call ``ema.update_parameters(model)`` after each step."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    ema = AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    ema.requires_grad_(False)
    return ema.eval()


def ema_state(ema: AveragedModel) -> tuple[dict[str, torch.Tensor], int]:
    """(unwrapped state dict of the averaged model, number of updates so far)."""
    return unwrap(ema).state_dict(), int(ema.n_averaged.item())


def load_ema_state(ema: AveragedModel, state: dict[str, torch.Tensor], n_averaged: int) -> None:
    """Inverse of :func:`ema_state`."""
    unwrap(ema).load_state_dict(state)
    ema.n_averaged.fill_(n_averaged)
