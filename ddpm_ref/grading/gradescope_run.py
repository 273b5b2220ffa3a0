"""What Gradescope's ``run_autograder`` runs for every submission (``python -m ddpm_ref.grading.gradescope_run
ROOT``): grade the notebook in ``ROOT/submission`` and write ``ROOT/results/results.json``.

The notebook is graded by nbgrader's ``autograde`` with the course's configuration, as
:func:`.worker.grade_submission` grades a class: the notebook runs in the sandbox and each exercise is judged
outside the student's code. The scores are nbgrader's, read from its gradebook by this process after every
sandboxed process has ended; no process that runs a line of the submission can see ``ROOT/results`` or the
course. Only the notebook is taken from the submission (never a link, never any other file).

``results.json`` (Gradescope's autograder specification): one test per check cell, with ``name``, ``score``,
``max_score``, ``status`` and ``output`` (the check cell's verdict: the named mistake). Visible checks are
``visible``. Hidden checks are ``after_published``: the student sees their score when the instructor publishes
the grades, as nbgrader's feedback shows it, and never their details (those go to the run's output, which
Gradescope shows to staff only).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import write_atomic

__all__ = ["Unusable", "find_notebook", "results", "run", "write_results"]

#: the student id the submission is graded under (Gradescope keeps who it is; nothing here needs it)
STUDENT = "student"


class Unusable(Exception):
    """The submission holds no notebook that can be graded: the message says what to do."""


@dataclass(frozen=True)
class _Check:
    grade_id: str
    exercise: str
    hidden: bool
    points: float


def find_notebook(submission: Path, lesson: str) -> Path:
    """The one ``LESSON.ipynb`` in ``submission`` (at any depth: an upload, or a repository), as a regular file
    inside the folder; :class:`Unusable` with a one-line message otherwise."""
    want = f"{lesson}.ipynb"
    found = [p for p in sorted(submission.rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts]
    named = [p for p in found if p.name == want]
    if not named:
        others = ", ".join(p.name for p in found[:3])
        raise Unusable(f"no notebook named {want} in the submission" + (
            f" (found {others}): rename your notebook to {want} and submit again" if found
            else f": upload your {want} (File > Download in Jupyter)"))
    if len(named) > 1:
        raise Unusable(f"{len(named)} notebooks named {want} in the submission: submit only one")
    path = named[0]
    if path.is_symlink() or not path.is_file() or submission.resolve() not in path.resolve().parents:
        raise Unusable(f"{want} in the submission is not a regular file: upload the notebook itself")
    return path


def _read(path: Path, lesson: str) -> bytes:
    """The notebook's bytes, once it parses as a notebook (else :class:`Unusable`)."""
    import nbformat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        data = f.read(64 << 20)
    try:
        nbformat.reads(data.decode("utf-8"), as_version=4)
    except Exception as e:  # noqa: BLE001 (any parse failure is the submission's)
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise Unusable(f"{lesson}.ipynb is not a readable notebook ({why}): download it again from Jupyter "
                       "(File > Download) and submit that file") from None
    return data


