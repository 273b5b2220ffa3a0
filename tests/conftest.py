"""pytest wiring: the ``impl`` fixture that every check receives.

By default ``impl`` is the reference package ``ddpm_ref``. ``pytest tests --impl PATH`` grades a notebook
(or every notebook under a folder) instead: its definitions are loaded without running heavy cells, and a
check whose names the notebook does not define is skipped, with the missing name in the reason.
Each check runs inside :func:`tests.harness.isolated`, as in ``run_checks``.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads make
# small torch ops 10-30x slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402

import pytest  # noqa: E402

from tests.harness import CheckSkipped, MissingDefinition, as_impl, isolated  # noqa: E402

pytest_plugins = ["pytester"]  # test_harness runs ``pytest --impl`` in-process


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--impl",
        default=None,
        metavar="PATH",
        help="grade a notebook or a folder of notebooks instead of the reference package ddpm_ref",
    )


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
        pytest.skip(f"{origin} does not define `{e.name}`" + (f" ({why})" if why else ""))
    except CheckSkipped as e:
        pytest.skip(str(e))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--impl``, grade only: keep the tests that take ``impl`` and deselect the rest of the suite."""
    if config.getoption("--impl") is None:
        return
    keep = [it for it in items if "impl" in getattr(it, "fixturenames", ())]
    dropped = [it for it in items if "impl" not in getattr(it, "fixturenames", ())]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
