"""*Run All* past unfinished exercises, in a lesson's kernel (installed by :func:`ddpm_ref.course.setup`).

Every cell but a check cell is rewritten as ``try: <cell> except Exception as e: if not _skip_cell(...): raise``. A
cell that calls an exercise whose stub still raises ``NotImplementedError`` then prints one line saying which
exercise to finish and draws nothing, and whatever it was making (an empty list of losses, a model half set up) is
taken away with it, so the cells below say the same line instead of failing on half a result or running on
something that is not the student's. A failed check cell shows its failure without stopping the cells below it
(except while nbgrader grades: then every error stays an error).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FunctionType, ModuleType
from typing import Any

from .pictures import env_flag as _flag

__all__ = ["install", "unfinished_exercise"]

#: where the exercises' names come from (set by :func:`install`); without it any stub in a cell counts
_EXERCISES: list[Callable[[], Sequence[str]]] = []


def install(exercises: Callable[[], Sequence[str]] | None = None) -> None:
    """In an IPython kernel, rewrite every cell from now on as the module docstring says (once per kernel)."""
    if exercises is not None:
        _EXERCISES[:] = [exercises]
    shell = _ipython()
    if shell is not None and not any(isinstance(t, _RunPastUnfinished) for t in shell.ast_transformers):
        shell.ast_transformers.append(_RunPastUnfinished())
        shell.events.register("post_run_cell", _keep_going_after_failed_check)


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _is_cell_code(filename: str) -> bool:
    """Whether code was compiled from a notebook cell (ipykernel's temporary files, IPython's input names)."""
    return "ipykernel_" in filename or filename.startswith("<ipython-input")


#: names a cell could not bind because it needed an unfinished exercise → that exercise
_PENDING: dict[str, str] = {}


def unfinished_exercise(error: BaseException) -> str | None:
    """The exercise a cell is waiting for, if ``error`` means one is unfinished; else None.

    That is a bare ``NotImplementedError()`` raised directly by an exercise's function or method defined in a
    notebook cell (its stub; the result names the exercise, e.g. ``ResBlock`` for ``ResBlock.forward``),
    or a ``NameError`` for a name that an earlier cell could not define because it needed an unfinished exercise.
    """
    if isinstance(error, NameError) and getattr(error, "name", None) in _PENDING:
        return _PENDING[error.name]
    if type(error) is not NotImplementedError or error.args or error.__traceback__ is None:
        return None  # a stub is a bare `raise NotImplementedError()`
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if not _is_cell_code(code.co_filename) or code.co_name == "<module>":
        return None
    name = getattr(code, "co_qualname", code.co_name).split(".")[0]
    try:
        exercises = _EXERCISES[0]() if _EXERCISES else None
    except (FileNotFoundError, ImportError, AttributeError):  # no checks at hand: any stub in a cell counts
        exercises = None
    return name if exercises is None or name in exercises else None


def _skip_cell(error: BaseException, binds: Sequence[str], namespace: Mapping[str, Any]) -> bool:
    """Called by a cell that raised: if it needs an unfinished exercise, replace its output by one line
    (and its figures by nothing), remember the names it failed to bind, and return True (the cell then ends
    quietly); otherwise False (the cell re-raises)."""
    exercise = unfinished_exercise(error)
    if exercise is None:
        return False
    before = _BEFORE[0]
    for name in binds:  # what the cell made before it stopped is unfinished too (an empty list, a model half set)
        value = namespace.get(name, _BEFORE)
        if value is _BEFORE or (value is not before.get(name, _BEFORE) and _partial(value)):
            _PENDING[name] = exercise
            if value is not _BEFORE:
                del namespace[name]  # type: ignore[attr-defined]
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    if getattr(_ipython(), "kernel", None) is not None:  # a Jupyter kernel: drop what the cell showed so far
        from IPython.display import clear_output

        clear_output()
    if isinstance(error, NameError):
        print(f"finish the exercise `{exercise}` first: this cell uses `{error.name}`, which a cell above "
              f"could not make without it")
    else:
        print(f"finish the exercise `{exercise}` first: this cell runs your `{exercise}`, "
              "which still raises NotImplementedError")
    return True


#: the value of the last expression of the running cell, kept for Jupyter to display
_LAST: list[Any] = [None]
#: the values the running cell's names held before it ran (``_BEFORE`` itself stands for "not bound")
_BEFORE: list[dict[str, Any]] = [{}]


def _snapshot(names: Sequence[str], namespace: Mapping[str, Any]) -> None:
    _BEFORE[0] = {n: namespace.get(n, _BEFORE) for n in names}


def _partial(value: Any) -> bool:
    """Whether a value a stopped cell bound is a result it was making (data, a model), not a module it imported or a
    function or class it defined (those are whole, and later cells may use them)."""
    return not isinstance(value, (ModuleType, FunctionType, type))


def _keep(value: Any) -> None:
    _LAST[0] = value


def _last_value() -> Any:
    """The value of the cell's last expression, kept by ``_keep`` (None when the cell was skipped)."""
    value, _LAST[0] = _LAST[0], None
    return value


