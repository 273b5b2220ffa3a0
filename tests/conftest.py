"""pytest wiring: the ``impl`` fixture that every check receives.

By default ``impl`` is the reference package ``ddpm_ref``. ``pytest tests --impl PATH`` grades a notebook
(or every notebook under a folder) instead: its definitions are loaded without running heavy cells, and a
check whose names the notebook does not define is skipped, with the missing name in the reason.
Each check runs inside :func:`tests.harness.isolated`, as in ``run_checks``.

``--exercise NAME`` (repeatable) and ``--checks {visible,hidden,all}`` keep only the registered checks of those
exercises, of that kind, as one check cell runs them (GitHub Classroom runs one such command per check cell). Then
grading is strict: a definition the notebook lacks fails its checks instead of skipping them, a failed check reports
its one-line message (``name: expected …, got …. Hint: …``), modules that register no check are not collected, and
a selection without any check is a usage error rather than a vacuous pass.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads make
# small torch ops 10-30x slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist each worker (and every process it starts: kernels, graders) gets its share of the cores. torch
# would start one thread per core in every worker, and each parallel region would then wait for a thread that the
# other workers keep descheduled: two training checks took 35 s that way on 2 cores beside a busy one, 15 s with one
# thread each.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests import harness  # noqa: E402
from tests.harness import CheckSkipped, MissingDefinition, as_impl, check_name, isolated  # noqa: E402

pytest_plugins = ["pytester"]  # test_harness runs ``pytest --impl`` in-process


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--impl",
        default=None,
        metavar="PATH",
        help="grade a notebook or a folder of notebooks instead of the reference package ddpm_ref",
    )
    parser.addoption(
        "--exercise",
        action="append",
        default=None,
        metavar="NAME",
        help="run only the checks registered for this exercise (repeatable); a missing definition then fails",
    )
    parser.addoption(
        "--checks",
        choices=("visible", "hidden", "all"),
        default="all",
        help="run only the visible or only the hidden registered checks (default: all)",
    )


def _selecting(config: pytest.Config) -> bool:
    """Whether ``--exercise`` or ``--checks`` narrows the run to registered checks (strict grading)."""
    return bool(config.getoption("--exercise")) or config.getoption("--checks") != "all"


def _selected(config: pytest.Config, fn: object) -> bool:
    """Whether the check ``fn`` is one that ``--exercise`` / ``--checks`` ask for."""
    exercises = getattr(fn, "exercises", None)
    if not exercises:
        return False
    wanted, kind = config.getoption("--exercise"), config.getoption("--checks")
    if wanted and not set(exercises) & set(wanted):
        return False
    return kind == "all" or bool(getattr(fn, "hidden", False)) == (kind == "hidden")


def pytest_configure(config: pytest.Config) -> None:
    unknown = [x for x in config.getoption("--exercise") or () if x not in harness.EXERCISES]
    if unknown:
        raise pytest.UsageError(f"--exercise: no exercise {', '.join(unknown)}; "
                                f"choose among {', '.join(harness.EXERCISES)}")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``--exercise`` / ``--checks``, test modules that register no check are not even imported."""
    if _selecting(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        try:
            registers = harness._REGISTERS.search(collection_path.read_text(encoding="utf-8"))
        except OSError:
            return None
        return True if registers is None else None
    return None


@pytest.fixture(scope="session")
def impl(request: pytest.FixtureRequest):
    path = request.config.getoption("--impl")
    if path is None:
        import ddpm_ref

        return as_impl(ddpm_ref)
    from tests.notebook_impl import load_impl

    return load_impl(path)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Run a registered check isolated like run_checks does; skip it when its definition is missing."""
    exercises = getattr(pyfuncitem.obj, "exercises", None)
    impl = pyfuncitem.funcargs.get("impl")
    ctx = isolated(impl, exercises[0]) if exercises and impl is not None else contextlib.nullcontext()
    try:
        with ctx:
            return (yield)
    except MissingDefinition as e:
        origin = getattr(impl, "_origin", "the implementation")
        why = getattr(impl, "_why_missing", {}).get(e.name)
        message = f"{origin} does not define `{e.name}`" + (f" ({why})" if why else "")
        if _selecting(pyfuncitem.config):  # grading an exercise: a missing answer scores nothing
            pytest.fail(f"{check_name(pyfuncitem.obj)}: {message}", pytrace=False)
        pytest.skip(message)
    except CheckSkipped as e:
        pytest.skip(str(e))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """With ``--exercise`` / ``--checks``, a failed check reports the one line ``run_checks`` would print (its
    message names the mistake), not a traceback through the checks; a crash keeps its traceback."""
    report = yield
    fn = getattr(item, "obj", None)
    if (report.when == "call" and report.failed and call.excinfo is not None and _selecting(item.config)
            and getattr(fn, "exercises", None) and isinstance(call.excinfo.value, AssertionError)):
        report.longrepr = f"{check_name(fn)}: {call.excinfo.value}"
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--impl``, grade only: keep the tests that take ``impl`` and deselect the rest of the suite. With
    ``--exercise`` / ``--checks``, keep only the registered checks they select (none is a usage error)."""
    keep = items
    if config.getoption("--impl") is not None:
        keep = [it for it in keep if "impl" in getattr(it, "fixturenames", ())]
    if _selecting(config):
        keep = [it for it in keep if _selected(config, getattr(it, "obj", None))]
        if not keep:
            kind = {"all": "", "visible": "visible ", "hidden": "hidden "}[config.getoption("--checks")]
            wanted = ", ".join(config.getoption("--exercise") or ["any exercise"])
            raise pytest.UsageError(f"no {kind}checks registered for {wanted}")
    if len(keep) < len(items):
        kept = set(map(id, keep))
        config.hook.pytest_deselected(items=[it for it in items if id(it) not in kept])
        items[:] = keep


#: test modules run on the same pytest-xdist worker as, and after, another module: the site is built from the
#: executions the nbgrader proof caches (run elsewhere at the same time, it would execute every lesson again)
RUN_AFTER = {"tests/test_site.py": "tests/test_course_nbgrader.py"}
#: the longest modules (minutes each on 2 cores), started first and longest first so that no worker is left with
#: one of them at the end; the nbgrader proof, the longest, keeps its worker to itself while its fixture runs
LONGEST_FIRST = ("tests/test_course_nbgrader.py", "tests/test_grading_class.py", "tests/test_grading_isolation.py",
                 "tests/test_grading_classroom.py", "tests/test_judge.py", "tests/test_guidance_outcome.py",
                 "tests/test_mistakes.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``-n N --dist loadscope`` (the README's test command): each module (each class) runs on one worker, so a
    module's fixtures are made once; the modules of :data:`RUN_AFTER` follow theirs, and those of
    :data:`LONGEST_FIRST` are handed out before the rest."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class CourseScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return RUN_AFTER.get(scope.split("::")[0], scope)

        def _assign_work_unit(self, node) -> None:
            for scope in reversed(LONGEST_FIRST):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return CourseScheduling(config, log)
