"""What a :class:`~ddpm_ref.training.Trainer` is built from, in the order its ``__init__`` builds it: the loader over
the config's images, then the schedule and the U-Net with its EMA, parallel wrapper, optional compilation, AdamW,
learning-rate schedule and AMP grad scaler. Each function sets the trainer attributes it names."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data import ImageFolderDataset, digits
from ..speed import perf
from ..speed.precision import resolve_amp_dtype
from .config import TrainConfig, build_model, build_schedule
from .dataset import LabelledImages, ResumableSampler, TrainImages, build_dataset
from .ema import make_ema

__all__ = ["Setup", "make_lr_scheduler"]


class Setup:
    """How the Trainer is built, in the order its ``__init__`` builds it (each method sets the attributes it
    names)."""

    def _setup_data(self, dataset: Dataset | Tensor | None) -> None:
        """``data`` (the images, repeated ``dataset_repeat`` times), ``sampler`` (resumable), ``batch_per_rank``,
        ``steps_per_epoch`` and ``loader``; ``dataset`` replaces ``config.data`` when given."""
        config = self.config
        base = build_dataset(config) if dataset is None else dataset
        if isinstance(base, ImageFolderDataset):
            base.hflip = False  # the trainer flips whole batches itself, from its own seeded generator
        if isinstance(base, Tensor):
            if base.ndim != 4 or base.shape[1] != config.channels or base.shape[-1] != config.image_size:
                raise ValueError(f"dataset tensor must be [N, {config.channels}, {config.image_size}, "
                                 f"{config.image_size}], got {tuple(base.shape)}")
        self.data = TrainImages(base, config.dataset_repeat)
        if config.num_classes:  # class-conditional: the digits with their labels (classifier-free guidance)
            if config.data != "digits" or dataset is not None:
                raise ValueError("num_classes > 0 needs labelled data: data=digits (and no dataset= tensor)")
            images, labels = digits("train", size=config.image_size)
            self.data = LabelledImages(images, labels, config.dataset_repeat)
        ws = self.dist.world_size
        if config.batch_size % ws:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {ws} processes")
        self.batch_per_rank = config.batch_size // ws
        self.sampler = ResumableSampler(self.data, num_replicas=ws, rank=self.dist.rank, shuffle=True,
                                           seed=config.seed, drop_last=True)
        self.steps_per_epoch = self.sampler.num_samples // self.batch_per_rank
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(self.data)} images are fewer than one batch of {config.batch_size}: lower "
                             "batch_size or raise dataset_repeat")
        self.loader = DataLoader(self.data, batch_size=self.batch_per_rank, sampler=self.sampler,
                                    drop_last=True, **perf.loader_kwargs(self.device, config.num_workers))


    def _setup_model(self) -> None:
        """``schedule``, the U-Net (channels_last and compiled per ``self.perf``), ``ema``, ``model`` (the U-Net or
        its DDP/DataParallel wrapper), ``amp_dtype``, ``compile_error``, ``optimizer`` (AdamW), ``total_steps``,
        ``lr_scheduler`` and ``scaler``. Needs :meth:`_setup_data` first (batch size, steps per epoch)."""
        config, opts, device = self.config, self.perf, self.device
        self.schedule = build_schedule(config).to(device)
        net = build_model(config).to(device)
        if opts.channels_last:
            net.to(memory_format=torch.channels_last)
        self.ema = make_ema(net, config.ema_decay, warmup=config.ema_warmup)
        self.model = net
        if self.dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        elif (config.parallel in ("auto", "dp") and device.type == "cuda" and torch.cuda.device_count() > 1):
            self.model = nn.DataParallel(net)  # the seed's choice on Kaggle's T4 ×2
        self.amp_dtype = resolve_amp_dtype(device, config.amp)  # type: ignore[arg-type]
        self.compile_error = None
        if opts.compile:  # one trial step now: a compiler that fails here falls back to eager, with the reason
            shape = (self.batch_per_rank, config.channels, config.image_size, config.image_size)
            example = (perf.to_device(torch.zeros(shape), device, channels_last=opts.channels_last),
                       torch.zeros(shape[0], dtype=torch.long, device=device))
            res = perf.compile_model(self.model, mode=opts.compile_mode, example=example, backward=True,
                                     amp_dtype=self.amp_dtype)
            self.model, self.compile_error = res.model, res.error
        self.optimizer = perf.make_adamw(net.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                            fused=opts.fused_adamw)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.lr_scheduler = make_lr_scheduler(self.optimizer, config, self.total_steps)
        self.scaler = perf.make_grad_scaler(device, self.amp_dtype)


def make_lr_scheduler(opt: torch.optim.Optimizer, c: TrainConfig,
                      total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``lr_schedule="constant"``, or a linear warm-up over ``warmup_steps`` (at most ``total_steps`` − 1) then a
    cosine decay to ``min_lr`` at ``total_steps``; stepped once per optimizer step."""
    if c.lr_schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    warm = min(c.warmup_steps, max(total_steps - 1, 0))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps - warm, 1), eta_min=c.min_lr)
    if warm <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warm])
