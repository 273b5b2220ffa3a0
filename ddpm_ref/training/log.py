"""What a training run reports: the :class:`TrainResult` of a session, ``losses.csv`` and the per-epoch previews of
the EMA model (:class:`Previews`, a part of the :class:`~ddpm_ref.training.trainer.Trainer`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..flow import heun_sample
from ..samplers import sample
from ..speed.precision import autocast

__all__ = ["TrainResult", "LOSS_COLUMNS", "truncate_loss_log", "append_loss_log", "Previews"]

#: the columns of ``losses.csv``: one row per epoch
LOSS_COLUMNS = ["epoch", "step", "loss", "lr", "images_per_s", "elapsed_s"]


@dataclass
class TrainResult:
    """Summary of a :meth:`Trainer.fit` call."""

    out_dir: Path
    step: int
    epoch: int
    stopped: str  # "epochs", "max_steps" or "time_budget"
    final_loss: float  # mean loss of the last up-to-50 steps of this session (nan if none)
    elapsed_s: float  # this session's wall time
    total_elapsed_s: float  # over all sessions of the run
    nonfinite_steps: int
    skipped_images: int
    checkpoint: Path
    step_losses: list[float] = field(default_factory=list)


def truncate_loss_log(path: Path, step: int) -> None:
    """Drop rows written after ``step`` (a crash between the CSV row and the checkpoint being resumed)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    append_loss_log(path, rows, mode="w")


def append_loss_log(path: Path, rows: list[dict[str, Any]], mode: str = "a") -> None:
    """Append ``rows`` (``mode="w"``: replace the file), writing the header to a new file."""
    new = mode == "w" or not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode if not new else "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOSS_COLUMNS)
        if new:
            w.writeheader()
        w.writerows(rows)


class Previews:
    """The Trainer's previews: samples of its EMA model from fixed noise, drawn every ``preview_every`` epochs.
    Uses the Trainer's ``config``, ``device``, ``amp_dtype``, ``ema``, ``schedule``, ``preview_noise``, ``epoch``,
    ``out_dir``, ``write`` and ``callbacks``."""

    @torch.no_grad()
    def preview(self, n: int | None = None) -> Tensor:
        """Samples [n, C, H, W] of the EMA model from the fixed preview noise (same noise every epoch).

        DDPM models: all T steps of Algorithm 2; flow-matching models: 25 Heun steps (50 network calls).
        """
        n = n or self.config.preview_n
        g = torch.Generator(device=self.device).manual_seed(self.config.seed + 2)
        with autocast(self.device, self.amp_dtype):
            if self.config.objective == "flow":
                x = heun_sample(self.ema.module, self.preview_noise[:n].shape, steps=25,
                                x1=self.preview_noise[:n].to(self.device), progress=False)
                return x.float().cpu()
            x = sample(self.ema.module, self.schedule, self.preview_noise[:n].shape, generator=g,
                       x_T=self.preview_noise[:n].to(self.device), progress=False)
        return x.float().cpu()

    def _write_preview(self) -> None:
        """``previews/epoch_XXXX.png`` every ``preview_every`` epochs and after the last one (rank 0, when
        writing)."""
        if not (self.write and self.config.preview_every > 0 and self.config.preview_n > 0):
            return
        if self.epoch % self.config.preview_every and self.epoch != self.config.epochs:
            return
        from ..plots import auto_scale, save_grid

        images = self.preview()
        path = save_grid(images, self.out_dir / "previews" / f"epoch_{self.epoch:04d}.png",
                         scale=auto_scale(self.config.image_size))
        for cb in self.callbacks:
            cb.on_preview(self, images, path)
