"""The benchmark's report: the GPU peak table, the machine, the targets, markdown tables and strict JSON."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..speed import perf

__all__ = ["SCHEMA", "PEAK_TFLOPS", "TARGETS", "device_peak", "half_peak", "machine_info", "targets",
           "format_tables", "jsonable"]

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



def device_peak(name: str) -> tuple[str, dict[str, float | None]] | None:
    """(table key, peaks) for a GPU name such as "NVIDIA H100 80GB HBM3"; None if it is not in the table."""
    for key, pattern in _PEAK_PATTERNS:
        if pattern.search(name):
            return key, PEAK_TFLOPS[key]
    return None


def half_peak(peaks: dict[str, float | None]) -> tuple[str, float]:
    """The 16-bit dense peak: bf16 where the GPU has bf16 tensor cores, else fp16."""
    return ("bf16", peaks["bf16"]) if peaks.get("bf16") else ("fp16", peaks["fp16"])  # type: ignore[return-value]


def machine_info(device: torch.device) -> dict[str, Any]:
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


def targets(result: dict[str, Any]) -> dict[str, Any]:
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


def jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x
