"""Lesson 11 checks, the first stage: ``reparameterize``, ``kl_divergence`` and ``latent_scale_factor`` (the VAE of
latent diffusion; ``ddpm_ref.vae``).

Conventions: q(z | x) = N(μ, diag(exp(logvar))); z = μ + exp(½·logvar)·ε with ε ~ N(0, I) from the generator;
KL(q ‖ N(0, I)) = ½·Σ(μ² + exp(logvar) − 1 − logvar) summed over a sample's entries and averaged over the batch
(Kingma & Welling 2014, appendix B); the scale factor is 1/std(z) over every entry (Rombach et al. 2022).

The oracles are analytic: the KL against ``torch.distributions.kl_divergence`` of the same Gaussians (an independent
implementation) and its gradient in closed form; the reparameterisation's draws against the formula with the same
generator, their moments against μ and σ (tolerances about four standard errors), and its gradient in closed form
(∂z/∂μ = 1, ∂z/∂logvar = ½·(z − μ)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import ddpm_ref as R
from ddpm_ref import vae as V
from tests._asserts import expect_close, expect_tensor, fmt, on_student_side
from tests._fixtures import gen
from tests.harness import Failure, check

# ------------------------------------------------------------------------------------------------ reparameterize


def _posterior(seed: int = 0, shape: tuple[int, ...] = (4, 2, 3, 3)) -> tuple[Tensor, Tensor]:
    g = gen(seed)
    return torch.randn(shape, generator=g), 1.5 * torch.randn(shape, generator=g) - 0.5


REPARAM_HINT = "z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)"


@check("reparameterize")
def test_reparameterize_formula(impl) -> None:
    """z = μ + exp(½·logvar)·ε with ε = torch.randn(μ.shape, generator=g): the exact values for a fixed generator."""
    mean, logvar = _posterior(0)
    z = expect_tensor(impl.reparameterize(mean, logvar, gen(7)), "reparameterize(mean [4, 2, 3, 3], logvar, g)",
                      shape=mean.shape, dtype=torch.float32)
    eps = torch.randn(mean.shape, generator=gen(7))
    m, lv, e = mean.double(), logvar.double(), eps.double()
    expect_close(z, m + (0.5 * lv).exp() * e, "reparameterize(mean, logvar, generator)", atol=1e-5, rtol=1e-5,
                 diagnoses=[
                     (m + lv.exp() * e, "exp(logvar) is the variance σ²; scale ε by the standard deviation "
                                        "σ = exp(½·logvar)"),
                     (m + lv * e, "logvar is log σ², not σ: scale ε by exp(½·logvar)"),
                     (m + (0.5 * lv) * e, "logvar is log σ²: σ = exp(½·logvar), take the exponential"),
                     (m - (0.5 * lv).exp() * e, "z = μ + σ·ε, with a plus"),
                     ((0.5 * lv).exp() * e, "add the mean: z = μ + σ·ε"),
                     (m + (-0.5 * lv).exp() * e, "σ = exp(+½·logvar): a larger log-variance spreads z more"),
                 ], hint=REPARAM_HINT)


@check("reparameterize")
def test_reparameterize_moments(impl) -> None:
    """20000 draws of N(μ, σ²) with μ = (0.5, −1), σ = (0.5, 2): sample means and stds within about four standard
    errors of μ and σ."""
    n = 20000
    mu, sigma = torch.tensor([0.5, -1.0]), torch.tensor([0.5, 2.0])
    mean, logvar = mu.expand(n, 2).clone(), (2 * sigma.log()).expand(n, 2).clone()
    z = expect_tensor(impl.reparameterize(mean, logvar, gen(8)), f"reparameterize(mean [{n}, 2], logvar, g)",
                      shape=[n, 2])
    m, sd = z.double().mean(0), z.double().std(0)
    se = sigma.double() / math.sqrt(n)
    if bool(((m - mu.double()).abs() > 4 * se).any()) or bool(((sd - sigma.double()).abs() > 4 * se).any()):
        if bool(((sd - sigma.double() ** 2).abs() < 0.03).all()):
            hint = "your draws have std σ² = exp(logvar): scale ε by σ = exp(½·logvar)"
        elif bool((sd < 1e-6).all()):
            hint = "your draws do not vary: add σ·ε with ε ~ N(0, I)"
        else:
            hint = REPARAM_HINT
        raise Failure(f"{n} draws of reparameterize(μ = {fmt(mu)}, logvar = log σ², σ = {fmt(sigma)}): expected "
                      f"means {fmt(mu)} and stds {fmt(sigma)} (± {fmt(4 * se)}), got means {fmt(m)} and stds "
                      f"{fmt(sd)}.", hint)


def _reparam_grads(fn, mean: Tensor, logvar: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor, bool]:
    """(z, ∂Σz/∂μ, ∂Σz/∂logvar, whether z carried a graph) with ``fn`` run where the student's code lives."""
    mean, logvar = mean.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
    z = fn(mean, logvar, torch.Generator().manual_seed(seed))
    if not (isinstance(z, torch.Tensor) and z.requires_grad):
        return torch.zeros(0), torch.zeros(0), torch.zeros(0), False
    z.sum().backward()
    zero = torch.zeros_like(mean)
    gm = mean.grad if mean.grad is not None else zero
    gl = logvar.grad if logvar.grad is not None else zero
    return z.detach(), gm.detach(), gl.detach(), True


