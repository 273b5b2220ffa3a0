"""Benchmark of the training step and the samplers: every speed-up next to plain fp32 eager, in one run.

    python -m ddpm_ref bench --preset seed-celebahq256 --device cuda --out bench.json
    python -m ddpm_ref.bench --preset lfw-tiny --device cpu

Training: the project's own :func:`ddpm_ref.train_step` (loss eq. 14, backward, clip, AdamW) on a fixed batch
[B, C, H, W] already on the device, so the numbers are the model's, not the data loader's. Each switch of
:class:`ddpm_ref.perf.PerfOptions` is tried on top of the best set so far (greedy, in the order AMP,
channels_last, fused AdamW, cuDNN autotuning, torch.compile) and kept only when it wins by ``--min-gain``;
the two settings compared are timed in alternation (round-robin), so a load change on a shared machine hits
both. The final set is timed again against fp32 eager in a fresh round. Warm-up steps (and compilation) are
excluded; each figure is the median over ``--repeats`` blocks of ``--steps`` steps.

FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode`` on one training step (forward and
backward of convolutions, matmuls and attention) and divided by the measured time; on a known GPU the result is
also given as a share of the 16-bit dense peak (:data:`PEAK_TFLOPS`, vendor datasheets).

Sampling: :func:`ddpm_ref.p_sample` (Algorithm 2) and :func:`ddpm_ref.ddim_step` (Song et al. 2021, eq. 12)
timed over a few steps, plain (fp32 eager under the samplers' own no_grad) and optimised (inference mode, the
training winners, compiled where compile is on), at ``--sample-batch`` (5) and a larger batch. The wall time
for 5 images with all T DDPM steps and with 50 DDIM steps is measured end to end with ``--full-sampling``
(the default on CUDA) and otherwise estimated from the per-step time (and labelled so). An analytic-oracle
check (:class:`ddpm_ref.GaussianMixtureOracle`) reports how far DDPM and DDIM samples are from the data
distribution under the preset's schedule.

Writes JSON (``--out``) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from . import perf
from .config import PRESETS, TrainConfig, apply_overrides, build_model, build_schedule, get_config
from .oracle import GaussianMixtureOracle
from .perf import BASELINE, PerfOptions
from .precision import resolve_amp_dtype
from .samplers import ddim_sample, ddim_step, ddim_timesteps, p_sample, sample
from .schedule import NoiseSchedule
from .train import train_step

__all__ = ["PEAK_TFLOPS", "TARGETS", "device_peak", "add_arguments", "main", "run", "run_and_print", "format_tables",
           "oracle_check"]

SCHEMA = "ddpm-course-bench/1"

#: dense (no sparsity) peak TFLOP/s from the vendors' datasheets; None where the unit has no such tensor cores.
#: Matched against torch.cuda.get_device_name() in this order (the first pattern that matches wins).
PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},  # SXM
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "T4": {"bf16": None, "fp16": 65.0, "fp32": 8.1},  # Turing: no bf16 tensor cores
}
_PEAK_PATTERNS = [(k, re.compile(r"\b" + re.escape(k).replace(r"\ ", r"\s+") + r"\b", re.IGNORECASE))
                  for k in PEAK_TFLOPS]

#: the issue's targets (checked on CUDA; the share of peak only on a GPU of PEAK_TFLOPS)
TARGETS = {"train_speedup_min": 2.5, "share_of_bf16_peak_min": 0.35, "ddim_speedup_min": 7.0}

#: the oracle's data: constant images of −0.5 (weight 0.3) or +0.5 (weight 0.7), and the tolerances the ddpm_ref
#: sampler tests allow for 1000 such samples (tests/test_ddim.py, tests/test_sampling.py: two-point mixture)
ORACLE_MIXTURE = {"means": [-0.5, 0.5], "stds": [0.0, 0.0], "weights": [0.3, 0.7]}
ORACLE_TOLERANCE = {"weight": 0.045, "distance": 1e-2}


def device_peak(name: str) -> tuple[str, dict[str, float | None]] | None:
    """(table key, peaks) for a GPU name such as "NVIDIA H100 80GB HBM3"; None if it is not in the table."""
    for key, pattern in _PEAK_PATTERNS:
        if pattern.search(name):
            return key, PEAK_TFLOPS[key]
    return None


def _half_peak(peaks: dict[str, float | None]) -> tuple[str, float]:
    """The 16-bit dense peak: bf16 where the GPU has bf16 tensor cores, else fp16."""
    return ("bf16", peaks["bf16"]) if peaks.get("bf16") else ("fp16", peaks["fp16"])  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PeakMemory:
    """Peak memory over a block: CUDA allocator peak, or on the CPU the process RSS sampled every 2 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _spread(xs: Sequence[float]) -> float:
    """Half the range of repeated timings relative to their median: how far apart two equal settings can look."""
    return (max(xs) - min(xs)) / (2 * _median(xs)) if len(xs) > 1 else 0.0


# ------------------------------------------------------------------------------------------------ training


@dataclass
class _TrainCase:
    """One training setting, built once, warmed up, then timed block by block."""

    opts: PerfOptions
    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    x0: Tensor
    generator: torch.Generator
    sdpa_math: bool = False
    compile_error: str | None = None
    warmup_s: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=dict)
    peak_bytes: int = 0
    last_loss: float = float("nan")

    @property
    def label(self) -> str:
        return self.opts.label() + (" + SDPA math backend" if self.sdpa_math else "")

    @contextlib.contextmanager
    def context(self, device: torch.device) -> Iterator[None]:
        with perf.backend_flags(self.opts, device), contextlib.ExitStack() as stack:
            if self.sdpa_math:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            yield


