"""Template of kaggle/ddpm_celebahq.ipynb in the percent format: edit here, then run `python kaggle/build.py`."""
# ruff: noqa: E402

# %% [markdown]
# # DDPM on CelebA-HQ 256×256, from scratch, on Kaggle's two T4 GPUs
#
# A Denoising Diffusion Probabilistic Model (Ho et al. 2020) trained from scratch on 30 000 CelebA-HQ faces at
# 256×256 in plain PyTorch: forward noising, a U-Net that predicts the noise, ancestral sampling, reconstruction
# from partial noise, PSNR/SSIM. The code is the course's reference package `ddpm_ref`, carried inside this
# notebook (the hidden cell below writes it out), so the notebook runs with the internet off.
#
# **How to run.** Add the dataset `denislukovnikov/celebahq256-images-only` (Add Input → Datasets), set
# Accelerator to **GPU T4 ×2**, then *Run all* (or *Save Version → Save & Run All* to run it in the background).
# Everything is written to `/kaggle/working`:
#
# | output | what it is |
# |---|---|
# | `checkpoints/ckpt_latest.pt` | the training state, saved after every epoch and when the time budget stops training |
# | `checkpoints/ckpt_epoch_010.pt`, `ckpt_epoch_020.pt` | milestones every 10 epochs |
# | `losses.csv`, `loss.png` | mean loss, learning rate, images/s and elapsed time per epoch, and their plot |
# | `previews/epoch_XXXX.png` | samples of the EMA model from the same noise after every epoch |
# | `generated/` | 5 faces generated from pure noise |
# | `reverse_strips.png` | the reverse process of those 5 faces, x_T → x_0 |
# | `target.png`, `reconstructed.png`, `reconstruction.png` | a face, its reconstruction from t = 300, and all 5 |
# | `metrics.csv`, `evaluate.csv`, `evaluate.png` | PSNR/SSIM at t = 300 (per image) and against t_start |
# | `quality.csv`, `quality.png`, `brightness.png` | MS-SWD at 256 px per level, brightness: 100 samples vs real faces |
# | `evaluate_protocol.json` | how those figures were measured (checkpoint, images, seed, sampler, metrics) |
#
# **Interrupted or out of time?** Kaggle ends a session after 12 hours. Training stops by itself before that
# (section 2, `TIME_BUDGET_H`), saves, and the rest of the notebook runs on the weights so far. Run the notebook
# again in the same session, or attach this notebook's output to a new session (Add Input → Your Work →
# this notebook), and training continues from `ckpt_latest.pt`.
#
# *Environment variables* (used by the project's CI, which runs this notebook top to bottom on a CPU with a
# tiny setup; on Kaggle none is set): `DDPM_INPUT_ROOT`, `DDPM_WORKING_DIR`, `DDPM_DATA_DIR`, `DDPM_MIN_IMAGES`,
# `DDPM_CONFIG_OVERRIDES` (a JSON object of config fields) and `DDPM_<NAME>` for each setting of section 2.

# %%
import os
import time
from pathlib import Path

NOTEBOOK_T0 = time.time()  # the time budget of section 2 counts from here
WORK_DIR = Path(os.environ.get("DDPM_WORKING_DIR", "/kaggle/working")).expanduser()
WORK_DIR.mkdir(parents=True, exist_ok=True)
SRC_DIR = WORK_DIR / "ddpm_ref_src"  # the package sources are written here by the next cell
print(f"outputs go to {WORK_DIR}")

# %% [package]

# %% [markdown]
# ## 1 · Environment and GPU detection
#
# The T4 (compute capability 7.5) has fast fp16 tensor cores but no native bf16, so training uses fp16 autocast
# with a `GradScaler` (`ddpm_ref.precision` picks bf16 without a scaler on compute capability ≥ 8). The cell stops
# with a message when the GPU is one this PyTorch has no kernels for (a P100 is what a pushed kernel gets when its
# accelerator is not set), and warns when the session has one GPU instead of two.

# %%
import platform

import ddpm_kaggle as kg
import torch

from ddpm_ref.precision import needs_grad_scaler, resolve_amp_dtype

DEVICE = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
N_GPUS = torch.cuda.device_count()
CPUS = kg.cpu_count()
AMP_DTYPE = resolve_amp_dtype(DEVICE, "auto")