@check("reparameterize")
def test_reparameterize_gradients(impl) -> None:
    """The point of the trick: gradients reach μ and logvar, ∂z/∂μ = 1 and ∂z/∂logvar = ½·σ·ε = ½·(z − μ)."""
    mean, logvar = _posterior(1, (3, 5))
    z, gm, gl, graph = on_student_side(_reparam_grads, impl.reparameterize, mean, logvar, 9)
    if not graph:
        raise Failure("reparameterize(mean, logvar) with mean and logvar requiring grad returned no graph: no "
                      "gradient can reach the encoder.",
                      "compute z from mean and logvar with torch operations (no .detach(), no torch.no_grad(), no "
                      "sampling from a torch.distributions object with .sample())")
    expect_close(gm, torch.ones_like(mean), "∂Σz/∂mean", atol=1e-6, rtol=0,
                 hint="z = mean + σ·ε: the mean enters with weight 1")
    expect_close(gl, 0.5 * (z.double() - mean.double()), "∂Σz/∂logvar", atol=1e-5, rtol=1e-5,
                 diagnoses=[(torch.zeros_like(gl), "logvar gets no gradient: compute σ from logvar inside "
                                                   "reparameterize, σ = exp(½·logvar), not from a detached copy")],
                 hint="∂z/∂logvar = ½·σ·ε: σ = torch.exp(0.5 * logvar) keeps logvar in the graph")


# ------------------------------------------------------------------------------------------------ kl_divergence


def _kl_oracle(mean: Tensor, logvar: Tensor) -> Tensor:
    """torch.distributions' KL of N(μ, σ²) against N(0, 1) per entry, summed per sample, averaged over the batch."""
    from torch.distributions import Normal, kl_divergence

    m, lv = mean.double(), logvar.double()
    per_entry = kl_divergence(Normal(m, (0.5 * lv).exp()), Normal(torch.zeros_like(m), torch.ones_like(m)))
    return per_entry.flatten(1).sum(1).mean()


def _kl_diagnoses(mean: Tensor, logvar: Tensor) -> list:
    m, lv = mean.double(), logvar.double()
    entry = m**2 + lv.exp() - 1 - lv
    return [
        (0.5 * entry.mean(), "sum the KL over a sample's latent entries (then average over the batch), do not "
                             "average over the entries"),
        (0.5 * entry.sum(), "average the per-sample KL over the batch, do not sum over it"),
        (entry.flatten(1).sum(1).mean(), "the closed form has a factor ½: ½·Σ(μ² + σ² − 1 − log σ²)"),
        (0.5 * (m**2 + lv - 1 - lv.exp()).flatten(1).sum(1).mean(),
         "σ² = exp(logvar) and log σ² = logvar: you swapped them"),
        (0.5 * (m**2 + (0.5 * lv).exp() - 1 - lv).flatten(1).sum(1).mean(),
         "the variance σ² is exp(logvar), not exp(½·logvar)"),
        (-0.5 * entry.flatten(1).sum(1).mean(), "the KL is ≥ 0: ½·Σ(μ² + σ² − 1 − log σ²), mind the sign"),
        (0.5 * (m**2 + lv.exp() - lv).flatten(1).sum(1).mean(), "the closed form subtracts 1 per entry"),
    ]


KL_HINT = "0.5 * (mean**2 + logvar.exp() - 1 - logvar), summed over all dims but the batch, then .mean() over it"


@check("kl_divergence")
def test_kl_divergence_matches_torch_distributions(impl) -> None:
    """KL(N(μ, diag σ²) ‖ N(0, I)) for latents [4, 2, 3, 3] against torch.distributions.kl_divergence, summed per
    sample and averaged over the batch."""
    mean, logvar = _posterior(2)
    out = expect_tensor(impl.kl_divergence(mean, logvar), "kl_divergence(mean [4, 2, 3, 3], logvar)", shape=[])
    expect_close(out, _kl_oracle(mean, logvar), "kl_divergence", atol=1e-4, rtol=1e-5,
                 diagnoses=_kl_diagnoses(mean, logvar), hint=KL_HINT)


