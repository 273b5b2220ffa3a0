"""Lesson 3 checks: ``SinusoidalTimeEmbedding``, ``ResBlock``, ``SelfAttention`` and ``UNet``.

The blocks are checked by what any correct implementation must do (shapes, the closed-form time embedding,
use of the time embedding, per-sample independence, global and permutation-equivariant attention, gradients
everywhere); hidden checks compare with ``ddpm_ref`` using the same weights when the parameter names match.
Modules are built under a fixed seed without touching the caller's global RNG.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

import ddpm_ref as R
from tests._asserts import (
    expect_close,
    expect_tensor,
    fmt,
    load_reference_weights,
    nudge_parameters,
    on_student_side,
)
from tests.harness import CheckSkipped, Failure, check

BATCHNORM_HINT = (
    "a batch holds images at different noise levels, and BatchNorm normalises across them, so one sample "
    "changes another: use GroupNorm (nn.GroupNorm), which normalises each sample on its own"
)


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Run with torch's CPU RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- SinusoidalTimeEmbedding


def embedding_closed_form(t: list[float], dim: int, denom: float | None = None, sign: float = -1.0) -> Tensor:
    """[sin(t·f_0) … sin(t·f_{h−1}), cos(t·f_0) … cos(t·f_{h−1})], f_i = 10000^(−i/h), h = dim/2; float64."""
    half = dim // 2
    d = half if denom is None else denom
    freqs = [10000.0 ** (sign * i / d) for i in range(half)]
    rows = [[math.sin(x * f) for f in freqs] + [math.cos(x * f) for f in freqs] for x in t]
    return torch.tensor(rows, dtype=torch.float64)


def _check_embedding(impl, t: Tensor, dim: int) -> None:
    with seeded():
        module = impl.SinusoidalTimeEmbedding(dim)
    label = f"SinusoidalTimeEmbedding({dim})(t = {fmt(t, 6)})"
    out = expect_tensor(module(t), label, shape=[len(t), dim], dtype=torch.float32,
                        hint="concatenate the sines and the cosines along the last dim: [B, dim/2] + [B, dim/2]")
    tl = [float(v) for v in t.tolist()]
    expected = embedding_closed_form(tl, dim)
    half = dim // 2
    expect_close(out, expected, label, atol=1e-4, rtol=1e-4, diagnoses=[
        (lambda: embedding_closed_form(tl, dim, denom=half - 1),
         "this course uses f_i = 10000^(−i/h) with h = dim/2 (you divided by h − 1)"),
        (lambda: embedding_closed_form(tl, dim, denom=dim), "the exponent is −i/h with h = dim/2, not −i/dim"),
        (lambda: embedding_closed_form(tl, dim, sign=1.0),
         "the frequencies must decrease: f_i = 10000^(−i/h) = exp(−ln(10000)·i/h) (mind the minus sign)"),
        (lambda: torch.cat([expected[:, half:], expected[:, :half]], dim=1), "sines first: [sin(t·f), cos(t·f)]"),
        (lambda: torch.stack([expected[:, :half], expected[:, half:]], dim=2).reshape(len(tl), dim),
         "concatenate [sin …, cos …] (torch.cat), do not interleave them"),
    ], hint="emb(t) = [sin(t·f_0), …, sin(t·f_{h−1}), cos(t·f_0), …, cos(t·f_{h−1})], f_i = 10000^(−i/h), h = dim/2")


@check("SinusoidalTimeEmbedding")
def test_SinusoidalTimeEmbedding_values(impl) -> None:
    """emb(t) = [sin(t·f_i)…, cos(t·f_i)…], f_i = 10000^(−i/h), h = dim/2; [B] long → [B, dim] float32."""
    t = torch.tensor([0, 1, 7, 250, 399])
    _check_embedding(impl, t, 32)
    _check_embedding(impl, t, 128)


@check("SinusoidalTimeEmbedding", hidden=True)
def test_SinusoidalTimeEmbedding_float_timesteps(impl) -> None:
    """Float timesteps and a small dim (8) work the same way."""
    _check_embedding(impl, torch.tensor([0.5, 3.25, 1000.0]), 8)


# ---------------------------------------------------------------------------------------- shared properties


def _changed(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _batch_independence(run, make_inputs, label: str, module: nn.Module, hint: str) -> None:
    """Changing sample 1 of a batch of 3 must leave samples 0 and 2 unchanged, in eval and in train mode."""
    for mode in ("eval", "train"):
        module.train(mode == "train")
        inputs = make_inputs(0)
        other = make_inputs(1)
        changed = [x.clone() for x in inputs]
        for x, y in zip(changed, other, strict=True):
            x[1] = y[1]
        with torch.no_grad():
            a, b = run(*inputs), run(*changed)
        expect_tensor(a, label, shape=b.shape)
        drift = max(_changed(a[0], b[0]), _changed(a[2], b[2]))
        if drift > 1e-5:
            raise Failure(
                f"{label} in {mode} mode: changing sample 1 of the batch changed samples 0 and 2 by up to {drift:.3g}; "
                f"every sample must be processed on its own.",
                hint,
            )
    module.eval()


def _gradient_report(module: nn.Module, *inputs: Tensor) -> tuple[list[str], list[str]]:
    """One forward/backward pass: (parameters that got no gradient, parameters with a non-finite one)."""
    module(*inputs).float().square().mean().backward()
    missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    bad = [name for name, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    return missing, bad


def _every_parameter_gets_a_gradient(module: nn.Module, inputs: tuple[Tensor, ...], label: str) -> None:
    missing, bad = on_student_side(_gradient_report, module, *inputs)
    if missing:
        raise Failure(
            f"{label}: {len(missing)} parameter(s) get no gradient: {', '.join(missing[:6])}"
            f"{', …' if len(missing) > 6 else ''}.",
            "a layer created in __init__ is never used in forward",
        )
    if bad:
        raise AssertionError(f"{label}: NaN/inf gradients in {', '.join(bad[:6])}")


# ---------------------------------------------------------------------------------------- ResBlock


def _resblock(impl, cin: int, cout: int, emb_dim: int = 64) -> nn.Module:
    with seeded():
        return impl.ResBlock(cin, cout, emb_dim)


def _res_inputs(cin: int, emb_dim: int = 64, b: int = 3, hw: tuple[int, int] = (8, 8)):
    def make(seed: int) -> tuple[Tensor, Tensor]:
        return randn(b, cin, *hw, seed=seed), randn(b, emb_dim, seed=seed + 100)

    return make


@check("ResBlock")
def test_ResBlock_shapes(impl) -> None:
    """x [B, C_in, H, W], emb [B, E] → [B, C_out, H, W], for C_in ≠ C_out and C_in = C_out, square or not."""
    for cin, cout, hw in ((32, 64, (8, 8)), (64, 64, (8, 6))):
        block = _resblock(impl, cin, cout).eval()
        x, emb = _res_inputs(cin, hw=hw)(0)
        with torch.no_grad():
            out = block(x, emb)
        expect_tensor(out, f"ResBlock({cin}, {cout}, 64)(x [3, {cin}, {hw[0]}, {hw[1]}], emb [3, 64])",
                      shape=[3, cout, *hw], dtype=torch.float32,
                      hint="3×3 convs need padding=1; the residual needs a 1×1 conv when C_in ≠ C_out")


@check("ResBlock")
def test_ResBlock_uses_time_embedding(impl) -> None:
    """The output depends on emb (AdaGN scale and shift), for every sample (weights nudged off any zero init)."""
    block = _resblock(impl, 32, 64)
    nudge_parameters(block)
    block.eval()
    x, emb = _res_inputs(32)(0)
    emb2 = randn(*emb.shape, seed=7)
    with torch.no_grad():
        a, b = block(x, emb), block(x, emb2)
    per_sample = (a.double() - b.double()).abs().flatten(1).amax(1)
    if bool((per_sample < 1e-4).any()):
        raise Failure(
            f"ResBlock ignores the time embedding: changing emb changed the output by only {fmt(per_sample)} "
            "per sample.",
            "project emb with a Linear (E → 2·C_out) after SiLU and use it as scale and shift "
            "on the second GroupNorm's output: h = GN(h)·(1 + scale) + shift",
        )


def _inputs_of_norms(block: nn.Module, x: Tensor, emb: Tensor, channels: int) -> list[Tensor]:
    """The input of every nn.GroupNorm over ``channels`` channels in ``block`` during one forward pass."""
    return on_student_side(_record_norm_inputs, block, x, emb, channels)


def _record_norm_inputs(block: nn.Module, x: Tensor, emb: Tensor, channels: int) -> list[Tensor]:
    seen: list[Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
             for m in block.modules() if isinstance(m, nn.GroupNorm) and m.num_channels == channels]
    try:
        with torch.no_grad():
            block(x, emb)
    finally:
        for h in hooks:
            h.remove()
    return seen


@check("ResBlock")
def test_ResBlock_adagn_after_norm(impl) -> None:
    """AdaGN: the time embedding's scale and shift act on the second GroupNorm's *output*, not on its input.

    The input of the GroupNorm over C_out channels (and of the one over C_in) must not depend on emb: scale
    and shift applied before a normalisation are largely undone by it, and applied to the block's input
    they are mixed by the first convolution instead of modulating the normalised features.
    """
    block = _resblock(impl, 32, 64)
    nudge_parameters(block)
    block.eval()
    x, emb = _res_inputs(32)(0)
    emb2 = randn(*emb.shape, seed=7)
    first_a, first_b = _inputs_of_norms(block, x, emb, 32), _inputs_of_norms(block, x, emb2, 32)
    second_a, second_b = _inputs_of_norms(block, x, emb, 64), _inputs_of_norms(block, x, emb2, 64)
    if not second_a:
        raise CheckSkipped("no nn.GroupNorm over C_out channels found, so where AdaGN acts cannot be checked")
    formula = "h = GN(h)·(1 + scale) + shift, with GN = the second GroupNorm"
    if any(not torch.equal(a, b) for a, b in zip(first_a, first_b, strict=True)):
        raise AssertionError(
            "ResBlock applies the time embedding to the block's input: the input of the first GroupNorm changes with "
            f"emb. AdaGN modulates the normalised features inside the block: {formula}")
    if any(not torch.equal(a, b) for a, b in zip(second_a, second_b, strict=True)):
        raise AssertionError(
            "ResBlock applies the time embedding's scale and shift before the second GroupNorm, which largely "
            f"normalises them away: the GroupNorm's input changes with emb. Apply them to its output: {formula}")


@check("ResBlock")
def test_ResBlock_batch_independence(impl) -> None:
    """Changing one sample never changes another, in eval and in train mode (rejects BatchNorm)."""
    block = _resblock(impl, 32, 64)
    _batch_independence(block, _res_inputs(32), "ResBlock(32, 64, 64)", block, BATCHNORM_HINT)


@check("ResBlock")
def test_ResBlock_gradients(impl) -> None:
    """Every parameter receives a gradient."""
    block = _resblock(impl, 32, 64).train()
    x, emb = _res_inputs(32)(0)
    _every_parameter_gets_a_gradient(block, (x, emb), "ResBlock(32, 64, 64)")


@check("ResBlock", hidden=True)
def test_ResBlock_matches_reference_math(impl) -> None:
    """With the reference's weights, the output equals ddpm_ref.ResBlock's (skipped if parameter names differ)."""
    for cin, cout in ((32, 64), (64, 64)):
        block, ref = _resblock(impl, cin, cout), _resblock(R, cin, cout)
        nudge_parameters(ref, seed=3)
        load_reference_weights(block, ref, "ResBlock")
        block.eval(), ref.eval()
        x, emb = _res_inputs(cin)(0)
        with torch.no_grad():
            out, expected = block(x, emb), ref(x, emb)
        expect_close(out, expected, f"ResBlock({cin}, {cout}, 64) with the reference's weights", atol=1e-4, rtol=1e-4,
                     hint="h = conv1(SiLU(GN(x))); h = conv2(SiLU(GN(h)·(1 + scale) + shift)); out = h + skip(x)")


# ---------------------------------------------------------------------------------------- SelfAttention


def _attention(impl, channels: int = 64, num_heads: int | None = None) -> nn.Module:
    with seeded():
        if num_heads is None:
            return impl.SelfAttention(channels)
        return impl.SelfAttention(channels, num_heads)


@check("SelfAttention")
def test_SelfAttention_shape(impl) -> None:
    """[B, C, H, W] → [B, C, H, W] (also for H ≠ W)."""
    attn = _attention(impl).eval()
    for hw in ((6, 6), (4, 7)):
        x = randn(2, 64, *hw, seed=0)
        with torch.no_grad():
            out = attn(x)
        expect_tensor(out, f"SelfAttention(64)(x [2, 64, {hw[0]}, {hw[1]}])", shape=x.shape, dtype=torch.float32,
                      hint="reshape the attention output back to [B, C, H, W] before the output projection")


@check("SelfAttention")
def test_SelfAttention_global_mixing(impl) -> None:
    """Every output position sees every input position: changing pixel (0, 0) changes the output at (5, 5)."""
    attn = _attention(impl).eval()
    x = randn(2, 64, 6, 6, seed=1)
    x2 = x.clone()
    x2[:, :, 0, 0] += 3.0
    with torch.no_grad():
        a, b = attn(x), attn(x2)
    if _changed(a, x) < 1e-6:
        raise Failure("SelfAttention returns its input unchanged.", "out = x + proj(attention(x))")
    if _changed(a[:, :, 5, 5], b[:, :, 5, 5]) < 1e-6:
        raise Failure(
            "SelfAttention is local: changing the input at pixel (0, 0) did not change the output at (5, 5).",
            "attend over all H·W positions: q, k, v of shape [B, H·W, C], softmax(q·kᵀ/√d) over the keys",
        )


@check("SelfAttention")
def test_SelfAttention_permutation_equivariance(impl) -> None:
    """Shuffling the H·W positions of the input shuffles the output the same way (no position mixes with a channel)."""
    attn = _attention(impl).eval()
    x = randn(2, 64, 6, 6, seed=2)
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = attn(x).reshape(2, 64, 36)[:, :, perm]
        b = attn(x.reshape(2, 64, 36)[:, :, perm].reshape(2, 64, 6, 6)).reshape(2, 64, 36)
    expect_close(b, a, "SelfAttention(shuffled positions) vs shuffled SelfAttention(x)", atol=1e-4, rtol=1e-4,
                 hint=("channels and positions got mixed: go from [B, C, H, W] to [B, C, H·W] (reshape), then to "
                       "[B, H·W, C] with .transpose(1, 2); a plain .reshape(B, H·W, C) scrambles them"))


@check("SelfAttention")
def test_SelfAttention_batch_independence(impl) -> None:
    """Changing one sample never changes another, in eval and in train mode."""
    attn = _attention(impl)

    def make(seed: int) -> tuple[Tensor]:
        return (randn(3, 64, 4, 4, seed=seed),)

    _batch_independence(attn, make, "SelfAttention(64)", attn,
                        "attend within each sample: the softmax runs over the H·W positions of one image; "
                        "keep B as a batch dimension in every reshape (and normalise with GroupNorm)")


@check("SelfAttention", hidden=True)
def test_SelfAttention_matches_reference_math(impl) -> None:
    """With the reference's weights, 1 and 4 heads give ddpm_ref.SelfAttention's output (skipped if names differ)."""
    for heads in (1, 4):
        attn, ref = _attention(impl, 64, heads), _attention(R, 64, heads)
        nudge_parameters(ref, seed=4)
        load_reference_weights(attn, ref, "SelfAttention")
        attn.eval(), ref.eval()
        x = randn(2, 64, 5, 5, seed=3)
        with torch.no_grad():
            out, expected = attn(x), ref(x)
        expect_close(out, expected, f"SelfAttention(64, num_heads={heads}) with the reference's weights",
                     atol=1e-4, rtol=1e-4, hint=(
                         "scale the scores by 1/√d (d = C/heads), softmax over the keys (last dim), "
                         "and add the residual: x + proj(out)"))


# ---------------------------------------------------------------------------------------- UNet

TINY = {"in_channels": 1, "channels": (32, 64)}  # the CPU model of the course: 24×24 grey faces


def _unet(impl, **kwargs) -> nn.Module:
    with seeded():
        return impl.UNet(**kwargs)


def _unet_inputs(b: int = 3, c: int = 1, hw: int = 24):
    def make(seed: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(b, c, hw, hw, generator=g), torch.randint(0, 400, (b,), generator=g)

    return make


@check("UNet")
def test_UNet_output_shape(impl) -> None:
    """ε_θ(x, t) has x's shape: tiny 1-channel config at 24×24, and a 3-channel config at 16×16."""
    for kwargs, c, hw in ((TINY, 1, 24), ({"channels": (32, 64)}, 3, 16)):
        model = _unet(impl, **kwargs).eval()
        x, t = _unet_inputs(2, c, hw)(0)
        with torch.no_grad():
            out = model(x, t)
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        expect_tensor(out, f"UNet({args})(x [2, {c}, {hw}, {hw}], t [2])", shape=x.shape, dtype=torch.float32,
                      hint=("the decoder mirrors the encoder: one upsample per downsample, concatenating the skip of "
                            "the same resolution, and a final 3×3 conv back to in_channels"))


