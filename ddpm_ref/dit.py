"""A diffusion transformer, DiT (Peebles & Xie 2023), small enough to train on a CPU on the latents of a VAE.

Conventions, stated once for the whole module:

- **Patches** (§3.1, "patchify"): an image or latent x [B, C, H, W] is cut into non-overlapping p×p patches, read
  row by row over the (H/p)×(W/p) grid; each patch is flattened in the order (row in patch, column in patch,
  channel), so tokens are [B, N, p·p·C] with N = HW/p². :func:`unpatchify` is the exact inverse (the layout of the
  DiT code's ``unpatchify``: ``nhwpqc → nchpwq``). A linear map of the tokens is the strided p×p convolution of
  the paper's patch embedding.
- **Positions**: fixed 2-D sin-cos embeddings (the MAE/DiT recipe): the first half of the channels encode the
  column, the second half the row, each as [sin(pos·ω_k), cos(pos·ω_k)] with ω_k = 10000^(−k/(D/4)), k < D/4.
- **adaLN-Zero** (§3.2): the conditioning c [B, D] (here the timestep's embedding) regresses, through SiLU and one
  linear layer initialised to zero, a shift, a scale and a gate for each of the attention and the MLP sub-blocks:
  x ← x + gate·Attn(modulate(LN(x), shift, scale)), x ← x + gate'·MLP(modulate(LN(x), shift', scale')), with
  modulate(h, shift, scale) = h·(1 + scale) + shift and LayerNorms without parameters. At initialisation every gate
  is 0, so a fresh block is the identity, and the final layer (also zero-initialised) predicts 0.
- **The model** is a noise predictor like the course's U-Net: ``model(x_t, t)`` with ``t`` a LongTensor [B] (or an
  int), returning ε̂ shaped like x_t; the timestep enters through :class:`~ddpm_ref.unet.SinusoidalTimeEmbedding`
  and a two-layer MLP.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schedule import as_timesteps
from .unet import SinusoidalTimeEmbedding

__all__ = ["patchify", "unpatchify", "sincos_pos_embed_2d", "modulate", "Attention", "DiTBlock", "FinalLayer",
           "DiT"]


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """x [B, C, H, W] → tokens [B, (H/p)·(W/p), p·p·C]: patches row by row, each flattened as (row, column,
    channel)."""
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"the patch size {p} must divide the image's sides, got {h}×{w}")
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """tokens [B, (H/p)·(W/p), p·p·C] → x [B, C, H, W], the exact inverse of :func:`patchify`."""
    b, n, d = tokens.shape
    p = patch_size
    gh, gw = height // p, width // p
    if gh * p != height or gw * p != width or n != gh * gw or d % (p * p):
        raise ValueError(f"tokens {tuple(tokens.shape)} are not the {p}×{p} patches of a {height}×{width} image")
    c = d // (p * p)
    x = tokens.reshape(b, gh, gw, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double().reshape(-1)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sin-cos position embeddings [grid_h·grid_w, dim] (float32), tokens row by row: the first dim/2
    channels encode the column, the last dim/2 the row (MAE; DiT). ``dim`` must be a multiple of 4."""
    if dim % 4:
        raise ValueError(f"the embedding dim must be a multiple of 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x [B, N, D] · (1 + scale[:, None]) + shift[:, None], scale and shift [B, D]: adaLN's modulation."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over tokens [B, N, D] (one linear for q, k, v; one for the output)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning: ``forward(x [B, N, D], c [B, D])`` → [B, N, D].

    ``ada_ln`` = SiLU → Linear(D, 6D), zero-initialised, gives (shift, scale, gate) for the attention, then for the
    MLP (in that order); the LayerNorms have no parameters (ε = 1e-6); the MLP is Linear(D, r·D) → GELU (tanh) →
    Linear(r·D, D), r = ``mlp_ratio``. A fresh block is the identity."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada_ln[1].weight)
        nn.init.zeros_(self.ada_ln[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.ada_ln(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """LayerNorm → adaLN modulation (shift, scale from c) → Linear(D, p·p·C); the modulation and the linear layer
    start at zero, so a fresh DiT predicts ε̂ = 0."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        for layer in (self.linear, self.ada_ln[1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada_ln(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """A noise predictor ε_θ(x_t, t) for x [B, in_channels, input_size, input_size]: :func:`patchify` → linear patch
    embedding + 2-D sin-cos positions → ``depth`` :class:`DiTBlock` conditioned on the timestep's embedding →
    :class:`FinalLayer` → :func:`unpatchify`. ``learned_pos=True`` makes the positions a parameter (started at the
    sin-cos values); ``block(dim, num_heads, mlp_ratio)`` makes each block (any module with ``forward(x, c)``).
    Linear layers start Xavier-uniform (biases 0), except those a block zero-initialised (adaLN-Zero), which stay 0;
    the timestep MLP starts N(0, 0.02²) and the final layer 0 (Peebles & Xie 2023, §3.2)."""

    def __init__(self, in_channels: int = 4, input_size: int = 4, patch_size: int = 1, dim: int = 128,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0, learned_pos: bool = False,
                 block: Callable[[int, int, float], nn.Module] = DiTBlock) -> None:
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide input_size {input_size}")
        self.in_channels, self.input_size, self.patch_size = in_channels, input_size, patch_size
        grid = input_size // patch_size
        self.x_embed = nn.Linear(patch_size * patch_size * in_channels, dim)
        pos = sincos_pos_embed_2d(dim, grid, grid)[None]
        if learned_pos:
            self.pos_embed = nn.Parameter(pos)
        else:
            self.register_buffer("pos_embed", pos, persistent=False)
        self.time_embed = nn.Sequential(SinusoidalTimeEmbedding(dim), nn.Linear(dim, dim), nn.SiLU(),
                                        nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(dim, patch_size, in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for layer in self.blocks.modules():
            if isinstance(layer, nn.Linear) and bool(layer.weight.detach().any()):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        bound = math.sqrt(6.0 / (self.x_embed.in_features + self.x_embed.out_features))
        nn.init.uniform_(self.x_embed.weight, -bound, bound)
        nn.init.zeros_(self.x_embed.bias)
        for layer in (self.time_embed[1], self.time_embed[3]):
            nn.init.normal_(layer.weight, std=0.02)

    def forward(self, x: Tensor, t: Tensor | int) -> Tensor:
        h, w = x.shape[-2:]
        if h != self.input_size or w != self.input_size:
            raise ValueError(f"this DiT takes {self.input_size}×{self.input_size} inputs, got {h}×{w}")
        tokens = self.x_embed(patchify(x, self.patch_size)) + self.pos_embed.to(x.dtype)
        c = self.time_embed(as_timesteps(t, x))
        for block in self.blocks:
            tokens = block(tokens, c)
        return unpatchify(self.final(tokens, c), self.patch_size, h, w)
