"""Calibrate an outcome check: the MS-SWD its recipe gives each kind of answer, over seeds.

    python data_scripts/outcome_calibration.py                    # lesson 4's train_step, seeds 0–3 (about 5 min)
    python data_scripts/outcome_calibration.py DiTBlock           # lesson 11's DiTBlock (about 5 minutes)
    python data_scripts/outcome_calibration.py --seeds 0 --kinds untrained reference

Runs the check's own recipe (not a copy: :func:`tests.test_loss.outcome_score` for ``train_step``,
:func:`tests.test_dit.outcome_score` for ``DiTBlock``) on the reference, on every correct variant and on every
typical mistake of the exercise in ``tests/mistakes.py``, and on an answer that learns nothing (a step that leaves the
model untrained; blocks that return x unchanged). Prints one line per run, then each kind's range and the
``OUTCOME_MEASURED`` literal that the check's module keeps, with the mistakes the check must catch (those whose
``breaks`` name it); the others are printed as "passes" (they must stay under the pass mark). The check's message,
the lesson's text and solutions/README.md quote those ranges (``tests/test_course_sync.py`` keeps them equal).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tests.mistakes import ALTERNATIVES, MISTAKES  # noqa: E402
from tests.test_mistakes import notebook_namespace  # noqa: E402


def untrained_step(model, optimizer, x0, schedule, *, generator=None, grad_clip=1.0) -> float:
    """Touches nothing: the model keeps its initial weights (the yardstick a working step must beat)."""
    return 0.0


class PassThroughBlock(nn.Module):
    """A DiT block that returns x unchanged: only the DiT's embeddings and final layer learn (the yardstick)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class Outcome:
    """An outcome check: its module (``OUTCOME_CHECK``, ``OUTCOME_PASS``), its scorer and its do-nothing answer."""

    module: str
    score: Callable[[Any, int], float]
    untrained: Any


def _train_step_score(step: Any, seed: int) -> float:
    from tests.test_loss import outcome_score

    return outcome_score(step, seed=seed)[0]


def _dit_block_score(block: Any, seed: int) -> float:
    from tests.test_dit import outcome_score

    return outcome_score(block, seed=seed)


OUTCOMES = {"train_step": Outcome("tests.test_loss", _train_step_score, untrained_step),
            "DiTBlock": Outcome("tests.test_dit", _dit_block_score, PassThroughBlock)}


def kinds(exercise: str = "train_step") -> dict[str, tuple[str, Any]]:
    """{kind: (group, answer)}; group is "correct", "untrained", "mistake" (its ``breaks`` name the outcome check)
    or "passes" (a mistake the outcome check leaves to the exercise's other checks)."""
    import ddpm_ref

    outcome = OUTCOMES[exercise]
    check = importlib.import_module(outcome.module).OUTCOME_CHECK

    def answer_of(source: str) -> Any:
        return notebook_namespace(source)[exercise]

    out: dict[str, tuple[str, Any]] = {"reference": ("correct", getattr(ddpm_ref, exercise))}
    for alt in ALTERNATIVES:
        if alt.exercise == exercise:
            out[alt.name] = ("correct", answer_of(alt.source))
    out["untrained"] = ("untrained", outcome.untrained)
    for m in MISTAKES:
        if m.exercise == exercise:
            out[m.name] = ("mistake" if check in m.breaks else "passes", answer_of(m.source))
    return out


def calibrate(seeds: list[int], only: list[str] | None = None, exercise: str = "train_step") -> dict[str, list[float]]:
    """{kind: [score per seed]}, one line printed per run."""
    scores: dict[str, list[float]] = {}
    for name, (group, answer) in kinds(exercise).items():
        if only and name not in only:
            continue
        for seed in seeds:
            t0 = time.perf_counter()
            score = OUTCOMES[exercise].score(answer, seed)
            scores.setdefault(name, []).append(score)
            print(f"{group:9s} {name:32s} seed {seed}: MS-SWD {score:7.1f}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    return scores


def summary(scores: dict[str, list[float]], exercise: str = "train_step") -> dict[str, tuple[int, int]]:
    """Per group of kinds ("correct" pools the reference and the variants) the rounded range over every run."""
    groups = kinds(exercise)
    pooled: dict[str, list[float]] = {}
    for name, values in scores.items():
        key = "correct" if groups[name][0] == "correct" else name
        pooled.setdefault(key, []).extend(values)
    return {k: (round(min(v)), round(max(v))) for k, v in pooled.items()}


def main(argv: list[str] | None = None) -> dict[str, tuple[int, int]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("exercise", nargs="?", default="train_step", choices=sorted(OUTCOMES),
                   help="the exercise whose outcome check to calibrate (default train_step)")
    p.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds (default 0,1,2,3)")
    p.add_argument("--kinds", nargs="*", default=None, help="only these kinds (default: every kind)")
    args = p.parse_args(argv)
    known = kinds(args.exercise)
    unknown = [k for k in args.kinds or [] if k not in known]
    if unknown:
        p.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    ranges = summary(calibrate([int(s) for s in args.seeds.split(",")], args.kinds, args.exercise), args.exercise)
    pass_mark = importlib.import_module(OUTCOMES[args.exercise].module).OUTCOME_PASS
    passing = {k: r for k, r in ranges.items() if k in known and known[k][0] == "passes"}
    if passing:
        print(f"\nmistakes left to the other checks (each must stay at most {pass_mark:.0f}):")
        for k, (lo, hi) in passing.items():
            print(f"    {k}: {lo}–{hi}{'' if hi <= pass_mark else '  ABOVE THE PASS MARK'}")
    print("\nOUTCOME_MEASURED = {")
    for k, (lo, hi) in ranges.items():
        if k not in passing:
            print(f"    {k!r}: ({lo}, {hi}),")
    print("}")
    return ranges

if __name__ == "__main__":
    main()
