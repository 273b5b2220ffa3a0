"""The demo end to end on a tiny configuration: every promised file, the printed summary, the scores."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image

from ddpm_ref.config import get_config
from ddpm_ref.demo import calibrate_steps, run_demo
from ddpm_ref.evaluate import default_t_starts


def test_demo_writes_every_output_says_where_and_starts_from_scratch(tmp_path: Path):
    cfg = get_config("lfw-tiny", T=40, model_channels=(8, 16), num_res_blocks=1, batch_size=30, dataset_repeat=1)
    out = tmp_path / "demo"
    run_demo(out, steps=3, config=cfg, n_samples=4, progress=False, log=lambda s: None)
    lines: list[str] = []
    res = run_demo(out, steps=9, config=cfg, n_samples=12, progress=False, log=lines.append)
    assert res.train.step == 9 and res.train.stopped == "epochs"  # a fresh run: not 3 + 9 steps
    with open(out / "losses.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["3", "6", "9"]
    for name in ("samples.png", "nearest_train.png", "reverse_process.png", "loss.png", "losses.csv",
                 "reconstruction.png", "evaluate.csv", "evaluate.png", "target.png", "reconstructed.png",
                 "quality.csv", "quality.png", "brightness.png", "evaluate_protocol.json",
                 "checkpoints/ckpt_latest.pt", "generated/sample_000.png", "generated/sample_004.png"):
        assert (out / name).is_file(), name
    with Image.open(out / "samples.png") as im:  # 6 columns of 24 px faces enlarged ×4, 2 px padding
        assert im.size[0] == 6 * 24 * 4 + 7 * 2
    with open(out / "evaluate.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["t_start"]) for r in rows] == default_t_starts(40) == sorted(res.scores)
    assert all(int(r["n_images"]) == 10 for r in rows)
    text = "\n".join(lines)
    assert "demo finished" in text and "files:" in text and str(out / "samples.png") in text
    for t in default_t_starts(40):
        assert f"t_start={t:4d}" in text
    assert 0 <= res.nearest_mse < 4
    # the samples against the 10 held-out and the 90 training faces, beside the yardstick
    with open(out / "quality.csv", newline="") as f:
        quality = {(r["images"], r["reference"]): r for r in csv.DictReader(f)}
    assert {k for k in quality if k[0] == "samples"} == {("samples", "held-out"), ("samples", "training")}
    assert int(quality["samples", "held-out"]["n_reference"]) == 10
    assert int(quality["samples", "training"]["n_images"]) == 12
    real = float(quality["held-out real", "training"]["msswd_mean"])
    assert real < float(quality["pure noise", "training"]["msswd_mean"])
    assert res.quality is not None and res.quality.row("samples", "training").msswd.mean > 0
    assert "MS-SWD" in text and "brightness gap" in text


def test_calibration_scales_with_the_budget():
    cfg = get_config("lfw-tiny", model_channels=(8, 16), num_res_blocks=1, batch_size=8)
    threads = torch.get_num_threads()
    try:
        short, long = calibrate_steps(cfg, 1.0, probe_steps=4), calibrate_steps(cfg, 100.0, probe_steps=4)
        assert torch.get_num_threads() in (1, threads)  # it keeps the faster of 1 and the default
    finally:
        torch.set_num_threads(threads)
    assert 1 <= short < long


def test_demo_trains_in_bf16_only_where_the_cpu_has_it(monkeypatch):
    import ddpm_ref.demo as demo
    from ddpm_ref.speed import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, expected in ((True, "bf16"), (False, "off")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert demo.demo_amp("auto") == expected
        for asked in ("off", "bf16", "fp16"):  # an explicit choice is the user's
            assert demo.demo_amp(asked) == asked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert demo.demo_amp("auto") == "auto"  # on a GPU the Trainer's own rule applies


def test_demo_preset_is_lfw_tiny_with_a_short_run_schedule_and_ema():
    from ddpm_ref.config import build_schedule

    tiny, demo = get_config("lfw-tiny").to_dict(), get_config("lfw-demo").to_dict()
    assert {k for k in tiny if tiny[k] != demo[k]} == {"name", "objective", "beta_schedule", "ema_decay", "lr"}
    schedule = build_schedule(get_config("lfw-demo"))  # the seed's linear β: x̂0's gain 1/√ᾱ stays below 5
    assert float(schedule.alpha_bars[-1]) ** -0.5 < 5 and get_config("lfw-demo").ema_decay == 0.99
