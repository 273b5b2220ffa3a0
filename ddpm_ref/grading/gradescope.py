"""The Gradescope autograder of a lesson: ``python -m ddpm_ref grade gradescope LESSON…|all`` writes one zip per
lesson, in the layout Gradescope's autograder specification asks for:

    setup.sh          run once as root when Gradescope builds the image: Python, bubblewrap, this course
    run_autograder    run for every submission: grades /autograder/submission into /autograder/results/results.json
    autograder.json   the lesson and its check cells (grade_id, exercise, hidden, points)
    course/           the course: ddpm_ref, tests/ (the checks, the judge, the sandbox), nbgrader_config.py, the
                      lesson's source notebook and a gradebook that knows the lesson

Inside Gradescope's container a submission is graded exactly as ``nbgrader autograde`` grades it here (the
sandboxed kernel, the judge; :mod:`.gradescope_run`), so the points, the named mistakes and the integrity are the
same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from .course_folder import lesson_checks, load_config, source_notebook

__all__ = ["RUN_AUTOGRADER", "SETUP_SH", "export", "export_lesson"]

#: what Gradescope runs once, as root, while it builds the autograder's image (it has the network then)
SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder's image.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# bubblewrap: every submission runs in its sandbox; prlimit comes with util-linux
apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip bubblewrap util-linux
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install -q --upgrade pip
/autograder/venv/bin/pip install -q --extra-index-url https://download.pytorch.org/whl/cpu \\
    -e "/autograder/source/course[course]"
# the course (the reference among it) is for root alone; the sandbox sees only what it binds
chmod -R go-rwx /autograder/source
"""

#: what Gradescope runs for every submission (``run_autograder [ROOT]``: ROOT defaults to /autograder)
RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this for every submission, as root, in /autograder. Elsewhere: run_autograder ROOT, where ROOT
# is laid out as Gradescope lays out /autograder (source/, submission/, results/).
ROOT="${1:-/autograder}"
PY="${DDPM_AUTOGRADER_PYTHON:-/autograder/venv/bin/python}"
export DDPM_COURSE_ROOT="$ROOT/source/course" PYTHONPATH="$ROOT/source/course" MPLBACKEND=Agg
unset NBGRADER_EXECUTION
"$PY" -m ddpm_ref.grading.gradescope_run "$ROOT"
status=$?
if [ ! -s "$ROOT/results/results.json" ]; then
    # the grader itself failed: a results file all the same (the details are in this run's output, for staff)
    mkdir -p "$ROOT/results"
    printf '%s\\n' '{"score": 0, "output": "The autograder failed before it could grade this submission (status '\\
"$status"'): this is not your grade; your instructor can see why.", "stdout_visibility": "hidden", "tests": []}' \\
        > "$ROOT/results/results.json"
fi
exit 0
"""

#: what of the repository the autograder needs (besides the lesson's source folder)
_COURSE_FILES = ("ddpm_ref", "tests", "nbgrader_config.py", "pyproject.toml", "README.md")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".pytest_cache")


def _commit(course: Path) -> str:
    found = subprocess.run(["git", "-C", str(course), "rev-parse", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else ""


def _gradebook(course: Path, lesson: str) -> None:
    """nbgrader's ``generate_assignment`` of ``lesson`` in ``course``: its gradebook then knows the lesson's
    cells, points and checksums, which ``autograde`` needs."""
    from nbgrader.apps import NbGraderAPI

    config = load_config(course)
    config.CourseDirectory.root = str(course)
    config.CourseDirectory.log_level = "WARNING"
    result = NbGraderAPI(config=config).generate_assignment(lesson, force=True, create=True)
    if not result["success"]:
        raise RuntimeError(f"nbgrader generate_assignment {lesson} failed: {result.get('error') or result.get('log')}")


def export_lesson(course: Path, lesson: str, out: Path) -> Path:
    """Writes ``out/LESSON.zip``, the Gradescope autograder of ``lesson`` (atomically: a failed export leaves no
    zip behind). Returns its path."""
    checks = lesson_checks(course, lesson)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ddpm-gradescope-") as tmp:
        staging = Path(tmp) / "autograder"
        target = staging / "course"
        target.mkdir(parents=True)
        for name in _COURSE_FILES:
            src = course / name
            if src.is_dir():
                shutil.copytree(src, target / name, ignore=_IGNORE)
            elif src.is_file():
                shutil.copy2(src, target / name)
        source = source_notebook(course, lesson).parent
        shutil.copytree(source, target / source.relative_to(course), ignore=_IGNORE)
        _gradebook(target, lesson)
        (staging / "autograder.json").write_text(json.dumps({
            "lesson": lesson, "commit": _commit(course),
            "checks": [{"grade_id": c.grade_id, "exercise": c.exercise, "hidden": c.hidden, "points": c.points}
                       for c in checks]}, indent=2) + "\n")
        (staging / "setup.sh").write_text(SETUP_SH)
        (staging / "run_autograder").write_text(RUN_AUTOGRADER)
        part = out / f".{lesson}.zip.part"
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    info = zipfile.ZipInfo.from_file(path, path.relative_to(staging).as_posix())
                    info.compress_type = zipfile.ZIP_DEFLATED
                    if path.name in ("setup.sh", "run_autograder"):
                        info.external_attr = (0o100755 & 0xFFFF) << 16
                    z.writestr(info, path.read_bytes())
        os.replace(part, out / f"{lesson}.zip")
    return out / f"{lesson}.zip"


def export(course: Path, lessons: list[str], out: Path) -> list[Path]:
    """:func:`export_lesson` for each of ``lessons``; ``out`` must be a folder (it is made if missing)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file: give --out a folder for the autograder zips")
    return [export_lesson(course, lesson, out) for lesson in lessons]
