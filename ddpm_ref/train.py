"""The training engine of the seed run: Algorithm 1 of Ho et al. (2020) with AMP, EMA, cosine LR and checkpoints.

Two levels, both callable from a notebook:

- :func:`train_step` — one optimizer step on L_simple (eq. 14). The lesson asks students to write the same function.
- :class:`Trainer` / :func:`train` — the whole run for a :class:`~ddpm_ref.config.TrainConfig`: data, model, EMA,
  AdamW + cosine LR, AMP policy of :mod:`ddpm_ref.precision`, DataParallel or DDP, atomic checkpoints with exact
  resume, ``losses.csv`` + loss/LR plot and per-epoch EMA previews with fixed noise. Stops cleanly (and saves) at
  ``max_steps`` or after ``time_budget_s``; resumes from ``out_dir/checkpoints/ckpt_latest.pt`` automatically.

Output folder::

    config.json  losses.csv  loss.png  previews/epoch_0001.png …
    checkpoints/ckpt_latest.pt  checkpoints/ckpt_epoch_010.pt …

Example::

    from ddpm_ref.config import get_config
    from ddpm_ref.train import train
    result = train(get_config("lfw-tiny", max_steps=200), "runs/try")
"""

from __future__ import annotations

import csv
import math
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .checkpoint import CKPT_FORMAT, atomic_save, capture_rng_state, load_checkpoint, load_weights, restore_rng_state
from .config import TrainConfig, build_model, build_schedule
from .data import ImageFolderDataset, digits, lfw_faces
from .diffusion import ddpm_loss
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, cleanup_distributed, init_distributed
from .ema import ema_state, load_ema_state, make_ema, unwrap
from .guidance import conditional_ddpm_loss, drop_labels
from .precision import autocast, needs_grad_scaler, resolve_amp_dtype
from .samplers import sample
from .schedule import NoiseSchedule

__all__ = [
    "train_step",
    "train_step_stats",
    "StepStats",
    "Callback",
    "TrainResult",
    "Trainer",
    "train",
    "build_dataset",
    "resolve_device",
    "LOSS_COLUMNS",
]

LOSS_COLUMNS = ["epoch", "step", "loss", "lr", "images_per_s", "elapsed_s"]
# fields that may change between a run and its resumption without a warning
_LENGTH_FIELDS = {"name", "epochs", "max_steps", "time_budget_s", "save_every_steps", "milestone_every",
                  "preview_every", "preview_n", "num_workers", "device", "parallel"}


