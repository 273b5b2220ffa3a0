"""Calibrate lesson 4's outcome check: the MS-SWD its recipe gives each kind of ``train_step``, over seeds.

    python data_scripts/outcome_calibration.py                    # every kind, seeds 0–3 (about 5 minutes)
    python data_scripts/outcome_calibration.py --seeds 0 --kinds untrained reference

Runs :func:`tests.test_loss.outcome_score` (the check's own recipe, not a copy) on the reference ``train_step``,
on every correct variant and on every typical mistake of ``tests/mistakes.py`` that the outcome check must catch, and
on a step that leaves the model untrained. Prints one line per run, then each kind's range and the
``OUTCOME_MEASURED`` literal that ``tests/test_loss.py`` keeps: the check's message, lesson 4's text and
solutions/README.md quote those ranges (``tests/test_course_sync.py`` keeps them equal).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mistakes import ALTERNATIVES, MISTAKES  # noqa: E402
from tests.test_loss import OUTCOME_CHECK, outcome_score  # noqa: E402
from tests.test_mistakes import notebook_namespace  # noqa: E402


def untrained_step(model, optimizer, x0, schedule, *, generator=None, grad_clip=1.0) -> float:
    """Touches nothing: the model keeps its initial weights (the yardstick a working step must beat)."""
    return 0.0


def kinds() -> dict[str, tuple[str, Callable]]:
    """{kind: (group, train_step)}; group is "correct", "untrained" or "mistake"."""
    import ddpm_ref

    def step_of(source: str) -> Callable:
        return notebook_namespace(source)["train_step"]

    out: dict[str, tuple[str, Callable]] = {"reference": ("correct", ddpm_ref.train_step)}
    for alt in ALTERNATIVES:
        if alt.exercise == "train_step":
            out[alt.name] = ("correct", step_of(alt.source))
    out["untrained"] = ("untrained", untrained_step)
    for m in MISTAKES:
        if OUTCOME_CHECK in m.breaks:
            out[m.name] = ("mistake", step_of(m.source))
    return out


def calibrate(seeds: list[int], only: list[str] | None = None) -> dict[str, list[float]]:
    """{kind: [score per seed]}, one line printed per run."""
    scores: dict[str, list[float]] = {}
    for name, (group, step) in kinds().items():
        if only and name not in only:
            continue
        for seed in seeds:
            t0 = time.perf_counter()
            score, _ = outcome_score(step, seed=seed)
            scores.setdefault(name, []).append(score)
            print(f"{group:9s} {name:32s} seed {seed}: MS-SWD {score:7.1f}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    return scores


def summary(scores: dict[str, list[float]]) -> dict[str, tuple[int, int]]:
    """Per group of kinds ("correct" pools the reference and the variants) the rounded range over every run."""
    groups = kinds()
    pooled: dict[str, list[float]] = {}
    for name, values in scores.items():
        key = "correct" if groups[name][0] == "correct" else name
        pooled.setdefault(key, []).extend(values)
    return {k: (round(min(v)), round(max(v))) for k, v in pooled.items()}


def main(argv: list[str] | None = None) -> dict[str, tuple[int, int]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds (default 0,1,2,3)")
    p.add_argument("--kinds", nargs="*", default=None, help="only these kinds (default: every kind)")
    args = p.parse_args(argv)
    known = kinds()
    unknown = [k for k in args.kinds or [] if k not in known]
    if unknown:
        p.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    ranges = summary(calibrate([int(s) for s in args.seeds.split(",")], args.kinds))
    print("\nOUTCOME_MEASURED = {")
    for k, (lo, hi) in ranges.items():
        print(f"    {k!r}: ({lo}, {hi}),")
    print("}")
    return ranges


if __name__ == "__main__":
    main()
