"""The Trainer's checkpoint (:class:`Checkpointing`, a part of :class:`~ddpm_ref.training.trainer.Trainer`):
everything ``state_dict`` writes and ``load`` restores, so that a resumed run continues bit-exactly (the format is
described in :mod:`ddpm_ref.training.checkpoint`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .checkpoint import (
    CKPT_FORMAT,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    resume_check,
)
from .distributed import all_gather_objects
from .ema import ema_state, load_ema_state
from .log import truncate_loss_log

__all__ = ["Checkpointing"]


class Checkpointing:
    """The Trainer's checkpoint: everything it needs to continue bit-exactly. Uses the Trainer's model, EMA,
    optimizer, LR schedule, scaler, generator, counters and ``dist``."""

    def save(self, milestone: bool = False) -> Path:
        """Write ckpt_latest.pt (and ckpt_epoch_XXX.pt when ``milestone``) atomically; rank 0 writes."""
        state = self.state_dict()
        latest = self.ckpt_dir / "ckpt_latest.pt"
        if self.write:
            atomic_save(state, latest)
            if milestone:
                atomic_save(state, self.ckpt_dir / f"ckpt_epoch_{self.epoch:03d}.pt")
        return latest

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict now. Collective under DDP: call on every rank."""
        gens = all_gather_objects(self.generator.get_state().cpu(), self.dist)
        ema_sd, n_avg = ema_state(self.ema)
        return {
            "format": CKPT_FORMAT,
            "config": self.config.to_dict(),
            "model": self.net.state_dict(),
            "ema": ema_sd,
            "ema_n_averaged": n_avg,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "epoch_step": self.epoch_step,
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_loss_count": self.epoch_loss_count,
            "nonfinite_steps": self.nonfinite_steps,
            "skipped_images": self.skipped_images,
            "elapsed_s": self.elapsed_before + self.session_elapsed(),
            "world_size": self.dist.world_size,
            "rng": {**capture_rng_state(), "train_generators": gens},
        }


    def load(self, path: str | Path) -> None:
        """Restore ``trainer`` from a checkpoint written by :meth:`save` (exact resume); a changed setting
        outside :data:`~ddpm_ref.training.checkpoint.FREE_FIELDS` or another number of processes is warned about."""
        ckpt = load_checkpoint(path, map_location="cpu")
        if ckpt.get("format") != CKPT_FORMAT:
            raise ValueError(f"{str(path)!r} is an exported model, not a training checkpoint: cannot resume from it")
        check = resume_check(dict(ckpt["config"]), self.config)
        load_weights(self.net, ckpt["model"], source=f"{str(path)!r}")
        if check and self.is_main:
            warnings.warn(f"resuming {path} with changed settings {check.keys}: the run is no longer one "
                          "reproducible experiment", stacklevel=3)
        load_ema_state(self.ema, ckpt["ema"], int(ckpt["ema_n_averaged"]))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.step = int(ckpt["step"])
        self.epoch_step = min(int(ckpt["epoch_step"]), self.steps_per_epoch)
        self.epoch_loss_sum = float(ckpt["epoch_loss_sum"])
        self.epoch_loss_count = int(ckpt["epoch_loss_count"])
        self.nonfinite_steps = int(ckpt["nonfinite_steps"])
        self.skipped_images = int(ckpt.get("skipped_images", 0))
        self.elapsed_before = float(ckpt["elapsed_s"])
        rng = ckpt["rng"]
        restore_rng_state(rng)
        gens = rng["train_generators"]
        if len(gens) == self.dist.world_size:
            self.generator.set_state(gens[self.dist.rank].to(self.generator.get_state().device))
        elif self.is_main:
            warnings.warn(f"checkpoint was written by {len(gens)} processes, now {self.dist.world_size}: "
                          "noise streams are reseeded (the run continues, not bit-exactly)", stacklevel=3)
        self.resumed_from = Path(ckpt["path"])
        if self.write:
            truncate_loss_log(self.csv_path, self.step)
