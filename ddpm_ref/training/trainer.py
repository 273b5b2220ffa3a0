"""The training engine of the seed run: Algorithm 1 of Ho et al. (2020) with AMP, EMA, cosine LR and checkpoints.

Two levels, both callable from a notebook:

- :func:`train_step` — one optimizer step on L_simple (eq. 14). The lesson asks students to write the same function.
- :class:`Trainer` / :func:`train` — the whole run for a :class:`~.config.TrainConfig`: data, model, EMA,
  AdamW + cosine LR, AMP policy of :mod:`ddpm_ref.speed.precision`, the speed switches of :mod:`ddpm_ref.speed.perf`
  (config fields, defaults per device), DataParallel or DDP, atomic checkpoints with exact
  resume, ``losses.csv`` + loss/LR plot and per-epoch EMA previews with fixed noise. Stops cleanly (and saves) at
  ``max_steps`` or after ``time_budget_s``; resumes from ``out_dir/checkpoints/ckpt_latest.pt`` automatically.

The Trainer is built from parts of its own, each in its module: :class:`~.setup.Setup` builds its loader and model,
:class:`~.state.Checkpointing` writes and restores its checkpoint, :class:`~.log.Previews` draws its previews
(:mod:`.log` also writes ``losses.csv``); :mod:`.dataset` holds its data and :mod:`.step` its step.

Output folder::

    config.json  losses.csv  loss.png  previews/epoch_0001.png …
    checkpoints/ckpt_latest.pt  checkpoints/ckpt_epoch_010.pt …

Example::

    from ddpm_ref.training.config import get_config
    from ddpm_ref.train import train
    result = train(get_config("lfw-tiny", max_steps=200), "runs/try")
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import uint8_to_unit
from ..guidance import drop_labels
from ..progress import progress_bar
from ..speed import perf
from ..speed.perf import resolve_device
from .config import TrainConfig
from .dataset import build_dataset
from .distributed import DistInfo, all_reduce_sum, cleanup_distributed, init_distributed
from .ema import unwrap
from .log import LOSS_COLUMNS, Previews, TrainResult, append_loss_log
from .setup import Setup
from .state import Checkpointing
from .step import StepStats, train_step, train_step_stats

__all__ = [
    "train_step",
    "train_step_stats",
    "StepStats",
    "Callback",
    "TrainResult",
    "Trainer",
    "train",
    "build_dataset",
    "resolve_device",  # lives in ddpm_ref.speed.perf; kept importable from here
    "LOSS_COLUMNS",
]


# ------------------------------------------------------------------------------------------------ trainer


class Callback:
    """Hooks called on the main process (rank 0). Subclass and override what you need."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int, stats: StepStats) -> None: ...

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None: ...

    def on_preview(self, trainer: Trainer, images: Tensor, path: Path) -> None: ...

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None: ...