print(f"Python {platform.python_version()}, PyTorch {torch.__version__}, CUDA {torch.version.cuda}, {CPUS} CPUs")
for i in range(N_GPUS):
    props = torch.cuda.get_device_properties(i)
    print(f"  GPU {i}: {props.name}, compute capability {props.major}.{props.minor}, "
          f"{props.total_memory / 2**30:.1f} GiB")
if N_GPUS == 0:
    print("  no GPU visible: on Kaggle choose Settings → Accelerator → GPU T4 ×2")
gpu_errors, gpu_warnings = kg.gpu_problems()
for warning in gpu_warnings:
    print(f"  warning: {warning}")
if gpu_errors:
    raise RuntimeError("; ".join(gpu_errors))
scaler_note = " + GradScaler" if needs_grad_scaler(DEVICE, AMP_DTYPE) else ""
print(f"mixed precision: {AMP_DTYPE or 'off (fp32)'}{scaler_note}")

# %% [markdown]
# ## 2 · Hyperparameters (the one place to edit)
#
# The default is the seed run's table exactly (preset `seed-celebahq256`): 256×256, T = 400, linear β from 1e-4
# to 2e-2, batch 16 (8 per GPU), AdamW lr 2e-4 with weight decay 1e-4, EMA 0.999, 25 epochs, gradient clipping at
# 1.0, cosine learning-rate decay, AMP, U-Net 64/128/256.
#
# **`REACH_PURE_NOISE`: the one switch that changes the schedule.** The paper's linear schedule was tuned for
# T = 1000. At T = 400 it stops at ᾱ₃₉₉ ≈ 0.0175, so the noisiest training input x₃₉₉ = 0.13·x₀ + 0.99·ε still
# carries 13 % of the face, while sampling starts from pure noise N(0, I): the model never saw the input it is
# asked to start from, and generated faces drift in colour and contrast. `REACH_PURE_NOISE = True` selects the
# preset `celebahq256-fixed`, identical except that both ends of β are scaled by 1000/T (Nichol & Dhariwal 2021,
# §3.2: β from 2.5e-4 to 5e-2), which reaches ᾱ₃₉₉ ≈ 4e-5. Section 4 prints and plots both schedules.
#
# `PARALLEL = "dp"` is the seed's `nn.DataParallel`: one process drives both GPUs, replicating the model and
# gathering the outputs on GPU 0 at every step. `"ddp"` launches DistributedDataParallel with `torchrun` from the
# training cell, one process per GPU, which PyTorch's documentation recommends over DataParallel even on one
# machine; the checkpoints are the same, so a run can switch between the two.

# %%
from ddpm_ref.config import PRESETS, get_config

REACH_PURE_NOISE = False  # True: preset "celebahq256-fixed" (β scaled by 1000/T; reaches pure noise)
PARALLEL = "dp"  # "dp": nn.DataParallel (the seed) | "ddp": torchrun, one process per GPU | "none": one GPU
TIME_BUDGET_H = 11.0  # hours after the first cell when training saves and stops (Kaggle's limit is 12 h)
DATA_DIR = ""  # "": search /kaggle/input (the seed's path first)
T_START = 300  # reconstruction: noise the target to t = T_START, then denoise
T_STARTS = (50, 100, 150, 200, 250, 300, 350)  # the PSNR/SSIM-against-t_start sweep
N_IMAGES = 5  # generated faces, reverse strips and reconstruction targets
QUALITY_SAMPLES = 100  # faces sampled for MS-SWD against as many real faces (section 11; 0: skip)
SEED = 0
CONFIG_OVERRIDES: dict = {}  # any TrainConfig field, e.g. {"epochs": 40}

# environment overrides (CI); on Kaggle none is set and the values above stand
REACH_PURE_NOISE = kg.env_value("REACH_PURE_NOISE", REACH_PURE_NOISE)
PARALLEL = kg.env_value("PARALLEL", PARALLEL)
TIME_BUDGET_H = kg.env_value("TIME_BUDGET_H", TIME_BUDGET_H)
DATA_DIR = kg.env_value("DATA_DIR", DATA_DIR)
T_START = kg.env_value("T_START", T_START)
T_STARTS = kg.env_value("T_STARTS", T_STARTS)
N_IMAGES = kg.env_value("N_IMAGES", N_IMAGES)
QUALITY_SAMPLES = kg.env_value("QUALITY_SAMPLES", QUALITY_SAMPLES)
SEED = kg.env_value("SEED", SEED)
CONFIG_OVERRIDES = {**CONFIG_OVERRIDES, **kg.env_value("CONFIG_OVERRIDES", {})}