# ------------------------------------------------------------------------------------------------ one step


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
    labels: Tensor | None = None,
) -> StepStats:
    """:func:`train_step` that also reports the gradient norm and whether the step was applied.

    ``labels`` [B] (already dropped to ∅ where wanted) train a class-conditional model ε_θ(x_t, t, c) instead.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(x0.device, amp_dtype):
        if labels is None:
            loss = ddpm_loss(model, x0, schedule, generator=generator)
        else:
            loss = conditional_ddpm_loss(model, x0, labels, schedule, generator=generator)
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


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    grad_clip: float = 1.0,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """One optimizer step on L_simple (Algorithm 1; eq. 14) for a batch x0 [B, C, H, W] in [−1, 1]; returns the loss.

    zero_grad(set_to_none) → ``ddpm_loss`` (t and ε drawn from ``generator``) under autocast when ``amp_dtype``
    → backward (through ``scaler`` if given) → unscale → ``clip_grad_norm_`` to ``grad_clip`` → the optimizer
    step, skipped when the gradient norm is not finite (a NaN/inf step is never applied).
    """
    return train_step_stats(model, optimizer, x0, schedule, generator=generator, grad_clip=grad_clip,
                            scaler=scaler, amp_dtype=amp_dtype).loss


# ------------------------------------------------------------------------------------------------ data


class _Images(Dataset):
    """Items (image [C, H, W], number of unreadable files skipped to get it), dataset repeated ``repeat`` times."""

    def __init__(self, base: Dataset | Tensor, repeat: int = 1) -> None:
        self.base = base
        self.n = len(base)
        self.repeat = repeat

    def __len__(self) -> int:
        return self.n * self.repeat

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        i %= self.n
        if isinstance(self.base, Tensor):
            return self.base[i], 0
        if isinstance(self.base, ImageFolderDataset):
            x, bad = self.base.load(i)
            return x, len(bad)
        item = self.base[i]
        return (item[0] if isinstance(item, (tuple, list)) else item), 0


class _LabelledImages(Dataset):
    """Items (image [C, H, W], 0, label) of labelled images, repeated ``repeat`` times (class-conditional runs)."""

    def __init__(self, images: Tensor, labels: Tensor, repeat: int = 1) -> None:
        self.images, self.labels, self.repeat = images, labels, repeat

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def __getitem__(self, i: int) -> tuple[Tensor, int, Tensor]:
        i %= len(self.images)
        return self.images[i], 0, self.labels[i]


def build_dataset(config: TrainConfig) -> Dataset | Tensor:
    """The training images of a config: the LFW train split (``data="lfw"``) or an :class:`ImageFolderDataset`.

    Flips are not done here: the trainer flips whole batches with its own seeded generator (exact resume).
    """
    if config.data == "digits":
        if config.channels != 1:
            raise ValueError("the digits are grayscale: use channels=1 with data=digits")
        return digits("train", size=config.image_size)[0]
    if config.data == "lfw":
        if config.channels != 1:
            raise ValueError("the LFW faces are grayscale: use channels=1 with data=lfw")
        return lfw_faces("train", size=config.image_size)
    if not config.data:
        raise ValueError(f"preset {config.name!r} needs a data folder: pass --data PATH (a folder of images), "
                         "e.g. /kaggle/input/celebahq256-images-only/data256x256")
    return ImageFolderDataset(config.data, config.image_size, channels=config.channels, hflip=False)


class _ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle per epoch, rank slice) that can start part-way into an epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:  # type: ignore[override]
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """"auto" → cuda:local_rank when CUDA is available, else cpu; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is cuda but no CUDA GPU is visible: use --device cpu (or auto)")
    return device


# ------------------------------------------------------------------------------------------------ callbacks


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


# ------------------------------------------------------------------------------------------------ trainer


