"""nbgrader configuration of the course (nbgrader 0.9).

The course directory is the folder of this file (the repository root): source notebooks in ``solutions/``,
released student notebooks in ``lessons/``, and the grading folders ``submitted/``, ``autograded/`` and
``feedback/`` next to them (git-ignored, like ``gradebook.db``). See ``solutions/README.md``.
"""

import math
import os
import sys
import time

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbformat.v4 import new_output
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearHiddenTests,
    Execute,
    GetGrades,
    IgnorePattern,
    LimitOutput,
    NbGraderPreprocessor,
    SaveAutoGrades,
)
from traitlets import Bool, Integer

from ddpm_ref.course import course_root
from ddpm_ref.headless import RobustExecution

sys.path.insert(0, str(course_root()))  # the judge and the checks live in the repository's tests/
from tests.judge.nbgrader import (  # noqa: E402
    JudgeChecks,
    SandboxedKernelManager,
    SanitizeMarkdown,
    StartJudging,
    prepare,
)

#: seconds one cell may run while grading: the FAST training and sampling cells take well under a minute
CELL_TIMEOUT_S = 60
#: seconds one notebook may run in all: later cells of a notebook over budget are scored 0 without running
NOTEBOOK_TIMEOUT_S = 360
#: characters of output one cell may show; what it prints beyond is dropped (a notice says so)
CELL_OUTPUT_CHARS = 200_000


class CourseExecute(RobustExecution, Execute):
    """nbgrader's Execute with a per-notebook deadline on top of the per-cell timeout, and stall recovery.

    A submission that loops is interrupted after ``timeout`` seconds in that cell; once the notebook has run
    ``notebook_timeout`` seconds, the remaining code cells are not run and get an error (score 0). A cell the
    kernel finished but whose reply was lost is not timed out (a 0 for a cell that passed): the reply is rebuilt
    from what the cell published, without running it again (:mod:`ddpm_ref.headless`).
    """

    notebook_timeout = Integer(
        NOTEBOOK_TIMEOUT_S, help="seconds one notebook may run in all before its remaining cells are skipped"
    ).tag(config=True)
    output_chars = Integer(CELL_OUTPUT_CHARS, help="characters of output kept per cell").tag(config=True)
    sandboxed = Bool(True, help="run the kernel in the sandbox (tests/judge/sandbox.py)").tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.sandboxed:
            prepare()
            self.kernel_manager_class = SandboxedKernelManager

    def preprocess(self, nb, resources=None, km=None):
        self._deadline = time.monotonic() + self.notebook_timeout
        self._dead = None
        ids = (resources or {}).get("nbgrader") or {}
        self.label = "/".join(str(ids[k]) for k in ("student", "assignment", "notebook") if ids.get(k)) or "notebook"
        return super().preprocess(nb, resources, km)

    def output(self, outs, msg, display_id, cell_index):
        """Keep at most ``output_chars`` characters of a cell's output (a submission may print gigabytes)."""
        sizes = self.__dict__.setdefault("_sizes", {})
        content = msg.get("content", {})
        sizes[cell_index] = sizes.get(cell_index, 0) + len(str(content.get("text", ""))) + len(
            str(content.get("data", ""))) + len(str(content.get("traceback", "")))
        if sizes[cell_index] <= self.output_chars:
            return super().output(outs, msg, display_id, cell_index)
        if sizes.get(("cut", cell_index)) is None:
            sizes[("cut", cell_index)] = True
            outs.append(new_output("stream", name="stderr",
                                   text=f"\n[output cut at {self.output_chars} characters]\n"))
        return None

    def _get_timeout(self, cell):
        cell_timeout = super()._get_timeout(cell)
        left = max(1, math.ceil(getattr(self, "_deadline", math.inf) - time.monotonic()))
        return left if cell_timeout is None else min(cell_timeout, left)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and time.monotonic() >= getattr(self, "_deadline", math.inf):
            message = f"not run: the notebook used up its {self.notebook_timeout} s (is there an endless loop?)"
            cell.outputs = [new_output("error", ename="NotebookTimeoutError", evalue=message,
                                       traceback=[f"NotebookTimeoutError: {message}"])]
            return cell, resources
        if cell.cell_type == "code" and getattr(self, "_dead", None):
            cell.outputs = [new_output("error", ename="DeadKernelError", evalue=self._dead,
                                       traceback=[f"DeadKernelError: {self._dead}"])]
            return cell, resources
        try:
            return super().preprocess_cell(cell, resources, index)
        except Exception as e:  # a dead, hung or garbled kernel ends this notebook's run, never the batch
            if not isinstance(e, DeadKernelError):  # stop what is left of it
                kill = getattr(self.km, "kill_tree", None)
                if kill is not None:
                    kill()
            if isinstance(e, CellTimeoutError):
                what = "ran past its time and ignored the interrupt, so the kernel was stopped"
            elif isinstance(e, DeadKernelError):
                what = "ended the kernel (an exit call, a signal, or out of memory?)"
            else:
                what = f"broke the kernel's connection ({type(e).__name__}: {str(e)[:200]}), so it was stopped"
            self._dead = f"not run: an earlier cell {what}"
            cell.outputs.append(new_output("error", ename=type(e).__name__, evalue=f"this cell {what}",
                                           traceback=[f"{type(e).__name__}: this cell {what}"]))
            return cell, resources


class HideHiddenTestOutput(NbGraderPreprocessor):
    """In feedback, replace what a hidden test cell printed by one line with its score (the details stay hidden)."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and "BEGIN HIDDEN TESTS" in cell.source:
            meta = cell.metadata.get("nbgrader", {})
            score, points = meta.get("score"), meta.get("points")
            verdict = "passed" if score is not None and points is not None and score >= points else "not passed"
            cell.outputs = [new_output("stream", name="stdout",
                                       text=f"Hidden checks {verdict} ({score:g} of {points:g} points).\n"
                                       if score is not None and points is not None
                                       else f"Hidden checks {verdict}.\n")]
        return cell, resources


c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "ddpm-course"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "lessons"
# only notebooks and data belong to an assignment (no caches, no checkpoints)
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".DS_Store"]

c.Execute.timeout = CELL_TIMEOUT_S
c.Execute.interrupt_on_timeout = True
c.Autograde.autograde_preprocessors = [
    StartJudging,  # the judge works on the submitted cells while the kernel runs them
    CourseExecute,
    JudgeChecks,  # the check cells' scores: the judge's verdicts, computed outside the kernel
    SanitizeMarkdown,  # no script from a submission's markdown reaches a browser
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]

# feedback and autograded notebooks: no endless outputs, short tracebacks
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 16

# every page nbgrader renders (feedback, the Formgrader's view of a submission): a submission's HTML and markdown are
# sanitized, so a notebook cannot run script in a student's or an instructor's browser (and act on the gradebook)
c.HTMLExporter.sanitize_html = True

# feedback: the hidden tests' code and output are not shown, only their score
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTestOutput, ClearHiddenTests, CSSHTMLHeaderPreprocessor]
