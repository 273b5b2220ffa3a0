"""Benchmark cases for training: the :class:`~ddpm_ref.training.Trainer`'s own step under each speed switch.

Each case is a Trainer built from the preset with one set of :class:`~ddpm_ref.speed.perf.PerfOptions` as its config's
speed fields (the same init, from the config's seed), timed on :meth:`~ddpm_ref.training.Trainer.run_step` over a
fixed batch [B, C, H, W] already on the device: flip, L_simple (eq. 14) under autocast, backward, clip, AdamW, EMA
and LR schedule — what a training run does per batch, without the data loader. The switches are tried greedily
on top of the best set so far, each against it in alternation (round-robin), and kept only when it wins by
``--min-gain`` and by more than the timing noise.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from ..speed import perf
from ..speed.perf import BASELINE, PerfOptions
from ..training.config import TrainConfig
from ..training.trainer import Trainer
from .timing import PeakMemory, median, spread, sync

__all__ = ["TrainCase", "TrainBench", "candidates", "bench_training"]


@dataclass
class TrainCase:
    """One setting: a Trainer built once, warmed up, then timed block by block."""

    opts: PerfOptions
    trainer: Trainer
    x0: Tensor  # the fixed batch, on the device
    sdpa_math: bool = False
    warmup_s: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=dict)
    peak_bytes: int = 0
    last_loss: float = float("nan")

    @property
    def label(self) -> str:
        return self.opts.label() + (" + SDPA math backend" if self.sdpa_math else "")

    @property
    def compile_error(self) -> str | None:
        return self.trainer.compile_error

    @contextlib.contextmanager
    def context(self, device: torch.device) -> Iterator[None]:
        with perf.backend_flags(self.opts, device), contextlib.ExitStack() as stack:
            if self.sdpa_math:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            yield

    def step(self) -> None:
        self.last_loss = self.trainer.run_step(self.x0).loss

    def state_bytes(self) -> int:
        """Bytes of parameters, gradients, EMA copy and AdamW state (what stays allocated between steps)."""
        tr = self.trainer
        total = 0
        for p in [*tr.net.parameters(), *tr.ema.parameters()]:
            total += p.numel() * p.element_size()
            if p.grad is not None:
                total += p.grad.numel() * p.grad.element_size()
        for st in tr.optimizer.state.values():
            total += sum(v.numel() * v.element_size() for v in st.values() if isinstance(v, Tensor))
        return total


def _config_for(config: TrainConfig, opts: PerfOptions) -> TrainConfig:
    """``config`` with ``opts`` as its speed fields, explicitly (no per-device defaults), run as one process."""
    return config.replace(amp=opts.amp, channels_last=opts.channels_last, fused_adamw=opts.fused_adamw,
                          cudnn_benchmark=opts.cudnn_benchmark, compile=opts.compile,
                          compile_mode=opts.compile_mode or "", threads=opts.threads or 0, parallel="none",
                          lr_schedule="constant", preview_every=0, milestone_every=0, dataset_repeat=1)


class TrainBench:
    """Builds and times :class:`TrainCase` objects for one config, batch and device."""

    def __init__(self, config: TrainConfig, device: torch.device, batch: int, warmup: int, log: Callable) -> None:
        self.config = config.replace(device=str(device), batch_size=batch)
        self.device = device
        self.batch = batch
        self.warmup = warmup
        self.log = log
        g = torch.Generator().manual_seed(config.seed)
        shape = (batch, config.channels, config.image_size, config.image_size)
        self.x0_cpu = torch.rand(shape, generator=g) * 2 - 1  # a fixed batch in [−1, 1]
        self.steps = 1

    def trainer(self, opts: PerfOptions) -> Trainer:
        """A Trainer of the config under ``opts``; the process-wide flags it sets are restored afterwards."""
        with perf.backend_flags(BASELINE, self.device):
            return Trainer(_config_for(self.config, opts), Path("unused"), dataset=self.x0_cpu, progress=False,
                           resume=False, write_outputs=False)

    def build(self, opts: PerfOptions, *, sdpa_math: bool = False) -> TrainCase:
        self.log(f"  building {opts.label()}{' + SDPA math' if sdpa_math else ''} …")
        t0 = time.perf_counter()
        trainer = self.trainer(opts)
        x0 = perf.to_device(self.x0_cpu, self.device, channels_last=opts.channels_last)
        case = TrainCase(opts=trainer.perf, trainer=trainer, x0=x0, sdpa_math=sdpa_math)
        with case.context(self.device):
            for _ in range(self.warmup):
                case.step()
            sync(self.device)
        case.warmup_s = time.perf_counter() - t0
        if case.compile_error:
            self.log(f"    compile fell back to eager: {case.compile_error}")
        return case

    def time_block(self, case: TrainCase, phase: str) -> float:
        """Seconds per step over one block of ``self.steps`` steps (appended to ``case.samples[phase]``)."""
        with case.context(self.device), PeakMemory(self.device) as mem:
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(self.steps):
                case.step()
            sync(self.device)
            dt = (time.perf_counter() - t0) / self.steps
        if self.device.type == "cuda":  # this case's resident state plus what its step allocated on top
            case.peak_bytes = max(case.peak_bytes, mem.peak - mem.start + case.state_bytes())
        else:
            case.peak_bytes = max(case.peak_bytes, mem.peak)
        case.samples.setdefault(phase, []).append(dt)
        if not math.isfinite(case.last_loss):
            raise RuntimeError(f"{case.label}: the training loss became {case.last_loss}")
        return dt

    def measure(self, cases: Sequence[TrainCase], phase: str, repeats: int) -> list[float]:
        """Round-robin: repeat × (one block per case). Returns each case's median seconds per step."""
        for _ in range(repeats):
            for case in cases:
                self.time_block(case, phase)
        return [median(c.samples[phase]) for c in cases]

    def calibrate(self, case: TrainCase, target_s: float, max_steps: int) -> int:
        """Steps per block so that one block of ``case`` lasts about ``target_s``."""
        self.steps = 1
        dt = self.time_block(case, "calibration")
        self.steps = max(1, min(max_steps, round(target_s / max(dt, 1e-6))))
        return self.steps

    def count_flops(self) -> int:
        """FLOPs of one training step (forward + backward) of the fp32 model on this batch."""
        trainer = self.trainer(BASELINE)
        with FlopCounterMode(display=False) as counter:
            trainer.run_step(self.x0_cpu.to(self.device))
        del trainer
        return int(counter.get_total_flops())


