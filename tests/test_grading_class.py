"""Grading a class: the synthetic class of ``tests/synthetic_class.py`` (14 submissions of lesson 1: the solution, a
blank, correct variants, typical mistakes, cheats, a pasted reference, a notebook that loops and one that kills its
kernel), graded three ways in three course folders:

* in parallel, ``python -m ddpm_ref grade run 01_noise_schedule --jobs 2``;
* sequentially, ``nbgrader autograde 01_noise_schedule`` (the baseline);
* in parallel, killed (SIGKILL, the whole process group) once some submissions are graded, then started again.

All three must end with the same gradebook (every grade, comment, penalty and timestamp) and the same
``nbgrader export``; the resumed run grades only what the killed one left. The class report of the parallel run
counts what was planted. Marked ``slow`` (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._course import ROOT
from tests.mistakes import CHEATS
from tests.synthetic_class import LESSON, Planted, build

pytestmark = pytest.mark.slow

STUDENTS = 14


def _env() -> dict[str, str]:
    env = dict(os.environ, DDPM_COURSE_ROOT=str(ROOT), DDPM_PROGRESS="log")
    env.pop("NBGRADER_EXECUTION", None)
    env.pop("DDPM_FAST", None)
    return env


def _run(course: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=course, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"`{' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def gradebook(course: Path) -> dict[str, dict]:
    """Everything autograde records, per student: the timestamp, and per notebook its late penalty, every grade
    (automatic score, manual score, needs manual grade) and every comment."""
    from nbgrader.api import Gradebook

    rows: dict[str, dict] = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for sub in gb.assignment_submissions(LESSON):
            rows[sub.student_id] = {"timestamp": sub.timestamp, "notebooks": {nb.name: {
                "penalty": nb.late_submission_penalty,
                "grades": {g.name: (g.auto_score, g.manual_score, g.needs_manual_grade) for g in nb.grades},
                "comments": {c.name: (c.auto_comment, c.manual_comment) for c in nb.comments},
            } for nb in sub.notebooks}}
    return rows


def export(course: Path) -> list[dict[str, str]]:
    """``nbgrader export``'s rows, sorted by student."""
    _run(course, "-m", "nbgrader", "export", "--to", "grades.csv", timeout=300)
    with open(course / "grades.csv", newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["student_id"])


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> Path:
    course, _ = build(tmp_path_factory.mktemp("sequential"))
    _run(course, "-m", "nbgrader", "autograde", LESSON, timeout=1500)
    return course


@pytest.fixture(scope="module")
def parallel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Planted], str]:
    course, planted = build(tmp_path_factory.mktemp("parallel"))
    proc = _run(course, "-m", "ddpm_ref", "grade", "run", LESSON, "--jobs", "2", timeout=1500)
    return course, planted, proc.stdout + proc.stderr


