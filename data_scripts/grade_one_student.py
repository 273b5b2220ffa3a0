"""Time one student's whole course through real nbgrader: ``nbgrader autograde "*" --student one``.

    python data_scripts/grade_one_student.py                 # every lesson
    python data_scripts/grade_one_student.py 07_ddim 10_score_sde

Builds a course in a temporary folder (``nbgrader_config.py``, the solutions, nbgrader's own
``generate_assignment``), submits every solution notebook as student ``one``, then runs one ``nbgrader autograde``
for all of them, as an instructor grades a student, with the sandbox and the judge of ``nbgrader_config.py``. Prints
the wall-clock seconds of that command and each lesson's score out of its points (every lesson should score full
marks). Exit status 1 when one does not.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"


def _release():
    spec = importlib.util.spec_from_file_location("course_release", SOLUTIONS / "release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    release = _release()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help=f"lesson ids (default: all {len(release.lesson_ids())})")
    args = parser.parse_args(argv)
    lessons = args.lessons or release.lesson_ids()
    unknown = sorted(set(lessons) - set(release.lesson_ids()))
    if unknown:
        parser.error(f"no lesson {', '.join(unknown)}; choose among {', '.join(release.lesson_ids())}")

    from nbgrader.api import Gradebook

    with tempfile.TemporaryDirectory(prefix="ddpm-one-student-") as tmp:
        course = Path(tmp)
        shutil.copy2(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
        for lesson in lessons:
            shutil.copytree(SOLUTIONS / lesson, course / "solutions" / lesson,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        release.generate(course, lessons)
        for lesson in lessons:
            (course / "submitted" / "one" / lesson).mkdir(parents=True)
            shutil.copy2(SOLUTIONS / lesson / f"{lesson}.ipynb", course / "submitted" / "one" / lesson)
        env = dict(os.environ, DDPM_COURSE_ROOT=str(ROOT))
        for name in ("NBGRADER_EXECUTION", "DDPM_FAST"):
            env.pop(name, None)
        print(f'nbgrader autograde "*" --student one  ({len(lessons)} lessons)…', flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", "*", "--student", "one"], cwd=course,
                              env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        short = 0
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            for lesson in lessons:
                nb = gb.find_submission_notebook(lesson, lesson, "one")
                score, points = float(nb.score), float(nb.max_score)
                short += score < points
                print(f"  {lesson:<22} {score:g} / {points:g}")
    print(f"{seconds:.0f} s for the whole course; {len(lessons) - short} of {len(lessons)} lessons full marks")
    return 1 if short else 0


if __name__ == "__main__":
    raise SystemExit(main())