if PARALLEL not in ("dp", "ddp", "none"):
    raise ValueError(f"PARALLEL must be 'dp', 'ddp' or 'none', got {PARALLEL!r}")
PRESET = "celebahq256-fixed" if REACH_PURE_NOISE else "seed-celebahq256"
DDP_PROCESSES = N_GPUS if N_GPUS > 1 else kg.env_value("DDP_PROCESSES", 2)
settings = {
    "seed": SEED,
    "parallel": PARALLEL,
    "num_workers": kg.loader_workers(DDP_PROCESSES if PARALLEL == "ddp" else 1),
    **CONFIG_OVERRIDES,
}
cfg = get_config(PRESET, **settings)
# loader workers hand over uint8 images through /dev/shm: keep what they hold in the space there is
workers, shm_note = kg.fit_workers_to_shared_memory(
    cfg.num_workers, cfg.batch_size * cfg.channels * cfg.image_size**2,
    processes=DDP_PROCESSES if PARALLEL == "ddp" else 1)
if shm_note:
    print(f"note: {shm_note}")
    cfg = cfg.replace(num_workers=workers)
if not 0 <= T_START < cfg.T or not all(0 <= t < cfg.T for t in T_STARTS):
    raise ValueError(f"T_START={T_START} and T_STARTS={T_STARTS} must lie in [0, {cfg.T - 1}] (0-based timesteps)")
if DEVICE.type == "cpu" and cfg.image_size > 64:
    raise RuntimeError(f"no GPU: training {cfg.image_size}×{cfg.image_size} on a CPU would take weeks. On Kaggle, "
                       "Settings → Accelerator → GPU T4 ×2, then run again")

print(f"preset {PRESET!r}" + (f" with overrides {CONFIG_OVERRIDES}" if CONFIG_OVERRIDES else ""))
preset_values = PRESETS[PRESET].to_dict()
for key, value in cfg.to_dict().items():
    mark = "" if value == preset_values[key] else "   (this session)" if key not in CONFIG_OVERRIDES else "   ← changed"
    print(f"  {key:16s} {value}{mark}")

# %% [markdown]
# ## 3 · Dataset, data loader and 6 sample images
#
# Every image is resized (shorter side to 256, antialiased), center-cropped and scaled to [−1, 1], the range the
# forward process assumes. Random horizontal flips are applied by the trainer on whole batches with its own
# seeded generator, so a resumed run sees exactly the batches an uninterrupted one would. The loader uses
# `num_workers` processes, sized to the CPUs of the session (Kaggle's GPU sessions have 4) and to the free space in
# `/dev/shm` (section 2). The workers hand the trainer uint8 pixels, a quarter of the shared memory of float32, and
# the trainer maps them to [−1, 1] on the GPU (`ddpm_ref.data.uint8_to_unit`, the same numbers as below).

# %%
from torch.utils.data import DataLoader

from ddpm_ref.data import ImageFolderDataset
from ddpm_ref.plots import save_grid

DATA_DIR = Path(DATA_DIR) if DATA_DIR else kg.find_image_dir()
cfg = cfg.replace(data=str(DATA_DIR))
dataset = ImageFolderDataset(DATA_DIR, cfg.image_size, channels=cfg.channels, hflip=False)
print(dataset)
print(f"{len(dataset) // cfg.batch_size} steps per epoch at batch {cfg.batch_size}; "
      f"{cfg.num_workers} loader workers")

loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                    generator=torch.Generator().manual_seed(SEED))
t0 = time.perf_counter()
batch = next(iter(loader))
print(f"one batch {tuple(batch.shape)} {batch.dtype}, values in [{batch.min():.2f}, {batch.max():.2f}], "
      f"loaded in {time.perf_counter() - t0:.2f} s (workers starting included)")
