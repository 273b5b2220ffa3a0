"""One optimizer step of Algorithm 1 (Ho et al. 2020) on L_simple (eq. 14): the step the lesson asks students to
write, and the one the :class:`~ddpm_ref.training.Trainer` runs for every batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..diffusion import ddpm_loss, v_loss
from ..flow import flow_matching_loss
from ..guidance import conditional_ddpm_loss
from ..schedule import NoiseSchedule
from ..speed.precision import autocast

__all__ = ["StepStats", "train_step_stats", "train_step"]


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step did: the loss, the gradient norm before clipping, whether it was applied."""

    loss: float
    grad_norm: float
    applied: bool


def train_step_stats(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    grad_clip: float = 1.0,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    objective: str = "ddpm",
    labels: Tensor | None = None,
) -> StepStats:
    """:func:`train_step` that also reports the gradient norm and whether the step was applied.

    ``objective="flow"`` takes the flow-matching loss (:func:`~ddpm_ref.flow.flow_matching_loss`) instead of
    L_simple, ``schedule`` then unused; ``objective="v"`` the v-prediction loss (:func:`~ddpm_ref.diffusion.v_loss`,
    ``model`` a :class:`~ddpm_ref.diffusion.VPrediction`). ``labels`` [B] (already dropped to ∅ where wanted) train a
    class-conditional model ε_θ(x_t, t, c) instead.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(x0.device, amp_dtype):
        if objective == "flow":
            loss = flow_matching_loss(model, x0, generator=generator)
        elif objective == "v":
            loss = v_loss(model, x0, schedule, generator=generator)
        elif labels is not None:
            loss = conditional_ddpm_loss(model, x0, labels, schedule, generator=generator)
        else:
            loss = ddpm_loss(model, x0, schedule, generator=generator)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        applied = bool(torch.isfinite(grad_norm))
        scaler.step(optimizer)  # skips the update itself when unscale_ found inf/NaN
        scaler.update()
    else:
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        applied = bool(torch.isfinite(grad_norm))
        if applied:
            optimizer.step()
    return StepStats(float(loss.item()), float(grad_norm.item()), applied)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x0: Tensor, schedule: NoiseSchedule, *,
               generator: torch.Generator | None = None, grad_clip: float = 1.0,
               scaler: torch.amp.GradScaler | None = None, amp_dtype: torch.dtype | None = None) -> float:
    """One optimizer step on L_simple (Algorithm 1; eq. 14) for a batch x0 [B, C, H, W] in [−1, 1]; returns the loss.

    zero_grad(set_to_none) → ``ddpm_loss`` (t and ε drawn from ``generator``) under autocast when ``amp_dtype``
    → backward (through ``scaler`` if given) → unscale → ``clip_grad_norm_`` to ``grad_clip`` → the optimizer
    step, skipped when the gradient norm is not finite (a NaN/inf step is never applied).
    """
    return train_step_stats(model, optimizer, x0, schedule, generator=generator, grad_clip=grad_clip,
                            scaler=scaler, amp_dtype=amp_dtype).loss
