"""The judge: grades one exercise of a submitted notebook with the checks here and the student's code elsewhere.

For each exercise, the notebook's cells above its check cell run in a fresh sandboxed process
(:class:`~tests.judge.remote.StudentProcess`) in which the exercise's reference, and every later one, does not
exist. The checks run in this process, which never runs a line of the student's code: they call the student's
definitions through proxies, and every value they compare came back as plain data. So no trick inside the notebook
(hooks, patched libraries, frame inspection, exit calls, printed output) can touch a check or its verdict, and no
route to the reference is left: there is none in the student's process.

``judge_notebook(nb, folder)`` grades every check cell of a notebook: {grade_id: :class:`Verdict`}.
"""

from __future__ import annotations

import ast
import contextlib
import io
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import harness, integrity
from tests.judge import remote, sandbox, withhold
from tests.notebook_impl import _strip_magics, _top_level_names

__all__ = ["CheckCell", "Plan", "Verdict", "check_cells", "grade_exercise", "judge_notebook", "plan"]

#: seconds the checks of one exercise (visible and hidden) may take in all, the student's process included
EXERCISE_BUDGET_S = 150.0
#: seconds the notebook's cells may take to run in the student's process before the checks start
LOAD_BUDGET_S = 60.0
#: how often a student's process that died or hung is started again for the exercise's remaining checks
RESTARTS = 2


@dataclass(frozen=True)
class CheckCell:
    """A check cell: its grade_id, the exercise it checks, whether it runs the hidden checks, its index."""

    grade_id: str
    exercise: str
    hidden: bool
    index: int


@dataclass
class Verdict:
    """What a check cell scores and shows: ``passed``, the printed lines, the error line when it failed."""

    passed: bool
    text: str
    error: str = ""
    results: dict[str, str | None] = field(default_factory=dict)  # check name → None (passed) or its message
    findings: dict[str, dict[str, str]] = field(default_factory=dict)  # check name → harness.finding(...)


