"""One registry of checks, run three ways: by pytest, by ``pytest --impl NOTEBOOK`` and by notebook check cells.

A check is a plain function of one argument, ``impl`` (a namespace holding the student's or the
reference's definitions), that raises ``AssertionError`` with a message a student can act on
(what was expected, what came out, a hint). Register it for an exercise with ``@check("q_sample")``;
pytest collects it like any ``test_*`` function (the ``impl`` fixture lives in conftest.py).

A check uses ``impl.<its exercise's name>`` and nothing else from ``impl``: every other piece comes from
``ddpm_ref``. While a check runs, :func:`isolated` also points the other exercises' names inside the
checked definition's globals at ``ddpm_ref`` (a wrong ``p_sample`` never fails the checks of ``sample``).

In a notebook::

    from tests.harness import run_checks
    run_checks("q_sample", globals())      # prints ✓/✗ per check, raises if any failed
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from tests import integrity

CheckFn = Callable[[Any], None]

#: the exercises of the course, in lesson order (the registry keys the notebooks use)
EXERCISES: tuple[str, ...] = (
    "linear_beta_schedule", "cosine_beta_schedule", "NoiseSchedule",  # lesson 1
    "q_sample", "predict_x0", "q_posterior",  # lesson 2
    "SinusoidalTimeEmbedding", "ResBlock", "SelfAttention", "UNet",  # lesson 3
    "ddpm_loss", "train_step",  # lesson 4
    "p_sample", "sample",  # lesson 5
    "reconstruct", "psnr", "ssim",  # lesson 6
    "ddim_step", "ddim_sample",  # lesson 7
    "LabelEmbedding", "drop_labels", "guided_eps", "cfg_sample",  # lesson 8
    "flow_matching_loss", "euler_sample", "heun_sample",  # lesson 9
    "score_from_eps", "dsm_loss", "langevin_sample", "reverse_sde_sample", "probability_flow_sample",  # lesson 10
    "reparameterize", "kl_divergence", "latent_scale_factor", "patchify", "DiTBlock",  # lesson 11
    "karras_heun_step", "dpm_solver_pp_2m_step",  # lesson 12
)

#: exercise name → list of check functions, in definition order
REGISTRY: dict[str, list[CheckFn]] = {}

TESTS_DIR = Path(__file__).resolve().parent
_REGISTERS = re.compile(r"^@check\(", re.MULTILINE)  # a module-level check registration


class MissingDefinition(AttributeError):
    """Raised when a check asks ``impl`` for a name it does not define (pytest skips, run_checks fails)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"define `{name}` first (run the cell that defines it), then run the check again")
        self.name = name


class Failure(AssertionError):
    """A failed check whose hint names the mistake behind the wrong answer: ``mistake`` is that hint, kept as a
    record (the class report counts students by it; nobody parses the message)."""

    def __init__(self, message: str, mistake: str) -> None:
        super().__init__(f"{message} Hint: {mistake}")
        self.mistake = mistake


def finding(error: BaseException | None, skipped: bool = False) -> dict[str, str]:
    """What became of one check, as a record: ``status`` (passed, skipped, failed, missing, timeout, crashed,
    cheat), with ``mistake`` (the named mistake of a failure, if its check named one) or ``reason`` (a crash's
    exception type, a cheat's kind)."""
    if error is None:
        return {"status": "skipped" if skipped else "passed"}
    if isinstance(getattr(error, "finding", None), dict):  # the grader's own errors say what they are
        return {str(k): str(v) for k, v in error.finding.items()}
    if isinstance(error, integrity.ReferenceUsed):
        return {"status": "cheat", "reason": f"reference {error.how}"}
    if isinstance(error, Tampered):
        return {"status": "cheat", "reason": "grader replaced"}
    if isinstance(error, (MissingDefinition, NotImplementedError)):
        return {"status": "missing"}
    if isinstance(error, CheckTimeout):
        return {"status": "timeout"}
    if isinstance(error, AssertionError):
        return {"status": "failed", "mistake": getattr(error, "mistake", "")}
    return {"status": "crashed", "reason": type(error).__name__}


