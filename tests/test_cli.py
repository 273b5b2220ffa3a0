"""The command line: a tiny train → sample → reconstruct → evaluate → export flow, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_ref.cli import main
from ddpm_ref.evaluate import default_t_starts

TINY = ["--T", "20", "--model-channels", "8,16", "--num-res-blocks", "1", "--batch-size", "30",
        "--dataset-repeat", "1", "--epochs", "2", "--preview-n", "4", "--preview-every", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--preset", "lfw-tiny", "--out", str(out), *TINY, "--set", "warmup_steps=2"]) == 0
    return out


def test_train_writes_the_seed_layout_and_takes_overrides(run_dir: Path):
    assert (run_dir / "checkpoints" / "ckpt_latest.pt").is_file()
    assert (run_dir / "losses.csv").is_file() and (run_dir / "loss.png").is_file()
    assert sorted(p.name for p in (run_dir / "previews").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["T"] == 20 and cfg["model_channels"] == [8, 16] and cfg["warmup_steps"] == 2
    ckpt = torch.load(run_dir / "checkpoints" / "ckpt_latest.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["epoch"] == 2  # 90 faces / batch 30 = 3 steps per epoch


def test_train_resumes_and_extends(run_dir: Path, capsys: pytest.CaptureFixture[str]):
    args = ["train", "--preset", "lfw-tiny", "--out", str(run_dir), *TINY, "--set", "warmup_steps=2"]
    args[args.index("--epochs") + 1] = "3"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "at step 6" in out
    assert torch.load(run_dir / "checkpoints" / "ckpt_latest.pt", weights_only=True)["step"] == 9
    with open(run_dir / "losses.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_fresh_starts_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["train", "--out", str(tmp_path), *TINY]
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0  # the second run finds the first finished: nothing to do, and says so
    out = capsys.readouterr().out
    assert "nothing to train" in out and "at step 3" in out and "--epochs" in out and "nan" not in out
    assert torch.load(tmp_path / "checkpoints" / "ckpt_latest.pt", weights_only=True)["step"] == 3
    assert main([*args, "--fresh"]) == 0
    assert torch.load(tmp_path / "checkpoints" / "ckpt_latest.pt", weights_only=True)["step"] == 3
    with open(tmp_path / "losses.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["3"]


def test_sample_reconstruct_evaluate_export(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ckpt = str(run_dir / "checkpoints" / "ckpt_latest.pt")
    assert main(["sample", "--ckpt", ckpt, "--n", "3", "--strip"]) == 0
    assert sorted(p.name for p in (run_dir / "generated").iterdir()) == [
        "grid.png", "sample_000.png", "sample_001.png", "sample_002.png"]
    assert (run_dir / "reverse_process.png").is_file()
    assert main(["sample", "--ckpt", str(run_dir), "--n", "2", "--sampler", "ddim", "--steps", "5",
                 "--out", str(tmp_path / "ddim")]) == 0
    assert (tmp_path / "ddim" / "generated" / "sample_001.png").is_file()

    assert main(["reconstruct", "--ckpt", ckpt, "--t-start", "10", "--n", "4"]) == 0
    for name in ("target.png", "reconstructed.png", "noised.png", "reconstruction.png"):
        assert (run_dir / name).is_file(), name
    assert "t_start=10: PSNR" in capsys.readouterr().out

    assert main(["evaluate", "--ckpt", ckpt, "--n", "5", "--fid-samples", "4"]) == 0
    printed = capsys.readouterr().out
    with open(run_dir / "evaluate.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["t_start"]) for r in rows] == default_t_starts(20) == [2, 5, 10, 15]
    assert all(int(r["n_images"]) == 5 for r in rows)
    psnr = [float(r["psnr_mean"]) for r in rows]
    assert psnr[0] > psnr[-1]  # less noise, closer reconstruction
    assert (run_dir / "evaluate.png").is_file()
    protocol = json.loads((run_dir / "evaluate_protocol.json").read_text())
    assert protocol["weights"] == "ema" and protocol["n_images"] == 5 and protocol["t_start"] == [2, 5, 10, 15]
    assert "FID/KID" in printed  # computed, or a clear reason why not
    with open(run_dir / "quality.csv", newline="") as f:  # 90 samples (24 px) against the real sets
        quality = {(r["images"], r["reference"]): r for r in csv.DictReader(f)}
    assert int(quality["samples", "held-out"]["n_images"]) == 90
    assert int(quality["samples", "training"]["n_reference"]) == 90
    assert ("held-out real", "training") in quality and ("pure noise", "held-out") in quality
    assert "MS-SWD" in printed and "brightness gap" in printed
    assert (run_dir / "quality.png").is_file() and (run_dir / "brightness.png").is_file()

    small = tmp_path / "small.pt"
    assert main(["export", "--ckpt", ckpt, "--out", str(small)]) == 0
    assert small.stat().st_size < (run_dir / "checkpoints" / "ckpt_latest.pt").stat().st_size / 3
    assert main(["sample", "--ckpt", str(small), "--n", "1", "--out", str(tmp_path / "s")]) == 0


def test_config_file(tmp_path: Path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"preset": "lfw-tiny", "T": 10, "model_channels": [8, 16], "num_res_blocks": 1,
                               "batch_size": 45, "dataset_repeat": 1, "epochs": 1, "preview_every": 0}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["batch_size"] == 45


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], expect: str) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expect in err, err
    assert "\n" not in err and "Traceback" not in err


def test_bad_input_gets_one_line_errors(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    _one_line_error(capsys, ["train", "--preset", "celebahq", "--out", str(tmp_path / "a")], "unknown preset")
    _one_line_error(capsys, ["train", "--preset", "seed-celebahq256", "--out", str(tmp_path / "a")], "--data")
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "a"), "--lr", "fast"], "cannot read 'fast'")
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "a"), "--set", "colour=red"], "unknown config key")
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "a"), "--data", str(tmp_path / "none")],
                    "does not exist")
    (tmp_path / "notes.txt").write_text("hello")
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "a"), "--data", str(tmp_path / "notes.txt")],
                    "is a file")
    _one_line_error(capsys, ["train", "--config", str(tmp_path / "notes.txt")], "not valid JSON")
    # a run folder whose checkpoint has another architecture
    _one_line_error(capsys, ["train", "--preset", "lfw-tiny", "--out", str(run_dir), *TINY[:2],
                             "--model-channels", "16,32"], "different architecture")
    _one_line_error(capsys, ["sample", "--ckpt", str(tmp_path / "missing.pt")], "not found")
    (tmp_path / "fake.pt").write_bytes(b"not a checkpoint")
    _one_line_error(capsys, ["evaluate", "--ckpt", str(tmp_path / "fake.pt")], "not a readable checkpoint")
    ckpt = str(run_dir / "checkpoints" / "ckpt_latest.pt")
    _one_line_error(capsys, ["reconstruct", "--ckpt", ckpt, "--t-start", "20"], "--t-start must be in 0…19")
    _one_line_error(capsys, ["evaluate", "--ckpt", ckpt, "--data", str(tmp_path / "nowhere")], "does not exist")


def test_presets_and_the_module_entry_point(capsys: pytest.CaptureFixture[str]):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "seed-celebahq256" in out and "celebahq256-fixed" in out and "lfw-tiny" in out
    proc = subprocess.run([sys.executable, "-m", "ddpm_ref", "sample", "--ckpt", "no/such/file.pt"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: checkpoint") and "Traceback" not in proc.stderr