def _state_bytes(case: _TrainCase) -> int:
    """Bytes of the case's parameters, gradients and optimizer state (what stays allocated between steps)."""
    total = 0
    for p in case.net.parameters():
        total += p.numel() * p.element_size()
        if p.grad is not None:
            total += p.grad.numel() * p.grad.element_size()
    for st in case.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in st.values() if isinstance(v, Tensor))
    return total


class _Trainer:
    """Builds and times :class:`_TrainCase` objects for one config, batch and device."""

    def __init__(self, config: TrainConfig, device: torch.device, batch: int, warmup: int, log: Callable) -> None:
        self.config = config
        self.device = device
        self.batch = batch
        self.warmup = warmup
        self.log = log
        self.schedule = build_schedule(config).to(device)
        torch.manual_seed(config.seed)
        self.state = {k: v.clone() for k, v in build_model(config).state_dict().items()}
        g = torch.Generator().manual_seed(config.seed)
        shape = (batch, config.channels, config.image_size, config.image_size)
        self.x0_cpu = torch.rand(shape, generator=g) * 2 - 1  # a fixed batch in [−1, 1]
        self.steps = 1

    def fresh_net(self) -> nn.Module:
        net = build_model(self.config)
        net.load_state_dict(self.state)
        return net.to(self.device)

    def build(self, opts: PerfOptions, *, sdpa_math: bool = False) -> _TrainCase:
        device = self.device
        self.log(f"  building {opts.label()}{' + SDPA math' if sdpa_math else ''} …")
        net = self.fresh_net()
        amp_dtype = resolve_amp_dtype(device, opts.amp)
        x0 = perf.to_device(self.x0_cpu, device, channels_last=opts.channels_last)
        model: nn.Module = net
        error = None
        t0 = time.perf_counter()
        with perf.backend_flags(opts, device):
            if opts.channels_last:
                net.to(memory_format=torch.channels_last)
            if opts.compile:
                t_ex = torch.randint(0, self.schedule.T, (self.batch,), device=device)
                res = perf.compile_model(net, mode=opts.compile_mode, example=(x0, t_ex), backward=True,
                                         amp_dtype=amp_dtype)
                model, error = res.model, res.error
        optimizer = perf.make_adamw(net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay,
                                    fused=opts.fused_adamw)
        case = _TrainCase(opts=opts, net=net, model=model, optimizer=optimizer,
                          scaler=perf.make_grad_scaler(device, amp_dtype), amp_dtype=amp_dtype, x0=x0,
                          generator=torch.Generator(device=device).manual_seed(self.config.seed),
                          sdpa_math=sdpa_math, compile_error=error)
        with case.context(device):
            for _ in range(self.warmup):
                self._step(case)
            _sync(device)
        case.warmup_s = time.perf_counter() - t0
        if error:
            self.log(f"    compile fell back to eager: {error}")
        return case

    def _step(self, case: _TrainCase) -> None:
        case.last_loss = train_step(case.model, case.optimizer, case.x0, self.schedule, generator=case.generator,
                                    grad_clip=self.config.grad_clip, scaler=case.scaler, amp_dtype=case.amp_dtype)

    def time_block(self, case: _TrainCase, phase: str) -> float:
        """Seconds per step over one block of ``self.steps`` steps (appended to ``case.samples[phase]``)."""
        with case.context(self.device), _PeakMemory(self.device) as mem:
            _sync(self.device)
            t0 = time.perf_counter()
            for _ in range(self.steps):
                self._step(case)
            _sync(self.device)
            dt = (time.perf_counter() - t0) / self.steps
        if self.device.type == "cuda":  # this case's resident state plus what its step allocated on top
            case.peak_bytes = max(case.peak_bytes, mem.peak - mem.start + _state_bytes(case))
        else:
            case.peak_bytes = max(case.peak_bytes, mem.peak)
        case.samples.setdefault(phase, []).append(dt)
        if not math.isfinite(case.last_loss):
            raise RuntimeError(f"{case.label}: the training loss became {case.last_loss}")
        return dt

    def measure(self, cases: Sequence[_TrainCase], phase: str, repeats: int) -> list[float]:
        """Round-robin: repeat × (one block per case). Returns each case's median seconds per step."""
        for _ in range(repeats):
            for case in cases:
                self.time_block(case, phase)
        return [_median(c.samples[phase]) for c in cases]

    def calibrate(self, case: _TrainCase, target_s: float, max_steps: int) -> int:
        """Steps per block so that one block of ``case`` lasts about ``target_s``."""
        self.steps = 1
        dt = self.time_block(case, "calibration")
        self.steps = max(1, min(max_steps, round(target_s / max(dt, 1e-6))))
        return self.steps

    def count_flops(self) -> int:
        """FLOPs of one training step (forward + backward) of the fp32 model on this batch."""
        net = self.fresh_net()
        opt = torch.optim.AdamW(net.parameters(), lr=self.config.lr)
        with FlopCounterMode(display=False) as counter:
            train_step(net, opt, self.x0_cpu.to(self.device), self.schedule,
                       generator=torch.Generator(device=self.device).manual_seed(0))
        del net, opt
        return int(counter.get_total_flops())


def _candidates(device: torch.device, compile_on: bool, compile_mode: str | None) -> list[tuple[str, dict]]:
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