@check("kl_divergence")
def test_kl_divergence_analytic_values(impl) -> None:
    """0 for the prior itself (μ = 0, logvar = 0); ½·n·a² for μ = a, σ = 1 over n entries; ½·n·(e^v − 1 − v) for
    μ = 0, logvar = v; flat latents [B, D] as well as [B, C, H, W]."""
    cases = [
        (torch.zeros(3, 8), torch.zeros(3, 8), 0.0, "μ = 0, logvar = 0 (the prior itself)"),
        (torch.full((2, 1, 2, 3), 0.7), torch.zeros(2, 1, 2, 3), 0.5 * 6 * 0.49, "μ = 0.7, σ = 1 over 6 entries"),
        (torch.zeros(5, 4), torch.full((5, 4), -1.0), 0.5 * 4 * (math.exp(-1) - 1 + 1), "μ = 0, logvar = −1 over 4"),
    ]
    for mean, logvar, want, label in cases:
        out = impl.kl_divergence(mean, logvar)
        out = expect_tensor(out, f"kl_divergence(mean {list(mean.shape)}, logvar) with {label}", shape=[])
        expect_close(out, torch.tensor(want, dtype=torch.float64), f"kl_divergence with {label}", atol=1e-5,
                     rtol=1e-5, diagnoses=_kl_diagnoses(mean, logvar), hint=KL_HINT)


def _kl_grads(fn, mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor, bool]:
    mean, logvar = mean.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
    out = fn(mean, logvar)
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        return torch.zeros(0), torch.zeros(0), False
    out.backward()
    zero = torch.zeros_like(mean)
    return ((mean.grad if mean.grad is not None else zero).detach(),
            (logvar.grad if logvar.grad is not None else zero).detach(), True)


@check("kl_divergence")
def test_kl_divergence_gradients(impl) -> None:
    """The KL pulls the encoder towards the prior: ∂KL/∂μ = μ/B and ∂KL/∂logvar = ½·(exp(logvar) − 1)/B."""
    mean, logvar = _posterior(3, (4, 6))
    gm, gl, graph = on_student_side(_kl_grads, impl.kl_divergence, mean, logvar)
    if not graph:
        raise Failure("kl_divergence returned no graph: the KL term could not train the encoder.",
                      "compute it with torch operations on mean and logvar (no .item(), .detach() or numpy)")
    b = mean.shape[0]
    expect_close(gm, mean.double() / b, "∂KL/∂mean", atol=1e-6, rtol=1e-5, hint="∂KL/∂μ = μ/B")
    expect_close(gl, 0.5 * (logvar.double().exp() - 1) / b, "∂KL/∂logvar", atol=1e-6, rtol=1e-5,
                 hint="∂KL/∂logvar = ½·(exp(logvar) − 1)/B")


# ------------------------------------------------------------------------------------------------ latent_scale_factor


def _scale_of(impl, z: Tensor, label: str) -> float:
    out = impl.latent_scale_factor(z)
    if isinstance(out, Tensor):
        if out.numel() != 1:
            raise Failure(f"latent_scale_factor({label}) should be one number, got a tensor of shape "
                          f"{list(out.shape)}.", "one factor for every entry: 1 / latents.std() over all of them, "
                                                 "not per channel")
        out = out.detach().reshape(())
    try:
        return float(out)
    except (TypeError, ValueError):
        raise Failure(f"latent_scale_factor({label}) should return a number, got {type(out).__name__}.",
                      "return 1.0 / float(latents.std())") from None


SCALE_HINT = "s = 1 / latents.std(): the standard deviation of every entry together"


