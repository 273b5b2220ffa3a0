"""A :class:`~ddpm_ref.train.Trainer`'s checkpoint: everything :meth:`~ddpm_ref.train.Trainer.state_dict` writes
and :meth:`~ddpm_ref.train.Trainer.load` restores, so that a resumed run continues bit-exactly (the format is
described in :mod:`ddpm_ref.checkpoint`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import (
    CKPT_FORMAT,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    resume_check,
)
from .distributed import all_gather_objects
from .ema import ema_state, load_ema_state
from .train_log import truncate_loss_log

if TYPE_CHECKING:
    from .train import Trainer

__all__ = ["trainer_state", "restore_trainer"]


def trainer_state(trainer: Trainer) -> dict[str, Any]:
    """The checkpoint dict of ``trainer`` now. Collective under DDP: call on every rank."""
    gens = all_gather_objects(trainer.generator.get_state().cpu(), trainer.dist)
    ema_sd, n_avg = ema_state(trainer.ema)
    return {
        "format": CKPT_FORMAT,
        "config": trainer.config.to_dict(),
        "model": trainer.net.state_dict(),
        "ema": ema_sd,
        "ema_n_averaged": n_avg,
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "epoch": trainer.epoch,
        "step": trainer.step,
        "epoch_step": trainer.epoch_step,
        "epoch_loss_sum": trainer.epoch_loss_sum,
        "epoch_loss_count": trainer.epoch_loss_count,
        "nonfinite_steps": trainer.nonfinite_steps,
        "skipped_images": trainer.skipped_images,
        "elapsed_s": trainer.elapsed_before + trainer.session_elapsed(),
        "world_size": trainer.dist.world_size,
        "rng": {**capture_rng_state(), "train_generators": gens},
    }


def restore_trainer(trainer: Trainer, path: str | Path) -> None:
    """Restore ``trainer`` from a checkpoint written by :func:`trainer_state` (exact resume); a changed setting
    outside :data:`~ddpm_ref.checkpoint.FREE_FIELDS` or another number of processes is warned about."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(f"{str(path)!r} is an exported model, not a training checkpoint: cannot resume from it")
    check = resume_check(dict(ckpt["config"]), trainer.config)
    load_weights(trainer.net, ckpt["model"], source=f"{str(path)!r}")
    if check and trainer.is_main:
        warnings.warn(f"resuming {path} with changed settings {check.keys}: the run is no longer one "
                      "reproducible experiment", stacklevel=3)
    load_ema_state(trainer.ema, ckpt["ema"], int(ckpt["ema_n_averaged"]))
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    if trainer.scaler is not None and ckpt.get("scaler"):
        trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.epoch = int(ckpt["epoch"])
    trainer.step = int(ckpt["step"])
    trainer.epoch_step = min(int(ckpt["epoch_step"]), trainer.steps_per_epoch)
    trainer.epoch_loss_sum = float(ckpt["epoch_loss_sum"])
    trainer.epoch_loss_count = int(ckpt["epoch_loss_count"])
    trainer.nonfinite_steps = int(ckpt["nonfinite_steps"])
    trainer.skipped_images = int(ckpt.get("skipped_images", 0))
    trainer.elapsed_before = float(ckpt["elapsed_s"])
    rng = ckpt["rng"]
    restore_rng_state(rng)
    gens = rng["train_generators"]
    if len(gens) == trainer.dist.world_size:
        trainer.generator.set_state(gens[trainer.dist.rank].to(trainer.generator.get_state().device))
    elif trainer.is_main:
        warnings.warn(f"checkpoint was written by {len(gens)} processes, now {trainer.dist.world_size}: "
                      "noise streams are reseeded (the run continues, not bit-exactly)", stacklevel=3)
    trainer.resumed_from = Path(ckpt["path"])
    if trainer.write:
        truncate_loss_log(trainer.csv_path, trainer.step)