def _case_result(case: _TrainCase, phase: str, flops: int, batch: int, peak: tuple[str, float] | None,
                 device: torch.device) -> dict[str, Any]:
    s = _median(case.samples[phase])
    r: dict[str, Any] = {
        "label": case.label,
        "options": case.opts.to_dict(),
        "sdpa_math": case.sdpa_math,
        "amp_dtype": str(case.amp_dtype).replace("torch.", "") if case.amp_dtype else "float32",
        "grad_scaler": case.scaler is not None,
        "s_per_step": s,
        "s_per_step_samples": case.samples[phase],
        "images_per_s": batch / s,
        "flop_per_s": flops / s,
        "share_of_peak": (flops / s / (peak[1] * 1e12)) if peak else None,
        "peak_memory_mb": case.peak_bytes / 2**20,
        "peak_memory_kind": ("cuda: this setting's weights, gradients and AdamW state plus the step's peak "
                             "allocation" if device.type == "cuda" else "process RSS (sampled every 2 ms)"),
        "warmup_s": case.warmup_s,
        "compiled": case.opts.compile and case.compile_error is None,
        "compile_error": case.compile_error,
        "last_loss": case.last_loss,
    }
    return r


def bench_training(
    config: TrainConfig, device: torch.device, args: argparse.Namespace, peak: tuple[str, float] | None, log: Callable
) -> dict[str, Any]:
    """The greedy ladder of switches, then baseline vs the kept set (and ablations). See the module docstring."""
    batch = args.batch_size or config.batch_size
    tr = _Trainer(config, device, batch, args.warmup, log)
    flops = tr.count_flops()
    log(f"training: {flops / 1e9:.1f} GFLOP per step of {batch} images; measuring fp32 eager …")
    baseline = tr.build(BASELINE)
    steps = args.steps or tr.calibrate(baseline, target_s=1.0 if device.type == "cuda" else 2.0, max_steps=50)
    tr.steps = steps
    best = baseline
    ladder = []
    for name, changes in _candidates(device, args.compile, args.compile_mode):
        cand = tr.build(best.opts.replace(**changes))
        phase = f"ladder:{name}"
        before, after = tr.measure([best, cand], phase, args.repeats)
        gain = before / after
        noise = max(_spread(best.samples[phase]), _spread(cand.samples[phase]))
        keep = gain >= 1.0 + max(args.min_gain, noise) and cand.compile_error is None
        ladder.append({"switch": name, "options": cand.opts.to_dict(), "s_per_step_before": before,
                       "s_per_step_after": after, "gain": gain, "noise": noise, "kept": keep,
                       "compile_error": cand.compile_error, "warmup_s": cand.warmup_s})
        log(f"  {name}: {before * 1e3:.1f} → {after * 1e3:.1f} ms/step (×{gain:.2f}, noise ±{100 * noise:.0f} %) "
            f"{'kept' if keep else 'dropped'}")
        if keep:
            best = cand  # the previous best is freed unless it is the baseline
        del cand
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log("final round: fp32 eager vs the kept set …")
    cases = [baseline] if best is baseline else [baseline, best]
    tr.measure(cases, "final", args.repeats)
    base_r = _case_result(baseline, "final", flops, batch, peak, device)
    best_r = _case_result(best, "final", flops, batch, peak, device)
    out: dict[str, Any] = {
        "batch": batch,
        "steps_per_block": steps,
        "flop_per_step": flops,
        "baseline": base_r,
        "optimised": best_r,
        "speedup": base_r["s_per_step"] / best_r["s_per_step"],
        "ladder": ladder,
        "ablations": [],
    }
    if args.ablations:
        eager = best if not best.opts.compile else tr.build(best.opts.replace(compile=False, compile_mode=None))
        abl = [("SDPA math backend instead of fused attention kernels",
                eager, tr.build(eager.opts, sdpa_math=True))]
        n = torch.get_num_threads()
        alt = perf.default_threads() if n != perf.default_threads() else 1
        if device.type == "cpu" and alt != n:
            abl.append((f"{alt} CPU thread{'s' if alt > 1 else ''} instead of {n}", eager,
                        tr.build(eager.opts.replace(threads=alt))))
        for what, ref, alt in abl:
            ref_s, alt_s = tr.measure([ref, alt], f"ablation:{what}", args.repeats)
            out["ablations"].append({"what": what, "reference": ref.label, "s_per_step_reference": ref_s,
                                     "s_per_step_ablated": alt_s, "slowdown": alt_s / ref_s})
            log(f"  ablation {what}: {ref_s * 1e3:.1f} → {alt_s * 1e3:.1f} ms/step (×{alt_s / ref_s:.2f})")
    out["kept_options"] = best.opts.to_dict()
    return out


# ------------------------------------------------------------------------------------------------ sampling


def _time_sampler_steps(model: nn.Module, schedule: NoiseSchedule, x: Tensor, kind: str, k: int, ddim_steps: int,
                        inference: bool, device: torch.device) -> float:
    """Seconds per step over ``k`` steps of DDPM (p_sample from t = T−1 down) or DDIM (its first k steps)."""
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.inference_mode() if inference else contextlib.nullcontext()
    ts = ddim_timesteps(schedule.T, ddim_steps)
    with ctx:
        _sync(device)
        t0 = time.perf_counter()
        for i in range(k):
            if kind == "ddpm":
                x = p_sample(model, x, schedule.T - 1 - i, schedule, generator=g)
            else:
                j = i % (len(ts) - 1) if len(ts) > 1 else 0
                x = ddim_step(model, x, ts[j], ts[j + 1] if j + 1 < len(ts) else -1, schedule)
        _sync(device)
    return (time.perf_counter() - t0) / k


