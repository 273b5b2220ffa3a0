"""What the lesson notebooks share: the setup, the check runner, the ``FAST`` switch, and the picture helpers of
:mod:`ddpm_ref.pictures` (re-exported here).

``setup()`` (the setup cell of every lesson calls it) seeds torch, picks the CPU threads for the machine's load
(:func:`ddpm_ref.speed.perf.cpu_threads`), and lets *Run All* pass unfinished exercises: a cell that calls an
exercise whose stub still raises ``NotImplementedError`` prints one line saying which exercise to finish and
draws nothing, and a failed check cell shows its failure without stopping the cells below it (except while
nbgrader grades: then every error stays an error).

``run_checks(name, globals())`` runs the checks registered for an exercise in the repository's ``tests/``
folder (found next to the installed package for an editable install, or under ``$DDPM_COURSE_ROOT``, or
in a parent of the working directory). ``FAST`` is true while nbgrader grades (``NBGRADER_EXECUTION``) or
when ``DDPM_FAST`` is set: heavy cells shrink.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

import torch

from .pictures import animate, show_images, show_strip, t_slider, to_numpy_image
from .pictures import env_flag as _flag

__all__ = ["FAST", "setup", "unfinished_exercise", "course_root", "run_checks", "to_numpy_image", "show_images",
           "show_strip", "animate", "t_slider"]


#: True while nbgrader executes a notebook (it sets NBGRADER_EXECUTION) or when DDPM_FAST=1: heavy cells shrink.
FAST: bool = _flag("NBGRADER_EXECUTION") or _flag("DDPM_FAST")


def course_root() -> Path:
    """The repository folder that holds ``tests/harness.py``.

    Looked for, in order: next to the installed ``ddpm_ref`` package (editable install), in
    ``$DDPM_COURSE_ROOT``, then in the working directory and its parents.
    """
    candidates = [Path(__file__).resolve().parent.parent]
    if os.environ.get("DDPM_COURSE_ROOT"):
        candidates.append(Path(os.environ["DDPM_COURSE_ROOT"]).expanduser().resolve())
    cwd = Path.cwd().resolve()
    candidates += [cwd, *cwd.parents]
    for root in candidates:
        if (root / "tests" / "harness.py").is_file():
            return root
    raise FileNotFoundError(
        "cannot find the course's tests/ folder: run `pip install -e .` in the repository, "
        "or set DDPM_COURSE_ROOT to the repository folder"
    )


class CheckFailed(AssertionError):
    """A check cell's failure: IPython shows this one line, not a traceback through the grader."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


def _harness() -> Any:
    """``tests.harness`` as already imported (for its lists; checks always run through :func:`_fresh_harness`)."""
    root = str(course_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("tests.harness")


@contextlib.contextmanager
def _fresh_harness() -> Iterator[tuple[Any, list[str]]]:
    """``tests.harness`` imported afresh from disk with every check, and the grader names the notebook replaced.

    Every ``tests`` module is taken out of ``sys.modules`` and imported again, so attributes a notebook cell
    assigned on the old ones (``tests.harness.run_checks = ...``, an assertion helper) are not used. Afterwards
    the old modules come back, unless they had been changed: then the fresh ones stay.
    """
    _harness()  # the repository on sys.path

    def take() -> dict[str, ModuleType]:
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "tests" or k.startswith("tests.")}

    old, changed = take(), []
    try:
        harness = importlib.import_module("tests.harness")
        harness.load_all_checks()
        changed = harness.integrity.tampering(modules=old)
        yield harness, changed
    finally:
        fresh = take()
        sys.modules.update(old if old and not changed else fresh)


def run_checks(name: str, namespace: Mapping[str, Any] | Any, hidden: bool = False) -> None:
    """Run the checks of exercise ``name`` on the definitions in ``namespace`` (a notebook's ``globals()``).

    Prints one line per check; raises :class:`CheckFailed` (an AssertionError) when one fails, so that
    nbgrader scores the cell 0. ``hidden=True`` runs only the hidden checks (nbgrader's hidden test cells).
    The checks are imported afresh for every call and ``ddpm_ref``'s own objects are restored first: a
    notebook that replaced part of the grader scores this cell 0 with a message saying so, and the real
    checks run from the next cell on.
    """
    if _flag("DDPM_JUDGED"):  # nbgrader's sandboxed kernel: the judge scores this cell from outside
        print(f"{name}: checked by the course's grader, outside this notebook")
        return
    changed = _GRADER.restore()
    try:
        with _fresh_harness() as (harness, replaced):
            harness.run_checks(name, namespace, hidden=hidden, tampered=sorted({*changed, *replaced}))
    except AssertionError as e:  # one short line instead of a traceback through the harness
        raise CheckFailed(str(e)) from None


