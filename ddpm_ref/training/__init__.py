"""Training: the :class:`Trainer` (:mod:`.trainer`) and what it is built from.

- :mod:`.config`: the presets and :class:`~.config.TrainConfig`;
- :mod:`.dataset`: the images a run trains on, and its resumable sampler;
- :mod:`.step`: one optimizer step on L_simple (the lesson's ``train_step``);
- :mod:`.setup`: the loader, the model, its EMA and optimizer;
- :mod:`.state` and :mod:`.checkpoint`: exact resume and atomic checkpoints;
- :mod:`.log`: callbacks, ``losses.csv`` and previews;
- :mod:`.ema` and :mod:`.distributed`: weight averaging and DDP.
"""

from .trainer import (
    LOSS_COLUMNS,
    Callback,
    StepStats,
    Trainer,
    TrainResult,
    build_dataset,
    resolve_device,
    train,
    train_step,
    train_step_stats,
)

__all__ = ["Callback", "LOSS_COLUMNS", "StepStats", "TrainResult", "Trainer", "build_dataset", "resolve_device",
           "train", "train_step", "train_step_stats"]
