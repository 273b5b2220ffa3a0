"""The package's layout holds: no import circle, no module importing from a layer above its own, no module over 400
lines outside ``tests/``, and every module path and name users import from before the packages still works.

The import graph is read from the sources (every ``import`` and ``from … import``, those inside functions too), so
a lazy import cannot hide a circle.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import ddpm_ref
from ddpm_ref._moved import MOVED

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ddpm_ref"

#: the layers, lowest first: a module imports only from its own layer or those below (``ddpm_ref/__init__.py``
#: says the same in words)
LAYERS: tuple[tuple[str, ...], ...] = (
    # the math and data a student reads, and the helpers it draws, reports and writes files with
    ("schedule", "diffusion", "samplers", "solvers", "flow", "guidance", "score", "unet", "vae", "dit", "metrics",
     "oracle", "data", "progress", "plots", "pictures", "frontend", "files"),
    ("speed",),  # how fast: the switches, the precision policy
    ("training",),
    ("evaluation",),
    ("bench",),
    ("course", "run_all", "headless"),  # what the notebooks share
    ("grading",),
    ("cli",),
)
#: names that are not layers: the package itself and the table of moved module paths
OUTSIDE = ("__init__", "__main__", "_moved")
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """The modules of the package that ``name`` imports (at any depth of its code)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target, *(f"{target}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES and n != name}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int | None:
    top = name.split(".")[1] if "." in name else "__init__"
    if top in OUTSIDE:
        return None
    for level, members in enumerate(LAYERS):
        if top in members:
            return level
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_layout.py and to the README's Layout")


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        _layer(name)


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    wrong = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})" for a, targets in GRAPH.items()
             for b in targets if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle() -> None:
    """Depth-first search for a back edge; the circle found is printed."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, stack.pop()
        return None

    for node in sorted(GRAPH):
        if node not in state and (circle := visit(node)):
            pytest.fail("import circle: " + " → ".join(circle))


def test_the_check_finds_a_circle_and_an_upward_import() -> None:
    """The two checks above can fail: a planted circle and a planted upward import are seen."""
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["ddpm_ref.schedule"].add("ddpm_ref.training.trainer")
        with pytest.raises(AssertionError, match="schedule .layer 0. imports ddpm_ref.training.trainer"):
            test_no_module_imports_from_a_layer_above_its_own()
        with pytest.raises(pytest.fail.Exception, match="import circle"):
            test_no_import_circle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def _python_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    names = tracked.stdout.split() if tracked.returncode == 0 and tracked.stdout else []
    paths = [ROOT / n for n in names] if names else list(ROOT.rglob("*.py"))
    return [p for p in paths if p.is_file() and "tests" not in p.relative_to(ROOT).parts[:1]]


def test_no_module_over_400_lines_outside_tests() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _python_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they do): {long}"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_old_module_paths_still_import(old: str) -> None:
    """``import ddpm_ref.perf`` (and every other path from before the packages) gives the new module itself."""
    assert importlib.import_module(f"ddpm_ref.{old}") is importlib.import_module(f"ddpm_ref.{MOVED[old]}")
    assert getattr(ddpm_ref, old) is importlib.import_module(f"ddpm_ref.{MOVED[old]}")


def test_the_names_users_import_are_where_they_were() -> None:
    from ddpm_ref.bench import main as bench_main  # noqa: F401
    from ddpm_ref.cli import main  # noqa: F401
    from ddpm_ref.config import TrainConfig, get_config  # noqa: F401
    from ddpm_ref.perf import PerfOptions, cpu_amp, recommended  # noqa: F401
    from ddpm_ref.precision import autocast, resolve_amp_dtype  # noqa: F401
    from ddpm_ref.train import Callback, Trainer, train, train_step  # noqa: F401

    assert Trainer is ddpm_ref.Trainer and Trainer.__module__ == "ddpm_ref.training.trainer"
    missing = [n for n in ddpm_ref.__all__ if not hasattr(ddpm_ref, n)]
    assert not missing, missing


def test_the_old_paths_work_in_a_fresh_interpreter() -> None:
    """Without anything imported first (as a user's script starts): the old paths, and ``python -m ddpm_ref.bench``."""
    code = ("from ddpm_ref.demo import run_demo; from ddpm_ref.train_state import Checkpointing; "
            "import ddpm_ref.checkpoint as c, ddpm_ref.training.checkpoint as d; assert c is d")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "ddpm_ref.bench", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--preset" in done.stdout, done.stderr[-2000:]
