"""Build the course site: the lessons as pages with their pictures, and the guides, with Sphinx and myst-nb.

    python solutions/build_site.py                 # every lesson, executed in full → build/site/index.html
    python solutions/build_site.py --fast          # executed with DDPM_FAST=1 (as nbgrader grades): minutes, not ~20
    python solutions/build_site.py 01_noise_schedule 02_forward_diffusion   # a site with only these lessons
    python solutions/build_site.py --rerun         # execute again even where a cached execution is up to date

Each lesson page shows the *released* notebook ``lessons/<id>/<id>.ipynb`` as a student opens it (the exercise cells
are their ``# YOUR CODE HERE`` stubs, hidden test cells are empty), with the outputs of the *solution* notebook
``solutions/<id>/<id>.ipynb`` run top to bottom: the pictures the finished exercises draw and the check results they
print. Cells are matched by their id (nbgrader's ``grade_id`` where there is one); cells that hold hidden tests in
the solution show no output, so what the hidden checks print never reaches the site.

Executions are cached in ``build/executed/<mode>/<id>.ipynb`` (``$DDPM_EXECUTED_DIR`` instead of
``build/executed``), stamped with a hash of the solution notebook and of the ``ddpm_ref`` package: a rebuild
executes only the lessons whose notebook or package changed (``--rerun`` forces it). The nbgrader test
(``tests/test_course_nbgrader.py``) stores its FAST autograded solution runs there too, so the site test builds
without running the lessons again.

The site's source is staged in ``build/site-src/`` (the guides, the lesson pages, a generated index with the table
of contents, ``conf.py``) and ``sphinx-build -W`` writes ``build/site/``: any warning (a broken reference, a missing
image) fails the build. Math is rendered by a local copy of MathJax 3 (from the ``sphinx-mathjax-offline`` package),
so the site needs no network. Needs ``pip install -e ".[site]"``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
LESSONS = ROOT / "lessons"
BUILD = ROOT / "build"
MODES = ("full", "fast")
#: seconds one cell may run: lessons 4 and 9 train 1000 steps in one cell, which takes long on a slow or busy CPU
CELL_TIMEOUT_S = 3600

#: the guides, as (path in the repository, toctree caption); README.md becomes the site's front page
FRONT = "README.md"
GUIDES = {"lessons/README.md": "Lessons", "TRAINING.md": "Guides", "BENCHMARKS.md": "Guides",
          "kaggle/README.md": "Guides", "solutions/README.md": "For instructors"}
#: mirrors solutions/release.py (the one place that names the course's repository)
_release = None

#: what each mode means, said on every lesson page
MODE_NOTE = {
    "full": "The outputs on this page (pictures, check results) come from running the finished solution of this "
            "notebook top to bottom in full mode, as it runs for you. The exercise cells show what you start from: "
            "replace `raise NotImplementedError()` with your code, then run the check cell below it.",
    "fast": "The outputs on this page (pictures, check results) come from running the finished solution of this "
            "notebook in FAST mode (`DDPM_FAST=1`, as the grader runs it): training and sampling cells are "
            "shortened, so pictures are rougher than the ones your full run draws. The exercise cells show what "
            "you start from: replace `raise NotImplementedError()` with your code, then run the check cell below "
            "it.",
}
MARKDOWN_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")
LINKED_BADGE = re.compile(r"\[!\[([^\]]*)\]\((?:https?:)?//[^)]*\)\]\(([^)]+)\)")
HIDDEN_TESTS = "### BEGIN HIDDEN TESTS"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
REMOTE_STYLESHEET = re.compile(r"<link\b[^>]*\bhref=[\"']?(?:https?:)?//[^>]*>", re.I)


def release():
    """``solutions/release.py`` as a module."""
    global _release
    if _release is None:
        spec = importlib.util.spec_from_file_location("course_release", SOLUTIONS / "release.py")
        assert spec is not None and spec.loader is not None
        _release = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_release)
    return _release


# ------------------------------------------------------------------------------------------------ executions


def executed_dir() -> Path:
    """Where executions are cached: ``$DDPM_EXECUTED_DIR`` or ``build/executed``."""
    return Path(os.environ.get("DDPM_EXECUTED_DIR") or BUILD / "executed")


def execution_key(lesson: str) -> str:
    """Hash of what a lesson's outputs depend on: its solution notebook and the ``ddpm_ref`` package."""
    h = hashlib.sha256((SOLUTIONS / lesson / f"{lesson}.ipynb").read_bytes())
    package = ROOT / "ddpm_ref"
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(package)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def store_execution(lesson: str, notebook: Path, mode: str, root: Path | None = None) -> Path:
    """Cache ``notebook`` (an executed solution of ``lesson``, e.g. nbgrader's autograded copy) for the site."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    from ddpm_ref.grading.records import FINDINGS_MIME

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:  # the grader's record of each check is for the class report, not for a page
        if cell.get("outputs"):
            cell.outputs = [o for o in cell.outputs if FINDINGS_MIME not in o.get("data", {})]
    nb.metadata["ddpm_site"] = {"mode": mode, "key": execution_key(lesson)}
    from ddpm_ref.files import write_atomic  # a page being built never reads a half-written notebook

    return write_atomic((root or executed_dir()) / mode / f"{lesson}.ipynb", nbformat.writes(nb))


def cached_execution(lesson: str, mode: str, root: Path | None = None) -> nbformat.NotebookNode | None:
    """The cached execution of ``lesson`` in ``mode`` if it is up to date, else None."""
    path = (root or executed_dir()) / mode / f"{lesson}.ipynb"
    if not path.is_file():
        return None
    nb = nbformat.read(path, as_version=4)
    stamp = nb.metadata.get("ddpm_site", {})
    if stamp.get("mode") != mode or stamp.get("key") != execution_key(lesson):
        return None
    return nb


def execute(lesson: str, mode: str, *, timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Run the solution notebook of ``lesson`` top to bottom in a fresh kernel (``DDPM_FAST=1`` when ``mode`` is
    "fast"), in a scratch folder, with :mod:`ddpm_ref.headless` (a lost kernel reply is recovered, no widget is
    made); a cell that fails or runs over ``timeout`` seconds stops the build, naming the lesson and the cell."""
    import nbclient

    from ddpm_ref.headless import execute_notebook

    nb = nbformat.read(SOLUTIONS / lesson / f"{lesson}.ipynb", as_version=4)
    env = dict(os.environ, DDPM_COURSE_ROOT=str(ROOT), DDPM_PROGRESS="log",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    for name in ("NBGRADER_EXECUTION", "DDPM_FAST", "MPLBACKEND"):  # the kernel's inline backend draws
        env.pop(name, None)
    if mode == "fast":
        env["DDPM_FAST"] = "1"
    with tempfile.TemporaryDirectory(prefix=f"ddpm-site-{lesson}-") as work:
        for item in (SOLUTIONS / lesson).iterdir():
            if item.is_file() and item.suffix != ".ipynb":
                shutil.copy2(item, work)
        try:
            client = execute_notebook(nb, label=f"solutions/{lesson} ({mode})", cwd=work, timeout=timeout, env=env)
        except nbclient.exceptions.CellTimeoutError as err:
            raise SystemExit(f"{err}; on a slow or busy machine give it longer with --timeout") from None
        except nbclient.exceptions.CellExecutionError as err:
            raise SystemExit(f"solutions/{lesson} ({mode}) failed:\n{err}") from None
    for stall in client.stalls:
        print(f"  solutions/{lesson} ({mode}): cell {stall['cell']} stalled, recovered ({stall['kind']})")
    return nb


def executions(lessons: list[str], mode: str, *, rerun: bool = False, timeout: int = CELL_TIMEOUT_S,
               log=print) -> dict[str, nbformat.NotebookNode]:
    """An up-to-date execution of each lesson: from the cache, else executed now (and cached)."""
    out = {}
    for lesson in lessons:
        nb = None if rerun else cached_execution(lesson, mode)
        if nb is None:
            log(f"executing solutions/{lesson} ({mode})…")
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{lesson}.ipynb"
                nbformat.write(execute(lesson, mode, timeout=timeout), path)
                store_execution(lesson, path, mode)
            log(f"  {time.perf_counter() - start:.0f} s")
            nb = cached_execution(lesson, mode)
            assert nb is not None
        else:
            log(f"solutions/{lesson}: cached {mode} execution is up to date")
        out[lesson] = nb
    return out


# ------------------------------------------------------------------------------------------------ pages


def _grade_id(cell) -> str | None:
    return (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")


def _outputs(cell) -> list:
    """A cell's outputs that a static page can show: widget views need a live kernel and are left out; HTML
    outputs lose the stylesheets they load from other sites (matplotlib's animations link Font Awesome 4 from a
    CDN for their buttons: the theme's own Font Awesome draws them)."""
    outputs = []
    for out in cell.get("outputs", []):
        if WIDGET_VIEW in out.get("data", {}):
            continue
        if "text/html" in out.get("data", {}):
            out = copy.deepcopy(out)
            text = out.data["text/html"]
            text = "".join(text) if isinstance(text, list) else text
            out.data["text/html"] = REMOTE_STYLESHEET.sub("", text)
        outputs.append(out)
    return outputs


def lesson_page(lesson: str, executed: nbformat.NotebookNode, mode: str) -> nbformat.NotebookNode:
    """The released notebook of ``lesson`` with the outputs of ``executed`` (a run of its solution)."""
    page = nbformat.read(LESSONS / lesson / f"{lesson}.ipynb", as_version=4)
    by_id = {c.get("id"): c for c in executed.cells}
    by_grade = {_grade_id(c): c for c in executed.cells if _grade_id(c)}
    errors = [f"cell {c.get('id')}: {o.get('ename')}: {str(o.get('evalue'))[:200]}"
              for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        raise SystemExit(f"the executed solution of {lesson} has errors; fix it first:\n" + "\n".join(errors))
    for cell in page.cells:
        if cell.cell_type == "markdown":
            # linked badge images (Open in Colab/Kaggle) load from other sites: on the page they are text links
            cell.source = LINKED_BADGE.sub(r"[\1](\2)", cell.source)
            continue
        if cell.cell_type != "code":
            continue
        ran = by_grade.get(_grade_id(cell)) if _grade_id(cell) else by_id.get(cell.get("id"))
        if ran is None or ran.cell_type != "code" or HIDDEN_TESTS in ran.source:
            continue  # the start cell (not part of the solution), hidden tests (their output is the grader's)
        cell.outputs = _outputs(ran)
        cell.execution_count = ran.get("execution_count")
    # the page opens with the lesson's title and how its outputs were made; then the badges and the start cell
    # (folded: it installs the course where it is missing and prints nothing here)
    title = next(i for i, c in enumerate(page.cells) if c.cell_type == "markdown" and c.source.startswith("# "))
    note = nbformat.v4.new_markdown_cell(f"```{{note}}\n{MODE_NOTE[mode]}\n```", id="site-mode")
    page.cells = [page.cells[title], note, *page.cells[:title], *page.cells[title + 1:]]
    for cell in page.cells:
        if "start" in cell.get("metadata", {}).get("tags", []):
            cell.metadata["tags"] = [*cell.metadata["tags"], "hide-input"]
    page.metadata.pop("widgets", None)
    return page


def _rewrite_links(text: str, source: str, staged: set[str]) -> str:
    """Relative links of the guide at repository path ``source``: kept where they point at a page of the site,
    otherwise pointed at the file in the course's repository; a link to nothing is an error."""
    rel = release()
    folder = Path(source).parent

    def fix(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(folder / path).replace(os.sep, "/")
        if resolved.startswith(".."):
            raise SystemExit(f"{source}: link {target!r} leaves the repository")
        if resolved == FRONT:
            resolved = "index.md"
        if (ROOT / resolved).is_dir() and f"{resolved}/README.md" in staged:
            resolved += "/README.md"
        if resolved in staged or resolved == "index.md":
            new = os.path.relpath(resolved, folder).replace(os.sep, "/")
            return f"[{label}]({new}{'#' + anchor if anchor else ''})"
        if not (ROOT / resolved).exists():
            raise SystemExit(f"{source}: link {target!r} points at {resolved}, which does not exist")
        kind = "tree" if (ROOT / resolved).is_dir() else "blob"
        return f"[{label}]({rel.REPOSITORY}/{kind}/{rel.BRANCH}/{resolved}{'#' + anchor if anchor else ''})"

    return MARKDOWN_LINK.sub(fix, text)


def _write(path: Path, data: bytes) -> None:
    """Write only what changed, so Sphinx rebuilds only the pages that did."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)


def mathjax_dir() -> Path:
    """The MathJax 3 files shipped by the ``sphinx-mathjax-offline`` package."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise SystemExit('the site needs a local MathJax: pip install -e ".[site]" (sphinx-mathjax-offline)')
    path = Path(spec.origin).parent / "static" / "mathjax"
    if not (path / "tex-chtml.js").is_file():
        raise SystemExit(f"no tex-chtml.js in {path}: reinstall sphinx-mathjax-offline")
    return path


CONF = '''\
# Generated by solutions/build_site.py: edit that script, not this file.
project = "DDPM from scratch"
author = "ddpm-course"
extensions = ["myst_nb"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
myst_dmath_double_inline = True  # $$…$$ inside a paragraph is display math, as in Jupyter
nb_execution_mode = "off"  # executed beforehand by build_site.py (cached), never by Sphinx
nb_ipywidgets_js = {{}}  # no widget manager from a CDN: widget outputs are left out of the pages
mathjax_path = "mathjax/tex-chtml.js"  # a local MathJax 3 (the site works offline)
html_theme = "sphinx_book_theme"
html_title = "DDPM from scratch"
html_static_path = ["_static"]
html_theme_options = {{
    "repository_url": "{repository}",
    "repository_branch": "{branch}",
    "use_repository_button": True,
    "use_download_button": True,
    "show_toc_level": 2,
}}
html_context = {{"default_mode": "auto"}}  # a first visit has no stored mode: no console error
exclude_patterns = ["_build", "**.ipynb_checkpoints"]


def setup(app):
    app.set_html_assets_policy("always")  # MathJax on every page: the navigation shows titles with math
'''


def stage(src: Path, pages: dict[str, nbformat.NotebookNode]) -> None:
    """Write the site's source into ``src``: conf.py, index.md (README.md and the table of contents), the guides,
    the lesson pages and the local MathJax."""
    rel = release()
    staged = set(GUIDES) | {f"lessons/{lesson}/{lesson}.ipynb" for lesson in pages}
    keep = {"conf.py", "index.md", *staged}
    if src.is_dir():  # pages of lessons no longer built must go
        for path in src.rglob("*"):
            if path.is_file() and path.suffix in (".md", ".ipynb") and path.relative_to(src).as_posix() not in keep:
                path.unlink()
    _write(src / "conf.py", CONF.format(repository=rel.REPOSITORY, branch=rel.BRANCH).encode())
    tocs: dict[str, list[str]] = {}
    for guide, caption in GUIDES.items():
        tocs.setdefault(caption, []).append(guide.removesuffix(".md"))
        if guide == "lessons/README.md":
            tocs[caption] += [f"lessons/{lesson}/{lesson}" for lesson in pages]
    toc = "".join(f"\n```{{toctree}}\n:caption: {caption}\n:maxdepth: 1\n\n" + "\n".join(docs) + "\n```\n"
                  for caption, docs in tocs.items())
    front = _rewrite_links((ROOT / FRONT).read_text("utf-8"), FRONT, staged)
    _write(src / "index.md", (front.rstrip() + "\n" + toc).encode())
    for guide in GUIDES:
        _write(src / guide, _rewrite_links((ROOT / guide).read_text("utf-8"), guide, staged).encode())
    for lesson, nb in pages.items():
        _write(src / "lessons" / lesson / f"{lesson}.ipynb", rel._dump(nb))
    mathjax = src / "_static" / "mathjax"
    if not (mathjax / "tex-chtml.js").is_file():
        shutil.copytree(mathjax_dir(), mathjax, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("sre", "svg", "svg.js", "*-svg*.js", "*-full*.js", "mml-*.js",
                                                      "tex-mml-*.js", "node-main.js"))


def sphinx(src: Path, out: Path, *, quiet: bool = True) -> None:
    """``sphinx-build -W``: a warning (broken reference, missing image, unreadable output) fails the build."""
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-d", str(out / ".doctrees"),
           str(src), str(out)]
    if quiet:
        cmd.insert(3, "-q")
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sphinx-build failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}")


def build(lessons: list[str], mode: str, *, src: Path, out: Path, rerun: bool = False,
          timeout: int = CELL_TIMEOUT_S, log=print) -> Path:
    """Execute (or take from the cache), stage and build; returns ``out/index.html``."""
    runs = executions(lessons, mode, rerun=rerun, timeout=timeout, log=log)
    pages = {lesson: lesson_page(lesson, nb, mode) for lesson, nb in runs.items()}
    stage(src, pages)
    for lesson in set(release().lesson_ids()) - set(pages):  # pages of an earlier build with more lessons
        shutil.rmtree(out / "lessons" / lesson, ignore_errors=True)
    start = time.perf_counter()
    sphinx(src, out)
    log(f"sphinx-build: {time.perf_counter() - start:.0f} s")
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="lesson ids (default: every lesson)")
    parser.add_argument("--fast", action="store_true", help="execute with DDPM_FAST=1 (shorter training/sampling)")
    parser.add_argument("--rerun", action="store_true", help="execute even where a cached execution is up to date")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S,
                        help=f"seconds one cell may run (default {CELL_TIMEOUT_S})")
    parser.add_argument("--src", type=Path, default=BUILD / "site-src", help="staging folder (default build/site-src)")
    parser.add_argument("--out", type=Path, default=BUILD / "site", help="output folder (default build/site)")
    args = parser.parse_args(argv)
    every = release().lesson_ids()
    unknown = [x for x in args.lessons if x not in every]
    if unknown:
        parser.error(f"unknown lesson id(s) {unknown}; the lessons are {every}")
    index = build(args.lessons or every, "fast" if args.fast else "full", src=args.src.resolve(),
                  out=args.out.resolve(), rerun=args.rerun, timeout=args.timeout)
    print(f"the site: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
