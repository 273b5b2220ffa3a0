"""The demo: train ``lfw-demo`` (lfw-tiny set for short runs) on the CPU within a time budget, then sample,
reconstruct and score.

``python -m ddpm_ref demo`` runs :func:`run_demo`. No download: the faces ship with scikit-image. On a 2-core CPU
the whole demo takes under 4 minutes (about 2.7 of them training). Everything lands in one folder (``demo_out/``)::

    samples.png            36 faces sampled from pure noise by the EMA model (ancestral DDPM, all T steps)
    nearest_train.png      each of 12 samples next to its nearest training face (is the model copying?)
    reverse_process.png    x_t → x_0 for 6 of the samples
    loss.png, losses.csv   training loss and learning rate per epoch
    reconstruction.png     held-out faces noised to several t_start and denoised, with PSNR/SSIM
    evaluate.csv, evaluate.png   PSNR/SSIM per t_start (the evaluate protocol, ``evaluate``)
    quality.csv, quality.png     MS-SWD ×10³ and brightness gap of the samples against the 10 held-out and the 90
                                 training faces, beside the yardstick (real vs real, blurred faces, noise)
    brightness.png         histograms of per-image mean brightness: samples against the real faces
    evaluate_protocol.json how those figures were measured
    target.png, reconstructed.png, generated/   the seed run's file names
    checkpoints/ckpt_latest.pt
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import lfw_faces
from ..evaluation.evaluate import SampleQuality, default_t_starts, evaluate
from ..plots import (
    auto_scale,
    save_grid,
    save_images,
    save_reconstruction_figure,
    save_reverse_strip,
)
from ..samplers import sample
from ..speed.perf import cpu_amp
from ..speed.precision import resolve_amp_dtype
from ..training.config import TrainConfig, build_model, build_schedule, get_config
from ..training.trainer import Callback, Trainer, TrainResult, train_step

__all__ = ["DEMO_TRAIN_SECONDS", "DemoResult", "run_demo", "calibrate_steps", "demo_amp"]

#: EMA preview grids of PREVIEW_N faces per demo run (all T steps each, out of the training budget: at 4 grids of
#: 16 they took 60 of its 160 s on 2 cores), the last one after the last epoch
PREVIEWS, PREVIEW_N = 2, 8
#: the default training budget: with the calibration before it and the sampling, reconstructions and scores after it
#: (about 60 s), the whole demo takes under 4 minutes on 2 CPU cores (BENCHMARKS.md, "Sample quality")
DEMO_TRAIN_SECONDS = 160.0


@dataclass
class DemoResult:
    out_dir: Path
    train: TrainResult
    wall_s: float
    scores: dict[int, tuple[float, float]]  # t_start → (mean PSNR dB, mean SSIM)
    nearest_mse: float  # mean over samples of the MSE to the nearest training face ([-1, 1] scale)
    quality: SampleQuality | None = None  # MS-SWD and brightness gap of the samples, with the yardstick
    files: dict[str, Path] = field(default_factory=dict)


def _seconds_per_step(config: TrainConfig, probe_steps: int, give_up_after: float = float("inf")) -> float:
    model = build_model(config)
    schedule = build_schedule(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    x0 = lfw_faces("train", config.image_size)[: config.batch_size]
    g = torch.Generator().manual_seed(0)
    amp_dtype = resolve_amp_dtype("cpu", config.amp)  # type: ignore[arg-type]
    for _ in range(3):  # warm-up: allocator, kernels, the thread pool after a change of thread count
        train_step(model, opt, x0, schedule, generator=g, amp_dtype=amp_dtype)
    t0 = time.perf_counter()
    for _ in range(probe_steps):
        train_step(model, opt, x0, schedule, generator=g, amp_dtype=amp_dtype)
        if time.perf_counter() - t0 > give_up_after:
            return float("inf")
    return (time.perf_counter() - t0) / probe_steps


def _seconds_per_sampling_step(config: TrainConfig, batch: int, probe_steps: int = 3) -> float:
    """Wall time of one reverse step for ``batch`` images (the network call dominates), fp32 as in previews."""
    model = build_model(config).eval()
    x = torch.randn(batch, config.channels, config.image_size, config.image_size)
    t = torch.full((batch,), config.T - 1, dtype=torch.long)
    with torch.inference_mode():
        model(x, t)  # warm-up
        t0 = time.perf_counter()
        for _ in range(probe_steps):
            model(x, t)
    return (time.perf_counter() - t0) / probe_steps


def demo_amp(amp: str) -> str:
    """The precision the demo trains in: ``amp`` as given, except that ``"auto"`` (which means fp32 on a CPU)
    becomes bf16 autocast where the CPU computes bf16 in hardware. That is ×1.7 more steps in the same time
    (BENCHMARKS.md) for the same loss within seed-to-seed variation; elsewhere bf16 is emulated and slower."""
    if amp != "auto" or torch.cuda.is_available():
        return amp
    return cpu_amp()


def calibrate_steps(config: TrainConfig, seconds: float, *, probe_steps: int = 20) -> int:
    """How many optimizer steps of ``config`` fit in ``seconds`` here; also picks the faster CPU thread count.

    Several threads per process win on a quiet machine; on a busy one, where other processes hold the cores,
    one thread can be many times faster than two (each parallel region waits for every thread to be scheduled).
    Both are timed on a throwaway model and the faster setting is kept (``torch.set_num_threads``).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best, best_threads = _seconds_per_step(config, probe_steps), 1
    if threads > 1:
        torch.set_num_threads(threads)
        multi = _seconds_per_step(config, probe_steps, give_up_after=best * probe_steps)
        if multi < best:
            best, best_threads = multi, threads
    torch.set_num_threads(best_threads)
    per_step = best * 1.08  # EMA, data loading, logging and checkpoints
    return max(1, int(seconds / per_step))