class CheckSkipped(Exception):  # noqa: N818 (reads as a state, like pytest's Skipped)
    """Raised by a check that cannot apply to this implementation (pytest skips, run_checks prints it)."""


class Impl(SimpleNamespace):
    """The definitions under test, as attributes; asking for a missing one raises :class:`MissingDefinition`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise MissingDefinition(name)


def check(*exercises: str, hidden: bool = False) -> Callable[[CheckFn], CheckFn]:
    """Register a check for one or more exercises (``hidden`` ones run only when asked for)."""

    def deco(fn: CheckFn) -> CheckFn:
        fn.exercises = exercises  # type: ignore[attr-defined]
        fn.hidden = hidden  # type: ignore[attr-defined]
        for name in exercises:
            bucket = REGISTRY.setdefault(name, [])
            if all(f.__qualname__ != fn.__qualname__ or f.__module__ != fn.__module__ for f in bucket):
                bucket.append(fn)
        return fn

    return deco


def check_name(fn: CheckFn) -> str:
    """The name a check is shown and reported under: its function name without ``test_``."""
    return fn.__name__.removeprefix("test_")


def load_all_checks() -> None:
    """Import every ``tests/test_*.py`` module that registers checks (a line starting with ``@check(``).

    Modules without checks (cross-checks against diffusers, notebook tests) are not imported, so that a
    notebook needs neither pytest nor diffusers; a module that fails to import is reported, not fatal.
    """
    root = str(TESTS_DIR.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    for path in sorted(TESTS_DIR.glob("test_*.py")):
        name = f"tests.{path.stem}"
        if name in sys.modules:
            continue
        try:
            if not _REGISTERS.search(path.read_text(encoding="utf-8")):
                continue
            importlib.import_module(name)
        except Exception as e:  # one broken test file must not stop grading
            warnings.warn(f"could not load checks from {path.name}: {type(e).__name__}: {e}", stacklevel=2)


class CheckTimeout(AssertionError):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail a check that runs longer than ``seconds`` (SIGALRM; main thread on Unix only)."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"took longer than {seconds:g} s: is there an endless loop?")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def as_impl(namespace: Mapping[str, Any] | Any) -> Any:
    """A notebook's ``globals()``, any mapping or a module as an :class:`Impl`; an Impl passes through."""
    if isinstance(namespace, Impl):
        return namespace
    if isinstance(namespace, Mapping):
        items = dict(namespace)
    elif isinstance(namespace, ModuleType):
        items = dict(vars(namespace))
    else:
        return namespace
    impl = Impl(**{k: v for k, v in items.items() if not k.startswith("__")})
    if isinstance(namespace, ModuleType):
        impl._origin = namespace.__name__
        impl._reference = namespace is sys.modules.get("ddpm_ref")
    return impl


def reference_impl(*names: str) -> Impl:
    """An :class:`Impl` holding ``ddpm_ref``'s own definitions of ``names``, checked as the reference."""
    ref = importlib.import_module("ddpm_ref")
    impl = Impl(**{n: getattr(ref, n) for n in names})
    impl._origin, impl._reference = "ddpm_ref", True
    return impl


def _definition(impl: Any, name: str) -> Any:
    if isinstance(impl, SimpleNamespace):
        return vars(impl).get(name)
    return getattr(impl, name, None)


def _globals_of(obj: Any) -> list[dict[str, Any]]:
    """The globals dicts that the code of a function or class (its own methods) runs in."""
    fns: list[Any] = []
    if inspect.isclass(obj):
        for klass in obj.__mro__:
            if klass.__module__.split(".")[0] in ("builtins", "torch", "ddpm_ref"):
                continue
            for member in vars(klass).values():
                member = getattr(member, "__func__", member)  # staticmethod / classmethod
                if isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member):
                    fns.append(member)
    elif inspect.isfunction(obj):
        fns.append(obj)
    seen: dict[int, dict[str, Any]] = {}
    for fn in fns:
        seen.setdefault(id(fn.__globals__), fn.__globals__)
    return list(seen.values())


