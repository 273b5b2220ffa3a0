"""What the course tests share: where the notebooks are and the release tool ``solutions/release.py``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"


def load_release() -> ModuleType:
    """``solutions/release.py`` as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("course_release", SOLUTIONS / "release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
