"""nbgrader's side of the judge: a sandboxed kernel, and the preprocessor that scores the check cells.

``nbgrader_config.py`` puts both in place:

* :class:`SandboxedKernelManager` runs each submission's kernel in the sandbox (:mod:`tests.judge.sandbox`): it
  sees the Python installation and ``ddpm_ref`` read-only and a private copy of the submission's folder, talks
  to nbgrader over Unix sockets (it has no network), and cannot see the course, the other submissions or the
  gradebook. Its check cells print one line and check nothing (``DDPM_JUDGED``): they are scored below.
* :class:`StartJudging` starts the judge (:func:`tests.judge.judge_notebook`) on the submitted cells, beside the
  kernel's run; :class:`JudgeChecks`, after the notebook ran, replaces the outputs of every check cell with its
  verdicts, computed outside the kernel. nbgrader then scores each cell, as
  always, by whether its outputs hold an error.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from nbconvert.preprocessors.sanitize import SanitizeHTML
from nbformat.v4 import new_output
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, Integer

from ddpm_ref.grading.records import FINDINGS_MIME
from tests.judge import check_cells, judge_notebook, plan, sandbox, scratch
from tests.judge.remote import LIB, WORK

#: the environment variable that tells the lessons' check cells that the judge scores them
JUDGED_ENV = "DDPM_JUDGED"


def kernel_threads() -> int:
    """torch threads of a student's kernel: the grader's own ``OMP_NUM_THREADS`` where it has one (its share of the
    cores), else the cores; at most 4 either way, well under the sandbox's cap on threads."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(4, int(given) if given.isdigit() else os.cpu_count() or 1))


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel started inside the sandbox, reached through Unix sockets in a private folder."""

    processes = Integer(sandbox.Limits.processes, help="processes and threads the kernel may run").tag(config=True)
    memory_bytes = Integer(sandbox.Limits.memory_bytes, help="address space of each process").tag(config=True)

    async def _async_pre_start_kernel(self, **kw: Any) -> Any:
        self._sandbox_dir = scratch.folder("kernel")
        self.transport = "ipc"
        self.ip = str(self._sandbox_dir / "kernel")
        self.connection_file = str(self._sandbox_dir / "connection.json")
        return await super()._async_pre_start_kernel(**kw)

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        import ddpm_ref

        cwd = Path(kw.get("cwd") or os.getcwd()).resolve()
        scratch = self._sandbox_dir / "work"
        shutil.copytree(cwd, scratch, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        env = {k: v for k, v in (kw.get("env") or {}).items()
               if k in ("NBGRADER_EXECUTION", "DDPM_FAST", "JPY_SESSION_NAME") or k.startswith("PYDEVD")}
        env.update({JUDGED_ENV: "1", "OMP_NUM_THREADS": str(kernel_threads()), "PYTHONPATH": str(LIB)})
        package = Path(ddpm_ref.__file__).resolve().parent
        kw["cwd"] = str(self._sandbox_dir)
        limits = sandbox.Limits(processes=self.processes, memory_bytes=self.memory_bytes)
        cmd = sandbox.command(kernel_cmd, cwd=WORK, binds=[(package, package), (package, LIB / "ddpm_ref")],
                              rw_binds=[(self._sandbox_dir, self._sandbox_dir), (scratch, WORK)], env=env,
                              limits=limits)
        self._cap = sandbox.ProcessCap(limits.processes)
        await super()._async_launch_kernel(self._cap.wrap(cmd), **kw)
        self._cap.watch(self.provisioner.process.pid)

    async def _async_interrupt_kernel(self) -> None:
        """Interrupt by message (the kernel signals itself): a signal from outside does not reach into the
        sandbox's process tree."""
        if self.kernel_spec is not None:
            self.kernel_spec.interrupt_mode = "message"
        await super()._async_interrupt_kernel()

    def kill_tree(self) -> None:
        """End the sandbox and everything in it at once (a kernel that ignores interrupts)."""
        process = getattr(self.provisioner, "process", None)
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(process.pid), 9)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if getattr(self, "_cap", None) is not None:
            self._cap.close()
        if not restart and getattr(self, "_sandbox_dir", None) is not None:
            shutil.rmtree(self._sandbox_dir, ignore_errors=True)


_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")


class StartJudging(NbGraderPreprocessor):
    """Starts judging the submission (from its cells' sources, before the kernel runs them) beside the kernel's
    run; :class:`JudgeChecks` collects the verdicts."""

    memory_bytes = Integer(sandbox.Limits.memory_bytes, help="address space of each student process").tag(config=True)

    def preprocess(self, nb: Any, resources: dict) -> tuple[Any, dict]:
        folder = Path(resources.get("metadata", {}).get("path") or ".")
        name = str(resources.get("unique_key", "notebook")).replace("/", "_")
        limits = sandbox.Limits(memory_bytes=self.memory_bytes)
        prepared = plan(nb, name)  # here, in nbgrader's thread: it parses code
        start = time.perf_counter()

        def judge() -> tuple[dict, float]:
            return judge_notebook(nb, folder, name=name, limits=limits, prepared=prepared), time.perf_counter() - start

        resources["ddpm_judge"] = _POOL.submit(judge)
        return nb, resources


class JudgeChecks(NbGraderPreprocessor):
    """Scores every check cell from the judge's verdict: its printed lines, the findings as a record (an output
    of type :data:`ddpm_ref.grading.records.FINDINGS_MIME`, for the class report), and an error if a check failed."""

    def preprocess(self, nb: Any, resources: dict) -> tuple[Any, dict]:
        future = resources.pop("ddpm_judge", None)
        if future is None:  # StartJudging was not configured: judge now
            start = time.perf_counter()
            verdicts = judge_notebook(nb, Path(resources.get("metadata", {}).get("path") or "."))
            seconds = time.perf_counter() - start
        else:
            verdicts, seconds = future.result()
        self.log.info("judged %d check cells in %.1f s", len(verdicts), seconds)
        cells = {c.grade_id: c for c in check_cells(nb)}
        for cell in nb.cells:
            grade_id = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
            if grade_id not in verdicts:
                continue
            verdict = verdicts[grade_id]
            record = {"exercise": cells[grade_id].exercise, "hidden": cells[grade_id].hidden,
                      "checks": verdict.findings}
            cell.outputs = [new_output("stream", name="stdout", text=verdict.text),
                            new_output("display_data", data={FINDINGS_MIME: record})]
            if not verdict.passed:
                cell.outputs.append(new_output("error", ename="CheckFailed", evalue=verdict.error,
                                               traceback=[f"CheckFailed: {verdict.error}"]))
        return nb, resources


class SanitizeMarkdown(SanitizeHTML):
    """A submission's markdown and raw cells with their HTML escaped (no ``<script>``, no event handlers), in the
    autograded notebook the Formgrader shows. Outputs are sanitized where they are rendered
    (``HTMLExporter.sanitize_html``), so the stored run keeps them as they were."""

    enabled = Bool(True).tag(config=True)

    def preprocess_cell(self, cell: Any, resources: dict, index: int) -> tuple[Any, dict]:
        if cell.cell_type == "code":
            return cell, resources
        return super().preprocess_cell(cell, resources, index)


def prepare() -> None:
    """Refuse to grade without a sandbox (one line; ``DDPM_GRADE_UNSANDBOXED=1`` overrides)."""
    with contextlib.suppress(Exception):
        import torch  # noqa: F401 (imported once here, not during the first judged cell)
    sandbox.require()
