"""What the notebook shows while a run goes: durations, GPU memory sampled during training, the rows of
``losses.csv`` written by torchrun processes, a command's output streamed live, inline images, and the per-epoch
report with the estimated finish."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddpm_ref.train import Callback

from .hardware import gpu_memory_table

__all__ = ["format_duration", "GpuMonitor", "LossLogWatcher", "torchrun_command", "run_streaming", "show_image",
           "NotebookProgress"]

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
