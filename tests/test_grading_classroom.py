"""GitHub Classroom (``ddpm_ref/grading/classroom.py``): the template repository of each lesson and its workflow,
the workflow's commands run as GitHub's command grader runs them, the ``--exercise`` / ``--checks`` options they use
(``tests/conftest.py``), and ``collect``, which brings the students' cloned repositories back to ``submitted/``.

The slow test runs every test command of lesson 1's workflow, as written, against a clone of this repository (its
working tree as it stands) on the solution, the blank release and the solution with one typical mistake.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from ddpm_ref.course import course_root
from ddpm_ref.grading.classroom import add_arguments, collect_main, course_url, export, main
from ddpm_ref.grading.course_folder import lesson_checks

ROOT = course_root()
LESSON = "01_noise_schedule"
LESSONS = sorted(d.name for d in (ROOT / "solutions").iterdir() if (d / f"{d.name}.ipynb").is_file())
GRADER = "classroom-resources/autograding-command-grader@v1"
REPORTER = "classroom-resources/autograding-grading-reporter@v1"


def _git(folder: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.org",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, check=True,
                          env=None if env is None else {**os.environ, **env})
    return done.stdout.strip()


def _export(out: Path, *extra: str, course: Path = ROOT) -> int:
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([*extra, "--out", str(out)])
    return main(course, args.lessons, args)


def _total_points(lesson: str) -> int:
    """The lesson's points as nbgrader counts them: every autograded cell of its source notebook."""
    nb = nbformat.read(ROOT / "solutions" / lesson / f"{lesson}.ipynb", as_version=4)
    meta = [c.metadata.get("nbgrader", {}) for c in nb.cells]
    return int(sum(m.get("points", 0) for m in meta if m.get("grade")))


def _workflow(folder: Path) -> dict:
    import yaml  # PyYAML comes with nbgrader

    return yaml.safe_load((folder / ".github" / "workflows" / "classroom.yml").read_text())


def _graders(wf: dict) -> tuple[list[dict], dict]:
    steps = wf["jobs"]["run-autograding-tests"]["steps"]
    return [s for s in steps if s.get("uses") == GRADER], steps[-1]


# ------------------------------------------------------------------------------------------------ the export


def test_every_lesson_gets_a_classroom_workflow_with_one_test_per_check_cell(tmp_path: Path) -> None:
    assert _export(tmp_path, "--course-url", "https://example.org/course.git", *LESSONS) == 0
    head = _git(ROOT, "rev-parse", "HEAD")
    for lesson in LESSONS:
        folder, checks = tmp_path / lesson, lesson_checks(ROOT, lesson)
        assert (folder / f"{lesson}.ipynb").read_bytes() == (ROOT / "lessons" / lesson / f"{lesson}.ipynb").read_bytes()
        assert "Actions" in (folder / "README.md").read_text()
        wf = _workflow(folder)
        assert set(wf["on"]) >= {"push", "repository_dispatch"}
        assert wf["permissions"] == {"checks": "write", "actions": "read", "contents": "read"}
        job = wf["jobs"]["run-autograding-tests"]
        assert job["runs-on"] == "ubuntu-latest" and job["if"] == "github.actor != 'github-classroom[bot]'"
        steps = job["steps"]
        assert steps[0]["uses"].startswith("actions/checkout@")
        assert steps[1]["uses"] == "actions/setup-python@v5" and str(steps[1]["with"]["python-version"]) == "3.11"
        (fetch,) = [s for s in steps if "fetch" in s.get("run", "")]
        assert fetch["env"] == {"COURSE_URL": "https://example.org/course.git", "COURSE_REF": head}
        (install,) = [s for s in steps if "pip install" in s.get("run", "")]
        assert "https://download.pytorch.org/whl/cpu" in install["run"] and '"./.course[course]"' in install["run"]

        graders, reporter = _graders(wf)
        assert len(graders) == len(checks), lesson
        ids = [g["id"] for g in graders]
        assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[a-z][a-z0-9-]*", i) for i in ids)
        scores = [g["with"]["max-score"] for g in graders]
        assert scores == [c.points for c in checks] and sum(scores) == _total_points(lesson), lesson
        for g, c in zip(graders, checks, strict=True):
            command = g["with"]["command"]
            assert f"--impl ../{lesson}.ipynb --exercise {c.exercise} --checks {'hidden' if c.hidden else 'visible'}" \
                in command
            assert ("--tb=no" in command) == c.hidden  # hidden checks: pass or fail only
            assert "setup-command" not in g["with"] and g["with"]["timeout"] > 0

        assert reporter["uses"] == REPORTER
        assert reporter["with"]["runners"].split(",") == ids
        env = reporter["env"]
        assert set(env) == {f"{i.upper()}_RESULTS" for i in ids}
        for key, value in env.items():
            found = re.fullmatch(r"\$\{\{\s*steps\.([a-z0-9-]+)\.outputs\.result\s*\}\}", value)
            assert found and found.group(1) in ids and key == f"{found.group(1).upper()}_RESULTS"


