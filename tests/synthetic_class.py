"""A synthetic class for lesson 1, graded by the class tests (``tests/test_grading_class.py``) and the class-grading
benchmark (``python -m ddpm_ref.grading.bench``).

Every kind of submission an instructor meets: the solution, a blank (the release), correct variants written
differently, typical mistakes from ``tests/mistakes.py`` (some made by two students), cheats that the judge
refuses (the reference imported or called), a trick that only disables checks (it scores what its code is worth),
the reference pasted in by hand (full marks: the similarity flag is where an instructor sees it), a notebook that
loops and one that kills its kernel. Each :class:`Planted` says what its student did.
"""

from __future__ import annotations

import ast
import copy
import inspect
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from tests._course import ROOT, SOLUTIONS, load_release
from tests.mistakes import ALTERNATIVES, CHEATS, MISTAKES, Mistake, hidden_checks

LESSON = "01_noise_schedule"


@dataclass
class Planted:
    """One student's submission and what it holds."""

    student: str
    mistakes: list[Mistake] = field(default_factory=list)
    cheat: str = ""  # the finding's reason for a cheat the judge refuses ("reference is", "reference calls")
    pasted: str = ""  # the exercise whose reference was pasted in by hand
    honest: bool = True  # written by the student (no cheat, no paste)
    edits: dict[str, str] = field(default_factory=dict)  # exercise → the answer cell's new source
    broken: bool = False  # its edit loops or kills the kernel: nothing of it can score

    def expected(self, points: dict[str, float]) -> dict[str, float]:
        """What each check cell (grade_id → its points) must score: full marks on an exercise whose code is right
        (the solution, a variant, the pasted reference), nothing on one left unfinished, cheated or broken by a
        loop or a crash; for a planted mistake, the points of its exercise's check cells that it does not break."""
        if self.student == "ada":
            return dict(points)
        right = {x for x in self.edits if self.honest and not self.broken} | ({self.pasted} - {""})
        score = {cell: v if any(cell in (f"check_{x}", f"check_{x}_hidden") for x in right) else 0.0
                 for cell, v in points.items()}
        for m in self.mistakes:
            if m in CHEATS:  # a trick on an unfinished exercise: nothing to score
                continue
            hidden = hidden_checks(m)
            if not set(m.breaks) - hidden:
                score[f"check_{m.exercise}"] = points[f"check_{m.exercise}"]
            if not hidden and f"check_{m.exercise}_hidden" in points:
                score[f"check_{m.exercise}_hidden"] = points[f"check_{m.exercise}_hidden"]
        return score


def _meta(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def answer_cell(nb: nbformat.NotebookNode, exercise: str) -> nbformat.NotebookNode:
    (cell,) = [c for c in nb.cells if _meta(c).get("solution") and _meta(c).get("grade_id") == exercise]
    return cell


def pasted_reference(exercise: str) -> str:
    """``ddpm_ref``'s own ``exercise`` as a student would paste it: docstrings and type hints dropped, every
    argument and local variable renamed, laid out again."""
    import ddpm_ref

    tree = ast.parse(inspect.getsource(getattr(ddpm_ref, exercise)))
    names: dict[str, str] = {}

    class Disguise(ast.NodeTransformer):
        def visit_arg(self, node: ast.arg) -> ast.arg:
            node.annotation = None
            if node.arg not in ("self", "cls"):
                node.arg = names.setdefault(node.arg, f"v{len(names)}")
            return node

        def visit_Name(self, node: ast.Name) -> ast.Name:
            if isinstance(node.ctx, ast.Store) or node.id in names:
                node.id = names.setdefault(node.id, f"v{len(names)}")
            return node

        def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
            node.returns = None
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                node.body = body[1:] or [ast.Pass()]
            self.generic_visit(node)
            return node

        def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                node.body = body[1:]
            self.generic_visit(node)
            return node

    return ast.unparse(ast.fix_missing_locations(Disguise().visit(tree))) + "\n"


def _by_exercise(items: list, exercise: str) -> list:
    return [m for m in items if m.exercise == exercise]


def plan() -> list[Planted]:
    """The class: 13 students of lesson 1."""
    mistakes = {x: _by_exercise(MISTAKES, x) for x in ("linear_beta_schedule", "cosine_beta_schedule", "NoiseSchedule")}
    lin, cos, sched = mistakes["linear_beta_schedule"], mistakes["cosine_beta_schedule"], mistakes["NoiseSchedule"]
    students = [
        Planted("ada"),  # the solution
        Planted("blank"),  # the release as it was handed out
        Planted("grace", edits={a.exercise: a.source for a in ALTERNATIVES if a.exercise in mistakes}),
        Planted("m1", mistakes=[lin[0], cos[0], sched[0]]),
        Planted("m2", mistakes=[lin[1], sched[1]]),
        Planted("m3", mistakes=[sched[2]]),
        Planted("m4", mistakes=[lin[0], sched[3]]),
        Planted("m5", mistakes=[sched[0]]),
        Planted("copier", cheat="reference is", honest=False,
                edits={"linear_beta_schedule": "from ddpm_ref import linear_beta_schedule\n"}),
        Planted("caller", cheat="reference subclasses", honest=False, edits={"NoiseSchedule": (
            "import ddpm_ref\n\n\nclass NoiseSchedule(ddpm_ref.NoiseSchedule):\n    pass\n")}),
        Planted("trickster", mistakes=[_by_exercise(CHEATS, "linear_beta_schedule")[0]]),
        Planted("paster", pasted="NoiseSchedule", honest=False, edits={"NoiseSchedule": (
            "from ddpm_ref.schedule import as_timesteps, make_betas\n\n\n" + pasted_reference("NoiseSchedule"))}),
        Planted("looper", edits={"cosine_beta_schedule": "while True:  # never ends\n    pass\n"}, broken=True),
        Planted("crasher", edits={"linear_beta_schedule": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"},
                broken=True),
    ]
    return students


def notebook(planted: Planted, release: Path) -> nbformat.NotebookNode:
    """The notebook ``planted.student`` hands in (``release``: the lessons folder of the course): the solution for
    ada, else the released notebook with this student's answers (an exercise nobody planted stays unfinished)."""
    source = SOLUTIONS if planted.student == "ada" else release
    nb = copy.deepcopy(nbformat.read(source / LESSON / f"{LESSON}.ipynb", as_version=4))
    for m in planted.mistakes:
        cell = answer_cell(nb, m.exercise)
        cell.source = cell.source.rstrip() + "\n\n\n" + m.source
    for exercise, source in planted.edits.items():
        answer_cell(nb, exercise).source = source
    return nb


def build(dest: Path, only: set[str] | None = None) -> tuple[Path, list[Planted]]:
    """A course folder at ``dest`` with lesson 1 released and the class's submissions in ``submitted/`` (``only``:
    just these students)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "nbgrader_config.py", dest / "nbgrader_config.py")
    shutil.copytree(SOLUTIONS / LESSON, dest / "solutions" / LESSON,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    load_release().generate(dest, [LESSON])
    students = [p for p in plan() if only is None or p.student in only]
    for planted in students:
        folder = dest / "submitted" / planted.student / LESSON
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook(planted, dest / "lessons"), folder / f"{LESSON}.ipynb")
    return dest, students
