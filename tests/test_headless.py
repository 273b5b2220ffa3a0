"""Headless runs never hang and never create a widget: ``ddpm_ref.headless`` and ``ddpm_ref.pictures.widget_frontend``.

* No widgets without a frontend: a headless run of a cell that calls ``t_slider`` (the only widget the lessons use,
  which a scan of every lesson confirms) leaves no widget view and draws the static strip, under the project's
  runners (``DDPM_HEADLESS``) and under a foreign one (plain nbclient, as papermill and nbconvert run it); a client
  that can answer ``input()``, as JupyterLab does, still gets the slider.
* No lost points from a stall: a client that loses a cell's ``execute_reply`` (and its ``status: idle``), or whose
  request the kernel leaves unread, finishes the notebook with the cell run once and its outputs and error status
  intact, and so does nbgrader's ``CourseExecute``; with the recovery switched off the same runs time out (score 0).
* Timeouts name the notebook and the cell.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from nbformat.v4 import new_code_cell, new_notebook

from ddpm_ref import pictures
from ddpm_ref.headless import HEADLESS_ENV, HeadlessClient, RobustExecution, execute_notebook

ROOT = Path(__file__).resolve().parent.parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: every way a lesson could make a widget; each one found must be in WIDGET_HELPERS (and tested below)
WIDGET_USE = re.compile(r"\bipywidgets\b|\bwidgets\.\w+|\binteract(?:ive)?\(|\bt_slider\(")
WIDGET_HELPERS = {"t_slider("}
SLIDER = ("import torch\nfrom ddpm_ref.course import t_slider\n"
          "t_slider(lambda t: torch.full((2, 1, 8, 8), t / 5 - 1), 10)")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NBGRADER_EXECUTION", HEADLESS_ENV, "MPLBACKEND")}
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            **extra}


def _notebook(*sources: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _mimes(cell) -> set[str]:
    return {m for out in cell.get("outputs", []) for m in out.get("data", {})}


# ------------------------------------------------------------------------------------------ no widgets


def test_every_widget_the_lessons_use_goes_through_a_tested_helper() -> None:
    uses = {}
    for path in sorted([*ROOT.glob("solutions/*/*.ipynb"), *ROOT.glob("lessons/*/*.ipynb")]):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code":
                for use in WIDGET_USE.findall(cell.source):
                    uses.setdefault(use, []).append(f"{path.relative_to(ROOT)} cell {i}")
    assert "t_slider(" in uses, "the scan finds no widget at all: is the pattern out of date?"
    outside = {k: v for k, v in uses.items() if k not in WIDGET_HELPERS}
    assert not outside, f"widgets made outside the tested helpers: {outside}"
    makers = [p.relative_to(ROOT).as_posix() for p in (ROOT / "ddpm_ref").rglob("*.py")
              if "import ipywidgets" in p.read_text(encoding="utf-8")]
    assert makers == ["ddpm_ref/pictures.py"], makers


@pytest.mark.parametrize("runner", ["project", "foreign"])
def test_a_headless_run_draws_the_static_strip_and_creates_no_widget(tmp_path: Path, runner: str) -> None:
    nb = _notebook(SLIDER)
    if runner == "project":
        execute_notebook(nb, label="slider", cwd=tmp_path, timeout=120, env=_env())
    else:  # as papermill or nbconvert run it: nbclient itself, no environment marker
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                       ).execute(env=_env())
    mimes = _mimes(nb.cells[0])
    assert WIDGET_VIEW not in mimes and "image/png" in mimes, mimes


SLIDER_CALL = re.compile(r"^t_slider\(", re.M)


def _lessons_with_widgets() -> list[str]:
    return sorted(p.parent.name for p in ROOT.glob("solutions/*/*.ipynb")
                  if any(SLIDER_CALL.search(c.source) for c in nbformat.read(p, as_version=4).cells))


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["project", "foreign"])
@pytest.mark.parametrize("lesson", _lessons_with_widgets())
def test_a_lesson_run_headless_creates_no_widget(tmp_path: Path, lesson: str, runner: str) -> None:
    """The lessons that make sliders (2 and 5), run FAST headless: by the project's runner, and by plain nbclient
    as papermill would (no marker). Their sliders are static strips, and no other cell makes a widget: the
    progress bars (lesson 5's samplers have them) come from ``ddpm_ref.progress``, which asks ``widget_frontend``."""
    nb = nbformat.read(ROOT / "solutions" / lesson / f"{lesson}.ipynb", as_version=4)
    env = _env(DDPM_FAST="1", DDPM_COURSE_ROOT=str(ROOT))
    client = HeadlessClient if runner == "project" else NotebookClient
    client(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)
    sliders = [c for c in nb.cells if c.cell_type == "code" and SLIDER_CALL.search(c.source)]
    assert sliders and all("image/png" in _mimes(c) and WIDGET_VIEW not in _mimes(c) for c in sliders)
    widgets = [i for i, c in enumerate(nb.cells) if WIDGET_VIEW in _mimes(c)]
    assert not widgets, f"{lesson}: cells {widgets} made widgets"
    assert any("progress_bar as tqdm" in c.source for c in nb.cells) or lesson != "05_sampling"


class _Frontend(HeadlessClient):
    """A client that answers ``input()`` like JupyterLab (``allow_stdin``) and sets no environment marker."""

    async def async_start_new_kernel(self, **kwargs):
        await super(RobustExecution, self).async_start_new_kernel(**kwargs)  # nbclient's own: no marker

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        kc.allow_stdin = True
        return kc


def test_a_frontend_that_can_show_widgets_gets_the_slider(tmp_path: Path) -> None:
    """The other side of the detection: without it, the test above would pass for the wrong reason."""
    nb = _notebook(SLIDER)
    execute_notebook(nb, label="slider", cwd=tmp_path, timeout=120, env=_env(), client_class=_Frontend)
    assert WIDGET_VIEW in _mimes(nb.cells[0])


def test_widget_frontend_outside_a_kernel_and_under_the_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pictures.HEADLESS_ENV == HEADLESS_ENV
    assert not pictures.widget_frontend()  # pytest: no kernel
    monkeypatch.setenv(HEADLESS_ENV, "1")
    assert not pictures.widget_frontend()


# ------------------------------------------------------------------------------------------ stalls


class _Lossy(HeadlessClient):
    """Loses what a broken connection loses: the ``execute_reply`` of the cells in ``drop`` (and, with
    ``drop_idle``, their ``status: idle``), or holds back their request, and what follows it on the connection,
    until a message comes from another connection (ipykernel 7.0-7.3's shell socket, which can leave a request
    unread until a new connection wakes it: ipykernel#1554)."""

    def __init__(self, *args, drop=(), drop_idle=False, hold=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.drop, self.hold, self.lost = set(drop), set(hold), []
        self.drop_idle = set(drop) if drop_idle else set()

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        shell_get, iopub_get, send = kc.shell_channel.get_msg, kc.iopub_channel.get_msg, kc.shell_channel.send
        held: list = []

        def cell() -> int:
            return self._where[0]

        async def lossy_shell(*args, **kwargs):
            while True:
                msg = await shell_get(*args, **kwargs)
                if msg["msg_type"] == "execute_reply" and cell() in self.drop:
                    self.drop.discard(cell())
                    self.lost.append(("execute_reply", cell()))
                    continue
                return msg

        async def lossy_iopub(*args, **kwargs):
            while True:
                msg = await iopub_get(*args, **kwargs)
                if (cell() in self.drop_idle and msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"
                        and msg["parent_header"].get("msg_type") == "execute_request"):
                    self.drop_idle.discard(cell())
                    self.lost.append(("idle", cell()))
                    continue
                return msg

        def holding_send(msg):  # a held request, and whatever follows it on this connection, wait for a wake
            if held or (msg["header"]["msg_type"] == "execute_request" and cell() in self.hold):
                self.hold.discard(cell())
                held.append(msg)
                return None
            return send(msg)

        def new_connection(*args, **kwargs):  # a message from another connection wakes the socket
            waker, kernel_info = make_client(*args, **kwargs), None

            def wake(*a, **k):
                while held:
                    send(held.pop(0))
                return kernel_info(*a, **k)

            waker.kernel_info, kernel_info = wake, waker.kernel_info
            return waker

        make_client, self.km.client = self.km.client, new_connection
        kc.shell_channel.get_msg, kc.iopub_channel.get_msg = lossy_shell, lossy_iopub
        kc.shell_channel.send = holding_send
        return kc


RUN_ONCE = ["import pathlib\nlog = pathlib.Path('ran.txt')",
            "log.open('a').write('x')\nprint('side effect done')",
            "print(log.read_text())\nassert log.read_text() == 'x'"]


@pytest.mark.parametrize("drop_idle", [False, True], ids=["reply", "reply+idle"])
def test_a_lost_reply_is_rebuilt_without_running_the_cell_again(tmp_path: Path, drop_idle: bool) -> None:
    nb = _notebook(*RUN_ONCE)
    start = time.perf_counter()
    client = execute_notebook(nb, label="lost", cwd=tmp_path, timeout=60, env=_env(), client_class=_Lossy,
                              drop={1}, drop_idle=drop_idle, probe_after=1, iopub_timeout=3)
    assert sorted(client.lost) == [("execute_reply", 1), *([("idle", 1)] if drop_idle else [])]
    assert [s["cell"] for s in client.stalls if s["kind"] == "lost reply rebuilt"] == [1]
    assert (tmp_path / "ran.txt").read_text() == "x"  # once
    assert "side effect done" in nb.cells[1].outputs[0].text and nb.cells[1].execution_count == 2
    assert time.perf_counter() - start < 40


def test_a_lost_error_reply_stays_an_error(tmp_path: Path) -> None:
    nb = _notebook("x = 1", "raise ValueError('wrong on purpose')", "print('after')")
    with pytest.raises(CellExecutionError, match="wrong on purpose"):
        execute_notebook(nb, label="lost", cwd=tmp_path, timeout=60, env=_env(), client_class=_Lossy,
                         drop={1}, probe_after=1)


def test_an_unread_request_is_woken_and_runs_once(tmp_path: Path) -> None:
    nb = _notebook(*RUN_ONCE)
    client = execute_notebook(nb, label="unread", cwd=tmp_path, timeout=60, env=_env(), client_class=_Lossy,
                              hold={1}, probe_after=1)
    assert [s["kind"] for s in client.stalls if s["cell"] == 1] == ["unread request woken"]
    assert (tmp_path / "ran.txt").read_text() == "x"


@pytest.mark.parametrize("loss", [{"drop": {1}}, {"hold": {1}}], ids=["lost reply", "unread request"])
def test_without_recovery_the_stall_times_out_naming_the_cell(tmp_path: Path, loss: dict) -> None:
    nb = _notebook(*RUN_ONCE)
    with pytest.raises(CellTimeoutError, match=r"stall: cell 1 \(`log.open\('a'\).write\('x'\)`\) ran over its 4 s"):
        execute_notebook(nb, label="stall", cwd=tmp_path, timeout=4, env=_env(), client_class=_Lossy,
                         recover_stalls=False, **loss)


def test_a_timeout_names_the_notebook_and_the_cell(tmp_path: Path) -> None:
    nb = _notebook("import time", "time.sleep(60)  # too long")
    with pytest.raises(CellTimeoutError) as err:
        execute_notebook(nb, label="solutions/05_sampling (fast)", cwd=tmp_path, timeout=2, env=_env())
    assert "solutions/05_sampling (fast): cell 1 (`time.sleep(60)  # too long`) ran over its 2 s" in str(err.value)


def _course_execute():
    from tests.test_course_nbgrader import _AnyConfig

    namespace: dict = {"get_config": lambda: _AnyConfig(), "__file__": str(ROOT / "nbgrader_config.py")}
    exec(compile((ROOT / "nbgrader_config.py").read_text(), "nbgrader_config.py", "exec"), namespace)
    course_execute = namespace["CourseExecute"]

    class LossyCourseExecute(course_execute, _Lossy):
        pass

    return LossyCourseExecute


@pytest.mark.parametrize("recover", [True, False])
def test_the_grader_scores_a_cell_whose_reply_was_lost(tmp_path: Path, recover: bool) -> None:
    """nbgrader's CourseExecute: a lost reply costs nothing; without the recovery it scored 0 (a timeout error)."""
    nb = _notebook(*RUN_ONCE)
    ex = _course_execute()(sandboxed=False, timeout=8, drop={1}, recover_stalls=recover, probe_after=1)
    ex.preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    errors = [o.ename for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert errors == ([] if recover else ["CellTimeoutError"]), errors
    assert (tmp_path / "ran.txt").read_text() == "x"