def test_export_errors_are_one_line_and_a_new_export_replaces_the_old(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="no lesson 99_nothing"):
        export(ROOT, ["99_nothing"], tmp_path / "out", "https://example.org/c.git")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        export(ROOT, [LESSON], tmp_path / "file", "https://example.org/c.git")
    bare = tmp_path / "no-remote"
    bare.mkdir()
    _git(bare, "init", "-q")
    with pytest.raises(ValueError, match="no git remote origin: pass --course-url"):
        course_url(bare, None)
    _git(bare, "remote", "add", "origin", "git@github.com:someone/course.git")
    assert course_url(bare, None) == "https://github.com/someone/course.git"  # students clone without SSH keys
    _git(bare, "remote", "set-url", "origin", "https://me:ghp_secret@github.com/someone/course.git")
    assert course_url(bare, None) == "https://github.com/someone/course.git"  # no token in students' repositories
    with pytest.raises(ValueError, match="token"):
        course_url(bare, "https://me:ghp_secret@github.com/someone/course.git")

    out = tmp_path / "out"
    export(ROOT, [LESSON], out, "https://example.org/c.git", "main")
    template = out / LESSON
    _git(template, "init", "-q")  # the instructor made it a repository to push it
    (template / "stale.txt").write_text("from an older export")
    export(ROOT, [LESSON], out, "https://example.org/c.git", "v2")
    assert (template / ".git").is_dir() and not (template / "stale.txt").exists()
    assert '"v2"' in (template / ".github" / "workflows" / "classroom.yml").read_text()
    assert sorted(p.name for p in out.iterdir()) == [LESSON]  # nothing left of the build or the old folder


# ------------------------------------------------------------------------------------------------ --exercise


