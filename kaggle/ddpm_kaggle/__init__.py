"""Kaggle-specific glue for ``ddpm_celebahq.ipynb``: paths, data discovery, resume, GPU readout, ETA, torchrun.

Three modules, re-exported here: :mod:`.data` (folders, settings, the dataset, a previous run's output),
:mod:`.hardware` (CPUs, shared memory, GPUs) and :mod:`.progress` (what the notebook shows while a run goes).

Everything about diffusion lives in ``ddpm_ref``; this module only knows about Kaggle: where datasets are mounted
(``/kaggle/input``), where outputs must go (``/kaggle/working``), how a previous run's output comes back as an
input, how many CPUs and GPUs a session has, and how to read GPU memory while training runs.

Environment variables (CI runs the whole notebook on a CPU with them; on Kaggle none is set):

- ``DDPM_INPUT_ROOT`` (default ``/kaggle/input``) and ``DDPM_WORKING_DIR`` (default ``/kaggle/working``);
- ``DDPM_DATA_DIR``: use this image folder instead of searching; ``DDPM_MIN_IMAGES``: how many images a folder
  needs to count as the dataset when searching (default 1000);
- any setting of the notebook's section 2 as ``DDPM_<NAME>`` (read by :func:`env_value`), and
  ``DDPM_CONFIG_OVERRIDES``, a JSON object of :class:`ddpm_ref.config.TrainConfig` fields.
"""

from __future__ import annotations

from .data import (
    SEED_DATA_DIR,
    SEED_DATASET,
    Adopted,
    KaggleDataNotFound,
    adopt_previous_run,
    count_images,
    env_value,
    find_image_dir,
    input_root,
    resume_conflicts,
    working_dir,
)
from .hardware import (
    capability_supported,
    cpu_count,
    ddp_environment,
    fit_workers_to_shared_memory,
    gpu_memory_table,
    gpu_problems,
    loader_workers,
)
from .progress import (
    GpuMonitor,
    LossLogWatcher,
    NotebookProgress,
    format_duration,
    run_streaming,
    show_image,
    torchrun_command,
)

__all__ = [
    "SEED_DATASET",
    "SEED_DATA_DIR",
    "KaggleDataNotFound",
    "input_root",
    "working_dir",
    "env_value",
    "find_image_dir",
    "count_images",
    "Adopted",
    "adopt_previous_run",
    "resume_conflicts",
    "cpu_count",
    "loader_workers",
    "gpu_problems",
    "capability_supported",
    "fit_workers_to_shared_memory",
    "ddp_environment",
    "gpu_memory_table",
    "format_duration",
    "GpuMonitor",
    "LossLogWatcher",
    "torchrun_command",
    "run_streaming",
    "show_image",
    "NotebookProgress",
]
