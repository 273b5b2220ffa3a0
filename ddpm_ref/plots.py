"""Pictures and plots written by training, sampling, evaluation and the demo (matplotlib, Agg backend).

Images are [N, C, H, W] tensors in [−1, 1]. Tiny images (24×24) are enlarged with nearest-neighbour
``scale`` so that a person can see them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from .data import to_uint8_image  # noqa: E402

__all__ = [
    "auto_scale",
    "save_image",
    "save_images",
    "save_grid",
    "save_reverse_strip",
    "save_reconstruction_figure",
    "plot_losses",
    "plot_eval",
    "plot_quality",
    "plot_brightness",
    "read_csv",
]


def auto_scale(size: int, target: int = 96) -> int:
    """Nearest-neighbour enlargement that brings a ``size``-pixel image to about ``target`` pixels (≥ 1)."""
    return max(1, round(target / size))


def _enlarge(x: Tensor, scale: int) -> Tensor:
    return F.interpolate(x.float(), scale_factor=scale, mode="nearest") if scale > 1 else x.float()


def save_image(x: Tensor, path: str | Path, *, scale: int = 1) -> Path:
    """One image [C, H, W] (or [1, C, H, W]) in [−1, 1] as a PNG."""
    if x.ndim == 4:
        x = x[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_image(_enlarge(x[None], scale)[0])).save(path)
    return path


def save_images(x: Tensor, folder: str | Path, *, prefix: str = "sample", scale: int = 1) -> list[Path]:
    """Each image of [N, C, H, W] as ``folder/{prefix}_{i:03d}.png``."""
    return [save_image(img, Path(folder) / f"{prefix}_{i:03d}.png", scale=scale) for i, img in enumerate(x)]


def save_grid(x: Tensor, path: str | Path, *, nrow: int | None = None, scale: int = 1, padding: int = 2) -> Path:
    """[N, C, H, W] in [−1, 1] as one grid PNG (``nrow`` images per row, default ⌈√N⌉)."""
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    grid = make_grid(_enlarge(x.detach().cpu(), scale), nrow=nrow, padding=padding, pad_value=1.0)
    return save_image(grid, path)


def _labelled_grid(rows: list[Tensor], row_labels: list[str], col_labels: list[str] | None, title: str,
                   path: str | Path, scale: int) -> Path:
    """One image of len(rows) rows (each [N, C, H, W]) with text labels: a single matplotlib axes (fast)."""
    n = rows[0].shape[0]
    tiles = torch.cat([_enlarge(r.detach().cpu().clamp(-1, 1), scale) for r in rows])
    pad = 2
    grid = make_grid(tiles, nrow=n, padding=pad, pad_value=1.0)
    img = to_uint8_image(grid)
    h, w = img.shape[:2]
    tile_h, tile_w = (h - pad) / len(rows), (w - pad) / n
    left = 1.3 if any(row_labels) else 0.1
    fig = plt.figure(figsize=(w / 100 + left, h / 100 + 0.45), dpi=100)
    ax = fig.add_axes((left / (w / 100 + left), 0.0, (w / 100) / (w / 100 + left), (h / 100) / (h / 100 + 0.45)))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    for r, label in enumerate(row_labels):
        ax.text(-4, pad + (r + 0.5) * tile_h, label, ha="right", va="center", fontsize=7)
    for c, label in enumerate(col_labels or []):
        ax.text(pad + (c + 0.5) * tile_w, -3, label, ha="center", va="bottom", fontsize=7)
    fig.suptitle(title, fontsize=8, y=0.995, va="top")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_reverse_strip(frames: Mapping[int, Tensor], final: Tensor, path: str | Path, *, scale: int = 1) -> Path:
    """Rows: images; columns: x_t at the kept t (descending), then the final x_0; column titles give t."""
    ts = sorted(frames, reverse=True)
    cols = [frames[t].cpu() for t in ts] + [final.detach().cpu()]
    n = final.shape[0]
    # one row per image: regroup [column][image] → [image][column]
    rows = [torch.stack([c[i] for c in cols]) for i in range(n)]
    return _labelled_grid(rows, [""] * n, [f"t={t}" for t in ts] + ["x0"], "reverse process x_t → x_0", path,
                          scale)


def save_reconstruction_figure(
    target: Tensor,
    noised: Mapping[int, Tensor],
    recon: Mapping[int, Tensor],
    scores: Mapping[int, tuple[float, float]],
    path: str | Path,
    *,
    scale: int = 1,
) -> Path:
    """Row 1: targets; then per t_start a row of x_{t_start} and a row of reconstructions with PSNR/SSIM."""
    rows, labels = [target.cpu()], ["target"]
    for t in sorted(recon):
        p, s = scores[t]
        rows += [noised[t].cpu(), recon[t].cpu()]
        labels += [f"x_t, t={t}", f"recon from t={t}\n{p:.1f} dB / SSIM {s:.2f}"]
    return _labelled_grid(rows, labels, None, "held-out images noised to t and denoised (mean PSNR / SSIM per row)",
                          path, scale)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_losses(csv_path: str | Path, png_path: str | Path, *, title: str = "training loss") -> Path:
    """Loss (log scale) and learning rate against step, from ``losses.csv``."""
    rows = read_csv(csv_path)
    if not rows:
        raise ValueError(f"{str(csv_path)!r} holds no rows yet")
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    lr = [float(r["lr"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(steps, loss, "o-", ms=2.5, lw=1.2, color="tab:blue", label="mean loss per epoch (L_simple)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE of ε (log)")
    ax.grid(alpha=0.3, which="both")
    ax2 = ax.twinx()
    ax2.plot(steps, lr, "--", lw=1, color="tab:orange", label="learning rate")
    ax2.set_ylabel("learning rate")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=10)
    return _save_figure(fig, png_path)


def plot_eval(csv_path: str | Path, png_path: str | Path, *, title: str = "reconstruction quality") -> Path:
    """PSNR and SSIM (mean ± std over images) against t_start, from the evaluate CSV."""
    rows = read_csv(csv_path)
    t = [int(r["t_start"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.errorbar(t, [float(r["psnr_mean"]) for r in rows], yerr=[float(r["psnr_std"]) for r in rows],
                fmt="o-", color="tab:blue", capsize=3, label="PSNR (dB)")
    ax.set_xlabel("t_start (noise level the target is pushed to)")
    ax.set_ylabel("PSNR (dB)", color="tab:blue")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.errorbar(t, [float(r["ssim_mean"]) for r in rows], yerr=[float(r["ssim_std"]) for r in rows],
                 fmt="s--", color="tab:red", capsize=3, label="SSIM")
    ax2.set_ylabel("SSIM", color="tab:red")
    ax.set_title(title, fontsize=10)
    return _save_figure(fig, png_path)


def _save_figure(fig: matplotlib.figure.Figure, png_path: str | Path) -> Path:
    """Lay out, write at 110 dpi (creating the folder) and close a figure; returns the path."""
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def plot_quality(rows: Sequence[Any], png_path: str | Path, *, title: str = "") -> Path:
    """MS-SWD ×10³ (mean over levels) of each set against each reference, as horizontal bars; one panel per
    reference. ``rows`` are :class:`ddpm_ref.evaluation.evaluate.QualityRow` (``images``, ``reference``,
    ``msswd.mean``)."""
    refs = list(dict.fromkeys(r.reference for r in rows))
    fig, axes = plt.subplots(1, len(refs), figsize=(4.2 * len(refs), 2.8), squeeze=False)
    colors = {"samples": "tab:blue", "blurred held-out": "tab:orange", "pure noise": "tab:gray"}
    for ax, ref in zip(axes[0], refs, strict=True):
        sel = [r for r in rows if r.reference == ref]
        vals = [r.msswd.mean for r in sel]
        ax.barh(range(len(sel)), vals, color=[colors.get(r.images, "tab:green") for r in sel])
        ax.set_yticks(range(len(sel)), [f"{r.images} (n={r.n_images})" for r in sel], fontsize=8)
        ax.invert_yaxis()
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
        ax.set_xlim(0, max(vals) * 1.25)
        ax.set_xlabel("MS-SWD ×1e3 (lower is closer)", fontsize=8)
        ax.set_title(f"against {ref} (n={sel[0].n_reference})", fontsize=9)
    fig.suptitle(f"{title}: multi-scale sliced Wasserstein distance" if title else
                 "multi-scale sliced Wasserstein distance", fontsize=10)
    return _save_figure(fig, png_path)


def plot_brightness(means: Mapping[str, Tensor], png_path: str | Path, *, title: str = "") -> Path:
    """Histograms (densities) of per-image mean brightness, [−1, 1] units, one outline per set."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = torch.linspace(-1, 1, 41).tolist()
    for name, m in means.items():
        v = m.detach().cpu().double()
        ax.hist(v.tolist(), bins=bins, density=True, histtype="step", lw=1.6,
                label=f"{name} (n={v.numel()}, mean {v.mean():.2f}, std {v.std(unbiased=False):.2f})")
    ax.set_xlabel("per-image mean brightness ([−1, 1])")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: brightness of samples and real images" if title else
                 "brightness of samples and real images", fontsize=10)
    return _save_figure(fig, png_path)
