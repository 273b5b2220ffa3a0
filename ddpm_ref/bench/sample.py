"""Benchmark cases for sampling and data: the samplers' own calls timed plain and optimised, the analytic-oracle
check of DDPM and DDIM, and the image-folder loader per worker count."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..oracle import GaussianMixtureOracle
from ..samplers import ddim_sample, ddim_step, ddim_timesteps, p_sample, sample
from ..schedule import NoiseSchedule
from ..speed import perf
from ..speed.perf import BASELINE, PerfOptions
from ..training.config import TrainConfig, build_model, build_schedule
from .timing import median, sync

__all__ = ["ORACLE_MIXTURE", "ORACLE_TOLERANCE", "bench_sampling", "oracle_check", "oracle_checks", "bench_loader"]

#: the oracle's data: constant images of −0.5 (weight 0.3) or +0.5 (weight 0.7), and the tolerances the ddpm_ref
#: sampler tests allow for 1000 such samples (tests/test_ddim.py, tests/test_sampling.py: two-point mixture)
ORACLE_MIXTURE = {"means": [-0.5, 0.5], "stds": [0.0, 0.0], "weights": [0.3, 0.7]}
ORACLE_TOLERANCE = {"weight": 0.045, "distance": 1e-2}

def _time_sampler_steps(model: nn.Module, schedule: NoiseSchedule, x: Tensor, kind: str, k: int, ddim_steps: int,
                        inference: bool, device: torch.device) -> float:
    """Seconds per step over ``k`` steps of DDPM (p_sample from t = T−1 down) or DDIM (its first k steps)."""
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.inference_mode() if inference else contextlib.nullcontext()
    ts = ddim_timesteps(schedule.T, ddim_steps)
    with ctx:
        sync(device)
        t0 = time.perf_counter()
        for i in range(k):
            if kind == "ddpm":
                x = p_sample(model, x, schedule.T - 1 - i, schedule, generator=g)
            else:
                j = i % (len(ts) - 1) if len(ts) > 1 else 0
                x = ddim_step(model, x, ts[j], ts[j + 1] if j + 1 < len(ts) else -1, schedule)
        sync(device)
    return (time.perf_counter() - t0) / k


def _time_full_chain(model: nn.Module, schedule: NoiseSchedule, shape: tuple[int, ...], kind: str, ddim_steps: int,
                     inference: bool, device: torch.device) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.inference_mode() if inference else contextlib.nullcontext()
    with ctx:
        sync(device)
        t0 = time.perf_counter()
        if kind == "ddpm":
            sample(model, schedule, shape, generator=g, device=device, progress=False)
        else:
            ddim_sample(model, schedule, shape, steps=ddim_steps, generator=g, device=device, progress=False)
        sync(device)
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
                sec = median(times[(key, kind)])
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

    from ..data import ImageFolderDataset, synthetic_faces, to_uint8_image

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
            sync(device)
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
            sync(device)
            t0 = time.perf_counter()
            for _ in range(50):
                src.to(device, non_blocking=True)
            sync(device)
            res[name] = (time.perf_counter() - t0) / 50
        out["h2d_copy_s"] = res
        out["h2d_pinned_speedup"] = res["pageable"] / res["pinned"]
    return out
