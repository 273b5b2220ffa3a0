"""Classifier-free guidance (Ho & Salimans 2022): one network, conditional and unconditional, mixed at sampling time.

Training: a class-conditional noise predictor ε_θ(x_t, t, c) learns the unconditional ε_θ(x_t, t, ∅) as well,
because each label is replaced by the null label ∅ with probability ``p_uncond`` (:func:`drop_labels`). ∅ is the
index ``num_classes`` (one past the last class), as in :class:`~ddpm_ref.unet.LabelEmbedding`.

Sampling: the guided noise estimate

    ε̂(x_t, t, c) = ε_θ(x_t, t, ∅) + w · (ε_θ(x_t, t, c) − ε_θ(x_t, t, ∅))

replaces ε_θ in any sampler. **Convention of this course: w = 0 is the unconditional model, w = 1 the conditional
one, w > 1 guides** — ``guidance_scale`` in ``diffusers``. Ho & Salimans write eq. 6 as
ε̃ = (1 + w')·ε_θ(x_t, c) − w'·ε_θ(x_t, ∅), the same thing with w' = w − 1 (their w' = 0 is the conditional model);
their "w = 0.3" is our w = 1.3. For data whose distribution is known, :class:`LabelledGaussianMixtureOracle` gives
the exact conditional and unconditional ε, so a guided sampler can be proven with no training: w = 0 returns the
whole mixture, w = 1 each class's own distribution, and w > 1 pushes samples away from the other classes.

Shapes: x [B, C, H, W] (any [B, ...]), t LongTensor [B] (an int is broadcast), labels LongTensor [B] in
{0, …, num_classes} (num_classes = ∅). Imports only schedule, diffusion, samplers and oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .diffusion import ddpm_loss
from .oracle import GaussianMixtureOracle
from .samplers import sample
from .schedule import NoiseSchedule

__all__ = [
    "drop_labels",
    "guided_eps",
    "GuidedModel",
    "cfg_sample",
    "conditional_ddpm_loss",
    "cfg_train_step",
    "LabelledGaussianMixtureOracle",
    "null_label_of",
]


def null_label_of(model: nn.Module, null_label: int | None = None) -> int:
    """``null_label`` if given, else ``model.num_classes`` (the index of ∅ in a conditional UNet or oracle)."""
    if null_label is not None:
        return int(null_label)
    k = getattr(model, "num_classes", None)
    if k is None:
        raise ValueError("the model has no num_classes (is it conditional? UNet(..., num_classes=K)): "
                         "pass null_label= explicitly")
    return int(k)


def drop_labels(
    labels: Tensor, p_uncond: float, null_label: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Label dropout for classifier-free guidance (Ho & Salimans 2022, Algorithm 1): each label becomes ∅.

    labels LongTensor [B] → a new LongTensor [B]: ``null_label`` with probability ``p_uncond``, independently per
    sample (u ~ U[0, 1) from ``generator``, dropped where u < p_uncond), the label itself otherwise. The input
    is not modified.
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond is a probability in [0, 1], got {p_uncond}")
    gen_device = generator.device if generator is not None else labels.device
    u = torch.rand(labels.shape, generator=generator, device=gen_device).to(labels.device)
    return torch.where(u < p_uncond, torch.full_like(labels, null_label), labels)


def guided_eps(
    model: nn.Module,
    x_t: Tensor,
    t: Tensor | int,
    labels: Tensor,
    w: float,
    *,
    null_label: int | None = None,
) -> Tensor:
    """ε̂ = ε_θ(x_t, t, ∅) + w·(ε_θ(x_t, t, c) − ε_θ(x_t, t, ∅)) (Ho & Salimans 2022, eq. 6 with w = 1 + theirs).

    x_t [B, C, H, W], t int or LongTensor [B], labels LongTensor [B] → [B, C, H, W]. One forward pass on the
    batch doubled, ``model(cat[x_t, x_t], cat[t, t], cat[labels, ∅])``, gives both estimates. w = 0: unconditional;
    w = 1: conditional; w > 1: guided. ∅ is ``null_label``, by default ``model.num_classes``.
    """
    null = null_label_of(model, null_label)
    b = x_t.shape[0]
    labels = torch.as_tensor(labels, device=x_t.device)
    if labels.shape != (b,):
        raise ValueError(f"labels must be a LongTensor [B] = [{b}], one per image, got shape {tuple(labels.shape)}")
    t = torch.as_tensor(t, device=x_t.device)
    t = t.expand(b) if t.ndim == 0 else t
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, null)]))
    eps_cond, eps_uncond = eps.chunk(2)
    return eps_uncond + w * (eps_cond - eps_uncond)


class GuidedModel(nn.Module):
    """A noise predictor ε̂(x_t, t) = :func:`guided_eps` for fixed labels [B] and scale w, for any sampler.

    ``sample(GuidedModel(model, labels, 3.0), schedule, shape)`` or ``ddim_sample(GuidedModel(...), ...)``.
    """

    def __init__(self, model: nn.Module, labels: Tensor, w: float, *, null_label: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.labels = labels
        self.w = float(w)
        self.null_label = null_label_of(model, null_label)

    def forward(self, x: Tensor, t: Tensor | int) -> Tensor:
        return guided_eps(self.model, x, t, self.labels.to(x.device), self.w, null_label=self.null_label)


@torch.no_grad()
def cfg_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    labels: Tensor,
    w: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    null_label: int | None = None,
    clip_x0: bool = True,
    variance: str = "posterior",
    x_T: Tensor | None = None,
    progress: bool = True,
) -> Tensor:
    """Algorithm 2 of Ho et al. (2020) driven by the guided ε̂ (Ho & Salimans 2022, Algorithm 2); [B, C, H, W].

    ``shape`` [B, C, H, W] with B = len(labels); image i is guided towards class ``labels[i]`` with scale ``w``.
    The chain is :func:`~ddpm_ref.samplers.sample` with ε_θ replaced by ε̂: x_{T−1} ~ N(0, I) (or ``x_T``), then
    for t = T−1, …, 0 one :func:`~ddpm_ref.samplers.p_sample` step each (x̂0 from ε̂, clipped when ``clip_x0``).
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != shape[0]:
        raise ValueError(f"labels must be a LongTensor [B] with B = shape[0] = {shape[0]}, got shape "
                         f"{tuple(labels.shape)}")
    guided = GuidedModel(model, labels, w, null_label=null_label)
    return sample(guided, schedule, shape, generator=generator, device=device, progress=progress, clip_x0=clip_x0,
                  variance=variance, x_T=x_T)