FIG_DIR = WORK_DIR / "figures"
kg.show_image(save_grid(batch[:6], FIG_DIR / "dataset_samples.png", nrow=6), caption="6 training images")

# %% [markdown]
# ## 4 · β schedule, forward diffusion and signal-to-noise ratio
#
# The forward process jumps to any noise level in one step (eq. 4):
# x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε with ε ~ N(0, I) and ᾱ_t = ∏_{s ≤ t} (1 − β_s).
# Timesteps are 0-based here, t ∈ {0, …, T−1}. The signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t) says how much
# of the image is left; where it flattens out above zero, the schedule never reaches pure noise.

# %%
import matplotlib.pyplot as plt
import numpy as np

from ddpm_ref import q_sample
from ddpm_ref.config import build_schedule

schedule = build_schedule(cfg)
OTHER = "seed-celebahq256" if REACH_PURE_NOISE else "celebahq256-fixed"
other_schedule = build_schedule(cfg.replace(beta_schedule=PRESETS[OTHER].beta_schedule))
for name, s in ((f"{PRESET} (this run)", schedule), (OTHER, other_schedule)):
    ab = s.alpha_bars[-1].item()
    print(f"{name:32s} β {s.betas[0].item():.2e} → {s.betas[-1].item():.2e}   ᾱ_T−1 = {ab:.3g}   "
          f"x_T−1 = {ab ** 0.5:.3f}·x0 + {(1 - ab) ** 0.5:.3f}·ε")

fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
steps = np.arange(schedule.T)
for name, s, style in ((PRESET, schedule, "-"), (OTHER, other_schedule, "--")):
    axes[0].plot(steps, s.betas.numpy(), style, label=name)
    axes[1].plot(steps, s.alpha_bars.numpy(), style, label=name)
    axes[2].semilogy(steps, (s.alpha_bars / (1 - s.alpha_bars)).numpy(), style, label=name)
for ax, title in zip(axes, ("β_t", "ᾱ_t", "SNR(t) = ᾱ_t / (1 − ᾱ_t)"), strict=True):
    ax.set_title(title)
    ax.set_xlabel("t")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(FIG_DIR / "schedule_snr.png", dpi=100)
plt.close(fig)
kg.show_image(FIG_DIR / "schedule_snr.png")