@check("UNet")
def test_UNet_depends_on_t(impl) -> None:
    """Same x, different t → different noise predictions (weights nudged off any zero init)."""
    model = _unet(impl, **TINY)
    nudge_parameters(model)
    model.eval()
    x, _ = _unet_inputs(2)(0)
    with torch.no_grad():
        a = model(x, torch.tensor([0, 0]))
        b = model(x, torch.tensor([399, 399]))
    if _changed(a, b) < 1e-4:
        raise Failure(
            f"UNet ignores t: t = 0 and t = 399 gave outputs that differ by {_changed(a, b):.2g}.",
            "embed t (sinusoidal embedding → Linear → SiLU → Linear) and pass the embedding to every ResBlock",
        )


@check("UNet")
def test_UNet_batch_independence(impl) -> None:
    """Changing one sample (x and t) never changes another, in eval and in train mode (rejects BatchNorm)."""
    model = _unet(impl, **TINY)
    _batch_independence(model, _unet_inputs(3), "UNet(in_channels=1, channels=(32, 64))", model, BATCHNORM_HINT)


@check("UNet")
def test_UNet_gradients(impl) -> None:
    """Every parameter receives a gradient from one forward/backward pass."""
    model = _unet(impl, **TINY).train()
    x, t = _unet_inputs(2)(0)
    _every_parameter_gets_a_gradient(model, (x, t), "UNet(in_channels=1, channels=(32, 64))")


