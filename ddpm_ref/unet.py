"""The seed run's noise-prediction U-Net ε_θ(x_t, t) and its building blocks.

Defaults are the seed model for 3×256×256 images: conv 3→64; encoder ResBlock×2 at 64, 128, 256 channels,
each level followed by a stride-2 conv downsample; bottleneck ResBlock → self-attention → ResBlock at 32×32;
decoder upsample → ResBlock×2 with skip concatenation at 256, 128, 64; GroupNorm → SiLU → conv 3×3.
Time t goes through a sinusoidal embedding and a 2-layer MLP into every ResBlock as AdaGN.
With ``num_classes`` the network is class-conditional, ε_θ(x_t, t, c): a learned embedding of the label c (with one
extra row, index ``num_classes``, for the null label ∅) is added to the time embedding (Ho & Salimans 2022).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SinusoidalTimeEmbedding", "LabelEmbedding", "ResBlock", "SelfAttention", "Downsample", "Upsample", "UNet",
    "group_norm",
]


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ ``groups`` that divides ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer position encoding of the timestep (Vaswani et al. 2017; Ho et al. §4).

    emb(t) = [sin(t·f_0), …, sin(t·f_{h−1}), cos(t·f_0), …, cos(t·f_{h−1})], f_i = 10000^(−i/h), h = dim/2.
    t: [B] (int or float) → [B, dim] float32.
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.dim = dim
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class LabelEmbedding(nn.Module):
    """A learned vector per class label, plus one for the null label ∅ (classifier-free guidance).

    labels LongTensor [B] with values in {0, …, num_classes} → [B, dim]; ``num_classes`` itself is the null label
    ∅ (``null_label``), the "no label" that label dropout trains (Ho & Salimans 2022, §3.2). A table of
    num_classes + 1 rows (``nn.Embedding``); the UNet adds the result to its time embedding.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.null_label = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor) -> Tensor:
        labels = torch.as_tensor(labels, device=self.embedding.weight.device)
        if labels.dtype not in (torch.int64, torch.int32) or labels.ndim != 1:
            raise ValueError(f"labels must be a LongTensor [B], got dtype {labels.dtype} and shape "
                             f"{tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(f"labels must be in 0…{self.num_classes} ({self.num_classes} = the null label), got "
                             f"values from {int(labels.min())} to {int(labels.max())}")
        return self.embedding(labels)


class ResBlock(nn.Module):
    """Residual block with AdaGN time conditioning. x [B, C_in, H, W], emb [B, E] → [B, C_out, H, W].

    h = Conv(SiLU(GN(x))); h = Conv(Dropout(SiLU(GN(h)·(1 + s) + b))) with (s, b) = Linear(SiLU(emb));
    out = h + skip(x), skip a 1×1 conv when C_in ≠ C_out.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb)).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, with a residual. [B, C, H, W] → [B, C, H, W].

    GN → 1×1 conv to q, k, v → softmax(qkᵀ/√d)v via ``F.scaled_dot_product_attention`` → 1×1 conv.
    """

    def __init__(self, channels: int, num_heads: int = 1, *, groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        # [B, heads, HW, d] for SDPA
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 3×3 conv: [B, C, H, W] → [B, C, H/2, W/2]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then 3×3 conv: [B, C, H, W] → [B, C, 2H, 2W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """ε_θ(x_t, t): x [B, in_channels, H, W] and t LongTensor [B] → predicted noise [B, out_channels, H, W].

    ``channels`` gives the width of each level (one downsample per level, so H and W must be divisible by
    2^len(channels)); ``num_res_blocks`` ResBlocks per level; ``attention`` puts self-attention between the
    two bottleneck ResBlocks. ``UNet()`` is the seed model; ``UNet(in_channels=1, out_channels=1,
    channels=(32, 64))`` is a tiny CPU model.

    ``num_classes`` (default None: unconditional, and no extra weights) makes it ε_θ(x_t, t, c): ``forward(x, t,
    labels)`` with labels LongTensor [B] in {0, …, num_classes}, where ``num_classes`` is the null label ∅;
    ``labels=None`` means ∅ for every sample. ``label_embed`` (a :class:`LabelEmbedding`) is added to the time
    embedding, so it reaches every ResBlock through AdaGN.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: int = 2,
        attention: bool = True,
        num_heads: int = 1,
        time_emb_dim: int | None = None,
        groups: int = 32,
        dropout: float = 0.0,
        *,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive widths, got {channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.channels = channels
        base = channels[0]
        emb_dim = time_emb_dim or 4 * base
        self.time_embed = nn.Sequential(
            SinusoidalTimeEmbedding(base),
            nn.Linear(base, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.num_classes = num_classes
        if num_classes is not None:  # no new submodule otherwise: unconditional checkpoints load unchanged
            self.label_embed = LabelEmbedding(num_classes, emb_dim)
        self.stem = nn.Conv2d(in_channels, base, 3, padding=1)

        def block(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_dim, groups=groups, dropout=dropout)

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        ch = base
        for width in channels:
            blocks = [block(ch if j == 0 else width, width) for j in range(num_res_blocks)]
            self.down_blocks.append(nn.ModuleList(blocks))
            self.downsamples.append(Downsample(width))
            ch = width
        self.mid1 = block(ch, ch)
        self.mid_attn = SelfAttention(ch, num_heads, groups=groups) if attention else nn.Identity()
        self.mid2 = block(ch, ch)
        self.upsamples = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for width in reversed(channels):
            self.upsamples.append(Upsample(ch))
            self.up_blocks.append(
                nn.ModuleList([block(ch + width if j == 0 else width, width) for j in range(num_res_blocks)])
            )
            ch = width
        self.out = nn.Sequential(group_norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, self.out_channels, 3, padding=1))

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.channels)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"H and W must be divisible by {f} (one stride-2 downsample per level of {self.channels}), "
                f"got {tuple(x.shape[-2:])}: resize or crop the images"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(t)
        if self.num_classes is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            labels = torch.as_tensor(labels, device=x.device)
            if labels.ndim == 0:
                labels = labels.expand(x.shape[0])
            if labels.shape != (x.shape[0],):
                raise ValueError(f"labels must be a LongTensor [B] = [{x.shape[0]}], got shape {tuple(labels.shape)}")
            emb = emb + self.label_embed(labels).to(emb.dtype)
        elif labels is not None:
            raise ValueError("this UNet is unconditional: build it with UNet(..., num_classes=K) to pass labels")
        h = self.stem(x)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsamples, strict=True):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for up, blocks in zip(self.upsamples, self.up_blocks, strict=True):
            h = up(h)
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
        return self.out(h)