@check("latent_scale_factor")
def test_latent_scale_factor_is_one_over_std(impl) -> None:
    """Latents [64, 4, 4, 4] of mean 0.8 and per-channel stds 1.5, 3, 4.5, 6: s = 1/std over every entry (the
    channels together, the mean subtracted)."""
    g = gen(11)
    z = 0.8 + torch.randn(64, 4, 4, 4, generator=g) * torch.tensor([1.5, 3.0, 4.5, 6.0]).reshape(1, 4, 1, 1)
    s = _scale_of(impl, z, "latents [64, 4, 4, 4]")
    want = 1 / float(z.double().std())
    zd = z.double()
    wrong = [
        (float(zd.std()), "the factor is the reciprocal 1/std, which scales the latents to unit variance"),
        (1 / float(zd.var()), "divide by the standard deviation, not by the variance"),
        (1 / float(zd.pow(2).mean().sqrt()), "use the standard deviation (mean subtracted), not the root mean square"),
        (1 / float(zd.abs().max()), "use the standard deviation, not the largest magnitude"),
        (float(1 / zd.std(dim=(0, 2, 3)).mean()), "one factor for all entries: the std of every entry together"),
        (1 / float(zd.abs().mean()), "use the standard deviation, not the mean magnitude"),
    ]
    if abs(s - want) <= 1e-3 * want:
        return
    for value, hint in wrong:
        if abs(s - value) <= 1e-3 * abs(value):
            raise Failure(f"latent_scale_factor(latents [64, 4, 4, 4]): expected 1/std = {want:.6g}, got {s:.6g}.",
                          hint)
    raise AssertionError(f"latent_scale_factor(latents [64, 4, 4, 4]): expected 1/std = {want:.6g}, got {s:.6g}. "
                         f"Hint: {SCALE_HINT}")


@check("latent_scale_factor")
def test_latent_scale_factor_gives_unit_variance(impl) -> None:
    """z·s has std 1 for flat latents [500, 16] of any scale; s(k·z) = s(z)/k; latents that carry a graph are
    accepted."""
    z = torch.randn(500, 16, generator=gen(12)) * 0.05 + 0.3
    for k in (1.0, 20.0):
        s = _scale_of(impl, k * z, f"{k:g}·latents [500, 16]")
        got = float((k * z.double() * s).std())
        if abs(got - 1) > 1e-3:
            raise Failure(f"latents [500, 16] of std {float(k * z.std()):.4g} times latent_scale_factor "
                          f"({s:.6g}) should have std 1, got {got:.6g}.", SCALE_HINT)
    z = z.clone().requires_grad_(True)
    s = _scale_of(impl, z, "latents [500, 16] that require grad")
    expect_close(torch.tensor(s), torch.tensor(1 / float(z.detach().double().std())),
                 "latent_scale_factor of latents that require grad", atol=0, rtol=1e-3, hint=SCALE_HINT)


# ------------------------------------------------------------------------------------------------ the module's own


def test_vae_loss_is_reconstruction_plus_beta_kl() -> None:
    x, recon = torch.randn(3, 1, 8, 8, generator=gen(13)), torch.randn(3, 1, 8, 8, generator=gen(14))
    mean, logvar = _posterior(4, (3, 4, 2, 2))
    sse = ((recon - x) ** 2).flatten(1).sum(1).mean()
    for beta in (0.0, 0.01, 1.0):
        torch.testing.assert_close(V.vae_loss(recon, x, mean, logvar, beta=beta),
                                   sse + beta * R.kl_divergence(mean, logvar))


def test_kl_divergence_is_the_elbo_gap_by_monte_carlo() -> None:
    """E_q[log q(z) − log p(z)] by 200000 draws of reparameterize equals the closed form (within 4 standard errors)."""
    from torch.distributions import Normal

    mean, logvar = _posterior(5, (1, 3))
    z = R.reparameterize(mean.expand(200000, 3), logvar.expand(200000, 3), gen(15)).double()
    q = Normal(mean.double(), (0.5 * logvar.double()).exp())
    terms = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(1)
    assert abs(float(terms.mean()) - float(R.kl_divergence(mean, logvar))) < 4 * float(terms.std()) / math.sqrt(2e5)


def test_conv_vae_shapes_and_sampling() -> None:
    torch.manual_seed(0)
    vae = R.ConvVAE(1, 4, (16, 32))
    x = torch.randn(2, 1, 16, 16)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 4, 4)
    assert vae.decode(mean).shape == x.shape
    recon_a, m_a, _ = vae(x, gen(0))
    recon_b, m_b, _ = vae(x, gen(0))
    torch.testing.assert_close(recon_a, recon_b)
    torch.testing.assert_close(m_a, mean)
    assert not torch.equal(vae(x, gen(1))[0], recon_a)


def test_train_vae_lowers_the_loss_and_latents_scale_to_unit_std() -> None:
    torch.manual_seed(0)
    faces = R.lfw_faces("train", size=16)
    vae = R.ConvVAE(1, 4, (8, 16))
    losses = V.train_vae(vae, faces, steps=40, batch_size=16, generator=gen(0))
    assert not vae.training
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    z = V.encode_latents(vae, faces)
    assert abs(float((z * R.latent_scale_factor(z)).std()) - 1) < 1e-5
