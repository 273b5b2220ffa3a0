"""The benchmark runs end to end on a tiny shape on the CPU, writes valid JSON, and its figures hang together."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm_ref import NoiseSchedule, bench
from ddpm_ref.bench import runner
from ddpm_ref.cli import main as cli_main
from ddpm_ref.speed import perf

TINY = ["--preset", "lfw-tiny", "--device", "cpu", "--set", "model_channels=8,16", "--set", "T=20",
        "--image-size", "8", "--batch-size", "4", "--repeats", "2", "--steps", "1", "--warmup", "1",
        "--sample-steps", "1", "--ddim-steps", "5", "--oracle-samples", "64", "--quiet"]


def _strict_json(text: str) -> dict:
    def bad(token: str) -> None:
        raise AssertionError(f"{token} in the JSON: not valid JSON")

    return json.loads(text, parse_constant=bad)


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"), ("Tesla T4", "T4"), ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", None), ("NVIDIA GeForce RTX 4090", None),
])
def test_device_peak_table(name, key):
    found = bench.device_peak(name)
    assert (found[0] if found else None) == key
    if key == "T4":  # Turing has no bf16 tensor cores: its 16-bit peak is fp16
        assert runner._half_peak(found[1]) == ("fp16", 65.0)


def test_bench_end_to_end_on_cpu_writes_valid_json(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    assert bench.main([*TINY, "--threads", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # --threads is undone afterwards
    printed = capsys.readouterr().out
    r = _strict_json(out.read_text())
    assert r["schema"] == bench.SCHEMA and r["preset"] == "lfw-tiny" and r["shape"] == [4, 1, 8, 8]
    assert r["machine"]["threads"] == 1 and "cpu" in r["machine"]

    tr = r["train"]
    for key in ("baseline", "optimised"):
        row = tr[key]
        assert len(row["s_per_step_samples"]) == 2 and row["s_per_step"] > 0
        assert row["images_per_s"] == pytest.approx(4 / row["s_per_step"])
        assert row["flop_per_s"] == pytest.approx(tr["flop_per_step"] / row["s_per_step"])
        assert row["share_of_peak"] is None  # a CPU has no entry in the peak table
        assert row["peak_memory_mb"] > 0
    assert tr["baseline"]["label"] == "fp32 eager"
    assert tr["speedup"] == pytest.approx(tr["baseline"]["s_per_step"] / tr["optimised"]["s_per_step"])
    switches = [x["switch"] for x in tr["ladder"]]
    assert switches[:2] == ["amp", "channels_last"] and "compile" not in switches  # compile is off on CPU by default
    for x in tr["ladder"]:  # a switch is kept only when it beats both --min-gain and the timing noise
        assert x["kept"] == (x["gain"] >= 1 + max(0.02, x["noise"])), x
    kept = perf.PerfOptions(**tr["kept_options"])
    assert (kept.amp == "bf16") == next(x["kept"] for x in tr["ladder"] if x["switch"] == "amp")
    assert kept.channels_last == next(x["kept"] for x in tr["ladder"] if x["switch"] == "channels_last")
    assert {a["what"].split(" ")[0] for a in tr["ablations"]} >= {"SDPA"}

    sm = r["sampling"]
    # a training step is the forward pass plus a backward pass of about twice its cost (the first layer needs no
    # input gradient): 2× to 3× the forward FLOPs, counted independently on the sampling side
    fwd = sm["flop_per_image_per_step"] * 4
    assert 2.0 * fwd < tr["flop_per_step"] <= 3.0 * fwd
    kinds = {(row["sampler"], row["optimised"]) for row in sm["rows"]}
    assert kinds == {("ddpm", False), ("ddpm", True), ("ddim", False), ("ddim", True)}
    for row in sm["rows"]:
        steps = 20 if row["sampler"] == "ddpm" else 5
        assert row["steps"] == steps
        assert row["images_per_s"] == pytest.approx(row["batch"] / (row["s_per_step"] * steps))
    w = sm["wall"]["baseline"]
    assert not w["measured_end_to_end"] and w["images"] == 5  # CPU: estimated from timed steps, and said so
    assert w["ddim_speedup"] == pytest.approx(w["ddpm_wall_s"] / w["ddim_wall_s"])

    oc = r["oracle"]
    assert oc["reference_schedule"]["name"] == "scaled_linear T=20"
    assert set(r["targets"]) >= {"train_speedup", "ddim_speedup", "ddim_oracle_error"}
    assert r["targets"]["train_speedup"]["met"] is None  # the H100 target is not judged on a CPU
    assert "| fp32 eager |" in printed and "estimated: per-step time × steps" in printed
    assert r["errors"] == {}
    # the stored result renders the same tables again, through the command line
    assert cli_main(["bench", "--tables-from", str(out)]) == 0
    assert capsys.readouterr().out.strip() == printed.strip()


def test_a_failing_part_keeps_the_others(tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(runner, "bench_sampling", out_of_memory)
    out = tmp_path / "partial.json"
    assert bench.main([*TINY, "--threads", "1", "--no-ablations", "--no-oracle", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the sampling part failed: RuntimeError: CUDA out of memory (simulated)" in err
    r = _strict_json(out.read_text())
    assert "sampling" not in r and r["train"]["speedup"] > 0 and "ddim_speedup" not in r["targets"]


def test_bench_bad_input_is_one_line(capsys):
    assert bench.main([*TINY, "--set", "nosuch=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'nosuch'") and "\n" not in err
    assert bench.main([*TINY, "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    assert cli_main(["bench", *TINY, "--image-size", "10"]) == 2  # not divisible by 4 for two levels
    assert "image_size 10 must be divisible by 4" in capsys.readouterr().err


def test_oracle_check_within_the_sampler_tests_tolerance():
    r = bench.oracle_check(NoiseSchedule.from_name("scaled_linear", 100), n=400, ddim_steps=20)
    for kind in ("ddpm", "ddim"):
        assert r[kind]["within_tolerance"], r[kind]
        assert abs(r[kind]["weight"] - 0.7) <= bench.ORACLE_TOLERANCE["weight"]
    assert r["ddim"]["steps"] == 20 and r["ddpm"]["steps"] == 100
