"""Cells of kaggle/ddpm_celebahq.ipynb, part 02: §3 dataset and loader, §4 β schedule and forward diffusion,
§5 the U-Net.

The percent format (see kaggle/build.py): edit here, then run `python kaggle/build.py`, which joins the parts
in file-name order into one notebook. A part uses the names the parts before it define (hence F821).
"""
# ruff: noqa: E402, F821

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