def conditional_ddpm_loss(model: nn.Module, x0: Tensor, labels: Tensor, schedule: NoiseSchedule, *,
                          t: Tensor | None = None, noise: Tensor | None = None,
                          generator: torch.Generator | None = None) -> Tensor:
    """L_simple (Ho et al. eq. 14) of a conditional model: E ‖ε − ε_θ(√ᾱ_t·x0 + √(1−ᾱ_t)·ε, t, c)‖², a scalar.

    x0 [B, C, H, W], labels LongTensor [B] (already dropped to ∅ where wanted); t and ε as in
    :func:`~ddpm_ref.diffusion.ddpm_loss`, drawn from ``generator`` in the same order.
    """
    labels = torch.as_tensor(labels, device=x0.device)
    if labels.shape != (x0.shape[0],):
        raise ValueError(f"labels must be a LongTensor [B] = [{x0.shape[0]}], got shape {tuple(labels.shape)}")
    return ddpm_loss(lambda x_t, t_: model(x_t, t_, labels), x0, schedule, t=t, noise=noise, generator=generator)


def cfg_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x0: Tensor,
    labels: Tensor,
    schedule: NoiseSchedule,
    *,
    p_uncond: float = 0.1,
    generator: torch.Generator | None = None,
    grad_clip: float = 1.0,
) -> float:
    """One step of Algorithm 1 of Ho & Salimans (2022): drop labels to ∅ with probability ``p_uncond``, then a
    clipped optimizer step on :func:`conditional_ddpm_loss`; returns the loss. The null label is
    ``model.num_classes``."""
    optimizer.zero_grad(set_to_none=True)
    dropped = drop_labels(labels, p_uncond, null_label_of(model), generator=generator)
    loss = conditional_ddpm_loss(model, x0, dropped, schedule, generator=generator)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


class LabelledGaussianMixtureOracle(GaussianMixtureOracle):
    """Exact conditional and unconditional ε for labelled Gaussian-mixture data: ε*(x_t, t, c) and ε*(x_t, t, ∅).

    Data: component k, N(μ_k, s_k² I) with weight w_k, carries class ``classes[k]`` (default k). Then
    ε*(x_t, t, c) = E[ε | x_t, c] is the oracle of the mixture restricted to the components of class c, and
    ε*(x_t, t, ∅) that of the whole mixture (:class:`~ddpm_ref.oracle.GaussianMixtureOracle`).
    forward(x [B, ...], t LongTensor [B], labels LongTensor [B] in {0, …, num_classes} or None = ∅) → [B, ...].
    ``num_classes`` = max(classes) + 1 is the null label.
    """

    def __init__(self, schedule: NoiseSchedule, means: Tensor | Sequence[float], stds: Sequence[float] | Tensor,
                 weights: Sequence[float] | Tensor | None = None,
                 classes: Sequence[int] | Tensor | None = None) -> None:
        super().__init__(schedule, means, stds, weights)
        k = self.means.shape[0]
        classes = torch.arange(k) if classes is None else torch.as_tensor(classes, dtype=torch.long).reshape(-1)
        if classes.shape != (k,) or int(classes.min()) < 0:
            raise ValueError(f"classes must give one class index >= 0 per component ({k}), got {classes.tolist()}")
        self.num_classes = int(classes.max()) + 1
        missing = sorted(set(range(self.num_classes)) - set(classes.tolist()))
        if missing:
            raise ValueError(f"classes {missing} have no component: number the classes 0…K−1")
        self.register_buffer("classes", classes)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:  # type: ignore[override]
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        if labels is None:
            labels = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
        labels = torch.as_tensor(labels, device=x.device)
        if labels.shape != (b,) or int(labels.min()) < 0 or int(labels.max()) > self.num_classes:
            raise ValueError(f"labels must be a LongTensor [{b}] in 0…{self.num_classes} ({self.num_classes} = ∅)")
        logw = self.weights.to(x.device).log()[None].expand(b, -1)  # [B, K]
        keep = (self.classes.to(x.device)[None] == labels[:, None]) | (labels[:, None] == self.num_classes)
        return self.eps_given_log_weights(x, t, torch.where(keep, logw, torch.full_like(logw, -torch.inf)))
