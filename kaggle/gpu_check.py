#!/usr/bin/env python
"""The GPU check of the Kaggle run: the seed's training path at 256×256, batch 16, for a few hundred steps.

Runs :class:`ddpm_ref.train.Trainer` exactly as the notebook does (seed preset, ``nn.DataParallel`` when several GPUs
are visible, EMA, cosine LR, grad clipping) on deterministic synthetic faces, with fp16 autocast and a GradScaler
forced (the T4 path, also on GPUs that would pick bf16). Reports images/s, achieved TFLOP/s, peak memory per GPU,
the loss at the start and the end, skipped (non-finite) steps, and a short fp16 DDIM sample; writes the figures as
JSON. Exit status 0 when every check passes, 1 when one fails, 2 when no GPU is visible (unless ``--device cpu``).

    python kaggle/gpu_check.py                       # 300 steps, 256×256, batch 16: a few minutes on a T4 ×2
    python kaggle/gpu_check.py --steps 100 --out gpu_check.json

Checks: every loss is finite; at most 10 % of the steps were skipped by the GradScaler; the mean loss of the last 50
steps is below ``--max-ratio`` (default 0.5) times the mean of the first 20; the DDIM sample is finite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # ddpm_ref from this checkout, installed or not
sys.path.insert(0, str(HERE))  # ddpm_kaggle (the GPU memory readout)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from ddpm_ref import ddim_sample  # noqa: E402
from ddpm_ref.config import build_model, get_config  # noqa: E402
from ddpm_ref.data import synthetic_faces  # noqa: E402
from ddpm_ref.precision import autocast  # noqa: E402
from ddpm_ref.train import Callback, Trainer  # noqa: E402

CELEBAHQ_IMAGES = 30_000


class _Recorder(Callback):
    """Wall-clock time and loss of every step (``loss.item()`` in the step synchronises the GPU)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[float] = []

    def on_train_start(self, trainer: Trainer) -> None:
        self.times.append(time.perf_counter())

    def on_step_end(self, trainer: Trainer, step: int, stats: Any) -> None:
        self.times.append(time.perf_counter())
        self.losses.append(stats.loss)


