"""Proof that the grader is right: real nbgrader commands in a temporary course directory.

The course is a copy of ``solutions/`` and ``nbgrader_config.py``; the checks come from this repository
(``DDPM_COURSE_ROOT``). nbgrader's own ``generate_assignment`` builds the release and records the grade cells
in the gradebook; then one ``nbgrader autograde <lesson> --force`` per lesson grades every submission of that
lesson at once, and one ``nbgrader generate_feedback`` writes every feedback page. The lessons are shared out
among ``DDPM_NBGRADER_SHARDS`` course folders (default: one per core this pytest-xdist worker has to itself; each its
own gradebook) graded at the same time. Submissions (one student each):

* ``solution``: the solution notebooks, which must score full marks;
* ``release``: the unmodified student notebooks, which must score 0 on every autograded cell;
* ``mistakesK``: the solution notebook with the K-th typical mistake of each exercise of the lesson appended to
  that exercise's solution cell (``tests/mistakes.py``; its cheats count as mistakes that break every check of
  their exercise: the reference used as the answer, the runner rebound or patched, the assertion helpers
  replaced). Checks are isolated per exercise, so mistakes in different exercises of one notebook cannot
  interact; every check cell of an exercise with a mistake must score 0 exactly when the mistake breaks one of
  its checks, every other cell keeps its points, and the failing check's output and the feedback page name the
  mistake. The correct variants of an exercise (``tests/mistakes.py``) ride in the rounds where it has no mistake left
  (:func:`~tests.mistakes.riding_variants`): their cells must keep full marks, graded by real nbgrader at no extra
  notebook run (the judge's own test grades the variants that find no free round);
* ``…_raises``: in lesson 2, the ``predict_x0`` cell raises before defining it; ``…_loops``: in lesson 1, the
  ``linear_beta_schedule`` cell never ends (stopped by the cell timeout). Each rides along with a mistake submission
  that leaves that exercise alone; both are scored (0 for that exercise, the rest kept) without stopping the batch.

Scores are read from the gradebook (``nbgrader.api.Gradebook``). Run with ``pytest tests/test_course_nbgrader.py``
(marked ``slow``).
"""

from __future__ import annotations

import copy
import html
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from tests._course import ROOT, SOLUTIONS, exercise_lessons, live_script, load_release, load_site
from tests.mistakes import ALTERNATIVES, CHEATS, MISTAKES, Alternative, Mistake, hidden_checks, riding_variants

pytestmark = pytest.mark.slow

release = load_release()
#: DDPM_NBGRADER_LESSONS="04_training 05_sampling" grades only those lessons (to iterate on one; CI grades all)
LESSONS = [lesson for lesson in release.lesson_ids()
           if lesson in os.environ.get("DDPM_NBGRADER_LESSONS", lesson).split()]



@pytest.fixture(scope="module", autouse=True)
def _not_with_impl(request: pytest.FixtureRequest) -> None:
    """These tests are about the repository's notebooks: ``pytest tests --impl NOTEBOOK`` leaves them out."""
    if request.config.getoption("--impl", default=None):
        pytest.skip("grades the course's own notebooks; not run with --impl")


# ------------------------------------------------------------------------------------------------ notebooks


def read_solution(lesson: str) -> nbformat.NotebookNode:
    return nbformat.read(SOLUTIONS / lesson / f"{lesson}.ipynb", as_version=4)


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def solution_cell(nb: nbformat.NotebookNode, exercise: str):
    cells = [c for c in nb.cells if nbgrader_meta(c).get("solution") and nbgrader_meta(c).get("grade_id") == exercise]
    assert len(cells) == 1, f"expected one solution cell with grade_id {exercise!r}, found {len(cells)}"
    return cells[0]


def grade_ids(nb: nbformat.NotebookNode) -> set[str]:
    return {nbgrader_meta(c)["grade_id"] for c in nb.cells if nbgrader_meta(c).get("grade")}


def lesson_of_exercise() -> dict[str, str]:
    """{exercise: lesson} for the graded lessons."""
    return {ex: lesson for ex, lesson in exercise_lessons().items() if lesson in LESSONS}


