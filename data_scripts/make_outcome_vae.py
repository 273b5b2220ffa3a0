#!/usr/bin/env python
"""Train and save the first stage of lesson 11's outcome check: a small VAE of the LFW faces at 16×16.

The check (``tests/test_dit.py``, ``test_DiTBlock_trains_a_latent_diffusion_model``) trains a DiT of the student's
blocks on this VAE's latents and decodes its samples. Training the VAE takes longer than the DiT itself, so the
trained weights are shipped (``tests/assets/outcome_vae.pt``, about 210 KB) and the check only loads them. The recipe:
:class:`~ddpm_ref.vae.ConvVAE` 16/32 → latents 4×4×4, :func:`~ddpm_ref.vae.train_vae` for 300 Adam steps (lr 2e-3,
batches of 32, β = 0.01, seed 0) on the 90 training faces of ``lfw_faces``; the file also holds the latent scale
factor of those faces' posterior means.

    python data_scripts/make_outcome_vae.py                  # writes tests/assets/outcome_vae.pt (about 10 s)
    python data_scripts/make_outcome_vae.py --out /tmp/vae.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import ddpm_ref as R  # noqa: E402
from ddpm_ref.files import atomic_file  # noqa: E402
from ddpm_ref.vae import encode_latents, train_vae  # noqa: E402

OUT = ROOT / "tests" / "assets" / "outcome_vae.pt"
SIZE, STEPS, SEED = 16, 300, 0


def make_vae(seed: int = SEED) -> R.ConvVAE:
    """The recipe above, trained now (the global RNG is left as it was); the VAE in eval mode."""
    faces = R.lfw_faces("train", size=SIZE)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = R.ConvVAE(1, latent_channels=4, channels=(16, 32))
        train_vae(vae, faces, steps=STEPS, batch_size=32, lr=2e-3, beta=0.01,
                  generator=torch.Generator().manual_seed(seed))
    return vae.eval()


def save(vae: R.ConvVAE, path: Path) -> float:
    """Write {"state_dict", "scale"} to ``path`` atomically; returns the scale factor."""
    scale = R.latent_scale_factor(encode_latents(vae, R.lfw_faces("train", size=SIZE)))
    with atomic_file(path) as f:
        torch.save({"state_dict": vae.state_dict(), "scale": scale}, f)
    return scale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    from tests.test_loss import outcome_samples_score

    vae = make_vae()
    scale = save(vae, args.out)
    with torch.no_grad():
        recon = vae.decode(encode_latents(vae, R.lfw_faces("train", size=SIZE)))
    print(f"wrote {args.out} (scale factor {scale:.4f}; reconstructions of the training faces: MS-SWD ×10³ "
          f"{outcome_samples_score(recon):.1f} at {SIZE} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
