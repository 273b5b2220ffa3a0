"""Load a student's definitions from notebooks, for ``pytest tests --impl NOTEBOOK_OR_FOLDER``.

Each notebook's code cells run in a fresh namespace, in order, with the working directory (and the front of
``sys.path``) at the notebook's folder, matplotlib on the Agg backend and ``DDPM_FAST=1``. Skipped: cells
tagged ``heavy``, cells that call ``run_checks`` and nbgrader grade cells (``metadata.nbgrader.grade``).
IPython magics (``%…``, ``!…``) are dropped; a cell that raises is reported on stderr and skipped.

Only names a notebook *defines* (def, class or assignment at the top level of a cell) are kept, not names it
imports: a later lesson's ``from ddpm_ref import q_sample`` never hides an earlier lesson's ``q_sample``.
With a folder, notebooks load in sorted path order and a later definition wins. The result is an
:class:`~tests.harness.Impl`: asking it for a name no notebook defines raises ``MissingDefinition``, which
the pytest wiring turns into a skip naming the missing definition.
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
import re
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import Impl

__all__ = ["CellError", "load_impl", "notebook_paths", "run_notebook"]

_RUN_CHECKS = re.compile(r"\brun_checks\s*\(")


@dataclass
class CellError:
    """A cell that raised while loading: where, and what."""

    notebook: Path
    cell: int  # index among the notebook's cells (markdown included), 0-based
    error: str  # "NameError: name 'x' is not defined (line 3)"
    defines: tuple[str, ...]  # the names the cell would have defined

    def __str__(self) -> str:
        return f"{self.notebook.name} cell {self.cell} raised {self.error}"


def notebook_paths(path: str | Path) -> list[Path]:
    """The notebook itself, or every ``*.ipynb`` under a folder (recursively, sorted; checkpoints ignored)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        if not found:
            raise FileNotFoundError(f"no .ipynb notebooks under {path}: pass a notebook or a folder of notebooks")
        return found
    if path.suffix != ".ipynb" or not path.is_file():
        raise FileNotFoundError(f"{path} is not a notebook (.ipynb) or a folder of notebooks")
    return [path]


def _skip_reason(cell: Any) -> str | None:
    tags = cell.get("metadata", {}).get("tags", []) or []
    if "heavy" in tags:
        return "heavy"
    if (cell.get("metadata", {}).get("nbgrader") or {}).get("grade") is True:
        return "nbgrader grade cell"
    if _RUN_CHECKS.search(cell.get("source", "")):
        return "calls run_checks"
    return None


def _strip_magics(source: str) -> str | None:
    """Drop IPython line magics and shell escapes (keeping line numbers); None for a cell magic cell."""
    if source.lstrip().startswith("%%"):
        return None
    lines = source.splitlines()
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def _top_level_names(tree: ast.Module, exercise: str | None = None) -> tuple[str, ...]:
    """Names a cell defines at its top level; in an exercise's own cell, importing the exercise's name counts too
    (so that a notebook that imports the reference as its answer is graded, and refused, rather than skipped)."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif exercise and isinstance(node, (ast.Import, ast.ImportFrom)):
            names.extend(a.asname or a.name for a in node.names if (a.asname or a.name) == exercise)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.extend(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return tuple(dict.fromkeys(names))


@contextlib.contextmanager
def _notebook_context(folder: Path) -> Iterator[None]:
    old_cwd, old_path = os.getcwd(), list(sys.path)
    old_env = {k: os.environ.get(k) for k in ("MPLBACKEND", "DDPM_FAST")}
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["DDPM_FAST"] = "1"
    with contextlib.suppress(Exception):
        import matplotlib

        matplotlib.use("Agg", force=True)
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")


def _base_namespace() -> dict[str, Any]:
    """The lessons' usual imports, so that one failing setup line does not take every later cell down."""
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    return {"__name__": "__main__", "math": math, "np": np, "torch": torch, "nn": nn, "F": F}


def run_notebook(path: Path) -> tuple[dict[str, Any], dict[str, Any], list[CellError]]:
    """Run one notebook's code cells; returns (namespace, {defined name: value}, cell errors)."""
    import nbformat

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    ns = _base_namespace()
    defined: dict[str, Any] = {}
    errors: list[CellError] = []
    with _notebook_context(path.parent):
        for index, cell in enumerate(nb.cells):
            if cell.get("cell_type") != "code" or _skip_reason(cell):
                continue
            source = _strip_magics(cell.get("source", ""))
            if not source or not source.strip():
                continue
            filename = f"{path.name} [cell {index}]"
            try:
                tree = ast.parse(source, filename=filename)
            except SyntaxError as e:
                errors.append(CellError(path, index, f"SyntaxError: {e.msg} (line {e.lineno})", ()))
                continue
            names = _top_level_names(tree, (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id"))
            before = {n: ns.get(n, _MISSING) for n in names}
            try:
                exec(compile(tree, filename, "exec"), ns)  # noqa: S102 (that is the point: the student's code)
            except BaseException as e:  # noqa: BLE001 (SystemExit/KeyboardInterrupt from a cell must not end grading)
                if isinstance(e, KeyboardInterrupt):
                    raise
                frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
                where = f" (line {frames[-1].lineno})" if frames else ""
                errors.append(CellError(path, index, f"{type(e).__name__}: {e}{where}", names))
                print(f"ddpm-course: {errors[-1]}; skipped", file=sys.stderr)
            for n in names:  # what the cell did define, even if it raised later on
                if n in ns and ns[n] is not before[n]:
                    defined[n] = ns[n]
    return ns, defined, errors


_MISSING = object()


def load_impl(path: str | Path) -> Impl:
    """The definitions of a notebook or of every notebook under a folder, as an :class:`Impl`.

    Extra attributes: ``_origin`` (what was loaded, for messages), ``_errors`` (list of :class:`CellError`)
    and ``_why_missing`` ({name: the error of the cell that should have defined it}).
    """
    paths = notebook_paths(path)
    merged: dict[str, Any] = {}
    errors: list[CellError] = []
    for nb in paths:
        _, defined, errs = run_notebook(nb)
        merged.update(defined)
        errors.extend(errs)
    impl = Impl(**{k: v for k, v in merged.items() if not k.startswith("_")})
    impl._origin = f"notebook {paths[0].name}" if len(paths) == 1 else f"the notebooks under {path}"
    impl._errors = errors
    impl._why_missing = {n: str(e) for e in errors for n in e.defines if n not in merged}
    return impl
