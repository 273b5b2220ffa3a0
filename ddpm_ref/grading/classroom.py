"""GitHub Classroom autograding: ``python -m ddpm_ref grade classroom LESSON…|all`` writes ``classroom/LESSON/``, the
template repository of each lesson's assignment, and ``python -m ddpm_ref grade collect LESSON REPOS`` brings the
students' repositories back into ``submitted/`` for the sandboxed grader.

A template repository holds the released notebook, a student-facing README and ``.github/workflows/classroom.yml``:
the workflow GitHub Classroom generates (one ``autograding-command-grader`` step per test, then the
``autograding-grading-reporter``), with one test per check cell of the lesson and that cell's points. Each test runs
``pytest tests --impl ../LESSON.ipynb --exercise EXERCISE --checks visible|hidden`` in a clone of this course pinned
to one commit. It runs in the student's own repository, so its points are feedback, not grades to trust.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..files import write_atomic
from .course_folder import CheckCellPoints, lesson_checks, load_config, source_notebook

__all__ = ["add_arguments", "main", "export", "export_lesson", "workflow", "step_id", "check_command",
           "add_collect_arguments", "collect", "collect_main"]

#: where the checks run: the course is cloned here, beside the student's notebook
COURSE_DIR = ".course"
#: torch's CPU wheels (GitHub's runners have no GPU; the CUDA wheels are ten times larger)
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
#: minutes one test may run (the command grader's ``timeout``)
TIMEOUT_MIN = 10
_PYTEST = "-p no:cacheprovider -o addopts= --disable-warnings --show-capture=no -rN"
#: visible checks: each failure as the check's one line (expected …, got …. Hint: …); a crash with a short traceback
VISIBLE_FLAGS = f"{_PYTEST} --no-header --tb=short"
#: hidden checks: pass or fail only, as the student's own Actions log shows everything it prints
HIDDEN_FLAGS = f"{_PYTEST} -q --tb=no"
_IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc")


# ------------------------------------------------------------------------------------------------ the workflow


def step_id(grade_id: str) -> str:
    """A workflow step id for a check cell: ``check_NoiseSchedule_hidden`` → ``check-noiseschedule-hidden``."""
    sid = re.sub(r"[^a-z0-9]+", "-", grade_id.lower()).strip("-")
    return sid if sid[:1].isalpha() else f"check-{sid}".rstrip("-")


def _step_ids(checks: list[CheckCellPoints]) -> list[str]:
    ids: list[str] = []
    for c in checks:
        sid, n = step_id(c.grade_id), 2
        while sid in ids:
            sid, n = f"{step_id(c.grade_id)}-{n}", n + 1
        ids.append(sid)
    return ids


def _points(c: CheckCellPoints) -> int:
    """A check cell's points as the command grader reads ``max-score`` (a whole number)."""
    if c.points != int(c.points):
        raise ValueError(f"check cell {c.grade_id} has {c.points:g} points: GitHub Classroom scores whole points only")
    return int(c.points)


def check_command(lesson: str, check: CheckCellPoints) -> str:
    """The shell command that runs one check cell's checks on the student's notebook (from the repository root)."""
    kind = "hidden" if check.hidden else "visible"
    flags = HIDDEN_FLAGS if check.hidden else VISIBLE_FLAGS
    return (f"cd {COURSE_DIR} && python -m pytest tests --impl {shlex.quote(f'../{lesson}.ipynb')} "
            f"--exercise {shlex.quote(check.exercise)} --checks {kind} {flags}")


