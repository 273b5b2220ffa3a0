"""Exponential moving average of the parameters, on torch's own ``torch.optim.swa_utils.AveragedModel``.

θ_ema ← decay·θ_ema + (1 − decay)·θ after every optimizer step (the first update copies θ). Only parameters are
averaged (``use_buffers=False``): the U-Net's buffers (the sinusoidal frequencies) are constants, and a
schedule never lives in the model. Previews, samples and evaluation use ``ema.module``.

Warm-up (``warmup=True``): update n (0-based, after the copy) uses decay_n = min(decay, (1 + n) / (10 + n)), the
rule of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``, so early in a run the average spans about the
last n/9 updates instead of ~1/(1 − decay) of them and does not drag the weights of the first steps along;
from n ≈ 9·decay/(1 − decay) on it is the plain EMA. The number of updates is ``ema.n_averaged``, which
checkpoints store, so a resumed run continues the same sequence.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["make_ema", "ema_state", "load_ema_state", "unwrap", "warmup_decay"]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DataParallel / DistributedDataParallel / AveragedModel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel, AveragedModel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def warmup_decay(decay: float, n: int) -> float:
    """The decay of EMA update ``n`` (0-based count of updates after the initial copy) with warm-up."""
    return min(decay, (1.0 + n) / (10.0 + n))


def _warmup_ema_fn(decay: float):  # noqa: ANN202 (torch's multi_avg_fn signature)
    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor | int) -> None:
        # AveragedModel passes its count before this update (≥ 1: the first update copied the weights)
        d = warmup_decay(decay, int(n_averaged) - 1)
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return update


def make_ema(model: nn.Module, decay: float = 0.999, *, warmup: bool = False) -> AveragedModel:
    """An EMA copy of the (unwrapped) model; call ``ema.update_parameters(model)`` after each step.

    ``warmup``: ramp the decay up as min(decay, (1 + n)/(10 + n)) (module docs); off keeps a fixed decay."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    fn = _warmup_ema_fn(decay) if warmup else get_ema_multi_avg_fn(decay)
    ema = AveragedModel(unwrap(model), multi_avg_fn=fn, use_buffers=False)
    ema.requires_grad_(False)
    return ema.eval()


def ema_state(ema: AveragedModel) -> tuple[dict[str, torch.Tensor], int]:
    """(unwrapped state dict of the averaged model, number of updates so far)."""
    return unwrap(ema).state_dict(), int(ema.n_averaged.item())


def load_ema_state(ema: AveragedModel, state: dict[str, torch.Tensor], n_averaged: int) -> None:
    """Inverse of :func:`ema_state`."""
    unwrap(ema).load_state_dict(state)
    ema.n_averaged.fill_(n_averaged)
