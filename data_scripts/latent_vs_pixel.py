"""Lesson 11's comparison: latent diffusion (a small VAE, then a DiT on its scaled latents) against lesson 4's
pixel-space U-Net given the same CPU time, both scored by MS-SWD against the LFW faces.

    python data_scripts/latent_vs_pixel.py                 # about 3 minutes on 2 quiet cores
    DDPM_FAST=1 python data_scripts/latent_vs_pixel.py     # a smoke run of seconds
    python data_scripts/latent_vs_pixel.py --seed 1 --dit-steps 1000

The recipe (16×16 faces, the 90 training faces of ``lfw_faces``):

1. :class:`~ddpm_ref.vae.ConvVAE` 16/32 → latents 4×4×4, ``train_vae`` (Adam, β = 0.01 on the per-sample sum of
   squared errors), the latents are the posterior means, scaled by ``latent_scale_factor`` (Rombach et al. 2022);
2. :class:`~ddpm_ref.dit.DiT` (patch 1: 16 tokens, width 96, 4 blocks, 4 heads) trained as an ε-predictor by the
   course's ``train_step`` (L_simple, AdamW) on the 1000/T-scaled linear schedule at T = 100, sampled by Algorithm 2
   without x̂0 clipping (latents are not in [−1, 1]) and decoded from z/s;
3. lesson 4's recipe (``tests/test_loss.py``: U-Net 16/32, SGD lr 0.2 with momentum, clipping to 1, cosine T = 100,
   batches of 16) trained for its own 200 steps, and for as many steps as fit in the CPU time that steps 1–2 took.

The budget is CPU time of this process (``time.process_time``), not wall-clock time, so that a busy machine slows both
sides alike. Scores: MS-SWD ×10³ at 16 px (lesson 4's outcome score: finest level of ``ms_swd``, seed 0) of the
samples against the training faces; the yardstick is the 10 held-out real faces (real against real), the same
blurred, and uniform noise.

Measured (seed 0, 2 threads, the defaults; on a shared 2-core machine under ``nice -n 19``, so 1059 s of wall-clock
time for about 110 s of this process's CPU): VAE 300 steps in 22.2 CPU s, DiT 600 steps in 57.2 CPU s, the U-Net
1086 steps in the same 79.4 CPU s. MS-SWD ×10³ at 16 px: latent DiT samples 58.7, pixel U-Net at the same CPU 40.8,
the U-Net after lesson 4's 200 steps 49.9, the VAE's reconstructions of the training faces 45.5 (the first stage's
ceiling), held-out real faces 48.4, the same blurred 92.8, uniform noise 129.6. At 16×16 and 90 faces the latent
model does not pay: its VAE alone already scores about as far from the faces as held-out real ones do (see the
lesson for why latents pay at larger images).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import ddpm_ref as R  # noqa: E402
from ddpm_ref.course import FAST  # noqa: E402
from ddpm_ref.metrics import ms_swd  # noqa: E402
from ddpm_ref.vae import encode_latents, train_vae  # noqa: E402

SIZE = 16


def score(x: Tensor, faces: Tensor) -> float:
    """Lesson 4's outcome score: MS-SWD ×10³ at 16 px against ``faces`` (non-finite values count as 0)."""
    x = torch.nan_to_num(x.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).clamp(-1, 1)
    return ms_swd(x, faces, seed=0).levels[0][1]