def _q(text: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(text, ensure_ascii=False)


def workflow(lesson: str, checks: list[CheckCellPoints], url: str, ref: str) -> str:
    """``.github/workflows/classroom.yml`` for ``lesson``: the course at ``url``/``ref`` installed once, then one
    command-grader step per check cell (its points as ``max-score``), then the grading reporter."""
    ids = _step_ids(checks)
    lines = [
        f"# GitHub Classroom autograding of {lesson}, written by `python -m ddpm_ref grade classroom`: one test per",
        "# check cell of the lesson, with its points. The checks come from the course repository at the commit below.",
        "name: Autograding Tests",
        '"on":', "  - push", "  - repository_dispatch", "  - workflow_dispatch",
        "permissions:", "  checks: write", "  actions: read", "  contents: read",
        "jobs:", "  run-autograding-tests:", "    runs-on: ubuntu-latest",
        "    if: \"github.actor != 'github-classroom[bot]'\"",
        "    steps:",
        "      - name: Checkout code", "        uses: actions/checkout@v4",
        "      - name: Set up Python", "        uses: actions/setup-python@v5",
        "        with:", '          python-version: "3.11"',
        "      - name: Get the course's checks", "        env:",
        f"          COURSE_URL: {_q(url)}", f"          COURSE_REF: {_q(ref)}",
        "        run: |",
        f"          git init -q {COURSE_DIR}",
        f'          git -C {COURSE_DIR} fetch -q --depth 1 "$COURSE_URL" "$COURSE_REF"',
        f"          git -C {COURSE_DIR} checkout -q FETCH_HEAD",
        "      - name: Install the course",
        f'        run: python -m pip install -q --extra-index-url {TORCH_INDEX} -e "./{COURSE_DIR}[course]" pytest',
    ]
    for sid, c in zip(ids, checks, strict=True):
        name = f"{c.exercise}: {'hidden' if c.hidden else 'visible'} checks"
        lines += [f"      - name: {_q(name)}", f"        id: {sid}",
                  "        uses: classroom-resources/autograding-command-grader@v1", "        with:",
                  f"          test-name: {_q(name)}", f"          command: {_q(check_command(lesson, c))}",
                  f"          timeout: {TIMEOUT_MIN}", f"          max-score: {_points(c)}"]
    lines += ["      - name: Autograding Reporter", "        uses: classroom-resources/autograding-grading-reporter@v1",
              "        env:"]
    lines += [f"          {sid.upper()}_RESULTS: {_q('${{steps.' + sid + '.outputs.result}}')}" for sid in ids]
    lines += ["        with:", f"          runners: {','.join(ids)}"]
    return "\n".join(lines) + "\n"


def _title(notebook: Path) -> str:
    """The first ``# heading`` of the notebook's markdown cells, or ''."""
    import nbformat

    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "markdown":
            found = re.search(r"^# +(.+)$", cell.source, re.MULTILINE)
            if found:
                return found.group(1).strip()
    return ""


def readme(lesson: str, title: str, checks: list[CheckCellPoints], url: str, ref: str) -> str:
    """The template repository's README: what a student does and where the result shows."""
    total = sum(_points(c) for c in checks)
    rows = "\n".join(f"| `{c.exercise}` | {'hidden' if c.hidden else 'visible'} | {_points(c)} |" for c in checks)
    return f"""# {title or lesson}

1. Open `{lesson}.ipynb` (Jupyter, VS Code or Colab), replace every `raise NotImplementedError()` with your code,
   and run the check cells: they tell you at once what is wrong.
2. Commit and push the notebook, under the same name, at the top of this repository.
3. Every push runs the autograder. Open the **Actions** tab, then the latest **Autograding Tests** run: each test
   below is one step of the job, and the **Autograding Reporter** step lists every test with its points
   (the run's summary shows `Points X/{total}`). A failed visible test prints what was expected, what came out and
   a hint; a hidden test shows only whether it passed.

| exercise | checks | points |
|---|---|---|
{rows}

The checks are those of the course repository {url} at `{ref}`. To run a test on your machine, from this
folder: `git clone {url} {COURSE_DIR}`, `git -C {COURSE_DIR} checkout {ref}`,
`pip install -e "./{COURSE_DIR}[course]" pytest`, then the test's `command` in `.github/workflows/classroom.yml`.

Do not change `.github/`: these points are feedback while you work. Your instructor grades the notebook you push
again, with the same checks, on their own machine.
"""


# ------------------------------------------------------------------------------------------------ git facts


def _git(folder: Path, *args: str) -> str:
    """``git -C folder ARGS``'s output, or '' when git fails (not a repository, no such remote)."""
    try:
        found = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""


def _without_credentials(url: str) -> str:
    """``url`` as a student's workflow can fetch it: SSH forms become HTTPS, and user names and tokens are dropped."""
    scp = re.fullmatch(r"[\w.-]+@([\w.-]+):(?!/)(.+)", url)  # git@github.com:owner/repo.git
    if scp:
        return f"https://{scp.group(1)}/{scp.group(2)}"
    parts = urlsplit(url)
    if parts.hostname and parts.scheme in ("ssh", "git+ssh"):
        return urlunsplit(("https", parts.hostname, parts.path, "", ""))
    if parts.hostname and parts.scheme in ("http", "https"):
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return url


def course_url(course: Path, given: str | None) -> str:
    """The URL the students' workflows clone the course from: ``given``, else the course's git remote ``origin``."""
    if given:
        if urlsplit(given).password or urlsplit(given).username:
            raise ValueError("--course-url carries a user name or token, which every student would read: give a URL "
                             "they can clone without one")
        return given
    origin = _git(course, "remote", "get-url", "origin")
    if not origin:
        raise ValueError(f"{course} has no git remote origin: pass --course-url URL (a URL the students' workflows "
                         "can clone the course from)")
    return _without_credentials(origin)


def course_ref(course: Path, given: str | None) -> str:
    """The commit the checks are pinned to: ``given``, else the course's current commit."""
    if given:
        if not re.fullmatch(r"\w[\w./-]*", given):
            raise ValueError(f"--ref {given!r} is not a commit, branch or tag name")
        return given
    head = _git(course, "rev-parse", "HEAD")
    if not head:
        raise ValueError(f"{course} is not a git repository with a commit: pass --ref REF")
    if _git(course, "status", "--porcelain", "--", "tests", "ddpm_ref"):
        print(f"warning: tests/ or ddpm_ref/ have changes not committed: the workflows use commit {head[:12]} "
              "without them", file=sys.stderr)
    if not _git(course, "branch", "-r", "--contains", head):
        print(f"warning: commit {head[:12]} is on no remote branch: push it before students push", file=sys.stderr)
    return head


# ------------------------------------------------------------------------------------------------ the export


def _release_dir(course: Path, lesson: str) -> Path:
    from nbgrader.coursedir import CourseDirectory

    folder = course / CourseDirectory(config=load_config(course)).release_directory / lesson
    if not (folder / f"{lesson}.ipynb").is_file():
        raise FileNotFoundError(f"{folder} has no {lesson}.ipynb: generate the release (python solutions/release.py)")
    return folder


def _replace_dir(built: Path, target: Path) -> None:
    """Put the folder ``built`` at ``target`` (same file system), keeping a ``.git`` that ``target`` already has."""
    old = target.with_name(f".{target.name}.old")
    if target.exists() or target.is_symlink():
        if target.is_symlink() or not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder: remove it or give --out another folder")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        if (old / ".git").is_dir() and not (old / ".git").is_symlink():
            os.rename(old / ".git", built / ".git")  # the instructor's template repository stays a repository
    try:
        os.rename(built, target)
    except OSError:  # put everything back as it was
        if (built / ".git").is_dir():
            os.rename(built / ".git", old / ".git")
        if old.is_dir():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_lesson(course: Path, lesson: str, out: Path, url: str, ref: str) -> Path:
    """Writes ``out/LESSON/``, the template repository of ``lesson`` (built aside, then moved into place)."""
    source_notebook(course, lesson)  # an unknown lesson: a one-line error naming the known ones
    checks = lesson_checks(course, lesson)
    if not checks:
        raise ValueError(f"{lesson} has no check cells: nothing to autograde")
    release = _release_dir(course, lesson)
    out.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{lesson}.", dir=out))
    try:
        shutil.copytree(release, built, ignore=_IGNORE, dirs_exist_ok=True)
        (built / ".github" / "workflows").mkdir(parents=True)
        (built / ".github" / "workflows" / "classroom.yml").write_text(workflow(lesson, checks, url, ref))
        (built / "README.md").write_text(readme(lesson, _title(release / f"{lesson}.ipynb"), checks, url, ref))
        (built / ".gitignore").write_text(f"/{COURSE_DIR}/\n.ipynb_checkpoints/\n__pycache__/\n")
        _replace_dir(built, out / lesson)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    return out / lesson


def export(course: Path, lessons: list[str], out: Path, url: str | None = None, ref: str | None = None) -> list[Path]:
    """:func:`export_lesson` for each of ``lessons`` into the folder ``out``, the checks pinned to ``ref`` of ``url``
    (defaults: the course's remote ``origin`` and current commit)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file: give --out a folder for the template repositories")
    url, ref = course_url(course, url), course_ref(course, ref)
    return [export_lesson(course, lesson, out, url, ref) for lesson in lessons]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``grade classroom LESSON…|all [--out DIR] [--course-url URL] [--ref REF]``."""
    p.add_argument("lessons", nargs="+", metavar="LESSON", help="lesson ids (e.g. 01_noise_schedule), or all")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write (default COURSE/classroom)")
    p.add_argument("--course-url", default=None, metavar="URL",
                   help="where the students' workflows clone the course (default: its git remote origin)")
    p.add_argument("--ref", default=None, metavar="REF",
                   help="the commit, tag or branch of the checks (default: the course's current commit)")


def main(course: Path, lessons: list[str], args: argparse.Namespace) -> int:
    """``grade classroom``: one template repository per lesson."""
    out = Path(args.out).expanduser() if args.out else course / "classroom"
    for folder in export(course, lessons, out, args.course_url, args.ref):
        print(f"wrote {folder}/ (make it a template repository; its workflow: .github/workflows/classroom.yml)")
    return 0


# ------------------------------------------------------------------------------------------------ collect


def _prefix(repos: Path, names: list[str], lesson: str) -> str:
    """The ``ASSIGNMENT-`` prefix that gh-classroom puts before each student's name in the repositories' names."""
    candidates = [lesson.replace("_", "-").lower() + "-"]
    if repos.name.endswith("-submissions"):  # gh classroom clone student-repos: SLUG-submissions/SLUG-STUDENT
        candidates.insert(0, repos.name.removesuffix("-submissions") + "-")
    for prefix in candidates:
        if names and all(n.startswith(prefix) and len(n) > len(prefix) for n in names):
            return prefix
    if len(names) < 2:
        return ""
    words = [n.split("-") for n in names]  # else the words all names share, leaving each at least one of its own
    k = 0
    while all(len(w) > k + 1 for w in words) and len({w[k] for w in words}) == 1:
        k += 1
    return "-".join(words[0][:k]) + "-" if k else ""


def _read_notebook(path: Path) -> bytes:
    """The bytes of the regular file ``path``, never through a symbolic link."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read()


def collect(course: Path, lesson: str, repos: Path) -> list[str]:
    """Copies ``REPOS/*/LESSON.ipynb`` (the students' repositories, as ``gh classroom clone student-repos`` clones
    them) to ``submitted/STUDENT/LESSON/``, with ``timestamp.txt`` from the repository's last commit. Returns the
    students collected; prints one line per student and a warning per repository without a usable notebook."""
    from nbgrader.coursedir import CourseDirectory

    source_notebook(course, lesson)  # an unknown lesson: a one-line error naming the known ones
    if not repos.is_dir():
        raise NotADirectoryError(f"{repos} is not a folder: give the folder gh classroom clone student-repos made")
    submitted = course / CourseDirectory(config=load_config(course)).submitted_directory
    folders = sorted(d for d in repos.iterdir() if d.is_dir() and not d.name.startswith("."))
    prefix = _prefix(repos, [d.name for d in folders], lesson)
    done: list[str] = []
    for repo in folders:
        student, notebook = repo.name[len(prefix):], repo / f"{lesson}.ipynb"
        if repo.is_symlink() or notebook.is_symlink():
            print(f"warning: {repo.name}: refused, {'it' if repo.is_symlink() else notebook.name} is a symbolic link",
                  file=sys.stderr)
            continue
        if not notebook.is_file():
            print(f"warning: {repo.name}: no {notebook.name} at the top of the repository", file=sys.stderr)
            continue
        if not re.fullmatch(r"\w[\w.-]*", student):
            print(f"warning: {repo.name}: refused, {student!r} is no student id", file=sys.stderr)
            continue
        dest = submitted / student / lesson
        dest.mkdir(parents=True, exist_ok=True)
        write_atomic(dest / notebook.name, _read_notebook(notebook), mode=0o600)
        stamp = _git(repo, "log", "-1", "--format=%cI") if (repo / ".git").exists() else ""
        if stamp:
            write_atomic(dest / "timestamp.txt", f"{stamp}\n", mode=0o600)
        else:
            (dest / "timestamp.txt").unlink(missing_ok=True)
        print(f"{student}: {repo.name}/{notebook.name}" + (f" (last commit {stamp})" if stamp else ""))
        done.append(student)
    return done


def add_collect_arguments(p: argparse.ArgumentParser) -> None:
    """``grade collect LESSON REPOS_DIR``."""
    p.add_argument("lesson", metavar="LESSON", help="the lesson id (e.g. 01_noise_schedule)")
    p.add_argument("repos", metavar="REPOS_DIR", help="the folder of the students' cloned repositories")


def collect_main(course: Path, lesson: str, repos: Path) -> int:
    """``grade collect``: 0 when at least one notebook was collected."""
    done = collect(course, lesson, repos.expanduser())
    if not done:
        print(f"error: no {lesson}.ipynb collected from {repos}", file=sys.stderr)
        return 1
    print(f"collected {len(done)} notebook(s) into submitted/; next: python -m ddpm_ref grade run {lesson}")
    return 0
