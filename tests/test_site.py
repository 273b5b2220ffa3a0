"""The course site (``python solutions/build_site.py``), as a reader sees it.

Fast tests (no build): a lesson page is the released notebook's cells with the outputs of the solution's run,
and hidden tests print nothing on it; the guides' links are kept, redirected or refused.

The slow test builds the whole site from the FAST executions of the solutions that
``tests/test_course_nbgrader.py`` caches in ``build/executed/fast/`` (executing the lessons with ``DDPM_FAST=1``
where those are missing or stale), with ``sphinx-build -W`` (a warning fails the build), then checks:

* no lesson page shows a solution or a hidden test: every code cell shows the released source (the exercise
  stubs), and neither the solutions' code nor the names of the hidden checks appear anywhere;
* every relative ``href``/``src`` of every page points at a file of the site, and its ``#fragment`` at an id there;
* in Debian's Chromium (Playwright, offline: any request off the local server fails the test), every page loads
  with no console error and no failed request, every ``<img>`` decodes, and every equation is rendered by the
  local MathJax (an ``mjx-container``, no ``mjx-merror``).
"""

from __future__ import annotations

import functools
import html
import http.server
import re
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from tests._course import ROOT, load_release, load_site
from tests.test_browser import CHROMIUM, LAUNCH_ARGS

site = load_site()
release = load_release()
LESSONS = release.lesson_ids()


# ------------------------------------------------------------------------------------------------ no build


def _executed_with_marks(lesson: str) -> nbformat.NotebookNode:
    """The solution of ``lesson`` as if it had run: every code cell printed ``OUTPUT <id>``."""
    nb = nbformat.read(ROOT / "solutions" / lesson / f"{lesson}.ipynb", as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"OUTPUT {cell.id}\n")]
            cell.execution_count = i
    return nb


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_page_is_the_release_with_the_solution_outputs(lesson: str) -> None:
    released = nbformat.read(ROOT / "lessons" / lesson / f"{lesson}.ipynb", as_version=4)
    solution = _executed_with_marks(lesson)
    page = site.lesson_page(lesson, solution, "fast")
    hidden = {c.id for c in solution.cells if "### BEGIN HIDDEN TESTS" in c.source}
    if lesson == "02_forward_diffusion":
        assert hidden, "lesson 2 has hidden tests: this test must see them"
    by_id = {c.id: c for c in page.cells}
    assert [c.id for c in page.cells if c.id != "site-mode"] == [released.cells[i].id for i in
                                                                 _title_first(released)]
    for cell in released.cells:
        shown = by_id[cell.id]
        if cell.id == "open-in":
            continue  # the badges become text links (their pictures would load from other sites)
        assert shown.source == cell.source, f"{lesson} cell {cell.id} does not show the released source"
        if cell.cell_type != "code":
            continue
        text = "".join(o.get("text", "") for o in shown.outputs)
        if cell.id in hidden:
            assert not shown.outputs, f"{lesson}: hidden test cell {cell.id} shows what it printed: {text!r}"
        elif cell.id in {c.id for c in solution.cells}:
            assert text == f"OUTPUT {cell.id}\n", f"{lesson}: cell {cell.id} lacks the solution's output"
        else:
            assert not shown.outputs, f"{lesson}: cell {cell.id} is not in the solution but shows outputs"
    badges = by_id["open-in"].source
    assert "![" not in badges and "colab.research.google.com/github/" in badges, badges
    assert "FAST mode" in by_id["site-mode"].source


def _title_first(nb: nbformat.NotebookNode) -> list[int]:
    title = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("# "))
    return [title, *range(title), *range(title + 1, len(nb.cells))]


def test_a_failed_solution_run_fails_the_build() -> None:
    nb = _executed_with_marks("02_forward_diffusion")
    nb.cells[3].outputs = [nbformat.v4.new_output("error", ename="RuntimeError", evalue="boom", traceback=[])]
    with pytest.raises(SystemExit, match="RuntimeError: boom"):
        site.lesson_page("02_forward_diffusion", nb, "full")


def test_guide_links() -> None:
    staged = {"lessons/README.md", "TRAINING.md"}
    fix = functools.partial(site._rewrite_links, staged=staged)
    assert fix("[l](lessons/README.md) [t](TRAINING.md#data)", "README.md") == \
        "[l](lessons/README.md) [t](TRAINING.md#data)"
    assert fix("[home](../README.md) [a](#x) [w](https://example.org/a.md)", "lessons/README.md") == \
        "[home](../index.md) [a](#x) [w](https://example.org/a.md)"
    assert fix("[the lessons](lessons/)", "README.md") == "[the lessons](lessons/README.md)"
    repository = f"{release.REPOSITORY}/blob/{release.BRANCH}"
    assert fix("[h](tests/harness.py)", "README.md") == f"[h]({repository}/tests/harness.py)"
    with pytest.raises(SystemExit, match="does not exist"):
        fix("[gone](NOPE.md)", "README.md")


# ------------------------------------------------------------------------------------------------ the site


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole site, built from the cached FAST executions (executed now where missing)."""
    for module in ("sphinx", "myst_nb", "sphinx_book_theme"):
        pytest.importorskip(module, reason=f'needs {module} (pip install -e ".[site]")')
    work = tmp_path_factory.mktemp("site")
    site.build(LESSONS, "fast", src=work / "src", out=work / "out")
    return work / "out"


def _pages(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.html") if not {"_static", "_sources", "_images"} & set(p.parts))


def _text(page: str) -> str:
    """A page's visible text, whitespace collapsed (code is split into highlighting spans in the HTML)."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", page)))