def candidates(device: torch.device, compile_on: bool, compile_mode: str | None) -> list[tuple[str, dict]]:
    """The switches tried, in order, each as (name, PerfOptions changes)."""
    cands: list[tuple[str, dict]] = [("amp", {"amp": "auto" if device.type == "cuda" else "bf16"}),
                                     ("channels_last", {"channels_last": True})]
    if perf.fused_adamw_supported(device):
        cands.append(("fused_adamw", {"fused_adamw": True}))
    if device.type == "cuda":
        cands.append(("cudnn_benchmark", {"cudnn_benchmark": True}))
    if compile_on:
        cands.append(("compile", {"compile": True, "compile_mode": compile_mode}))
    return cands


def _case_result(case: TrainCase, phase: str, flops: int, batch: int, peak: tuple[str, float] | None,
                 device: torch.device) -> dict[str, Any]:
    s = median(case.samples[phase])
    amp_dtype = case.trainer.amp_dtype
    return {
        "label": case.label,
        "options": case.opts.to_dict(),
        "sdpa_math": case.sdpa_math,
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        "grad_scaler": case.trainer.scaler is not None,
        "s_per_step": s,
        "s_per_step_samples": case.samples[phase],
        "images_per_s": batch / s,
        "flop_per_s": flops / s,
        "share_of_peak": (flops / s / (peak[1] * 1e12)) if peak else None,
        "peak_memory_mb": case.peak_bytes / 2**20,
        "peak_memory_kind": ("cuda: this setting's weights, gradients, EMA and AdamW state plus the step's peak "
                             "allocation" if device.type == "cuda" else "process RSS (sampled every 2 ms)"),
        "warmup_s": case.warmup_s,
        "compiled": case.opts.compile and case.compile_error is None,
        "compile_error": case.compile_error,
        "last_loss": case.last_loss,
    }


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_training(
    config: TrainConfig, device: torch.device, args: argparse.Namespace, peak: tuple[str, float] | None, log: Callable
) -> dict[str, Any]:
    """The greedy ladder of switches, then baseline vs the kept set (and ablations). See the module docstring."""
    batch = args.batch_size or config.batch_size
    tb = TrainBench(config, device, batch, args.warmup, log)
    flops = tb.count_flops()
    log(f"training: {flops / 1e9:.1f} GFLOP per step of {batch} images; measuring fp32 eager …")
    baseline = tb.build(BASELINE)
    steps = args.steps or tb.calibrate(baseline, target_s=1.0 if device.type == "cuda" else 2.0, max_steps=50)
    tb.steps = steps
    best = baseline
    ladder = []
    for name, changes in candidates(device, args.compile, args.compile_mode):
        cand = tb.build(best.opts.replace(**changes))
        phase = f"ladder:{name}"
        before, after = tb.measure([best, cand], phase, args.repeats)
        gain = before / after
        noise = max(spread(best.samples[phase]), spread(cand.samples[phase]))
        keep = gain >= 1.0 + max(args.min_gain, noise) and cand.compile_error is None
        ladder.append({"switch": name, "options": cand.opts.to_dict(), "s_per_step_before": before,
                       "s_per_step_after": after, "gain": gain, "noise": noise, "kept": keep,
                       "compile_error": cand.compile_error, "warmup_s": cand.warmup_s})
        log(f"  {name}: {before * 1e3:.1f} → {after * 1e3:.1f} ms/step (×{gain:.2f}, noise ±{100 * noise:.0f} %) "
            f"{'kept' if keep else 'dropped'}")
        if keep:
            best = cand  # the previous best is freed unless it is the baseline
        del cand
        _free(device)
    log("final round: fp32 eager vs the kept set …")
    cases = [baseline] if best is baseline else [baseline, best]
    tb.measure(cases, "final", args.repeats)
    base_r = _case_result(baseline, "final", flops, batch, peak, device)
    best_r = _case_result(best, "final", flops, batch, peak, device)
    out: dict[str, Any] = {
        "batch": batch,
        "steps_per_block": steps,
        "flop_per_step": flops,
        "step": "ddpm_ref.training.Trainer.run_step (flip, loss, backward, clip, AdamW, EMA, LR schedule)",
        "baseline": base_r,
        "optimised": best_r,
        "speedup": base_r["s_per_step"] / best_r["s_per_step"],
        "ladder": ladder,
        "ablations": [],
    }
    if args.ablations:
        out["ablations"] = _ablations(tb, best, device, args.repeats, log)
    out["kept_options"] = best.opts.to_dict()
    return out


def _ablations(tb: TrainBench, best: TrainCase, device: torch.device, repeats: int, log: Callable) -> list[dict]:
    """The SDPA math backend (and, on a CPU, the other thread count) against the kept set, eager."""
    eager = best if not best.opts.compile else tb.build(best.opts.replace(compile=False, compile_mode=None))
    abl = [("SDPA math backend instead of fused attention kernels", eager, tb.build(eager.opts, sdpa_math=True))]
    n = torch.get_num_threads()
    alt = perf.default_threads() if n != perf.default_threads() else 1
    if device.type == "cpu" and alt != n:
        abl.append((f"{alt} CPU thread{'s' if alt > 1 else ''} instead of {n}", eager,
                    tb.build(eager.opts.replace(threads=alt))))
    rows = []
    for what, ref, other in abl:
        ref_s, alt_s = tb.measure([ref, other], f"ablation:{what}", repeats)
        rows.append({"what": what, "reference": ref.label, "s_per_step_reference": ref_s,
                     "s_per_step_ablated": alt_s, "slowdown": alt_s / ref_s})
        log(f"  ablation {what}: {ref_s * 1e3:.1f} → {alt_s * 1e3:.1f} ms/step (×{alt_s / ref_s:.2f})")
    return rows
