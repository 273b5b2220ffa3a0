"""``python -m ddpm_ref grade``: grade a class (``grade run``) and see what it got wrong (``grade report``).

    python -m ddpm_ref grade run 01_noise_schedule 02_forward_diffusion --jobs 4
    python -m ddpm_ref grade run all --scheduler tcp://10.0.0.5:8786     # the workers of a Dask cluster
    python -m ddpm_ref grade report 01_noise_schedule                    # reports/01_noise_schedule/report.html
    python -m ddpm_ref grade gradescope all                              # autograders/gradescope/LESSON.zip
    python -m ddpm_ref grade classroom all                               # classroom/LESSON/: template repositories
    python -m ddpm_ref grade collect 01_noise_schedule REPOS             # students' repositories → submitted/

Run it in the course folder (the one with ``nbgrader_config.py``), or give ``--course``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--course", default=None, metavar="DIR",
                   help="the course folder, with nbgrader_config.py (default: the working directory, else the "
                        "repository)")
    what = p.add_subparsers(dest="grade_command", metavar="{run,report,gradescope,classroom,collect}", required=True)
    r = what.add_parser("run", help="autograde every submission of the lessons not graded yet, N at a time",
                        description="Autograde every submitted/STUDENT/LESSON not graded yet into nbgrader's "
                                    "gradebook, one sandboxed nbgrader autograde per submission, N at a time.")
    r.add_argument("lessons", nargs="+", metavar="LESSON", help="lesson ids (e.g. 01_noise_schedule), or all")
    r.add_argument("--jobs", type=int, default=None,
                   help="submissions graded at once on this machine (default: what the cores and memory allow)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a Dask scheduler (tcp://HOST:8786) whose workers share the course folder; --jobs is "
                        "then ignored")
    r.add_argument("--force", action="store_true", help="grade every submission again, graded or not")
    p2 = what.add_parser("report", help="what the class got wrong: checks passed, named mistakes, cheats, "
                                        "similar code (CSV and one HTML page)")
    p2.add_argument("lesson", metavar="LESSON")
    p2.add_argument("--out", default=None, metavar="DIR", help="where to write (default COURSE/reports/LESSON)")
    g = what.add_parser("gradescope", help="the Gradescope autograder of each lesson (one zip per lesson)",
                        description="Write LESSON.zip for Gradescope's programming assignments: setup.sh, "
                                    "run_autograder and the course; submissions are graded as nbgrader autograde "
                                    "grades them here (sandbox, judge, points).")
    g.add_argument("lessons", nargs="+", metavar="LESSON", help="lesson ids (e.g. 01_noise_schedule), or all")
    g.add_argument("--out", default=None, metavar="DIR", help="where to write (default COURSE/autograders/gradescope)")
    from .classroom import add_arguments as classroom_arguments
    from .classroom import add_collect_arguments

    classroom_arguments(what.add_parser(
        "classroom", help="the GitHub Classroom template repository of each lesson (its autograding workflow)",
        description="Write classroom/LESSON/: the released notebook and the workflow GitHub Classroom runs, one "
                    "test per check cell with its points. It runs in the student's repository: feedback, not grades."))
    add_collect_arguments(what.add_parser(
        "collect", help="copy the notebooks of cloned GitHub Classroom repositories into submitted/",
        description="Copy REPOS/REPO/LESSON.ipynb to submitted/STUDENT/LESSON/ (and the last commit's time), for "
                    "grade run."))


def _course(arg: str | None) -> Path:
    if arg:
        course = Path(arg).expanduser()
    elif (Path.cwd() / "nbgrader_config.py").is_file():
        course = Path.cwd()
    else:
        from ..course import course_root

        course = course_root()
    if not (course / "nbgrader_config.py").is_file():
        raise FileNotFoundError(f"{course} has no nbgrader_config.py: run in the course folder or give --course DIR")
    return course.resolve()


def _lessons(course: Path, asked: list[str]) -> list[str]:
    from nbgrader.coursedir import CourseDirectory

    from .course_folder import load_config

    source = course / CourseDirectory(config=load_config(course)).source_directory
    known = sorted(d.name for d in source.iterdir() if d.is_dir() and any(d.glob("*.ipynb")))
    if asked == ["all"]:
        return known
    unknown = [x for x in asked if x not in known]
    if unknown:
        raise ValueError(f"no lesson {', '.join(unknown)} in {source}: choose among {', '.join(known)} (or all)")
    return asked


def main(args: argparse.Namespace) -> int:
    course = _course(args.course)
    if args.grade_command == "report":
        from .report import main_report

        page = main_report(course, args.lesson, Path(args.out) if args.out else None)
        print(f"wrote {page} and {page.with_name('report.csv')}")
        return 0
    if args.grade_command in ("classroom", "collect"):
        from . import classroom

        if args.grade_command == "collect":
            return classroom.collect_main(course, args.lesson, Path(args.repos))
        return classroom.main(course, _lessons(course, args.lessons), args)
    if args.grade_command == "gradescope":
        from .gradescope import export

        out = Path(args.out) if args.out else course / "autograders" / "gradescope"
        for path in export(course, _lessons(course, args.lessons), out):
            print(f"wrote {path}")
        return 0
    from .batch import run

    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    summary = run(course, _lessons(course, args.lessons), jobs=args.jobs, scheduler=args.scheduler,
                  force=args.force)
    for sub, why in summary.failed:
        print(f"failed: {sub}: {why}", file=sys.stderr)
    print(f"graded {len(summary.graded)} submission(s) in {summary.seconds:.0f} s; "
          f"{len(summary.skipped)} already graded; {len(summary.failed)} failed")
    return 1 if summary.failed else 0
