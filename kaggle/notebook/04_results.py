"""Cells of kaggle/ddpm_celebahq.ipynb, part 04: §7–§12 sampling, reverse strips, reconstruction, metrics and curves,
and the list of outputs.

The percent format (see kaggle/build.py): edit here, then run `python kaggle/build.py`, which joins the parts
in file-name order into one notebook. A part uses the names the parts before it define (hence F821).
"""
# ruff: noqa: E402, F821

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
