"""Kaggle-specific glue for ``ddpm_celebahq.ipynb``: paths, data discovery, resume, GPU readout, ETA, torchrun.

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

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm_ref.train import Callback

__all__ = [
    "SEED_DATASET",
    "SEED_DATA_DIR",
    "KaggleDataNotFound",
    "input_root",
    "working_dir",
    "env_value",
    "find_image_dir",
    "count_images",
    "adopt_previous_run",
    "resume_conflicts",
    "cpu_count",
    "loader_workers",
    "format_duration",
    "GpuMonitor",
    "LossLogWatcher",
    "gpu_memory_table",
    "torchrun_command",
    "run_streaming",
    "show_image",
    "NotebookProgress",
]

#: the Kaggle dataset of the seed run and the folder the seed notebook reads
SEED_DATASET = "denislukovnikov/celebahq256-images-only"
SEED_DATA_DIR = "celebahq256-images-only/data256x256"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_MIN_IMAGES = 1000
#: folder names that hold a run's own outputs, never training data
OUTPUT_FOLDERS = {"generated", "previews", "checkpoints", "eval", "plots", "ddpm_ref_src"}


class KaggleDataNotFound(FileNotFoundError):
    """No image folder under the input root: the message says which dataset to attach and how."""


def input_root() -> Path:
    """Where Kaggle mounts attached datasets and notebook outputs (``DDPM_INPUT_ROOT`` overrides)."""
    return Path(os.environ.get("DDPM_INPUT_ROOT", "/kaggle/input")).expanduser()


def working_dir() -> Path:
    """The only folder a Kaggle notebook may write and keep (``DDPM_WORKING_DIR`` overrides); created."""
    path = Path(os.environ.get("DDPM_WORKING_DIR", "/kaggle/working")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_value(name: str, default: Any) -> Any:
    """``DDPM_<NAME>`` from the environment, parsed to the type of ``default``; ``default`` when unset.

    bool: 1/true/yes/on or 0/false/no/off; int, float, str as such; a tuple or list: comma-separated numbers;
    a dict: a JSON object. A value that does not parse raises a one-line ValueError naming the variable.
    """
    var = f"DDPM_{name.upper()}"
    text = os.environ.get(var)
    if text is None or text.strip() == "":
        return default
    text = text.strip()
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, (tuple, list)):
            items = [float(v) if "." in v or "e" in v.lower() else int(v) for v in text.split(",") if v.strip()]
            return type(default)(items)
        if isinstance(default, dict):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (ValueError, json.JSONDecodeError):
        raise ValueError(f"environment variable {var}={text!r} cannot be read as {type(default).__name__}; "
                         f"unset it or give a value like {default!r}") from None
    return text


def count_images(folder: Path) -> int:
    """Number of image files directly inside ``folder`` (not recursive)."""
    try:
        return sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError:
        return 0


def find_image_dir(root: Path | None = None, *, min_images: int | None = None, max_depth: int = 5) -> Path:
    """The folder of training images under ``root`` (default :func:`input_root`).

    ``DDPM_DATA_DIR`` wins when set. Otherwise the seed's path ``<root>/celebahq256-images-only/data256x256``
    is used when it holds images; else the folder (at most ``max_depth`` levels down) with the most images
    directly inside, if it has at least ``min_images`` (default ``DDPM_MIN_IMAGES`` or 1000). Folders of a run's
    own outputs (``generated/``, ``checkpoints/`` …) never count. Raises :class:`KaggleDataNotFound` naming
    the dataset to attach.
    """
    explicit = os.environ.get("DDPM_DATA_DIR")
    if explicit:
        path = Path(explicit).expanduser()
        if count_images(path) == 0:
            raise KaggleDataNotFound(f"DDPM_DATA_DIR={explicit!r} holds no {'/'.join(IMAGE_SUFFIXES)} images: "
                                     "point it at the image folder or unset it to search the inputs")
        return path
    root = input_root() if root is None else Path(root)
    if min_images is None:
        min_images = int(os.environ.get("DDPM_MIN_IMAGES", DEFAULT_MIN_IMAGES))
    seed_path = root / SEED_DATA_DIR
    if count_images(seed_path) > 0:
        return seed_path
    best, best_n = None, 0
    if root.is_dir():
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            depth = len(here.relative_to(root).parts)
            dirnames[:] = sorted(d for d in dirnames if d not in OUTPUT_FOLDERS and not d.startswith("."))
            if depth >= max_depth:
                dirnames[:] = []
            n = count_images(here)
            if n > best_n:
                best, best_n = here, n
    if best is not None and best_n >= min_images:
        return best
    found = f" (the largest image folder, {best}, holds only {best_n})" if best is not None else ""
    raise KaggleDataNotFound(
        f"no folder of at least {min_images} images under {str(root)!r}{found}. Attach the dataset "
        f"{SEED_DATASET!r}: in the notebook's right panel, Add Input → Datasets → search 'celebahq256-images-only' "
        f"→ Add (it mounts at {str(seed_path)!r}), then run this cell again"
    )


def _checkpoint_step(path: Path) -> int:
    """The optimizer step stored in a training checkpoint (−1 when it cannot be read)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt.get("step", -1))
    except Exception:  # a torn or foreign file is simply not a candidate
        return -1