def _time_full_chain(model: nn.Module, schedule: NoiseSchedule, shape: tuple[int, ...], kind: str, ddim_steps: int,
                     inference: bool, device: torch.device) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.inference_mode() if inference else contextlib.nullcontext()
    with ctx:
        _sync(device)
        t0 = time.perf_counter()
        if kind == "ddpm":
            sample(model, schedule, shape, generator=g, device=device, progress=False)
        else:
            ddim_sample(model, schedule, shape, steps=ddim_steps, generator=g, device=device, progress=False)
        _sync(device)
    return time.perf_counter() - t0


def bench_sampling(config: TrainConfig, device: torch.device, args: argparse.Namespace, kept: PerfOptions,
                   peak: tuple[str, float] | None, log: Callable) -> dict[str, Any]:
    """Per-step times of DDPM and DDIM, plain and optimised; images/s; wall time for ``--sample-batch`` images."""
    schedule = build_schedule(config).to(device)
    T, n_ddim = schedule.T, args.ddim_steps
    torch.manual_seed(config.seed)
    state = build_model(config).state_dict()
    shape_of = lambda b: (b, config.channels, config.image_size, config.image_size)  # noqa: E731
    opts = kept.replace(fused_adamw=False, compile=args.compile, compile_mode=args.compile_mode if args.compile
                        else None)

    def fresh() -> nn.Module:
        net = build_model(config)
        net.load_state_dict(state)
        return net.to(device).eval()

    # FLOPs of one network evaluation per image
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fresh()(torch.zeros(shape_of(1), device=device), torch.zeros(1, dtype=torch.long, device=device))
    flop_per_image_eval = int(counter.get_total_flops())

    batches = [args.sample_batch] + ([args.sample_batch_large] if args.sample_batch_large else [])
    log(f"sampling: {flop_per_image_eval / 1e9:.1f} GFLOP per image per step; optimised = {opts.label()} "
        "+ inference_mode")
    # (key, label, model, options, inference mode)
    settings: list[tuple[str, str, nn.Module, PerfOptions, bool]] = [
        ("baseline", "fp32 eager (no_grad)", fresh(), BASELINE, False)]
    eager_opts = opts.replace(compile=False, compile_mode=None)
    settings.append(("optimised", eager_opts.label() + " + inference_mode",
                     perf.SamplingModel.build(fresh(), eager_opts), eager_opts, True))
    build_s = None
    if opts.compile:
        b = args.sample_batch
        with perf.backend_flags(opts, device):
            t0 = time.perf_counter()
            fast = perf.SamplingModel.build(fresh(), opts, example=(
                torch.randn(shape_of(b), device=device), torch.full((b,), T - 1, dtype=torch.long, device=device)))
            build_s = time.perf_counter() - t0
        if fast._runner is not None:
            settings.append(("optimised_compiled", opts.label() + " + inference_mode", fast, opts, True))
        else:
            log("  compile fell back to eager for sampling: the compiled setting is left out")
    rows: list[dict[str, Any]] = []
    for b in batches:
        x = torch.randn(shape_of(b), generator=torch.Generator().manual_seed(1)).to(device)
        here = settings if b == args.sample_batch else [st for st in settings if st[0] != "baseline"]
        for _key, _label, model, o, inference in here:  # warm-up (a new batch size recompiles here)
            with perf.backend_flags(o, device):
                for kind in ("ddpm", "ddim"):
                    _time_sampler_steps(model, schedule, x, kind, 2 if device.type == "cuda" else 1, n_ddim,
                                        inference, device)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for key, _label, model, o, inference in here:
                with perf.backend_flags(o, device):
                    for kind in ("ddpm", "ddim"):
                        times.setdefault((key, kind), []).append(
                            _time_sampler_steps(model, schedule, x, kind, args.sample_steps, n_ddim, inference,
                                                device))
        for key, label, _model, _o, _inference in here:
            for kind in ("ddpm", "ddim"):
                sec = _median(times[(key, kind)])
                steps = T if kind == "ddpm" else n_ddim
                row = {"sampler": kind, "steps": steps, "setting": label, "key": key, "batch": b,
                       "s_per_step": sec, "s_per_step_samples": times[(key, kind)],
                       "images_per_s": b / (sec * steps), "flop_per_s": flop_per_image_eval * b / sec,
                       "share_of_peak": flop_per_image_eval * b / sec / (peak[1] * 1e12) if peak else None,
                       "wall_s_estimated": sec * steps, "optimised": key != "baseline",
                       "compiled": key == "optimised_compiled"}
                if key == "optimised_compiled":
                    row["compile_s"] = build_s
                rows.append(row)
                log(f"  {kind} {label} batch {b}: {sec * 1e3:.1f} ms/step, {row['images_per_s']:.3g} images/s")

    def row_of(kind: str, key: str) -> dict[str, Any]:
        return next(r for r in rows if r["sampler"] == kind and r["key"] == key and r["batch"] == args.sample_batch)

    # the optimised sampler is the faster of eager and compiled (DDPM and DDIM time the same network)
    best_key = min((k for k in ("optimised", "optimised_compiled") if any(r["key"] == k for r in rows)),
                   key=lambda k: row_of("ddpm", k)["s_per_step"] + row_of("ddim", k)["s_per_step"])
    full: dict[str, float] = {}
    walls = {}
    for name, key in (("baseline", "baseline"), ("optimised", best_key)):
        st = next(x for x in settings if x[0] == key)
        if args.full_sampling:
            log(f"  full chains for {args.sample_batch} images, {st[1]} ({T} DDPM steps, {n_ddim} DDIM steps) …")
            with perf.backend_flags(st[3], device):
                for kind in ("ddpm", "ddim"):
                    full[f"{kind}|{key}"] = _time_full_chain(st[2], schedule, shape_of(args.sample_batch), kind,
                                                             n_ddim, st[4], device)
        w = {kind: full.get(f"{kind}|{key}", row_of(kind, key)["wall_s_estimated"]) for kind in ("ddpm", "ddim")}
        walls[name] = {"setting": st[1], "images": args.sample_batch, "ddpm_steps": T, "ddim_steps": n_ddim,
                       "ddpm_wall_s": w["ddpm"], "ddim_wall_s": w["ddim"], "ddim_speedup": w["ddpm"] / w["ddim"],
                       "measured_end_to_end": args.full_sampling}
    walls["optimised"]["speedup_over_baseline_ddpm"] = walls["baseline"]["ddpm_wall_s"] / walls["optimised"][
        "ddpm_wall_s"]
    return {"flop_per_image_per_step": flop_per_image_eval, "options": opts.to_dict(), "best": best_key,
            "rows": rows, "wall": walls, "full_chain_s": full}