def _graded(course: Path) -> int:
    return sum(1 for d in (course / "autograded").glob(f"*/{LESSON}") if d.is_dir())


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """A run killed once at least 4 submissions are graded, then started again: (course, graded when killed,
    what the second run said)."""
    course, _ = build(tmp_path_factory.mktemp("resumed"))
    cmd = [sys.executable, "-m", "ddpm_ref", "grade", "run", LESSON, "--jobs", "2"]
    proc = subprocess.Popen(cmd, cwd=course, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        while _graded(course) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = _graded(course)
    again = _run(course, "-m", "ddpm_ref", "grade", "run", LESSON, "--jobs", "2", timeout=1500)
    return course, done, again.stdout


def test_parallel_grading_writes_what_nbgrader_writes(parallel, sequential) -> None:
    course, _, said = parallel
    assert f"graded {STUDENTS} submission(s)" in said, said[-2000:]
    got, want = gradebook(course), gradebook(sequential)
    assert len(want) == STUDENTS, f"the sequential run graded {len(want)} submissions, not {STUDENTS}"
    wrong = [f"{s}: parallel {got.get(s)}\n   sequential {want[s]}" for s in sorted(want) if got.get(s) != want[s]]
    assert not wrong and set(got) == set(want), "\n".join(wrong) or f"students {sorted(set(got) ^ set(want))}"
    assert export(course) == export(sequential), "nbgrader export differs between parallel and sequential grading"


def _expected_score(p: Planted, points: dict[str, float]) -> float:
    """What ``p`` must score in all (:meth:`Planted.expected`, cell by cell)."""
    return sum(p.expected(points).values())


def test_the_class_scores_what_was_planted(parallel) -> None:
    course, planted, _ = parallel
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(LESSON, LESSON, "ada")
        points = {g.name: float(g.max_score) for g in nb.grades}
        totals = {p.student: float(gb.find_submission(LESSON, p.student).score) for p in planted}
    wrong = [f"{p.student}: scored {totals[p.student]:g}, expected {_expected_score(p, points):g}"
             for p in planted if totals[p.student] != _expected_score(p, points)]
    assert not wrong, "\n".join(wrong)


def test_a_killed_run_resumes_where_it_stopped(resumed, sequential) -> None:
    course, done, said = resumed
    assert 0 < done < STUDENTS, f"the run was killed with {done} of {STUDENTS} graded: nothing to resume"
    found = re.search(r"graded (\d+) submission\(s\).*; (\d+) already graded; (\d+) failed", said)
    assert found, said
    graded, skipped, failed = map(int, found.groups())
    assert (graded, skipped, failed) == (STUDENTS - done, done, 0), said
    assert gradebook(course) == gradebook(sequential)


def _report(course: Path) -> list[dict[str, str]]:
    said = _run(course, "-m", "ddpm_ref", "grade", "report", LESSON, timeout=300).stdout
    assert "report.html" in said, said
    page = (course / "reports" / LESSON / "report.html").read_text("utf-8")
    assert page.count('<img src="data:image/png;base64,') == 3, "one chart per exercise of lesson 1"
    with open(course / "reports" / LESSON / "report.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_report_counts_what_was_planted(parallel) -> None:
    """Every planted mistake is counted once per student who made it (its named mistake holds the library's
    feedback phrase); the refused cheats by their reason; the pasted reference is flagged."""
    course, planted, _ = parallel
    rows = _report(course)
    mistakes = [r for r in rows if r["section"] == "mistake"]
    for m in {m for p in planted for m in p.mistakes if m not in CHEATS}:
        made = sum(m in p.mistakes for p in planted)
        counted = [int(r["students"]) for r in mistakes if r["exercise"] == m.exercise and m.feedback in r["item"]]
        assert counted and max(counted) == made, (
            f"mistake {m.name} was planted in {made} submission(s); the report's rows naming {m.feedback!r}: "
            f"{counted}")
    cheats = {r["item"]: int(r["students"]) for r in rows if r["section"] == "cheat"}
    want = {p.cheat: sum(q.cheat == p.cheat for q in planted) for p in planted if p.cheat}
    assert cheats == {**want, "(any reason)": sum(want.values())}, cheats
    missing = {r["exercise"]: int(r["students"]) for r in rows if r["section"] == "missing"}
    assert missing.get("linear_beta_schedule", 0) >= 2, f"blank and trickster left it unfinished: {missing}"


def test_the_similarity_flag_marks_the_pasted_reference_only(parallel) -> None:
    """The pasted reference is flagged; nobody who wrote their own code is. (m1, m2, m4 and m5 hand in the same
    tests/mistakes.py text with one-token edits: copies of one another, so they may be flagged as pairs.)"""
    course, planted, _ = parallel
    flagged = [r["item"].split(":")[0] for r in _report(course) if r["section"] == "similarity"]
    against_reference = {f.split(" ~ ")[0] for f in flagged if f.endswith("~ reference")}
    assert against_reference == {p.student for p in planted if p.pasted}, flagged
    copies = {"m1", "m2", "m4", "m5"}
    pairs = [set(f.split(" ~ ")) for f in flagged if not f.endswith("~ reference")]
    assert all(pair <= copies for pair in pairs), f"flagged students who wrote their own code: {pairs}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_existing_dask_cluster_grades_the_same(tmp_path: Path, sequential) -> None:
    """The multi-machine set-up of solutions/README.md, on one machine: ``dask scheduler`` and ``dask worker``
    started by hand, ``grade run --scheduler``; the scores equal the sequential run's."""
    some = {"ada", "blank", "m3"}
    course, _ = build(tmp_path / "course", only=some)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2",
                               "--nthreads", "1", "--memory-limit", "0", "--no-dashboard"],
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        said = _run(course, "-m", "ddpm_ref", "grade", "run", LESSON, "--scheduler", address, timeout=900).stdout
    finally:
        for proc in (worker, scheduler):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    assert f"graded {len(some)} submission(s)" in said, said
    want = {s: v for s, v in gradebook(sequential).items() if s in some}
    assert gradebook(course) == want


def test_a_submission_nbgrader_cannot_read_fails_alone(tmp_path: Path) -> None:
    """A notebook that is not JSON: tried twice, reported in one line with its log kept, exit status 1; the other
    submission is graded."""
    course, _ = build(tmp_path / "course", only={"ada", "blank"})
    (course / "submitted" / "blank" / LESSON / f"{LESSON}.ipynb").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "ddpm_ref", "grade", "run", LESSON, "--jobs", "2"], cwd=course,
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "graded 1 submission(s)" in proc.stdout and "1 failed" in proc.stdout, proc.stdout
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("failed: ")]
    assert line.startswith(f"failed: blank/{LESSON}: ") and "NotJSONError" in line, line
    assert (course / "grading-failures" / LESSON / "blank.log").is_file()
    assert set(gradebook(course)) == {"ada"}
