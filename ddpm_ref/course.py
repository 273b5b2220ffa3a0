"""What the lesson notebooks share: the setup, the check runner, the ``FAST`` switch, and the picture helpers of
:mod:`ddpm_ref.pictures` (re-exported here).

``setup()`` (the setup cell of every lesson calls it) seeds torch, picks the CPU threads for the machine's load
(:func:`ddpm_ref.speed.perf.cpu_threads`), and lets *Run All* pass unfinished exercises (:mod:`ddpm_ref.run_all`): a
cell that calls an exercise whose stub still raises ``NotImplementedError`` prints one line saying which exercise
to finish and draws nothing, and a failed check cell shows its failure without stopping the cells below it (except
while nbgrader grades: then every error stays an error).

``run_checks(name, globals())`` runs the checks registered for an exercise in the repository's ``tests/``
folder (found next to the installed package for an editable install, or under ``$DDPM_COURSE_ROOT``, or
in a parent of the working directory). ``FAST`` is true while nbgrader grades (``NBGRADER_EXECUTION``) or
when ``DDPM_FAST`` is set: heavy cells shrink.
"""

from __future__ import annotations

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

from . import run_all
from .pictures import animate, show_images, show_strip, t_slider, to_numpy_image
from .pictures import env_flag as _flag
from .run_all import unfinished_exercise

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
    run_all.install(_exercises)


def _exercises() -> Sequence[str]:
    """The exercises of the course (``tests.harness.EXERCISES``): a stub of one of them means "unfinished"."""
    return _harness().EXERCISES


_GRADER = _Grader()
sys.modules[__name__].__class__ = _LockedModule
