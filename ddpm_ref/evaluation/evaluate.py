"""The evaluation protocol: reconstruction PSNR/SSIM against t_start, sample quality (MS-SWD with its yardstick and
the brightness gap), and FID/KID where Inception weights exist. One function, :func:`evaluate`, runs it for the
command line, the demo and the Kaggle notebook; its :class:`Evaluation` prints itself (``lines()``) and writes
one set of files (``write(out_dir)``)::

    evaluate.csv, evaluate.png     PSNR/SSIM (mean ± std over the images) against t_start
    quality.csv, quality.png       MS-SWD ×10³ (per level and mean) and brightness gap of each set vs each reference
    brightness.png                 histograms of per-image mean brightness: samples against the real sets
    evaluate_protocol.json         how the figures were measured

Protocol (written next to the results as ``evaluate_protocol.json``):

- model: the checkpoint's EMA weights (``use_ema=False`` for the raw weights), in eval mode;
- images: the LFW held-out test split (10 faces) for ``data="lfw"``, else the first ``n`` files of the image
  folder in sorted path order (resize + center crop, no flip);
- each image is noised to x_{t_start} with one fixed ε (seed ``seed``) by eq. 4 and denoised by the ancestral
  sampler (Algorithm 2) from t_start to 0; the same ε is used at every t_start;
- PSNR and SSIM from :mod:`ddpm_ref.metrics`: [−1, 1] mapped to [0, 1], data range 1, SSIM with a 7×7 window;
- t_start list: ⌊T/8⌋, ⌊T/4⌋, ⌊T/2⌋, ⌊3T/4⌋ unless given.

- sample quality (:func:`sample_quality`): the samples against each real reference set (LFW: the 10 held-out and
  the 90 training faces; a folder: its first ``n`` images and the next ``n``) with
  :func:`ddpm_ref.metrics.ms_swd` (seed ``seed``) and :func:`ddpm_ref.metrics.brightness_gap`, printed beside
  the yardstick: real against real (held-out vs training), and two deliberately bad sets (the held-out images
  blurred with a Gaussian of σ = size/16 px, uniform noise) against the same references.

FID/KID (:mod:`.fid`) need torchmetrics and the Inception weights torchmetrics uses (a file in torch's hub cache).
Nothing is downloaded: when either is missing, the result says so and why. The sample-quality table is
:mod:`.quality`; this module chooses the images and runs the protocol.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import ImageFolderDataset, lfw_faces
from ..metrics import psnr_per_image, ssim_per_image
from ..plots import plot_brightness, plot_eval, plot_quality
from ..samplers import reconstruct, sample
from ..schedule import NoiseSchedule
from ..training.checkpoint import load_checkpoint, model_from_checkpoint
from ..training.config import TrainConfig
from .fid import INCEPTION_WEIGHTS, fid_kid, fid_kid_status
from .quality import QualityRow, SampleQuality, sample_quality

__all__ = [
    "QualityRow",
    "SampleQuality",
    "sample_quality",
    "reference_sets",
    "Evaluation",
    "evaluate",
    "default_t_starts",
    "evaluation_images",
    "evaluate_reconstruction",
    "write_eval_csv",
    "fid_kid_status",
    "fid_kid",
    "run_evaluate",
    "INCEPTION_WEIGHTS",
]

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


def reference_sets(config: TrainConfig, n: int = 10, data: str | None = None) -> dict[str, Tensor]:
    """The real sets samples are scored against: LFW → {"held-out": 10 test faces, "training": 90 train faces};
    a folder → {"real": its first ``n`` images, "more real": the next ``n``}."""
    source = data if data is not None else config.data
    if source == "lfw":
        return {"held-out": lfw_faces("test", config.image_size)[:n], "training": lfw_faces("train", config.image_size)}
    first, _ = evaluation_images(config, 2 * n, data)
    refs = {"real": first[:n]}
    if first.shape[0] >= n + 2:
        refs["more real"] = first[n:]
    return refs


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: reconstruction per t_start, sample quality, protocol; writes its files."""

    scores: dict[int, tuple[list[float], list[float]]]  # t_start → (PSNR per image, SSIM per image)
    noised: dict[int, Tensor]
    recon: dict[int, Tensor]
    quality: SampleQuality | None
    protocol: dict[str, Any]
    fid_kid_message: str = ""
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def means(self) -> dict[int, tuple[float, float]]:
        """t_start → (mean PSNR dB, mean SSIM)."""
        return {t: (sum(p) / len(p), sum(s) / len(s)) for t, (p, s) in self.scores.items()}

    def lines(self) -> list[str]:
        n = len(next(iter(self.scores.values()))[0]) if self.scores else 0
        out = [f"reconstruction of {n} images (mean PSNR / SSIM):"]
        out += [f"  t_start={t:4d}: PSNR {p:6.2f} dB  SSIM {s:.3f}" for t, (p, s) in sorted(self.means.items())]
        if self.quality is not None:
            out += self.quality.lines()
        if "fid_kid" in self.protocol:
            out.append(f"FID/KID: {self.protocol['fid_kid']}")
        elif self.fid_kid_message:
            out.append(self.fid_kid_message)
        return out

    def write(self, out_dir: str | Path, *, title: str = "") -> dict[str, Path]:
        """evaluate.csv/.png, quality.csv/.png and brightness.png (when samples were scored), evaluate_protocol.json."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        n = len(next(iter(self.scores.values()))[0]) if self.scores else 0
        if self.scores:
            files["evaluate_csv"] = write_eval_csv(self.scores, out / "evaluate.csv")
            files["evaluate_plot"] = plot_eval(files["evaluate_csv"], out / "evaluate.png",
                                               title=f"{title}: reconstruction of {n} images" if title else
                                               f"reconstruction of {n} images")
        if self.quality is not None:
            files["quality_csv"] = self.quality.write_csv(out / "quality.csv")
            files["quality_plot"] = plot_quality(self.quality.rows, out / "quality.png", title=title)
            files["brightness_plot"] = plot_brightness(self.quality.brightness, out / "brightness.png", title=title)
        files["protocol"] = out / "evaluate_protocol.json"
        files["protocol"].write_text(json.dumps(self.protocol, indent=2) + "\n")
        self.files.update(files)
        return files


@torch.no_grad()
def evaluate(
    model: nn.Module,
    schedule: NoiseSchedule,
    images: Tensor,
    t_starts: Sequence[int],
    *,
    samples: Tensor | None = None,
    references: dict[str, Tensor] | None = None,
    seed: int = 0,
    progress: bool = False,
    info: dict[str, Any] | None = None,
) -> Evaluation:
    """The protocol (module docs): reconstruct ``images`` [N, C, H, W] from each t_start and score PSNR/SSIM; score
    ``samples`` against ``references`` (:func:`sample_quality`) when both are given. ``info`` (checkpoint, step,
    where the images came from) goes into the protocol record."""
    ts = sorted({int(t) for t in t_starts})
    bad = [t for t in ts if not 0 <= t < schedule.T]
    if bad:
        raise ValueError(f"t_start values {bad} are outside 0…{schedule.T - 1} (this model has T={schedule.T})")
    scores, noised, recon = evaluate_reconstruction(model, schedule, images, ts, seed=seed, progress=progress)
    quality = sample_quality(samples, references, seed=seed) if samples is not None and references else None
    protocol = {
        **(info or {}), "seed": seed, "n_images": int(images.shape[0]), "t_start": ts, "T": schedule.T,
        "sampler": "ancestral DDPM (Algorithm 2), x0 clipped to [-1, 1], posterior variance; one fixed noise per "
                   "image, reused at every t_start",
        "metrics": "skimage PSNR and SSIM (7x7), images mapped from [-1, 1] to [0, 1], data_range=1",
    }
    if quality is not None:
        protocol["quality"] = {
            "metric": "ddpm_ref.metrics.ms_swd: Laplacian pyramid to 16 px (24 px images: 24, 12), 128 random 7x7 "
                      "neighbourhoods per image per level, per-set channel normalisation, 4x128 random "
                      "directions, x1e3 (Karras et al. 2018); brightness gap: 1-D W1 of per-image means",
            "n_samples": int(samples.shape[0]),
            "references": {k: int(v.shape[0]) for k, v in references.items()},
            "rows": [{"images": r.images, "reference": r.reference, "msswd_mean": r.msswd.mean,
                      "msswd_levels": {f"{res}px": d for res, d in r.msswd.levels},
                      "brightness_gap": r.brightness_gap, "brightness_std": r.brightness_std}
                     for r in quality.rows],
        }
    return Evaluation(scores, noised, recon, quality, protocol)


def run_evaluate(
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    t_starts: Sequence[int] | None = None,
    n: int = 10,
    seed: int = 0,
    use_ema: bool = True,
    data: str | None = None,
    n_samples: int | None = None,
    fid_samples: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Evaluation:
    """Run the protocol on a checkpoint and write its files in ``out_dir`` (:meth:`Evaluation.write`).

    ``n_samples`` images are sampled for the quality table (default: 90 for images up to 64 px, else none: a
    256-px chain is for a GPU); 0 skips it.
    """
    blob = load_checkpoint(ckpt)
    model, schedule, config = model_from_checkpoint(blob, ema=use_ema, device=device)
    ts = sorted({int(t) for t in (t_starts or default_t_starts(config.T))})
    bad = [t for t in ts if not 0 <= t < config.T]
    if bad:
        raise ValueError(f"t_start values {bad} are outside 0…{config.T - 1} (this model has T={config.T})")
    x0, source = evaluation_images(config, n, data)
    if n_samples is None:
        n_samples = 90 if config.image_size <= 64 else 0
    samples = refs = None
    if n_samples > 0:
        refs = reference_sets(config, n, data)
        g = torch.Generator(device=device).manual_seed(seed)
        shape = (n_samples, config.channels, config.image_size, config.image_size)
        samples = sample(model, schedule, shape, generator=g, device=device, progress=progress).cpu()
    info = {"checkpoint": str(blob["path"]), "step": int(blob.get("step", 0)), "weights": "ema" if use_ema else "raw",
            "images": source}
    result = evaluate(model, schedule, x0, ts, samples=samples, references=refs, seed=seed, progress=progress,
                      info=info)
    ok, message = fid_kid_status()
    result.fid_kid_message = message if fid_samples > 0 else ""
    if fid_samples > 0:
        if ok:
            result.protocol["fid_kid"] = fid_kid(model, schedule, x0, fid_samples, seed=seed)
        result.protocol["fid_kid_note"] = message
    if n_samples <= 0:
        result.protocol["quality"] = "skipped: no samples (pass --samples N)"
    result.write(out_dir, title=config.name)
    return result