@contextlib.contextmanager
def isolated(impl: Any, exercise: str) -> Iterator[None]:
    """While checking ``exercise``: its definition calls ``ddpm_ref`` for every *other* exercise, and is the
    student's own work.

    The other exercises' names are swapped in the definition's globals (the notebook's namespace) and restored
    afterwards, so a mistake in ``p_sample`` cannot fail the checks of ``sample``. Unless ``impl`` is the
    reference itself, the definition must not be, subclass, wrap or call ``ddpm_ref``'s own ``exercise``
    (:func:`tests.integrity.guard_own_work`), and the grader's modules must be untouched
    (:func:`tests.integrity.tampering`).
    """
    target = _definition(impl, exercise)
    reference = getattr(impl, "_reference", False) is True
    if not reference:
        changed = integrity.tampering()
        if changed:
            raise Tampered(tampered_message(changed))
    if target is None:
        yield
        return
    ref = importlib.import_module("ddpm_ref")
    swapped: list[tuple[dict[str, Any], str, Any]] = []
    guard = contextlib.nullcontext() if reference else integrity.guard_own_work(impl, exercise, target)
    try:
        for g in _globals_of(target):
            for other in EXERCISES:
                if other == exercise or other not in g or not hasattr(ref, other):
                    continue
                if g[other] is not getattr(ref, other):
                    swapped.append((g, other, g[other]))
                    g[other] = getattr(ref, other)
        with guard, _inputs_kept(impl, exercise, target):
            yield
    finally:
        for g, name, value in reversed(swapped):
            g[name] = value


def _tensors_in(value: Any, depth: int = 0) -> list[Any]:
    """The tensors among a call's arguments (through lists, tuples and dicts; not inside other objects)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 8:
        return []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return [t for v in items for t in _tensors_in(v, depth + 1)]


@contextlib.contextmanager
def _inputs_kept(impl: Any, exercise: str, target: Any) -> Iterator[None]:
    """While checking ``exercise``, every call of ``impl.<exercise>`` must leave its tensor arguments as they were: a
    call that changes one in place fails, and the check's tensor is put back first (so a definition cannot bend
    what the check computes next from its own inputs)."""
    if not callable(target) or not isinstance(impl, SimpleNamespace):
        yield
        return
    import functools

    import torch

    @functools.wraps(target)
    def keeping_inputs(*args: Any, **kwargs: Any) -> Any:
        def raw(t: Any) -> Any:
            """The bytes (NaNs and signed zeros included), through a unit-stride copy: an expanded one-element
            tensor has stride 0 and cannot be viewed as bytes itself."""
            return t.detach().clone(memory_format=torch.contiguous_format).reshape(-1).view(torch.uint8)

        tensors = _tensors_in((args, kwargs))
        before = [t.detach().clone() for t in tensors]
        out = target(*args, **kwargs)
        changed = [(t, b) for t, b in zip(tensors, before, strict=True)
                   if t.shape != b.shape or t.dtype != b.dtype or not torch.equal(raw(t), raw(b))]
        for t, b in changed:
            with torch.no_grad():
                t.data = b
        if changed:
            raise Failure(
                f"your `{exercise}` changed its input in place ({len(changed)} tensor argument(s)): the caller still "
                "needs them.", "build new tensors (x = x * a, torch.where, .clone()) instead of x.mul_(...), "
                "x[...] = ... or x += ... on an argument")
        return out

    vars(impl)[exercise] = keeping_inputs
    try:
        yield
    finally:
        vars(impl)[exercise] = target


class Tampered(AssertionError):  # noqa: N818 (reads as what happened)
    """The grader's own code was changed from the graded notebook."""


