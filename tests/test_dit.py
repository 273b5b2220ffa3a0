"""Lesson 11 checks, the diffusion transformer: ``patchify`` and ``DiTBlock`` (Peebles & Xie 2023; ``ddpm_ref.dit``).

Conventions: tokens [B, N, p·p·C] are the p×p patches read row by row over the grid, each flattened as (row in
patch, column in patch, channel); ``unpatchify`` is the exact inverse. A DiTBlock maps (x [B, N, D], c [B, D]) to
[B, N, D] with adaLN-Zero: SiLU → Linear(D, 6D), zero-initialised, gives shift, scale and gate of the attention,
then of the MLP; x ← x + gate·Attn(LN(x)·(1 + scale) + shift), then the same with the MLP.

Oracles: the patch layout by an explicit loop over patches, the strided convolution that a linear map of the patches
equals, exact properties (a fresh block is the identity, a block treats tokens as a set) and the reference's outputs
with the same weights. diffusers' implementations (PatchEmbed, get_2d_sincos_pos_embed, adaLN-Zero blocks) are
compared in tests/test_crosscheck_latent.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ddpm_ref as R
from ddpm_ref import dit as D
from ddpm_ref.vae import encode_latents
from tests._asserts import expect_close, expect_tensor, fmt, load_reference_weights, nudge_parameters, on_student_side
from tests._fixtures import gen
from tests.harness import Failure, check

# ------------------------------------------------------------------------------------------------ patchify


def patch_loop(x: Tensor, p: int, order: str = "pqc", grid: str = "rows") -> Tensor:
    """The tokens by an explicit loop: patch (i, j) of the grid, its entries in ``order`` (p: row in patch, q: column
    in patch, c: channel); ``grid="cols"`` reads the grid column by column."""
    b, c, h, w = x.shape
    tokens = []
    cells = [(i, j) for i in range(h // p) for j in range(w // p)]
    if grid == "cols":
        cells = [(i, j) for j in range(w // p) for i in range(h // p)]
    for i, j in cells:
        patch = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # [B, C, p, p]
        dims = {"p": 2, "q": 3, "c": 1}
        tokens.append(patch.permute(0, *(dims[k] for k in order)).reshape(b, -1))
    return torch.stack(tokens, dim=1)


def _patch_diagnoses(x: Tensor, p: int) -> list:
    return [
        (patch_loop(x, p, "cpq"), "flatten each patch as (row, column, channel), channels last: F.unfold and a "
                                  "plain reshape give (channel, row, column); permute to [B, H/p, W/p, p, p, C] first"),
        (patch_loop(x, p, grid="cols"), "read the patches row by row over the grid (the patch right of the first is "
                                        "token 1), not column by column"),
        (patch_loop(x, p, "qpc"), "inside a patch, go row by row (row in patch, then column in patch), not column "
                                  "by column"),
        (patch_loop(x, p, "cqp"), "flatten each patch as (row, column, channel), channels last"),
    ]


PATCH_HINT = ("x.reshape(B, C, H/p, p, W/p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, (H/p)·(W/p), p·p·C): patches "
              "row by row, each as (row in patch, column in patch, channel)")


@check("patchify")
def test_patchify_layout(impl) -> None:
    """x [2, 3, 8, 6] with p = 2: 12 tokens of 12 values, each the patch's entries as (row, column, channel)."""
    x = torch.randn(2, 3, 8, 6, generator=gen(20))
    out = expect_tensor(impl.patchify(x, 2), "patchify(x [2, 3, 8, 6], 2)", shape=[2, 12, 12], dtype=torch.float32,
                        hint="tokens are [B, (H/p)·(W/p), p·p·C]")
    expect_close(out, patch_loop(x, 2), "patchify(x [2, 3, 8, 6], 2)", atol=0, rtol=0,
                 diagnoses=_patch_diagnoses(x, 2), hint=PATCH_HINT)


