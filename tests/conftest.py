"""pytest wiring: the ``impl`` fixture that every check receives.

By default ``impl`` is the reference package ``ddpm_ref``. ``pytest tests --impl PATH`` grades a notebook
(or every notebook under a folder) instead: its definitions are loaded without running heavy cells, and a
check whose names the notebook does not define is skipped.
"""

from __future__ import annotations

import pytest


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

        return ddpm_ref
    from tests.notebook_impl import load_impl

    return load_impl(path)
