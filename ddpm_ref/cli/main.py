"""Command line: ``python -m ddpm_ref {train, sample, reconstruct, evaluate, demo, export, presets, bench, grade}``.

Every config field is an option of ``train`` (``--lr 5e-4``, ``--model-channels 32,64``, ``--data PATH``) and can
also be set with ``--set key=value``. Bad input ends with one line, ``error: …``, and exit status 2
(``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["main", "build_parser"]

COMMANDS = ("train", "sample", "reconstruct", "evaluate", "demo", "export", "presets", "bench", "grade")


class UsageError(Exception):
    """Bad input from the command line: printed as one line."""


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_config_args(p: argparse.ArgumentParser) -> None:
    from ..training.config import PRESETS, TrainConfig

    p.add_argument("--preset", default=None, help=f"named configuration: {', '.join(PRESETS)} (default lfw-tiny)")
    p.add_argument("--config", default=None, metavar="FILE.json",
                   help='JSON config: every field, or {"preset": NAME, key: value, …}')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any field (repeatable)")
    g = p.add_argument_group("config fields", "override the preset's value of any TrainConfig field "
                             "(python -m ddpm_ref presets lists the presets; ddpm_ref.training.config documents the "
                             "fields)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "name":
            continue
        metavar = "A,B,…" if isinstance(f.default, tuple) else "BOOL|auto" if f.default is None \
            else type(f.default).__name__.upper()
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg_{f.name}", default=None, metavar=metavar)


def _config_from_args(args: argparse.Namespace):
    from ..training.config import TrainConfig, apply_overrides, get_config, load_config, parse_value

    if args.preset and args.config:
        raise UsageError("give either --preset or --config, not both")
    config = load_config(args.config) if args.config else get_config(args.preset or "lfw-tiny")
    changes = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f"cfg_{f.name}", None)
        if value is not None:
            changes[f.name] = parse_value(f.name, value)
    config = config.replace(**changes) if changes else config
    return apply_overrides(config, args.set) if args.set else config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_ref",
        description="DDPM (Ho et al. 2020) in plain PyTorch: train, sample, reconstruct, evaluate, demo.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (resumes from OUT/checkpoints/ckpt_latest.pt)",
                       description="Train a DDPM. Resumes automatically from OUT/checkpoints/ckpt_latest.pt; run "
                                   "under torchrun --nproc_per_node N for DistributedDataParallel.")
    p.add_argument("--out", default=None, help="output folder (default runs/PRESET)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing ckpt_latest.pt (start from scratch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_args(p)

    def ckpt_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--ckpt", required=True, help="checkpoint .pt (or a training output folder)")
        q.add_argument("--out", default=None, help="output folder (default: the checkpoint's run folder)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
        q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")

    p = sub.add_parser("sample", help="generate images from pure noise")
    ckpt_args(p)
    p.add_argument("--n", type=int, default=5, help="number of images (default 5, as the seed)")
    p.add_argument("--sampler", choices=("ddpm", "ddim", "euler", "heun"), default=None,
                   help="ddpm or ddim for DDPM models (default ddpm); euler or heun for flow-matching models "
                        "(objective=flow, default heun)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps of ddim (default 50), euler (default 50) or heun (default 25; 2 network calls each)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η (ddim only)")
    p.add_argument("--strip", action="store_true", help="also write reverse_process.png")
    p.add_argument("--label", type=_int_list, default=None, metavar="C[,C…]",
                   help="class-conditional models: the class(es) to generate, repeated over the --n images")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance scale w (0 unconditional, 1 conditional, >1 guided; default 3 "
                        "with --label)")

    p = sub.add_parser("reconstruct", help="noise images to t_start and denoise them back")
    ckpt_args(p)
    p.add_argument("--t-start", type=int, default=None, help="noise level (default ⌊3T/4⌋: 300 at T=400)")
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--data", default=None, help="images to use (default: the checkpoint's data; lfw: test split)")

    p = sub.add_parser("evaluate", help="PSNR/SSIM against t_start, MS-SWD of samples (fixed protocol), FID/KID if "
                       "possible")
    ckpt_args(p)
    p.add_argument("--t-start", type=_int_list, default=None, help="comma-separated (default T/8,T/4,T/2,3T/4)")
    p.add_argument("--n", type=int, default=10, help="number of images (default 10)")
    p.add_argument("--data", default=None, help="images to score (default: the checkpoint's data)")
    p.add_argument("--samples", type=int, default=None, help="samples scored by MS-SWD against the real sets "
                   "(default 90 up to 64 px, else 0: skipped)")
    p.add_argument("--fid-samples", type=int, default=0, help="also FID/KID over this many samples (needs "
                   "torchmetrics and local Inception weights)")

    p = sub.add_parser("demo", help="train lfw-demo on the CPU, then sample, reconstruct, score (under 4 min)")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--train-seconds", type=float, default=None,
                   help="training time budget in seconds (default: the demo's, so that the whole demo takes under "
                   "4 minutes on 2 CPU cores)")
    p.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("export", help="write a checkpoint's EMA weights as a small inference file")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True, help="output .pt")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")

    sub.add_parser("presets", help="list the named configurations")

    # bench: options and engine live in ddpm_ref.bench
    from ..bench.runner import add_arguments as add_bench_arguments

    add_bench_arguments(sub.add_parser("bench", help="time training and sampling, each speed-up against fp32 eager"))

    # grade: a class's submissions into nbgrader's gradebook, and the class report (ddpm_ref.grading)
    from ..grading.command import add_arguments as add_grade_arguments

    add_grade_arguments(sub.add_parser("grade", help="autograde a class in parallel; report what it got wrong",
                                       description="Grade a class with nbgrader (N submissions at a time, "
                                                   "resumable) and report what it got wrong."))
    return parser


def _device(spec: str) -> torch.device:
    """The device of a command (ddpm_ref.speed.perf.resolve_device); on a CPU, the thread count for the current load."""
    from ..speed.perf import resolve_device, use_cpu_threads

    device = resolve_device(spec)
    if device.type == "cpu":
        use_cpu_threads()
    return device


def _run_dir(ckpt: str, out: str | None) -> Path:
    if out:
        return Path(out)
    path = Path(ckpt)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _cmd_train(args: argparse.Namespace) -> None:
    from ..speed import perf
    from ..training.trainer import Trainer

    config = _config_from_args(args)
    out = Path(args.out or Path("runs") / config.name)
    trainer = Trainer(config, out, progress=not args.no_progress, resume=not args.fresh)
    if trainer.device.type == "cpu" and not config.threads:  # before the run itself raises the load
        perf.use_cpu_threads(log=(lambda msg: print(msg, file=sys.stderr)) if trainer.is_main else None)
    if trainer.is_main:
        where = f"resuming from {trainer.resumed_from} at step {trainer.step}" if trainer.resumed_from else "new run"
        ddp = f", DDP over {trainer.dist.world_size} processes" if trainer.dist.enabled else ""
        print(f"{config.name}: {where}; {len(trainer.data)} images per epoch, {trainer.steps_per_epoch} steps per "
              f"epoch, device {trainer.device}{ddp}, AMP {trainer.amp_dtype or 'off'}, speed switches "
              f"{trainer.perf.switches()}; outputs in {out}/")
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        if trainer.is_main:
            print("\ninterrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        trainer.close()
    if trainer.is_main and not result.step_losses:
        limit = "--max-steps" if result.stopped == "max_steps" else "--epochs"
        print(f"nothing to train: {out} is already at step {result.step}, epoch {result.epoch} ({result.stopped}); "
              f"raise {limit} to continue it, or pass --fresh to start over")
    elif trainer.is_main:
        print(f"stopped ({result.stopped}) at step {result.step}, epoch {result.epoch}: final loss "
              f"{result.final_loss:.4f}, {result.elapsed_s:.0f} s this session; non-finite steps "
              f"{result.nonfinite_steps}, unreadable-image skips {result.skipped_images}")
        print(f"checkpoint {result.checkpoint}\nlosses     {out / 'losses.csv'} and {out / 'loss.png'}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from ..plots import auto_scale, save_grid, save_images, save_reverse_strip
    from ..samplers import ddim_sample, sample
    from ..training.checkpoint import model_from_checkpoint

    device = _device(args.device)
    model, schedule, config = model_from_checkpoint(args.ckpt, ema=not args.raw, device=device)
    if args.n < 1:
        raise UsageError("--n must be >= 1")
    out = _run_dir(args.ckpt, args.out)
    shape = (args.n, config.channels, config.image_size, config.image_size)
    g = torch.Generator(device=device).manual_seed(args.seed)
    flow = config.objective == "flow"
    sampler = args.sampler or ("heun" if flow else "ddpm")
    if flow != (sampler in ("euler", "heun")):
        what = ("a flow-matching model: use --sampler euler or heun" if flow
                else "a DDPM model: use --sampler ddpm or ddim")
        raise UsageError(f"{args.ckpt} holds {what}")
    steps = args.steps if args.steps is not None else (25 if sampler == "heun" else 50)
    if steps < 1:
        raise UsageError("--steps must be >= 1")
    args.sampler = sampler
    t0 = time.perf_counter()
    if args.label is not None or args.guidance is not None:  # classifier-free guidance (Ho & Salimans 2022)
        from ..guidance import GuidedModel

        k = getattr(model, "num_classes", None)
        if not k:
            raise UsageError("--label/--guidance need a class-conditional model (trained with --num-classes, e.g. "
                             "--preset digits-cfg); this checkpoint is unconditional")
        if args.label is None or not args.label:
            raise UsageError(f"--guidance needs --label C (a class in 0…{k - 1})")
        if min(args.label) < 0 or max(args.label) >= k:
            raise UsageError(f"--label must be classes in 0…{k - 1}, got {args.label}")
        labels = torch.tensor(args.label, device=device).repeat(-(-args.n // len(args.label)))[: args.n]
        w = 3.0 if args.guidance is None else args.guidance
        model = GuidedModel(model, labels, w)
        print(f"guiding towards class(es) {args.label} with w = {w:g}")
    if flow:
        from ..flow import euler_sample, heun_sample

        fn = heun_sample if sampler == "heun" else euler_sample
        x, frames = fn(model, shape, steps=steps, generator=g, return_intermediates=True)
        keep = sorted(frames, reverse=True)[:-1]
        frames = {round(t, 3): frames[t] for t in keep[:: max(1, len(keep) // 9)]}
    elif sampler == "ddpm":
        x, frames = sample(model, schedule, shape, generator=g, return_intermediates=True)
    else:
        x, frames = ddim_sample(model, schedule, shape, steps=steps, eta=args.eta, generator=g,
                                return_intermediates=True)
        keep = sorted(frames, reverse=True)
        frames = {t: frames[t] for t in keep[:: max(1, len(keep) // 9)]}
    scale = auto_scale(config.image_size)
    paths = save_images(x, out / "generated", scale=scale)
    grid = save_grid(x, out / "generated" / "grid.png", scale=scale)
    print(f"{args.n} samples ({args.sampler}, {time.perf_counter() - t0:.1f} s) in {out / 'generated'}/: "
          f"{paths[0].name} … {paths[-1].name}, {grid.name}")
    if args.strip:
        strip = save_reverse_strip(frames, x, out / "reverse_process.png", scale=scale)
        print(f"reverse process: {strip}")


def _cmd_reconstruct(args: argparse.Namespace) -> None:
    from ..evaluation.evaluate import evaluate_reconstruction, evaluation_images
    from ..plots import auto_scale, save_grid, save_reconstruction_figure
    from ..training.checkpoint import model_from_checkpoint

    device = _device(args.device)
    model, schedule, config = model_from_checkpoint(args.ckpt, ema=not args.raw, device=device)
    if config.objective == "flow":
        raise UsageError(f"{args.ckpt} holds a flow-matching model: reconstruct runs the DDPM reverse chain")
    t = args.t_start if args.t_start is not None else int(0.75 * config.T)
    if not 0 <= t < config.T:
        raise UsageError(f"--t-start must be in 0…{config.T - 1} for this model (T={config.T}), got {t}")
    x0, source = evaluation_images(config, args.n, args.data)
    scores, noised, recon = evaluate_reconstruction(model, schedule, x0, [t], seed=args.seed)
    out = _run_dir(args.ckpt, args.out)
    scale = auto_scale(config.image_size)
    save_grid(x0, out / "target.png", nrow=x0.shape[0], scale=scale)
    save_grid(recon[t], out / "reconstructed.png", nrow=x0.shape[0], scale=scale)
    save_grid(noised[t], out / "noised.png", nrow=x0.shape[0], scale=scale)
    p, s = scores[t]
    save_reconstruction_figure(x0, noised, recon, {t: (sum(p) / len(p), sum(s) / len(s))},
                               out / "reconstruction.png", scale=scale)
    print(f"{source}, t_start={t}: PSNR {sum(p) / len(p):.2f} dB, SSIM {sum(s) / len(s):.3f}")
    print(f"wrote {out / 'target.png'}, {out / 'noised.png'}, {out / 'reconstructed.png'}, "
          f"{out / 'reconstruction.png'}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ..evaluation.evaluate import run_evaluate

    out = _run_dir(args.ckpt, args.out)
    device = _device(args.device)
    res = run_evaluate(args.ckpt, out, t_starts=args.t_start, n=args.n, seed=args.seed, use_ema=not args.raw,
                       data=args.data, n_samples=args.samples, fid_samples=args.fid_samples, device=device)
    print(f"{res.protocol['images']}; {res.protocol['weights']} weights of step {res.protocol['step']}")
    for line in res.lines():
        print(line)
    if isinstance(res.protocol.get("quality"), str):
        print(f"MS-SWD {res.protocol['quality']}")
    print("wrote " + ", ".join(str(p) for p in res.files.values()))


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import DEMO_TRAIN_SECONDS, run_demo

    train_seconds = DEMO_TRAIN_SECONDS if args.train_seconds is None else args.train_seconds
    run_demo(args.out, train_seconds=train_seconds, steps=args.steps, seed=args.seed, progress=not args.no_progress)


def _cmd_export(args: argparse.Namespace) -> None:
    from ..training.checkpoint import export_ema

    path = export_ema(args.ckpt, args.out, dtype=torch.float16 if args.dtype == "fp16" else torch.float32)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB, EMA weights in {args.dtype})")


def _cmd_presets(args: argparse.Namespace) -> None:
    from ..training.config import PRESETS, build_schedule

    for name, c in PRESETS.items():
        s = build_schedule(c)
        objective = ("flow matching (velocity, t ∈ [0, 1])" if c.objective == "flow" else
                     f"T={c.T} {c.beta_schedule} (β {s.betas[0].item():.2g}→{s.betas[-1].item():.2g}, "
                     f"ᾱ_T-1={s.alpha_bars[-1].item():.2g}){', v-prediction' if c.objective == 'v' else ''}")
        print(f"{name:18s} {c.channels}×{c.image_size}², UNet {list(c.model_channels)}, {objective}, "
              f"batch {c.batch_size}, lr {c.lr:g}, EMA {c.ema_decay}, {c.epochs} epochs, "
              f"data {c.data or '(--data PATH)'}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from ..bench.runner import run_and_print

    run_and_print(args)


def _cmd_grade(args: argparse.Namespace) -> int:
    from ..grading.command import main as grade

    return grade(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ddpm_ref`` and the ``ddpm`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("MPLBACKEND", "Agg")
    handler = {"train": _cmd_train, "sample": _cmd_sample, "reconstruct": _cmd_reconstruct,
               "evaluate": _cmd_evaluate, "demo": _cmd_demo, "export": _cmd_export, "presets": _cmd_presets,
               "bench": _cmd_bench, "grade": _cmd_grade}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            status = handler[args.command](args)
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, RuntimeError,
            OSError) as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return status or 0