#: the mistakes and cheats of the graded lessons
GRADED = [m for m in [*MISTAKES, *CHEATS] if m.exercise in lesson_of_exercise()]
#: the correct variants that ride in those lessons' mistake submissions: {name: round}
RIDING = riding_variants(lesson_of_exercise())


def lost_cells(mistake: Mistake, cells: set[str]) -> set[str]:
    """The check cells a mistake must zero: the visible one if it breaks a visible check, the hidden one (where the
    notebook has one) if it breaks a hidden check."""
    hidden = hidden_checks(mistake)
    lost = set()
    if set(mistake.breaks) - hidden:
        lost.add(f"check_{mistake.exercise}")
    if hidden and f"check_{mistake.exercise}_hidden" in cells:
        lost.add(f"check_{mistake.exercise}_hidden")
    assert lost <= cells, f"mistake {mistake.name} breaks checks of cells the notebook lacks: {sorted(lost - cells)}"
    return lost


@dataclass
class Submission:
    student: str
    lesson: str
    nb: nbformat.NotebookNode
    lost: set[str] = field(default_factory=set)  # grade_ids that must score 0 (the rest: full marks)
    mistakes: list[Mistake] = field(default_factory=list)
    variants: list[Alternative] = field(default_factory=list)


def build_submissions(releases: dict[str, Path]) -> list[Submission]:
    """The submissions of every graded lesson; ``releases`` maps a lesson to the folder of its release."""
    subs: list[Submission] = []
    owner = lesson_of_exercise()
    if LESSONS == release.lesson_ids():
        unknown = sorted({m.exercise for m in [*MISTAKES, *CHEATS]} - set(owner))
        assert not unknown, f"tests/mistakes.py has mistakes for exercises no solution notebook has: {unknown}"
    by_lesson: dict[str, dict[str, list[Mistake]]] = defaultdict(lambda: defaultdict(list))
    for m in GRADED:  # a cheat is graded like a mistake that breaks every check of its exercise
        by_lesson[owner[m.exercise]][m.exercise].append(m)
    for lesson in LESSONS:
        sol = read_solution(lesson)
        cells = grade_ids(sol)
        subs.append(Submission("solution", lesson, sol))
        rel = nbformat.read(releases[lesson] / lesson / f"{lesson}.ipynb", as_version=4)
        subs.append(Submission("release", lesson, rel, lost=set(cells)))
        groups = by_lesson.get(lesson, {})
        for k in range(max((len(v) for v in groups.values()), default=0)):
            nb = copy.deepcopy(sol)
            sub = Submission(f"mistakes{k + 1}", lesson, nb)
            for exercise, mistakes in groups.items():
                if k < len(mistakes):
                    m = mistakes[k]
                    cell = solution_cell(nb, exercise)
                    cell.source = cell.source.rstrip() + "\n\n\n" + m.source
                    sub.mistakes.append(m)
                    sub.lost |= lost_cells(m, cells)
            for alt in ALTERNATIVES:
                if RIDING.get(alt.name) == k + 1 and owner[alt.exercise] == lesson:
                    cell = solution_cell(nb, alt.exercise)
                    cell.source = cell.source.rstrip() + "\n\n\n" + alt.source
                    sub.variants.append(alt)
            subs.append(sub)
    # a notebook that raises before defining an exercise, and one that never ends; each rides along with a
    # mistake submission that leaves that exercise alone (one notebook run fewer each)
    if "02_forward_diffusion" in LESSONS:
        _host(subs, "02_forward_diffusion", "predict_x0", "raises",
              'raise RuntimeError("a bug in my predict_x0 cell")\n')
    if "01_noise_schedule" in LESSONS:
        _host(subs, "01_noise_schedule", "linear_beta_schedule", "loops",
              "while True:  # never ends\n    pass\n\n" + solution_cell(read_solution("01_noise_schedule"),
                                                                 "linear_beta_schedule").source)
    return subs


