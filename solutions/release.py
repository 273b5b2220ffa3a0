"""Rebuild the student notebooks ``lessons/<id>/`` from the nbgrader sources ``solutions/<id>/``.

    python solutions/release.py                    # nbgrader generate_assignment <id> --force, for every lesson
    python solutions/release.py 03_unet            # only some lessons
    python solutions/release.py --check            # exit 1 if lessons/ differs from what the solutions generate
    python solutions/release.py --clean-solutions  # first strip outputs and volatile metadata from the sources

Every lesson goes through nbgrader's own ``generate_assignment`` (in this process, with the course's
``nbgrader_config.py``); each released notebook then gets, above its title, the "Open in Colab" / "Open in
Kaggle" badges and a start cell that installs the course where ``ddpm_ref`` is missing (both built from
:data:`REPOSITORY`, the one place that names the course's repository), and is written in one normal form: no
outputs or execution counts, only the cell metadata nbgrader and Jupyter need, a fixed Python 3 kernelspec,
sorted JSON keys, as JupyterLab 4 saves a notebook.
A rebuild is therefore byte-identical, and ``--check`` can compare bytes. ``--check`` builds in a
temporary copy of the course and touches nothing; a normal run also records the assignments in the
course's ``gradebook.db``, which ``nbgrader autograde`` needs.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
LESSONS = ROOT / "lessons"
LESSON_ID = re.compile(r"^\d\d_[a-z0-9_]+$")

#: the course's public repository and branch: the badges open the lessons from there, the start cell clones it
REPOSITORY = "https://github.com/ddpm-course/ddpm-course"
BRANCH = "main"

#: the notebook metadata as JupyterLab 4 saves it once ipykernel has reported its language: stored so, a lesson
#: opens unmodified. ``version`` is the course's reference Python, stated here once: the environment BENCHMARKS.md
#: was measured in and tests/test_browser.py opens the lessons in. It is a fixed value, not the running Python's,
#: so that every machine releases the same bytes. JupyterLab records the kernel's full version (major.minor.patch)
#: and marks a notebook modified when it differs, so a shorter value would make every lesson open as modified;
#: under another Python that one field changes on opening, and tests/test_browser.py allows exactly that.
PYTHON_VERSION = "3.11.7"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": PYTHON_VERSION,
}
#: cell metadata that survives normalisation: nbgrader's, the tags, and the locks nbgrader sets on releases
CELL_METADATA_KEYS = ("nbgrader", "tags", "deletable", "editable")
#: nbgrader metadata written by autograde/feedback, never part of a source or release notebook
VOLATILE_NBGRADER_KEYS = ("score", "comment")

__all__ = ["lesson_ids", "normalize", "normal_bytes", "start_cells", "generate", "check", "main",
           "REPOSITORY", "BRANCH"]

#: the start cell of every released lesson (``{repository}`` is :data:`REPOSITORY`)
START_CELL = """\
# Start here. Where the course is not installed yet (Colab, Kaggle, a fresh environment), this cell clones it
# and installs it; elsewhere it does nothing. DDPM_COURSE_REPO overrides the repository to clone.
import importlib.util
if importlib.util.find_spec("ddpm_ref") is None:
    import importlib.metadata, os, site, subprocess, sys
    repo = os.environ.get("DDPM_COURSE_REPO", "{repository}")
    dest = os.path.abspath(os.environ.get("DDPM_COURSE_DIR", "ddpm-course"))
    if not os.path.isdir(dest):
        subprocess.run(["git", "clone", "--depth", "1", repo, dest], check=True)
    before = {{d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", dest], check=True)
    changed = {{d.metadata["Name"] for d in importlib.metadata.distributions()
               if before.get(d.metadata["Name"]) not in (None, d.version)}}
    loaded = {{m.split(".")[0] for m in sys.modules}}
    stale = sorted(n for m, names in importlib.metadata.packages_distributions().items()
                   if m in loaded for n in names if n in changed)
    for path in site.getsitepackages() + [site.getusersitepackages()]:
        site.addsitedir(path)  # the editable install's path hook, for this running kernel
    importlib.invalidate_caches()
    if stale:
        print(f"installed the course from {{repo}} into {{dest}}; packages this kernel had already loaded were "
              f"upgraded ({{', '.join(stale)}}): restart the kernel, then run the notebook from the top")
    else:
        print(f"installed the course from {{repo}} into {{dest}}; no restart needed: run the next cells")"""



def lesson_ids(root: Path = ROOT) -> list[str]:
    """The lesson ids, in order: the folders ``solutions/NN_name`` that hold ``NN_name.ipynb``."""
    src = root / "solutions"
    return sorted(p.name for p in src.iterdir() if LESSON_ID.match(p.name) and (p / f"{p.name}.ipynb").is_file())


def normalize(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook in the course's normal form (in place, and returned)."""
    nb.metadata = nbformat.from_dict({"kernelspec": dict(KERNELSPEC), "language_info": dict(LANGUAGE_INFO)})
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        meta = {k: cell.metadata[k] for k in CELL_METADATA_KEYS if k in cell.metadata}
        if "nbgrader" in meta:
            meta["nbgrader"] = {k: v for k, v in meta["nbgrader"].items() if k not in VOLATILE_NBGRADER_KEYS}
        cell.metadata = nbformat.from_dict(meta)
        if not cell.get("id"):
            grade_id = meta.get("nbgrader", {}).get("grade_id")
            cell["id"] = grade_id if grade_id else f"cell-{i:03d}"
        if "attachments" in cell and not cell["attachments"]:
            del cell["attachments"]
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def start_cells(lesson: str, repository: str = REPOSITORY, branch: str = BRANCH) -> list[nbformat.NotebookNode]:
    """The badges (a markdown cell) and the start cell that open every released lesson ``lesson``."""
    path = f"{repository.removeprefix('https://github.com/')}/blob/{branch}/lessons/{lesson}/{lesson}.ipynb"
    badges = (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
              f"(https://colab.research.google.com/github/{path}) "
              f"[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]"
              f"(https://kaggle.com/kernels/welcome?src=https://github.com/{path})")
    md = nbformat.v4.new_markdown_cell(badges, id="open-in")
    code = nbformat.v4.new_code_cell(START_CELL.format(repository=repository), id="start")
    code.metadata = nbformat.from_dict({"tags": ["start"]})
    return [md, code]


def _add_start_cells(path: Path, lesson: str) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells = start_cells(lesson) + [c for c in nb.cells if c.get("id") not in ("open-in", "start")]
    path.write_bytes(_dump(normalize(nb)))


def normal_bytes(path: Path) -> bytes:
    """The bytes of ``path`` in normal form."""
    nb = normalize(nbformat.read(path, as_version=4))
    return _dump(nb)


def _dump(nb: nbformat.NotebookNode) -> bytes:
    """As jupyter_server writes a notebook JupyterLab saves: nbformat's JSON (indent 1, sorted keys, UTF-8 as is)
    and a final newline."""
    text = nbformat.writes(nb, version=4)
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def _normalize_file(path: Path) -> bool:
    """Rewrite ``path`` in normal form; True if it changed."""
    new = normal_bytes(path)
    if path.read_bytes() == new:
        return False
    path.write_bytes(new)
    return True


def _api(course: Path):
    """nbgrader's API for the course at ``course``, configured by its nbgrader_config.py."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    return NbGraderAPI(config=config)


def generate(course: Path, ids: list[str]) -> None:
    """``nbgrader generate_assignment <id> --force`` for each id in ``course``; then normalise the release."""
    api = _api(course)
    for lesson in ids:
        result = api.generate_assignment(lesson, force=True, create=True)
        if not result["success"]:
            raise SystemExit(f"nbgrader generate_assignment {lesson} failed:\n{result.get('log', '')}\n"
                             f"{result.get('error', '')}")
        for path in sorted((course / "lessons" / lesson).rglob("*.ipynb")):
            _normalize_file(path)
        _add_start_cells(course / "lessons" / lesson / f"{lesson}.ipynb", lesson)


def _differences(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between folders ``a`` (expected) and ``b`` (found)."""
    out: list[str] = []
    fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} if a.is_dir() else set()
    fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file()} if b.is_dir() else set()
    out += [f"missing: {p}" for p in sorted(fa - fb)]
    out += [f"not generated by the solutions: {p}" for p in sorted(fb - fa)]
    out += [f"differs: {p}" for p in sorted(fa & fb) if not filecmp.cmp(a / p, b / p, shallow=False)]
    return out


