"""The class report of one lesson: which checks the class passed, which mistakes it made, who cheated and whose code
is a near-copy (for review, never a score), from the records of the autograded notebooks
(``<course>/autograded/<student>/<lesson>/*.ipynb``), as a tidy CSV table and one self-contained HTML page.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..files import write_atomic
from . import similarity
from .records import CheckCellRecord, records_of

__all__ = ["SECTIONS", "ClassReport", "Row", "class_report", "main_report", "write_report"]

#: the sections of report.csv, in order
SECTIONS = ("check", "mistake", "unnamed", "missing", "crashed", "timeout", "cheat", "similarity")
_PASSED = ("passed", "skipped")
#: a solution region of a source answer cell; nbgrader releases it as a stub that raises NotImplementedError
_SOLUTION_REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION$.*?^[ \t]*### END SOLUTION[ \t]*$",
                              re.MULTILINE | re.DOTALL)
_LABELS = {"unnamed": "(failed, no mistake named)", "missing": "(not attempted)", "timeout": "(timed out)"}

Students = dict[Any, set[str]]
Score = tuple[float, float]  # (score, max score)


@dataclass(frozen=True)
class Row:
    """One line of report.csv: ``students`` of ``of`` students are counted under ``section`` / ``exercise`` /
    ``item`` (a check passed, a mistake made, …)."""

    section: str
    exercise: str
    item: str
    students: int
    of: int


@dataclass
class ClassReport:
    """What one lesson's autograded submissions say about the class. Students are counted once per entry."""

    course: Path
    lesson: str
    students: list[str]
    #: student → (score, max score)
    scores: dict[str, Score]
    #: the exercises, in the order the notebooks check them
    exercises: list[str] = field(default_factory=list)
    #: exercise → the students with a record of it
    judged: Students = field(default_factory=lambda: defaultdict(set))
    #: (exercise, check, hidden) → student → whether every finding of the check passed (or was skipped)
    checks: dict[tuple[str, str, bool], dict[str, bool]] = field(default_factory=dict)
    #: (exercise, mistake) → the students whose failures named it
    mistakes: Students = field(default_factory=lambda: defaultdict(set))
    #: exercise → the students with a failure that named no mistake
    unnamed: Students = field(default_factory=lambda: defaultdict(set))
    #: exercise → the students who did not attempt it
    missing: Students = field(default_factory=lambda: defaultdict(set))
    #: (exercise, exception type) → the students whose code crashed
    crashed: Students = field(default_factory=lambda: defaultdict(set))
    #: exercise → the students whose code ran out of time
    timeout: Students = field(default_factory=lambda: defaultdict(set))
    #: reason → the students with a cheat finding of that kind
    cheats: Students = field(default_factory=lambda: defaultdict(set))
    flags: list[similarity.Flag] = field(default_factory=list)

    @property
    def cheaters(self) -> list[str]:
        """The students with at least one cheat finding."""
        return sorted(set().union(*self.cheats.values()))

    @property
    def mean_score(self) -> Score:
        """The class's mean (score, max score)."""
        n = max(len(self.scores), 1)
        return sum(s for s, _ in self.scores.values()) / n, sum(m for _, m in self.scores.values()) / n

    def rows(self, exercise: str | None = None) -> list[Row]:
        """The rows of report.csv (only those of ``exercise``, if given)."""
        rows = [*self._check_rows(), *self._problem_rows(), *self._cheat_rows(), *self._flag_rows()]
        return rows if exercise is None else [r for r in rows if r.exercise == exercise]

    def _check_rows(self) -> list[Row]:
        return [Row("check", ex, f"{check} (hidden)" if hidden else check, sum(passed.values()), len(passed))
                for (ex, check, hidden), passed in self.checks.items()]

    def _problem_rows(self) -> list[Row]:
        return [row for exercise in self.exercises for row in self.problems(exercise)]

    def problems(self, exercise: str) -> list[Row]:
        """An exercise's rows of the sections mistake, unnamed, missing, crashed and timeout, in that order."""
        of = len(self.judged[exercise])
        rows = [Row("mistake", exercise, m, len(who), of) for (e, m), who in self.mistakes.items() if e == exercise]
        for section, table in (("unnamed", self.unnamed), ("missing", self.missing)):
            rows += [Row(section, exercise, _LABELS[section], len(table[exercise]), of)] if table.get(exercise) else []
        rows += [Row("crashed", exercise, r, len(who), of) for (e, r), who in self.crashed.items() if e == exercise]
        if self.timeout.get(exercise):
            rows.append(Row("timeout", exercise, _LABELS["timeout"], len(self.timeout[exercise]), of))
        return rows

    def _cheat_rows(self) -> list[Row]:
        n = len(self.students)
        return ([Row("cheat", "", reason, len(who), n) for reason, who in sorted(self.cheats.items())]
                + ([Row("cheat", "", "(any reason)", len(self.cheaters), n)] if self.cheats else []))

    def _flag_rows(self) -> list[Row]:
        return [Row("similarity", f.exercise, f"{f.student} ~ {f.other}: {f.similarity:.3f}",
                    1 if f.other == "reference" else 2, len(self.judged[f.exercise])) for f in self.flags]


