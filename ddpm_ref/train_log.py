"""What a training run reports: :class:`Callback` hooks, the :class:`TrainResult` of a session, ``losses.csv``
and the per-epoch previews of the EMA model."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .flow import heun_sample
from .precision import autocast
from .samplers import sample
from .step import StepStats

if TYPE_CHECKING:
    from .train import Trainer

__all__ = ["Callback", "TrainResult", "LOSS_COLUMNS", "truncate_loss_log", "append_loss_log", "preview_samples",
           "write_preview"]

#: the columns of ``losses.csv``: one row per epoch
LOSS_COLUMNS = ["epoch", "step", "loss", "lr", "images_per_s", "elapsed_s"]



class Callback:
    """Hooks called on the main process (rank 0). Subclass and override what you need."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int, stats: StepStats) -> None: ...

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None: ...

    def on_preview(self, trainer: Trainer, images: Tensor, path: Path) -> None: ...

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None: ...


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


@torch.no_grad()
def preview_samples(trainer: Trainer, n: int | None = None) -> Tensor:
    """Samples [n, C, H, W] of the EMA model from the fixed preview noise (same noise every epoch).

    DDPM models: all T steps of Algorithm 2; flow-matching models: 25 Heun steps (50 network calls).
    """
    n = n or trainer.config.preview_n
    g = torch.Generator(device=trainer.device).manual_seed(trainer.config.seed + 2)
    with autocast(trainer.device, trainer.amp_dtype):
        if trainer.config.objective == "flow":
            x = heun_sample(trainer.ema.module, trainer.preview_noise[:n].shape, steps=25,
                            x1=trainer.preview_noise[:n].to(trainer.device), progress=False)
            return x.float().cpu()
        x = sample(trainer.ema.module, trainer.schedule, trainer.preview_noise[:n].shape, generator=g,
                   x_T=trainer.preview_noise[:n].to(trainer.device), progress=False)
    return x.float().cpu()


def write_preview(trainer: Trainer) -> None:
    """``previews/epoch_XXXX.png`` every ``preview_every`` epochs and after the last one (rank 0, when writing)."""
    if not (trainer.write and trainer.config.preview_every > 0 and trainer.config.preview_n > 0):
        return
    if trainer.epoch % trainer.config.preview_every and trainer.epoch != trainer.config.epochs:
        return
    from .plots import auto_scale, save_grid

    images = trainer.preview()
    path = save_grid(images, trainer.out_dir / "previews" / f"epoch_{trainer.epoch:04d}.png",
                     scale=auto_scale(trainer.config.image_size))
    for cb in trainer.callbacks:
        cb.on_preview(trainer, images, path)
