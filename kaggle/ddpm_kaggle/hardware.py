"""What a Kaggle session's machine offers the run: CPUs and loader workers, shared memory, the GPUs (kernels for
their compute capability, peer-to-peer access for NCCL) and their memory in use."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["cpu_count", "loader_workers", "gpu_problems", "capability_supported", "fit_workers_to_shared_memory",
           "ddp_environment", "gpu_memory_table"]

def cpu_count() -> int:
    """CPUs this process may use (Kaggle's GPU sessions have 4)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_workers(processes: int = 1) -> int:
    """DataLoader workers per training process: the CPUs shared out, keeping one for the main process."""
    return max(0, min(8, cpu_count() // max(1, processes) - (1 if processes == 1 else 0)))


def gpu_problems() -> tuple[list[str], list[str]]:
    """(errors, warnings) about the GPUs of this session for the run: a GPU this torch build has no kernels for
    (Kaggle hands a P100, compute capability 6.0, to a pushed kernel whose accelerator was not set, and current
    torch builds start at 7.0), and one GPU where the run is sized for two."""
    import torch

    errors: list[str] = []
    warns: list[str] = []
    if not torch.cuda.is_available():
        return errors, warns
    arch = torch.cuda.get_arch_list()  # e.g. ["sm_70", "sm_75", …, "compute_90"]; empty on some builds
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        if arch and not capability_supported((major, minor), arch):
            name = torch.cuda.get_device_name(i)
            errors.append(f"GPU {i} is a {name} (compute capability {major}.{minor}), but PyTorch "
                          f"{torch.__version__} has kernels only for {', '.join(arch)}: it cannot run here. "
                          "Ask for GPU T4 ×2 (Settings → Accelerator, or kaggle kernels push --accelerator "
                          "NvidiaTeslaT4) and run again")
    if torch.cuda.device_count() == 1:
        warns.append("one GPU instead of two: training runs on it alone and takes about twice as long per epoch "
                     "(ask for GPU T4 ×2 to use both)")
    return errors, warns


def capability_supported(capability: tuple[int, int], arch_list: Sequence[str]) -> bool:
    """Whether a GPU of ``capability`` runs a torch build compiled for ``arch_list`` ("sm_75", "compute_90", …):
    a cubin (sm_XY) runs on the same major version with minor ≥ Y; PTX (compute_XY) is compiled for any newer GPU."""
    cap = capability[0] * 10 + capability[1]
    for a in arch_list:
        kind, _, num = a.partition("_")
        if not num.isdigit():
            continue
        v = int(num)
        if kind == "sm" and v // 10 == capability[0] and v % 10 <= capability[1]:
            return True
        if kind == "compute" and v <= cap:
            return True
    return False


def fit_workers_to_shared_memory(workers: int, batch_bytes: int, *, processes: int = 1, prefetch: int = 4,
                                 shm: str | Path = "/dev/shm") -> tuple[int, str]:
    """Loader workers per process whose batches fit in ``/dev/shm``, and a message when that is fewer than asked.

    Each worker keeps up to ``prefetch`` batches in shared memory on their way to the main process (uint8 images:
    C·H·W bytes each). A container's ``/dev/shm`` can be as small as 64 MiB, and a worker that runs out dies
    with a bus error; this keeps the need under 80 % of the free space, with fewer workers or none.
    """
    try:
        free = shutil.disk_usage(shm).free
    except OSError:  # no /dev/shm (not Linux): nothing to check
        return workers, ""
    per_worker = prefetch * batch_bytes * processes
    fit = workers
    while fit > 0 and fit * per_worker > 0.8 * free:
        fit -= 1
    if fit == workers:
        return workers, ""
    need = workers * per_worker / 2**20
    how = f"{fit} loader workers per process" if fit else "no loader workers (the main process loads the images)"
    return fit, (f"{shm} has {free / 2**20:.0f} MiB free, {workers} workers would need about {need:.0f} MiB: "
                 f"using {how}")


def ddp_environment(n_gpus: int, base: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    """The environment for the torchrun processes, and a note on what was set.

    Without peer-to-peer access between the GPUs (PCIe T4s in some hosts), NCCL can hang on its P2P transport:
    ``NCCL_P2P_DISABLE=1`` then routes through host memory. P2P is asked of the driver, not assumed.
    """
    import torch

    env = dict(os.environ if base is None else base)
    if n_gpus < 2 or "NCCL_P2P_DISABLE" in env:
        return env, ""
    pairs = [(i, j) for i in range(n_gpus) for j in range(n_gpus) if i != j]
    if all(torch.cuda.can_device_access_peer(i, j) for i, j in pairs):
        return env, ""
    env["NCCL_P2P_DISABLE"] = "1"
    return env, "the GPUs have no peer-to-peer access: NCCL_P2P_DISABLE=1 (NCCL goes through host memory)"


def _nvidia_smi() -> list[dict[str, Any]] | None:
    """Per-GPU memory in use (MiB, all processes) and utilisation from nvidia-smi; None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.used,memory.total,utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            idx, name, used, total, util = parts
            rows.append({"gpu": int(idx), "name": name, "used_mib": float(used), "total_mib": float(total),
                         "util_pct": float(util) if util.replace(".", "", 1).isdigit() else float("nan")})
    return rows


def _torch_memory() -> list[dict[str, Any]]:
    import torch

    rows = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            rows.append({"gpu": i, "name": torch.cuda.get_device_name(i), "used_mib": (total - free) / 2**20,
                         "total_mib": total / 2**20, "util_pct": float("nan")})
    return rows


def gpu_memory_table() -> list[dict[str, Any]]:
    """One row per visible GPU: name, memory used by all processes and total (MiB), utilisation (%).

    nvidia-smi sees every process (the torchrun workers too); torch's ``mem_get_info`` is the fallback.
    On a machine without GPUs the list is empty.
    """
    rows = _nvidia_smi()
    return rows if rows else _torch_memory()
