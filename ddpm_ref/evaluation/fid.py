"""FID and KID (torchmetrics, Inception features) of DDPM samples, where torchmetrics and its Inception weights are
already on the machine: nothing is downloaded, and :func:`fid_kid_status` says why they are skipped otherwise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from ..samplers import sample
from ..schedule import NoiseSchedule

__all__ = ["INCEPTION_WEIGHTS", "fid_kid_status", "fid_kid"]

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # the FID Inception file torchmetrics loads


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
