"""What a student sees, in JupyterLab 4 with ipywidgets 8 in a real (headless) Chromium, driven by Playwright.

A copy of lesson 2 is opened with one typical mistake (``q_sample`` with α_t instead of ᾱ_t), one exercise left
as its stub (``predict_x0``) and one finished (``q_posterior``). The test asserts that the notebook opens
unmodified and saves byte for byte as stored, then runs *Run All* and asserts: the failed check's message in its
output area and the cells below it still run; no traceback under the finished exercise; one line and no picture
under the cells that need the unfinished one; the pictures decode; and the t slider renders and redraws when
moved. Needs Debian's ``chromium`` (``/usr/bin/chromium``), ``playwright`` and ``jupyterlab`` (``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests._course import ROOT, load_release
from tests.mistakes import MISTAKES

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
LESSON = "02_forward_diffusion"
FINISHED_Q_POSTERIOR = '''def q_posterior(x0, x_t, t, schedule):
    mean = (schedule.gather(schedule.posterior_mean_coef_x0, t, x_t) * x0
            + schedule.gather(schedule.posterior_mean_coef_xt, t, x_t) * x_t)
    return mean, schedule.gather(schedule.posterior_variance, t, x_t)'''


def _requirements() -> None:
    if not CHROMIUM.is_file():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    for module in ("playwright", "jupyterlab", "ipywidgets"):
        pytest.importorskip(module, reason=f"needs {module} (pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _student_copy(folder: Path) -> tuple[Path, nbformat.NotebookNode]:
    """Lesson 2 with the α mistake in q_sample, predict_x0 left as its stub, q_posterior finished; stored in the
    course's normal form (as JupyterLab saves it)."""
    release = load_release()
    nb = nbformat.read(ROOT / "lessons" / LESSON / f"{LESSON}.ipynb", as_version=4)
    alpha = next(m for m in MISTAKES if m.name == "q_sample_alpha_instead_of_alpha_bar")
    for cell in nb.cells:
        exercise = (cell.metadata.get("nbgrader") or {}).get("grade_id") if cell.metadata.get("nbgrader", {}).get(
            "solution") else None
        if exercise == "q_sample":
            cell.source = alpha.source.strip()
        elif exercise == "q_posterior":
            cell.source = FINISHED_Q_POSTERIOR
    path = folder / f"{LESSON}.ipynb"
    path.write_bytes(release._dump(release.normalize(nb)))
    return path, nb


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, nbformat.NotebookNode]]:
    """A JupyterLab server on a student's copy of lesson 2: (base URL with token, notebook path, notebook)."""
    _requirements()
    work = tmp_path_factory.mktemp("lab")
    path, nb = _student_copy(work)
    port, token = _free_port(), "course-browser-test"
    env = dict(os.environ, DDPM_FAST="1", PYTHONPATH=str(ROOT), DDPM_COURSE_ROOT=str(ROOT),
               JUPYTER_CONFIG_DIR=str(work / ".config"), JUPYTER_RUNTIME_DIR=str(work / ".runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(work / ".settings"), JUPYTERLAB_WORKSPACES_DIR=str(work / ".ws"))
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the pictures
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--LabApp.news_url=None"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(work / "lab.log", "w")  # noqa: SIM115
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (work / "lab.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield f"{base}/lab/tree/{path.name}?token={token}", path, nb
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(work / ".runtime", ignore_errors=True)


def _cell_index(nb: nbformat.NotebookNode, *, grade_id: str | None = None, contains: str | None = None) -> int:
    for i, cell in enumerate(nb.cells):
        if grade_id is not None and (cell.metadata.get("nbgrader") or {}).get("grade_id") == grade_id:
            return i
        if contains is not None and cell.cell_type == "code" and contains in cell.source:
            return i
    raise LookupError(grade_id or contains)


def _output(page: Any, i: int) -> dict[str, Any]:
    """What cell ``i`` shows: its output text, error output text, images (decoded or not) and widgets."""
    return page.evaluate("""(i) => {
        const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];
        const area = cell.querySelector('.jp-OutputArea');
        if (!area) return {text: '', errors: '', images: [], sliders: 0};
        const errors = Array.from(area.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]'))
            .map(e => e.textContent).join('\\n');
        const images = Array.from(area.querySelectorAll('img')).map(im => ({w: im.naturalWidth, src: im.src}));
        return {text: area.textContent, errors, images, sliders: area.querySelectorAll('.widget-slider').length};
    }""", i)


def test_a_student_runs_lesson_2_in_jupyterlab(lab: tuple[str, Path, nbformat.NotebookNode]) -> None:
    from playwright.sync_api import sync_playwright

    url, path, nb = lab
    stored = path.read_bytes()
    release = load_release()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(url)
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")  # the kernel is up
        tab = page.locator(".lm-TabBar-tab", has_text=path.name)
        version = ".".join(map(str, sys.version_info[:3]))
        if version == release.PYTHON_VERSION:  # under another Python JupyterLab records that one field
            page.wait_for_timeout(5000)  # the kernel has reported its language
            assert "jp-mod-dirty" not in (tab.get_attribute("class") or ""), "the lesson opened as modified"
        page.keyboard.press("Control+s")
        page.wait_for_timeout(2000)
        assert path.read_bytes() == stored.replace(f'"version": "{release.PYTHON_VERSION}"'.encode(),
                                                   f'"version": "{version}"'.encode()), (
            "JupyterLab saved the lesson differently from how it is stored")

        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
        page.wait_for_function("""(ran) => {
            const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
            return ran.every(i => /\\[\\d+\\]/.test(cells[i].querySelector('.jp-InputArea-prompt').textContent));
        }""", arg=ran, timeout=240_000)  # every code cell ran: Run All went past the failed check and the stub

        check = _output(page, _cell_index(nb, grade_id="check_q_sample"))
        assert "✗ q_sample_values" in check["text"] and "Hint: you used α_t (alphas)" in check["text"], check
        assert "q_sample: 1 check(s) failed: q_sample_values" in check["errors"], check
        strip = _output(page, _cell_index(nb, contains="show_strip(strip"))
        assert strip["images"] and all(im["w"] > 0 for im in strip["images"]) and not strip["errors"], strip

        finished = _output(page, _cell_index(nb, grade_id="check_q_posterior"))
        assert "✓" in finished["text"] and "✗" not in finished["text"] and not finished["errors"], finished
        assert "Traceback" not in finished["text"]
        posterior = _output(page, _cell_index(nb, contains="coef_x0 = q_posterior"))
        assert len(posterior["images"]) == 2 and all(im["w"] > 0 for im in posterior["images"]), posterior
        assert not posterior["errors"]

        needs = _output(page, _cell_index(nb, contains="wrong = eps"))
        assert needs["text"].strip() == ("finish the exercise `predict_x0` first: this cell runs your `predict_x0`, "
                                         "which still raises NotImplementedError"), needs
        assert not needs["images"] and not needs["errors"], needs

        i = _cell_index(nb, contains="t_slider(")
        slider = _output(page, i)
        assert slider["sliders"] == 1 and len(slider["images"]) == 1 and slider["images"][0]["w"] > 0, slider
        cell = page.locator(".jp-Notebook .jp-Cell").nth(i)
        cell.scroll_into_view_if_needed()
        assert cell.locator(".widget-slider").bounding_box()["width"] > 400  # room for 400 steps
        assert (cell.locator(".widget-readout").text_content() or "").strip() == "100"
        cell.locator(".noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function("""([i, old]) => {
            const img = document.querySelectorAll('.jp-Notebook .jp-Cell')[i].querySelector('.jp-OutputArea img');
            return img && img.src !== old && img.naturalWidth > 0;
        }""", arg=[i, slider["images"][0]["src"]], timeout=60_000)
        assert (cell.locator(".widget-readout").text_content() or "").strip() == "101"
        browser.close()
