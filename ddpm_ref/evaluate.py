"""The evaluation protocol: reconstruction PSNR/SSIM against t_start, and FID/KID where Inception weights exist.

Protocol (written next to the results as ``evaluate_protocol.json``):

- model: the checkpoint's EMA weights (``use_ema=False`` for the raw weights), in eval mode;
- images: the LFW held-out test split (10 faces) for ``data="lfw"``, else the first ``n`` files of the image
  folder in sorted path order (resize + center crop, no flip);
- each image is noised to x_{t_start} with one fixed ε (seed ``seed``) by eq. 4 and denoised by the ancestral
  sampler (Algorithm 2) from t_start to 0; the same ε is used at every t_start;
- PSNR and SSIM from :mod:`ddpm_ref.metrics`: [−1, 1] mapped to [0, 1], data range 1, SSIM with a 7×7 window;
- t_start list: ⌊T/8⌋, ⌊T/4⌋, ⌊T/2⌋, ⌊3T/4⌋ unless given.

FID/KID need torchmetrics and the Inception weights torchmetrics uses (a file in torch's hub cache). Nothing is
downloaded: when either is missing, the result says so and why.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import TrainConfig
from .data import ImageFolderDataset, lfw_faces
from .metrics import psnr_per_image, ssim_per_image
from .plots import plot_eval
from .samplers import reconstruct, sample
from .schedule import NoiseSchedule

__all__ = [
    "default_t_starts",
    "evaluation_images",
    "evaluate_reconstruction",
    "write_eval_csv",
    "fid_kid_status",
    "fid_kid",
    "run_evaluate",
    "INCEPTION_WEIGHTS",
]

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # the FID Inception file torchmetrics loads


def default_t_starts(T: int) -> list[int]:
    """The protocol's t_start list: ⌊f·T⌋ for f = 1/8, 1/4, 1/2, 3/4 (50/100/200/300 at T=400)."""
    return sorted({max(1, int(f * T)) for f in (0.125, 0.25, 0.5, 0.75)})


def evaluation_images(config: TrainConfig, n: int = 10, data: str | None = None) -> tuple[Tensor, str]:
    """The protocol's images [N, C, H, W] in [−1, 1] and a description of where they came from."""
    source = data if data is not None else config.data
    if source == "lfw":
        x = lfw_faces("test", config.image_size)[:n]
        return x, f"LFW held-out test split (scikit-image lfw_subset), {x.shape[0]} faces"
    if not source:
        raise ValueError("this checkpoint's config names no data folder: pass --data PATH for the images to score")
    ds = ImageFolderDataset(source, config.image_size, channels=config.channels, hflip=False)
    m = min(n, len(ds))
    return torch.stack([ds[i] for i in range(m)]), f"first {m} images (sorted paths) of {source}"


@torch.no_grad()
def evaluate_reconstruction(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: Tensor,
    t_starts: Sequence[int],
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[int, tuple[list[float], list[float]]], dict[int, Tensor], dict[int, Tensor]]:
    """Noise x0 [N, C, H, W] to each t_start (eq. 4) and run the reverse chain back (the seed's §10–11).

    Returns ({t: (PSNR per image, SSIM per image)}, {t: x_t [N, C, H, W]}, {t: reconstruction [N, C, H, W]}).
    """
    device = next(model.parameters()).device
    x0 = x0.to(device)
    scores, noised, recon = {}, {}, {}
    for t in t_starts:
        g = torch.Generator(device=device).manual_seed(seed)
        out, x_t = reconstruct(model, x0, int(t), schedule, generator=g, return_noised=True, progress=progress)
        noised[t], recon[t] = x_t.cpu(), out.cpu()
        scores[t] = (psnr_per_image(out, x0), ssim_per_image(out, x0))
    return scores, noised, recon


