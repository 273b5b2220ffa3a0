"""One registry of checks, run three ways: by pytest, by ``pytest --impl NOTEBOOK`` and by notebook check cells.

A check is a plain function of one argument, ``impl`` (a namespace holding the student's or the
reference's definitions), that raises ``AssertionError`` with a message a student can act on
(what was expected, what came out, a hint). Register it for an exercise with ``@check("q_sample")``;
pytest collects it like any ``test_*`` function (the ``impl`` fixture lives in conftest.py).

In a notebook::

    from tests.harness import run_checks
    run_checks("q_sample", globals())      # prints ✓/✗ per check, raises if any failed
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

CheckFn = Callable[[Any], None]

#: exercise name → list of check functions, in definition order
REGISTRY: dict[str, list[CheckFn]] = {}

TESTS_DIR = Path(__file__).resolve().parent


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


def load_all_checks() -> None:
    """Import every ``tests/test_*.py`` module so that their checks register."""
    root = str(TESTS_DIR.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    for path in sorted(TESTS_DIR.glob("test_*.py")):
        importlib.import_module(f"tests.{path.stem}")


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
        raise CheckTimeout(f"took longer than {seconds:.0f} s: is there an endless loop?")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def as_impl(namespace: Mapping[str, Any] | Any) -> Any:
    """A notebook's ``globals()`` (or any mapping) as an attribute namespace; other objects pass through."""
    if isinstance(namespace, Mapping):
        return SimpleNamespace(**{k: v for k, v in namespace.items() if not k.startswith("__")})
    return namespace


def run_checks(
    exercise: str,
    namespace: Mapping[str, Any] | Any,
    *,
    hidden: bool = False,
    timeout: float = 60.0,
    raise_on_failure: bool = True,
) -> dict[str, str | None]:
    """Run every check of ``exercise`` against ``namespace``; print one line per check.

    Returns {check name: None if passed else the failure message}. Raises AssertionError when any
    check failed (so nbgrader scores the cell 0), unless ``raise_on_failure`` is False.
    ``hidden`` selects only the hidden checks (for nbgrader's hidden test cells).
    """
    load_all_checks()
    fns = [f for f in REGISTRY.get(exercise, []) if getattr(f, "hidden", False) == hidden]
    if not fns:
        raise KeyError(f"no {'hidden ' if hidden else ''}checks registered for exercise {exercise!r}")
    impl = as_impl(namespace)
    results: dict[str, str | None] = {}
    for fn in fns:
        name = fn.__name__.removeprefix("test_")
        start = time.perf_counter()
        try:
            with time_limit(timeout):
                fn(impl)
            results[name] = None
            print(f"  ✓ {name}  ({time.perf_counter() - start:.1f} s)")
        except AssertionError as e:
            results[name] = str(e) or "assertion failed"
            print(f"  ✗ {name}: {results[name]}")
        except Exception as e:  # a crash in student code is a failed check, with the place it broke
            tb = traceback.extract_tb(e.__traceback__)
            where = f" (line {tb[-1].lineno} of {tb[-1].name})" if tb else ""
            results[name] = f"raised {type(e).__name__}: {e}{where}"
            print(f"  ✗ {name}: {results[name]}")
    failed = [n for n, msg in results.items() if msg is not None]
    print(f"{exercise}: {len(fns) - len(failed)} passed, {len(failed)} failed")
    if failed and raise_on_failure:
        raise AssertionError(f"{exercise}: {len(failed)} check(s) failed: {', '.join(failed)}")
    return results
