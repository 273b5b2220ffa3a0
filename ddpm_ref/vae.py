"""A small convolutional VAE, the first stage of latent diffusion (Kingma & Welling 2014; Rombach et al. 2022).

Conventions, stated once for the whole module:

- **The encoder** maps an image x [B, C, H, W] in [−1, 1] to the mean and log-variance of a diagonal Gaussian
  q(z | x) = N(μ, diag(σ²)) over latents z [B, latent_channels, H/f, W/f], f = 2^len(channels) (a 16×16 face and
  channels (32, 64): 4×4 latents). ``logvar`` = log σ², clamped to [−30, 20] as in latent diffusion.
- **The reparameterisation trick** (Kingma & Welling 2014, §2.4): z = μ + σ·ε with ε ~ N(0, I) drawn from
  ``generator``, σ = exp(½·logvar); the randomness sits in ε, so gradients flow to μ and logvar.
- **The KL term** against the prior N(0, I) in closed form (Kingma & Welling 2014, appendix B; eq. 10):
  KL(q(z|x) ‖ N(0, I)) = ½·Σ_j (μ_j² + σ_j² − 1 − log σ_j²), summed over a sample's latent entries, averaged over
  the batch.
- **The loss** (the negative ELBO with a Gaussian decoder of unit variance, up to constants, and β weighting the KL
  as in β-VAE, Higgins et al. 2017): per-sample sum of squared errors + β·KL, both averaged over the batch. Latent
  diffusion keeps β small (the latents must keep the image; the KL only keeps them tame).
- **The latent scale factor** (Rombach et al. 2022, §4.3.2 and appendix G): the diffusion model trains on
  z·s with s = 1/std(z) over the training latents, so that they have unit variance like the noise the forward
  process mixes in; samples are decoded from z/s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .diffusion import randn
from .unet import group_norm

__all__ = ["reparameterize", "kl_divergence", "vae_loss", "latent_scale_factor", "ConvVAE", "train_vae",
           "encode_latents"]

LOGVAR_RANGE = (-30.0, 20.0)


def reparameterize(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = μ + exp(½·logvar)·ε, ε ~ N(0, I) drawn from ``generator`` (shaped like ``mean``); shaped like ``mean``."""
    return mean + torch.exp(0.5 * logvar) * randn(mean.shape, generator=generator, like=mean)


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag(exp(logvar))) ‖ N(0, I)) = ½·Σ(μ² + exp(logvar) − 1 − logvar), summed over every dimension but
    the first, averaged over the batch; a scalar (Kingma & Welling 2014, appendix B)."""
    per_entry = mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()
    return 0.5 * per_entry.flatten(1).sum(1).mean()


def vae_loss(recon: Tensor, x: Tensor, mean: Tensor, logvar: Tensor, *, beta: float = 1.0) -> Tensor:
    """Σ (recon − x)² per sample (averaged over the batch) + β·:func:`kl_divergence`; a scalar."""
    if recon.shape != x.shape:
        raise ValueError(f"recon and x must have the same shape, got {tuple(recon.shape)} and {tuple(x.shape)}")
    reconstruction = ((recon.float() - x.float()) ** 2).flatten(1).sum(1).mean()
    return reconstruction + beta * kl_divergence(mean, logvar)


def latent_scale_factor(latents: Tensor) -> float:
    """s = 1/std(z) over every entry of ``latents`` [N, ...] (Rombach et al. 2022): z·s has unit variance."""
    std = float(latents.detach().double().std())
    if not std > 0:
        raise ValueError(f"the latents must vary to be scaled: their std is {std}")
    return 1.0 / std


def _conv_block(cin: int, cout: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), group_norm(cout, groups), nn.SiLU())


class ConvVAE(nn.Module):
    """A small convolutional VAE: ``encode`` x [B, C, H, W] → (μ, logvar) [B, latent_channels, H/f, W/f],
    ``decode`` z → x̂ [B, C, H, W], ``forward(x, generator)`` → (x̂, μ, logvar) with z sampled by
    :func:`reparameterize`. Each entry of ``channels`` is one level that halves the size (f = 2^len(channels)):
    conv 3×3 + GroupNorm + SiLU, then a strided conv; the decoder mirrors it with nearest upsampling."""

    def __init__(self, in_channels: int = 1, latent_channels: int = 4, channels: Sequence[int] = (32, 64),
                 groups: int = 8) -> None:
        super().__init__()
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.factor = 2 ** len(channels)
        enc: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        cin = channels[0]
        for c in channels:
            enc += [_conv_block(cin, c, groups), nn.Conv2d(c, c, 3, stride=2, padding=1)]
            cin = c
        enc += [_conv_block(cin, cin, groups), nn.Conv2d(cin, 2 * latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, cin, 3, padding=1), _conv_block(cin, cin, groups)]
        for c in reversed(channels):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_block(cin, c, groups)]
            cin = c
        dec += [nn.Conv2d(cin, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image sides must be multiples of {self.factor}, got {tuple(x.shape[-2:])}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.encode(x)
        return self.decode(reparameterize(mean, logvar, generator)), mean, logvar


def train_vae(vae: ConvVAE, images: Tensor, *, steps: int, batch_size: int = 32, lr: float = 2e-3, beta: float = 0.01,
              generator: torch.Generator | None = None, grad_clip: float = 1.0) -> list[float]:
    """``steps`` Adam steps of :func:`vae_loss` on random batches of ``images`` [N, C, H, W] (batches and ε from
    ``generator``); returns the loss of every step and leaves ``vae`` in eval mode."""
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        x = images[idx]
        optimizer.zero_grad(set_to_none=True)
        recon, mean, logvar = vae(x, generator)
        loss = vae_loss(recon, x, mean, logvar, beta=beta)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    vae.eval()
    return losses


@torch.no_grad()
def encode_latents(vae: ConvVAE, images: Tensor, *, generator: torch.Generator | None = None,
                   sample: bool = False) -> Tensor:
    """The latents of ``images``: the posterior means μ, or draws z ~ q(z | x) from ``generator`` with ``sample``."""
    mean, logvar = vae.encode(images)
    return reparameterize(mean, logvar, generator) if sample else mean