def tampered_message(changed: list[str]) -> str:
    """One line for a cell whose notebook changed the grader (``changed``: the names that were replaced)."""
    names = ", ".join(f"`{n}`" for n in changed[:4]) + (", …" if len(changed) > 4 else "")
    return (f"the notebook replaced part of the grader ({names}), so this cell scores 0: checks cannot be switched "
            "off or replaced (the real ones run from the next cell on); remove that code")


def _where(e: BaseException) -> str:
    """' (line N of fn)' for the deepest frame outside installed libraries, else the deepest frame (for an error
    raised in the student's process by the judge, where it was raised there)."""
    if hasattr(e, "remote_where"):
        return e.remote_where
    tb = traceback.extract_tb(e.__traceback__)
    if not tb:
        return ""
    own = [f for f in tb if "site-packages" not in f.filename and "/lib/python" not in f.filename]
    frame = (own or tb)[-1]
    return f" (line {frame.lineno} of {frame.name})"


def run_checks(
    exercise: str,
    namespace: Mapping[str, Any] | Any,
    *,
    hidden: bool = False,
    timeout: float = 60.0,
    raise_on_failure: bool = True,
    tampered: Sequence[str] = (),
    findings: dict[str, dict[str, str]] | None = None,
) -> dict[str, str | None]:
    """Run every check of ``exercise`` against ``namespace``; print one line per check.

    Returns {check name: None if passed (or skipped) else the failure message}. Raises AssertionError when
    any check failed (so nbgrader scores the cell 0), unless ``raise_on_failure`` is False.
    ``hidden`` selects only the hidden checks (for nbgrader's hidden test cells). ``tampered`` names parts of the
    grader the notebook replaced (found by ``ddpm_ref.course.run_checks``): then no check runs and the cell fails.
    ``findings``, when given, receives {check name: :func:`finding`} (what the class report counts).
    """
    findings = {} if findings is None else findings
    if tampered:
        msg = tampered_message(list(tampered))
        print(f"  ✗ {exercise}: {msg}")
        findings["grader"] = finding(Tampered(msg))
        if raise_on_failure:
            raise Tampered(f"{exercise}: {msg}")
        return {"grader": msg}
    load_all_checks()
    fns = [f for f in REGISTRY.get(exercise, []) if getattr(f, "hidden", False) == hidden]
    if not fns:
        raise KeyError(f"no {'hidden ' if hidden else ''}checks registered for exercise {exercise!r}")
    impl = as_impl(namespace)
    results: dict[str, str | None] = {}
    for fn in fns:
        name = check_name(fn)
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            with time_limit(timeout), isolated(impl, exercise):
                fn(impl)
            results[name] = None
            print(f"  ✓ {name}  ({time.perf_counter() - start:.1f} s)")
        except integrity.ReferenceUsed as e:  # the same for every check: say it once, run no more
            for other in fns:
                results[check_name(other)] = str(e)
                findings[check_name(other)] = finding(e)
            print(f"  ✗ {exercise}: {e}")
            break
        except CheckSkipped as e:
            results[name] = None
            findings[name] = finding(None, skipped=True)
            print(f"  – {name}: skipped ({e})")
            continue
        except MissingDefinition as e:
            error, results[name] = e, str(e)
        except AssertionError as e:
            error, results[name] = e, str(e) or "assertion failed"
        except NotImplementedError as e:
            error = e
            results[name] = (
                f"raised NotImplementedError{_where(e)}: replace `raise NotImplementedError()` with your code"
            )
        except Exception as e:  # a crash in student code is a failed check, with the place it broke
            error, results[name] = e, f"raised {type(e).__name__}: {e}{_where(e)}"
        findings[name] = finding(error)
        if error is not None:
            print(f"  ✗ {name}: {results[name]}")
    failed = [n for n, msg in results.items() if msg is not None]
    print(f"{exercise}: {len(fns) - len(failed)} passed, {len(failed)} failed")
    if failed and raise_on_failure:
        raise AssertionError(f"{exercise}: {len(failed)} check(s) failed: {', '.join(failed)}")
    return results