def forward_flops(config: Any, device: torch.device) -> float:
    """FLOPs of one forward pass of the config's U-Net on one image (torch's FLOP counter)."""
    model = build_model(config).to(device)
    x = torch.zeros(1, config.channels, config.image_size, config.image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.zeros(1, dtype=torch.long, device=device))
    return float(counter.get_total_flops())


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides: dict[str, Any] = {"image_size": args.size, "batch_size": args.batch, "amp": args.amp,
                                 "max_steps": args.steps, "epochs": 1_000, "preview_every": 0, "milestone_every": 0,
                                 "num_workers": 0, "parallel": args.parallel, "device": str(device), "seed": 0}
    if args.model_channels:
        overrides["model_channels"] = tuple(int(c) for c in args.model_channels.split(","))
    if args.lr:
        overrides["lr"] = args.lr
    config = get_config(args.preset, **overrides)
    images = synthetic_faces(args.images, args.size, seed=0)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    for i in range(gpus):
        torch.cuda.reset_peak_memory_stats(i)

    import ddpm_kaggle as kg

    recorder = _Recorder()
    with tempfile.TemporaryDirectory() as tmp, kg.GpuMonitor(interval=2.0) as monitor:
        trainer = Trainer(config, tmp, dataset=images, callbacks=[recorder], progress=False, resume=False,
                          write_outputs=False)
        wrapped = type(trainer.model).__name__
        result = trainer.fit()
        g = torch.Generator(device).manual_seed(0)
        with autocast(device, trainer.amp_dtype):
            x = ddim_sample(trainer.ema.module, trainer.schedule, (2, config.channels, args.size, args.size),
                            steps=20, generator=g, progress=False)
        sample_finite = bool(torch.isfinite(x.float()).all())
        scale = float(trainer.scaler.get_scale()) if trainer.scaler is not None else None
        trainer.close()

    warm = min(args.warmup, max(len(recorder.losses) - 1, 0))
    timed = recorder.times[warm:]
    seconds = timed[-1] - timed[0] if len(timed) > 1 else float("nan")
    step_s = seconds / max(len(timed) - 1, 1)
    img_s = config.batch_size / step_s if step_s > 0 else float("nan")
    flops = forward_flops(config, device)
    losses = recorder.losses
    first = sum(losses[:20]) / max(len(losses[:20]), 1)
    last = sum(losses[-50:]) / max(len(losses[-50:]), 1)
    report: dict[str, Any] = {
        "device": [torch.cuda.get_device_name(i) for i in range(gpus)] or [platform.processor() or "cpu"],
        "torch": torch.__version__, "cuda": torch.version.cuda, "wrapper": wrapped,
        "amp": str(trainer.amp_dtype), "grad_scaler": trainer.scaler is not None, "final_loss_scale": scale,
        "image_size": args.size, "batch_size": config.batch_size, "steps": result.step, "timed_steps": len(timed) - 1,
        "step_s": step_s, "images_per_s": img_s,
        "train_tflop_per_image": 3 * flops / 1e12,
        "achieved_tflop_s": 3 * flops * img_s / 1e12,
        "est_epoch_min_celebahq_30k": CELEBAHQ_IMAGES / img_s / 60 if img_s > 0 else None,
        "peak_allocated_gib": [torch.cuda.max_memory_allocated(i) / 2**30 for i in range(gpus)],
        "peak_reserved_gib": [torch.cuda.max_memory_reserved(i) / 2**30 for i in range(gpus)],
        "peak_in_use_gib_nvidia_smi": {str(g): r["used_mib"] / 1024 for g, r in monitor.peaks.items()},
        "loss_first20": first, "loss_last50": last, "loss_ratio": last / first if first > 0 else float("nan"),
        "all_losses_finite": all(math.isfinite(v) for v in losses), "skipped_steps": result.nonfinite_steps,
        "ddim_sample_finite": sample_finite,
    }
    failures = []
    if not report["all_losses_finite"]:
        failures.append("a loss was NaN or inf")
    if result.nonfinite_steps > 0.1 * max(result.step, 1):
        failures.append(f"{result.nonfinite_steps} of {result.step} steps were skipped (non-finite gradients)")
    if not report["loss_ratio"] < args.max_ratio:
        failures.append(f"the loss did not fall enough: last-50 mean {last:.4f} vs first-20 mean {first:.4f} "
                        f"(ratio {report['loss_ratio']:.3f}, need < {args.max_ratio})")
    if not sample_finite:
        failures.append(f"the DDIM sample under autocast {trainer.amp_dtype} has NaN or inf values")
    report["failures"] = failures
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Figures go to --out (default $OUT/gpu_check.json when $OUT is set).")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the timing (default 20)")
    p.add_argument("--batch", type=int, default=16, help="global batch (default 16, the seed's)")
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--images", type=int, default=512, help="synthetic faces to train on (default 512)")
    p.add_argument("--amp", default="fp16", choices=("fp16", "bf16", "off", "auto"),
                   help="autocast dtype (default fp16 + GradScaler: the T4 path)")
    p.add_argument("--parallel", default="auto", choices=("auto", "none", "dp"),
                   help="auto: nn.DataParallel when several GPUs are visible (the notebook's default)")
    p.add_argument("--preset", default="seed-celebahq256")
    p.add_argument("--model-channels", default="", help="override the U-Net widths, e.g. 16,32 (smoke tests)")
    p.add_argument("--lr", type=float, default=0.0, help="override the learning rate (0: the preset's)")
    p.add_argument("--device", default="auto", help="auto (a GPU), cuda, or cpu for a smoke test")
    p.add_argument("--max-ratio", type=float, default=0.5, help="pass when last-50 / first-20 mean loss < this")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = p.parse_args(argv)
    if args.device == "auto" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; this check measures the GPU path (use --device cpu for a smoke test)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report = run(args)
    report["wall_s"] = time.perf_counter() - t0
    out = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        if key != "failures":
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"{key:28s} {shown}")
    if report["failures"]:
        print("FAILED: " + "; ".join(report["failures"]))
        return 1
    print(f"all checks passed in {report['wall_s']:.0f} s" + (f"; figures in {out}" if out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
