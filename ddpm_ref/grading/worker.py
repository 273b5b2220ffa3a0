"""A grading worker's task: nbgrader's ``autograde`` of one submission, against a private copy of the gradebook,
with the memory it took (see :mod:`.batch`, which schedules these tasks and writes what they recorded)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .course_folder import STAGING, Outcome, Submission, load_config

__all__ = ["grade_submission"]



def _tree_bytes(proc: Any) -> int:
    """Resident memory of ``proc`` and all its descendants (psutil)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(Exception):
            total += p.memory_info().rss
    return total


@contextlib.contextmanager
def _peak_memory(every_s: float = 0.25) -> Iterator[list[int]]:
    """Samples this process's tree while the block runs; yields a one-item list that ends holding the peak."""
    import psutil

    peak, stop, me = [0], threading.Event(), psutil.Process()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_bytes(me))
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def _recorded(url: str, sub: Submission) -> dict[str, Any]:
    """What ``autograde`` wrote to the gradebook at ``url`` for ``sub``, as plain data."""
    from nbgrader.api import Gradebook

    with Gradebook(url) as gb:
        found = gb.find_submission(sub.lesson, sub.student)
        return {
            "timestamp": found.timestamp.isoformat() if found.timestamp else None,
            "notebooks": {nb.name: {
                "late_submission_penalty": nb.late_submission_penalty,
                "grades": {g.name: g.auto_score for g in nb.grades},
                "comments": {c.name: c.auto_comment for c in nb.comments},
            } for nb in found.notebooks},
        }


def _quiet_worker(staging: Path) -> None:
    """Inside a Dask worker: its output (nbgrader's warnings, the kernels' start-up notes) goes to
    ``STAGING/worker-PID.log`` instead of the instructor's terminal. Elsewhere, nothing changes."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    if getattr(_quiet_worker, "pid", None) == os.getpid():
        return
    log = os.open(staging / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):
        os.dup2(log, fd)
    os.close(log)
    _quiet_worker.pid = os.getpid()  # type: ignore[attr-defined]


def _why(result: dict[str, Any]) -> str:
    """One line on why nbgrader did not grade: the last exception its log shows before its own summary
    (NbGraderException), else its first error line."""
    text = f"{result.get('log') or ''}\n{result.get('error') or ''}"
    raised = [line.strip() for line in text.splitlines()
              if re.match(r"\s*[\w.]+(Error|Exception): ", line) and "NbGraderException" not in line]
    errors = [line.strip() for line in text.splitlines() if "[ERROR]" in line]
    return ((raised or errors or ["nbgrader wrote no autograded notebook"])[-1 if raised else 0])[:300]


def grade_submission(course: str, student: str, lesson: str, snapshot: str) -> Outcome:
    """A worker's task: nbgrader's ``autograde`` of one submission, against a private copy of the gradebook
    (``snapshot``) and a private autograded folder, both under :data:`STAGING`. Never raises for a submission's
    fault (a crashing or looping notebook is graded like any other); an ``Outcome`` with ``ok=False`` says what
    kept nbgrader from grading."""
    from nbgrader.apps.api import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    root, sub = Path(course), Submission(student, lesson)
    _quiet_worker(root / STAGING)
    work = root / STAGING / f"{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    shutil.copyfile(snapshot, work / "gradebook.db")
    config = load_config(root)
    url = f"sqlite:///{work / 'gradebook.db'}"
    config.CourseDirectory.db_url = url
    config.CourseDirectory.autograded_directory = os.path.relpath(work / "autograded", root)
    config.CourseDirectory.log_level = "WARNING"
    start = time.perf_counter()
    with _peak_memory() as peak:
        api = NbGraderAPI(CourseDirectory(config=config), config=config)
        result = api.autograde(lesson, student, force=True, create=True)
    seconds = time.perf_counter() - start
    staged = work / "autograded" / student / lesson
    if not result.get("success") or not staged.is_dir():
        shutil.rmtree(work, ignore_errors=True)
        log = f"{result.get('log') or ''}\n{result.get('error') or ''}"[-50_000:]
        return Outcome(sub, False, error=_why(result), log=log, seconds=seconds, peak_bytes=peak[0])
    return Outcome(sub, True, str(staged), _recorded(url, sub), seconds=seconds, peak_bytes=peak[0])
