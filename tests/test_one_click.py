"""One-click start: a released lesson's start cell installs the course where ``ddpm_ref`` is missing.

Runs the start cell of ``lessons/02_forward_diffusion`` in a fresh virtual environment that does not have the
course, with ``DDPM_COURSE_REPO`` pointed at a local clone of this repository. The environment reaches this
interpreter's packages (torch, …) through a plain path entry, so nothing is downloaded, and the shared
install of the course stays out of sight (a path entry does not run that folder's ``.pth`` hooks).
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest

from tests._course import ROOT

pytestmark = pytest.mark.slow

LESSON = ROOT / "lessons" / "02_forward_diffusion" / "02_forward_diffusion.ipynb"
AFTER = """
import ddpm_ref
from ddpm_ref.course import course_root
print("ddpm_ref from", ddpm_ref.__file__)
print("checks in", course_root())
"""


def _start_cell() -> str:
    cells = [c for c in nbformat.read(LESSON, as_version=4).cells if "start" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "a released lesson has one start cell (tag `start`)"
    return cells[0].source


def _fresh_env(where: Path) -> Path:
    """A virtual environment without the course that sees this interpreter's packages; its python."""
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "outer_packages.pth").write_text("\n".join(sorted(paths)) + "\n")
    return python


def test_the_start_cell_installs_the_course_in_a_fresh_environment(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(origin)], check=True)
    python = _fresh_env(tmp_path / "env")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DDPM_COURSE_ROOT", "VIRTUAL_ENV")}
    env.update(DDPM_COURSE_REPO=str(origin), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_BUILD_ISOLATION="0")  # offline: the build backend comes from the outer packages

    def run(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(python), "-c", code], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)

    missing = run("import ddpm_ref")
    assert missing.returncode != 0 and "No module named 'ddpm_ref'" in missing.stderr, (
        "the fresh environment must not see the course: " + missing.stderr[-500:])
    first = run(_start_cell() + "\n" + AFTER)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    dest = work / "ddpm-course"
    assert f"installed the course from {origin} into {dest}; no restart needed" in first.stdout, first.stdout
    assert f"ddpm_ref from {dest / 'ddpm_ref' / '__init__.py'}" in first.stdout, first.stdout
    assert f"checks in {dest}" in first.stdout, first.stdout  # the editable install finds tests/ in the clone
    again = run(_start_cell() + "\n" + AFTER)  # a second run (or a restarted kernel): nothing to do
    assert again.returncode == 0 and "installed" not in again.stdout, again.stdout + again.stderr[-2000:]
    assert f"ddpm_ref from {dest / 'ddpm_ref' / '__init__.py'}" in again.stdout
