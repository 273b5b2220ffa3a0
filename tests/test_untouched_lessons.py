"""*Run All* on a lesson a student has not touched yet reaches the end: every cell that needs an unfinished exercise
says so in one line (``finish the exercise … first``), and no cell fails on what such a cell left half made (an
empty list of losses, a table without its rows). A lesson never runs on the reference where the student's piece is
missing: lesson 8 with only ``LabelEmbedding`` unfinished trains nothing (it would otherwise train the reference's
embedding for the whole training cell).

Each released notebook runs headless (:mod:`ddpm_ref.headless`) in a copy of its folder, with ``DDPM_FAST=1`` (the
unfinished exercises stop every heavy cell at once anyway). Marked ``slow`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from ddpm_ref.headless import execute_notebook
from tests._course import ROOT, SOLUTIONS, load_release

pytestmark = pytest.mark.slow

LESSONS = load_release().lesson_ids()

UNFINISHED = "finish the exercise"


def _is_check_cell(cell: nbformat.NotebookNode) -> bool:
    return "run_checks(" in cell.source


def _run(nb: nbformat.NotebookNode, folder: Path, tmp_path: Path, lesson: str) -> nbformat.NotebookNode:
    """``nb`` executed as *Run All* runs it (it stops at the first cell whose error is not handled)."""
    work = tmp_path / lesson
    shutil.copytree(folder, work, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    env = {k: v for k, v in os.environ.items() if k not in ("NBGRADER_EXECUTION", "MPLBACKEND")}
    execute_notebook(nb, label=f"{lesson} (untouched)", cwd=work, timeout=300, env={**env, "DDPM_FAST": "1"})
    return nb


def _printed(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.parametrize("lesson", LESSONS)
def test_run_all_on_an_untouched_lesson_reaches_the_end(lesson: str, tmp_path: Path) -> None:
    folder = ROOT / "lessons" / lesson
    nb = _run(nbformat.read(folder / f"{lesson}.ipynb", as_version=4), folder, tmp_path, lesson)
    failed = [f"cell {i} ({cell.source.splitlines()[0][:60]!r}): {o['ename']}: {o['evalue'][:200]}"
              for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and not _is_check_cell(cell)
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not failed, f"{lesson}: cells that a student never wrote fail:\n" + "\n".join(failed)
    told = [c for c in nb.cells if c.cell_type == "code" and UNFINISHED in _printed(c)]
    assert told, f"{lesson}: no cell said which exercise to finish"
    for cell in told:  # one line, and nothing drawn
        assert _printed(cell).strip().count("\n") == 0, _printed(cell)
        assert not [o for o in cell.get("outputs", []) if o.get("output_type") == "display_data"], cell.source[:80]


def test_a_lesson_never_trains_the_reference_in_place_of_a_missing_piece(tmp_path: Path) -> None:
    """Lesson 8's solution with ``LabelEmbedding`` put back to its stub: the model is not built, so the training
    cell and every cell that uses the model or its losses say which exercise to finish instead of running."""
    lesson = "08_guidance"
    solution = nbformat.read(SOLUTIONS / lesson / f"{lesson}.ipynb", as_version=4)
    release = nbformat.read(ROOT / "lessons" / lesson / f"{lesson}.ipynb", as_version=4)

    def answer(nb: nbformat.NotebookNode, exercise: str) -> nbformat.NotebookNode:
        (cell,) = [c for c in nb.cells if (c.metadata.get("nbgrader") or {}).get("solution")
                   and c.metadata["nbgrader"].get("grade_id") == exercise]
        return cell

    nb = copy.deepcopy(solution)
    answer(nb, "LabelEmbedding").source = answer(release, "LabelEmbedding").source
    nb.cells = [c for c in nb.cells if "BEGIN HIDDEN TESTS" not in c.source]
    nb = _run(nb, ROOT / "lessons" / lesson, tmp_path, lesson)
    training = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("STEPS = ")]
    assert training, "lesson 8's training cell (STEPS = …) is there"
    for cell in training:
        assert UNFINISHED in _printed(cell) and "LabelEmbedding" in _printed(cell), _printed(cell)[:300]
    failed = [o["evalue"][:200] for c in nb.cells if c.cell_type == "code" and not _is_check_cell(c)
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not failed, failed
