"""Benchmark of the training step and the samplers: every speed-up next to plain fp32 eager, in one run.

    python -m ddpm_ref bench --preset seed-celebahq256 --device cuda --out bench.json
    python -m ddpm_ref.bench --preset lfw-tiny --device cpu

Training: the :class:`ddpm_ref.training.Trainer`'s own step (:meth:`~ddpm_ref.training.Trainer.run_step`: flip, loss
eq. 14, backward, clip, AdamW, EMA, LR schedule) on a fixed batch [B, C, H, W] already on the device, so the numbers
are the training run's, not the data loader's. Each switch of
:class:`ddpm_ref.speed.perf.PerfOptions` is tried on top of the best set so far (greedy, in the order AMP,
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

Writes JSON (``--out``) and prints markdown tables. The parts live in :mod:`ddpm_ref.bench.train` (training
cases), :mod:`ddpm_ref.bench.sample` (sampling, oracle, loader), :mod:`ddpm_ref.bench.timing` and
:mod:`ddpm_ref.bench.report` (peak table, targets, tables, JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..speed import perf
from ..speed.perf import PerfOptions, resolve_device
from ..training.config import PRESETS, TrainConfig, apply_overrides, get_config
from .report import (
    PEAK_TFLOPS,
    SCHEMA,
    TARGETS,
    device_peak,
    format_tables,
    half_peak,
    jsonable,
    machine_info,
    targets,
)
from .sample import ORACLE_MIXTURE, ORACLE_TOLERANCE, bench_loader, bench_sampling, oracle_check, oracle_checks
from .train import bench_training

__all__ = ["PEAK_TFLOPS", "TARGETS", "SCHEMA", "ORACLE_MIXTURE", "ORACLE_TOLERANCE", "device_peak", "add_arguments",
           "main", "run", "run_and_print", "format_tables", "oracle_check", "bench_training", "bench_sampling",
           "bench_loader"]

#: where a result goes without ``--out``: a git-ignored folder, so a benchmark never changes the checkout
DEFAULT_OUT = "outputs/bench/bench_{preset}_{device}.json"

_half_peak = half_peak  # the name the tests and older notes use

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
                        "leaves idle, ddpm_ref.speed.perf.cpu_threads) or 0 for torch's default")
    parser.add_argument("--out", default=None,
                        help="JSON path (default: outputs/bench/bench_PRESET_DEVICE.json, a git-ignored folder)")
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
    machine = machine_info(device)
    peak = None
    if device.type == "cuda":
        found = device_peak(machine["gpu"])
        if found:
            key, peaks = found
            peak = half_peak(peaks)
            machine["peak_table_key"] = key
            machine["peak_tflops"] = {"dtype": peak[0], "value": peak[1], "table": peaks}
    t_start = time.perf_counter()
    result: dict[str, Any] = {"schema": SCHEMA, "preset": args.preset, "config": config.to_dict(), "machine": machine,
                              "shape": [args.batch_size or config.batch_size, config.channels, config.image_size,
                                        config.image_size], "repeats": args.repeats}
    log(f"bench {args.preset} on {machine.get('gpu', machine['cpu'])}: load average {machine.get('load_avg')}")
    out = Path(args.out or DEFAULT_OUT.format(preset=args.preset, device=device.type))
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
        out.write_text(json.dumps(jsonable(result), indent=2) + "\n")  # partial results survive a later crash

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
    section("targets", lambda: targets(result))
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
