"""Error against the number of model calls (NFE) for DDIM, Euler, Heun and DPM-Solver++(2M).

    python data_scripts/solver_orders.py                 # the oracle tables (about 1 CPU-minute)
    python data_scripts/solver_orders.py --lfw           # and MS-SWD of the shipped lfw-tiny model's samples
    python data_scripts/solver_orders.py --lfw-only --samples 48 --ddpm

**Oracle.** Data = the two-component mixture of ``tests/test_solvers.py`` (constant 2×2 images of −0.4, std 0.3,
weight 0.4, and +0.4, std 0.4, weight 0.6) under the paper's linear schedule at T = 1000, driven by its exact ε*
(``GaussianMixtureOracle``), x̂0 not clipped, 256 samples from the same x_T for every sampler. The reference is Heun
over all T timesteps (within 1e-5 of the exact solution on Gaussian data, where it is known in closed form). One table
per spacing: "linspace" ends every grid at t = 0 and shows the orders (DDIM and Euler 1, Heun and DPM-Solver++(2M) 2);
"trailing" (the samplers' default) ends at t = T/steps − 1, and the jump from there to the clean image costs
O(1/steps): Heun falls to about NFE^−1.5 there, while DPM-Solver++(2M) keeps about NFE^−2 over these budgets.
Each row is a budget of model calls: DDIM, Euler and DPM-Solver++ take that many steps, Heun the most steps that fit
(2·steps − 1 calls, shown in brackets). Errors are RMSE per pixel; the fitted slopes use budgets from 16 (DPM-Solver++:
from 64, below which it is not yet in its asymptotic range on these grids).

**lfw-tiny** (``--lfw``): ``load_pretrained_lfw_tiny()`` (cosine schedule, T = 300, x̂0 clipped as the samplers'
default), ``--samples`` faces from the same x_T for every sampler and budget, scored by MS-SWD ×10³ against the 90
training faces (Euler is left out: it is DDIM); the yardstick: the 10 held-out faces against the same 90 (real against
real), and with ``--ddpm`` ancestral DDPM over all 300 steps (the shipped sampler) from the same x_T. The model calls
set the time: 88 on 48 faces with the default budgets (on a CPU shared with busier programs, ``--threads 1`` and
fewer ``--samples`` help).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ddpm_ref as R  # noqa: E402
from ddpm_ref.data import lfw_faces  # noqa: E402
from ddpm_ref.metrics import ms_swd  # noqa: E402

NAMES = ("DDIM", "Euler", "Heun", "DPM-Solver++(2M)")
Sampler = Callable[[int], Tensor]


def samplers(model: torch.nn.Module, schedule: R.NoiseSchedule, x_T: Tensor, **kw: object) -> dict[str, Sampler]:
    """name → (steps → samples) from ``x_T``, every one with the same options."""
    kw = {"x_T": x_T, "progress": False, **kw}
    return {"DDIM": lambda n: R.ddim_sample(model, schedule, x_T.shape, steps=n, **kw),
            "Euler": lambda n: R.karras_euler_sample(model, schedule, x_T.shape, steps=n, **kw),
            "Heun": lambda n: R.karras_heun_sample(model, schedule, x_T.shape, steps=n, **kw),
            "DPM-Solver++(2M)": lambda n: R.dpm_solver_pp_2m_sample(model, schedule, x_T.shape, steps=n, **kw)}


def steps_for(name: str, budget: int) -> int | None:
    """The steps a sampler takes within ``budget`` model calls (Heun: 2·steps − 1), None if not even one."""
    steps = (budget + 1) // 2 if name == "Heun" else budget
    return steps if steps >= 1 else None


def nfe(name: str, steps: int) -> int:
    return 2 * steps - 1 if name == "Heun" else steps


def header(names: tuple[str, ...], unit: str) -> str:
    return f"  {'NFE':>5}  " + "  ".join(f"{n:>18}" for n in names) + f"   ({unit})"


def row(budget: int, cells: dict[str, tuple[int, float]], names: tuple[str, ...], digits: str) -> str:
    """One budget: per sampler "value", or "value [NFE]" when it used fewer calls than the budget."""
    texts = []
    for name in names:
        if name not in cells:
            texts.append(f"{'—':>18}")
            continue
        used, value = cells[name]
        texts.append(f"{value:>18{digits}}" if used == budget else f"{f'{value:{digits}} [{used}]':>18}")
    return f"  {budget:>5}  " + "  ".join(texts)


def measure(fns: dict[str, Sampler], budgets: list[int], score: Callable[[Tensor], float], unit: str,
            digits: str) -> dict[int, dict[str, tuple[int, float]]]:
    """{budget: {name: (NFE used, score of the samples)}}, each row printed as soon as it is measured; a sampler
    runs once per number of steps."""
    names = tuple(fns)
    print(header(names, unit), flush=True)
    rows: dict[int, dict[str, tuple[int, float]]] = {}
    done: dict[tuple[str, int], float] = {}
    for budget in budgets:
        for name, fn in fns.items():
            if (steps := steps_for(name, budget)) is not None:
                if (name, steps) not in done:
                    done[name, steps] = score(fn(steps))
                rows.setdefault(budget, {})[name] = (nfe(name, steps), done[name, steps])
        print(row(budget, rows.get(budget, {}), names, digits), flush=True)
    return rows


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(error) against log(NFE)."""
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def oracle_tables(budgets: list[int]) -> None:
    T = 1000
    s = R.NoiseSchedule(R.linear_beta_schedule(T))
    model = R.GaussianMixtureOracle(s, [-0.4, 0.4], [0.3, 0.4], [0.4, 0.6])
    x_T = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for spacing in ("linspace", "trailing"):
        t0 = time.perf_counter()
        kw = {"clip_x0": False, "spacing": spacing}
        ref = R.karras_heun_sample(model, s, x_T.shape, steps=T, x_T=x_T, progress=False, **kw)
        print(f"\nOracle (2-component mixture, linear schedule T={T}, spacing={spacing!r}, x̂0 not clipped): RMSE "
              f"against Heun over all {T} timesteps")
        rows = measure(samplers(model, s, x_T, **kw), budgets, lambda x, ref=ref: float((x - ref).pow(2).mean().sqrt()),
                       "RMSE per pixel", ".3e")
        fits = []
        for name in NAMES:
            lo = 64 if name == "DPM-Solver++(2M)" else 16
            points = [cells[name] for budget, cells in rows.items() if budget >= lo and name in cells]
            if len(points) >= 2:
                fits.append(f"{name} {slope(points):+.2f} (NFE {points[0][0]}–{points[-1][0]})")
        print("  fitted log-log slope of RMSE against NFE: " + ", ".join(fits)
              + f" ({time.perf_counter() - t0:.0f} s)")