def _run_checks_call(source: str) -> tuple[str, bool] | None:
    """("q_sample", hidden) for a cell calling ``run_checks("q_sample", ..., hidden=...)``, else None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "run_checks"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            hidden = any(k.arg == "hidden" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
            return node.args[0].value, hidden
    return None


def check_cells(nb: Any) -> list[CheckCell]:
    """The autograded cells of a notebook that run checks (their source is nbgrader's, restored from the
    gradebook while autograding; a student cannot change which exercise a cell checks)."""
    found = []
    for index, cell in enumerate(nb.cells):
        meta = (cell.get("metadata", {}).get("nbgrader") or {})
        if cell.get("cell_type") != "code" or not meta.get("grade"):
            continue
        call = _run_checks_call(cell.get("source", ""))
        if call is not None and call[0] in harness.EXERCISES:
            found.append(CheckCell(meta.get("grade_id", f"cell-{index}"), call[0], call[1], index))
    return found


def student_cells(nb: Any, before: int, exercise: str,
                  name: str = "notebook") -> list[tuple[str, str, tuple[str, ...]]]:
    """The code cells above cell ``before`` as the student's process for ``exercise`` runs them: (file name,
    source, names the cell defines), magics dropped. Left out: nbgrader's grade cells, cells tagged ``heavy``
    (unless it is the exercise's own), and the answer cells of the other exercises (their names point at the
    reference while ``exercise`` is graded, and nothing written there can reach this exercise's grade)."""
    cells = []
    for index, cell in enumerate(nb.cells[:before]):
        meta = cell.get("metadata", {}).get("nbgrader") or {}
        own = meta.get("solution") and meta.get("grade_id") == exercise
        if cell.get("cell_type") != "code" or meta.get("grade") or (meta.get("solution") and not own):
            continue
        if not own and "heavy" in (cell.get("metadata", {}).get("tags") or []):
            continue
        source = _strip_magics(cell.get("source", ""))
        if not source or not source.strip():
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            names: tuple[str, ...] = ()
        else:
            grade_id = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
            names = _top_level_names(tree, grade_id)
        cells.append((f"<{name} cell {index}>", source, names))
    return cells


class _Session:
    """The student's process for one exercise, started again (within the budget) when it dies or hangs."""

    def __init__(self, exercise: str, cells: list, folder: Path | None, limits: sandbox.Limits) -> None:
        self.exercise, self.cells, self.folder, self.limits = exercise, cells, folder, limits
        self.deadline = float("inf")  # set by begin()
        self.restarts = 0
        self.proc: remote.StudentProcess | None = None
        self.last_error = ""

    def current(self) -> remote.StudentProcess:
        if self.proc is not None and self.proc.dead is None:
            return self.proc
        if self.proc is not None:
            self.last_error = self.proc.dead or ""
            if self.restarts >= RESTARTS or not self.proc.loaded:  # cells that hang or crash would do it again
                raise remote.StudentProcessError(self.last_error, self.proc.dead_status)
            self.restarts += 1
        left = self.deadline - time.monotonic()
        if left <= 1:
            raise remote.StudentProcessError(self.last_error or f"`{self.exercise}` used up its grading time",
                                             "timeout")
        self.proc = remote.StudentProcess(self.exercise, self.cells, self.folder, load_budget=min(LOAD_BUDGET_S, left),
                                          limits=self.limits)
        self.proc.deadline = self.deadline
        return self.proc

    def begin(self) -> None:
        """The exercise's checks start now: its time budget starts too."""
        self.deadline = time.monotonic() + EXERCISE_BUDGET_S
        if self.proc is not None:
            self.proc.deadline = self.deadline

    def started(self) -> _Session:
        with contextlib.suppress(remote.StudentProcessError):
            self.current()
        return self

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()


class _Definition:
    """``impl.<exercise>`` for the checks: the student's object in the current process (re-looked-up after a
    restart). Refuses at once when the name is bound to the withheld reference itself."""

    def __init__(self, session: _Session) -> None:
        self._session = session
        self._found: tuple[Any, Any] | None = None  # (process, the student's object in it)

    def _target(self) -> Any:
        proc = self._session.current()
        if self._found is not None and self._found[0] is proc:
            return self._found[1]
        found = proc.request("lookup", self._session.exercise)
        if not found.get("found"):
            raise harness.MissingDefinition(self._session.exercise)
        for key, how in (("withheld", "is"), ("subclasses", "subclasses")):
            if found.get(key) is not None:
                raise integrity.reference_used(self._session.exercise, how)
        self._found = (proc, proc.wrap(found.get("value")))
        return self._found[1]

    def _resolve(self) -> Any:
        return self._target()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(self._target(), name)

    def __repr__(self) -> str:
        return f"<your {self._session.exercise}>"


def _impl(session: _Session) -> harness.Impl:
    """The checks' ``impl``: the exercise's name bound to the student's definition, if the notebook has one."""
    exercise = session.exercise
    session.begin()
    try:
        proc = session.current()
        defined, why = proc.request("lookup", exercise).get("found"), proc.load_errors
    except remote.StudentProcessError as e:
        defined, why = True, {}  # each check reports the failure
        session.last_error = str(e)
    impl = harness.Impl(**({exercise: _Definition(session)} if defined else {}))
    impl._origin, impl._reference, impl._why_missing = "your notebook", False, why
    return impl


class _ThreadStdout(io.TextIOBase):
    """``sys.stdout`` that sends what a thread prints to that thread's buffer, if it set one (the judge can run
    beside nbgrader's executing kernel without taking its output)."""

    def __init__(self, real: Any) -> None:
        self.real, self.local = real, threading.local()

    def write(self, text: str) -> int:
        target = getattr(self.local, "buffer", None)
        return (target or self.real).write(text)

    def flush(self) -> None:
        (getattr(self.local, "buffer", None) or self.real).flush()


@contextlib.contextmanager
def _printing_to(buffer: io.StringIO) -> Iterator[None]:
    if not isinstance(sys.stdout, _ThreadStdout):
        sys.stdout = _ThreadStdout(sys.stdout)
    stdout = sys.stdout
    old, stdout.local.buffer = getattr(stdout.local, "buffer", None), buffer
    try:
        yield
    finally:
        stdout.local.buffer = old


def _grade(session: _Session, hidden: tuple[bool, ...]) -> dict[bool, Verdict]:
    exercise = session.exercise
    impl = _impl(session)
    verdicts: dict[bool, Verdict] = {}
    for which in hidden:
        if not any(f.hidden == which for f in harness.REGISTRY.get(exercise, [])):
            continue
        out = io.StringIO()
        findings: dict[str, dict[str, str]] = {}
        with _printing_to(out):
            try:
                results = harness.run_checks(exercise, impl, hidden=which, raise_on_failure=False,
                                             findings=findings)
            except Exception as e:  # the judge's own failure: the cell fails and says so
                results = {"judge": f"{type(e).__name__}: {e}"}
                findings = {"judge": {"status": "crashed", "reason": f"grader: {type(e).__name__}"}}
                print(f"  ✗ the grader failed: {type(e).__name__}: {e}")
        failed = [n for n, msg in results.items() if msg is not None]
        error = f"{exercise}: {len(failed)} check(s) failed: {', '.join(failed)}" if failed else ""
        verdicts[which] = Verdict(not failed, out.getvalue(), error, results, findings)
    return verdicts


def grade_exercise(nb: Any, folder: Path | None, exercise: str, *, before: int | None = None,
                   hidden: tuple[bool, ...] = (False, True), limits: sandbox.Limits = sandbox.DEFAULT_LIMITS,
                   name: str = "notebook") -> dict[bool, Verdict]:
    """Run the visible and/or hidden checks of ``exercise`` on the notebook's code above cell ``before``."""
    sandbox.require()
    harness.load_all_checks()
    withhold.cached(exercise)
    before = len(nb.cells) if before is None else before
    with _Session(exercise, student_cells(nb, before, exercise, name), folder, limits) as session:
        return _grade(session, hidden)


@dataclass
class Plan:
    """What judging a notebook takes, worked out from its cells: per exercise, its check cells and the cells its
    process runs. (Made in the calling thread: it parses code, which Python 3.11 cannot do in two threads.)"""

    exercises: dict[str, tuple[list[CheckCell], list[tuple[str, str, tuple[str, ...]]]]]


def plan(nb: Any, name: str = "notebook") -> Plan:
    harness.load_all_checks()
    cells = check_cells(nb)
    exercises = {}
    for exercise in dict.fromkeys(c.exercise for c in cells):
        mine = [c for c in cells if c.exercise == exercise]
        exercises[exercise] = (mine, student_cells(nb, min(c.index for c in mine), exercise, name))
        withhold.cached(exercise)
    return Plan(exercises)


def judge_notebook(nb: Any, folder: Path | None, *, limits: sandbox.Limits = sandbox.DEFAULT_LIMITS,
                   name: str = "notebook", prepared: Plan | None = None) -> dict[str, Verdict]:
    """Every check cell of ``nb``: {grade_id: Verdict}. ``folder`` holds the files the notebook reads."""
    sandbox.require()
    prepared = prepared or plan(nb, name)
    verdicts: dict[str, Verdict] = {}
    with contextlib.ExitStack() as stack:
        # every exercise's process starts now, so that their start-up overlaps with the checks of the first ones
        sessions = {x: stack.enter_context(_Session(x, cells, folder, limits).started())
                    for x, (_, cells) in prepared.exercises.items()}
        for exercise, (mine, _) in prepared.exercises.items():
            results = _grade(sessions[exercise], tuple(sorted({c.hidden for c in mine})))
            for c in mine:
                verdicts[c.grade_id] = results.get(c.hidden, Verdict(False, "", f"{exercise}: no checks ran"))
    return verdicts