@check("patchify")
def test_patchify_is_inverted_by_unpatchify(impl) -> None:
    """unpatchify(patchify(x, p), p, H, W) = x for p = 1, 2, 4 (square and not); p = 1 makes one token per pixel,
    p = H = W one token for the whole image."""
    for shape, p in (((2, 4, 4, 4), 1), ((1, 2, 8, 8), 2), ((3, 1, 8, 12), 4), ((2, 3, 4, 4), 4)):
        x = torch.randn(shape, generator=gen(21 + p))
        b, c, h, w = shape
        n = (h // p) * (w // p)
        out = expect_tensor(impl.patchify(x, p), f"patchify(x {list(shape)}, {p})", shape=[b, n, p * p * c],
                            hint="tokens are [B, (H/p)·(W/p), p·p·C]")
        back = D.unpatchify(out, p, h, w)
        expect_close(back, x, f"unpatchify(patchify(x {list(shape)}, {p}))", atol=0, rtol=0, hint=PATCH_HINT)
        expect_close(out, patch_loop(x, p), f"patchify(x {list(shape)}, {p})", atol=0, rtol=0,
                     diagnoses=_patch_diagnoses(x, p), hint=PATCH_HINT)


@check("patchify", hidden=True)
def test_patchify_then_linear_is_the_strided_convolution(impl) -> None:
    """The paper's patch embedding: a linear map of your tokens equals conv2d(x, W, stride=p) with the same weights
    read as (row, column, channel)."""
    x, p, d = torch.randn(2, 3, 8, 8, generator=gen(25)), 4, 5
    weight = torch.randn(d, 3, p, p, generator=gen(26))
    conv = F.conv2d(x, weight, stride=p).flatten(2).transpose(1, 2)  # [B, N, D]
    tokens = expect_tensor(impl.patchify(x, p), "patchify(x [2, 3, 8, 8], 4)", shape=[2, 4, 48])
    expect_close(tokens @ weight.permute(0, 2, 3, 1).reshape(d, -1).T, conv,
                 "a linear map of patchify(x, 4) against the stride-4 convolution", atol=1e-4, rtol=1e-4,
                 hint=PATCH_HINT)


# ------------------------------------------------------------------------------------------------ DiTBlock


def _block(impl, dim: int = 32, heads: int = 4, seed: int = 0, **kwargs) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return impl.DiTBlock(dim, heads, **kwargs)


def _block_inputs(b: int = 3, n: int = 5, dim: int = 32, seed: int = 30) -> tuple[Tensor, Tensor]:
    g = gen(seed)
    return torch.randn(b, n, dim, generator=g), torch.randn(b, dim, generator=g)


BLOCK_HINT = ("shift, scale, gate (attention), shift, scale, gate (MLP) = ada_ln(c).chunk(6, dim=1); "
              "x = x + gate[:, None]·attn(LN(x)·(1 + scale[:, None]) + shift[:, None]); then the same with the MLP")


@check("DiTBlock")
def test_DiTBlock_fresh_is_the_identity(impl) -> None:
    """adaLN-Zero: the modulation layer starts at zero, so every gate is 0 and a fresh block returns x unchanged,
    whatever c is."""
    block = _block(impl)
    x, c = _block_inputs()
    with torch.no_grad():
        out = block(x, c)
    out = expect_tensor(out, "DiTBlock(32, 4)(x [3, 5, 32], c [3, 32])", shape=[3, 5, 32], dtype=torch.float32)
    expect_close(out, x, "a fresh DiTBlock(32, 4)", atol=1e-6, rtol=0,
                 hint="zero-initialise the linear layer that makes (shift, scale, gate) from c (weight and bias: "
                      "nn.init.zeros_), and multiply each sub-block's output by its gate before adding it to x")


def _can_learn(block: nn.Module, x: Tensor, c: Tensor) -> tuple[list[str], float]:
    """(names of the parameters with a non-zero gradient, the output's largest change from x) of a fresh block."""
    out = block(x, c)
    change = float((out.detach() - x).abs().max())
    w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * w).sum().backward()
    return [n for n, p in block.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)], change


@check("DiTBlock")
def test_DiTBlock_fresh_can_learn(impl) -> None:
    """Zero-initialised gates must not freeze the block: the modulation layer of a fresh block gets a gradient (the
    gates' gradient is the sub-blocks' output), so training moves it off the identity."""
    block = _block(impl)
    x, c = _block_inputs()
    names, _ = on_student_side(_can_learn, block, x, c)
    if not names:
        raise Failure("a fresh DiTBlock(32, 4) gets no gradient at all: no parameter could ever change.",
                      "zero-initialise only the adaLN modulation layer (the gates start at 0 but learn, since their "
                      "gradient is the attention's and the MLP's output); keep the attention and MLP weights random")


