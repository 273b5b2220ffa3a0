"""Cells of kaggle/ddpm_celebahq.ipynb, part 01: the title, the working folder, the package cell, §1 environment and GPU
detection, §2 hyperparameters.

The percent format (see kaggle/build.py): edit here, then run `python kaggle/build.py`, which joins the parts
in file-name order into one notebook. A part uses the names the parts before it define (hence F821).
"""
# ruff: noqa: E402, F821

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

import torch

import ddpm_kaggle as kg
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