def _record_bottleneck(model: nn.Module, x: Tensor, t: Tensor) -> tuple[list[list[int]], Tensor] | None:
    """The input shapes ``model.mid_attn`` saw in one forward pass and the output; None without a ``mid_attn``."""
    attn = getattr(model, "mid_attn", None)
    if not isinstance(attn, nn.Module):
        return None
    seen: list[list[int]] = []
    handle = attn.register_forward_hook(lambda m, args, out: seen.append(list(args[0].shape)))
    try:
        with torch.no_grad():
            out = model(x, t)
    finally:
        handle.remove()
    return seen, out


def _bottleneck_size(model: nn.Module, x: Tensor, t: Tensor, label: str) -> tuple[list[int], Tensor]:
    recorded = on_student_side(_record_bottleneck, model, x, t)
    if recorded is None:
        raise AssertionError(f"{label} has no module `mid_attn`: name the bottleneck self-attention self.mid_attn")
    seen, out = recorded
    if not seen:
        raise Failure(f"{label}: self.mid_attn is never called.", "h = mid2(mid_attn(mid1(h, emb)), emb)")
    return seen[0], out


@check("UNet")
def test_UNet_bottleneck_attention(impl) -> None:
    """mid_attn runs once, at the bottleneck: 24×24 input, 2 levels → [B, 64, 6, 6]."""
    model = _unet(impl, **TINY).eval()
    x, t = _unet_inputs(2)(0)
    shape, _ = _bottleneck_size(model, x, t, "UNet(in_channels=1, channels=(32, 64))")
    if shape != [2, 64, 6, 6]:
        raise Failure(
            f"mid_attn should see the bottleneck [2, 64, 6, 6] (24 / 2² after two downsamples, 64 channels), "
            f"got {shape}.",
            "downsample once per level, then mid1 → mid_attn → mid2",
        )