class _ThreadGovernor(Callback):
    """Drops to one CPU thread when multi-threaded steps turn much slower than calibrated (the machine got busy)."""

    def __init__(self, expected_s: float, log: Callable[[str], None], window: int = 20, factor: float = 2.0) -> None:
        self.expected_s, self.log, self.window, self.factor = expected_s, log, window, factor
        self.start: tuple[float, int] | None = None

    def on_step_end(self, trainer: Trainer, step: int, stats: object) -> None:
        if torch.get_num_threads() == 1:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start = (now, step)
            return
        t0, s0 = self.start
        if step - s0 >= self.window:
            per_step = (now - t0) / (step - s0)
            if per_step > self.factor * self.expected_s:
                torch.set_num_threads(1)
                self.log(f"steps slowed to {per_step:.2f} s (expected {self.expected_s:.2f} s): the machine is busy, "
                         "switching to 1 CPU thread")
            self.start = (now, step)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        self.start = None  # previews and checkpoints are not training steps


def run_demo(
    out_dir: str | Path = "demo_out",
    *,
    train_seconds: float = DEMO_TRAIN_SECONDS,
    steps: int = 0,
    config: TrainConfig | None = None,
    n_samples: int = 36,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Train lfw-demo (or ``config``) from scratch for about ``train_seconds`` (or exactly ``steps``), then write
    the pictures.

    The number of steps is measured on this machine first, so the cosine LR reaches its end in the budget; the
    time budget also stops training as a safety net when the machine is slower than measured.
    """
    t_wall = time.perf_counter()
    out = Path(out_dir)
    cfg = config or get_config("lfw-demo")
    cfg = cfg.replace(amp=demo_amp(cfg.amp), preview_n=min(cfg.preview_n, PREVIEW_N))
    budget = 0.0  # an explicit step count is honoured exactly
    if steps <= 0:
        budget = max(train_seconds, 0.0)  # safety net if the machine slows down (0: none)
        log(f"measuring this machine's speed (1 or {torch.get_num_threads()} CPU threads) ...")
        steps = calibrate_steps(cfg, train_seconds)  # also settles the thread count used below
        # the EMA previews (at most PREVIEWS of them, T steps each) come out of the same budget
        previews_s = PREVIEWS * cfg.T * _seconds_per_sampling_step(cfg, cfg.preview_n)
        steps = max(1, int(steps * max(0.5, 1 - previews_s / train_seconds)))
        log(f"using {torch.get_num_threads()} thread(s), amp={cfg.amp}")
    n_faces = len(lfw_faces("train", cfg.image_size))
    if budget:  # size the epochs so that about 3·PREVIEWS of them make up the measured number of steps
        cfg = cfg.replace(dataset_repeat=max(1, round(steps * cfg.batch_size / (n_faces * 3 * PREVIEWS))))
    spe = n_faces * cfg.dataset_repeat // cfg.batch_size
    epochs = max(1, round(steps / spe))
    if budget:  # a multiple of PREVIEWS, so that the grids come at even intervals, the last one at the end
        epochs = PREVIEWS * max(1, round(steps / (spe * PREVIEWS)))
    cfg = cfg.replace(epochs=epochs, max_steps=0, time_budget_s=budget, preview_every=-(-epochs // PREVIEWS),
                      milestone_every=0)
    ckpt = out / "checkpoints" / "ckpt_latest.pt"
    ckpt.unlink(missing_ok=True)  # the demo always starts from scratch
    (out / "losses.csv").unlink(missing_ok=True)
    for stale in (out / "previews").glob("epoch_*.png"):
        stale.unlink()
    limit = f", stopping after {budget:.0f} s at the latest" if budget else ""
    log(f"training {cfg.name} for {epochs * spe} steps ({epochs} epochs of {spe}){limit}, into {out}/")
    governor = [_ThreadGovernor(train_seconds / steps, log)] if budget else []
    trainer = Trainer(cfg, out, progress=progress, resume=False, callbacks=governor)
    result = trainer.fit()
    log(f"trained {result.step} steps in {result.elapsed_s:.0f} s ({result.stopped}); "
        f"final loss {result.final_loss:.4f}")

    model, schedule = trainer.ema.module.eval(), trainer.schedule
    scale = auto_scale(cfg.image_size)
    files: dict[str, Path] = {}
    g = torch.Generator().manual_seed(seed)
    shape = (n_samples, cfg.channels, cfg.image_size, cfg.image_size)
    x, frames = sample(model, schedule, shape, generator=g, return_intermediates=True, progress=progress)
    files["samples"] = save_grid(x, out / "samples.png", nrow=6, scale=scale)
    save_images(x[:5], out / "generated", scale=scale)
    files["generated"] = out / "generated"
    k = min(6, n_samples)
    files["reverse_process"] = save_reverse_strip({t: f[:k] for t, f in frames.items()}, x[:k],
                                                  out / "reverse_process.png", scale=scale)
    train_faces = lfw_faces("train", cfg.image_size)
    d = torch.cdist(x.flatten(1), train_faces.flatten(1)) ** 2 / x[0].numel()  # per-pixel MSE
    nearest_mse, nearest = d.min(dim=1)
    m = min(12, n_samples)
    pairs = torch.stack([x[:m], train_faces[nearest[:m]]], dim=1).flatten(0, 1)
    files["nearest_train"] = save_grid(pairs, out / "nearest_train.png", nrow=8, scale=scale)
    files["loss"] = out / "loss.png"

    test = lfw_faces("test", cfg.image_size)
    t_starts = default_t_starts(cfg.T)
    ev = evaluate(model, schedule, test, t_starts, samples=x, references={"held-out": test, "training": train_faces},
                  seed=seed, info={"checkpoint": str(ckpt), "step": result.step, "weights": "ema",
                                   "images": "LFW held-out test split (scikit-image lfw_subset), 10 faces"})
    noised, recon, scores = ev.noised, ev.recon, ev.means
    files["reconstruction"] = save_reconstruction_figure(test, noised, recon, scores, out / "reconstruction.png",
                                                         scale=scale)
    files.update(ev.write(out, title=f"{cfg.name}, {result.step} steps"))
    t_seed = t_starts[-1]
    files["target"] = save_grid(test, out / "target.png", nrow=10, scale=scale)
    files["reconstructed"] = save_grid(recon[t_seed], out / "reconstructed.png", nrow=10, scale=scale)
    files["checkpoint"] = ckpt
    wall = time.perf_counter() - t_wall

    log("")
    log(f"demo finished in {wall:.0f} s ({result.elapsed_s:.0f} s training, {result.step} steps, "
        f"final loss {result.final_loss:.4f})")
    for line in ev.lines():
        log(line)
    log(f"samples vs nearest training face: mean per-pixel MSE {float(nearest_mse.mean()):.4f} "
        "(see nearest_train.png)")
    log("files:")
    width = max(len(k) for k in files)
    for key, path in files.items():
        log(f"  {key:<{width}}  {path}")
    return DemoResult(out, result, wall, scores, float(nearest_mse.mean()), ev.quality, files)