@torch.no_grad()
def lfw_table(budgets: list[int], n_samples: int, ddpm: bool) -> None:
    model, s = R.load_pretrained_lfw_tiny()
    train, held_out = lfw_faces("train"), lfw_faces("test")
    x_T = torch.randn(n_samples, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    fns = {k: v for k, v in samplers(model, s, x_T).items() if k != "Euler"}  # Euler is DDIM (the oracle shows it)
    print(f"\nlfw-tiny (cosine schedule T={s.T}, x̂0 clipped, {n_samples} samples, same x_T): MS-SWD ×1e3 against the "
          f"{train.shape[0]} training faces", flush=True)
    measure(fns, budgets, lambda x: ms_swd(x, train).mean, "MS-SWD ×1e3, lower is better", ".1f")
    line = f"  yardstick: the {held_out.shape[0]} held-out faces (real against real) {ms_swd(held_out, train).mean:.1f}"
    if ddpm:
        full = R.sample(model, s, x_T.shape, x_T=x_T, progress=False)
        line += f"; ancestral DDPM, all {s.T} steps, same x_T {ms_swd(full, train).mean:.1f}"
    print(line + f" ({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="1,2,4,8,16,32,64,128,256",
                   help="model-call budgets, comma-separated (default: %(default)s)")
    p.add_argument("--lfw", action="store_true", help="also score samples of the shipped lfw-tiny model by MS-SWD")
    p.add_argument("--lfw-only", action="store_true", help="skip the oracle tables")
    p.add_argument("--lfw-budgets", default="1,2,4,8,16", help="budgets for lfw-tiny (default: %(default)s)")
    p.add_argument("--ddpm", action="store_true", help="lfw-tiny: also ancestral DDPM over all T steps (T calls)")
    p.add_argument("--samples", type=int, default=48, help="lfw-tiny samples per sampler and budget (default 48)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's; 1 is faster on a busy CPU)")
    args = p.parse_args()
    try:
        budgets = [int(v) for v in args.budgets.split(",")]
        lfw_budgets = [int(v) for v in args.lfw_budgets.split(",")]
    except ValueError:
        raise SystemExit("--budgets and --lfw-budgets are comma-separated integers, e.g. 1,2,4,8") from None
    if min(budgets + lfw_budgets) < 1 or args.samples < 2:
        raise SystemExit("budgets must be >= 1 and --samples >= 2")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}", flush=True)
    if not args.lfw_only:
        oracle_tables(budgets)
    if args.lfw or args.lfw_only:
        lfw_table(lfw_budgets, args.samples, args.ddpm)


if __name__ == "__main__":
    main()
