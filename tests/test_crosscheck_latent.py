"""Independent cross-check of ``ddpm_ref.vae`` and ``ddpm_ref.dit`` against ``diffusers`` (nothing is downloaded:
every module is built from arguments and given the same weights).

- the 2-D sin-cos positions against ``get_2d_sincos_pos_embed`` (``base_size`` = the grid, so positions are 0…n−1);
- the patch embedding (a linear map of :func:`~ddpm_ref.dit.patchify`'s tokens, plus the positions) against
  ``PatchEmbed`` (a stride-p convolution), the convolution's weights read as (row, column, channel);
- :class:`~ddpm_ref.dit.DiTBlock` against ``BasicTransformerBlock(norm_type="ada_norm_zero")`` (the block of
  diffusers' DiT), its conditioning embedding replaced by the c given;
- the KL term and the reparameterised draw against ``DiagonalGaussianDistribution`` (the posterior of diffusers'
  ``AutoencoderKL``).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import ddpm_ref as R
from ddpm_ref import dit as D
from tests._fixtures import gen

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize(("dim", "grid"), [(32, 4), (96, 4), (64, 8)])
def test_sincos_positions_match_diffusers(dim: int, grid: int) -> None:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    theirs = get_2d_sincos_pos_embed(dim, grid, base_size=grid)
    torch.testing.assert_close(D.sincos_pos_embed_2d(dim, grid, grid), theirs.float(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("channels", "size", "p"), [(3, 8, 2), (4, 4, 1), (1, 16, 4)])
def test_patch_embedding_matches_patch_embed(channels: int, size: int, p: int) -> None:
    from diffusers.models.embeddings import PatchEmbed

    torch.manual_seed(0)
    theirs = PatchEmbed(height=size, width=size, patch_size=p, in_channels=channels, embed_dim=32)
    linear = nn.Linear(p * p * channels, 32)
    with torch.no_grad():
        linear.weight.copy_(theirs.proj.weight.permute(0, 2, 3, 1).reshape(32, -1))
        linear.bias.copy_(theirs.proj.bias)
    x = torch.randn(2, channels, size, size, generator=gen(0))
    ours = linear(R.patchify(x, p)) + D.sincos_pos_embed_2d(32, size // p, size // p)
    with torch.no_grad():
        torch.testing.assert_close(ours, theirs(x), atol=1e-5, rtol=1e-5)
        if p > 1 and channels > 1:  # the layout matters: channels first does not match
            wrong = x.reshape(2, channels, size // p, p, size // p, p).permute(0, 2, 4, 1, 3, 5).flatten(3)
            assert not torch.allclose(linear(wrong.flatten(1, 2)) + ours * 0, theirs(x), atol=1e-3)


class _GivenC(nn.Module):
    """Stands in for diffusers' timestep/label embedding: returns the conditioning c it holds."""

    def __init__(self, c: Tensor) -> None:
        super().__init__()
        self.c = c

    def forward(self, timestep, class_labels, hidden_dtype=None) -> Tensor:
        return self.c


def _diffusers_block(ours: D.DiTBlock, dim: int, heads: int, c: Tensor) -> nn.Module:
    from diffusers.models.attention import BasicTransformerBlock

    theirs = BasicTransformerBlock(dim, heads, dim // heads, activation_fn="gelu-approximate",
                                   num_embeds_ada_norm=10, norm_type="ada_norm_zero", norm_elementwise_affine=False,
                                   norm_eps=1e-6, attention_bias=True, ff_inner_dim=ours.mlp[0].out_features)
    theirs.norm1.emb = _GivenC(c)
    q, k, v = ours.attn.qkv.weight.chunk(3, dim=0)
    qb, kb, vb = ours.attn.qkv.bias.chunk(3, dim=0)
    with torch.no_grad():
        for layer, w, b in ((theirs.attn1.to_q, q, qb), (theirs.attn1.to_k, k, kb), (theirs.attn1.to_v, v, vb),
                            (theirs.attn1.to_out[0], ours.attn.proj.weight, ours.attn.proj.bias),
                            (theirs.norm1.linear, ours.ada_ln[1].weight, ours.ada_ln[1].bias),
                            (theirs.ff.net[0].proj, ours.mlp[0].weight, ours.mlp[0].bias),
                            (theirs.ff.net[2], ours.mlp[2].weight, ours.mlp[2].bias)):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    return theirs.eval()


@pytest.mark.parametrize(("dim", "heads", "ratio"), [(32, 4, 4.0), (48, 3, 2.0)])
def test_dit_block_matches_basic_transformer_block(dim: int, heads: int, ratio: float) -> None:
    torch.manual_seed(1)
    ours = R.DiTBlock(dim, heads, mlp_ratio=ratio)
    g = gen(1)
    with torch.no_grad():  # make the adaLN-Zero layer non-zero, so that every shift, scale and gate shows
        ours.ada_ln[1].weight.copy_(0.2 * torch.randn(ours.ada_ln[1].weight.shape, generator=g))
        ours.ada_ln[1].bias.copy_(0.2 * torch.randn(ours.ada_ln[1].bias.shape, generator=g))
    x, c = torch.randn(3, 7, dim, generator=g), torch.randn(3, dim, generator=g)
    theirs = _diffusers_block(ours, dim, heads, c)
    with torch.no_grad():
        expected = theirs(x, timestep=torch.zeros(3, dtype=torch.long), class_labels=torch.zeros(3, dtype=torch.long))
        torch.testing.assert_close(ours(x, c), expected, atol=1e-5, rtol=1e-5)
        assert float((expected - x).abs().max()) > 0.1  # the block did something


def test_fresh_dit_block_is_the_identity_like_diffusers() -> None:
    ours = R.DiTBlock(32, 4)
    x, c = torch.randn(2, 5, 32, generator=gen(2)), torch.randn(2, 32, generator=gen(3))
    theirs = _diffusers_block(ours, 32, 4, c)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, timestep=torch.zeros(2, dtype=torch.long),
                                          class_labels=torch.zeros(2, dtype=torch.long)), x)
        assert torch.equal(ours(x, c), x)


def test_kl_and_draw_match_diagonal_gaussian_distribution() -> None:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    g = gen(4)
    mean, logvar = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    theirs = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    torch.testing.assert_close(R.kl_divergence(mean, logvar), theirs.kl().mean(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(R.reparameterize(mean, logvar, gen(5)), theirs.sample(generator=gen(5)))
