"""The facts of a course folder that class grading needs: its submissions, its gradebook, what is graded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STAGING", "Submission", "Outcome", "load_config", "db_url", "submissions", "is_graded", "pending"]

#: the folder (inside the course folder) that holds the runs' working copies; removed piece by piece as they land
STAGING = ".grading"


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
    log: str = ""  # nbgrader's log of a submission it could not grade
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
    """The submission time in ``folder/timestamp.txt`` as nbgrader reads it, or None (no file, or unreadable)."""
    from nbgrader.utils import parse_utc

    try:
        return parse_utc((folder / "timestamp.txt").read_text().strip())
    except (OSError, ValueError, OverflowError):
        return None


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