class Trainer:
    """Everything of one training run, set up in ``__init__`` and run by :meth:`fit`.

    Args:
        config: the run's settings.
        out_dir: where outputs go; an existing ``checkpoints/ckpt_latest.pt`` there is resumed when ``resume``.
        dataset: optional images instead of ``config.data`` — a Tensor [N, C, H, W] in [−1, 1] or a Dataset.
        callbacks: :class:`Callback` objects (rank 0 only).
        progress: tqdm bars for epochs and steps (rank 0 only).
        write_outputs: False runs without writing anything (no checkpoints, CSV or previews).

    Attributes during and after the run: ``model`` (possibly wrapped), ``ema`` (``ema.module`` is the EMA U-Net),
    ``optimizer``, ``lr_scheduler``, ``scaler``, ``schedule``, ``step``, ``epoch``, ``steps_per_epoch``, ``dist``.
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

        # seeds: the model's initialisation and every draw below depend on config.seed only
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % 2**32)
        random.seed(config.seed)

        # data
        base = build_dataset(config) if dataset is None else dataset
        if isinstance(base, ImageFolderDataset):
            base.hflip = False  # the trainer flips whole batches itself, from its own seeded generator
        if isinstance(base, Tensor):
            if base.ndim != 4 or base.shape[1] != config.channels or base.shape[-1] != config.image_size:
                raise ValueError(f"dataset tensor must be [N, {config.channels}, {config.image_size}, "
                                 f"{config.image_size}], got {tuple(base.shape)}")
        self.data: Dataset = _Images(base, config.dataset_repeat)
        if config.num_classes:  # class-conditional: the digits with their labels (classifier-free guidance)
            if config.data != "digits" or dataset is not None:
                raise ValueError("num_classes > 0 needs labelled data: data=digits (and no dataset= tensor)")
            images, labels = digits("train", size=config.image_size)
            self.data = _LabelledImages(images, labels, config.dataset_repeat)
        ws = self.dist.world_size
        if config.batch_size % ws:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {ws} processes")
        self.batch_per_rank = config.batch_size // ws
        self.sampler = _ResumableSampler(self.data, num_replicas=ws, rank=self.dist.rank, shuffle=True,
                                         seed=config.seed, drop_last=True)
        self.steps_per_epoch = self.sampler.num_samples // self.batch_per_rank
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(self.data)} images are fewer than one batch of {config.batch_size}: lower "
                             "batch_size or raise dataset_repeat")
        self.loader = DataLoader(self.data, batch_size=self.batch_per_rank, sampler=self.sampler, drop_last=True,
                                 num_workers=config.num_workers, pin_memory=self.device.type == "cuda",
                                 persistent_workers=False)

        # model, EMA, optimisation
        self.schedule = build_schedule(config).to(self.device)
        net = build_model(config).to(self.device)
        self.ema = make_ema(net, config.ema_decay)
        self.model: nn.Module = net
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        elif (config.parallel in ("auto", "dp") and self.device.type == "cuda" and torch.cuda.device_count() > 1):
            self.model = nn.DataParallel(net)  # the seed's choice on Kaggle's T4 ×2
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.lr_scheduler = self._make_lr_scheduler()
        self.amp_dtype = resolve_amp_dtype(self.device, config.amp)  # type: ignore[arg-type]
        self.scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(self.device, self.amp_dtype) else None
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
        self.resumed_from: Path | None = None
        latest = self.ckpt_dir / "ckpt_latest.pt"
        if resume and latest.is_file():
            self.load(latest)

    # ---------------------------------------------------------------- setup helpers

    def _make_lr_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        c = self.config
        opt = self.optimizer
        if c.lr_schedule == "constant":
            return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
        warm = min(c.warmup_steps, max(self.total_steps - 1, 0))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.total_steps - warm, 1),
                                                            eta_min=c.min_lr)
        if warm <= 0:
            return cosine
        linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm)
        return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warm])

    @property
    def net(self) -> nn.Module:
        """The bare U-Net being trained (no DataParallel/DDP wrapper)."""
        return unwrap(self.model)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict (see :mod:`ddpm_ref.checkpoint`). Collective under DDP: call on every rank."""
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
            "elapsed_s": self.elapsed_before + self._session_elapsed(),
            "world_size": self.dist.world_size,
            "rng": {**capture_rng_state(), "train_generators": gens},
        }

    def save(self, milestone: bool = False) -> Path:
        """Write ckpt_latest.pt (and ckpt_epoch_XXX.pt when ``milestone``) atomically; rank 0 writes."""
        state = self.state_dict()
        latest = self.ckpt_dir / "ckpt_latest.pt"
        if self.write:
            atomic_save(state, latest)
            if milestone:
                atomic_save(state, self.ckpt_dir / f"ckpt_epoch_{self.epoch:03d}.pt")
        return latest

    def load(self, path: str | Path) -> None:
        """Restore everything from a checkpoint written by :meth:`save` (exact resume)."""
        ckpt = load_checkpoint(path, map_location="cpu")
        if ckpt.get("format") != CKPT_FORMAT:
            raise ValueError(f"{str(path)!r} is an exported model, not a training checkpoint: cannot resume from it")
        old = dict(ckpt["config"])
        new = self.config.to_dict()
        changed = sorted(k for k in new if k not in _LENGTH_FIELDS and old.get(k) != new[k])
        load_weights(self.net, ckpt["model"], source=f"{str(path)!r}")
        if changed and self.is_main:
            warnings.warn(f"resuming {path} with changed settings {changed}: the run is no longer one "
                          "reproducible experiment", stacklevel=2)
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
                          "noise streams are reseeded (the run continues, not bit-exactly)", stacklevel=2)
        self.resumed_from = Path(ckpt["path"])
        if self.write:
            self._truncate_csv()

    # ---------------------------------------------------------------- logging

    @property
    def csv_path(self) -> Path:
        return self.out_dir / "losses.csv"

    def _truncate_csv(self) -> None:
        """Drop CSV rows written after the checkpoint being resumed (a crash between CSV and checkpoint)."""
        if not self.csv_path.is_file():
            return
        with open(self.csv_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        self._write_csv(rows, mode="w")

    def _write_csv(self, rows: list[dict[str, Any]], mode: str = "a") -> None:
        new = mode == "w" or not self.csv_path.is_file()
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.csv_path, mode if not new else "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOSS_COLUMNS)
            if new:
                w.writeheader()
            w.writerows(rows)

    def _session_elapsed(self) -> float:
        return time.monotonic() - self._t0 if hasattr(self, "_t0") else 0.0

    # ---------------------------------------------------------------- previews

    @torch.no_grad()
    def preview(self, n: int | None = None) -> Tensor:
        """Samples [n, C, H, W] of the EMA model from the fixed preview noise (same noise every epoch)."""
        n = n or self.config.preview_n
        g = torch.Generator(device=self.device).manual_seed(self.config.seed + 2)
        with autocast(self.device, self.amp_dtype):
            x = sample(self.ema.module, self.schedule, self.preview_noise[:n].shape, generator=g,
                       x_T=self.preview_noise[:n].to(self.device), progress=False)
        return x.float().cpu()

    def _write_preview(self) -> None:
        if not (self.write and self.config.preview_every > 0 and self.config.preview_n > 0):
            return
        if self.epoch % self.config.preview_every and self.epoch != self.config.epochs:
            return
        from .plots import auto_scale, save_grid

        images = self.preview()
        path = save_grid(images, self.out_dir / "previews" / f"epoch_{self.epoch:04d}.png",
                         scale=auto_scale(self.config.image_size))
        for cb in self.callbacks:
            cb.on_preview(self, images, path)

    # ---------------------------------------------------------------- the loop

    def _stop_reason(self) -> str | None:
        c = self.config
        reason = None
        if c.max_steps > 0 and self.step >= c.max_steps:
            reason = "max_steps"
        elif c.time_budget_s > 0 and self._session_elapsed() >= c.time_budget_s:
            reason = "time_budget"
        if self.dist.enabled and c.time_budget_s > 0:  # every rank must stop at the same step
            flag = all_reduce_sum([1.0 if reason else 0.0], self.dist, self.device)[0]
            if flag > 0 and reason is None:
                reason = "time_budget"
        return reason

    def _batch(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True).float()
        if self.config.hflip:
            flip = torch.rand(x.shape[0], generator=self.generator, device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def fit(self) -> TrainResult:
        """Train until ``epochs`` are done, ``max_steps`` is reached or ``time_budget_s`` runs out; then save."""
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
        session_losses: list[float] = []
        stopped = None  # the time budget is checked after each step: a session always makes progress
        if c.max_steps > 0 and self.step >= c.max_steps:
            stopped = "max_steps"
        elif self.epoch >= c.epochs:
            stopped = "epochs"
        epochs_bar = tqdm(total=c.epochs, initial=self.epoch, desc="epochs", disable=not self.progress,
                          dynamic_ncols=True)
        while stopped is None:
            self.sampler.set_epoch(self.epoch, start=self.epoch_step * self.batch_per_rank)
            epoch_t0 = time.monotonic()
            epoch_images = 0
            steps_bar = tqdm(total=self.steps_per_epoch, initial=self.epoch_step, desc=f"epoch {self.epoch + 1}",
                             leave=False, disable=not self.progress, dynamic_ncols=True)
            for x, n_bad, *label in self.loader:
                labels = None
                if label:  # class-conditional: label dropout to ∅ with probability p_uncond (Ho & Salimans 2022)
                    labels = drop_labels(label[0].to(self.device), c.p_uncond, c.num_classes,
                                         generator=self.generator)
                stats = train_step_stats(self.model, self.optimizer, self._batch(x), self.schedule,
                                         generator=self.generator, grad_clip=c.grad_clip, scaler=self.scaler,
                                         amp_dtype=self.amp_dtype, labels=labels)
                if stats.applied:
                    self.ema.update_parameters(self.net)
                self.lr_scheduler.step()
                self.step += 1
                self.epoch_step += 1
                epoch_images += x.shape[0] * self.dist.world_size
                self.skipped_images += int(n_bad.sum())
                session_losses.append(stats.loss)
                if math.isfinite(stats.loss):
                    self.epoch_loss_sum += stats.loss
                    self.epoch_loss_count += 1
                if not (stats.applied and math.isfinite(stats.loss)):
                    self.nonfinite_steps += 1
                    if self.is_main and (self.scaler is None or self.nonfinite_steps > 20):
                        warnings.warn(f"step {self.step}: non-finite loss {stats.loss} or gradient norm "
                                      f"{stats.grad_norm}: update skipped ({self.nonfinite_steps} so far)",
                                      stacklevel=2)
                steps_bar.update(1)
                if self.progress and self.step % 10 == 0:
                    steps_bar.set_postfix(loss=f"{stats.loss:.4f}", lr=f"{self.lr:.2e}")
                for cb in self.callbacks if self.is_main else ():
                    cb.on_step_end(self, self.step, stats)
                if c.save_every_steps > 0 and self.step % c.save_every_steps == 0 \
                        and self.epoch_step < self.steps_per_epoch:
                    self.save()
                stopped = self._stop_reason()
                if stopped is not None:
                    break
            steps_bar.close()
            if self.epoch_step >= self.steps_per_epoch:
                self._end_epoch(epoch_images, time.monotonic() - epoch_t0)
                epochs_bar.update(1)
                if self.epoch >= c.epochs:
                    stopped = stopped or "epochs"
            else:
                self.save()  # stopped part-way: the next session continues this epoch
        epochs_bar.close()
        if self.write and self.csv_path.is_file():
            from .plots import plot_losses

            plot_losses(self.csv_path, self.out_dir / "loss.png", title=f"{c.name}: loss and learning rate")
        tail = [v for v in session_losses[-50:] if math.isfinite(v)]
        result = TrainResult(
            out_dir=self.out_dir, step=self.step, epoch=self.epoch, stopped=stopped,
            final_loss=float(np.mean(tail)) if tail else float("nan"),
            elapsed_s=self._session_elapsed(), total_elapsed_s=self.elapsed_before + self._session_elapsed(),
            nonfinite_steps=self.nonfinite_steps, skipped_images=self.skipped_images,
            checkpoint=self.ckpt_dir / "ckpt_latest.pt", step_losses=session_losses,
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
               "elapsed_s": self.elapsed_before + self._session_elapsed()}
        self.epoch_step = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_count = 0
        if self.write:
            self._write_csv([{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}])
        self._write_preview()
        milestone = c.milestone_every > 0 and self.epoch % c.milestone_every == 0
        self.save(milestone=milestone)
        for cb in self.callbacks if self.is_main else ():
            cb.on_epoch_end(self, row)

    def close(self) -> None:
        """Leave the process group if this trainer joined it."""
        cleanup_distributed(self.dist)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    dataset: Dataset | Tensor | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    resume: bool = True,
) -> TrainResult:
    """Build a :class:`Trainer` and run it: ``train(get_config("lfw-tiny"), "runs/lfw-tiny")``."""
    trainer = Trainer(config, out_dir, dataset=dataset, callbacks=callbacks, progress=progress, resume=resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()