def _course_call(attr: str, *args: ast.expr) -> ast.Call:
    func = ast.Attribute(value=ast.parse("__import__('ddpm_ref.run_all', fromlist=['_'])", mode="eval").body,
                         attr=attr, ctx=ast.Load())
    return ast.Call(func=func, args=list(args), keywords=[])


def _binds(body: Sequence[ast.stmt]) -> list[str]:
    """Top-level names a cell binds (def, class, assignment targets, for targets, imports)."""
    names: list[str] = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [(a.asname or a.name).split(".")[0] for a in node.names]
        else:
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
                targets = [node.target]
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
                names += _binds(node.body)
            elif isinstance(node, (ast.If, ast.Try)):
                names += _binds(node.body) + _binds(node.orelse)
            for target in targets:
                names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    return list(dict.fromkeys(names))


def _calls_run_checks(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "run_checks") or (
                    isinstance(f, ast.Attribute) and f.attr == "run_checks"):
                return True
    return False


class _RunPastUnfinished(ast.NodeTransformer):
    """Rewrites every cell but check cells as ``try: <cell> except Exception as e: if not _skip_cell(...): raise``.

    A last expression is kept inside the ``try`` and handed to a last statement ``_last_value()`` after it, so
    Jupyter still displays its value (nothing when the cell was skipped). Line numbers are kept, so tracebacks
    point at the student's lines and show no frame of the course.
    """

    def visit_Module(self, node: ast.Module) -> ast.Module:
        _LAST[0] = None
        body = node.body
        if not body or _calls_run_checks(node) or any(
                isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in body):
            return node
        err = "_ddpm_course_error"
        binds = ast.List(elts=[ast.Constant(n) for n in _binds(body)], ctx=ast.Load())
        globs = ast.Call(func=ast.Name("globals", ast.Load()), args=[], keywords=[])
        handler = ast.ExceptHandler(
            type=ast.Name("Exception", ast.Load()), name=err,
            body=[ast.If(test=ast.UnaryOp(ast.Not(), _course_call("_skip_cell", ast.Name(err, ast.Load()),
                                                                  binds, globs)),
                         body=[ast.Raise()], orelse=[])])
        last = body[-1] if isinstance(body[-1], ast.Expr) else None
        inner = list(body)
        if last is not None:
            inner[-1] = ast.copy_location(ast.Expr(_course_call("_keep", last.value)), last)
        new: list[ast.stmt] = [
            ast.copy_location(ast.Expr(_course_call("_snapshot", binds, globs)), body[0]),
            ast.copy_location(ast.Try(body=inner, handlers=[handler], orelse=[], finalbody=[]), body[0])]
        if last is not None:
            new.append(ast.copy_location(ast.Expr(_course_call("_last_value")), last))
        node.body = new
        return ast.fix_missing_locations(node)


def _keep_going_after_failed_check(result: Any) -> None:
    """After a check cell fails, let *Run All* go on to the cells below (its failure stays shown as an error).

    Only outside grading: nbgrader (``NBGRADER_EXECUTION``) keeps every error, and it scores a check cell by the
    error in its output, which stays either way.
    """
    error = getattr(result, "error_in_exec", None)
    if not isinstance(error, AssertionError) or _flag("NBGRADER_EXECUTION"):
        return
    info = getattr(result, "info", None)
    source = getattr(info, "raw_cell", "") or ""
    try:
        is_check = _calls_run_checks(ast.parse(source))
    except SyntaxError:
        return
    if is_check:
        result.error_in_exec = None