def oracle_check(schedule: NoiseSchedule, *, n: int = 1000, ddim_steps: int = 50, seed: int = 4) -> dict[str, Any]:
    """DDPM (all T steps) and DDIM (``ddim_steps``) driven by the exact ε* of :data:`ORACLE_MIXTURE`, on the CPU.

    The data are constant images [1, 4, 4] of −0.5 (weight 0.3) or +0.5 (0.7), as in the ddpm_ref sampler tests;
    reports the fraction of +0.5 samples, the worst distance of a sample from either point, and whether both are
    within :data:`ORACLE_TOLERANCE`.
    """
    schedule = schedule.to("cpu")
    m = ORACLE_MIXTURE
    oracle = GaussianMixtureOracle(schedule, means=m["means"], stds=m["stds"], weights=m["weights"])
    shape = (n, 1, 4, 4)
    out: dict[str, Any] = {"T": schedule.T, "alpha_bar_last": float(schedule.alpha_bars[-1]), "n": n}
    for kind in ("ddpm", "ddim"):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        if kind == "ddpm":
            x = sample(oracle, schedule, shape, generator=g, progress=False)
        else:
            x = ddim_sample(oracle, schedule, shape, steps=ddim_steps, generator=g, progress=False)
        dt = time.perf_counter() - t0
        frac = float((x.flatten(1).mean(1) > 0).double().mean())
        worst = float(torch.minimum((x + 0.5).abs(), (x - 0.5).abs()).max())
        err = abs(frac - m["weights"][1])
        out[kind] = {"steps": schedule.T if kind == "ddpm" else ddim_steps, "seconds": dt, "weight": frac,
                     "weight_error": err, "worst_distance": worst,
                     "within_tolerance": err <= ORACLE_TOLERANCE["weight"] and worst <= ORACLE_TOLERANCE["distance"]}
    return out


def oracle_checks(config: TrainConfig, ddim_steps: int, n: int) -> dict[str, Any]:
    """:func:`oracle_check` under the noise-reaching schedule of the ddpm_ref tests (scaled linear, the preset's T)
    and under the preset's own schedule (which, for the seed's linear T=400, does not reach pure noise)."""
    reference = NoiseSchedule.from_name("scaled_linear", config.T)
    return {"mixture": ORACLE_MIXTURE, "tolerance": ORACLE_TOLERANCE,
            "reference_schedule": {"name": f"scaled_linear T={config.T}", **oracle_check(reference, n=n,
                                                                                         ddim_steps=ddim_steps)},
            "preset_schedule": {"name": f"{config.beta_schedule} T={config.T}", **oracle_check(
                build_schedule(config), n=n, ddim_steps=ddim_steps)}}


# ------------------------------------------------------------------------------------------------ loader


def bench_loader(config: TrainConfig, device: torch.device, batch: int, n_images: int, train_images_per_s: float,
                 log: Callable) -> dict[str, Any]:
    """Images/s of the project's ImageFolderDataset (JPEG decode, resize, crop) for several worker counts,
    against the optimised training throughput; plus pageable vs pinned host→device copies on CUDA.

    The files are synthetic cartoon faces saved as JPEG at quality 95; photographs decode somewhat slower."""
    from PIL import Image
    from torch.utils.data import DataLoader

    from .data import ImageFolderDataset, synthetic_faces, to_uint8_image

    size = config.image_size
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as tmp:
        faces = synthetic_faces(min(n_images, 64), size=size, seed=0)  # drawing is slow: reuse 64 faces
        for i in range(n_images):
            face = faces[i % len(faces)]
            Image.fromarray(to_uint8_image(face if config.channels == 3 else face[:1])).save(
                Path(tmp) / f"{i:05d}.jpg", quality=95)
        ds = ImageFolderDataset(tmp, size, channels=config.channels, hflip=True)
        cores = perf.available_cores()
        counts = sorted({0, *[w for w in (1, 2, 4, 8, 16) if w <= max(cores, 1)]})
        for w in counts:
            loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, **perf.loader_kwargs(device, w))
            it = iter(loader)
            next(it)  # start-up excluded
            t0 = time.perf_counter()
            n = 0
            for xb in it:
                xb = perf.to_device(xb, device)
                n += xb.shape[0]
            _sync(device)
            dt = time.perf_counter() - t0
            del it, loader
            rows.append({"num_workers": w, "images_per_s": n / dt if n else float("nan")})
            log(f"  loader, {w} workers: {rows[-1]['images_per_s']:.0f} images/s")
    enough = next((r["num_workers"] for r in rows if r["images_per_s"] >= 1.2 * train_images_per_s), None)
    out: dict[str, Any] = {"images": n_images, "size": size, "rows": rows, "cores": perf.available_cores(),
                           "train_images_per_s": train_images_per_s, "enough_workers": enough}
    if device.type == "cuda":
        host = torch.randn(batch, config.channels, size, size)
        pinned = host.pin_memory()
        res = {}
        for name, src in (("pageable", host), ("pinned", pinned)):
            for _ in range(3):
                src.to(device, non_blocking=True)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(50):
                src.to(device, non_blocking=True)
            _sync(device)
            res[name] = (time.perf_counter() - t0) / 50
        out["h2d_copy_s"] = res
        out["h2d_pinned_speedup"] = res["pageable"] / res["pinned"]
    return out


