"""A class graded with an attacker in it: nothing the attacker does reaches anyone else, the course or the host.

Six honest submissions of lesson 1 (the solution, the blank release, a typical mistake, a correct variant written
differently, a second mistake, a cheat) are graded by real nbgrader twice: alone, then with a seventh submission
whose answer cell tries everything a grading run must refuse: rewriting the course's checks and ``ddpm_ref`` on
disk, writing the gradebook, reading and deleting another student's submission, connecting to a server on the
host, allocating memory until stopped, forking processes, printing megabytes. Then:

* every honest student's scores equal those of the run without the attacker;
* every file of the course (the repository's ``ddpm_ref`` and ``tests``, the course folder's notebooks and
  submissions) is byte-identical afterwards, and the host's server saw no connection;
* the attacker's feedback says what was refused, and shows its script escaped (a markdown cell's and a displayed
  one's: nothing of a submission runs in the browser of whoever opens the page); the batch was never stopped.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from tests._course import ROOT, SOLUTIONS, live_script, load_release
from tests.judge import sandbox
from tests.judge import scratch as grader_scratch
from tests.mistakes import ALTERNATIVES, CHEATS, MISTAKES, by_name

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sandbox.bwrap() is None, reason="no working bubblewrap on this machine")]

LESSON = "01_noise_schedule"

ATTACK = '''
import os, pathlib, socket, sys, time
import ddpm_ref

report = []


def attempt(what, action):
    try:
        action()
        report.append(f"{what}: done")
    except BaseException as e:
        report.append(f"{what}: refused ({type(e).__name__}: {e})")


repo = pathlib.Path(ddpm_ref.__file__).resolve().parent.parent
course = pathlib.Path("COURSE")  # the attacker knows where the instructor keeps the course
victim = course / "submitted" / "solution" / "LESSON" / "LESSON.ipynb"
attempt("rewrite the checks", lambda: open(repo / "tests" / "harness.py", "a").write("run_checks = print\\n"))
attempt("rewrite ddpm_ref", lambda: open(repo / "ddpm_ref" / "schedule.py", "a").write("# changed\\n"))
attempt("write the gradebook", lambda: open(course / "gradebook.db", "ab").write(b"zero for everyone"))
attempt("read a submission", lambda: print(victim.read_text()[:50]))
attempt("delete a submission", lambda: victim.unlink())
attempt("connect to the host", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=3).close())
attempt("allocate memory", lambda: [bytearray(1 << 28) for _ in range(64)])
print("\\n".join(report), flush=True)
print("x" * 30_000_000, flush=True)
'''

#: in a later cell (each cell has its own output limit): fork until stopped
FORK = '''
import os, time


def fork_many():
    for _ in range(600):
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)


try:
    fork_many()
    print("fork processes: done")
except OSError as e:
    print(f"fork processes: refused ({type(e).__name__}: {e})", flush=True)
'''


def _hashes(*folders: Path) -> dict[str, str]:
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and ".ipynb_checkpoints" not in path.parts:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _nbgrader(course: Path, *args: str, tmp: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DDPM_COURSE_ROOT=str(ROOT), **({"TMPDIR": str(tmp)} if tmp else {}))
    env.pop("NBGRADER_EXECUTION", None)
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _solution() -> nbformat.NotebookNode:
    return nbformat.read(SOLUTIONS / LESSON / f"{LESSON}.ipynb", as_version=4)


def _with(exercise: str, source: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(_solution())
    (cell,) = [c for c in nb.cells if (c.metadata.get("nbgrader") or {}).get("grade_id") == exercise]
    cell.source = cell.source.rstrip() + "\n\n\n" + source
    return nb


def _course(tmp: Path, students: dict[str, nbformat.NotebookNode]) -> Path:
    course = tmp / "course"
    shutil.copytree(SOLUTIONS / LESSON, course / "solutions" / LESSON)
    config = (ROOT / "nbgrader_config.py").read_text()
    config += ("\nc.SandboxedKernelManager.memory_bytes = 5 << 30\nc.StartJudging.memory_bytes = 5 << 30\n"
               "c.Execute.timeout = 120\n")
    (course / "nbgrader_config.py").write_text(config)
    load_release().generate(course, [LESSON])
    for student, nb in students.items():
        dest = course / "submitted" / student / LESSON
        dest.mkdir(parents=True)
        nbformat.write(nb, dest / f"{LESSON}.ipynb")
    return course


def _scores(course: Path) -> dict[str, dict[str, float]]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {sub.student.id: {g.name: float(g.score) for nb in sub.notebooks for g in nb.grades}
                for sub in gb.find_assignment(LESSON).submissions}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    variant = next(a for a in ALTERNATIVES if a.exercise == "linear_beta_schedule")
    cheat = next(c for c in CHEATS if c.name == "cheat_input_transformer")
    honest = {
        "solution": _solution(),
        "blank": nbformat.read(ROOT / "lessons" / LESSON / f"{LESSON}.ipynb", as_version=4),
        "mistake": _with("NoiseSchedule", by_name("cumsum_instead_of_cumprod").source),
        "variant": _with("linear_beta_schedule", variant.source),
        "mistake2": _with("cosine_beta_schedule", next(m for m in MISTAKES
                                                       if m.exercise == "cosine_beta_schedule").source),
        "cheat": _with(cheat.exercise, cheat.source),
    }
    alone = _course(tmp_path_factory.mktemp("alone"), honest)
    _nbgrader(alone, "autograde", LESSON)

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(0.1)
        folder = tmp_path_factory.mktemp("class")
        attack = (ATTACK.replace("LESSON", LESSON).replace("PORT", str(server.getsockname()[1]))
                  .replace("COURSE", str(folder / "course")))
        attacker = _with("linear_beta_schedule", attack)
        (cell,) = [c for c in attacker.cells if (c.metadata.get("nbgrader") or {}).get("grade_id")
                   == "cosine_beta_schedule"]
        cell.source += "\n\n" + FORK
        attacker.cells.insert(1, nbformat.v4.new_markdown_cell(  # script for the grader's browser
            '<script>window.DDPM_INJECTED = 1</script><img src=x onerror="window.DDPM_INJECTED = 2">'))
        course = _course(folder, {**honest, "attacker": attacker})
        watched = [ROOT / "ddpm_ref", ROOT / "tests", course / "solutions", course / "lessons", course / "submitted"]
        before = _hashes(*watched)
        scratch = Path(tempfile.mkdtemp(prefix="g"))  # short: the kernels' sockets live there
        try:
            _nbgrader(course, "autograde", LESSON, tmp=scratch)
            _nbgrader(course, "generate_feedback", LESSON, tmp=scratch)
            # a kernel that nbgrader had to kill (the attacker's) is not cleaned up by nbgrader: the next grader
            # reclaims its folder, since its grading process has ended
            swept = sorted(p.name for p in grader_scratch.sweep(scratch))
            left = sorted(p.name for p in scratch.iterdir())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        after = _hashes(*watched)
        try:
            server.accept()
            reached = True
        except TimeoutError:
            reached = False
    return alone, course, before, after, reached, (swept, left)


def test_honest_scores_are_those_of_a_class_without_the_attacker(runs) -> None:
    alone, course, *_ = runs
    without, with_attacker = _scores(alone), _scores(course)
    assert set(with_attacker) == set(without) | {"attacker"}, "the batch skipped a submission"
    assert {s: with_attacker[s] for s in without} == without
    assert sum(without["solution"].values()) > 0 and sum(without["blank"].values()) == 0


def test_the_course_is_byte_identical_and_the_host_unreached(runs) -> None:
    _, _, before, after, reached, _ = runs
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, changed[:10]
    assert not reached, "a submission reached a server on the host"


def test_no_grading_folder_outlives_the_next_grader(runs) -> None:
    """The kernels' copies of the submissions, the student processes' folders and the withheld references are gone
    once nbgrader has finished, or (a kernel nbgrader killed) once the next grader starts; nothing else is left in
    the temporary directory (a fresh one)."""
    *_, (swept, left) = runs
    assert not left, left
    assert all(name.startswith("ddpm-kernel-") for name in swept), swept


def test_the_attackers_feedback_says_what_was_refused(runs) -> None:
    _, course, *_ = runs
    page = (course / "feedback" / "attacker" / LESSON / f"{LESSON}.html").read_text("utf-8")
    for what in ("rewrite the checks", "rewrite ddpm_ref", "write the gradebook", "read a submission",
                 "delete a submission", "connect to the host", "allocate memory"):
        assert f"{what}: refused" in page, (what, [line for line in page.splitlines() if what in line][:3])
    if sandbox.cgroup_available():
        assert "fork processes: refused" in page
    assert "output cut at" in page
    assert "DDPM_INJECTED" in page and not live_script(page, "DDPM_INJECTED"), "a submission's script runs"