def _cell_text(nb: Any, grade_id: str) -> str:
    """What the judge printed in the check cell ``grade_id`` of the autograded notebook ('' when missing)."""
    for cell in nb.cells:
        if (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id") == grade_id:
            return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    return ""


def results(checks: list[_Check], scores: dict[str, float | None] | None, texts: dict[str, str], *,
            message: str, seconds: float) -> dict[str, Any]:
    """The ``results.json`` document. ``scores`` None: nothing was graded (every test scores 0)."""
    tests = []
    for c in checks:
        score = float((scores or {}).get(c.grade_id) or 0.0)
        passed = scores is not None and score >= c.points
        if c.hidden:
            output = (f"Hidden checks of `{c.exercise}` {'passed' if passed else 'not passed'} ({score:g} of "
                      f"{c.points:g} points). What they check stays hidden." if scores is not None else message)
        else:
            shown = "\n".join(line.strip() for line in texts.get(c.grade_id, "").splitlines() if line.strip())
            output = shown or (message if scores is None else "this check cell is missing from your notebook")
        tests.append({"name": f"{c.exercise}: {'hidden checks' if c.hidden else 'checks'}",
                      "score": score, "max_score": c.points, "status": "passed" if passed else "failed",
                      "output": output, "visibility": "after_published" if c.hidden else "visible"})
    return {"execution_time": round(seconds), "output": message, "stdout_visibility": "hidden", "tests": tests}


def write_results(folder: Path, doc: dict[str, Any]) -> Path:
    """``folder/results.json``, replaced atomically (a link put there is replaced, never followed)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        folder.unlink()
    return write_atomic(folder / "results.json", json.dumps(doc, indent=2))


def _grade(course: Path, lesson: str, data: bytes, checks: list[_Check]) -> tuple[dict, dict, str]:
    """nbgrader's autograde of the notebook ``data``: (scores by grade_id, verdict texts, one-line message)."""
    import nbformat

    from .worker import grade_submission

    for stale in (course / "submitted", course / ".grading", course / "autograded"):
        shutil.rmtree(stale, ignore_errors=True)
    folder = course / "submitted" / STUDENT / lesson
    folder.mkdir(parents=True)
    (folder / f"{lesson}.ipynb").write_bytes(data)
    outcome = grade_submission(str(course), STUDENT, lesson, str(course / "gradebook.db"))
    if not outcome.ok:
        print(outcome.log, flush=True)
        raise RuntimeError(f"the autograder could not grade this notebook ({outcome.error})")
    grades = outcome.records["notebooks"].get(lesson, {}).get("grades", {})
    nb = nbformat.read(Path(outcome.staged) / f"{lesson}.ipynb", as_version=4)
    texts = {c.grade_id: _cell_text(nb, c.grade_id) for c in checks}
    scores = {c.grade_id: grades.get(c.grade_id) for c in checks}
    total, points = sum(float(v or 0) for v in scores.values()), sum(c.points for c in checks)
    visible = sum(float(scores[c.grade_id] or 0) for c in checks if not c.hidden)
    shown = sum(c.points for c in checks if not c.hidden)
    print(f"graded {lesson}.ipynb: {total:g} of {points:g} points", flush=True)
    for c in checks:  # for staff: Gradescope shows this output to instructors only
        print(f"--- {c.grade_id}: {float(scores[c.grade_id] or 0):g} of {c.points:g}\n{texts[c.grade_id]}", flush=True)
    message = (f"{lesson}.ipynb graded: {visible:g} of {shown:g} points from the checks you can see now; the hidden "
               f"checks' {points - shown:g} points are shown when your instructor publishes the grades.")
    return scores, texts, message


def _sandbox_ready(course: Path) -> str:
    """'' when the sandbox can be made here, else why not (one line)."""
    sys.path.insert(0, str(course))
    from tests.judge import sandbox

    try:
        sandbox.require()
    except sandbox.SandboxUnavailable as e:
        return str(e)
    return ""


def run(root: Path) -> dict[str, Any]:
    """Grade ``root/submission`` into ``root/results/results.json``; returns the document written."""
    start = time.monotonic()
    config = json.loads((root / "source" / "autograder.json").read_text())
    lesson, course = config["lesson"], root / "source" / "course"
    checks = [_Check(c["grade_id"], c["exercise"], bool(c["hidden"]), float(c["points"])) for c in config["checks"]]
    scores: dict | None = None
    texts: dict[str, str] = {}
    try:
        data = _read(find_notebook(root / "submission", lesson), lesson)
        why = _sandbox_ready(course)
        if why:
            print(f"no sandbox: {why}\nThis container must let bubblewrap create namespaces "
                  "(see solutions/README.md, Gradescope).", flush=True)
            raise Unusable("the autograder could not start the sandbox it grades in, so nothing was graded: this "
                           "is not your grade; your instructor has been told")
        scores, texts, message = _grade(course, lesson, data, checks)
    except Unusable as e:
        message = str(e)
    except Exception as e:  # noqa: BLE001 (whatever happens, a results file: never a crash)
        message = f"{str(e).splitlines()[0] if str(e) else type(e).__name__}: this is not your grade; your " \
                  "instructor can see the details"
        print(f"grading failed: {type(e).__name__}: {e}", flush=True)
    doc = results(checks, scores, texts, message=message, seconds=time.monotonic() - start)
    write_results(root / "results", doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", module="nbgrader")  # its SQLAlchemy notes fill the staff's output
    args = sys.argv[1:] if argv is None else argv
    doc = run(Path(args[0] if args else "/autograder").resolve())
    print(doc["output"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