@dataclass
class Adopted:
    """What :func:`adopt_previous_run` did: the checkpoint used (if any), its step and the files copied."""

    source: Path | None = None
    step: int = -1
    copied: list[Path] = field(default_factory=list)
    note: str = ""


def adopt_previous_run(
    work: Path,
    root: Path | None = None,
    *,
    ckpt_name: str = "checkpoints/ckpt_latest.pt",
    also: Sequence[str] = ("checkpoints/ckpt_epoch_*.pt", "losses.csv", "previews/*.png"),
    max_depth: int = 4,
) -> Adopted:
    """Continue from a previous run's output that was attached as an input (a notebook version's output).

    When ``work/ckpt_name`` exists this session already has a run and nothing changes. Otherwise every
    ``ckpt_name`` under ``root`` (default :func:`input_root`, at most ``max_depth`` levels down) is a candidate;
    the one with the most optimizer steps is copied into ``work`` with the files matching ``also`` next to it
    (milestones, the loss log, previews), so the trainer resumes from it and the new output is complete.
    """
    own = work / ckpt_name
    if own.is_file():
        return Adopted(own, _checkpoint_step(own), [], f"resuming this session's own run ({own})")
    root = input_root() if root is None else Path(root)
    candidates: list[tuple[int, Path]] = []
    if root.is_dir():
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if len(here.relative_to(root).parts) >= max_depth:
                dirnames[:] = []
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            path = here / ckpt_name
            if path.is_file():
                candidates.append((_checkpoint_step(path), here))
    candidates = [c for c in candidates if c[0] >= 0]
    if not candidates:
        return Adopted(note="no checkpoint here or in the inputs: training starts from scratch")
    step, run_dir = max(candidates, key=lambda c: (c[0], str(c[1])))
    copied: list[Path] = []
    for pattern in (ckpt_name, *also):
        for src in sorted(run_dir.glob(pattern)):
            dst = work / src.relative_to(run_dir)
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)  # a copy cut short never looks like a checkpoint
            copied.append(dst)
    return Adopted(run_dir / ckpt_name, step, copied,
                   f"continuing the attached run {run_dir} from step {step} ({len(copied)} files copied)")


def resume_conflicts(checkpoint: Path, config: Any) -> list[str]:
    """How ``config`` differs from the config stored in ``checkpoint`` in the model and diffusion settings
    (:data:`ddpm_ref.checkpoint.MODEL_FIELDS`; empty: compatible). A missing file has none.

    Each entry reads ``"beta_schedule: linear in the checkpoint, scaled_linear now"``.
    """
    import torch

    from ddpm_ref.checkpoint import resume_check

    if not Path(checkpoint).is_file():
        return []
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("config", {})
    return resume_check(stored, config).conflicts


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


def format_duration(seconds: float) -> str:
    """12345 → '3 h 25 min'; 75 → '1 min 15 s'."""
    seconds = max(0.0, float(seconds))
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {s:02d} s"
    return f"{s} s"


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


