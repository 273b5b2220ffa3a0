"""Run every lesson's solution headless N times in a row, with a busy program beside it: stalls and budgets.

    python data_scripts/headless_repeat.py                          # every lesson, 5 runs each (hours on 2 cores)
    python data_scripts/headless_repeat.py 01_noise_schedule 02_forward_diffusion --runs 2
    python data_scripts/headless_repeat.py --fast --no-busy          # DDPM_FAST=1 (as nbgrader runs them), quiet

Each run executes ``solutions/<id>/<id>.ipynb`` top to bottom in a fresh kernel through ``ddpm_ref.headless`` (the
executor of the site build and the grader), as the site build does, while one CPU-bound process spins beside it
(``--no-busy``: none). Per lesson it reports the stalls the executor detected and recovered (a lost reply rebuilt,
an unread request woken), the longest run, the longest time outside training cells against its budget (3 minutes)
and the longest training cell against its budget (6 minutes; a training cell is a ``heavy`` cell that sets
``STEPS``). A cell over ``--timeout`` seconds ends that run with a message naming the lesson and the cell, and the
next run goes on. ``--json FILE`` writes every run's figures. Exit status 1 when a run failed, stalled or went over
a budget.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ddpm_ref.headless import HeadlessClient  # noqa: E402

SOLUTIONS = ROOT / "solutions"
LESSONS = sorted(p.name for p in SOLUTIONS.iterdir() if (p / f"{p.name}.ipynb").is_file())
REST_BUDGET_S = 180  # everything outside the training cells, on 2 cores beside a busy program
TRAINING_BUDGET_S = 360  # each training cell
TRAINING = re.compile(r"^STEPS\s*=", re.M)


def is_training(cell) -> bool:
    return "heavy" in cell.get("metadata", {}).get("tags", []) and bool(TRAINING.search(cell.source))


class TimedClient(HeadlessClient):
    """Times every code cell (seconds from its request to its reply)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, on_cell_execute=self._started, on_cell_executed=self._finished, **kwargs)
        self.seconds: dict[int, float] = {}
        self._start = 0.0

    def _started(self, cell, cell_index):
        self._start = time.monotonic()

    def _finished(self, cell, cell_index, execute_reply):
        self.seconds[cell_index] = time.monotonic() - self._start


def run_lesson(lesson: str, *, fast: bool, timeout: int) -> dict:
    """One headless run of the solution of ``lesson``: its figures (or its failure)."""
    import nbclient

    nb = nbformat.read(SOLUTIONS / lesson / f"{lesson}.ipynb", as_version=4)
    env = dict(os.environ, DDPM_COURSE_ROOT=str(ROOT), DDPM_PROGRESS="log",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    for name in ("NBGRADER_EXECUTION", "DDPM_FAST", "MPLBACKEND"):
        env.pop(name, None)
    if fast:
        env["DDPM_FAST"] = "1"
    training = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and is_training(c)]
    out: dict = {"lesson": lesson, "error": None, "stalls": []}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"ddpm-repeat-{lesson}-") as work:
        for item in (SOLUTIONS / lesson).iterdir():
            if item.is_file() and item.suffix != ".ipynb":
                shutil.copy2(item, work)
        client = TimedClient(nb, timeout=timeout, kernel_name="python3", label=f"solutions/{lesson}",
                             resources={"metadata": {"path": work}})
        try:
            client.execute(env=env)
        except (nbclient.exceptions.CellTimeoutError, nbclient.exceptions.CellExecutionError) as err:
            out["error"] = str(err).strip().splitlines()[0][:300]
        except Exception as err:  # a dead kernel, a broken connection: the next run goes on
            out["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    out["wall_s"] = round(time.monotonic() - start, 1)
    out["stalls"] = client.stalls
    out["training_s"] = {i: round(client.seconds.get(i, 0.0), 1) for i in training}
    out["rest_s"] = round(sum(s for i, s in client.seconds.items() if i not in training), 1)
    return out


def busy_program() -> subprocess.Popen:
    """One CPU-bound process (a student's browser, another job): what the budgets assume beside a lesson."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lessons", nargs="*", help=f"lesson ids (default: all {len(LESSONS)})")
    ap.add_argument("--runs", type=int, default=5, help="runs of each lesson, in a row (default 5)")
    ap.add_argument("--fast", action="store_true", help="DDPM_FAST=1, as nbgrader runs the lessons")
    ap.add_argument("--no-busy", action="store_true", help="no busy program beside the runs")
    ap.add_argument("--timeout", type=int, default=900, help="seconds one cell may run (default 900)")
    ap.add_argument("--json", type=Path, default=None, help="write every run's figures to this file")
    args = ap.parse_args(argv)
    lessons = args.lessons or LESSONS
    unknown = sorted(set(lessons) - set(LESSONS))
    if unknown:
        ap.error(f"no lesson {', '.join(unknown)}; choose among {', '.join(LESSONS)}")
    busy = None if args.no_busy else busy_program()
    runs: list[dict] = []
    try:
        for lesson in lessons:
            for r in range(1, args.runs + 1):
                run = run_lesson(lesson, fast=args.fast, timeout=args.timeout)
                runs.append(run)
                print(f"{lesson} run {r}/{args.runs}: {run['wall_s']:.0f} s, outside training {run['rest_s']:.0f} s, "
                      f"training {list(run['training_s'].values())} s, stalls {len(run['stalls'])}"
                      + (f", FAILED: {run['error']}" if run["error"] else ""), flush=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    bad = False
    mode = "fast" if args.fast else "full"
    print(f"\n{'lesson':<22} runs  failed  stalls recovered  longest run  outside training (≤{REST_BUDGET_S} s)  "
          f"longest training cell (≤{TRAINING_BUDGET_S} s)   [{mode}, {'quiet' if busy is None else 'busy'}]")
    for lesson in lessons:
        mine = [r for r in runs if r["lesson"] == lesson]
        failed = sum(1 for r in mine if r["error"])
        stalls = [s for r in mine for s in r["stalls"]]
        rest = max(r["rest_s"] for r in mine)
        train = max((s for r in mine for s in r["training_s"].values()), default=None)
        train_over = train is not None and train > TRAINING_BUDGET_S
        bad = bad or rest > REST_BUDGET_S or train_over or failed > 0 or bool(stalls)
        print(f"{lesson:<22} {len(mine):>4}  {failed:>6}  {len(stalls):>15}"
              f"  {max(r['wall_s'] for r in mine):>9.0f} s  {rest:>10.0f} s{' OVER' if rest > REST_BUDGET_S else ''}"
              f"  {'—' if train is None else f'{train:.0f} s'}{' OVER' if train_over else ''}")
        for s in stalls:
            print(f"    stall: cell {s['cell']} ({s['first_line']}): {s['kind']} after {s['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "busy": busy is not None, "runs": runs}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
