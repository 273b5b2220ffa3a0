"""Benchmark of class grading: ``python -m ddpm_ref.grading.bench [--jobs 2]``.

Grades the synthetic class of the course's tests (``tests/synthetic_class.py``: 14 submissions of lesson 1, the
looping and the crashing one included) twice, in two fresh course folders: with sequential ``nbgrader autograde``
and with ``python -m ddpm_ref grade run --jobs N``. Prints both wall times and their ratio, the cost of one
submission (seconds in a worker, and core-seconds: the machine's busy CPU time over the run, sandboxes included,
per submission), the peak memory of one worker (the worker and everything it started), and from those figures the
time a class of 300 would take on a 16-core machine and on four of them through the engine (CPU-bound: core-seconds
per submission × 300 / cores, assuming the work spreads evenly and each machine has the memory for 16 workers).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..course import course_root


class _Busy:
    """The share of the machine's CPU time that was busy while the block ran (all processes: the sandboxes too)."""

    def __enter__(self) -> _Busy:
        import psutil

        self._start = psutil.cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        import psutil

        end = psutil.cpu_times()
        total = sum(end) - sum(self._start)
        idle = (end.idle + getattr(end, "iowait", 0.0)) - (self._start.idle + getattr(self._start, "iowait", 0.0))
        self.share = 1.0 - idle / total if total > 0 else 0.0


def _sequential(course: Path) -> float:
    env = dict(os.environ, DDPM_COURSE_ROOT=str(course_root()))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nbgrader", "autograde", "01_noise_schedule"], cwd=course, env=env,
                   check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ddpm_ref.grading.bench", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2, help="workers of the parallel run (default 2)")
    p.add_argument("--class-size", type=int, default=300, help="the class the projection is for (default 300)")
    p.add_argument("--without", default="", metavar="A,B",
                   help="leave these students of the synthetic class out (e.g. looper: its 60 s loop dominates)")
    args = p.parse_args(argv)
    root = course_root()
    sys.path.insert(0, str(root))
    from tests.synthetic_class import build, plan

    from .batch import WORKER_BYTES, run

    tmp = Path(tempfile.mkdtemp(prefix="ddpm-grade-bench-"))
    try:
        left_out = {x for x in args.without.split(",") if x}
        everyone = {p.student for p in plan()}
        if left_out - everyone:
            raise SystemExit(f"no student {', '.join(sorted(left_out - everyone))} in the synthetic class")
        seq_course, planted = build(tmp / "sequential", only=everyone - left_out)
        par_course, _ = build(tmp / "parallel", only=everyone - left_out)
        n = len(planted)
        print(f"{n} submissions of lesson 1 on {os.cpu_count()} cores; sequential nbgrader autograde …", flush=True)
        with _Busy() as seq_busy:
            seq = _sequential(seq_course)
        print(f"parallel, {args.jobs} workers …", flush=True)
        with _Busy() as par_busy:
            summary = run(par_course, ["01_noise_schedule"], jobs=args.jobs)
        par = summary.seconds
        if summary.failed:
            raise SystemExit(f"the parallel run failed on {len(summary.failed)} submission(s): {summary.failed[:3]}")
        cost = sum(o.seconds for o in summary.outcomes) / n
        cores = os.cpu_count() or 1
        core_s = par_busy.share * cores * par / n  # CPU one submission takes, the sandboxes' processes included
        peak = max(o.peak_bytes for o in summary.outcomes)
        print(f"sequential nbgrader autograde: {seq:.0f} s ({seq / n:.1f} s per submission), CPU busy "
              f"{seq_busy.share:.0%}")
        print(f"grade run --jobs {args.jobs}:       {par:.0f} s   speed-up {seq / par:.2f}x, CPU busy "
              f"{par_busy.share:.0%}")
        print(f"one submission: {cost:.1f} s in a worker, {core_s:.1f} core-seconds; peak memory of one worker "
              f"{peak / 2**30:.2f} GiB (the default --jobs reserves {WORKER_BYTES / 2**30:.1f} GiB per worker)")
        for machines in (1, 4):
            minutes = args.class_size * core_s / (16 * machines) / 60
            print(f"projection: a class of {args.class_size} on {machines} × 16 cores (16 workers and "
                  f"{math.ceil(16 * peak / 2**30)} GiB per machine): {minutes:.1f} min per lesson like lesson 1, "
                  "if the CPU is the limit")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