# ------------------------------------------------------------------------------------------------ reading


def _notebooks(course: Path, lesson: str) -> dict[str, list[Path]]:
    """student → the student's autograded notebooks of ``lesson``."""
    found = {}
    for folder in sorted((course / "autograded").glob(f"*/{lesson}")):
        paths = sorted(folder.glob("*.ipynb"))
        if folder.is_dir() and paths:
            found[folder.parent.name] = paths
    return found


def _answers(nb: Any, exercises: set[str]) -> dict[str, str]:
    """exercise → the source of its answer cell, for the exercises among ``exercises`` that ``nb`` answers."""
    answers = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader") or {}
        if cell.get("cell_type") == "code" and meta.get("solution") and meta.get("grade_id") in exercises:
            answers[meta["grade_id"]] = cell.source
    return answers


def _released(source: str) -> str:
    """A source answer cell as the release hands it out: each solution region (with none, the whole cell) a stub."""
    if not _SOLUTION_REGION.search(source):
        return "raise NotImplementedError()\n"
    return _SOLUTION_REGION.sub(lambda m: f"{m.group(1)}raise NotImplementedError()", source)


def _handed_out(course: Path, lesson: str, exercises: set[str]) -> dict[str, str]:
    """exercise → its answer cell as handed out, from the course's source notebooks (``solutions/<lesson>``)."""
    given = {}
    for path in sorted((course / "solutions" / lesson).glob("*.ipynb")):
        given.update({k: _released(v) for k, v in _answers(nbformat.read(path, as_version=4), exercises).items()})
    return given


def _notebook_score(nb: Any) -> Score:
    """(score, max score) of an autograded notebook, as nbgrader decides it from the check cells' outputs."""
    from nbgrader.utils import determine_grade, is_grade

    score = maximum = 0.0
    for cell in nb.cells:
        if is_grade(cell):
            got, most = determine_grade(cell)
            score, maximum = score + (got or 0.0), maximum + most
    return score, maximum


def _gradebook_scores(db_url: str, lesson: str, students: list[str]) -> dict[str, Score]:
    """student → (score, max score) of the students whose submission the gradebook holds."""
    from nbgrader.api import Gradebook, MissingEntry

    scores = {}
    with Gradebook(db_url) as gb:
        for student in students:
            try:
                submission = gb.find_submission(lesson, student)
            except MissingEntry:
                continue
            scores[student] = (float(submission.score), float(submission.max_score))
    return scores


def _count(report: ClassReport, student: str, record: CheckCellRecord) -> None:
    """Adds one check cell's record of ``student`` to the report."""
    exercise = record.exercise or record.grade_id
    if exercise not in report.exercises:
        report.exercises.append(exercise)
    report.judged[exercise].add(student)
    for check, finding in record.checks.items():
        passed = report.checks.setdefault((exercise, check, record.hidden), {})
        passed[student] = passed.get(student, True) and finding.get("status") in _PASSED
        _count_problem(report, student, exercise, finding)


def _count_problem(report: ClassReport, student: str, exercise: str, finding: dict[str, str]) -> None:
    status, mistake, reason = finding.get("status", ""), finding.get("mistake", ""), finding.get("reason", "")
    if status == "failed":
        (report.mistakes[(exercise, mistake)] if mistake else report.unnamed[exercise]).add(student)
    elif status == "missing":
        report.missing[exercise].add(student)
    elif status == "timeout":
        report.timeout[exercise].add(student)
    elif status == "crashed":
        report.crashed[(exercise, reason or "unknown")].add(student)
    elif status == "cheat":
        report.cheats[reason or "unknown"].add(student)


def class_report(course: Path, lesson: str, db_url: str | None = None) -> ClassReport:
    """The report of ``lesson`` from ``course``'s autograded notebooks; scores from the gradebook (``db_url``, by
    default ``course/gradebook.db`` if it exists) where it holds the submission, else from the notebooks."""
    course = Path(course)
    notebooks = _notebooks(course, lesson)
    if not notebooks:
        raise ValueError(f"no autograded submissions of {lesson} in {course / 'autograded'}: grade them first "
                         f"(python -m ddpm_ref grade run {lesson})")
    report = ClassReport(course, lesson, sorted(notebooks), {})
    read = {student: [nbformat.read(p, as_version=4) for p in paths] for student, paths in notebooks.items()}
    for student in report.students:
        for nb in read[student]:
            for record in records_of(nb):
                _count(report, student, record)
    report.scores = _scores(course, lesson, read, db_url)
    exercises = set(report.exercises)
    code = {s: {k: v for nb in nbs for k, v in _answers(nb, exercises).items()} for s, nbs in read.items()}
    report.flags = similarity.flags(code, similarity.reference_sources(report.exercises),
                                    _handed_out(course, lesson, exercises))
    return report


