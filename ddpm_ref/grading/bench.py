"""Benchmark of class grading: ``python -m ddpm_ref.grading.bench [--jobs 2]``.

Grades the synthetic class of the course's tests (``tests/synthetic_class.py``: 14 submissions of lesson 1, the
looping and the crashing one included) twice, in two fresh course folders: with sequential ``nbgrader autograde``
and with ``python -m ddpm_ref grade run --jobs N``. Prints both wall times and their ratio, the cost of one
submission (worker seconds), the peak memory of one worker (the worker and everything it started), and from
those figures the time a class of 300 would take on a 16-core machine and on four of them through the engine
(assuming the per-submission cost stays as measured and the work spreads evenly; memory may cap the workers).
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
    args = p.parse_args(argv)
    root = course_root()
    sys.path.insert(0, str(root))
    from tests.synthetic_class import build

    from .batch import WORKER_BYTES, run

    tmp = Path(tempfile.mkdtemp(prefix="ddpm-grade-bench-"))
    try:
        seq_course, planted = build(tmp / "sequential")
        par_course, _ = build(tmp / "parallel")
        n = len(planted)
        print(f"{n} submissions of lesson 1 on {os.cpu_count()} cores; sequential nbgrader autograde …", flush=True)
        seq = _sequential(seq_course)
        print(f"parallel, {args.jobs} workers …", flush=True)
        summary = run(par_course, ["01_noise_schedule"], jobs=args.jobs)
        par = summary.seconds
        if summary.failed:
            raise SystemExit(f"the parallel run failed on {len(summary.failed)} submission(s): {summary.failed[:3]}")
        cost = sum(o.seconds for o in summary.outcomes) / n
        peak = max(o.peak_bytes for o in summary.outcomes)
        print(f"sequential nbgrader autograde: {seq:.0f} s ({seq / n:.1f} s per submission)")
        print(f"grade run --jobs {args.jobs}:       {par:.0f} s   speed-up {seq / par:.2f}x")
        print(f"one submission: {cost:.1f} worker-seconds on average; peak memory of one worker "
              f"{peak / 2**30:.2f} GiB (the default --jobs reserves {WORKER_BYTES / 2**30:.0f} GiB per worker)")
        for machines in (1, 4):
            workers = 16 * machines
            hours = args.class_size * cost / workers / 3600
            print(f"projection: a class of {args.class_size} on {machines} × 16 cores ({workers} workers, "
                  f"{math.ceil(workers * peak / 2**30 / machines)} GiB per machine): {hours * 60:.0f} min per lesson "
                  f"like lesson 1")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