class Trainer(Setup, Checkpointing, Previews):
    """Everything of one training run, set up in ``__init__`` and run by :meth:`fit`.

    Args:
        config: the run's settings.
        out_dir: where outputs go; an existing ``checkpoints/ckpt_latest.pt`` there is resumed when ``resume``.
        dataset: optional images instead of ``config.data`` — a Tensor [N, C, H, W] in [−1, 1] or a Dataset.
        callbacks: :class:`Callback` objects (rank 0 only).
        progress: tqdm bars for epochs and steps (rank 0 only).
        write_outputs: False runs without writing anything (no checkpoints, CSV or previews).

    Attributes during and after the run: ``model`` (possibly wrapped), ``ema`` (``ema.module`` is the EMA U-Net),
    ``optimizer``, ``lr_scheduler``, ``scaler``, ``schedule``, ``step``, ``epoch``, ``steps_per_epoch``, ``dist``,
    ``perf`` (the :class:`~ddpm_ref.speed.perf.PerfOptions` applied: the config's speed fields, defaults per device).

    :meth:`fit` is a short loop: :meth:`run_epoch` until a stop reason, each calling :meth:`run_step` per batch.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        dataset: Dataset | Tensor | None = None,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
        resume: bool = True,
        write_outputs: bool = True,
    ) -> None:
        config.validate()
        self.config = config
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.callbacks = list(callbacks)
        self.dist: DistInfo = init_distributed() if config.parallel in ("auto", "ddp") else DistInfo()
        if config.parallel == "ddp" and not self.dist.enabled:
            warnings.warn("parallel=ddp but this is a single process: launch with torchrun --nproc_per_node N",
                          stacklevel=2)
        self.is_main = self.dist.is_main
        self.progress = progress and self.is_main
        self.write = write_outputs and self.is_main
        self.device = resolve_device(config.device, self.dist.local_rank)
        self.perf = perf.train_options(config, self.device)  # the speed switches, defaults per device
        perf.configure(self.perf, self.device)

        # seeds: the model's initialisation and every draw below depend on config.seed only
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % 2**32)
        random.seed(config.seed)

        self._setup_data(dataset)  # data, sampler, loader, batch_per_rank, steps_per_epoch
        self._setup_model()  # schedule, U-Net, EMA, wrapper, AMP, optimizer, LR schedule, scaler
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 104_729 * self.dist.rank)
        self.preview_noise = torch.randn(config.preview_n, config.channels, config.image_size, config.image_size,
                                         generator=torch.Generator().manual_seed(config.seed + 1))

        # counters
        self.step = 0
        self.epoch = 0
        self.epoch_step = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_count = 0
        self.nonfinite_steps = 0
        self.skipped_images = 0
        self.elapsed_before = 0.0
        self.session_losses: list[float] = []  # the loss of every step of this session
        self.resumed_from: Path | None = None
        latest = self.ckpt_dir / "ckpt_latest.pt"
        if resume and latest.is_file():
            self.load(latest)

    @property
    def net(self) -> nn.Module:
        """The bare U-Net being trained (no DataParallel/DDP wrapper)."""
        return unwrap(self.model)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ---------------------------------------------------------------- logging

    @property
    def csv_path(self) -> Path:
        return self.out_dir / "losses.csv"

    def session_elapsed(self) -> float:
        """Seconds since this session's :meth:`fit` began (0 before)."""
        return time.monotonic() - self._t0 if hasattr(self, "_t0") else 0.0

    # ---------------------------------------------------------------- the loop

    def _stop_reason(self) -> str | None:
        c = self.config
        reason = None
        if c.max_steps > 0 and self.step >= c.max_steps:
            reason = "max_steps"
        elif c.time_budget_s > 0 and self.session_elapsed() >= c.time_budget_s:
            reason = "time_budget"
        if self.dist.enabled and c.time_budget_s > 0:  # every rank must stop at the same step
            flag = all_reduce_sum([1.0 if reason else 0.0], self.dist, self.device)[0]
            if flag > 0 and reason is None:
                reason = "time_budget"
        return reason

    def _batch(self, x: Tensor) -> Tensor:
        """A loader batch on the device as float [B, C, H, W] in [−1, 1] (uint8 pixels are mapped there on the
        device; channels_last per :attr:`perf`), half of it
        flipped left-right by the trainer's own seeded generator (so a resumed run flips the same images)."""
        x = perf.to_device(x, self.device, channels_last=self.perf.channels_last)
        x = uint8_to_unit(x) if x.dtype == torch.uint8 else x.float()
        if self.config.hflip:
            flip = torch.rand(x.shape[0], generator=self.generator, device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def fit(self) -> TrainResult:
        """Train until ``epochs`` are done, ``max_steps`` is reached or ``time_budget_s`` runs out; then save."""
        self._begin()
        stopped = self._stop_reason_at_start()
        while stopped is None:
            stopped = self.run_epoch()
        return self._finish(stopped)

    def _begin(self) -> None:
        """Start a session: config.json (and a new losses.csv for a new run), callbacks, the epochs bar."""
        c = self.config
        self._t0 = time.monotonic()
        if self.write:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            c.save_json(self.out_dir / "config.json")
            if self.resumed_from is None and self.step == 0:
                self.csv_path.unlink(missing_ok=True)  # a new run (or --fresh) starts a new log
        for cb in self.callbacks if self.is_main else ():
            cb.on_train_start(self)
        self.model.train()
        self.session_losses = []
        self._epochs_bar = progress_bar(total=c.epochs, initial=self.epoch, desc="epochs",
                                        disable=not self.progress, dynamic_ncols=True)

    def _stop_reason_at_start(self) -> str | None:
        """A resumed run that is already done stops before any step; otherwise the time budget is checked
        after each step, so a session always makes progress."""
        if self.config.max_steps > 0 and self.step >= self.config.max_steps:
            return "max_steps"
        return "epochs" if self.epoch >= self.config.epochs else None

    def run_epoch(self) -> str | None:
        """The rest of the current epoch, step by step. A completed epoch is ended (CSV row, preview,
        checkpoint); one stopped part-way is saved where it stopped. Returns why training stops, or None."""
        self.sampler.set_epoch(self.epoch, start=self.epoch_step * self.batch_per_rank)
        t0, images, stopped = time.monotonic(), 0, None
        bar = progress_bar(total=self.steps_per_epoch, initial=self.epoch_step, desc=f"epoch {self.epoch + 1}",
                           leave=False, disable=not self.progress, dynamic_ncols=True)
        for x, n_bad, *label in self.loader:
            stats = self.run_step(x, skipped=int(n_bad.sum()), labels=label[0] if label else None)
            images += x.shape[0] * self.dist.world_size
            self._after_step(stats, bar)
            stopped = self._stop_reason()
            if stopped is not None:
                break
        bar.close()
        if self.epoch_step < self.steps_per_epoch:
            self.save()  # stopped part-way: the next session continues this epoch
            return stopped
        self._end_epoch(images, time.monotonic() - t0)
        self._epochs_bar.update(1)
        return stopped or ("epochs" if self.epoch >= self.config.epochs else None)

    def run_step(self, x: Tensor, skipped: int = 0, labels: Tensor | None = None) -> StepStats:
        """One optimizer step on a loader batch x [B, C, H, W] (Algorithm 1): flip, L_simple step (AMP, clip,
        skip if non-finite), EMA update, LR schedule, counters. ``skipped``: unreadable images behind the batch;
        ``labels`` [B]: the classes of a class-conditional run, dropped to ∅ with probability ``p_uncond``."""
        c = self.config
        if labels is not None:  # label dropout (classifier-free guidance, Ho & Salimans 2022)
            labels = drop_labels(labels.to(self.device), c.p_uncond, c.num_classes, generator=self.generator)
        stats = train_step_stats(self.model, self.optimizer, self._batch(x), self.schedule, generator=self.generator,
                                 grad_clip=c.grad_clip, scaler=self.scaler, amp_dtype=self.amp_dtype,
                                 objective=c.objective, labels=labels)
        if stats.applied:
            self.ema.update_parameters(self.net)
        self.lr_scheduler.step()
        self.step += 1
        self.epoch_step += 1
        self.skipped_images += skipped
        self.session_losses.append(stats.loss)
        if math.isfinite(stats.loss):
            self.epoch_loss_sum += stats.loss
            self.epoch_loss_count += 1
        if not (stats.applied and math.isfinite(stats.loss)):
            self.nonfinite_steps += 1
            if self.is_main and (self.scaler is None or self.nonfinite_steps > 20):
                warnings.warn(f"step {self.step}: non-finite loss {stats.loss} or gradient norm {stats.grad_norm}: "
                              f"update skipped ({self.nonfinite_steps} so far)", stacklevel=2)
        return stats

    def _after_step(self, stats: StepStats, bar: Any) -> None:
        """Progress bar, step callbacks and the periodic mid-epoch checkpoint."""
        bar.update(1)
        if self.progress and self.step % 10 == 0:
            bar.set_postfix(loss=f"{stats.loss:.4f}", lr=f"{self.lr:.2e}")
        for cb in self.callbacks if self.is_main else ():
            cb.on_step_end(self, self.step, stats)
        every = self.config.save_every_steps
        if every > 0 and self.step % every == 0 and self.epoch_step < self.steps_per_epoch:
            self.save()

    def _finish(self, stopped: str) -> TrainResult:
        """End the session: close the bar, plot the losses, report (the checkpoint is already written)."""
        self._epochs_bar.close()
        if self.write and self.csv_path.is_file():
            from ..plots import plot_losses

            plot_losses(self.csv_path, self.out_dir / "loss.png", title=f"{self.config.name}: loss and learning rate")
        tail = [v for v in self.session_losses[-50:] if math.isfinite(v)]
        result = TrainResult(
            out_dir=self.out_dir, step=self.step, epoch=self.epoch, stopped=stopped,
            final_loss=float(np.mean(tail)) if tail else float("nan"),
            elapsed_s=self.session_elapsed(), total_elapsed_s=self.elapsed_before + self.session_elapsed(),
            nonfinite_steps=self.nonfinite_steps, skipped_images=self.skipped_images,
            checkpoint=self.ckpt_dir / "ckpt_latest.pt", step_losses=self.session_losses,
        )
        for cb in self.callbacks if self.is_main else ():
            cb.on_train_end(self, result)
        return result

    def _end_epoch(self, images: int, seconds: float) -> None:
        c = self.config
        total, count = all_reduce_sum([self.epoch_loss_sum, float(self.epoch_loss_count)], self.dist, self.device)
        self.epoch += 1
        row = {"epoch": self.epoch, "step": self.step, "loss": total / count if count else float("nan"),
               "lr": self.lr, "images_per_s": images / max(seconds, 1e-9),
               "elapsed_s": self.elapsed_before + self.session_elapsed()}
        self.epoch_step = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_count = 0
        if self.write:
            append_loss_log(self.csv_path, [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}])
        self._write_preview()
        milestone = c.milestone_every > 0 and self.epoch % c.milestone_every == 0
        self.save(milestone=milestone)
        for cb in self.callbacks if self.is_main else ():
            cb.on_epoch_end(self, row)

    def close(self) -> None:
        """Leave the process group if this trainer joined it."""
        cleanup_distributed(self.dist)


def train(config: TrainConfig, out_dir: str | Path, **kwargs: Any) -> TrainResult:
    """Build a :class:`Trainer` (``kwargs``: its keyword arguments) and run it:
    ``train(get_config("lfw-tiny"), "runs/lfw-tiny")``."""
    trainer = Trainer(config, out_dir, **kwargs)
    try:
        return trainer.fit()
    finally:
        trainer.close()

