"""Sample quality beside its yardstick: MS-SWD (Karras et al. 2018) and the brightness gap of a set of samples
against each real reference set, next to where real images and deliberately bad sets (blurred, noise) score.

Used by :func:`.evaluate.evaluate`, which picks the reference sets (:func:`.evaluate.reference_sets`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from torch import Tensor

from ..metrics import MSSWD, brightness_gap, mean_brightness, ms_swd

__all__ = ["QualityRow", "SampleQuality", "sample_quality"]


@dataclass
class QualityRow:
    """One line of the quality table: ``images`` (a set) scored against ``reference`` (a real set)."""

    images: str
    reference: str
    n_images: int
    n_reference: int
    msswd: MSSWD
    brightness_gap: float  # 1-D W1 between per-image mean brightness, [−1, 1] units
    brightness_std: float  # std of the per-image means of ``images``


@dataclass
class SampleQuality:
    """Samples and the yardstick sets against each real reference (:func:`sample_quality`)."""

    rows: list[QualityRow]
    brightness: dict[str, Tensor]  # set name → per-image mean brightness [N] (samples and the references)
    seed: int

    def row(self, images: str, reference: str) -> QualityRow:
        for r in self.rows:
            if r.images == images and r.reference == reference:
                return r
        raise KeyError(f"no row for {images!r} against {reference!r}")

    def lines(self) -> list[str]:
        """The table as text: one line per (set, reference), samples first, then the yardstick."""
        width = max(len(r.images) for r in self.rows)
        out = [f"MS-SWD ×1e3 (Karras et al. 2018; mean over levels, then per level) and brightness gap "
               f"(seed {self.seed}):"]
        ref = None
        for r in self.rows:
            if r.reference != ref:
                ref = r.reference
                out.append(f"  against {ref} ({r.n_reference} images):")
            levels = " ".join(f"{res}px {d:6.1f}" for res, d in r.msswd.levels)
            out.append(f"    {r.images:<{width}} (n={r.n_images:3d})  MS-SWD {r.msswd.mean:6.1f}  [{levels}]  "
                       f"brightness gap {r.brightness_gap:.3f} (std of means {r.brightness_std:.3f})")
        return out

    def write_csv(self, path: str | Path) -> Path:
        """quality.csv: images, reference, n_images, n_reference, msswd_mean, msswd_<res>px…, brightness_gap,
        brightness_std."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        res = [r for r, _ in self.rows[0].msswd.levels]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["images", "reference", "n_images", "n_reference", "msswd_mean",
                        *[f"msswd_{r}px" for r in res], "brightness_gap", "brightness_std"])
            for r in self.rows:
                w.writerow([r.images, r.reference, r.n_images, r.n_reference, f"{r.msswd.mean:.3f}",
                            *[f"{d:.3f}" for _, d in r.msswd.levels], f"{r.brightness_gap:.5f}",
                            f"{r.brightness_std:.5f}"])
        return path


def _yardstick_sets(held_out: Tensor, n_noise: int, seed: int) -> dict[str, Tensor]:
    """The deliberately bad sets: the held-out images blurred (σ = size/16 px), and uniform noise."""
    sigma = held_out.shape[-1] / 16
    k = 2 * int(3 * sigma) + 1
    g = torch.Generator().manual_seed(seed + 7)
    noise = torch.rand((max(n_noise, 2), *held_out.shape[1:]), generator=g) * 2 - 1
    return {"blurred held-out": TF.gaussian_blur(held_out, k, sigma).clamp(-1, 1), "pure noise": noise}


def sample_quality(samples: Tensor, references: dict[str, Tensor], *, seed: int = 0) -> SampleQuality:
    """Score samples [N, C, H, W] in [−1, 1] against each real reference set, beside the yardstick.

    ``references`` is ordered: the first is the held-out set, the second (if any) the training set. Rows: the
    samples against every reference; the first reference against the second (real vs real, the best a model can
    hope for); the first reference blurred, and uniform noise, against every reference (where a failed model sits).
    """
    if not references:
        raise ValueError("sample_quality needs at least one real reference set")
    names = list(references)
    held = references[names[0]].float().cpu()
    samples = samples.float().cpu()
    candidates: list[tuple[str, Tensor, list[str]]] = [("samples", samples, names)]
    if len(names) > 1:
        candidates.append((f"{names[0]} real", held, names[1:]))
    candidates += [(k, v, names) for k, v in _yardstick_sets(held, samples.shape[0], seed).items()]
    rows = []
    for ref in names:
        r = references[ref].float().cpu()
        for label, x, against in candidates:
            if ref in against:
                rows.append(QualityRow(label, ref, x.shape[0], r.shape[0], ms_swd(x, r, seed=seed),
                                       brightness_gap(x, r), float(mean_brightness(x).std(unbiased=False))))
    brightness = {"samples": mean_brightness(samples), **{k: mean_brightness(v) for k, v in references.items()}}
    return SampleQuality(rows, brightness, seed)