def _host(subs: list[Submission], lesson: str, exercise: str, tag: str, source: str) -> None:
    """Replace ``exercise``'s cell by ``source`` in the last submission of ``lesson`` that has no mistake for it."""
    free = [s for s in subs if s.lesson == lesson and s.student.startswith("mistakes")
            and all(m.exercise != exercise for m in [*s.mistakes, *s.variants])]
    if free:
        sub = free[-1]
    else:
        sub = Submission("mistakes0", lesson, read_solution(lesson))
        subs.append(sub)
    sub.student += f"_{tag}"
    solution_cell(sub.nb, exercise).source = source
    sub.lost |= {c for c in grade_ids(sub.nb) if c in (f"check_{exercise}", f"check_{exercise}_hidden")}


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class Graded:
    courses: dict[str, Path]  # lesson → the course folder that graded it
    submissions: list[Submission]
    scores: dict[tuple[str, str], dict[str, tuple[float, float]]]  # (student, lesson) → grade_id → (score, max)
    timings: dict[str, float]

    def autograded(self, sub: Submission) -> nbformat.NotebookNode:
        path = self.courses[sub.lesson] / "autograded" / sub.student / sub.lesson / f"{sub.lesson}.ipynb"
        return nbformat.read(path, 4)

    def feedback(self, sub: Submission) -> str:
        path = self.courses[sub.lesson] / "feedback" / sub.student / sub.lesson / f"{sub.lesson}.html"
        return path.read_text("utf-8")


def nbgrader(course: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, DDPM_COURSE_ROOT=str(ROOT))
    env.pop("NBGRADER_EXECUTION", None)
    env.pop("DDPM_FAST", None)
    cmd = [sys.executable, "-m", "nbgrader", *args]
    proc = subprocess.run(cmd, cwd=course, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "Error" in line]
        raise AssertionError(f"`nbgrader {' '.join(args)}` failed ({proc.returncode}):\n" + "\n".join(errors[:40])
                             + f"\n…\n{proc.stderr[-4000:]}")
    return proc


#: course folders graded at the same time (nbgrader runs one notebook at a time; each folder has its own gradebook):
#: one per core left to this pytest-xdist worker, so that the judge's time budgets in the other workers' tests hold
SHARDS = max(1, int(os.environ.get("DDPM_NBGRADER_SHARDS") or
                    (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)))


def shard(cost: dict[str, float], shards: int) -> list[list[str]]:
    """The lessons shared out among ``shards`` folders, the costliest first to the least loaded (LPT), each in
    course order."""
    loads: list[tuple[float, list[str]]] = [(0.0, []) for _ in range(min(shards, len(cost)) or 1)]
    for lesson in sorted(cost, key=lambda k: -cost[k]):
        i = min(range(len(loads)), key=lambda j: loads[j][0])
        loads[i] = (loads[i][0] + cost[lesson], loads[i][1] + [lesson])
    return [sorted(lessons) for _, lessons in loads if lessons]


