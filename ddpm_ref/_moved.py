"""Module paths from before ``ddpm_ref`` was laid out in packages, kept importable: ``import ddpm_ref.perf`` gives
the module ``ddpm_ref.speed.perf`` itself (the same object, so patching one patches the other)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

#: old module (under ddpm_ref) → where it lives now
MOVED = {
    "precision": "speed.precision", "compiling": "speed.compiling", "perf": "speed.perf",
    "config": "training.config", "checkpoint": "training.checkpoint", "ema": "training.ema",
    "distributed": "training.distributed", "step": "training.step", "train": "training.trainer",
    "train_data": "training.dataset", "train_log": "training.log", "train_setup": "training.setup",
    "train_state": "training.state",
    "evaluate": "evaluation.evaluate", "fid": "evaluation.fid", "quality": "evaluation.quality",
    "bench_report": "bench.report", "bench_sample": "bench.sample", "bench_timing": "bench.timing",
    "bench_train": "bench.train", "demo": "cli.demo",
}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``ddpm_ref.<old>`` and hands back the module at its new path."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        package, _, name = fullname.partition(".")
        if package == "ddpm_ref" and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"ddpm_ref.{MOVED[spec.name.partition('.')[2]]}")
        spec.loader_state = module.__spec__  # the import system sets the alias's spec on it: put it back below
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module ran when it was imported at its new path): only its own spec is restored."""
        module.__spec__ = module.__spec__.loader_state


def module(name: str) -> ModuleType:
    """``ddpm_ref.<name>`` for a moved module name (``ddpm_ref.perf`` as an attribute); AttributeError otherwise."""
    if name not in MOVED:
        raise AttributeError(f"module 'ddpm_ref' has no attribute {name!r}")
    return importlib.import_module(f"ddpm_ref.{name}")


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (after the standard finders: it only sees names they miss)."""
    if not any(isinstance(f, _Moved) for f in sys.meta_path):
        sys.meta_path.append(_Moved())