@pytest.mark.slow
def test_lesson_pages_show_what_students_get(built: Path) -> None:
    from tests.harness import REGISTRY, load_all_checks

    load_all_checks()
    hidden_names = {f.__name__.removeprefix("test_") for fns in REGISTRY.values() for f in fns
                    if getattr(f, "hidden", False)}
    problems = []
    for lesson in LESSONS:
        page = (built / "lessons" / lesson / f"{lesson}.html").read_text("utf-8")
        text = _text(page)
        released = nbformat.read(ROOT / "lessons" / lesson / f"{lesson}.ipynb", as_version=4)
        for cell in released.cells:
            if cell.cell_type == "code" and cell.source.strip():
                if re.sub(r"\s+", " ", cell.source).strip() not in text:
                    problems.append(f"{lesson}: cell {cell.id} is not shown as released")
        solution = nbformat.read(ROOT / "solutions" / lesson / f"{lesson}.ipynb", as_version=4)
        for cell in solution.cells:
            for part in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, flags=re.S):
                lines = [line.strip() for line in part.splitlines() if len(line.strip()) > 25]
                shown = [line for line in lines if line in text]
                if lines and len(shown) == len(lines):
                    problems.append(f"{lesson}: the solution of cell {cell.id} is on the page")
        for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "hidden=True"):
            if marker in text:
                problems.append(f"{lesson}: {marker!r} is on the page")
        leaked = sorted(n for n in hidden_names if re.search(rf"\b{n}\b", text))
        if leaked:
            problems.append(f"{lesson}: hidden checks named on the page: {leaked}")
        if "raise NotImplementedError()" not in text or "FAST mode" not in text:
            problems.append(f"{lesson}: no exercise stub or no note on how the outputs were made")
        if "<img" not in page:
            problems.append(f"{lesson}: no picture")
    assert not problems, "\n".join(problems)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("href", "src"):
                self.refs.append(value)
            elif name in ("id", "name"):
                self.ids.add(value)


@functools.cache
def _parse(path: Path) -> _Refs:
    parser = _Refs()
    parser.feed(path.read_text("utf-8"))
    return parser


@pytest.mark.slow
def test_no_internal_link_is_broken(built: Path) -> None:
    broken = []
    pages = _pages(built)
    assert len(pages) >= len(LESSONS) + len(site.GUIDES) + 1, [p.name for p in pages]
    for page in pages:
        for ref in _parse(page).refs:
            if re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I) or ref.startswith("//"):
                continue  # other sites (not fetched: the browser test refuses them) and data: URIs
            path, _, fragment = ref.partition("#")
            path = path.partition("?")[0]
            target = (page.parent / path).resolve() if path else page
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(built)}: {ref}"
            if not target.is_file():
                broken.append(f"{where} (no such file)")
            elif fragment and target.suffix == ".html" and fragment not in _parse(target).ids:
                broken.append(f"{where} (no id {fragment!r} there)")
    assert not broken, "broken links:\n" + "\n".join(broken)


@pytest.fixture(scope="module")
def served(built: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(built)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_pages_in_chromium(built: Path, served: str) -> None:
    if not CHROMIUM.is_file():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason='needs playwright (pip install -e ".[dev]")')

    problems: list[str] = []
    equations = 0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.set_default_timeout(60_000)
        current = [""]

        def route(r) -> None:
            if r.request.url.startswith(served) or r.request.url.startswith("data:"):
                r.continue_()
            else:
                problems.append(f"{current[0]}: requests {r.request.url} from another site")
                r.abort()

        page.route("**/*", route)
        page.on("console", lambda m: m.type == "error" and problems.append(f"{current[0]}: console error {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"{current[0]}: page error {e}"))
        page.on("requestfailed", lambda r: problems.append(f"{current[0]}: request failed {r.url}"))
        page.on("response", lambda r: r.status >= 400 and problems.append(f"{current[0]}: {r.status} {r.url}"))
        for path in _pages(built):
            current[0] = str(path.relative_to(built))
            page.goto(served + current[0], wait_until="load")
            page.wait_for_load_state("networkidle")
            page.evaluate("() => window.MathJax?.startup?.promise")
            state = page.evaluate("""() => ({
                images: Array.from(document.images).map(im => ({src: im.getAttribute('src'),
                                                                 ok: im.complete && im.naturalWidth > 0})),
                math: Array.from(document.querySelectorAll('.math'))
                           .map(m => ({tex: m.textContent.slice(0, 60), ok: !!m.querySelector('mjx-container')})),
                rendered: document.querySelectorAll('mjx-container').length,
                errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent),
            })""")
            problems += [f"{current[0]}: picture {im['src']} does not decode" for im in state["images"] if not im["ok"]]
            problems += [f"{current[0]}: equation not rendered: {m['tex']!r}" for m in state["math"] if not m["ok"]]
            problems += [f"{current[0]}: MathJax error {e!r}" for e in state["errors"]]
            if current[0].startswith("lessons/0") and (not state["rendered"] or not state["images"]):
                problems.append(f"{current[0]}: {state['rendered']} equations, {len(state['images'])} pictures")
            equations += state["rendered"]
        browser.close()
    assert not problems, "\n".join(problems)
    assert equations > 100, f"only {equations} equations rendered on the whole site"
