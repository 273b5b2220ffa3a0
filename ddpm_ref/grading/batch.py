"""Grade every submission of a lesson (or of the course), N at a time, into nbgrader's gradebook.

Each submission is one task: a worker runs nbgrader's own ``autograde`` for it (the course's configuration: the
sandboxed kernel, the judge) against a private copy of the gradebook and a private ``autograded`` folder under
``.grading/``. The tasks run on Dask (:mod:`distributed`): a local cluster of ``--jobs`` worker processes, or the
workers of an existing cluster (``--scheduler tcp://HOST:8786``) that share the course folder.

Only this process writes the course's gradebook (one writer: SQLite needs no more, and nothing else is asked of
the database): for each finished task it copies what ``autograde`` recorded for that submission (the student, the
submission's timestamp, every grade's automatic score, every comment, each notebook's late penalty) into the
gradebook, with nbgrader's own rule for ``needs_manual_grade``, then moves the autograded notebooks into
``autograded/STUDENT/LESSON``. So the Formgrader, ``generate_feedback`` and ``export`` see what a sequential
``nbgrader autograde`` would have written.

A submission counts as graded once its autograded folder holds every submitted notebook, the gradebook has the
submission, and it was not submitted again since. A run that was interrupted grades, when started again, only
what is not graded yet (``force`` grades everything again).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .course_folder import STAGING, Outcome, Submission, db_url, pending, submissions
from .worker import grade_submission

__all__ = ["Summary", "default_jobs", "record", "place", "run"]

#: where the log of a submission that nbgrader could not grade is kept (FAILURES/LESSON/STUDENT.log)
FAILURES = "grading-failures"
#: how often a submission that nbgrader could not grade is tried before it is reported as failed
ATTEMPTS = 2
#: memory one worker may need at its peak: the kernel, the judge's student processes and the worker itself
#: (measured: ``python -m ddpm_ref.grading.bench`` prints the peak per worker; BENCHMARKS.md)
WORKER_BYTES = 7 * 2**29  # 3.5 GiB: the benchmark measured peaks of 2.95 to 3.30 GiB


def default_jobs() -> int:
    """As many workers as the cores and the memory allow (:data:`WORKER_BYTES` each), at least one."""
    import psutil

    by_memory = int(psutil.virtual_memory().available // WORKER_BYTES)
    return max(1, min(os.cpu_count() or 1, by_memory))


# ------------------------------------------------------------------------------------------------ the one writer


def record(gradebook: Any, outcome: Outcome) -> None:
    """Copy what ``autograde`` recorded for one submission into ``gradebook`` (the course's), as nbgrader's
    ``autograde`` and its ``SaveAutoGrades`` write it."""
    from nbgrader.utils import parse_utc

    sub, rec = outcome.submission, outcome.records
    gradebook.update_or_create_student(sub.student)
    stamp = rec.get("timestamp")
    if stamp:
        gradebook.update_or_create_submission(sub.lesson, sub.student, timestamp=parse_utc(stamp))
    else:
        gradebook.update_or_create_submission(sub.lesson, sub.student)
    for name, nb in rec.get("notebooks", {}).items():
        for cell, score in nb["grades"].items():
            grade = gradebook.find_grade(cell, name, sub.lesson, sub.student)
            grade.auto_score = score
            grade.needs_manual_grade = grade.manual_score is not None or grade.auto_score is None
        for cell, text in nb["comments"].items():
            gradebook.find_comment(cell, name, sub.lesson, sub.student).auto_comment = text
        notebook = gradebook.find_submission_notebook(name, sub.lesson, sub.student)
        notebook.late_submission_penalty = nb["late_submission_penalty"]
    gradebook.db.commit()


def place(course: Path, outcome: Outcome) -> None:
    """Move the worker's autograded notebooks to ``autograded/STUDENT/LESSON`` (replacing an older grading)."""
    sub = outcome.submission
    dest = course / "autograded" / sub.student / sub.lesson
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(outcome.staged, dest)
    shutil.rmtree(old, ignore_errors=True)
    work = Path(outcome.staged).parents[2]
    if work.parent.name == STAGING:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the run


def snapshot(url: str, dest: Path) -> Path:
    """A consistent copy of the SQLite gradebook at ``url`` (the workers start from it)."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"the gradebook {url!r} is not a SQLite file: class grading writes one SQLite gradebook")
    source = sqlite3.connect(url.removeprefix("sqlite:///"))
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return dest


@contextlib.contextmanager
def _one_run(course: Path) -> Iterator[Path]:
    """The course's staging folder, held by this run alone (a second run at once gets a one-line error)."""
    staging = course / STAGING
    staging.mkdir(exist_ok=True)
    with open(staging / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another grading run holds {staging / 'lock'}: wait for it to end") from None
        for leftover in staging.iterdir():  # an interrupted run's working copies
            if leftover.name != "lock":
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        yield staging


@contextlib.contextmanager
def _client(jobs: int, scheduler: str | None) -> Iterator[Any]:
    """A Dask client: on the cluster at ``scheduler``, or on a local cluster of ``jobs`` worker processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    # each worker's kernels run torch on the worker's share of the cores (Dask's own default is one thread), unless
    # the instructor chose a count with OMP_NUM_THREADS
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
    with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, memory_limit=0,
                      env={"OMP_NUM_THREADS": threads}, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def _failure_log(course: Path, sub: Submission) -> Path:
    return course / FAILURES / sub.lesson / f"{sub.student}.log"


def _keep_log(course: Path, outcome: Outcome) -> Path:
    """Write the log of a submission nbgrader could not grade to :data:`FAILURES` (removed once it grades)."""
    path = _failure_log(course, outcome.submission)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(outcome.log or outcome.error, encoding="utf-8")
    return path


@dataclass
class Summary:
    """What a run did: the submissions it graded, those already graded, those that failed (with why)."""

    graded: list[Submission] = field(default_factory=list)
    skipped: list[Submission] = field(default_factory=list)
    failed: list[tuple[Submission, str]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0


def run(course: Path, lessons: Sequence[str], *, jobs: int | None = None, scheduler: str | None = None,
        force: bool = False, progress: Callable[..., Any] | None = None) -> Summary:
    """Grade every submission of ``lessons`` not graded yet; return what happened."""
    from distributed import as_completed
    from nbgrader.api import Gradebook

    from ..progress import progress_bar

    course = course.resolve()
    start = time.perf_counter()
    url = db_url(course)
    everything = submissions(course, lessons)
    with _one_run(course) as staging:
        todo = pending(course, everything, url, force)
        summary = Summary(skipped=[s for s in everything if s not in todo])
        if not todo:
            summary.seconds = time.perf_counter() - start
            return summary
        base = str(snapshot(url, staging / "snapshot.db"))
        bar = (progress or progress_bar)(total=len(todo), unit="submission", desc="grading", file=sys.stderr)
        with _client(jobs or default_jobs(), scheduler) as client, Gradebook(url) as gb:
            which: dict[str, Submission] = {}
            tries: dict[Submission, int] = {}

            def submit(sub: Submission) -> Any:
                future = client.submit(grade_submission, str(course), sub.student, sub.lesson, base, pure=False)
                which[future.key] = sub
                tries[sub] = tries.get(sub, 0) + 1
                return future

            queue = as_completed([submit(s) for s in todo])
            for future in queue:
                sub = which.pop(future.key)
                try:
                    outcome = future.result()
                except Exception as e:  # the worker died (or the engine failed): this submission only
                    outcome = Outcome(sub, False, error=f"{type(e).__name__}: {e}"[:300])
                future.release()
                if not outcome.ok and tries[sub] < ATTEMPTS:  # no grade from a passing fault of the machine
                    queue.add(submit(sub))
                    continue
                summary.outcomes.append(outcome)
                if outcome.ok:
                    record(gb, outcome)
                    place(course, outcome)
                    _failure_log(course, sub).unlink(missing_ok=True)
                    summary.graded.append(sub)
                else:
                    summary.failed.append((sub, f"{outcome.error} (log: {_keep_log(course, outcome)})"))
                bar.set_postfix(failed=len(summary.failed), refresh=False)
                bar.update(1)
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
