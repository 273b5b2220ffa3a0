"""The facts of a course folder that class grading needs: its submissions, its gradebook, what is graded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STAGING", "Submission", "Outcome", "CheckCellPoints", "load_config", "db_url", "source_notebook",
           "lesson_checks", "submissions", "is_graded", "pending"]

#: the folder (inside the course folder) that holds the runs' working copies; removed piece by piece as they land
STAGING = ".grading"


@dataclass(frozen=True, order=True)
class Submission:
    """One student's submission of one lesson: ``submitted/STUDENT/LESSON/``."""

    student: str
    lesson: str

    def __str__(self) -> str:
        return f"{self.student}/{self.lesson}"


@dataclass(frozen=True)
class CheckCellPoints:
    """One check cell of a lesson: its grade_id, the exercise it checks, whether it runs the hidden checks, and
    its points (nbgrader's ``points``)."""

    grade_id: str
    exercise: str
    hidden: bool
    points: float


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


def source_notebook(course: Path, lesson: str) -> Path:
    """The source (solution) notebook of ``lesson``: ``SOURCE/LESSON/LESSON.ipynb``."""
    from nbgrader.coursedir import CourseDirectory

    source = course / CourseDirectory(config=load_config(course)).source_directory
    path = source / lesson / f"{lesson}.ipynb"
    if not path.is_file():
        known = sorted(d.name for d in source.iterdir() if (d / f"{d.name}.ipynb").is_file())
        raise ValueError(f"no lesson {lesson} in {source}: choose among {', '.join(known)}")
    return path


def lesson_checks(course: Path, lesson: str) -> list[CheckCellPoints]:
    """The check cells of ``lesson``, in notebook order, with their points (read from its source notebook by
    the judge's own reader, ``tests.judge.check_cells``)."""
    import sys

    import nbformat

    if str(course) not in sys.path:
        sys.path.insert(0, str(course))  # the judge lives in the course's tests/
    from tests.judge import check_cells

    nb = nbformat.read(source_notebook(course, lesson), as_version=4)
    return [CheckCellPoints(c.grade_id, c.exercise, c.hidden,
                            float(nb.cells[c.index].metadata["nbgrader"].get("points") or 0))
            for c in check_cells(nb)]


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