def _randomise(block: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@check("DiTBlock")
def test_DiTBlock_treats_tokens_as_a_set(impl) -> None:
    """With random weights: permuting the tokens permutes the output the same way (positions come from the
    embedding, not the block), every sample of a batch on its own, and c changes every sample's output."""
    block = _block(impl)
    on_student_side(_randomise, block, 1)
    x, c = _block_inputs()
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out, out_perm = block(x, c), block(x[:, perm], c)
        changed = x.clone()
        changed[1] = torch.randn(5, 32, generator=gen(31))
        out_changed = block(changed, c)
        out_c = block(x, torch.randn(3, 32, generator=gen(32)))
    out = expect_tensor(out, "DiTBlock(32, 4) with random weights", shape=[3, 5, 32])
    expect_close(out_perm, out[:, perm], "the block's output for permuted tokens", atol=1e-4, rtol=1e-4,
                 hint="self-attention and the token-wise MLP treat tokens alike: no position-dependent layer, "
                      "and attention over the token dimension (dim 1), not the channels")
    drift = float((out_changed[[0, 2]] - out[[0, 2]]).abs().max())
    if drift > 1e-5:
        raise Failure(f"changing sample 1 of a batch of 3 changed samples 0 and 2 by up to {drift:.3g}.",
                      "attend over the tokens of each sample (q, k, v shaped [B, heads, N, d]), not across the batch")
    per_sample = (out_c - out).abs().flatten(1).amax(1)
    if bool((per_sample < 1e-4).any()):
        raise Failure(f"DiTBlock ignores c: changing it changed the output by only {fmt(per_sample)} per sample.",
                      "shift, scale and gate come from c: ada_ln(c).chunk(6, dim=1)")


def _variant(ref: D.DiTBlock, x: Tensor, c: Tensor, kind: str) -> Tensor:
    """The reference block with one typical mistake (for the diagnoses)."""
    sh1, sc1, g1, sh2, sc2, g2 = ref.ada_ln(c).chunk(6, dim=1)
    if kind == "no_one":
        def mod(h, sh, sc):
            return h * sc[:, None] + sh[:, None]
    elif kind == "swap":
        def mod(h, sh, sc):
            return D.modulate(h, sc, sh)
    else:
        mod = D.modulate
    if kind == "no_gate":
        g1, g2 = torch.ones_like(g1), torch.ones_like(g2)
    if kind == "post_norm":
        x = ref.norm1(x + g1[:, None] * ref.attn(mod(x, sh1, sc1)))
        return ref.norm2(x + g2[:, None] * ref.mlp(mod(x, sh2, sc2)))
    if kind == "no_residual":
        x = g1[:, None] * ref.attn(mod(ref.norm1(x), sh1, sc1))
        return g2[:, None] * ref.mlp(mod(ref.norm2(x), sh2, sc2))
    x = x + g1[:, None] * ref.attn(mod(ref.norm1(x), sh1, sc1))
    return x + g2[:, None] * ref.mlp(mod(ref.norm2(x), sh2, sc2))


@check("DiTBlock")
def test_DiTBlock_with_reference_weights(impl) -> None:
    """With the reference's weights (its adaLN layer made non-zero), the output equals ddpm_ref.DiTBlock's, for
    mlp_ratio 4 and 2 (skipped if the parameter names differ)."""
    for ratio in (4.0, 2.0):
        block, ref = _block(impl, mlp_ratio=ratio), _block(R, mlp_ratio=ratio)
        nudge_parameters(ref, scale=0.3, seed=4)
        load_reference_weights(block, ref, "DiTBlock")
        x, c = _block_inputs()
        with torch.no_grad():
            out, expected = block(x, c), ref(x, c)
            diagnoses = [
                (_variant(ref, x, c, "no_one"), "modulate as LN(x)·(1 + scale) + shift: the 1 keeps a zero scale "
                                                "from wiping out the features"),
                (_variant(ref, x, c, "swap"), "shift and scale are swapped: the six chunks come in the order "
                                              "shift, scale, gate (attention), then shift, scale, gate (MLP); shift "
                                              "is added and scale multiplies, LN(x)·(1 + scale) + shift"),
                (_variant(ref, x, c, "no_gate"), "multiply each sub-block's output by its gate before the residual "
                                                 "addition"),
                (_variant(ref, x, c, "post_norm"), "normalise the input of each sub-block (pre-norm), not the sum"),
                (_variant(ref, x, c, "no_residual"), "add each gated sub-block's output to x (residual connections)"),
            ]
        expect_close(out, expected, f"DiTBlock(32, 4, mlp_ratio={ratio}) with the reference's weights", atol=1e-4,
                     rtol=1e-4, diagnoses=diagnoses, hint=BLOCK_HINT)


def _gradient_report(block: nn.Module, x: Tensor, c: Tensor) -> list[str]:
    block(x, c).square().mean().backward()
    return [n for n, p in block.named_parameters() if p.requires_grad and p.grad is None]


@check("DiTBlock", hidden=True)
def test_DiTBlock_every_parameter_gets_a_gradient(impl) -> None:
    """With random weights, one backward pass reaches every parameter (no layer made in __init__ and left unused)."""
    block = _block(impl)
    on_student_side(_randomise, block, 2)
    missing = on_student_side(_gradient_report, block, *_block_inputs())
    if missing:
        raise Failure(f"DiTBlock(32, 4): {len(missing)} parameter(s) get no gradient: {', '.join(missing[:6])}.",
                      "a layer created in __init__ is never used in forward")


# ------------------------------------------------------------------------------------------------ the outcome

#: The outcome check's recipe, lesson 11's latent diffusion cut to the grading budget (a few seconds of CPU): a DiT
#: of width 64 with two of the student's blocks, trained as an ε-predictor on the 4×4×4 latents of a small VAE.
OUTCOME_STEPS, OUTCOME_LR, OUTCOME_BATCH, OUTCOME_SAMPLES = 200, 2e-3, 64, 128
OUTCOME_PASS = 65.0  # MS-SWD ×10³ at 16 px of the decoded samples against the training faces
OUTCOME_CHECK = "DiTBlock_trains_a_latent_diffusion_model"
#: The recipe's scores, measured by ``python data_scripts/outcome_calibration.py DiTBlock`` (seeds 0–3, 2 CPU
#: cores): the range of MS-SWD ×10³ per kind of block ("correct": the reference and every correct variant of
#: tests/mistakes.py; "untrained": blocks that return x unchanged, so only the embeddings and the final layer learn;
#: the others: each typical mistake the check must catch). The check's message quotes it, and
#: tests/test_course_sync.py keeps lesson 11's text and solutions/README.md equal to it.
#: The mistakes it leaves to the block's other checks score as correct blocks do (no gates, shift and scale swapped,
#: post-norm: 50–59); the pass mark sits between them and the mistakes it catches.
OUTCOME_MEASURED: dict[str, tuple[int, int]] = {
    "correct": (50, 57),
    "untrained": (73, 76),
    "dit_everything_zero": (73, 74),  # no gradient reaches the blocks: they stay the identity
    "dit_modulate_without_one": (72, 75),  # LN(x)·scale with scale = 0 at first: the blocks see nothing
}


#: the outcome's first stage, trained by ``python data_scripts/make_outcome_vae.py`` (its recipe) and shipped
OUTCOME_VAE = Path(__file__).resolve().parent / "assets" / "outcome_vae.pt"


@functools.cache
def outcome_first_stage() -> tuple[R.ConvVAE, Tensor, float]:
    """The outcome's VAE, the reference's (never the student's): a ConvVAE 16/32 trained on the 90 training faces at
    16×16 (``OUTCOME_VAE``); (the VAE in eval mode, the faces' scaled latents [90, 4, 4, 4], the scale)."""
    saved = torch.load(OUTCOME_VAE, weights_only=True)
    vae = R.ConvVAE(1, latent_channels=4, channels=(16, 32))
    vae.load_state_dict(saved["state_dict"])
    vae.eval()
    return vae, encode_latents(vae, R.lfw_faces("train", size=16)) * saved["scale"], float(saved["scale"])


def outcome_schedule() -> R.NoiseSchedule:
    """The outcome's diffusion in latent space: the scaled linear schedule (Stable Diffusion's), T = 100."""
    return R.NoiseSchedule.from_name("scaled_linear", 100)


def train_latent_dit(block: Callable[[int, int, float], nn.Module], latents: Tensor, seed: int) -> nn.Module:
    """Run where ``block`` lives (:func:`on_student_side`: training takes backward passes through it): a DiT (width
    64, two ``block``s, 4 heads, patch 1) trained by ``OUTCOME_STEPS`` steps of the course's ``train_step`` (AdamW at
    ``OUTCOME_LR``, batches of ``OUTCOME_BATCH``, clipping to 1) on ``latents`` [N, 4, 4, 4]; returned in eval mode
    without gradients. The global RNG is left as it was."""
    schedule = outcome_schedule()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = R.DiT(in_channels=4, input_size=4, patch_size=1, dim=64, depth=2, num_heads=4, block=block)
        optimizer = torch.optim.AdamW(model.parameters(), lr=OUTCOME_LR, weight_decay=0.0)
        g = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(OUTCOME_STEPS):
            batch = latents[torch.randint(0, len(latents), (OUTCOME_BATCH,), generator=g)]
            R.train_step(model, optimizer, batch, schedule, generator=g, grad_clip=1.0)
    return model.eval().requires_grad_(False)


def outcome_score(block: Callable[[int, int, float], nn.Module], seed: int = 0) -> float:
    """:func:`train_latent_dit` with ``block``; then, here, ``OUTCOME_SAMPLES`` latents drawn from it by the reference
    sampler (Algorithm 2 without x̂0 clipping, fixed noise), decoded by the outcome's VAE and scored like lesson 4's
    outcome (:func:`tests.test_loss.outcome_samples_score`: MS-SWD ×10³ at 16 px against the training faces). When the
    judge grades, the model stays in the student's process and answers each ε̂ = model(x_t, t) of the chain."""
    from tests.test_loss import outcome_samples_score

    vae, latents, scale = outcome_first_stage()
    model = on_student_side(train_latent_dit, block, latents, seed)
    with torch.random.fork_rng(), torch.no_grad():
        z = R.sample(model, outcome_schedule(), (OUTCOME_SAMPLES, *latents.shape[1:]),
                     generator=torch.Generator().manual_seed(1), progress=False, clip_x0=False)
        x = vae.decode(torch.nan_to_num(z.float(), nan=0.0, posinf=0.0, neginf=0.0) / scale)
    return outcome_samples_score(x)


@check("DiTBlock")
def test_DiTBlock_trains_a_latent_diffusion_model(impl) -> None:
    """The outcome: latent diffusion with your block. :func:`outcome_score`: a small DiT made of two of your
    DiTBlocks learns the latents of a VAE of the LFW faces (200 AdamW steps), and its samples, decoded, are scored
    by MS-SWD ×10³ at 16 px against the training faces (lower is closer); pass mark ``OUTCOME_PASS``.
    ``OUTCOME_MEASURED`` holds what correct blocks, blocks that do nothing and each typical mistake score over
    seeds 0–3 (a few seconds each)."""
    from tests.test_loss import quoted_range

    score = outcome_score(impl.DiTBlock)
    if score <= OUTCOME_PASS:
        return
    raise Failure(
        f"a DiT of two of your DiTBlocks, trained by {OUTCOME_STEPS} steps on the latents of a VAE of the faces, "
        f"should sample latents that decode to faces with MS-SWD ≤ {OUTCOME_PASS:.0f} at 16 px (correct blocks "
        f"reach {quoted_range('correct', OUTCOME_MEASURED)}, blocks that return x unchanged "
        f"{quoted_range('untrained', OUTCOME_MEASURED)}); yours score {score:.1f}.",
        "a score like blocks that do nothing means your blocks never start learning: modulate as "
        "LN(x)·(1 + scale) + shift (without the 1, a scale that starts at 0 wipes out the features), and "
        "zero-initialise only the adaLN layer, not the attention and MLP weights (their gradient moves the gates)",
    )


# ------------------------------------------------------------------------------------------------ the module's own


def test_sincos_positions_are_unit_circles() -> None:
    """Each (sin, cos) pair has norm 1, so every token's embedding has squared norm D/2; rows and columns each move
    their own half."""
    pe = D.sincos_pos_embed_2d(16, 3, 5)
    assert pe.shape == (15, 16)
    torch.testing.assert_close(pe.pow(2).sum(1), torch.full((15,), 8.0))
    grid = pe.reshape(3, 5, 16)
    assert torch.allclose(grid[0, :, :8], grid[2, :, :8]) and torch.allclose(grid[:, 1, 8:], grid[:, 3, 8:])
    assert not torch.allclose(grid[0, :, 8:], grid[2, :, 8:])


def test_unpatchify_inverts_patchify_and_rejects_bad_shapes() -> None:
    x = torch.randn(2, 4, 8, 12, generator=gen(40))
    for p in (1, 2, 4):
        assert torch.equal(R.unpatchify(R.patchify(x, p), p, 8, 12), x)
    tokens = torch.randn(2, 6, 12, generator=gen(41))
    assert torch.equal(R.patchify(R.unpatchify(tokens, 2, 4, 6), 2), tokens)
    for bad in (lambda: R.patchify(x, 3), lambda: R.unpatchify(tokens, 2, 4, 4)):
        try:
            bad()
        except ValueError:
            continue
        raise AssertionError("a shape that does not fit must raise ValueError")


def test_fresh_dit_predicts_zero_and_learns() -> None:
    torch.manual_seed(0)
    model = R.DiT(in_channels=4, input_size=4, patch_size=2, dim=32, depth=2, num_heads=4)
    x = torch.randn(8, 4, 4, 4, generator=gen(42))
    assert torch.equal(model(x, torch.arange(8)), torch.zeros_like(x))
    assert torch.equal(model(x, 3), torch.zeros_like(x))
    schedule = R.NoiseSchedule.from_name("scaled_linear", 50)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.randn(64, 4, 4, 4, generator=gen(43)) * 0.1 + torch.linspace(-1, 1, 4).reshape(1, 4, 1, 1)
    g = gen(44)
    losses = [R.train_step(model, opt, data[torch.randint(0, 64, (32,), generator=g)], schedule, generator=g)
              for _ in range(60)]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert not torch.equal(model(x, torch.arange(8)), torch.zeros_like(x))


def test_learned_positions_start_at_sincos() -> None:
    model = R.DiT(in_channels=2, input_size=8, patch_size=2, dim=16, depth=1, num_heads=2, learned_pos=True)
    assert isinstance(model.pos_embed, nn.Parameter)
    torch.testing.assert_close(model.pos_embed.detach()[0], D.sincos_pos_embed_2d(16, 4, 4))
    fixed = R.DiT(in_channels=2, input_size=8, patch_size=2, dim=16, depth=1, num_heads=2)
    assert "pos_embed" not in dict(fixed.named_parameters())


def test_a_dit_builds_its_blocks_with_the_block_it_is_given() -> None:
    """``block`` makes every block; the DiT re-initialises their random linear layers (Xavier, biases 0) and leaves
    the zero-initialised ones (adaLN-Zero) at 0, whatever the block calls them."""
    made = []

    class Block(nn.Module):
        def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
            super().__init__()
            made.append((dim, num_heads, mlp_ratio))
            self.mix = nn.Linear(dim, dim)
            self.gates = nn.Linear(dim, dim)
            nn.init.zeros_(self.gates.weight)
            nn.init.zeros_(self.gates.bias)

        def forward(self, x: Tensor, c: Tensor) -> Tensor:
            return x + self.gates(c)[:, None] * self.mix(x)

    model = R.DiT(in_channels=2, input_size=4, patch_size=2, dim=16, depth=3, num_heads=2, mlp_ratio=2.0, block=Block)
    assert made == [(16, 2, 2.0)] * 3 and all(isinstance(b, Block) for b in model.blocks)
    for b in model.blocks:
        assert not b.gates.weight.any() and not b.gates.bias.any() and not b.mix.bias.any()
        assert float(b.mix.weight.abs().max()) <= (6 / 32) ** 0.5  # Xavier-uniform's bound for 16 → 16
    x = torch.randn(2, 2, 4, 4, generator=gen(45))
    assert torch.equal(model(x, torch.tensor([3, 7])), torch.zeros_like(x))