#: seconds per submission under FAST, roughly, measured on 2 cores (a lesson not listed counts as 20)
SUBMISSION_COST = {"04_training": 60, "09_flow_matching": 60, "06_reconstruction": 45, "08_guidance": 40}


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> Graded:
    from concurrent.futures import ThreadPoolExecutor

    from nbgrader.api import Gradebook

    timings: dict[str, float] = {}
    start = time.perf_counter()
    root = tmp_path_factory.mktemp("courses")
    owner, per_exercise = lesson_of_exercise(), defaultdict(int)
    for m in GRADED:
        per_exercise[m.exercise] += 1
    runs = {lesson: 2 + max([n for ex, n in per_exercise.items() if owner[ex] == lesson], default=0)
            for lesson in LESSONS}  # the solution, the release and one notebook per round of mistakes
    cost = {lesson: SUBMISSION_COST.get(lesson, 20) * runs[lesson] for lesson in LESSONS}
    groups = shard(cost, SHARDS)
    courses: dict[str, Path] = {}
    for i, lessons in enumerate(groups):
        course = root / f"course{i}"
        (course / "solutions").mkdir(parents=True)
        shutil.copy2(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
        for lesson in lessons:
            shutil.copytree(SOLUTIONS / lesson, course / "solutions" / lesson,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
            courses[lesson] = course
        release.generate(course, lessons)  # nbgrader's generate_assignment for each lesson, in this process
    timings["generate_assignment (all lessons)"] = time.perf_counter() - start

    subs = build_submissions({lesson: course / "lessons" for lesson, course in courses.items()})
    for sub in subs:
        dest = courses[sub.lesson] / "submitted" / sub.student / sub.lesson
        dest.mkdir(parents=True, exist_ok=True)
        nbformat.write(sub.nb, dest / f"{sub.lesson}.ipynb")

    def grade(lessons: list[str]) -> None:
        course = courses[lessons[0]]
        for lesson in lessons:
            begin = time.perf_counter()
            nbgrader(course, "autograde", lesson, "--force", timeout=1200)
            n = sum(s.lesson == lesson for s in subs)
            timings[f"autograde {lesson} ({n} submissions)"] = time.perf_counter() - begin
            executed = course / "autograded" / "solution" / lesson / f"{lesson}.ipynb"
            if executed.is_file():  # the site (tests/test_site.py) shows this FAST run instead of running it again
                load_site().store_execution(lesson, executed, "fast")
        begin = time.perf_counter()
        nbgrader(course, "generate_feedback", "*", "--force", timeout=600)
        timings[f"generate_feedback ({course.name})"] = time.perf_counter() - begin

    begin = time.perf_counter()
    with ThreadPoolExecutor(len(groups)) as pool:
        list(pool.map(grade, groups))  # re-raises the first failure
    timings[f"grading ({len(groups)} folders at once)"] = time.perf_counter() - begin

    scores: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for course in sorted(set(courses.values())):
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            for sub in subs:
                if courses[sub.lesson] == course:
                    nb = gb.find_submission_notebook(sub.lesson, sub.lesson, sub.student)
                    scores[(sub.student, sub.lesson)] = {g.name: (float(g.score), float(g.max_score))
                                                         for g in nb.grades}
    print("\nnbgrader timings: " + "; ".join(f"{k}: {v:.0f} s" for k, v in timings.items()))
    return Graded(courses, subs, scores, timings)


def _wrong_cells(graded: Graded, sub: Submission) -> list[str]:
    got = graded.scores[(sub.student, sub.lesson)]
    assert set(got) == grade_ids(sub.nb), (
        f"{sub.student}/{sub.lesson}: the gradebook has cells {sorted(got)}, the notebook {sorted(grade_ids(sub.nb))}")
    wrong = []
    for cell, (score, points) in sorted(got.items()):
        want = 0.0 if cell in sub.lost else points
        if score != want:
            wrong.append(f"{cell}: scored {score:g} of {points:g}, expected {want:g}")
    return wrong


def _check_cell_output(nb: nbformat.NotebookNode, grade_id: str) -> str:
    for cell in nb.cells:
        if nbgrader_meta(cell).get("grade_id") == grade_id:
            parts = []
            for out in cell.get("outputs", []):
                parts.append(out.get("text", "") if out.get("output_type") == "stream" else
                             "\n".join([out.get("ename", ""), out.get("evalue", "")]))
            return "\n".join(parts)
    raise AssertionError(f"no cell {grade_id}")


def _subs(graded: Graded, student: str) -> list[Submission]:
    return [s for s in graded.submissions if s.student == student or s.student.endswith(f"_{student}")]


# ------------------------------------------------------------------------------------------------ the proofs


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_scores_full_marks(graded: Graded, lesson: str) -> None:
    (sub,) = [s for s in _subs(graded, "solution") if s.lesson == lesson]
    got = graded.scores[("solution", lesson)]
    assert got, f"{lesson} has no autograded cells"
    wrong = _wrong_cells(graded, sub)
    assert not wrong, f"the solution of {lesson} does not score full marks:\n" + "\n".join(wrong)


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_runs_without_errors_in_time(graded: Graded, lesson: str) -> None:
    """Under FAST (as nbgrader runs it) every cell of the solution notebook runs without an error and within the
    cell timeout and the notebook deadline: this is the CI execution of every solution notebook."""
    (sub,) = [s for s in _subs(graded, "solution") if s.lesson == lesson]
    bad = [f"cell {cell.get('id')} ({cell.source.splitlines()[0][:50]!r}): {out.get('ename')}: "
           f"{str(out.get('evalue'))[:300]}"
           for cell in graded.autograded(sub).cells for out in cell.get("outputs", [])
           if out.get("output_type") == "error"]
    assert not bad, f"{lesson}: cells that fail or are too slow for grading (shrink them when FAST):\n" + "\n".join(bad)


@pytest.mark.parametrize("lesson", LESSONS)
def test_release_scores_zero(graded: Graded, lesson: str) -> None:
    (sub,) = [s for s in _subs(graded, "release") if s.lesson == lesson]
    got = graded.scores[("release", lesson)]
    assert set(got) == grade_ids(read_solution(lesson)), "the release lacks autograded cells of the solution"
    wrong = _wrong_cells(graded, sub)
    assert not wrong, f"the unmodified release of {lesson} earns points:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", [m.name for m in GRADED])
def test_mistake_loses_exactly_its_checks(graded: Graded, name: str) -> None:
    (sub,) = [s for s in graded.submissions if any(m.name == name for m in s.mistakes)]
    (mistake,) = [m for m in sub.mistakes if m.name == name]
    got = graded.scores[(sub.student, sub.lesson)]
    cells = {c for c in got if c == f"check_{mistake.exercise}" or c == f"check_{mistake.exercise}_hidden"}
    lost = lost_cells(mistake, set(got))
    wrong = [f"{c}: scored {got[c][0]:g} of {got[c][1]:g}, expected {0 if c in lost else got[c][1]:g}"
             for c in sorted(cells) if got[c][0] != (0.0 if c in lost else got[c][1])]
    assert not wrong, f"mistake {name} ({mistake.description}) in {sub.student}/{sub.lesson}:\n" + "\n".join(wrong)
    # the failing visible check names the mistake, in the autograded notebook and in the feedback's outputs
    visible = f"check_{mistake.exercise}"
    assert visible in lost, f"mistake {name} breaks only hidden checks: the feedback cannot name it"
    shown = _check_cell_output(graded.autograded(sub), visible)
    assert mistake.feedback in shown, f"the output of {visible} does not name mistake {name}: " \
                                      f"expected {mistake.feedback!r} in\n{shown}"
    assert mistake.feedback in feedback_outputs(graded.feedback(sub)), (
        f"the feedback page of {sub.student}/{sub.lesson} does not show {mistake.feedback!r} (mistake {name})")


@pytest.mark.parametrize("name", sorted(RIDING))
def test_a_riding_variant_keeps_full_marks(graded: Graded, name: str) -> None:
    """A correct variant, written differently from the solution, scores every point of its exercise's cells."""
    (sub,) = [s for s in graded.submissions if any(a.name == name for a in s.variants)]
    (alt,) = [a for a in sub.variants if a.name == name]
    got = graded.scores[(sub.student, sub.lesson)]
    wrong = [f"{c}: scored {got[c][0]:g} of {got[c][1]:g}" for c in sorted(got)
             if c in (f"check_{alt.exercise}", f"check_{alt.exercise}_hidden") and got[c][0] != got[c][1]]
    assert not wrong, f"variant {name} ({alt.description}) in {sub.student}/{sub.lesson}:\n" + "\n".join(wrong)


def test_mistake_submissions_keep_the_rest(graded: Graded) -> None:
    """Every cell that no injected mistake (or raising or looping cell) breaks keeps its points: nothing cascades."""
    wrong = [f"{s.student}/{s.lesson} {w}" for s in graded.submissions if s.mistakes for w in _wrong_cells(graded, s)]
    assert not wrong, "\n".join(wrong)


def _scored_alone(graded: Graded, student: str, lesson: str) -> Submission:
    """The one submission of ``student`` (the test is skipped when ``lesson`` is not graded in this run), checked
    to lose no points outside its own broken cell."""
    if lesson not in LESSONS:
        pytest.skip(f"lesson {lesson[:2]} is not graded in this run (DDPM_NBGRADER_LESSONS)")
    (sub,) = _subs(graded, student)
    wrong = _wrong_cells(graded, sub)
    assert not wrong, "\n".join(wrong)
    return sub


def test_raising_submission_is_scored(graded: Graded) -> None:
    sub = _scored_alone(graded, "raises", "02_forward_diffusion")
    out = _check_cell_output(graded.autograded(sub), "check_predict_x0")
    assert "define `predict_x0` first" in out, out


def test_looping_submission_is_stopped_and_scored(graded: Graded) -> None:
    sub = _scored_alone(graded, "loops", "01_noise_schedule")
    cell = solution_cell(graded.autograded(sub), "linear_beta_schedule")
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert errors and errors[0].ename in ("CellTimeoutError", "KeyboardInterrupt"), cell.outputs


def test_feedback_hides_hidden_tests(graded: Graded) -> None:
    """Feedback pages show neither the hidden tests' code nor what they printed, only their score."""
    hidden_names = {f.__name__.removeprefix("test_") for f in _hidden_check_functions()}
    for sub in graded.submissions:
        page = html.unescape(graded.feedback(sub))
        assert "BEGIN HIDDEN TESTS" not in page and "hidden=True" not in page, f"{sub.student}/{sub.lesson}"
        leaked = sorted(n for n in hidden_names if re.search(rf"\b{n}\b", page))
        assert not leaked, f"{sub.student}/{sub.lesson} feedback shows hidden checks {leaked}"
        if any(nbgrader_meta(c).get("grade_id", "").endswith("_hidden") for c in sub.nb.cells):
            assert "Hidden checks" in page, f"{sub.student}/{sub.lesson}: hidden cells show no score line"


def test_feedback_runs_no_script_from_a_submission(graded: Graded) -> None:
    """What a notebook displays as HTML or JavaScript (``cheat_script_in_feedback``) reaches the feedback pages
    escaped or not at all: no script of a submission runs in a student's or an instructor's browser."""
    pages = {f"{s.student}/{s.lesson}": graded.feedback(s) for s in graded.submissions}
    assert any("DDPM_INJECTED" in page for page in pages.values()) or "06_reconstruction" not in LESSONS
    for name, page in pages.items():
        live = live_script(page, "DDPM_INJECTED")
        assert not live, f"{name}: {live[:2]}"


def test_tracebacks_are_short(graded: Graded) -> None:
    """A failing check cell shows one line of error, not a traceback through the harness."""
    for sub in graded.submissions:
        for cell in graded.autograded(sub).cells:
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    assert len(out.get("traceback", [])) <= 17, f"{sub.student}/{sub.lesson} {cell.get('id')}"


def _hidden_check_functions():
    from tests.harness import REGISTRY, load_all_checks

    load_all_checks()
    return [f for fns in REGISTRY.values() for f in fns if getattr(f, "hidden", False)]


def test_notebook_deadline_skips_the_rest(tmp_path: Path) -> None:
    """nbgrader_config.CourseExecute: past the per-notebook deadline, remaining cells are not run (score 0)."""
    from nbformat.v4 import new_code_cell, new_notebook

    namespace: dict = {"get_config": lambda: _AnyConfig(), "__file__": str(ROOT / "nbgrader_config.py")}
    exec(compile((ROOT / "nbgrader_config.py").read_text(), "nbgrader_config.py", "exec"), namespace)
    nb = new_notebook(cells=[new_code_cell("import time\ntime.sleep(30)"), new_code_cell("print('ran')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    ex = namespace["CourseExecute"](notebook_timeout=3, timeout=60)
    start = time.perf_counter()
    ex.preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    assert time.perf_counter() - start < 25
    assert nb.cells[0].outputs[-1].output_type == "error"  # interrupted at the deadline
    assert nb.cells[1].outputs[0].ename == "NotebookTimeoutError"  # not run at all


class _AnyConfig:
    """Accepts ``c.Section.option = value`` like traitlets' Config (for loading nbgrader_config.py in a test)."""

    def __getattr__(self, name: str) -> _AnyConfig:
        value = _AnyConfig()
        object.__setattr__(self, name, value)
        return value


def feedback_outputs(page: str) -> str:
    """The text of every cell output on a feedback page (nbgrader's feedback template), without the cells' code."""
    parts = re.findall(r'<div class="output_subarea[^"]*">(.*?)</div>', page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", "\n".join(parts)))
