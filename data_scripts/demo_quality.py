"""The demo's sample quality per CPU-minute: MS-SWD and brightness of lfw-tiny samples, one hypothesis at a time.

    python data_scripts/demo_quality.py shipped                      # the shipped 7200-step checkpoint
    python data_scripts/demo_quality.py yardstick                    # real vs real, blurred, noise
    python data_scripts/demo_quality.py train --steps 1680 [--set KEY=VALUE ...] [--ema 0.99,w0.995] [--noclip]

``train`` trains the lfw-tiny preset (``--preset lfw-demo``: the demo's; with the overrides) for exactly ``--steps``
optimizer steps, the cosine LR ending at the last step as in the demo, then samples ``DQ_SAMPLES`` (default 48)
faces (ancestral DDPM, all T steps, seed 0) from the preset's EMA, from each extra EMA decay tracked alongside
during the same run (``--ema``) and from the raw weights, x̂0 clipped (and the preset's EMA unclipped,
``--noclip``). Every line: MS-SWD ×10³ against the 90 training and against the 10 held-out faces, the brightness gap
(1-D W1 of per-image means against the training faces) and the std of the per-image means (training faces: 0.15),
appended to ``--csv``, with a histogram of the per-image means beside it (``<csv>_<tag>-<name>_brightness.png``).
The load average is printed with every line: on a shared CPU the seconds are comparable only at the same load.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_ref.checkpoint import load_pretrained_lfw_tiny  # noqa: E402
from ddpm_ref.config import apply_overrides, get_config  # noqa: E402
from ddpm_ref.data import lfw_faces  # noqa: E402
from ddpm_ref.demo import demo_amp  # noqa: E402
from ddpm_ref.ema import make_ema  # noqa: E402
from ddpm_ref.metrics import brightness_gap, mean_brightness, ms_swd  # noqa: E402
from ddpm_ref.plots import plot_brightness  # noqa: E402
from ddpm_ref.samplers import sample  # noqa: E402
from ddpm_ref.train import Callback, Trainer  # noqa: E402

N_SAMPLES = int(os.environ.get("DQ_SAMPLES", 48))  # 90 costs ~2 CPU-minutes per variant


def score(name: str, x: torch.Tensor, out_csv: Path, extra: dict[str, object]) -> None:
    train, test = lfw_faces("train"), lfw_faces("test")
    lo, hi = float(x.min()), float(x.max())
    x = x.clamp(-1, 1)  # unclipped chains can leave [-1, 1] (by 1000× when x0-hat is ill-conditioned): say so
    row = {"name": name, **extra, "range": f"[{lo:.3g}, {hi:.3g}]",
           "msswd_train": round(ms_swd(x, train).mean, 2), "msswd_test": round(ms_swd(x, test).mean, 2),
           "brightness_gap": round(brightness_gap(x, train), 4),
           "brightness_std": round(float(mean_brightness(x).std()), 4),
           "load1": round(os.getloadavg()[0], 2)}
    print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    label = "-".join(str(v) for v in (extra.get("tag"), name) if v)
    plot_brightness({"samples": mean_brightness(x), "training faces": mean_brightness(train),
                     "held-out faces": mean_brightness(test)},
                    out_csv.with_name(f"{out_csv.stem}_{label}_brightness.png"), title=label)
    new = not out_csv.is_file()
    with open(out_csv, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def draw(model: torch.nn.Module, schedule, clip: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return sample(model.eval(), schedule, (N_SAMPLES, 1, 24, 24), generator=g, progress=False, clip_x0=clip)


class ExtraEMA(Callback):
    """More EMA decays averaged alongside the run's own (same steps, same weights); "w0.995" is 0.995 with the
    warm-up of :func:`ddpm_ref.ema.make_ema`."""

    def __init__(self, decays: list[str]) -> None:
        self.decays, self.emas = decays, {}

    def on_train_start(self, trainer: Trainer) -> None:
        self.emas = {d: make_ema(trainer.ema.module, float(d.lstrip("w")), warmup=d.startswith("w"))
                     for d in self.decays}
        for e in self.emas.values():
            e.n_averaged.zero_()  # the first update copies the live weights, like the run's own EMA

    def on_step_end(self, trainer: Trainer, step: int, stats: object) -> None:
        for e in self.emas.values():
            e.update_parameters(trainer.model)


class Progress(Callback):
    """A line every ``every`` steps (the runs print nothing else until they are scored)."""

    def __init__(self, every: int = 240) -> None:
        self.every, self.t0 = every, time.perf_counter()

    def on_step_end(self, trainer: Trainer, step: int, stats: object) -> None:
        if trainer.step % self.every == 0:
            print(f"step {trainer.step}, {time.perf_counter() - self.t0:.0f} s, load {os.getloadavg()[0]:.1f}",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["shipped", "yardstick", "train"])
    p.add_argument("--steps", type=int, default=1680)
    p.add_argument("--preset", default="lfw-tiny", help="lfw-tiny (the rows of BENCHMARKS.md's hypotheses) or "
                   "lfw-demo (the demo's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the preset")
    p.add_argument("--ema", default="",
                   help="extra EMA decays tracked in the same run, comma-separated; w0.995: with warm-up")
    p.add_argument("--noclip", action="store_true", help="also sample the preset's EMA without x0 clipping")
    p.add_argument("--no-raw", action="store_true", help="skip the raw weights (score the EMA only)")
    p.add_argument("--tag", default="")
    p.add_argument("--csv", type=Path, default=Path("demo_quality.csv"))
    args = p.parse_args()
    torch.manual_seed(0)
    if args.what == "shipped":
        model, schedule = load_pretrained_lfw_tiny()
        score("shipped-7200", draw(model, schedule), args.csv, {})
        return
    if args.what == "yardstick":
        import torchvision.transforms.functional as TF
        train, test = lfw_faces("train"), lfw_faces("test")
        score("real-test(10)", test, args.csv, {})
        score("real-train-half(45)", train[:45], args.csv, {})
        score("blurred-train", TF.gaussian_blur(train, 5, 1.5), args.csv, {})
        score("noise", torch.rand(N_SAMPLES, 1, 24, 24) * 2 - 1, args.csv, {})
        return
    cfg = apply_overrides(get_config(args.preset, dataset_repeat=8, preview_every=0, milestone_every=0), args.set)
    spe = len(lfw_faces("train")) * cfg.dataset_repeat // cfg.batch_size
    # the cosine LR ends at epochs·spe ≥ steps (at most one epoch later); the demo's precision (bf16 where native)
    cfg = cfg.replace(epochs=max(1, -(-args.steps // spe)), max_steps=args.steps, amp=demo_amp(cfg.amp))
    extra = ExtraEMA([d for d in args.ema.split(",") if d])
    t0 = time.perf_counter()
    trainer = Trainer(cfg, Path("/tmp/demo_quality_run"), progress=False, resume=False, write_outputs=False,
                      callbacks=[extra, Progress()])
    res = trainer.fit()
    info = {"tag": args.tag, "set": " ".join(args.set), "steps": res.step, "train_s": round(res.elapsed_s),
            "loss": round(res.final_loss, 4)}
    print(f"trained {res.step} steps in {time.perf_counter() - t0:.0f} s, threads {torch.get_num_threads()}",
          flush=True)
    schedule = trainer.schedule
    score(f"ema{cfg.ema_decay}", draw(trainer.ema.module, schedule), args.csv, info)
    if args.noclip:
        score(f"ema{cfg.ema_decay}-noclip", draw(trainer.ema.module, schedule, clip=False), args.csv, info)
    for d, e in extra.emas.items():
        score(f"ema{d}", draw(e.module, schedule), args.csv, info)
    if not args.no_raw:
        score("raw", draw(trainer.model, schedule), args.csv, info)


if __name__ == "__main__":
    main()