class _Grader:
    """What the notebooks must not be able to change: this module's own functions and ``ddpm_ref``'s objects.

    A snapshot taken when this module is first imported (a lesson's setup cell, before any student code):
    the functions and classes bound in every loaded ``ddpm_ref`` module, the methods of ``ddpm_ref``'s classes
    and the code of its functions. :meth:`restore` puts back whatever differs and returns its names.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.modules: dict[str, tuple[ModuleType, dict[str, Any]]] = {}
        self.classes: dict[type, dict[str, Any]] = {}
        self.code: dict[Any, tuple[Any, Any, Any]] = {}
        for name, module in list(sys.modules.items()):
            if isinstance(module, ModuleType) and (name == "ddpm_ref" or name.startswith("ddpm_ref.")):
                owned = {k: v for k, v in vars(module).items() if callable(v) and not isinstance(v, ModuleType)}
                self.modules[name] = (module, owned)
                for value in owned.values():
                    self._remember(value)

    def _remember(self, value: Any) -> None:
        if inspect.isclass(value) and value.__module__.startswith("ddpm_ref") and value not in self.classes:
            self.classes[value] = dict(vars(value))
            for member in vars(value).values():
                self._remember(getattr(member, "__func__", member))
        elif isinstance(value, FunctionType) and value.__module__ and value.__module__.startswith("ddpm_ref"):
            self.code[value] = (value.__code__, value.__defaults__, value.__kwdefaults__)

    def restore(self) -> list[str]:
        changed = self.attempts[:]
        self.attempts.clear()
        for name, (module, owned) in self.modules.items():
            current = vars(module)
            for key, value in owned.items():
                if current.get(key) is not value:
                    changed.append(f"{name}.{key}")
                    current[key] = value
        for cls, members in self.classes.items():
            for key, value in members.items():
                if vars(cls).get(key) is not value:
                    changed.append(f"{cls.__module__}.{cls.__qualname__}.{key}")
                    type.__setattr__(cls, key, value)
        for fn, (code, defaults, kwdefaults) in self.code.items():
            if fn.__code__ is not code or fn.__defaults__ is not defaults or fn.__kwdefaults__ is not kwdefaults:
                changed.append(f"{fn.__module__}.{fn.__qualname__}")
                fn.__code__, fn.__defaults__, fn.__kwdefaults__ = code, defaults, kwdefaults
        return sorted(set(changed))


class _LockedModule(ModuleType):
    """This module, with its public functions read-only: assigning one (by attribute or through ``vars()``) is
    recorded and has no effect on what ``from ddpm_ref.course import run_checks`` gets."""

    def __getattribute__(self, name: str) -> Any:
        value = ModuleType.__getattribute__(self, name)
        if name in __all__ or name in _PRIVATE_RUNNER:
            pristine = _GRADER.modules[__name__][1].get(name, value)
            if value is not pristine:
                _GRADER.attempts.append(f"{__name__}.{name}")
                return pristine
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in __all__ or name in _PRIVATE_RUNNER:
            _GRADER.attempts.append(f"{__name__}.{name}")
            return
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in __all__ or name in _PRIVATE_RUNNER:
            _GRADER.attempts.append(f"{__name__}.{name}")
            return
        super().__delattr__(name)


_PRIVATE_RUNNER = ("_fresh_harness", "_Grader", "_GRADER", "CheckFailed", "course_root")


# ------------------------------------------------------------------------------------------------ setup


def setup(seed: int = 0, *, threads: int | None = None) -> None:
    """Prepare a lesson's kernel: seed torch, set the CPU threads, and let *Run All* pass unfinished exercises.

    ``threads`` defaults to :func:`ddpm_ref.speed.perf.cpu_threads` (the cores the load average leaves idle): torch's
    one-thread-per-core default spins waiting for a core that a browser or another program keeps busy, which
    made a lesson many times slower. In an IPython kernel, also registers the cell hooks described in the
    module docstring (once per kernel; calling ``setup()`` again only reseeds and resets the threads).
    """
    from ddpm_ref.speed.perf import cpu_threads

    torch.manual_seed(seed)
    torch.set_num_threads(threads if threads is not None else cpu_threads())
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
        exercises = _harness().EXERCISES
    except (FileNotFoundError, ImportError, AttributeError):  # no checks at hand: any stub in a cell counts
        return name
    return name if name in exercises else None


def _skip_cell(error: BaseException, binds: Sequence[str], namespace: Mapping[str, Any]) -> bool:
    """Called by a cell that raised: if it needs an unfinished exercise, replace its output by one line
    (and its figures by nothing), remember the names it failed to bind, and return True (the cell then ends
    quietly); otherwise False (the cell re-raises)."""
    exercise = unfinished_exercise(error)
    if exercise is None:
        return False
    for name in binds:
        if name not in namespace:
            _PENDING[name] = exercise
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


def _keep(value: Any) -> None:
    _LAST[0] = value


def _last_value() -> Any:
    """The value of the cell's last expression, kept by ``_keep`` (None when the cell was skipped)."""
    value, _LAST[0] = _LAST[0], None
    return value


def _course_call(attr: str, *args: ast.expr) -> ast.Call:
    func = ast.Attribute(value=ast.parse("__import__('ddpm_ref.course', fromlist=['_'])", mode="eval").body,
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
        new: list[ast.stmt] = [ast.copy_location(ast.Try(body=inner, handlers=[handler], orelse=[], finalbody=[]),
                                                 body[0])]
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


_GRADER = _Grader()
sys.modules[__name__].__class__ = _LockedModule
