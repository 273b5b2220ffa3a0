"""The course's notebooks: ``lessons/`` is what ``solutions/`` generates, and every notebook follows the conventions.

Fast (no notebook is executed): one in-process ``nbgrader generate_assignment`` per lesson into a temporary
folder, then static checks of the cells' metadata, sources and names against ``tests/harness.py``'s registry.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import nbformat
import pytest

import ddpm_ref
from tests._course import ROOT, SOLUTIONS, load_release
from tests.harness import EXERCISES, REGISTRY, load_all_checks
from tests.mistakes import MISTAKES

LESSONS_DIR = ROOT / "lessons"

#: the lessons of the course and their exercises, in order (course conventions)
COURSE: dict[str, tuple[str, ...]] = {
    "01_noise_schedule": ("linear_beta_schedule", "cosine_beta_schedule", "NoiseSchedule"),
    "02_forward_diffusion": ("q_sample", "predict_x0", "q_posterior"),
    "03_unet": ("SinusoidalTimeEmbedding", "ResBlock", "SelfAttention", "UNet"),
    "04_training": ("ddpm_loss", "train_step"),
    "05_sampling": ("p_sample", "sample"),
    "06_reconstruction": ("reconstruct", "psnr", "ssim"),
    "07_ddim": ("ddim_step", "ddim_sample"),
    "08_guidance": ("LabelEmbedding", "drop_labels", "guided_eps", "cfg_sample"),
    "09_flow_matching": ("flow_matching_loss", "euler_sample", "heun_sample"),
    "10_score_sde": ("score_from_eps", "dsm_loss", "langevin_sample", "reverse_sde_sample", "probability_flow_sample"),
    "11_latent_dit": ("reparameterize", "kl_divergence", "latent_scale_factor", "patchify", "DiTBlock"),
    "12_few_steps": ("karras_heun_step", "dpm_solver_pp_2m_step"),
}

SETUP = """%matplotlib inline
import os
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle CPU threads sleep, not spin
import math
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import matplotlib.pyplot as plt
from ddpm_ref.course import FAST, run_checks, setup   # FAST is True while nbgrader grades
setup()   # seeds torch, picks CPU threads for the machine's load; Run All goes on past unfinished exercises"""

#: the check cells' two-line form re-imports the runner (a student's cell cannot rebind it)

#: every check cell imports the runner afresh, so a student's cell that rebinds `run_checks` changes nothing
RUNNER_IMPORT = "from ddpm_ref.course import run_checks"

release = load_release()
PRESENT = release.lesson_ids()


def read(lesson: str, folder: Path = SOLUTIONS) -> nbformat.NotebookNode:
    return nbformat.read(folder / lesson / f"{lesson}.ipynb", as_version=4)


def meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def bound_names(source: str) -> set[str]:
    """Names a cell binds at its top level: def, class, assignment targets and imports (magics dropped)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    tree = ast.parse(code)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def parameters(source: str, name: str) -> list[tuple[str, str, bool]]:
    """(name, kind, has default) of the top-level def ``name`` (or of ``name.__init__`` for a class), self dropped."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            inits = [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
            assert inits, f"class {name} has no __init__"
            fn = inits[0]
            break
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            fn = node
            break
    else:
        raise AssertionError(f"the solution cell does not define `{name}` at its top level")
    a = fn.args
    pos = a.posonlyargs + a.args
    defaults = [False] * (len(pos) - len(a.defaults)) + [True] * len(a.defaults)
    out = [(p.arg, "positional", d) for p, d in zip(pos, defaults, strict=True)]
    out += [(p.arg, "keyword", d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    return [p for p in out if p[0] != "self"]


def reference_parameters(name: str) -> list[tuple[str, str, bool]]:
    obj = getattr(ddpm_ref, name)
    sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    kinds = {inspect.Parameter.KEYWORD_ONLY: "keyword"}
    return [(p.name, kinds.get(p.kind, "positional"), p.default is not inspect.Parameter.empty)
            for p in sig.parameters.values() if p.name != "self"]


def same_signature(mine: list[tuple[str, str, bool]], ref: list[tuple[str, str, bool]]) -> bool:
    """Same positional parameters; keyword-only ones the same in order, except that optional ones
    (with defaults) that a lesson leaves out (e.g. ``train_step``'s mixed-precision options) may be omitted."""
    pos_mine = [p for p in mine if p[1] == "positional"]
    pos_ref = [p for p in ref if p[1] == "positional"]
    kw_mine = [p for p in mine if p[1] == "keyword"]
    kw_ref = [p for p in ref if p[1] == "keyword"]
    kept = [p for p in kw_ref if p in kw_mine or not p[2]]
    return pos_mine == pos_ref and kw_mine == kept



@pytest.fixture(scope="module", autouse=True)
def _not_with_impl(request: pytest.FixtureRequest) -> None:
    """These tests are about the repository's notebooks: ``pytest tests --impl NOTEBOOK`` leaves them out."""
    if request.config.getoption("--impl", default=None):
        pytest.skip("checks the course's own notebooks; not run with --impl")


# ------------------------------------------------------------------------------------------------ sync


def test_every_lesson_has_its_solution_notebook() -> None:
    assert PRESENT == list(COURSE), f"solutions/ holds {PRESENT}; the course is {list(COURSE)}"


def test_solutions_are_stored_without_outputs() -> None:
    bad = release.unnormalized_solutions(PRESENT)
    assert not bad, ("source notebooks with outputs, execution counts or volatile metadata: "
                     f"{bad}; run `python solutions/release.py --clean-solutions`")


def test_lessons_are_what_the_solutions_generate() -> None:
    problems = release.check(PRESENT)
    assert not problems, "lessons/ drifted from solutions/; run `python solutions/release.py`:\n" + "\n".join(problems)


def test_release_hides_every_solution() -> None:
    for lesson in PRESENT:
        nb = read(lesson, LESSONS_DIR)
        for cell in nb.cells:
            src = cell.source
            assert "BEGIN SOLUTION" not in src and "BEGIN HIDDEN TESTS" not in src, f"{lesson}: {cell.get('id')}"
            if meta(cell).get("solution"):
                assert "raise NotImplementedError()" in src, f"{lesson}: exercise {meta(cell)['grade_id']} has no stub"


# ------------------------------------------------------------------------------------------------ conventions


@pytest.mark.parametrize("lesson", list(COURSE))
def test_notebook_follows_the_conventions(lesson: str) -> None:
    if lesson not in PRESENT:
        pytest.fail(f"solutions/{lesson}/{lesson}.ipynb is missing")
    nb = read(lesson)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{lesson}: kernelspec must be python3"
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# "), f"{lesson}: open with a # title"
    code = [c for c in cells if c.cell_type == "code"]
    assert code and code[0].source == SETUP and "setup" in code[0].metadata.get("tags", []), (
        f"{lesson}: the first code cell must be the setup cell (tag `setup`, the shared source, unchanged)")
    assert sum("setup" in c.metadata.get("tags", []) for c in cells) == 1, f"{lesson}: one setup cell"

    grade_ids = [meta(c)["grade_id"] for c in cells if meta(c)]
    assert len(grade_ids) == len(set(grade_ids)), f"{lesson}: duplicate grade_ids"
    found: list[str] = []
    for i, cell in enumerate(cells):
        m = meta(cell)
        if not m:
            continue
        assert cell.cell_type == "code", f"{lesson}: nbgrader cell {m.get('grade_id')} must be a code cell"
        if m.get("solution"):
            name = m["grade_id"]
            found.append(name)
            assert m == {"solution": True, "grade": False, "grade_id": name, "locked": False, "schema_version": 3}, (
                f"{lesson}: metadata of exercise {name}: {m}")
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source, f"{lesson}: {name}"
            assert same_signature(parameters(cell.source, name), reference_parameters(name)), (
                f"{lesson}: {name} must have ddpm_ref's signature {reference_parameters(name)}, "
                f"has {parameters(cell.source, name)}")
            nxt = cells[i + 1]
            assert meta(nxt) == {"grade": True, "solution": False, "locked": True, "grade_id": f"check_{name}",
                                 "points": meta(nxt).get("points"), "schema_version": 3}, (
                f"{lesson}: the cell after exercise {name} must be its check cell, got {meta(nxt)}")
            assert nxt.source == f'{RUNNER_IMPORT}\nrun_checks("{name}", globals())', (
                f"{lesson}: check_{name} source: {nxt.source!r}")
            assert isinstance(meta(nxt)["points"], (int, float)) and meta(nxt)["points"] > 0, f"check_{name} points"
            hidden = cells[i + 2] if i + 2 < len(cells) else None
            if hidden is not None and meta(hidden).get("grade_id") == f"check_{name}_hidden":
                assert meta(hidden) == {"grade": True, "solution": False, "locked": True,
                                        "grade_id": f"check_{name}_hidden", "points": meta(hidden)["points"],
                                        "schema_version": 3}, f"{lesson}: check_{name}_hidden metadata"
                assert hidden.source == (f'### BEGIN HIDDEN TESTS\n{RUNNER_IMPORT}\n'
                                         f'run_checks("{name}", globals(), hidden=True)\n### END HIDDEN TESTS'), (
                    f"{lesson}: check_{name}_hidden source")
                assert meta(hidden)["points"] > 0
        elif m.get("grade"):
            gid = m["grade_id"]
            assert re.fullmatch(r"check_\w+", gid), f"{lesson}: grade cell {gid} is not a check cell"
            prev = meta(cells[i - 1]).get("grade_id")
            assert prev in (gid.removeprefix("check_"), gid.removesuffix("_hidden")), (
                f"{lesson}: {gid} does not follow its exercise")
        else:
            pytest.fail(f"{lesson}: nbgrader cell {m} is neither an exercise nor a check")
    assert found == list(COURSE[lesson]), f"{lesson}: exercises {found}, expected {list(COURSE[lesson])} in order"


@pytest.mark.parametrize("lesson", list(COURSE))
def test_nothing_else_binds_an_exercise_name(lesson: str) -> None:
    """Only the exercise's own cell binds its name: a later definition or import would hide the student's work
    (and break the mistake injection, which appends to that cell)."""
    if lesson not in PRESENT:
        pytest.fail(f"solutions/{lesson}/{lesson}.ipynb is missing")
    nb = read(lesson)
    names = set(COURSE[lesson])
    for cell in nb.cells:
        if cell.cell_type != "code" or meta(cell).get("solution"):
            continue
        clash = bound_names(cell.source) & names
        assert not clash, f"{lesson}: cell {cell.get('id')} binds the exercise name(s) {sorted(clash)}"


def test_every_exercise_has_registered_checks() -> None:
    load_all_checks()
    assert set(EXERCISES) == {e for ex in COURSE.values() for e in ex}
    missing = [e for e in EXERCISES if not [f for f in REGISTRY.get(e, []) if not getattr(f, "hidden", False)]]
    assert not missing, f"no visible checks registered for {missing}"
    for lesson in PRESENT:
        for cell in read(lesson).cells:
            gid = meta(cell).get("grade_id", "")
            if gid.endswith("_hidden"):
                name = gid.removeprefix("check_").removesuffix("_hidden")
                assert [f for f in REGISTRY.get(name, []) if getattr(f, "hidden", False)], (
                    f"{lesson}: {gid} runs hidden checks, but none are registered for {name}")


def test_every_mistake_belongs_to_an_exercise_of_the_course() -> None:
    exercises = {e for ex in COURSE.values() for e in ex}
    assert {m.exercise for m in MISTAKES} <= exercises
    assert len(MISTAKES) >= 12


def test_guides_exist() -> None:
    students = (LESSONS_DIR / "README.md").read_text(encoding="utf-8")
    for phrase in ("pip install -e", "pytest tests --impl", "run_checks", "01_noise_schedule"):
        assert phrase in students, f"lessons/README.md should mention {phrase!r}"
    instructors = (SOLUTIONS / "README.md").read_text(encoding="utf-8")
    for phrase in ("python solutions/release.py", "nbgrader autograde", "nbgrader generate_feedback",
                   "nbgrader export", "tests/mistakes.py", "hidden=True"):
        assert phrase in instructors, f"solutions/README.md should mention {phrase!r}"


#: the outcome checks (module, check) and the lessons whose text quotes their figures
OUTCOMES = {("tests.test_loss", "test_train_step_trains_a_model"): ("04_training", "05_sampling"),
            ("tests.test_dit", "test_DiTBlock_trains_a_latent_diffusion_model"): ("11_latent_dit",)}


@pytest.mark.parametrize(("module", "check"), list(OUTCOMES), ids=lambda v: v.split(".")[-1])
def test_the_outcome_figures_quoted_are_the_measured_ones(module: str, check: str) -> None:
    """The lessons and the instructors' guide quote each outcome check's scores from its ``OUTCOME_MEASURED`` (which
    data_scripts/outcome_calibration.py measures), so a recalibration cannot leave a stale figure behind."""
    from tests.harness import check_name
    from tests.test_loss import quoted_range

    mod = importlib.import_module(module)
    assert check_name(getattr(mod, check)) == mod.OUTCOME_CHECK
    measured = mod.OUTCOME_MEASURED
    texts = {f"lesson {int(lesson[:2])}'s text": "\n".join(c.source for c in read(lesson).cells
                                                          if c.cell_type == "markdown")
             for lesson in OUTCOMES[module, check]}
    texts["solutions/README.md"] = (SOLUTIONS / "README.md").read_text(encoding="utf-8")
    for where, text in texts.items():
        phrases = [quoted_range("correct", measured), quoted_range("untrained", measured),
                   f"pass mark is {mod.OUTCOME_PASS:.0f}"]
        if where == "solutions/README.md":
            phrases.append(f"typical mistakes {quoted_range('mistakes', measured)}")
        for phrase in phrases:
            assert phrase in text, f"{where} should quote {phrase!r} ({module} OUTCOME_MEASURED)"


# ------------------------------------------------------------------------------------------------ as JupyterLab saves


@pytest.mark.parametrize("folder", ["solutions", "lessons"])
def test_notebooks_are_stored_as_jupyterlab_saves_them(folder: str) -> None:
    """JupyterLab 4 writes what ipykernel reports (kernelspec display name, full language_info) and then the
    notebook through nbformat (indent 1, sorted keys, non-ASCII as is, a final newline); a notebook stored
    otherwise shows as modified the moment it is opened. tests/test_browser.py saves one from JupyterLab."""
    for lesson in PRESENT:
        path = ROOT / folder / lesson / f"{lesson}.ipynb"
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=4)
        assert (nb.nbformat, nb.nbformat_minor) == (4, 5), f"{path}: nbformat {nb.nbformat}.{nb.nbformat_minor}"
        assert nb.metadata == {"kernelspec": release.KERNELSPEC, "language_info": release.LANGUAGE_INFO}, path
        assert text == nbformat.writes(nb, version=4) + "\n", f"{path}: not written as nbformat writes it"
        assert '\n "cells": [\n  {\n' in text and "Lesson" in text and "—" in text, f"{path}: indent 1, UTF-8 as is"


def test_released_lessons_open_with_badges_and_the_start_cell() -> None:
    for lesson in PRESENT:
        cells = read(lesson, LESSONS_DIR).cells
        badges, start, title = cells[0], cells[1], cells[2]
        assert badges.cell_type == "markdown" and "Open in Colab" in badges.source and "Open in Kaggle" in badges.source
        url = f"{release.REPOSITORY.removeprefix('https://github.com/')}/blob/{release.BRANCH}/lessons/{lesson}/{lesson}.ipynb"
        assert f"https://colab.research.google.com/github/{url}" in badges.source, lesson
        assert f"https://kaggle.com/kernels/welcome?src=https://github.com/{url}" in badges.source, lesson
        assert start.cell_type == "code" and start.metadata.get("tags") == ["start"], lesson
        assert f'os.environ.get("DDPM_COURSE_REPO", "{release.REPOSITORY}")' in start.source, lesson
        assert title.source.startswith("# "), lesson
        assert "setup" in cells[3].metadata.get("tags", []), f"{lesson}: the setup cell follows the start cell"
