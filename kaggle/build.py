"""Build ``kaggle/ddpm_celebahq.ipynb`` from the cells in ``kaggle/notebook/`` and the ``ddpm_ref`` sources.

Kaggle runs the notebook with the internet off, so the notebook carries its code: one cell near the top writes
every ``ddpm_ref/*.py`` file that git tracks (and ``kaggle/ddpm_kaggle/*.py``, the Kaggle glue) into
``<working dir>/ddpm_ref_src`` and puts that folder first on ``sys.path``. The package stays the single source;
this script copies it in. After any change to ``ddpm_ref/`` (or to the cells or glue), rebuild and commit the
notebook with it: ``tests/test_kaggle_build.py`` fails while the committed notebook is stale.

    python kaggle/build.py            # rewrite the notebook
    python kaggle/build.py --check    # exit 1 if the committed notebook differs from a fresh build

The cells are Python files in the "percent" format, ``kaggle/notebook/NN_part.py``, joined in file-name order:
``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are comments (``# `` is stripped), and
``# %% [package]`` marks where the package cell goes. Lines before a file's first marker (its own docstring and
lint settings) are not part of the notebook.
The output is deterministic (fixed cell ids, no outputs), so a rebuild of unchanged sources is byte-identical.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATE_DIR = HERE / "notebook"
NOTEBOOK = HERE / "ddpm_celebahq.ipynb"
PACKAGE_DIR = REPO / "ddpm_ref"
GLUE_DIR = HERE / "ddpm_kaggle"

MARKER = re.compile(r"^# %%(?:\s+\[(?P<kind>\w+)\])?\s*$")


def package_sources() -> list[Path]:
    """The package's ``.py`` files: those git tracks (so scratch files never ship), or all of them without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "ddpm_ref"], cwd=REPO, capture_output=True,
                             check=True, text=True).stdout
        tracked = [REPO / name for name in out.split("\0") if name.endswith(".py")]
    except (OSError, subprocess.CalledProcessError):
        tracked = []
    paths = tracked or list(PACKAGE_DIR.rglob("*.py"))
    return sorted(p for p in paths if p.is_file() and "__pycache__" not in p.parts)


def package_files() -> dict[str, str]:
    """{path inside the source folder: text} for every ``ddpm_ref/**/*.py`` and the glue package, sorted."""
    files = {p.relative_to(REPO).as_posix(): p.read_text(encoding="utf-8") for p in package_sources()}
    if "ddpm_ref/__init__.py" not in files:
        raise SystemExit(f"{PACKAGE_DIR} has no __init__.py: run from a checkout of the repository")
    for path in glue_sources():
        files[path.relative_to(HERE).as_posix()] = path.read_text(encoding="utf-8")
    return files


def glue_sources() -> list[Path]:
    """The Kaggle glue package's ``.py`` files, sorted."""
    return sorted(GLUE_DIR.glob("*.py"))


def template_parts() -> list[Path]:
    """The notebook's cell files, in the order they are joined."""
    return sorted(TEMPLATE_DIR.glob("[0-9][0-9]_*.py"))


def _literal(text: str) -> str:
    """``text`` as a readable Python literal: a raw triple-quoted string where that is exact, else repr()."""
    if "'''" not in text and not text.endswith("\\") and "\r" not in text:
        return "r'''" + text + "'''"
    return repr(text)


def package_cell(files: dict[str, str]) -> str:
    """The code cell that writes the package into SRC_DIR and imports it from there."""
    body = ",\n".join(f"    {name!r}: {_literal(text)}" for name, text in files.items())
    return (
        "# The ddpm_ref package and the Kaggle glue, written out so that this notebook runs with the internet off.\n"
        "# Copied from the repository by `python kaggle/build.py`: edit ddpm_ref/*.py there and rebuild, not here.\n"
        "import importlib\n"
        "import sys\n"
        "\n"
        "PACKAGE_FILES = {\n" + body + ",\n}\n"
        "\n"
        "for _name, _text in PACKAGE_FILES.items():\n"
        "    _path = SRC_DIR / _name\n"
        "    _path.parent.mkdir(parents=True, exist_ok=True)\n"
        "    _path.write_text(_text, encoding='utf-8')\n"
        "if str(SRC_DIR) not in sys.path:\n"
        "    sys.path.insert(0, str(SRC_DIR))\n"
        "for _mod in [m for m in sys.modules if m.split('.')[0] in ('ddpm_ref', 'ddpm_kaggle')]:\n"
        "    del sys.modules[_mod]  # a re-run imports the files just written\n"
        "importlib.invalidate_caches()\n"
        "import ddpm_kaggle  # noqa: E402\n"
        "import ddpm_ref  # noqa: E402\n"
        "\n"
        "print(f'ddpm_ref {ddpm_ref.__version__}: {len(PACKAGE_FILES)} files written to {SRC_DIR}')"
    )


def parse_template(text: str) -> list[tuple[str, str]]:
    """[(kind, source)] with kind "code", "markdown" or "package", in order."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        m = MARKER.match(line)
        if m:
            kind = m.group("kind") or "code"
            if kind not in ("code", "markdown", "package"):
                raise SystemExit(f"{TEMPLATE_DIR.name}: unknown cell kind [{kind}] in line {line!r}")
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if kind == "markdown":
            bad = [ln for ln in lines if ln and not ln.startswith("#")]
            if bad:
                raise SystemExit(f"{TEMPLATE_DIR.name}: markdown line without '#': {bad[0]!r}")
            lines = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in lines]
        out.append((kind, "\n".join(lines)))
    return out


def build_notebook() -> nbformat.NotebookNode:
    """The notebook, from the cell files and the current package sources."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "pygments_lexer": "ipython3"},
        "kaggle": {"accelerator": "nvidiaTeslaT4", "isInternetEnabled": False, "isGpuEnabled": True},
    }
    files = package_files()
    cells = [cell for part in template_parts() for cell in parse_template(part.read_text(encoding="utf-8"))]
    for i, (kind, source) in enumerate(cells):
        cid = f"cell-{i:03d}"
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(source, id=cid))
        elif kind == "package":
            cell = nbformat.v4.new_code_cell(package_cell(files), id=cid)
            cell.metadata = {"jupyter": {"source_hidden": True}, "tags": ["package-sources"]}
            nb.cells.append(cell)
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source, id=cid))
    nbformat.validate(nb)
    return nb


def render() -> str:
    """The notebook file's exact text."""
    return nbformat.writes(build_notebook()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed notebook is out of date")
    parser.add_argument("--out", type=Path, default=NOTEBOOK, help=f"where to write (default {NOTEBOOK})")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date with ddpm_ref/, kaggle/notebook/ or kaggle/ddpm_kaggle/: run "
                  "python kaggle/build.py",
                  file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text) // 1024} KiB, {len(build_notebook().cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