def unnormalized_solutions(ids: list[str]) -> list[str]:
    """Source notebooks that are not stored in normal form (outputs, execution counts, volatile metadata)."""
    bad = []
    for lesson in ids:
        for path in sorted((SOLUTIONS / lesson).rglob("*.ipynb")):
            if ".ipynb_checkpoints" not in path.parts and path.read_bytes() != normal_bytes(path):
                bad.append(str(path.relative_to(ROOT)))
    return bad


def check(ids: list[str]) -> list[str]:
    """Problems that make ``lessons/`` differ from what ``solutions/`` generates (empty when in sync)."""
    problems = [f"not in normal form (run `python solutions/release.py --clean-solutions`): {p}"
                for p in unnormalized_solutions(ids)]
    with tempfile.TemporaryDirectory(prefix="ddpm-release-") as tmp:
        course = Path(tmp)
        shutil.copy2(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
        (course / "solutions").mkdir()
        for lesson in ids:
            shutil.copytree(SOLUTIONS / lesson, course / "solutions" / lesson,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        generate(course, ids)
        for lesson in ids:
            problems += [f"lessons/{lesson}: {d}" for d in _differences(course / "lessons" / lesson, LESSONS / lesson)]
    if LESSONS.is_dir():
        problems += [f"lessons/{p.name}: no solutions/{p.name}/{p.name}.ipynb generates it"
                     for p in sorted(LESSONS.iterdir()) if p.is_dir() and p.name not in lesson_ids()]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="lesson ids (default: every folder solutions/NN_name)")
    parser.add_argument("--check", action="store_true", help="only compare lessons/ with a fresh build")
    parser.add_argument("--clean-solutions", action="store_true",
                        help="strip outputs and volatile metadata from the source notebooks first")
    args = parser.parse_args(argv)
    every = lesson_ids()
    unknown = [x for x in args.lessons if x not in every]
    if unknown:
        parser.error(f"unknown lesson id(s) {unknown}; the lessons are {every}")
    ids = args.lessons or every
    if args.check:
        problems = check(ids)
        for p in problems:
            print(p)
        print(f"lessons/ is {'OUT OF SYNC' if problems else 'in sync'} with solutions/ ({len(ids)} lessons)")
        return 1 if problems else 0
    if args.clean_solutions:
        for lesson in ids:
            for path in sorted((SOLUTIONS / lesson).rglob("*.ipynb")):
                if ".ipynb_checkpoints" not in path.parts and _normalize_file(path):
                    print(f"cleaned {path.relative_to(ROOT)}")
    left = unnormalized_solutions(ids)
    if left:
        print("warning: source notebooks with outputs or volatile metadata (use --clean-solutions): "
              + ", ".join(left), file=sys.stderr)
    generate(ROOT, ids)
    for lesson in ids:
        print(f"lessons/{lesson}/ generated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
