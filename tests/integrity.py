"""Grading integrity: a student's exercise must be the student's own work, and the grader must be the grader.

Two guards, used by :func:`tests.harness.isolated` (so by ``run_checks``, ``pytest --impl`` and nbgrader alike):

* **Own work.** While the checks of an exercise run, the reference objects of that exercise (``ddpm_ref.q_sample``
  for ``q_sample``; every method of ``ddpm_ref.ResBlock`` for ``ResBlock``) are tripwires: their code is swapped
  for a trampoline that looks down the call stack and refuses to run when the student's code called it, at any
  depth and under any alias (the swap changes the function object itself, so an import under another name, a
  default argument or a closure reaches the tripwire too). Calls from the checks themselves, which compute the
  expected values with the reference, run the original code. The student's definition being the reference object
  itself (imported, aliased, wrapped by ``functools``) or a subclass of the reference class is refused by identity.
  The reference of *other* exercises stays allowed: a lesson tells students to build on earlier pieces.
* **The grader untouched.** :func:`tampering` lists functions in ``ddpm_ref`` and ``tests`` modules whose code was
  written outside the installed libraries (a notebook cell that assigned ``tests.harness.run_checks = ...`` or
  replaced an assertion helper). The notebooks' runner (``ddpm_ref.course.run_checks``) additionally imports the
  checks afresh for every check cell and restores ``ddpm_ref``'s own objects, so such a cell changes nothing but
  is reported once.

What counts as the student's code: code objects of the functions and classes in the graded namespace that were
compiled from a file outside ``ddpm_ref``, ``tests`` and the Python installation (notebook cells, exec'd text).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import site
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import CodeType, FunctionType, MethodType, ModuleType
from typing import Any

__all__ = [
    "ReferenceUsed",
    "foreign",
    "guard_own_work",
    "is_reference",
    "student_code",
    "tampering",
]

#: per exercise, what the student may use instead (shown in the message when the reference is used)
ALLOWED: dict[str, str] = {
    "linear_beta_schedule": "`torch.linspace`",
    "cosine_beta_schedule": "`torch.cos` and `torch.clamp`",
    "NoiseSchedule": "`torch.cumprod`",
    "q_sample": "`schedule.gather`",
    "predict_x0": "`schedule.gather`",
    "q_posterior": "`schedule.gather`",
    "SinusoidalTimeEmbedding": "`torch.sin` and `torch.cos`",
    "ResBlock": "`nn.GroupNorm`, `nn.Conv2d` and `nn.Linear`",
    "SelfAttention": "`F.scaled_dot_product_attention`",
    "UNet": "`ResBlock`, `SelfAttention` and `SinusoidalTimeEmbedding`",
    "ddpm_loss": "`q_sample`",
    "train_step": "`ddpm_loss`",
    "p_sample": "`predict_x0` and `q_posterior`",
    "sample": "`p_sample`",
    "reconstruct": "`q_sample` and `p_sample`",
    "psnr": "`skimage.metrics`",
    "ssim": "`skimage.metrics`",
    "ddim_step": "`predict_x0`",
    "ddim_sample": "`ddim_step` and `ddim_timesteps`",
    "karras_heun_step": "`predict_x0` and `predict_eps`",
    "dpm_solver_pp_2m_step": "`predict_x0` and `math.expm1`",
}

#: reference objects that do an exercise's whole job under another name
ALIASES: dict[str, tuple[str, ...]] = {"sample": ("p_sample_loop",), "ddim_sample": ("karras_euler_sample", "_walk")}

_TRAMPOLINE = "__ddpm_course_tripwire__"


class ReferenceUsed(AssertionError):  # noqa: N818 (reads as what happened)
    """The student's definition is, or calls, the reference of its own exercise (``how``: is, subclasses, wraps
    or calls)."""

    how: str = "calls"


# ------------------------------------------------------------------------------------------------ whose code


@functools.cache
def _library_roots() -> tuple[str, ...]:
    here = Path(__file__).resolve().parent
    roots = {str(here), str(here.parent / "ddpm_ref")}
    with contextlib.suppress(Exception):
        roots.add(str(Path(importlib.import_module("ddpm_ref").__file__).resolve().parent))
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            roots.add(str(Path(sysconfig.get_paths()[key]).resolve()))
    with contextlib.suppress(Exception):
        roots.update(str(Path(p).resolve()) for p in site.getsitepackages())
    with contextlib.suppress(Exception):
        roots.add(str(Path(site.getusersitepackages()).resolve()))
    roots.update(str(Path(p).resolve()) for p in sys.path if "site-packages" in p or "dist-packages" in p)
    return tuple(sorted(roots))


@functools.lru_cache(maxsize=4096)
def _foreign_file(filename: str) -> bool:
    if filename.startswith("<frozen") or filename in ("<string>",):
        return False
    if filename.startswith("<"):
        return True  # exec'd text: "<student cell>", "<ipython-input-…>"
    try:
        path = str(Path(filename).resolve())
    except (OSError, ValueError):
        return True
    return not any(path == root or path.startswith(root + "/") for root in _library_roots())


def foreign(code: CodeType) -> bool:
    """True for code compiled outside ``ddpm_ref``, ``tests`` and the Python installation (a student's)."""
    return _foreign_file(code.co_filename)


def _unwrap(obj: Any) -> Any:
    """The function behind a bound method, staticmethod, classmethod or ``functools.partial``."""
    for _ in range(20):
        if isinstance(obj, (staticmethod, classmethod, MethodType)):
            obj = obj.__func__
        elif isinstance(obj, functools.partial):
            obj = obj.func
        else:
            return obj
    return obj


def _class_functions(cls: type) -> Iterator[FunctionType]:
    for member in vars(cls).values():
        if isinstance(member, property):
            candidates: Iterable[Any] = (member.fget, member.fset, member.fdel)
        else:
            candidates = (_unwrap(member),)
        for fn in candidates:
            if isinstance(fn, FunctionType):
                yield fn


def _codes(code: CodeType, into: set[CodeType]) -> None:
    if code in into:
        return
    into.add(code)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _codes(const, into)


def student_code(namespace: Iterable[Any]) -> frozenset[CodeType]:
    """The code objects (nested ones included) of the student-written functions and classes among ``namespace``."""
    found: set[CodeType] = set()
    for obj in namespace:
        obj = _unwrap(obj)
        fns: list[FunctionType] = []
        if isinstance(obj, FunctionType):
            fns.append(obj)
        elif inspect.isclass(obj):
            for klass in obj.__mro__:
                fns.extend(_class_functions(klass))
        for fn in fns:
            while isinstance(fn, FunctionType):
                if foreign(fn.__code__):
                    _codes(fn.__code__, found)
                fn = getattr(fn, "__wrapped__", None)
    return frozenset(found)


# ------------------------------------------------------------------------------------------------ the reference


def _ddpm_modules() -> list[ModuleType]:
    return [m for name, m in list(sys.modules.items())
            if isinstance(m, ModuleType) and (name == "ddpm_ref" or name.startswith("ddpm_ref."))]


def reference_objects(exercise: str) -> list[Any]:
    """Every object that ``ddpm_ref`` or one of its modules exposes as the exercise (or an alias of it)."""
    importlib.import_module("ddpm_ref")
    names = (exercise, *ALIASES.get(exercise, ()))
    found: dict[int, Any] = {}
    for module in _ddpm_modules():
        for name in names:
            obj = vars(module).get(name)
            if obj is not None and (callable(obj) or inspect.isclass(obj)):
                found.setdefault(id(obj), obj)
    return list(found.values())


def is_reference(obj: Any, refs: list[Any]) -> str | None:
    """How ``obj`` is the reference ('is', 'subclasses', 'wraps'), or None."""
    seen = 0
    while obj is not None and seen < 20:
        seen += 1
        if any(obj is r for r in refs):
            return "is" if seen == 1 else "wraps"
        if inspect.isclass(obj) and any(inspect.isclass(r) and issubclass(obj, r) for r in refs):
            return "subclasses"
        nxt = _unwrap(obj)
        if nxt is obj:
            nxt = getattr(obj, "__wrapped__", None)
        obj = nxt
    return None


def reference_used(exercise: str, how: str) -> ReferenceUsed:
    """The refusal for ``exercise``'s definition that ``how`` (is, subclasses, wraps, calls) the reference."""
    error = ReferenceUsed(message(exercise, how))
    error.how = how
    return error


def message(exercise: str, how: str) -> str:
    allowed = ALLOWED.get(exercise)
    tail = f"earlier pieces such as {allowed} are fine" if allowed else "earlier pieces of the course are fine"
    verb = {"is": "is the reference", "subclasses": "subclasses the reference", "wraps": "wraps the reference",
            "calls": "calls the reference"}[how]
    return f"your `{exercise}` {verb} `ddpm_ref.{exercise}`: write it yourself; {tail}"


def _tripwired_functions(refs: list[Any]) -> list[FunctionType]:
    """The Python functions whose frames run when a reference object is used: innermost functions of wrapped
    functions, and every method of reference classes (and of their ``ddpm_ref`` base classes)."""
    fns: dict[int, FunctionType] = {}
    for ref in refs:
        if inspect.isclass(ref):
            for klass in ref.__mro__:
                if klass.__module__.split(".")[0] == "ddpm_ref":
                    for fn in _class_functions(klass):
                        fns.setdefault(id(fn), fn)
            continue
        fn = _unwrap(ref)
        while isinstance(getattr(fn, "__wrapped__", None), FunctionType):
            fn = fn.__wrapped__
        if isinstance(fn, FunctionType):
            fns.setdefault(id(fn), fn)
    return list(fns.values())


@functools.lru_cache(maxsize=1024)
def _trampoline_code(key: int, freevars: tuple[str, ...]) -> CodeType:
    """``def _(*args, **kwargs): return __ddpm_course_tripwire__(key, args, kwargs)`` with the given free vars."""
    lines = ["def _outer():", *(f"    {v} = None" for v in freevars), "    def _tripwire(*args, **kwargs):"]
    if freevars:
        lines.append(f"        ({', '.join(freevars)},)")
    lines += [f"        return {_TRAMPOLINE}({key}, args, kwargs)", "    return _tripwire"]
    ns: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<ddpm-course tripwire>", "exec"), ns)  # noqa: S102
    return ns["_outer"]().__code__


@contextlib.contextmanager
def guard_own_work(impl: Any, exercise: str, definition: Any) -> Iterator[None]:
    """Refuse, while the block runs, the student's use of the reference of ``exercise`` (see the module doc)."""
    refs = reference_objects(exercise)
    how = is_reference(definition, refs)
    if how is not None:
        raise reference_used(exercise, how)
    mine = student_code(vars(impl).values() if hasattr(impl, "__dict__") else ())
    if not mine:
        yield
        return
    table: dict[int, FunctionType] = {}
    hits: list[str] = []

    def dispatch(key: int, args: tuple, kwargs: dict) -> Any:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code in mine:
                hits.append(exercise)
                raise reference_used(exercise, "calls")
            frame = frame.f_back
        return table[key](*args, **kwargs)

    swapped: list[tuple[FunctionType, CodeType, dict[str, Any], bool]] = []
    try:
        for fn in _tripwired_functions(refs):
            if fn.__code__.co_filename == "<ddpm-course tripwire>":
                continue  # already guarded by an enclosing check
            original = FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
            original.__kwdefaults__ = fn.__kwdefaults__
            original.__qualname__ = fn.__qualname__
            key = len(table)
            table[key] = original
            g = fn.__globals__
            swapped.append((fn, fn.__code__, g, _TRAMPOLINE in g))
            g[_TRAMPOLINE] = dispatch
            fn.__code__ = _trampoline_code(key, fn.__code__.co_freevars)
        try:
            yield
        except ReferenceUsed:
            raise
        except BaseException:
            if hits:  # the student's code caught the refusal and failed some other way: say why
                raise reference_used(exercise, "calls") from None
            raise
        if hits:  # the refusal was caught by the student's code and the check passed anyway
            raise reference_used(exercise, "calls")
    finally:
        for fn, code, g, had in reversed(swapped):
            fn.__code__ = code
            if not had:
                g.pop(_TRAMPOLINE, None)


# ------------------------------------------------------------------------------------------------ tampering


def tampering(modules: Mapping[str, ModuleType] | None = None) -> list[str]:
    """Names in the grader's modules (``ddpm_ref.*`` and ``tests.*``; or ``modules``) bound to functions written
    outside them, e.g. in a notebook cell.

    Covers module attributes, the methods of the modules' own classes, and functions whose ``__code__`` was
    replaced. Returns "module.name" strings, sorted; empty when nothing was changed.
    """
    found: set[str] = set()
    prefixes = ("ddpm_ref", "tests")
    for name, module in list((sys.modules if modules is None else modules).items()):
        if not isinstance(module, ModuleType) or name.split(".")[0] not in prefixes:
            continue
        for attr, value in list(vars(module).items()):
            fn = _unwrap(value)
            if isinstance(fn, FunctionType) and foreign(fn.__code__):
                found.add(f"{name}.{attr}")
            elif inspect.isclass(value) and value.__module__ == name:
                for member_name, member in list(vars(value).items()):
                    member = _unwrap(member)
                    if isinstance(member, FunctionType) and foreign(member.__code__):
                        found.add(f"{name}.{attr}.{member_name}")
    return sorted(found)