def latent_diffusion(faces: Tensor, *, seed: int, vae_steps: int, dit_steps: int, n: int) -> dict:
    """Train the VAE and the DiT, sample ``n`` latents and decode them; the CPU seconds of each stage."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    t0 = time.process_time()
    vae = R.ConvVAE(1, latent_channels=4, channels=(16, 32))
    vae_losses = train_vae(vae, faces, steps=vae_steps, batch_size=32, lr=2e-3, beta=0.01, generator=g)
    z = encode_latents(vae, faces)
    scale = R.latent_scale_factor(z)
    z = z * scale
    t1 = time.process_time()
    schedule = R.NoiseSchedule.from_name("scaled_linear", 100)
    dit = R.DiT(in_channels=4, input_size=SIZE // vae.factor, patch_size=1, dim=96, depth=4, num_heads=4)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-3, weight_decay=0.0)
    dit.train()
    dit_losses = [R.train_step(dit, optimizer, z[torch.randint(0, len(z), (64,), generator=g)], schedule,
                               generator=g, grad_clip=1.0) for _ in range(dit_steps)]
    dit.eval()
    t2 = time.process_time()
    with torch.no_grad():
        latents = R.sample(dit, schedule, (n, *z.shape[1:]), generator=torch.Generator().manual_seed(1),
                           progress=False, clip_x0=False)
        samples = vae.decode(latents / scale).clamp(-1, 1)
        recon = vae.decode(encode_latents(vae, faces)).clamp(-1, 1)
    return {"samples": samples, "recon": recon, "scale": scale, "latent_std": float(z.std()),
            "vae_cpu": t1 - t0, "dit_cpu": t2 - t1, "sample_cpu": time.process_time() - t2,
            "vae_loss": sum(vae_losses[-20:]) / len(vae_losses[-20:]),
            "dit_loss": sum(dit_losses[-50:]) / len(dit_losses[-50:]), "sampled_std": float(latents.std())}


def pixel_unet(faces: Tensor, *, seed: int, cpu_budget: float | None, steps: int | None, n: int) -> dict:
    """Lesson 4's recipe for ``steps`` steps, or for as many as fit in ``cpu_budget`` CPU seconds; ``n`` samples."""
    from tests.test_loss import OUTCOME_LR, outcome_schedule, outcome_unet

    schedule = outcome_schedule()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model: nn.Module = outcome_unet()
    optimizer = torch.optim.SGD(model.parameters(), lr=OUTCOME_LR, momentum=0.9)
    model.train()
    t0, done, losses = time.process_time(), 0, []
    while (steps is not None and done < steps) or (cpu_budget is not None and time.process_time() - t0 < cpu_budget):
        x0 = faces[torch.randint(0, len(faces), (16,), generator=g)]
        losses.append(R.train_step(model, optimizer, x0, schedule, generator=g, grad_clip=1.0))
        done += 1
    cpu = time.process_time() - t0
    model.eval()
    with torch.no_grad():
        samples = R.sample(model, schedule, (n, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(1),
                           progress=False)
    return {"samples": samples, "steps": done, "cpu": cpu, "loss": sum(losses[-50:]) / max(len(losses[-50:]), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=40 if FAST else 300)
    parser.add_argument("--dit-steps", type=int, default=60 if FAST else 600)
    parser.add_argument("--samples", type=int, default=16 if FAST else 64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    faces, held_out = R.lfw_faces("train", size=SIZE), R.lfw_faces("test", size=SIZE)
    wall = time.perf_counter()
    lat = latent_diffusion(faces, seed=args.seed, vae_steps=args.vae_steps, dit_steps=args.dit_steps, n=args.samples)
    budget = lat["vae_cpu"] + lat["dit_cpu"]
    same = pixel_unet(faces, seed=args.seed, cpu_budget=budget, steps=None, n=args.samples)
    lesson4 = pixel_unet(faces, seed=args.seed, cpu_budget=None, steps=20 if FAST else 200, n=args.samples)
    blurred = _blur(held_out)
    noise = torch.rand((args.samples, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(7)) * 2 - 1
    print(f"latent diffusion vs pixel space on the LFW faces at {SIZE}×{SIZE} (seed {args.seed}, "
          f"{torch.get_num_threads()} threads{', FAST' if FAST else ''}); CPU seconds of this process")
    print(f"  VAE: {args.vae_steps} steps, {lat['vae_cpu']:.1f} s, loss {lat['vae_loss']:.2f}; latents 4×4×4, "
          f"scale factor {lat['scale']:.4f} (scaled std {lat['latent_std']:.3f})")
    print(f"  DiT: {args.dit_steps} steps, {lat['dit_cpu']:.1f} s, loss {lat['dit_loss']:.3f}; sampled latents std "
          f"{lat['sampled_std']:.3f}; sampling + decoding {lat['sample_cpu']:.1f} s")
    print(f"  U-Net (lesson 4's recipe) in the same {budget:.1f} s: {same['steps']} steps, loss {same['loss']:.3f}")
    print(f"MS-SWD ×10³ at {SIZE} px against the {len(faces)} training faces (lower is closer):")
    rows = [
        (f"latent DiT samples (n={args.samples})", score(lat["samples"], faces)),
        (f"pixel U-Net, same CPU ({same['steps']} steps)", score(same["samples"], faces)),
        (f"pixel U-Net, lesson 4's {lesson4['steps']} steps ({lesson4['cpu']:.1f} s)",
         score(lesson4["samples"], faces)),
        ("VAE reconstructions of the training faces", score(lat["recon"], faces)),
        (f"real held-out faces (n={len(held_out)}), the yardstick", score(held_out, faces)),
        ("held-out faces blurred", score(blurred, faces)),
        (f"uniform noise (n={args.samples})", score(noise, faces)),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value:7.1f}")
    print(f"({time.perf_counter() - wall:.0f} s wall-clock in all)")
    return 0


def _blur(x: Tensor) -> Tensor:
    import torchvision.transforms.functional as TF

    sigma = x.shape[-1] / 16
    return TF.gaussian_blur(x, 2 * int(3 * sigma) + 1, sigma).clamp(-1, 1)


if __name__ == "__main__":
    raise SystemExit(main())