# ------------------------------------------------------------------------------------------------ report


def _machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                            "cores": perf.available_cores(), "threads": torch.get_num_threads()}
    try:
        info["load_avg"] = list(os.getloadavg())
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info["cpu"] = cpu
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch deprecates these flags in favour of fp32_precision
        info["tf32"] = {"cudnn_conv": bool(torch.backends.cudnn.allow_tf32),
                        "cuda_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gb=p.total_memory / 2**30,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    tr, sm = result["train"], result.get("sampling")
    out: dict[str, Any] = {}
    cuda = result["machine"]["device"].startswith("cuda")
    sp = tr["speedup"]
    out["train_speedup"] = {"value": sp, "min": TARGETS["train_speedup_min"],
                            "met": sp >= TARGETS["train_speedup_min"] if cuda else None}
    share = tr["optimised"]["share_of_peak"]
    out["share_of_bf16_peak"] = {"value": share, "min": TARGETS["share_of_bf16_peak_min"],
                                 "met": (share >= TARGETS["share_of_bf16_peak_min"]) if share is not None else None}
    if sm:
        w = sm["wall"]["optimised"]
        stated = w["ddpm_steps"] == 400 and w["ddim_steps"] == 50  # the target compares 400 DDPM with 50 DDIM steps
        out["ddim_speedup"] = {"value": w["ddim_speedup"], "min": TARGETS["ddim_speedup_min"],
                               "met": (w["ddim_speedup"] >= TARGETS["ddim_speedup_min"]) if stated else None,
                               "measured_end_to_end": w["measured_end_to_end"]}
    oc = result.get("oracle")
    if oc:
        ref = oc["reference_schedule"]["ddim"]
        out["ddim_oracle_error"] = {"value": ref["weight_error"], "min": None, "max": oc["tolerance"]["weight"],
                                    "met": ref["within_tolerance"]}
    notes = []
    if not cuda:
        notes.append("the training targets are stated for an H100 and are not judged on a CPU")
    if sm and out["ddim_speedup"]["met"] is None:
        w = sm["wall"]["optimised"]
        notes.append(f"the DDIM target compares 50 DDIM steps with 400 DDPM steps; this run has {w['ddim_steps']} "
                     f"and {w['ddpm_steps']} (at most ×{w['ddpm_steps'] / w['ddim_steps']:.0f} in network calls)")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def _fmt_rate(flop_per_s: float, cuda: bool) -> str:
    return f"{flop_per_s / 1e12:.1f} TFLOP/s" if cuda else f"{flop_per_s / 1e9:.1f} GFLOP/s"


def format_tables(result: dict[str, Any]) -> str:
    """Markdown tables of a bench result (what ``main`` prints)."""
    m, tr = result["machine"], result["train"]
    cuda = m["device"].startswith("cuda")
    dev = m.get("gpu", m["cpu"])
    shape = result["shape"]
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    lines = [f"### {result['preset']} on {dev} ({m['device']}, torch {m['torch']}, {threads})", "",
             f"Training step, batch {tr['batch']} of {shape[1]}×{shape[2]}×{shape[3]}; "
             f"{tr['flop_per_step'] / 1e9:.1f} GFLOP per step; median of {result['repeats']} blocks of "
             f"{tr['steps_per_block']} steps.", "",
             "| setting | ms/step | images/s | achieved | % of 16-bit peak | peak memory (MB) | vs fp32 eager |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key in ("baseline", "optimised") if tr["optimised"]["label"] != tr["baseline"]["label"] else ("baseline",):
        r = tr[key]
        share = f"{100 * r['share_of_peak']:.1f} %" if r["share_of_peak"] is not None else "–"
        ratio = tr["baseline"]["s_per_step"] / r["s_per_step"]
        lines.append(f"| {r['label']} | {r['s_per_step'] * 1e3:.1f} | {r['images_per_s']:.3g} | "
                     f"{_fmt_rate(r['flop_per_s'], cuda)} | {share} | {r['peak_memory_mb']:.0f} | ×{ratio:.2f} |")
    lines += ["", "| switch (on top of the kept ones) | ms/step before | after | gain | noise | kept | warm-up (s) |",
              "|---|---:|---:|---:|---:|---|---:|"]
    for r in tr["ladder"]:
        note = f" (compile failed: {r['compile_error']})" if r.get("compile_error") else ""
        noise = f"±{100 * r['noise']:.0f} %" if r.get("noise") is not None else "–"
        lines.append(f"| {r['switch']} | {r['s_per_step_before'] * 1e3:.1f} | {r['s_per_step_after'] * 1e3:.1f} | "
                     f"×{r['gain']:.2f} | {noise} | {'yes' if r['kept'] else 'no'}{note} | {r['warmup_s']:.1f} |")
    for a in tr.get("ablations", []):
        lines.append(f"| ablation: {a['what']} | {a['s_per_step_reference'] * 1e3:.1f} | "
                     f"{a['s_per_step_ablated'] * 1e3:.1f} | ×{1 / a['slowdown']:.2f} | | – | |")
    sm = result.get("sampling")
    if sm:
        lines += ["", f"Sampling ({sm['flop_per_image_per_step'] / 1e9:.1f} GFLOP per image per step):", "",
                  "| sampler | setting | batch | ms/step | images/s | achieved |", "|---|---|---:|---:|---:|---:|"]
        for r in sm["rows"]:
            lines.append(f"| {r['sampler'].upper()} {r['steps']} steps | {r['setting']} | {r['batch']} | "
                         f"{r['s_per_step'] * 1e3:.1f} | {r['images_per_s']:.3g} | "
                         f"{_fmt_rate(r['flop_per_s'], cuda)} |")
        lines += ["", "| wall time | setting | DDPM | DDIM | DDIM speed-up | how |", "|---|---|---:|---:|---:|---|"]
        for w in sm["wall"].values():
            how = "measured end to end" if w["measured_end_to_end"] else "estimated: per-step time × steps"
            lines.append(f"| {w['images']} images | {w['setting']} | {w['ddpm_wall_s']:.1f} s ({w['ddpm_steps']} "
                         f"steps) | {w['ddim_wall_s']:.1f} s ({w['ddim_steps']} steps) | ×{w['ddim_speedup']:.2f} "
                         f"| {how} |")
        rows = [r for r in sm["rows"] if "compile_s" in r]
        if rows:
            lines.append(f"\nCompiling the sampling network took {rows[0]['compile_s']:.0f} s (not in the figures).")
    oc = result.get("oracle")
    if oc:
        tol = oc["tolerance"]
        lines += ["", f"Analytic oracle: constant images of −0.5 / +0.5 with weights {oc['mixture']['weights']}; "
                  f"tolerance of the ddpm_ref tests: weight ± {tol['weight']}, every sample within {tol['distance']}.",
                  "", "| schedule | sampler | steps | weight of +0.5 | worst distance | within tolerance |",
                  "|---|---|---:|---:|---:|---|"]
        for key in ("reference_schedule", "preset_schedule"):
            sch = oc[key]
            for kind in ("ddpm", "ddim"):
                o = sch[kind]
                ok = "yes" if o["within_tolerance"] else "no"
                lines.append(f"| {sch['name']} (ᾱ_T−1 = {sch['alpha_bar_last']:.2g}) | {kind.upper()} | "
                             f"{o['steps']} | {o['weight']:.3f} | {o['worst_distance']:.2g} | {ok} |")
    ld = result.get("loader")
    if ld:
        lines += ["", f"Data loader ({ld['images']} JPEGs at {ld['size']} px; training consumes "
                  f"{ld['train_images_per_s']:.3g} images/s):", "", "| workers | images/s |", "|---:|---:|"]
        lines += [f"| {r['num_workers']} | {r['images_per_s']:.0f} |" for r in ld["rows"]]
        if "h2d_pinned_speedup" in ld:
            c = ld["h2d_copy_s"]
            lines.append(f"\nHost→device copy of one batch: pageable {c['pageable'] * 1e3:.2f} ms, pinned "
                         f"{c['pinned'] * 1e3:.2f} ms (×{ld['h2d_pinned_speedup']:.2f}).")
    tg = result.get("targets")
    if tg:
        lines += ["", "| target | value | required | met |", "|---|---:|---:|---|"]
        for key in ("train_speedup", "share_of_bf16_peak", "ddim_speedup", "ddim_oracle_error"):
            if key in tg:
                t = tg[key]
                v = "–" if t["value"] is None else f"{t['value']:.3g}"
                met = {True: "yes", False: "NO", None: "n/a"}[t["met"]]
                bound = f"≥ {t['min']}" if t.get("min") is not None else f"≤ {t['max']}"
                lines.append(f"| {key} | {v} | {bound} | {met} |")
        if "note" in tg:
            lines.append(f"\n{tg['note']}.")
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# ------------------------------------------------------------------------------------------------ entry points


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The bench options, for ``python -m ddpm_ref bench`` and ``python -m ddpm_ref.bench``."""
    parser.add_argument("--preset", choices=list(PRESETS), help="training preset to measure (required)")
    parser.add_argument("--tables-from", default=None, metavar="BENCH.json",
                        help="only print the tables of a result written earlier (e.g. fetched from a GPU run)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model_channels=16,32 (repeatable)")
    parser.add_argument("--batch-size", type=int, default=0, help="training batch (default: the preset's)")
    parser.add_argument("--image-size", type=int, default=0, help="image size (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per setting; the median is reported")
    parser.add_argument("--steps", type=int, default=0, help="training steps per block (default: ~1 s on CUDA, "
                        "~2 s on CPU, from one calibration block)")
    parser.add_argument("--warmup", type=int, default=-1, help="untimed steps per setting (default 3 CUDA, 1 CPU)")
    parser.add_argument("--min-gain", type=float, default=0.02,
                        help="keep a switch only if it is this much faster, and by more than the timing noise "
                        "(half the range of the repeats)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="try torch.compile (default: on for CUDA, off on CPU)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the SDPA math backend (and 1 CPU thread) against the kept set")
    parser.add_argument("--sampling", action=argparse.BooleanOptionalAction, default=True, help="time the samplers")
    parser.add_argument("--sample-batch", type=int, default=5, help="images per sampling batch")
    parser.add_argument("--sample-batch-large", type=int, default=-1,
                        help="a larger sampling batch (default 32 on CUDA, none on CPU; 0: none)")
    parser.add_argument("--sample-steps", type=int, default=0,
                        help="sampler steps per timed block (default 20 CUDA, 2 CPU)")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--full-sampling", action=argparse.BooleanOptionalAction, default=None,
                        help="also run whole chains end to end (default: on for CUDA, off on CPU)")
    parser.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True,
                        help="analytic-oracle check of DDPM and DDIM under the preset's schedule")
    parser.add_argument("--oracle-samples", type=int, default=1000)
    parser.add_argument("--loader", action=argparse.BooleanOptionalAction, default=None,
                        help="time the image-folder loader per worker count (default: on for images >= 128 px)")
    parser.add_argument("--loader-images", type=int, default=1024, help="JPEG files the loader timing reads")
    parser.add_argument("--threads", default="0", help="CPU threads: a number, 'auto' (the cores the load "
                        "leaves idle, ddpm_ref.perf.cpu_threads) or 0 for torch's default")
    parser.add_argument("--out", default=None, help="JSON path (default: bench_<preset>_<device>.json)")
    parser.add_argument("--quiet", action="store_true", help="print only the tables")
    return parser


def _positive_int(text: Any, name: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _resolve(args: argparse.Namespace) -> tuple[TrainConfig, torch.device]:
    from .train import resolve_device

    device = resolve_device(args.device)
    config = get_config(args.preset)
    if args.overrides:
        config = apply_overrides(config, args.overrides)
    changes: dict[str, Any] = {"device": str(device)}
    if args.image_size:
        changes["image_size"] = args.image_size
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    config = config.replace(**changes)
    cuda = device.type == "cuda"
    if args.warmup < 0:
        args.warmup = 3 if cuda else 1
    if args.compile is None:
        args.compile = cuda
    if args.sample_batch_large < 0:
        args.sample_batch_large = 32 if cuda else 0
    if not args.sample_steps:
        args.sample_steps = 20 if cuda else 2
    if args.full_sampling is None:
        args.full_sampling = cuda
    if args.loader is None:
        args.loader = config.image_size >= 128
    for name in ("repeats", "sample_batch", "ddim_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    threads = perf.cpu_threads() if str(args.threads) == "auto" else _positive_int(args.threads, "--threads", 0)
    if threads:
        torch.set_num_threads(threads)
    return config, device


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; returns the result dict (also written as JSON)."""
    threads = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.tables_from:
        path = Path(args.tables_from)
        if not path.is_file():
            raise FileNotFoundError(f"no bench result at {str(path)!r}: give the JSON path written by --out")
        result = json.loads(path.read_text())
        if result.get("schema") != SCHEMA:
            raise ValueError(f"{str(path)!r} is not a bench result of schema {SCHEMA}")
        return result
    if not args.preset:
        raise ValueError(f"--preset is required: one of {', '.join(PRESETS)}")
    config, device = _resolve(args)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    machine = _machine(device)
    peak = None
    if device.type == "cuda":
        found = device_peak(machine["gpu"])
        if found:
            key, peaks = found
            peak = _half_peak(peaks)
            machine["peak_table_key"] = key
            machine["peak_tflops"] = {"dtype": peak[0], "value": peak[1], "table": peaks}
    t_start = time.perf_counter()
    result: dict[str, Any] = {"schema": SCHEMA, "preset": args.preset, "config": config.to_dict(), "machine": machine,
                              "shape": [args.batch_size or config.batch_size, config.channels, config.image_size,
                                        config.image_size], "repeats": args.repeats}
    log(f"bench {args.preset} on {machine.get('gpu', machine['cpu'])}: load average {machine.get('load_avg')}")
    out = Path(args.out or f"bench_{args.preset}_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result["out"] = str(out)
    result["errors"] = {}

    def section(name: str, fn: Callable[[], Any]) -> None:
        """Run one part; a failure is recorded (and the part left out) so the other parts still report."""
        try:
            result[name] = fn()
        except (KeyboardInterrupt, ValueError):
            raise
        except Exception as e:  # an OOM in sampling must not lose the training figures of a GPU run
            result["errors"][name] = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
            log(f"{name} failed: {result['errors'][name]}")
        result["wall_s"] = time.perf_counter() - t_start
        out.write_text(json.dumps(_jsonable(result), indent=2) + "\n")  # partial results survive a later crash

    section("train", lambda: bench_training(config, device, args, peak, log))
    if "train" not in result:
        return result
    kept = PerfOptions(**result["train"]["kept_options"])
    if args.sampling:
        section("sampling", lambda: bench_sampling(config, device, args, kept, peak, log))
    if args.oracle:
        log("oracle check …")
        section("oracle", lambda: oracle_checks(config, args.ddim_steps, args.oracle_samples))
    if args.loader:
        log("data loader …")
        section("loader", lambda: bench_loader(config, device, result["train"]["batch"], args.loader_images,
                                               result["train"]["optimised"]["images_per_s"], log))
    with contextlib.suppress(OSError):
        machine["load_avg_end"] = list(os.getloadavg())
    section("targets", lambda: _targets(result))
    log(f"wrote {out} ({result['wall_s']:.0f} s)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ddpm_ref.bench …``; returns the exit status (2 with a one-line ``error: …`` on bad input)."""
    parser = add_arguments(argparse.ArgumentParser(prog="python -m ddpm_ref.bench", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        run_and_print(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def run_and_print(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`run`, then print the tables; raises RuntimeError naming the parts that failed (their figures are
    left out of the JSON, the others are kept)."""
    result = run(args)
    if "train" in result:
        print(format_tables(result), flush=True)
    errors = result.get("errors") or {}
    if errors:
        raise RuntimeError("; ".join(f"the {name} part failed: {err}" for name, err in errors.items())
                           + f" (partial results in {result.get('out')})")
    return result


if __name__ == "__main__":
    sys.exit(main())
