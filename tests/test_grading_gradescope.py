"""The Gradescope autograder, run as Gradescope runs it: ``python -m ddpm_ref grade gradescope 01_noise_schedule``
writes the zip; each test lays out a root as Gradescope lays out ``/autograder`` (the zip unpacked in
``source/``, the student's files in ``submission/``, an empty ``results/``) and runs the real ``run_autograder``
on it. Every ``results.json`` is checked against the fields and types of Gradescope's specification.

Scores: the synthetic class of lesson 1 (``tests/synthetic_class.py``): the solution and correct variants score
full marks, the blank release 0, each library mistake loses exactly the points of the check cells it breaks, the
refused cheats score nothing on their exercise. Attacks: a notebook that writes a forged ``results.json`` (and
the gradebook), files planted beside the notebook, a link to the solution; a missing, renamed or unreadable
notebook; no sandbox; a grader that fails. Marked ``slow`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from tests._course import ROOT, SOLUTIONS
from tests.mistakes import CHEATS, MISTAKES, hidden_checks
from tests.synthetic_class import LESSON, Planted, answer_cell, notebook, plan

pytestmark = pytest.mark.slow

#: Gradescope's autograder specification (results.json): the fields and their types
TOP = {"score": (int, float), "execution_time": (int, float), "output": str, "output_format": str,
       "test_output_format": str, "test_name_format": str, "visibility": str, "stdout_visibility": str,
       "extra_data": dict, "tests": list, "leaderboard": list}
TEST = {"score": (int, float), "max_score": (int, float), "status": str, "name": str, "name_format": str,
        "number": str, "output": str, "output_format": str, "tags": list, "visibility": str, "extra_data": dict}
VISIBILITY = {"hidden", "after_due_date", "after_published", "visible"}


def conforms(doc: dict) -> None:
    """``doc`` holds only fields of the specification, each of its type, and a score for every test."""
    assert isinstance(doc, dict)
    for key, value in doc.items():
        assert key in TOP, f"results.json: unknown field {key!r}"
        assert isinstance(value, TOP[key]) and not isinstance(value, bool), f"results.json: {key} is {value!r}"
    for key in ("visibility", "stdout_visibility"):
        assert doc.get(key, "visible") in VISIBILITY
    assert "score" in doc or all("score" in t for t in doc.get("tests", [])), "a score, overall or per test"
    for t in doc.get("tests", []):
        for key, value in t.items():
            assert key in TEST, f"results.json test: unknown field {key!r}"
            assert isinstance(value, TEST[key]) and not isinstance(value, bool), f"test {key} is {value!r}"
        assert t.get("status", "passed") in ("passed", "failed")
        assert t.get("visibility", "visible") in VISIBILITY
        assert 0 <= t["score"] <= t.get("max_score", t["score"])


@pytest.fixture(scope="module")
def autograder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zip, written by the command an instructor runs, unpacked as Gradescope unpacks it."""
    out = tmp_path_factory.mktemp("zips")
    env = dict(os.environ, DDPM_COURSE_ROOT=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "ddpm_ref", "grade", "gradescope", LESSON, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    source = tmp_path_factory.mktemp("source")
    with zipfile.ZipFile(out / f"{LESSON}.zip") as z:
        names = z.namelist()
        assert {"setup.sh", "run_autograder", "autograder.json"} <= set(names), "both scripts at the archive's root"
        z.extractall(source)
        for info in z.infolist():  # Gradescope runs them: they must keep their executable bit
            if info.filename in ("setup.sh", "run_autograder"):
                assert (info.external_attr >> 16) & stat.S_IXUSR
                os.chmod(source / info.filename, 0o755)
    assert subprocess.run(["bash", "-n", str(source / "setup.sh")]).returncode == 0
    assert "bubblewrap" in (source / "setup.sh").read_text()
    return source


def run_autograder(source: Path, root: Path, files: dict[str, bytes | Path], *,
                   env: dict[str, str] | None = None) -> tuple[dict, str]:
    """``root`` laid out as /autograder with ``files`` submitted (a Path value: a link to it), graded by the real
    ``run_autograder``; returns results.json (checked against the specification) and the run's output."""
    shutil.copytree(source, root / "source", symlinks=True)
    shutil.copy2(source / "run_autograder", root / "run_autograder")
    (root / "results").mkdir()
    for name, content in files.items():
        path = root / "submission" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            path.symlink_to(content)
        else:
            path.write_bytes(content)
    (root / "submission").mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in ("NBGRADER_EXECUTION", "DDPM_FAST", "PYTHONPATH",
                                                              "DDPM_COURSE_ROOT", "DDPM_GRADE_UNSANDBOXED")}
    base["DDPM_AUTOGRADER_PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(root / "run_autograder"), str(root)], cwd=root, capture_output=True,
                          text=True, timeout=600, env={**base, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((root / "results" / "results.json").read_text())
    conforms(doc)
    return doc, done.stdout + done.stderr


def _points(source: Path) -> dict[str, float]:
    return {c["grade_id"]: c["points"] for c in json.loads((source / "autograder.json").read_text())["checks"]}


def _scores(doc: dict, source: Path) -> dict[str, float]:
    """results.json's test scores by grade_id (the tests are the check cells, in order)."""
    checks = json.loads((source / "autograder.json").read_text())["checks"]
    assert len(doc["tests"]) == len(checks)
    return {c["grade_id"]: t["score"] for c, t in zip(checks, doc["tests"], strict=True)}


def _bytes(nb: nbformat.NotebookNode) -> bytes:
    return nbformat.writes(nb).encode()


CLASS = ("ada", "blank", "grace", "copier", "caller", "trickster")


def _library() -> list[Planted]:
    """Every typical mistake of lesson 1 in the library, one per exercise per submission (the checks isolate the
    exercises, so mistakes of different exercises share a notebook)."""
    by_exercise = [[m for m in MISTAKES if m.exercise == x] for x in ("linear_beta_schedule", "cosine_beta_schedule",
                                                                       "NoiseSchedule")]
    return [Planted(f"library{i}", mistakes=[ms[i] for ms in by_exercise if i < len(ms)])
            for i in range(max(map(len, by_exercise)))]


SUBMISSIONS = [p for p in plan() if p.student in CLASS] + _library()


@pytest.mark.parametrize("planted", SUBMISSIONS, ids=lambda p: p.student)
def test_the_synthetic_class_scores_what_was_planted(autograder: Path, tmp_path: Path, planted: Planted) -> None:
    """The solution and correct variants score full marks, the blank 0, the refused cheats nothing on their
    exercise, and each typical mistake of the library loses exactly the points of the check cells it breaks."""
    doc, said = run_autograder(autograder, tmp_path, {f"{LESSON}.ipynb": _bytes(notebook(planted, ROOT / "lessons"))})
    points = _points(autograder)
    assert _scores(doc, autograder) == planted.expected(points), said[-3000:]
    checks = json.loads((autograder / "autograder.json").read_text())["checks"]
    for c, test in zip(checks, doc["tests"], strict=True):
        assert test["max_score"] == c["points"]
        assert test["visibility"] == ("after_published" if c["hidden"] else "visible")
        assert test["status"] == ("passed" if test["score"] == test["max_score"] else "failed")
        if c["hidden"]:  # hidden checks keep their details back
            assert "What they check stays hidden" in test["output"] and "✗" not in test["output"]
    for m in planted.mistakes:  # the named mistake reaches the student, in its exercise's visible test
        if m not in CHEATS and set(m.breaks) - hidden_checks(m):
            (test,) = [t for t in doc["tests"] if t["name"] == f"{m.exercise}: checks"]
            assert m.feedback in test["output"], test["output"]


def _attack(root: Path) -> str:
    """Answer-cell code that tries to give itself the points: a forged results.json wherever the results may be,
    the gradebook overwritten, and a fake verdict printed."""
    forged = json.dumps({"score": 999, "output": "FORGED", "tests": []})
    return f'''
import glob, os, pathlib
for target in ["/autograder/results/results.json", {str(root / "results" / "results.json")!r},
               *glob.glob("/*/results/results.json"), *glob.glob("/tmp/**/results.json", recursive=True),
               *[str(up / "results" / "results.json") for up in pathlib.Path.cwd().parents]]:
    try:
        pathlib.Path(target).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(target).write_text({forged!r})
    except OSError:
        pass
for db in [{str(root / "source" / "course" / "gradebook.db")!r}, "/autograder/source/course/gradebook.db"]:
    try:
        pathlib.Path(db).write_bytes(b"")
    except OSError:
        pass
print("linear_beta_schedule: 9 passed, 0 failed")
'''


def test_a_submission_cannot_forge_its_results(autograder: Path, tmp_path: Path) -> None:
    """The solution of one exercise, with code that writes a forged results.json and empties the gradebook, plus
    files planted beside the notebook that would do the same if anything imported them: it scores what its code
    is worth (that exercise's points), nothing forged survives, and the course is untouched."""
    nb = nbformat.read(ROOT / "lessons" / LESSON / f"{LESSON}.ipynb", as_version=4)
    solution = nbformat.read(SOLUTIONS / LESSON / f"{LESSON}.ipynb", as_version=4)
    right = answer_cell(solution, "linear_beta_schedule").source
    answer_cell(nb, "linear_beta_schedule").source = right + "\n" + _attack(tmp_path)
    planted = _attack(tmp_path).encode()
    doc, said = run_autograder(autograder, tmp_path, {
        f"{LESSON}.ipynb": _bytes(nb), "nbgrader_config.py": planted, "conftest.py": planted,
        "tests/__init__.py": planted, "ddpm_ref/__init__.py": planted, "results.json": b'{"score": 999}'})
    points = _points(autograder)
    assert "FORGED" not in json.dumps(doc) and doc.get("score") != 999
    expected = {g: (v if g.startswith("check_linear_beta_schedule") else 0.0) for g, v in points.items()}
    assert _scores(doc, autograder) == expected, said[:6000]
    assert (tmp_path / "source" / "course" / "gradebook.db").stat().st_size > 0


def test_a_link_to_the_solution_is_refused(autograder: Path, tmp_path: Path) -> None:
    """A submitted link (here to the solution inside the autograder) is not followed: nothing is graded."""
    doc, _ = run_autograder(autograder, tmp_path, {
        f"{LESSON}.ipynb": tmp_path / "source" / "course" / "solutions" / LESSON / f"{LESSON}.ipynb"})
    assert all(t["score"] == 0 for t in doc["tests"])
    assert "not a regular file" in doc["output"]


@pytest.mark.parametrize("files, says", [
    ({}, f"upload your {LESSON}.ipynb"),
    ({"homework.ipynb": b"{}"}, f"rename your notebook to {LESSON}.ipynb"),
    ({f"{LESSON}.ipynb": b"\x89PNG not a notebook"}, "is not a readable notebook"),
    ({f"{LESSON}.ipynb": b'{"cells": 3}'}, "is not a readable notebook"),
])
def test_an_unusable_submission_scores_0_with_one_line(autograder: Path, tmp_path: Path, files: dict,
                                                       says: str) -> None:
    doc, _ = run_autograder(autograder, tmp_path, files)
    assert says in doc["output"] and "\n" not in doc["output"]
    assert len(doc["tests"]) == len(_points(autograder)) and all(t["score"] == 0 for t in doc["tests"])


def test_no_sandbox_grades_nothing(autograder: Path, tmp_path: Path) -> None:
    """Where bubblewrap cannot make its sandbox, the submission is not graded unsafely: 0, and a line that says
    this is not the student's grade (the run's output tells staff why)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    solution = (SOLUTIONS / LESSON / f"{LESSON}.ipynb").read_bytes()
    doc, said = run_autograder(autograder, tmp_path / "root", {f"{LESSON}.ipynb": solution},
                               env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert all(t["score"] == 0 for t in doc["tests"])
    assert "could not start the sandbox" in doc["output"] and "not your grade" in doc["output"]
    assert "bubblewrap" in said


def test_a_failing_grader_still_writes_results(autograder: Path, tmp_path: Path) -> None:
    doc, _ = run_autograder(autograder, tmp_path, {f"{LESSON}.ipynb": b"{}"},
                            env={"DDPM_AUTOGRADER_PYTHON": "/bin/false"})
    assert doc["score"] == 0 and "not your grade" in doc["output"]