class GpuMonitor:
    """Samples :func:`gpu_memory_table` every ``interval`` seconds in a daemon thread while training runs.

    ``peaks`` holds per GPU the highest memory in use and the mean utilisation seen; ``report()`` is a printable
    table. Use as a context manager around the training call. Without GPUs it records nothing. With ``watch``
    (training in other processes, e.g. under torchrun) it also reports each new row of ``losses.csv``.
    """

    def __init__(self, interval: float = 15.0, *, watch: LossLogWatcher | None = None) -> None:
        self.interval = interval
        self.watch = watch
        self.peaks: dict[int, dict[str, Any]] = {}
        self._util: dict[int, list[float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        if self.watch is not None:
            self.watch.poll()
        for row in gpu_memory_table():
            g = row["gpu"]
            peak = self.peaks.setdefault(g, dict(row))
            peak["used_mib"] = max(peak["used_mib"], row["used_mib"])
            if row["util_pct"] == row["util_pct"]:  # not NaN
                self._util.setdefault(g, []).append(row["util_pct"])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> GpuMonitor:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        self.sample()

    def report(self) -> str:
        if not self.peaks:
            return "no GPU visible: memory per GPU not measured"
        lines = ["GPU  name                         peak memory in use        mean utilisation"]
        for g, row in sorted(self.peaks.items()):
            util = self._util.get(g)
            u = f"{sum(util) / len(util):5.1f} %" if util else "   n/a"
            lines.append(f"{g:<4} {row['name'][:28]:<28} {row['used_mib'] / 1024:6.2f} / "
                         f"{row['total_mib'] / 1024:5.2f} GiB ({100 * row['used_mib'] / row['total_mib']:3.0f} %)"
                         f"   {u}")
        return "\n".join(lines)



class LossLogWatcher:
    """Reports each new row of a run's ``losses.csv`` with the estimated time to finish (for torchrun runs).

    Training in other processes cannot call back into the notebook; this reads the CSV they write instead.
    ``poll()`` prints the rows added since the last call: epoch, loss, lr, images/s, epoch time, GPU memory and
    the ETA from this session's mean epoch time, noting when the time budget will stop the run first.
    """

    def __init__(self, csv_path: Path, epochs: int, time_budget_s: float = 0.0) -> None:
        self.csv_path = Path(csv_path)
        self.epochs = epochs
        self.time_budget_s = time_budget_s
        self.t0 = time.monotonic()
        rows = self._read()
        self.seen = self.seen_at_start = len(rows)
        self.start_elapsed = rows[-1]["elapsed_s"] if rows else 0.0  # the run's clock when this session began
        self.prev_elapsed = self.start_elapsed

    def _read(self) -> list[dict[str, float]]:
        import csv

        if not self.csv_path.is_file():
            return []
        rows = []
        with open(self.csv_path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    rows.append({k: float(v) for k, v in r.items()})
                except (TypeError, ValueError):  # a line being written right now
                    break
        return rows

    def poll(self) -> list[dict[str, float]]:
        """Print and return the rows written since the last call."""
        rows = self._read()
        new = rows[self.seen:]
        for k, row in enumerate(new, start=self.seen + 1):
            print(self.describe(row, session_epochs=k - self.seen_at_start), flush=True)
        self.seen = len(rows)
        return new

    def describe(self, row: dict[str, float], session_epochs: int) -> str:
        """One line for an epoch row and the ETA: this session's mean epoch time × the epochs left."""
        epoch_s = row["elapsed_s"] - self.prev_elapsed
        self.prev_elapsed = row["elapsed_s"]
        per_epoch = (row["elapsed_s"] - self.start_elapsed) / max(1, session_epochs)
        left = max(0, self.epochs - int(row["epoch"]))
        msg = (f"epoch {int(row['epoch'])}/{self.epochs}  step {int(row['step'])}  loss {row['loss']:.4f}  "
               f"lr {row['lr']:.2e}  {row['images_per_s']:.1f} img/s  epoch time {format_duration(epoch_s)}")
        mem = "; ".join(f"GPU{r['gpu']} {r['used_mib'] / 1024:.1f}/{r['total_mib'] / 1024:.0f} GiB"
                        for r in gpu_memory_table())
        msg += f"  [{mem}]" if mem else ""
        need = left * per_epoch
        msg += f"\n    ETA {format_duration(need)} for the remaining {left} epochs"
        if self.time_budget_s > 0:
            budget_left = self.time_budget_s - (time.monotonic() - self.t0)
            if need > budget_left:
                msg += f"; the time budget stops this session in {format_duration(budget_left)}: run again to continue"
        return msg


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m ddpm_ref <args>`` as an argv list."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ddpm_ref", *args]


def run_streaming(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    """Run ``cmd`` and echo its output line by line as it comes (a notebook cell shows progress live).

    Raises RuntimeError with the exit code and the last lines when the command fails.
    """
    tail: list[str] = []
    start = time.monotonic()
    with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=env, cwd=cwd) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail = (tail + [line.rstrip()])[-20:]
        code = proc.wait()
    if code != 0:
        hint = ""
        if any("Watchdog caught collective operation timeout" in t or "timed out" in t.lower() for t in tail):
            hint = ("\nthe processes stopped waiting for each other (a collective timed out): check the GPUs with "
                    "nvidia-smi, or train with PARALLEL = 'dp'; the last checkpoint is kept and a rerun resumes")
        raise RuntimeError(f"{' '.join(cmd[:6])} … exited with code {code} after "
                           f"{format_duration(time.monotonic() - start)}; last lines:\n" + "\n".join(tail) + hint)
    return code


def show_image(path: str | Path, *, width: int | None = None, caption: str | None = None) -> None:
    """Display a PNG inline in the notebook (works whatever the matplotlib backend); prints the path elsewhere."""
    path = Path(path)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        get_ipython = None  # type: ignore[assignment]
    if caption:
        print(caption)
    if get_ipython is not None and get_ipython() is not None:
        display(Image(filename=str(path), width=width))
    else:
        print(f"[image] {path}")


class NotebookProgress(Callback):
    """Per-epoch report for a long run: loss, lr, speed, epoch time, GPU memory and the estimated finish.

    After ``warmup_steps`` steps of this session it prints a first estimate (time per step → per epoch →
    to the end of the run, and whether the time budget will stop the run first); after each epoch a line
    with the mean loss, images/s and an updated estimate; each preview grid is shown inline.
    """

    def __init__(self, warmup_steps: int = 50, show_previews: bool = True) -> None:
        self.warmup_steps = warmup_steps
        self.show_previews = show_previews
        self.t0 = 0.0
        self.step0 = 0
        self.epoch_times: list[float] = []
        self._last_epoch_end = 0.0
        self._announced = False

    def on_train_start(self, trainer: Any) -> None:
        self.t0 = self._last_epoch_end = time.monotonic()
        self.step0 = trainer.step
        c = trainer.config
        left = c.epochs * trainer.steps_per_epoch - trainer.step
        how = f"resumed from {trainer.resumed_from} at step {trainer.step}" if trainer.resumed_from else "new run"
        print(f"{how}: epoch {trainer.epoch}/{c.epochs}, {trainer.steps_per_epoch} steps per epoch, "
              f"{max(left, 0)} steps to go; time budget {format_duration(c.time_budget_s)}")

    def _finish_estimate(self, trainer: Any, per_step: float) -> str:
        c = trainer.config
        left_steps = max(c.epochs * trainer.steps_per_epoch - trainer.step, 0)
        need = left_steps * per_step
        budget_left = c.time_budget_s - (time.monotonic() - self.t0) if c.time_budget_s > 0 else float("inf")
        msg = f"ETA {format_duration(need)} for the remaining {left_steps} steps"
        if need > budget_left:
            reach = trainer.step + int(budget_left / per_step) if per_step > 0 else trainer.step
            msg += (f"; the time budget stops this session in {format_duration(budget_left)} near step "
                    f"{reach} (epoch ≈ {reach / trainer.steps_per_epoch:.1f}): run again to continue")
        return msg

    def on_step_end(self, trainer: Any, step: int, stats: Any) -> None:
        if not self._announced and step - self.step0 >= self.warmup_steps:
            self._announced = True
            per_step = (time.monotonic() - self.t0) / (step - self.step0)
            print(f"first estimate after {step - self.step0} steps: {per_step:.3f} s/step, "
                  f"≈ {format_duration(per_step * trainer.steps_per_epoch)} per epoch; "
                  + self._finish_estimate(trainer, per_step))

    def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
        now = time.monotonic()
        self.epoch_times.append(now - self._last_epoch_end)
        self._last_epoch_end = now
        done = trainer.step - self.step0
        per_step = (now - self.t0) / done if done else 0.0
        mem = "; ".join(f"GPU{r['gpu']} {r['used_mib'] / 1024:.1f}/{r['total_mib'] / 1024:.0f} GiB"
                        for r in gpu_memory_table())
        print(f"epoch {int(row['epoch'])}/{trainer.config.epochs}  step {int(row['step'])}  "
              f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['images_per_s']:.1f} img/s  "
              f"epoch time {format_duration(self.epoch_times[-1])}" + (f"  [{mem}]" if mem else "")
              + f"\n    {self._finish_estimate(trainer, per_step)}", flush=True)

    def on_preview(self, trainer: Any, images: Any, path: Path) -> None:
        if self.show_previews:
            show_image(path, caption=f"EMA preview after epoch {trainer.epoch} (same noise every epoch): {path}")

    def on_train_end(self, trainer: Any, result: Any) -> None:
        print(f"stopped ({result.stopped}) at epoch {result.epoch}, step {result.step}: this session "
              f"{format_duration(result.elapsed_s)}, the whole run {format_duration(result.total_elapsed_s)}; "
              f"{result.nonfinite_steps} non-finite steps skipped, {result.skipped_images} unreadable images")
