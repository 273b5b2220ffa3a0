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
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Submission", "Outcome", "default_jobs", "submissions", "pending", "grade_submission", "record", "run"]

#: the folder (inside the course folder) that holds the runs' working copies; removed piece by piece as they land
STAGING = ".grading"
#: memory one worker may need at its peak: the kernel, the judge's student processes and the worker itself
#: (measured: ``python benchmarks/grade_class.py`` prints the peak per worker; BENCHMARKS.md)
WORKER_BYTES = 3 * 2**30


@dataclass(frozen=True, order=True)
class Submission:
    """One student's submission of one lesson: ``submitted/STUDENT/LESSON/``."""

    student: str
    lesson: str

    def __str__(self) -> str:
        return f"{self.student}/{self.lesson}"


@dataclass
class Outcome:
    """What a worker hands back for one submission: whether nbgrader graded it, what it recorded, where the
    autograded notebooks wait, and what it cost."""

    submission: Submission
    ok: bool
    staged: str = ""  # the worker's autograded/STUDENT/LESSON folder
    records: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    peak_bytes: int = 0  # the most memory the worker and everything it started held at once


# ------------------------------------------------------------------------------------------------ the course


def load_config(course: Path) -> Any:
    """The course's nbgrader configuration (``course/nbgrader_config.py``)."""
    from traitlets.config.loader import PyFileConfigLoader

    if not (course / "nbgrader_config.py").is_file():
        raise FileNotFoundError(f"{course} has no nbgrader_config.py: give the course folder (--course)")
    return PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()


def db_url(course: Path) -> str:
    """The course's gradebook (nbgrader's ``CourseDirectory.db_url``)."""
    from nbgrader.coursedir import CourseDirectory

    return CourseDirectory(config=load_config(course)).db_url


def submissions(course: Path, lessons: Sequence[str]) -> list[Submission]:
    """Every ``submitted/STUDENT/LESSON`` folder of ``lessons``, sorted."""
    found = [Submission(d.parent.name, d.name) for lesson in lessons for d in (course / "submitted").glob(f"*/{lesson}")
             if d.is_dir()]
    return sorted(found)


def _timestamp(folder: Path) -> Any:
    """The submission time in ``folder/timestamp.txt`` (nbgrader's reading of it), or None."""
    from nbgrader.coursedir import CourseDirectory

    return CourseDirectory().get_existing_timestamp(str(folder))


def is_graded(course: Path, sub: Submission, gradebook: Any) -> bool:
    """Whether ``sub`` is graded: its notebooks autograded, in the gradebook, and not submitted again since."""
    from nbgrader.api import MissingEntry

    done, sent = course / "autograded" / sub.student / sub.lesson, course / "submitted" / sub.student / sub.lesson
    if not done.is_dir() or any(not (done / nb.name).is_file() for nb in sent.glob("*.ipynb")):
        return False
    new, old = _timestamp(sent), _timestamp(done)
    if new is not None and old is not None and new > old:
        return False
    try:
        gradebook.find_submission(sub.lesson, sub.student)
    except MissingEntry:
        return False
    return True


def pending(course: Path, subs: Sequence[Submission], url: str, force: bool = False) -> list[Submission]:
    """The submissions among ``subs`` still to grade (all of them with ``force``)."""
    from nbgrader.api import Gradebook

    if force:
        return list(subs)
    with Gradebook(url) as gb:
        return [s for s in subs if not is_graded(course, s, gb)]


def default_jobs() -> int:
    """As many workers as the cores and the memory allow (:data:`WORKER_BYTES` each), at least one."""
    import psutil

    by_memory = int(psutil.virtual_memory().available // WORKER_BYTES)
    return max(1, min(os.cpu_count() or 1, by_memory))


# ------------------------------------------------------------------------------------------------ a worker's task


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
        why = (result.get("error") or result.get("log") or "nbgrader wrote no autograded notebook").strip()
        shutil.rmtree(work, ignore_errors=True)
        return Outcome(sub, False, error=why.splitlines()[-1][:300] if why else "", seconds=seconds,
                       peak_bytes=peak[0])
    return Outcome(sub, True, str(staged), _recorded(url, sub), seconds=seconds, peak_bytes=peak[0])


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
    with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, memory_limit=0,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


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
            futures = [client.submit(grade_submission, str(course), s.student, s.lesson, base, pure=False)
                       for s in todo]
            which = {f.key: s for f, s in zip(futures, todo, strict=True)}
            for future in as_completed(futures):
                sub = which[future.key]
                try:
                    outcome = future.result()
                except Exception as e:  # the worker died (or the engine failed): this submission only
                    outcome = Outcome(sub, False, error=f"{type(e).__name__}: {e}"[:300])
                summary.outcomes.append(outcome)
                if outcome.ok:
                    record(gb, outcome)
                    place(course, outcome)
                    summary.graded.append(sub)
                else:
                    summary.failed.append((sub, outcome.error))
                bar.set_postfix(failed=len(summary.failed), refresh=False)
                bar.update(1)
                future.release()
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