def _scores(course: Path, lesson: str, read: dict[str, list[Any]], db_url: str | None) -> dict[str, Score]:
    """student → (score, max score): from the gradebook where it holds the submission, else from the notebooks."""
    if db_url is None and (course / "gradebook.db").is_file():
        db_url = f"sqlite:///{course / 'gradebook.db'}"
    scores = _gradebook_scores(db_url, lesson, sorted(read)) if db_url else {}
    for student, nbs in sorted(read.items()):
        if student not in scores:
            per_notebook = [_notebook_score(nb) for nb in nbs]
            scores[student] = (sum(s for s, _ in per_notebook), sum(m for _, m in per_notebook))
    return dict(sorted(scores.items()))


# ------------------------------------------------------------------------------------------------ writing


def _csv(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "exercise", "item", "students", "of"])
    writer.writerows([r.section, r.exercise, r.item, r.students, r.of] for r in rows)
    return buffer.getvalue()


def _label(text: str) -> str:
    """A bar's label: at most 90 characters, wrapped at 45."""
    return textwrap.fill(textwrap.shorten(text, 90, placeholder=" …"), 45)


def _bars(ax: Any, rows: list[Row], values: list[float], title: str, xlabel: str, color: str) -> None:
    """Horizontal bars, one per row, labelled by the row's item."""
    y = range(len(rows))
    ax.barh(y, values, color=color)
    ax.set_yticks(list(y), [_label(r.item) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)


def _chart(report: ClassReport, exercise: str) -> bytes:
    """An exercise's bar chart as PNG: the share of students passing each check; students per mistake or failure."""
    checks = [r for r in report.rows(exercise) if r.section == "check"]
    problems = report.problems(exercise)
    panels = [p for p in (checks, problems) if p]
    fig = Figure(figsize=(9, 1.2 + 0.45 * sum(len(p) for p in panels) + 0.6 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=[len(p) + 1 for p in panels])[:, 0]
    if checks:
        _bars(axes[0], checks, [r.students / max(r.of, 1) for r in checks], f"{exercise}: checks",
              "share of students passing", "tab:blue")
        axes[0].set_xlim(0, 1)
    if problems:
        _bars(axes[-1], problems, [r.students for r in problems], f"{exercise}: what went wrong", "students",
              "tab:red")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _exercise_section(report: ClassReport, exercise: str) -> str:
    png = base64.b64encode(_chart(report, exercise)).decode("ascii")
    rows = [r for r in report.rows(exercise) if r.section != "similarity"]
    return (f"<h2>{_e(exercise)}</h2>\n<img src=\"data:image/png;base64,{png}\" "
            f"alt=\"{_e(exercise)}: checks and mistakes\">\n"
            + _table(["section", "item", "students", "of"], [[r.section, r.item, r.students, r.of] for r in rows]))


_STYLE = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
          "img{max-width:100%}")


def _html(report: ClassReport) -> str:
    score, maximum = report.mean_score
    cheats = [[reason, len(who), ", ".join(sorted(who))] for reason, who in sorted(report.cheats.items())]
    flags = [[f.exercise, f.student, f.other, f"{f.similarity:.3f}"] for f in report.flags]
    parts = [
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Class report: {_e(report.lesson)}"
        f"</title><style>{_STYLE}</style></head><body>",
        f"<h1>Class report: {_e(report.lesson)}</h1>",
        f"<p>{len(report.students)} submissions; mean score {score:.2f} of {maximum:.2f}.</p>",
        *(_exercise_section(report, exercise) for exercise in report.exercises),
        f"<h2>Cheating</h2>\n<p>{len(report.cheaters)} of {len(report.students)} submissions had a cheat finding.</p>",
        _table(["reason", "submissions", "students"], cheats),
        "<h2>Similar code</h2>\n<p>Answers nearly the same as the reference or as each other: for review, never a "
        "score.</p>",
        _table(["exercise", "student", "alike", "similarity"], flags),
        "<p>The same numbers as a table: <a href=\"report.csv\">report.csv</a>.</p>",
        "</body></html>\n",
    ]
    return "\n".join(parts)


def write_report(report: ClassReport, out: Path) -> dict[str, Path]:
    """Writes ``report.csv`` and ``report.html`` into the folder ``out``; returns their paths by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {"csv": write_atomic(out / "report.csv", _csv(report.rows())),
            "html": write_atomic(out / "report.html", _html(report))}


def main_report(course: Path, lesson: str, out: Path | None = None) -> Path:
    """Builds and writes the report of ``lesson`` (into ``course/reports/<lesson>`` by default); returns the page."""
    report = class_report(Path(course), lesson)
    return write_report(report, Path(out) if out is not None else Path(course) / "reports" / lesson)["html"]
