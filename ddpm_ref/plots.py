"""Pictures and plots written by training, sampling, evaluation and the demo (matplotlib, Agg backend).

Images are [N, C, H, W] tensors in [−1, 1]. Tiny images (24×24) are enlarged with nearest-neighbour
``scale`` so that a person can see them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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


def save_reverse_strip(frames: Mapping[int, Tensor], final: Tensor, path: str | Path, *, scale: int = 1) -> Path:
    """Rows: images; columns: x_t at the kept t (descending) and the final x_0. Titles give t."""
    ts = sorted(frames, reverse=True)
    cols = [frames[t] for t in ts] + [final.detach().cpu()]
    labels = [f"t={t}" for t in ts] + ["x0"]
    n = final.shape[0]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.1 * len(cols), 1.15 * n + 0.2), squeeze=False)
    for j, (col, label) in enumerate(zip(cols, labels, strict=True)):
        for i in range(n):
            ax = axes[i][j]
            img = to_uint8_image(_enlarge(col[i : i + 1].clamp(-1, 1), scale)[0])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=8)
    fig.suptitle("reverse process x_t → x_0", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    ts = sorted(recon)
    rows: list[tuple[str, Tensor]] = [("target", target)]
    for t in ts:
        rows.append((f"x_t, t={t}", noised[t]))
        p, s = scores[t]
        rows.append((f"recon t={t}\n{p:.1f} dB / {s:.2f}", recon[t]))
    n = target.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.0 * n + 1.4, 1.05 * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            img = to_uint8_image(_enlarge(imgs[i : i + 1].detach().cpu().clamp(-1, 1), scale)[0])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("reconstruction of held-out images (PSNR / SSIM, mean over the row)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


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
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path