x0 = batch[:1]
strip_t = [int(round(v)) for v in np.linspace(0, schedule.T - 1, 8)]
noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(SEED))
strip = torch.cat([q_sample(x0, t, noise, schedule) for t in strip_t])
fig, axes = plt.subplots(1, 8, figsize=(16, 2.4))
for ax, t, img in zip(axes, strip_t, strip, strict=True):
    ax.imshow(((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
    ax.set_title(f"t={t}\n√ᾱ={schedule.sqrt_alpha_bars[t].item():.2f}", fontsize=9)
    ax.axis("off")
fig.suptitle("forward diffusion q(x_t | x_0) of one training image")
fig.tight_layout()
fig.savefig(FIG_DIR / "forward_strip.png", dpi=100)
plt.close(fig)
kg.show_image(FIG_DIR / "forward_strip.png")

# %% [markdown]
# ## 5 · The U-Net: parameters and a sanity forward pass
#
# `ddpm_ref.unet.UNet` is the seed's architecture: conv 3→64; encoder ResBlock ×2 at 64, 128 and 256 channels,
# each level followed by a stride-2 conv; bottleneck ResBlock → self-attention → ResBlock at 32×32; decoder
# upsample → ResBlock ×2 with skip connections; GroupNorm → SiLU → conv 3×3 back to 3 channels. The timestep
# enters every ResBlock through a sinusoidal embedding and a 2-layer MLP as AdaGN (scale and shift after
# GroupNorm). GroupNorm, not BatchNorm: a batch mixes images at different noise levels, and normalising across
# them would mix their statistics.

# %%
from ddpm_ref.config import build_model
from ddpm_ref.precision import autocast

model = build_model(cfg).to(DEVICE)
n_params = sum(p.numel() for p in model.parameters())
print(f"U-Net {list(cfg.model_channels)}, {cfg.num_res_blocks} ResBlocks per level, attention at "
      f"{cfg.image_size // model.downsample_factor}×{cfg.image_size // model.downsample_factor}: "
      f"{n_params / 1e6:.2f} M parameters")

shapes = []
hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: shapes.append((name, tuple(out.shape))))
         for name, m in [("stem", model.stem), *[(f"down {i}", d) for i, d in enumerate(model.downsamples)],
                         ("bottleneck", model.mid2), *[(f"up {i}", u) for i, u in enumerate(model.upsamples)],
                         ("out", model.out)]]
x = batch[:2].to(DEVICE)
t = torch.tensor([0, cfg.T - 1], device=DEVICE)
with torch.no_grad(), autocast(DEVICE, AMP_DTYPE):
    eps = model(x, t)
for h in hooks:
    h.remove()
for name, shape in shapes:
    print(f"  {name:11s} {shape}")
assert eps.shape == x.shape and torch.isfinite(eps).all(), "the U-Net output must match the input shape"
print(f"sanity check passed: ε_θ(x_t, t) {tuple(eps.shape)}, std {eps.float().std():.3f} at initialisation")
del model, eps
if DEVICE.type == "cuda":
    torch.cuda.empty_cache()

# %% [markdown]
# ## 6 · Training: AMP, EMA, cosine LR, CSV logging and a preview every epoch
#
# Algorithm 1: draw t uniformly from {0, …, T−1} and ε ~ N(0, I), minimise ‖ε − ε_θ(√ᾱ_t·x₀ + √(1−ᾱ_t)·ε, t)‖²
# (eq. 14). `ddpm_ref.train.Trainer` adds what a long run needs:
#
# - fp16 autocast and a `GradScaler` on the T4; a step whose gradient is not finite is skipped, never applied;
# - gradient clipping at 1.0, AdamW, cosine learning-rate decay over all epochs;
# - an EMA of the weights (0.999) that previews, samples and evaluation use;
# - `nn.DataParallel` over both GPUs (or DDP with `PARALLEL = "ddp"`); the EMA and every checkpoint hold the
#   unwrapped U-Net, so they load anywhere without a `module.` prefix;
# - `checkpoints/ckpt_latest.pt` after every epoch, written atomically (an interruption never leaves a broken
#   file), with milestones every 10 epochs; `losses.csv` row per epoch;
# - the time budget: at `TIME_BUDGET_H` hours after the first cell the trainer saves and stops mid-epoch, and the
#   notebook goes on to sample and evaluate with the weights so far.
#
# **Resuming** is automatic: the trainer continues from `/kaggle/working/checkpoints/ckpt_latest.pt` when it exists
# (a re-run in the same session); if not, the cell below looks for a previous run's output attached as an input
# (Add Input → Your Work → this notebook's earlier version) and copies its checkpoints and loss log here first.
# Every epoch prints the mean loss, images/s, GPU memory and the estimated time to finish.

# %%
adopted = kg.adopt_previous_run(WORK_DIR)
print(adopted.note)

# %%
from ddpm_ref.train import Trainer

conflicts = kg.resume_conflicts(WORK_DIR / "checkpoints" / "ckpt_latest.pt", cfg)
if conflicts:
    raise RuntimeError(f"{WORK_DIR / 'checkpoints' / 'ckpt_latest.pt'} belongs to another model or schedule "
                       f"({'; '.join(conflicts)}): restore the settings of section 2, or start a new run by "
                       "moving the checkpoints folder away")
budget_s = TIME_BUDGET_H * 3600 - (time.time() - NOTEBOOK_T0)
if budget_s < 60:
    raise RuntimeError(f"only {budget_s:.0f} s of the {TIME_BUDGET_H} h budget are left: raise TIME_BUDGET_H")
run_cfg = cfg.replace(time_budget_s=budget_s)
if PARALLEL == "ddp":
    config_path = WORK_DIR / "ddp_config.json"
    run_cfg.save_json(config_path)
    env, nccl_note = kg.ddp_environment(N_GPUS)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")])
    if nccl_note:
        print(f"note: {nccl_note}")
    cmd = kg.torchrun_command(DDP_PROCESSES, ["train", "--config", str(config_path), "--out", str(WORK_DIR),
                                              "--no-progress"])
    print("launching:", " ".join(cmd))
    watch = kg.LossLogWatcher(WORK_DIR / "losses.csv", run_cfg.epochs, run_cfg.time_budget_s)
    with kg.GpuMonitor(interval=15, watch=watch) as monitor:
        kg.run_streaming(cmd, env=env)
else:
    trainer = Trainer(run_cfg, WORK_DIR, dataset=dataset, callbacks=[kg.NotebookProgress()])
    dp = isinstance(trainer.model, torch.nn.DataParallel)
    where = f"nn.DataParallel over {N_GPUS} GPUs" if dp else str(trainer.device)
    print(f"training on {where}, AMP {trainer.amp_dtype}, GradScaler {trainer.scaler is not None}; speed switches "
          f"(ddpm_ref.perf, the defaults measured for this device): {trainer.perf.switches()}")
    try:
        with kg.GpuMonitor(interval=15) as monitor:
            result = trainer.fit()
    finally:
        trainer.close()
print(monitor.report())
for i in range(N_GPUS if PARALLEL != "ddp" else 0):
    print(f"GPU {i}: peak memory allocated by PyTorch in this process "
          f"{torch.cuda.max_memory_allocated(i) / 2**30:.2f} GiB")

# %% [markdown]
# ## 7 · The DDPM sampler, with intermediate steps
#
# Algorithm 2 runs the chain backwards from x_{T−1} ~ N(0, I): predict the noise, recover
# x̂₀ = (x_t − √(1−ᾱ_t)·ε_θ) / √ᾱ_t (clipped to [−1, 1]), and draw x_{t−1} from the posterior
# q(x_{t−1} | x_t, x̂₀) = N(μ̃_t, β̃_t I) (eqs. 6–7); the last step (t = 0) adds no noise. The code below is
# `ddpm_ref.samplers.p_sample`, the one step used everywhere in this notebook. Sampling uses the EMA weights of
# the latest checkpoint and keeps x_t at 8 evenly spaced t for the strips of section 9.

# %%
import inspect

import ddpm_ref.samplers
from ddpm_ref import sample
from ddpm_ref.checkpoint import load_checkpoint, model_from_checkpoint

print(inspect.getsource(ddpm_ref.samplers.p_sample))
CKPT = load_checkpoint(WORK_DIR / "checkpoints" / "ckpt_latest.pt")
ema_model, schedule, run_config = model_from_checkpoint(CKPT, ema=True, device=DEVICE)
print(f"EMA weights of {CKPT['path']}: epoch {CKPT['epoch']}, step {CKPT['step']}")
keep = sorted({int(round(v)) for v in np.linspace(schedule.T - 1, 0, 8)}, reverse=True)
shape = (N_IMAGES, run_config.channels, run_config.image_size, run_config.image_size)
t0 = time.perf_counter()
with autocast(DEVICE, AMP_DTYPE):
    samples, frames = sample(ema_model, schedule, shape, generator=torch.Generator(DEVICE).manual_seed(SEED),
                             return_intermediates=True, intermediate_steps=keep, progress=True)
samples = samples.float().cpu()
print(f"{N_IMAGES} samples × {schedule.T} steps in {time.perf_counter() - t0:.1f} s; kept x_t at t = {keep}")

# %% [markdown]
# ## 8 · Five faces generated from pure noise

# %%
from ddpm_ref.plots import save_images

paths = save_images(samples, WORK_DIR / "generated", prefix="sample")
print("\n".join(str(p) for p in paths))
kg.show_image(save_grid(samples, FIG_DIR / "generated_grid.png", nrow=N_IMAGES),
              caption=f"{N_IMAGES} samples of the EMA model, {schedule.T} reverse steps each")

# %% [markdown]
# ## 9 · Five reverse-diffusion strips
#
# Each row is one of the faces above: x_t at the kept timesteps, from pure noise (left) to the sample (right).

# %%
from ddpm_ref.plots import save_reverse_strip

kg.show_image(save_reverse_strip(frames, samples, WORK_DIR / "reverse_strips.png"))

# %% [markdown]
# ## 10 · Reconstruction from partial noising (t = 300)
#
# A face is pushed forward to x_{t_start} with eq. 4 and the reverse chain runs from there back to t = 0. At
# t_start = 300 with the seed's schedule x_t keeps √ᾱ ≈ 0.32 of the face: the low frequencies (pose, hair, skin
# tone) are still there, the details are re-invented. At t_start = T−1 it would be plain generation. The schedule
# that reaches pure noise keeps only √ᾱ ≈ 0.06 at t = 300, so compare the two schedules at equal √ᾱ (the sweep of
# section 11), not at equal t. The targets
# are the first 5 images of the dataset in sorted path order (the protocol of `ddpm_ref.evaluate`); the seed
# trains on every image, so they were seen in training.

# %%
from ddpm_ref.evaluate import evaluate, evaluation_images, reference_sets
from ddpm_ref.plots import save_image, save_reconstruction_figure

targets, target_source = evaluation_images(run_config, N_IMAGES, data=str(DATA_DIR))
quality_samples = references = None
if QUALITY_SAMPLES > 0:  # for section 11's MS-SWD: more samples, in batches of 25
    g = torch.Generator(DEVICE).manual_seed(SEED + 1)
    t0 = time.perf_counter()
    with autocast(DEVICE, AMP_DTYPE):
        quality_samples = torch.cat([
            sample(ema_model, schedule, (min(25, QUALITY_SAMPLES - i), *shape[1:]), generator=g, progress=False).cpu()
            for i in range(0, QUALITY_SAMPLES, 25)]).float()
    references = reference_sets(run_config, QUALITY_SAMPLES, data=str(DATA_DIR))
    print(f"{QUALITY_SAMPLES} more samples for MS-SWD in {time.perf_counter() - t0:.0f} s")
# the evaluation protocol of `python -m ddpm_ref evaluate` and the demo: one function, one set of files
ev = evaluate(ema_model, schedule, targets, sorted({T_START, *T_STARTS}), samples=quality_samples,
              references=references, seed=SEED, progress=True,
              info={"checkpoint": str(CKPT["path"]), "step": int(CKPT["step"]), "epoch": int(CKPT["epoch"]),
                    "weights": "ema, fp32", "images": target_source})
noised, recon = ev.noised, ev.recon
psnrs, ssims = ev.scores[T_START]
save_image(targets[0], WORK_DIR / "target.png")
save_image(recon[T_START][0], WORK_DIR / "reconstructed.png")
print(f"targets: {target_source}; x_t keeps √ᾱ = {schedule.sqrt_alpha_bars[T_START].item():.3f} of each at "
      f"t_start = {T_START}\nimage 0: PSNR {psnrs[0]:.2f} dB, SSIM {ssims[0]:.3f} → target.png, reconstructed.png")
kg.show_image(save_reconstruction_figure(targets, {T_START: noised[T_START]}, {T_START: recon[T_START]},
                                         {T_START: ev.means[T_START]}, WORK_DIR / "reconstruction.png"))

# %% [markdown]
# ## 11 · PSNR and SSIM, and sample quality (MS-SWD)
#
# **Protocol** (`ddpm_ref.evaluate.evaluate`, the same function as `python -m ddpm_ref evaluate` and the demo):
# the EMA weights of `ckpt_latest.pt` in fp32; the 5 targets of section 10; each target is noised with one fixed
# ε drawn from a generator seeded `SEED`, reused at every t_start, and the reverse chain is full ancestral sampling
# (posterior variance β̃_t, x̂₀ clipped to [−1, 1]); images are mapped from [−1, 1] to [0, 1] and scored with data
# range 1 by `skimage.metrics` (PSNR; SSIM with a 7×7 window per channel); mean and population standard deviation
# over the 5 images. The protocol is also written to `evaluate_protocol.json`.
#
# The seed reported PSNR ≈ 22–26 dB and SSIM ≈ 0.65–0.80 at t = 250–300. Those are the seed's figures, printed for
# comparison; this cell measures this run's.
#
# **Sample quality**: the multi-scale sliced Wasserstein distance of Karras et al. 2018 (`ddpm_ref.metrics.ms_swd`):
# Laplacian pyramid at 256, 128, 64, 32 and 16 px, 128 random 7×7 neighbourhoods per image per level, sliced
# Wasserstein distance ×10³ per level and their mean, between `QUALITY_SAMPLES` samples and as many real faces
# (the first images of the dataset in sorted path order; "more real" are the next ones), beside the yardstick:
# real against real (the floor at this set size), and blurred real faces and pure noise (where a failed model sits).
# The paper's Table 1 reports figures for CelebA at 128² over 16,384 images per side — a different set, size and
# sample count, so they are not comparable with these; compare this run's row with its own yardstick.

# %%
import csv

with open(WORK_DIR / "metrics.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "t_start", "psnr_db", "ssim"])
    for i, (p, s) in enumerate(zip(psnrs, ssims, strict=True)):
        w.writerow([i, T_START, f"{p:.4f}", f"{s:.4f}"])
    w.writerow(["mean", T_START, f"{np.mean(psnrs):.4f}", f"{np.mean(ssims):.4f}"])
print(f"checkpoint step {CKPT['step']}, epoch {CKPT['epoch']} (EMA); {target_source}")
print(f"{'image':>6} {'PSNR (dB)':>10} {'SSIM':>7}   at t_start = {T_START}")
for i, (p, s) in enumerate(zip(psnrs, ssims, strict=True)):
    print(f"{i:>6} {p:>10.2f} {s:>7.3f}")
print(f"{'mean':>6} {np.mean(psnrs):>10.2f} {np.mean(ssims):>7.3f}   (± {np.std(psnrs):.2f} dB, ± {np.std(ssims):.3f})")
print("the seed's documented figures, for comparison: PSNR ~22–26 dB, SSIM ~0.65–0.80 at t = 300\n")
for t_s, (p, s) in sorted(ev.scores.items()):
    print(f"t_start {t_s:4d}: PSNR {np.mean(p):6.2f} ± {np.std(p):.2f} dB   SSIM {np.mean(s):.3f} ± {np.std(s):.3f}")
if ev.quality is not None:
    print("\n" + "\n".join(ev.quality.lines()))
else:
    print("\nMS-SWD skipped: QUALITY_SAMPLES = 0")
files = ev.write(WORK_DIR, title=f"{run_config.name}, step {CKPT['step']}")
for key in ("evaluate_plot", "quality_plot", "brightness_plot"):
    if key in files:
        kg.show_image(files[key])

# %% [markdown]
# ## 12 · Loss and learning-rate curves from `losses.csv`

# %%
from ddpm_ref.plots import plot_losses, read_csv

csv_path = WORK_DIR / "losses.csv"
if csv_path.is_file() and read_csv(csv_path):
    log = read_csv(csv_path)
    print(f"{'epoch':>5} {'step':>7} {'loss':>8} {'lr':>9} {'img/s':>7} {'elapsed':>10}")
    for r in log:
        print(f"{r['epoch']:>5} {r['step']:>7} {float(r['loss']):>8.4f} {float(r['lr']):>9.2e} "
              f"{float(r['images_per_s']):>7.1f} {kg.format_duration(float(r['elapsed_s'])):>10}")
    kg.show_image(plot_losses(csv_path, WORK_DIR / "loss.png", title=f"{cfg.name}: loss and learning rate"))
else:
    print("no complete epoch yet: losses.csv gets its first row when epoch 1 ends")

# %% [markdown]
# ### Outputs of this run

# %%
expected = ["checkpoints/ckpt_latest.pt", "losses.csv", "loss.png", "target.png", "reconstructed.png",
            "reconstruction.png", "reverse_strips.png", "metrics.csv", "evaluate.csv", "evaluate.png",
            "evaluate_protocol.json",
            *(["quality.csv", "quality.png", "brightness.png"] if QUALITY_SAMPLES > 0 else []),
            *[f"generated/sample_{i:03d}.png" for i in range(N_IMAGES)]]
if run_config.milestone_every > 0:
    expected += [f"checkpoints/ckpt_epoch_{m:03d}.pt"
                 for m in range(run_config.milestone_every, CKPT["epoch"] + 1, run_config.milestone_every)]
if CKPT["epoch"] > 0 and run_config.preview_every > 0:
    expected.append(f"previews/epoch_{CKPT['epoch']:04d}.png")
missing = [name for name in expected if not (WORK_DIR / name).is_file()]
for path in sorted(p for p in WORK_DIR.rglob("*") if p.is_file() and SRC_DIR not in p.parents):
    print(f"  {path.stat().st_size / 2**20:9.2f} MiB  {path.relative_to(WORK_DIR)}")
print("missing: " + ", ".join(missing) if missing else f"all {len(expected)} expected outputs are present")
