"""kaggle/gpu_check.py: the prepared GPU check runs end to end (a tiny CPU smoke run) and fails when it should."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "kaggle" / "gpu_check.py"
TINY = ["--device", "cpu", "--size", "32", "--model-channels", "16,32", "--steps", "24", "--warmup", "4",
        "--images", "32", "--batch", "8", "--amp", "off", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kaggle_gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("kaggle_gpu_check", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread(gpu_check: ModuleType):
    """Two shared cores: one intra-op thread avoids oversubscription stalls."""
    before = gpu_check.torch.get_num_threads()
    gpu_check.torch.set_num_threads(1)
    yield
    gpu_check.torch.set_num_threads(before)


def test_smoke_run_reports_every_figure(gpu_check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main([*TINY, "--max-ratio", "10", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["steps"] == 24 and report["timed_steps"] == 20 and report["batch_size"] == 8
    assert report["images_per_s"] > 0 and report["train_tflop_per_image"] > 0
    assert report["all_losses_finite"] and report["ddim_sample_finite"] and report["failures"] == []
    assert report["peak_allocated_gib"] == []  # no GPU here: nothing to report, nothing invented
    assert "all checks passed" in capsys.readouterr().out


def test_fails_when_the_loss_does_not_fall_enough(gpu_check: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert gpu_check.main([*TINY, "--max-ratio", "0.001"]) == 1
    assert "FAILED: the loss did not fall enough" in capsys.readouterr().out


def test_needs_a_gpu_unless_asked_for_the_cpu(gpu_check: ModuleType, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "no CUDA GPU visible" in capsys.readouterr().err
