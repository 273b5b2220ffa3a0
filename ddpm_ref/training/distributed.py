"""Process-group helpers for DistributedDataParallel under ``torchrun`` (one node or many).

``torchrun --nproc_per_node N -m ddpm_ref train …`` sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`init_distributed`
then joins the group (NCCL on GPUs, gloo on the CPU). A group that the caller already initialised (a test that
spawns processes itself, a notebook) is used as it is and left open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "all_reduce_sum", "all_gather_objects", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: seconds a process waits at a collective before the run fails with an error instead of hanging: longer than
#: any pause of rank 0 alone (EMA previews, checkpoints); ``DDPM_DIST_TIMEOUT_S`` overrides it
DEFAULT_TIMEOUT_S = 1800.0


def collective_timeout_s() -> float:
    """The process-group timeout: ``DDPM_DIST_TIMEOUT_S`` seconds, else :data:`DEFAULT_TIMEOUT_S`."""
    text = os.environ.get("DDPM_DIST_TIMEOUT_S", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"DDPM_DIST_TIMEOUT_S must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"DDPM_DIST_TIMEOUT_S must be > 0, got {value}")
    return value


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment, or return a single-process DistInfo."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistInfo(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=collective_timeout_s()))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, True)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (identity in a single process)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """[obj of rank 0, obj of rank 1, …] on every rank ([obj] in a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