@check("UNet")
def test_UNet_bf16_autocast(impl) -> None:
    """The model runs under torch.autocast(cpu, bfloat16) (mixed precision) and gives finite output."""
    model = _unet(impl, **TINY).eval()
    x, t = _unet_inputs(2)(0)
    out = on_student_side(_under_bf16_autocast, model, x, t)
    expect_tensor(out, "UNet output under bf16 autocast", shape=x.shape, hint=(
        "under autocast, layers may return bfloat16: do not create float32/float64 tensors by hand in forward, "
        "cast with .to(h.dtype) where two dtypes meet"))


@check("UNet", hidden=True)
def test_UNet_seed_config_shapes(impl) -> None:
    """The seed model UNet() keeps 3×32×32, 3×64×64 and 3×256×256 shapes; at 256 attention runs at 32×32, 256 ch."""
    model = _unet(impl).eval()
    for hw in (32, 64):
        x, t = _unet_inputs(1, 3, hw)(0)
        with torch.no_grad():
            out = model(x, t)
        expect_tensor(out, f"UNet()(x [1, 3, {hw}, {hw}])", shape=x.shape, dtype=torch.float32)
    x, t = _unet_inputs(1, 3, 256)(0)
    shape, out = _bottleneck_size(model, x, t, "UNet()")
    expect_tensor(out, "UNet()(x [1, 3, 256, 256])", shape=x.shape, dtype=torch.float32)
    if shape != [1, 256, 32, 32]:
        raise AssertionError(
            f"the seed model's bottleneck attention should run on [1, 256, 32, 32] (256 / 2³), got {shape}"
        )


def _under_bf16_autocast(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x, t)


# ---------------------------------------------------------------------------------------- reference facts


def test_seed_unet_parameter_count() -> None:
    """The seed model UNet() has exactly 13,027,651 parameters; the course's tiny CPU model has 860,001."""
    assert sum(p.numel() for p in R.UNet().parameters()) == 13_027_651
    assert sum(p.numel() for p in R.UNet(**TINY).parameters()) == 860_001
