"""What the course tests share: where the notebooks are and the release tool ``solutions/release.py``."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"


def _load_script(name: str, filename: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SOLUTIONS / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_release() -> ModuleType:
    """``solutions/release.py`` as a module (it is a script, not part of a package)."""
    return _load_script("course_release", "release.py")


def load_site() -> ModuleType:
    """``solutions/build_site.py`` (the course site's build) as a module."""
    return _load_script("course_site", "build_site.py")


def live_script(page: str, marker: str) -> list[str]:
    """The places where an HTML page would run script containing ``marker``: a ``<script>`` element or an
    ``on…=`` attribute of a real tag (escaped text, ``&lt;script&gt;``, is harmless and not listed)."""
    pattern = rf"<script[^>]*>[^<]*{marker}|<[a-zA-Z]+[^>]*\son\w+\s*=[^>]*{marker}"
    return re.findall(pattern, page)


@functools.cache
def exercise_lessons() -> dict[str, str]:
    """{exercise: lesson} from the solution notebooks' answer cells (``solution`` cells that are not graded), in
    course order."""
    import nbformat

    out: dict[str, str] = {}
    for path in sorted(SOLUTIONS.glob("*/*.ipynb")):
        if path.stem != path.parent.name:
            continue
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.get("metadata", {}).get("nbgrader", {}) or {}
            if meta.get("solution") and not meta.get("grade"):
                out[meta["grade_id"]] = path.stem
    return out