def write_eval_csv(scores: dict[int, tuple[list[float], list[float]]], path: str | Path) -> Path:
    """evaluate.csv: t_start, psnr_mean, psnr_std, ssim_mean, ssim_std, n_images (population std)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["t_start,psnr_mean,psnr_std,ssim_mean,ssim_std,n_images"]
    for t in sorted(scores):
        p = torch.tensor(scores[t][0], dtype=torch.float64)
        s = torch.tensor(scores[t][1], dtype=torch.float64)
        lines.append(f"{t},{p.mean():.4f},{p.std(unbiased=False):.4f},{s.mean():.4f},"
                     f"{s.std(unbiased=False):.4f},{len(p)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def fid_kid_status() -> tuple[bool, str]:
    """(available, reason): torchmetrics importable and its Inception weights already in torch's hub cache."""
    if importlib.util.find_spec("torchmetrics") is None:
        return False, "FID/KID skipped: torchmetrics is not installed (pip install torchmetrics torch-fidelity)"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if not weights.is_file():
        return False, (f"FID/KID skipped: the Inception weights {weights} are not on this machine and nothing is "
                       "downloaded here; copy the file there to enable FID/KID")
    return True, f"FID/KID with torchmetrics and {weights}"


@torch.no_grad()
def fid_kid(model: nn.Module, schedule: NoiseSchedule, real: Tensor, n: int, *, seed: int = 0,
            batch: int = 50) -> dict[str, float]:
    """FID and KID between ``n`` DDPM samples and the real images [M, C, H, W] (torchmetrics, 2048-d features)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fid = FrechetInceptionDistance(feature=2048, normalize=True)
    kid = KernelInceptionDistance(feature=2048, normalize=True, subset_size=min(50, n, real.shape[0]))

    def rgb01(x: Tensor) -> Tensor:
        x = ((x.float().cpu() + 1) / 2).clamp(0, 1)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    for i in range(0, real.shape[0], batch):
        fid.update(rgb01(real[i : i + batch]), real=True)
        kid.update(rgb01(real[i : i + batch]), real=True)
    g = torch.Generator().manual_seed(seed)
    shape = real.shape[1:]
    for i in range(0, n, batch):
        fake = sample(model, schedule, (min(batch, n - i), *shape), generator=g, progress=False)
        fid.update(rgb01(fake), real=False)
        kid.update(rgb01(fake), real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def run_evaluate(
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    t_starts: Sequence[int] | None = None,
    n: int = 10,
    seed: int = 0,
    use_ema: bool = True,
    data: str | None = None,
    fid_samples: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Run the protocol on a checkpoint; write evaluate.csv, evaluate.png, evaluate_protocol.json in ``out_dir``."""
    blob = load_checkpoint(ckpt)
    model, schedule, config = model_from_checkpoint(blob, ema=use_ema, device=device)
    ts = sorted({int(t) for t in (t_starts or default_t_starts(config.T))})
    bad = [t for t in ts if not 0 <= t < config.T]
    if bad:
        raise ValueError(f"t_start values {bad} are outside 0…{config.T - 1} (this model has T={config.T})")
    x0, source = evaluation_images(config, n, data)
    per_image, _, recon = evaluate_reconstruction(model, schedule, x0, ts, seed=seed, progress=progress)
    out = Path(out_dir)
    csv_path = write_eval_csv(per_image, out / "evaluate.csv")
    plot = plot_eval(csv_path, out / "evaluate.png", title=f"{config.name}: reconstruction of {x0.shape[0]} images")
    protocol = {
        "checkpoint": str(blob["path"]), "step": int(blob.get("step", 0)), "weights": "ema" if use_ema else "raw",
        "seed": seed, "images": source, "n_images": int(x0.shape[0]), "t_start": ts, "T": config.T,
        "sampler": "ancestral DDPM (Algorithm 2), x0 clipped to [-1, 1], posterior variance",
        "metrics": "skimage PSNR and SSIM (7x7), images mapped from [-1, 1] to [0, 1], data_range=1",
    }
    ok, message = fid_kid_status()
    if fid_samples > 0:
        if ok:
            protocol["fid_kid"] = fid_kid(model, schedule, x0, fid_samples, seed=seed)
        protocol["fid_kid_note"] = message
    (out / "evaluate_protocol.json").write_text(json.dumps(protocol, indent=2) + "\n")
    means = {t: (sum(p) / len(p), sum(s) / len(s)) for t, (p, s) in per_image.items()}
    return {"csv": csv_path, "plot": plot, "protocol": protocol, "means": means, "fid_kid_message": message,
            "reconstructions": recon}