def _pytest(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NBGRADER_EXECUTION", "DDPM_FAST", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "tests", "-p", "no:cacheprovider", "-o", "addopts=",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _collected(proc: subprocess.CompletedProcess) -> set[str]:
    return {line.split("::")[-1].removeprefix("test_") for line in proc.stdout.splitlines() if "::" in line}


def test_exercise_and_checks_options_select_registered_checks() -> None:
    from tests.harness import REGISTRY, check_name, load_all_checks

    load_all_checks()
    unknown = _pytest("--exercise", "no_such_exercise")
    assert unknown.returncode == 4  # pytest's usage error
    assert "no exercise no_such_exercise; choose among linear_beta_schedule" in unknown.stdout + unknown.stderr

    hidden = _pytest("--exercise", "linear_beta_schedule", "--checks", "hidden", "--collect-only", "-q")
    assert hidden.returncode == 0, hidden.stdout[-2000:]
    expected = {check_name(f) for f in REGISTRY["linear_beta_schedule"] if f.hidden}
    assert expected and _collected(hidden) == expected

    every_hidden = _pytest("--checks", "hidden", "--collect-only", "-q")
    assert _collected(every_hidden) == {check_name(f) for fns in REGISTRY.values() for f in fns if f.hidden}

    none = _pytest("--exercise", "train_step", "--checks", "hidden")  # no hidden check: fail, never pass vacuously
    assert none.returncode != 0 and "no hidden checks registered for train_step" in none.stdout + none.stderr


def test_a_missing_definition_fails_when_grading_an_exercise() -> None:
    solution = ROOT / "solutions" / LESSON / f"{LESSON}.ipynb"
    proc = _pytest("--impl", str(solution), "--exercise", "q_sample", "--checks", "visible", "--tb=short")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "does not define `q_sample`" in proc.stdout and " passed" not in proc.stdout


# ------------------------------------------------------------------------------------------------ the commands


def _snapshot(dest: Path) -> Path:
    """This repository's working tree as it stands (tracked and untracked files, git-ignored ones left out), as a
    git repository with one commit: what an instructor pushes and the students' workflows clone."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "the course as exported")
    return dest


def _notebook_with_mistake(name: str) -> tuple[nbformat.NotebookNode, object]:
    from tests.mistakes import MISTAKES
    from tests.synthetic_class import answer_cell

    (mistake,) = [m for m in MISTAKES if m.name == name]
    nb = copy.deepcopy(nbformat.read(ROOT / "solutions" / LESSON / f"{LESSON}.ipynb", as_version=4))
    cell = answer_cell(nb, mistake.exercise)
    cell.source = cell.source.rstrip() + "\n\n\n" + mistake.source
    return nb, mistake


def _grader_env(course: Path) -> dict[str, str]:
    """What the command grader gives a command (PATH, HOME, FORCE_COLOR), with the clone as the installed course
    (on GitHub's runner the workflow installs it with pip)."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "FORCE_COLOR": "true",
            "PYTHONPATH": str(course), "DDPM_COURSE_ROOT": str(course)}


@pytest.mark.slow
def test_the_workflow_commands_score_what_the_checks_say(tmp_path: Path) -> None:
    from tests.mistakes import hidden_checks

    course = _snapshot(tmp_path / "course")
    assert _export(tmp_path / "classroom", LESSON, "--course-url", str(course), course=course) == 0
    template = tmp_path / "classroom" / LESSON
    wf = _workflow(template)
    steps = wf["jobs"]["run-autograding-tests"]["steps"]
    graders, _ = _graders(wf)
    checks = lesson_checks(ROOT, LESSON)

    nb, mistake = _notebook_with_mistake("cumsum_instead_of_cumprod")
    broken = {(mistake.exercise, bool(hidden_checks(mistake) & {b})) for b in mistake.breaks}
    release = nbformat.read(template / f"{LESSON}.ipynb", as_version=4)
    solution = nbformat.read(ROOT / "solutions" / LESSON / f"{LESSON}.ipynb", as_version=4)
    cases = {"solution": solution, "blank": release, "mistake": nb}
    repos: dict[str, Path] = {}
    (fetch,) = [s for s in steps if "fetch" in s.get("run", "")]
    for case, notebook in cases.items():
        repo = tmp_path / case  # the student's repository as actions/checkout leaves it
        shutil.copytree(template, repo)
        nbformat.write(notebook, repo / f"{LESSON}.ipynb")
        subprocess.run(["bash", "-c", fetch["run"]], cwd=repo, env={**os.environ, **fetch["env"]}, check=True,
                       capture_output=True)  # the workflow's own clone of the course at the pinned commit
        conftest = Path("tests", "conftest.py")
        assert (repo / ".course" / conftest).read_bytes() == (ROOT / conftest).read_bytes()
        repos[case] = repo

    def run(job: tuple[str, int]) -> subprocess.CompletedProcess:
        case, i = job
        return subprocess.run(["bash", "-c", graders[i]["with"]["command"]], cwd=repos[case], capture_output=True,
                              text=True, env=_grader_env(repos[case] / ".course"), timeout=600)

    jobs = [(case, i) for case in cases for i in range(len(graders))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(jobs, pool.map(run, jobs), strict=True))

    total = sum(g["with"]["max-score"] for g in graders)
    for case in cases:
        passed = {i for i in range(len(graders)) if done[case, i].returncode == 0}
        score = sum(graders[i]["with"]["max-score"] for i in passed)
        if case == "solution":
            failing: set[int] = set()
        elif case == "blank":
            failing = set(range(len(graders)))
        else:
            failing = {i for i, c in enumerate(checks) if (c.exercise, c.hidden) in broken}
        assert passed == set(range(len(graders))) - failing, (
            case, {i: done[case, i].stdout[-1500:] + done[case, i].stderr[-500:] for i in failing ^ (
                set(range(len(graders))) - passed)})
        assert score == total - sum(checks[i].points for i in failing), case

    visible = [i for i, c in enumerate(checks) if (c.exercise, c.hidden) == (mistake.exercise, False)]
    hidden = [i for i, c in enumerate(checks) if (c.exercise, c.hidden) == (mistake.exercise, True)]
    shown = done["mistake", visible[0]].stdout
    assert mistake.feedback in shown and "Hint:" in shown  # the named mistake, in one line
    for i in hidden:
        quiet = done["mistake", i].stdout + done["mistake", i].stderr
        assert "Hint" not in quiet and not any(b in quiet for b in mistake.breaks)  # pass or fail, nothing more
        assert "failed" in quiet
    assert "NotImplementedError" in done["blank", visible[0]].stdout


# ------------------------------------------------------------------------------------------------ collect


def test_collect_copies_each_students_notebook_and_refuses_symlinks(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    course = tmp_path / "course"
    course.mkdir()
    shutil.copy2(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
    shutil.copytree(ROOT / "solutions" / LESSON, course / "solutions" / LESSON)
    notebook = ROOT / "lessons" / LESSON / f"{LESSON}.ipynb"

    repos = tmp_path / "01-noise-schedule-submissions"  # as gh classroom clone student-repos names it
    alice, bob, eve = (repos / f"01-noise-schedule-{s}" for s in ("alice", "bob", "eve"))
    for repo in (alice, bob, eve):
        repo.mkdir(parents=True)
        (repo / "README.md").write_text("template\n")
    shutil.copy2(notebook, alice / notebook.name)
    _git(alice, "init", "-q")
    _git(alice, "add", "-A")
    stamp = "2025-03-04T05:06:07+01:00"
    _git(alice, "commit", "-q", "-m", "done", env={"GIT_COMMITTER_DATE": stamp, "GIT_AUTHOR_DATE": stamp})
    outside = tmp_path / "elsewhere" / "secret.ipynb"
    outside.parent.mkdir()
    outside.write_text("{}")
    (eve / notebook.name).symlink_to(outside)

    assert collect_main(course, LESSON, repos) == 0
    out, err = capsys.readouterr()
    submitted = course / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == ["alice"]
    got = submitted / "alice" / LESSON
    assert sorted(p.name for p in got.iterdir()) == [notebook.name, "timestamp.txt"]  # the notebook only
    assert (got / notebook.name).read_bytes() == notebook.read_bytes()
    assert (got / "timestamp.txt").read_text().strip() == stamp

    from nbgrader.utils import parse_utc

    assert parse_utc((got / "timestamp.txt").read_text().strip()).isoformat() == "2025-03-04T04:06:07"
    assert [line for line in out.splitlines() if line.startswith("alice:")] != []
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: ") for w in warnings)
    assert any("01-noise-schedule-bob" in w and "no " in w for w in warnings)
    assert any("01-noise-schedule-eve" in w and "symbolic link" in w for w in warnings)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect_main(course, LESSON, empty) == 1
    with pytest.raises(NotADirectoryError):
        collect_main(course, LESSON, tmp_path / "missing")
