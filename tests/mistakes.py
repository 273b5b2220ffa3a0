"""Typical student mistakes, one wrong definition each, and the checks that must catch them.

Record format (:class:`Mistake`), kept deliberately plain so that other tools can reuse it:

``name``
    a short identifier, unique, e.g. ``"q_sample_missing_sqrt"``.
``exercise``
    the exercise (registry key and definition name) the mistake belongs to, e.g. ``"q_sample"``.
``breaks``
    the checks that must fail, by the names ``run_checks`` reports (the check function's name without
    ``test_``; ``hidden_checks(m)`` tells which of them are hidden). Every other check of the exercise passes.
``description``
    one line saying what is wrong.
``source``
    the full source of ONE replacement definition (a ``def`` or ``class`` with exactly the exercise's name, and
    the imports it needs), as a student would write it. It runs in a notebook's usual namespace: ``math``,
    ``np``, ``torch``, ``nn``, ``F`` and the ``ddpm_ref`` pieces the lessons import (``from ddpm_ref import ...``
    lines are included where needed). Appending it after the exercise's solution cell replaces the solution.
``feedback``
    a phrase that must appear in at least one failing check's message: the grader names the mistake.

``CHEATS`` are submissions that try to score without the student's own work: the reference under the exercise's
name (imported, aliased, wrapped at any depth, subclassed, built inside), or the grader switched off (the runner
rebound or patched, the assertion helpers replaced). Same record format, but ``source`` is any cell text appended
after the exercise's solution, and ``breaks`` is every check of the exercise: a cheat loses all of its points.

``ALTERNATIVES`` lists correct definitions written differently from ``ddpm_ref`` (other code paths, float32
arithmetic, other attribute names): every check of their exercise must pass. ``tests/test_mistakes.py``
proves both lists against the registered checks.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass

__all__ = ["ALTERNATIVES", "CHEATS", "MISTAKES", "Alternative", "Mistake", "by_name", "hidden_checks",
           "riding_variants"]


@dataclass(frozen=True)
class Mistake:
    name: str
    exercise: str
    breaks: tuple[str, ...]
    description: str
    source: str
    feedback: str
    #: cheats only: the phrase the notebook's own check cell shows on a student's machine (no judge there), or
    #: None for a cheat that is graded only through the judge (it ends or hooks the process that runs it)
    local_feedback: str | None = ""


@dataclass(frozen=True)
class Alternative:
    name: str
    exercise: str
    description: str
    source: str


def _src(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


def _edit(source: str, old: str, new: str) -> str:
    """``source`` with ``old`` replaced by ``new`` (exactly once: a typo in a mistake must not go unnoticed)."""
    if source.count(old) != 1:
        raise ValueError(f"expected exactly one {old!r} in the template")
    return source.replace(old, new)


# ------------------------------------------------------------------------------------------------ templates
# Correct student-style definitions; most mistakes are one edit of one of them.

NOISE_SCHEDULE = _src('''
    class NoiseSchedule:
        def __init__(self, betas):
            betas = torch.as_tensor(betas, dtype=torch.float64)
            self.betas = betas
            self.alphas = 1.0 - betas
            self.alpha_bars = torch.cumprod(self.alphas, dim=0)
            self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
            self.sqrt_alpha_bars = self.alpha_bars.sqrt()
            self.sqrt_one_minus_alpha_bars = (1.0 - self.alpha_bars).sqrt()
            self.posterior_variance = betas * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)
            self.posterior_mean_coef_x0 = betas * self.alpha_bars_prev.sqrt() / (1.0 - self.alpha_bars)
            self.posterior_mean_coef_xt = (1.0 - self.alpha_bars_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bars)

        @property
        def T(self):
            return self.betas.shape[0]

        def gather(self, values, t, x):
            if isinstance(t, int):
                t = torch.full((x.shape[0],), t, dtype=torch.long)
            out = values.to(x.device)[t.to(x.device)].to(x.dtype)
            return out.reshape(t.shape[0], *([1] * (x.ndim - 1)))
''')

Q_POSTERIOR = _src('''
    def q_posterior(x0, x_t, t, schedule):
        c0 = schedule.gather(schedule.posterior_mean_coef_x0, t, x_t)
        ct = schedule.gather(schedule.posterior_mean_coef_xt, t, x_t)
        return c0 * x0 + ct * x_t, schedule.gather(schedule.posterior_variance, t, x_t)
''')

DDPM_LOSS = _src('''
    from ddpm_ref import q_sample


    def ddpm_loss(model, x0, schedule, *, t=None, noise=None, generator=None):
        if t is None:
            t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator)
        x_t = q_sample(x0, t, noise, schedule)
        return F.mse_loss(model(x_t, t), noise)
''')

TIME_EMBEDDING = _src('''
    class SinusoidalTimeEmbedding(nn.Module):
        def __init__(self, dim, max_period=10000.0):
            super().__init__()
            half = dim // 2
            self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half),
                                 persistent=False)

        def forward(self, t):
            args = t.float()[:, None] * self.freqs[None, :]
            return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
''')

RESBLOCK = _src('''
    class ResBlock(nn.Module):
        def __init__(self, in_ch, out_ch, emb_dim, *, groups=32, dropout=0.0):
            super().__init__()
            self.norm1 = nn.GroupNorm(math.gcd(groups, in_ch), in_ch)
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
            self.norm2 = nn.GroupNorm(math.gcd(groups, out_ch), out_ch)
            self.dropout = nn.Dropout(dropout)
            self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
            self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

        def forward(self, x, emb):
            h = self.conv1(F.silu(self.norm1(x)))
            scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
            h = self.conv2(self.dropout(F.silu(h)))
            return h + self.skip(x)
''')

UNET = _src('''
    from ddpm_ref import ResBlock, SelfAttention, SinusoidalTimeEmbedding
    from ddpm_ref.unet import Downsample, Upsample, group_norm


    class UNet(nn.Module):
        def __init__(self, in_channels=3, out_channels=None, channels=(64, 128, 256), num_res_blocks=2,
                     attention=True, num_heads=1, time_emb_dim=None, groups=32, dropout=0.0):
            super().__init__()
            out_channels = out_channels or in_channels
            self.in_channels, self.channels = in_channels, tuple(channels)
            base = channels[0]
            emb_dim = time_emb_dim or 4 * base
            self.time_embed = nn.Sequential(SinusoidalTimeEmbedding(base), nn.Linear(base, emb_dim), nn.SiLU(),
                                            nn.Linear(emb_dim, emb_dim))
            self.stem = nn.Conv2d(in_channels, base, 3, padding=1)
            self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
            ch = base
            for width in channels:
                self.down_blocks.append(nn.ModuleList(
                    [ResBlock(ch if j == 0 else width, width, emb_dim, groups=groups, dropout=dropout)
                     for j in range(num_res_blocks)]))
                self.downsamples.append(Downsample(width))
                ch = width
            self.mid1 = ResBlock(ch, ch, emb_dim, groups=groups, dropout=dropout)
            self.mid_attn = SelfAttention(ch, num_heads, groups=groups) if attention else nn.Identity()
            self.mid2 = ResBlock(ch, ch, emb_dim, groups=groups, dropout=dropout)
            self.upsamples, self.up_blocks = nn.ModuleList(), nn.ModuleList()
            for width in reversed(channels):
                self.upsamples.append(Upsample(ch))
                self.up_blocks.append(nn.ModuleList(
                    [ResBlock(ch + width if j == 0 else width, width, emb_dim, groups=groups, dropout=dropout)
                     for j in range(num_res_blocks)]))
                ch = width
            self.out = nn.Sequential(group_norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

        def forward(self, x, t):
            emb = self.time_embed(t)
            h = self.stem(x)
            skips = []
            for blocks, down in zip(self.down_blocks, self.downsamples):
                for block in blocks:
                    h = block(h, emb)
                skips.append(h)
                h = down(h)
            h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
            for up, blocks in zip(self.upsamples, self.up_blocks):
                h = torch.cat([up(h), skips.pop()], dim=1)
                for block in blocks:
                    h = block(h, emb)
            return self.out(h)
''')

TRAIN_STEP = _src('''
    from ddpm_ref import ddpm_loss


    def train_step(model, optimizer, x0, schedule, *, generator=None, grad_clip=1.0):
        optimizer.zero_grad()
        loss = ddpm_loss(model, x0, schedule, generator=generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return loss.item()
''')

P_SAMPLE = _src('''
    from ddpm_ref import predict_x0, q_posterior


    @torch.no_grad()
    def p_sample(model, x_t, t, schedule, *, generator=None, clip_x0=True, variance="posterior", noise=None):
        if isinstance(t, int):
            t = torch.full((x_t.shape[0],), t, dtype=torch.long)
        eps = model(x_t, t)
        x0 = predict_x0(x_t, t, eps, schedule)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        mean, var = q_posterior(x0, x_t, t, schedule)
        if variance == "beta":
            var = schedule.gather(schedule.betas, t, x_t)
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator)
        nonzero = (t > 0).float().reshape(-1, 1, 1, 1)
        return mean + nonzero * var.sqrt() * noise
''')

SAMPLE = _src('''
    from ddpm_ref import p_sample


    @torch.no_grad()
    def sample(model, schedule, shape, *, generator=None, device=None, progress=True, clip_x0=True,
               variance="posterior", x_T=None, **kwargs):
        x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T
        for t in reversed(range(schedule.T)):
            x = p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, variance=variance)
        return x
''')

RECONSTRUCT = _src('''
    from ddpm_ref import p_sample, q_sample


    @torch.no_grad()
    def reconstruct(model, x0, t_start, schedule, *, generator=None, noise=None, clip_x0=True, variance="posterior",
                    progress=False, return_noised=False):
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator)
        x_t = q_sample(x0, t_start, noise, schedule)
        x = x_t
        for t in range(t_start, -1, -1):
            x = p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, variance=variance)
        return (x, x_t) if return_noised else x
''')

DDIM_STEP = _src('''
    from ddpm_ref import predict_eps, predict_x0


    @torch.no_grad()
    def ddim_step(model, x_t, t, t_prev, schedule, *, eta=0.0, clip_x0=True, generator=None, noise=None):
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long)
        eps = model(x_t, t_batch)
        x0 = predict_x0(x_t, t_batch, eps, schedule)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = predict_eps(x_t, t_batch, x0, schedule)
        alpha_bars = schedule.alpha_bars.tolist()
        ab_t = alpha_bars[t]
        ab_prev = alpha_bars[t_prev] if t_prev >= 0 else 1.0
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator)
            x_prev = x_prev + sigma * noise
        return x_prev
''')

DDIM_SAMPLE = _src('''
    from ddpm_ref import ddim_step, ddim_timesteps


    @torch.no_grad()
    def ddim_sample(model, schedule, shape, *, steps=50, eta=0.0, spacing="trailing", generator=None, device=None,
                    clip_x0=True, x_T=None, progress=True, **kwargs):
        x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T
        ts = ddim_timesteps(schedule.T, steps, spacing)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = ddim_step(model, x, t, t_prev, schedule, eta=eta, clip_x0=clip_x0, generator=generator)
        return x
''')

SELF_ATTENTION = _src('''
    class SelfAttention(nn.Module):
        def __init__(self, channels, num_heads=1, *, groups=32):
            super().__init__()
            self.num_heads = num_heads
            self.norm = nn.GroupNorm(math.gcd(groups, channels), channels)
            self.qkv = nn.Conv2d(channels, 3 * channels, 1)
            self.proj = nn.Conv2d(channels, channels, 1)

        def forward(self, x):
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)  # each [B, C, H, W]
            q = q.reshape(b, c, h * w).transpose(1, 2)  # [B, HW, C]
            k = k.reshape(b, c, h * w).transpose(1, 2)
            v = v.reshape(b, c, h * w).transpose(1, 2)
            attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)  # [B, HW, HW]
            out = (attn @ v).transpose(1, 2).reshape(b, c, h, w)
            return x + self.proj(out)
''')

# ------------------------------------------------------------------------------------------------ lesson 9 templates
# flow matching: data at t = 0, noise at t = 1, velocity ε − x0, network time 1000·t (ddpm_ref.flow.TIME_SCALE)

FLOW_LOSS = _src('''
    from ddpm_ref.flow import TIME_SCALE


    def flow_matching_loss(model, x0, *, t=None, noise=None, generator=None):
        if t is None:
            t = torch.rand(x0.shape[0], generator=generator)
        t = torch.as_tensor(t, dtype=torch.float32).expand(x0.shape[0])
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator)
        tt = t.view(-1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * noise
        target = noise - x0
        return F.mse_loss(model(x_t, TIME_SCALE * t), target)
''')

EULER_SAMPLE = _src('''
    from ddpm_ref.flow import TIME_SCALE


    @torch.no_grad()
    def euler_sample(model, shape, *, steps=50, generator=None, device=None, x1=None, progress=True):
        x = torch.randn(tuple(shape), generator=generator) if x1 is None else x1.clone()
        for i in range(steps):
            t, t_next = 1 - i / steps, 1 - (i + 1) / steps
            v = model(x, torch.full((x.shape[0],), TIME_SCALE * t))
            x = x + (t_next - t) * v
        return x
''')

HEUN_SAMPLE = _src('''
    from ddpm_ref.flow import TIME_SCALE


    @torch.no_grad()
    def heun_sample(model, shape, *, steps=25, generator=None, device=None, x1=None, progress=True):
        x = torch.randn(tuple(shape), generator=generator) if x1 is None else x1.clone()
        for i in range(steps):
            t, t_next = 1 - i / steps, 1 - (i + 1) / steps
            h = t_next - t
            v = model(x, torch.full((x.shape[0],), TIME_SCALE * t))
            x_pred = x + h * v
            v_next = model(x_pred, torch.full((x.shape[0],), TIME_SCALE * t_next))
            x = x + h * (v + v_next) / 2
        return x
''')

# ------------------------------------------------------------------------------------------------ mistakes

MISTAKES: list[Mistake] = [
    # lesson 1
    Mistake(
        "linear_schedule_divides_by_T", "linear_beta_schedule",
        ("linear_beta_schedule_values", "linear_beta_schedule_other_arguments"),
        "steps by (end − start)/T, so the last β falls short of beta_end",
        _src('''
            def linear_beta_schedule(T, beta_start=1e-4, beta_end=2e-2):
                step = (beta_end - beta_start) / T
                return beta_start + step * torch.arange(T, dtype=torch.float64)
        '''),
        "not /T",
    ),
    Mistake(
        "linear_schedule_float32", "linear_beta_schedule",
        ("linear_beta_schedule_values", "linear_beta_schedule_other_arguments"),
        "returns a float32 schedule (the tables are float64 by contract)",
        _src('''
            def linear_beta_schedule(T, beta_start=1e-4, beta_end=2e-2):
                return torch.linspace(beta_start, beta_end, T)
        '''),
        "dtype=torch.float64",
    ),
    Mistake(
        "cosine_schedule_not_clipped", "cosine_beta_schedule",
        ("cosine_beta_schedule_values", "cosine_beta_schedule_other_arguments",
         "cosine_beta_schedule_falsy_arguments"),
        "forgets to clip β at max_beta, so the last β is 1",
        _src('''
            def cosine_beta_schedule(T, s=0.008, max_beta=0.999):
                steps = torch.arange(T + 1, dtype=torch.float64) / T
                f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
                return 1 - f[1:] / f[:-1]
        '''),
        "clip β at max_beta",
    ),
    Mistake(
        "cumsum_instead_of_cumprod", "NoiseSchedule",
        ("NoiseSchedule_alphas_and_alpha_bars", "NoiseSchedule_posterior_variance",
         "NoiseSchedule_posterior_mean_coefs", "NoiseSchedule_consistent_with_marginals",
         "NoiseSchedule_small_inputs"),
        "ᾱ computed with torch.cumsum instead of torch.cumprod",
        _edit(NOISE_SCHEDULE, "torch.cumprod(self.alphas, dim=0)", "torch.cumsum(self.alphas, dim=0)"),
        "torch.cumprod, not torch.cumsum",
    ),
    Mistake(
        "alpha_bars_prev_starts_at_zero", "NoiseSchedule",
        ("NoiseSchedule_alphas_and_alpha_bars", "NoiseSchedule_posterior_variance",
         "NoiseSchedule_posterior_mean_coefs", "NoiseSchedule_consistent_with_marginals",
         "NoiseSchedule_small_inputs"),
        "ᾱ_{−1} set to 0 instead of 1 (the empty product)",
        _edit(NOISE_SCHEDULE, "torch.ones(1, dtype=torch.float64)", "torch.zeros(1, dtype=torch.float64)"),
        "empty product",
    ),
    Mistake(
        "posterior_variance_is_beta", "NoiseSchedule",
        ("NoiseSchedule_posterior_variance", "NoiseSchedule_consistent_with_marginals", "NoiseSchedule_small_inputs"),
        "uses β_t as the posterior variance instead of β̃_t",
        _edit(NOISE_SCHEDULE,
              "self.posterior_variance = betas * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)",
              "self.posterior_variance = betas"),
        "the posterior variance is β̃_t",
    ),
    Mistake(
        "gather_without_reshape", "NoiseSchedule",
        ("NoiseSchedule_gather", "NoiseSchedule_small_inputs"),
        "gather returns values[t] as [B] instead of [B, 1, 1, 1]",
        _edit(NOISE_SCHEDULE, "return out.reshape(t.shape[0], *([1] * (x.ndim - 1)))", "return out"),
        ".reshape(B, 1, 1, 1)",
    ),
    # lesson 2
    Mistake(
        "q_sample_alpha_instead_of_alpha_bar", "q_sample",
        ("q_sample_values", "q_sample_general", "q_sample_edge_timesteps"),
        "uses α_t (one step) instead of the cumulative ᾱ_t",
        _src('''
            def q_sample(x0, t, noise, schedule):
                a = schedule.gather(schedule.alphas, t, x0)
                return a.sqrt() * x0 + (1 - a).sqrt() * noise
        '''),
        "cumulative ᾱ_t",
    ),
    Mistake(
        "q_sample_missing_sqrt", "q_sample",
        ("q_sample_values", "q_sample_t0_is_almost_x0", "q_sample_general", "q_sample_edge_timesteps"),
        "multiplies by ᾱ_t and 1 − ᾱ_t instead of their square roots",
        _src('''
            def q_sample(x0, t, noise, schedule):
                ab = schedule.gather(schedule.alpha_bars, t, x0)
                return ab * x0 + (1 - ab) * noise
        '''),
        "take square roots",
    ),
    Mistake(
        "q_sample_t_off_by_one", "q_sample",
        ("q_sample_values", "q_sample_t0_is_almost_x0", "q_sample_general", "q_sample_edge_timesteps"),
        "indexes alpha_bars[t − 1] (the paper's 1-based t), so t = 0 wraps round to ᾱ_{T−1}",
        _src('''
            def q_sample(x0, t, noise, schedule):
                ab = schedule.alpha_bars[t - 1].float().reshape(-1, 1, 1, 1)
                return ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        '''),
        "off by one",
    ),
    Mistake(
        "predict_x0_inverted", "predict_x0",
        ("predict_x0_values", "predict_x0_inverts_q_sample", "predict_x0_int_t_and_one_image"),
        "multiplies by √ᾱ_t instead of dividing when solving eq. 4 for x0",
        _src('''
            def predict_x0(x_t, t, eps, schedule):
                ab = schedule.gather(schedule.alpha_bars, t, x_t)
                return (x_t - (1 - ab).sqrt() * eps) * ab.sqrt()
        '''),
        "inverted",
    ),
    Mistake(
        "q_posterior_swapped_coefficients", "q_posterior",
        ("q_posterior_mean", "q_posterior_consistent_with_marginals", "q_posterior_int_t_and_one_image"),
        "multiplies x0 by the coefficient of x_t and vice versa",
        _edit(Q_POSTERIOR, "return c0 * x0 + ct * x_t,", "return ct * x0 + c0 * x_t,"),
        "swapped",
    ),
    Mistake(
        "q_posterior_variance_beta", "q_posterior",
        ("q_posterior_variance", "q_posterior_consistent_with_marginals", "q_posterior_int_t_and_one_image"),
        "returns β_t as the posterior variance instead of β̃_t",
        _edit(Q_POSTERIOR, "schedule.posterior_variance", "schedule.betas"),
        "that is β_t",
    ),
    # lesson 3
    Mistake(
        "embedding_frequencies_over_dim", "SinusoidalTimeEmbedding",
        ("SinusoidalTimeEmbedding_values", "SinusoidalTimeEmbedding_float_timesteps",
         "SinusoidalTimeEmbedding_options_and_edges"),
        "frequencies 10000^(−i/dim) instead of 10000^(−i/h) with h = dim/2",
        _edit(TIME_EMBEDDING, "torch.arange(half) / half)", "torch.arange(half) / dim)"),
        "not −i/dim",
    ),
    Mistake(
        "resblock_batchnorm", "ResBlock",
        ("ResBlock_batch_independence",),
        "BatchNorm instead of GroupNorm: one sample's statistics change another's output",
        _edit(_edit(RESBLOCK, "nn.GroupNorm(math.gcd(groups, in_ch), in_ch)", "nn.BatchNorm2d(in_ch)"),
              "nn.GroupNorm(math.gcd(groups, out_ch), out_ch)", "nn.BatchNorm2d(out_ch)"),
        "BatchNorm",
    ),
    Mistake(
        "resblock_ignores_time", "ResBlock",
        ("ResBlock_uses_time_embedding", "ResBlock_gradients", "ResBlock_matches_reference_math",
         "ResBlock_honours_groups_and_dropout"),
        "creates the time projection but never applies it in forward",
        _edit(_edit(RESBLOCK, "        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)\n",
                    ""), "h = self.norm2(h) * (1 + scale) + shift", "h = self.norm2(h)"),
        "ignores the time embedding",
    ),
    Mistake(
        "resblock_adagn_before_norm", "ResBlock",
        ("ResBlock_adagn_after_norm", "ResBlock_matches_reference_math", "ResBlock_honours_groups_and_dropout"),
        "applies the time embedding's scale and shift before the second GroupNorm, which normalises them away",
        _edit(RESBLOCK, "h = self.norm2(h) * (1 + scale) + shift", "h = self.norm2(h * (1 + scale) + shift)"),
        "before the second GroupNorm",
    ),
    Mistake(
        "resblock_adagn_on_input", "ResBlock",
        ("ResBlock_adagn_after_norm", "ResBlock_uses_time_embedding"),
        "applies the time embedding's scale and shift to the block's input instead of the normalised features",
        _edit(_edit(_edit(RESBLOCK, "self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)",
                          "self.emb_proj = nn.Linear(emb_dim, 2 * in_ch)"),
                    "        h = self.conv1(F.silu(self.norm1(x)))\n"
                    "        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)\n",
                    "        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)\n"
                    "        h = self.conv1(F.silu(self.norm1(x * (1 + scale) + shift)))\n"),
              "h = self.norm2(h) * (1 + scale) + shift", "h = self.norm2(h)"),
        "the block's input",
    ),
    Mistake(
        "attention_scrambled_reshape", "SelfAttention",
        ("SelfAttention_permutation_equivariance", "SelfAttention_matches_reference_math"),
        "reshapes [B, C, H, W] straight to [B, H·W, C], mixing channels with positions",
        _edit(_edit(_edit(_edit(SELF_ATTENTION,
                                "q = q.reshape(b, c, h * w).transpose(1, 2)", "q = q.reshape(b, h * w, c)"),
                          "k = k.reshape(b, c, h * w).transpose(1, 2)", "k = k.reshape(b, h * w, c)"),
                    "v = v.reshape(b, c, h * w).transpose(1, 2)", "v = v.reshape(b, h * w, c)"),
              "out = (attn @ v).transpose(1, 2).reshape(b, c, h, w)", "out = (attn @ v).reshape(b, c, h, w)"),
        "scrambles them",
    ),
    Mistake(
        "unet_skips_attention", "UNet",
        ("UNet_gradients", "UNet_bottleneck_attention", "UNet_seed_config_shapes"),
        "builds the bottleneck attention but never calls it",
        _edit(UNET, "h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)", "h = self.mid2(self.mid1(h, emb), emb)"),
        "mid_attn",
    ),
    # lesson 4
    Mistake(
        "loss_on_x0", "ddpm_loss",
        ("ddpm_loss_value", "ddpm_loss_default_sampling", "ddpm_loss_int_t_and_given_noise"),
        "compares the model's output with x0 instead of the noise ε",
        _edit(DDPM_LOSS, "F.mse_loss(model(x_t, t), noise)", "F.mse_loss(model(x_t, t), x0)"),
        "not with x0",
    ),
    Mistake(
        "loss_t_one_based", "ddpm_loss",
        ("ddpm_loss_default_sampling", "ddpm_loss_reaches_both_ends", "ddpm_loss_uses_only_its_generator"),
        "draws t from {1, …, T} (the paper's 1-based range) instead of {0, …, T−1}",
        _edit(DDPM_LOSS, "torch.randint(0, schedule.T,", "torch.randint(1, schedule.T + 1,"),
        "0-based",
    ),
    Mistake(
        "train_step_no_zero_grad", "train_step",
        ("train_step_updates_parameters", "train_step_trains_a_model"),
        "never clears the gradients, so every step adds the previous steps' gradients",
        _edit(TRAIN_STEP, "    optimizer.zero_grad()\n", ""),
        "zero_grad",
    ),
    Mistake(
        "train_step_no_clipping", "train_step",
        ("train_step_clips_gradients", "train_step_trains_a_model"),
        "ignores grad_clip: the gradient norm is never clipped",
        _edit(TRAIN_STEP, "    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)\n", ""),
        "clip_grad_norm_",
    ),
    Mistake(
        "train_step_clips_after_step", "train_step",
        ("train_step_clips_gradients", "train_step_trains_a_model"),
        "clips the gradient after optimizer.step(), so every step uses the raw gradient",
        _edit(TRAIN_STEP, "    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)\n    optimizer.step()\n",
              "    optimizer.step()\n    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)\n"),
        "before step()",
    ),
    Mistake(
        "train_step_loss_on_x0", "train_step",
        ("train_step_returns_loss", "train_step_updates_parameters", "train_step_clips_gradients",
         "train_step_trains_a_model"),
        "writes the loss inline and regresses the model's output on x0 instead of the noise ε",
        _src('''
        def train_step(model, optimizer, x0, schedule, *, generator=None, grad_clip=1.0):
            optimizer.zero_grad()
            t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            x_t = q_sample(x0, t, noise, schedule)
            loss = F.mse_loss(model(x_t, t), x0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            return loss.item()
    '''),
        "not x0",
    ),
    Mistake(
        "train_step_t_continuous", "train_step",
        ("train_step_trains_a_model",),
        "draws t in [0, 1) as continuous-time models do and casts it to an index: every t is 0",
        _src('''
        def train_step(model, optimizer, x0, schedule, *, generator=None, grad_clip=1.0):
            optimizer.zero_grad()
            t = torch.rand(x0.shape[0], generator=generator).long()
            loss = ddpm_loss(model, x0, schedule, t=t, generator=generator)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            return loss.item()
    '''),
        "{0, …, T−1}",
    ),
    # lesson 5
    Mistake(
        "p_sample_noise_at_t0", "p_sample",
        ("p_sample_no_noise_at_t0", "p_sample_variance_beta", "p_sample_int_t_and_one_image"),
        "adds σ_t·z at t = 0 too (the last step should return the mean)",
        _edit(P_SAMPLE,
              "    nonzero = (t > 0).float().reshape(-1, 1, 1, 1)\n    return mean + nonzero * var.sqrt() * noise",
              "    return mean + var.sqrt() * noise"),
        "noise was added at t = 0",
    ),
    Mistake(
        "p_sample_never_clips", "p_sample",
        ("p_sample_step", "p_sample_no_noise_at_t0", "p_sample_clip_x0", "p_sample_variance_beta"),
        "ignores clip_x0: x̂0 is never clipped to [−1, 1] (Algorithm 2 as printed)",
        _edit(P_SAMPLE, "    if clip_x0:\n        x0 = x0.clamp(-1, 1)\n", ""),
        "clip x̂0",
    ),
    Mistake(
        "sample_wrong_direction", "sample",
        ("sample_visits_every_t_in_order", "sample_gaussian_data", "sample_draws_faces_from_a_trained_model",
         "sample_point_mass", "sample_two_point_mixture", "sample_honours_its_options"),
        "runs the reverse loop from t = 0 up to T − 1",
        _edit(SAMPLE, "for t in reversed(range(schedule.T)):", "for t in range(schedule.T):"),
        "wrong direction",
    ),
    Mistake(
        "sample_stops_before_t0", "sample",
        ("sample_visits_every_t_in_order", "sample_point_mass", "sample_two_point_mixture",
         "sample_honours_its_options"),
        "the loop stops at t = 1, so the final denoising step is missing",
        _edit(SAMPLE, "for t in reversed(range(schedule.T)):", "for t in range(schedule.T - 1, 0, -1):"),
        "stops before t = 0",
    ),
    # lesson 6
    Mistake(
        "reconstruct_from_T", "reconstruct",
        ("reconstruct_starts_at_t_start", "reconstruct_keeps_the_image", "reconstruct_return_noised",
         "reconstruct_edge_t_start"),
        "noises x0 to T − 1 and denoises from T − 1, ignoring t_start (that is plain generation)",
        _edit(_edit(RECONSTRUCT, "for t in range(t_start, -1, -1):", "for t in range(schedule.T - 1, -1, -1):"),
              "x_t = q_sample(x0, t_start, noise, schedule)", "x_t = q_sample(x0, schedule.T - 1, noise, schedule)"),
        "start the reverse steps at t_start",
    ),
    Mistake(
        "psnr_without_range_mapping", "psnr",
        ("psnr_known_noise", "psnr_batch_mean", "psnr_channels_differ"),
        "scores [−1, 1] images with data_range=1 without mapping them to [0, 1] (6.02 dB too low)",
        _src('''
            from skimage.metrics import peak_signal_noise_ratio


            def psnr(x, y):
                a, b = x.double().numpy(), y.double().numpy()
                return float(np.mean([peak_signal_noise_ratio(a[i], b[i], data_range=1.0) for i in range(len(a))]))
        '''),
        "6.02 dB too low",
    ),
    Mistake(
        "psnr_pooled_over_the_batch", "psnr",
        ("psnr_batch_mean",),
        "one PSNR from the MSE of the whole batch instead of the mean of per-image PSNRs",
        _src('''
            def psnr(x, y):
                mse = (((x.double() + 1) / 2 - (y.double() + 1) / 2) ** 2).mean()
                return float(10 * torch.log10(1 / mse))
        '''),
        "pooled",
    ),
    Mistake(
        "ssim_without_range_mapping", "ssim",
        ("ssim_matches_skimage", "ssim_channels_differ"),
        "scores [−1, 1] images with data_range=1 without mapping them to [0, 1]",
        _src('''
            from skimage.metrics import structural_similarity


            def ssim(x, y):
                a, b = x.double().numpy(), y.double().numpy()
                return float(np.mean([structural_similarity(a[i], b[i], data_range=1.0, channel_axis=0)
                                      for i in range(len(a))]))
        '''),
        "map them to [0, 1]",
    ),
    # lesson 7
    Mistake(
        "ddim_wrong_alpha_bar_prev_at_last_step", "ddim_step",
        ("ddim_step_last_step_returns_x0",),
        "reads alpha_bars[t_prev] also for t_prev = −1, which is ᾱ_{T−1} instead of 1",
        _edit(DDIM_STEP, "ab_prev = alpha_bars[t_prev] if t_prev >= 0 else 1.0", "ab_prev = alpha_bars[t_prev]"),
        "Python's last element",
    ),
    Mistake(
        "ddim_keeps_unclipped_eps", "ddim_step",
        ("ddim_step_clip_recomputes_eps",),
        "clips x̂0 but keeps the model's ε, so x̂0 and ε̂ disagree",
        _edit(DDIM_STEP, "        eps = predict_eps(x_t, t_batch, x0, schedule)\n", ""),
        "recompute",
    ),
    Mistake(
        "ddim_sample_ends_at_t0", "ddim_sample",
        ("ddim_sample_deterministic_chain", "ddim_sample_point_mass", "ddim_sample_two_point_mixture",
         "ddim_sample_honours_its_options"),
        "steps from the last timestep to t = 0 instead of t_prev = −1 (ᾱ = 1): the output keeps a little noise",
        _edit(DDIM_SAMPLE, "t_prev = ts[i + 1] if i + 1 < len(ts) else -1",
              "t_prev = ts[i + 1] if i + 1 < len(ts) else 0"),
        "not to t = 0",
    ),
    # ---------------------------------------------------------------- lesson 9 (flow matching)
    Mistake(
        "flow_target_sign_flipped", "flow_matching_loss",
        ("flow_matching_loss_value", "flow_matching_loss_minimised_by_the_exact_velocity",
         "flow_matching_loss_t_zero_and_one_image"),
        "regresses x0 − ε: the velocity points from the noise to the data, against d x_t/dt",
        _edit(FLOW_LOSS, "target = noise - x0", "target = x0 - noise"),
        "the target has the wrong sign",
    ),
    Mistake(
        "flow_path_endpoints_swapped", "flow_matching_loss",
        ("flow_matching_loss_value", "flow_matching_loss_calls_the_model_on_the_path",
         "flow_matching_loss_minimised_by_the_exact_velocity", "flow_matching_loss_t_zero_and_one_image"),
        "x_t = t·x0 + (1 − t)·ε: the data sit at t = 1 and the noise at t = 0",
        _edit(FLOW_LOSS, "x_t = (1 - tt) * x0 + tt * noise", "x_t = tt * x0 + (1 - tt) * noise"),
        "the path endpoints are swapped",
    ),
    Mistake(
        "flow_loss_time_unscaled", "flow_matching_loss",
        ("flow_matching_loss_value", "flow_matching_loss_calls_the_model_on_the_path",
         "flow_matching_loss_draws_t_and_noise", "flow_matching_loss_minimised_by_the_exact_velocity",
         "flow_matching_loss_t_zero_and_one_image"),
        "trains the network on the time t ∈ [0, 1] while the samplers feed 1000·t",
        _edit(FLOW_LOSS, "model(x_t, TIME_SCALE * t)", "model(x_t, t)"),
        "not t itself",
    ),
    Mistake(
        "flow_euler_wrong_time_direction", "euler_sample",
        ("euler_sample_calls_the_model_on_the_time_grid", "euler_sample_steps", "euler_sample_returns_the_data",
         "euler_sample_few_steps_match_the_exact_recursion", "euler_sample_two_point_mixture",
         "euler_sample_generator_and_one_step"),
        "integrates from t = 0 up to t = 1, starting the noise at the data end",
        _edit(EULER_SAMPLE, "t, t_next = 1 - i / steps, 1 - (i + 1) / steps", "t, t_next = i / steps, (i + 1) / steps"),
        "wrong time direction",
    ),
    Mistake(
        "flow_euler_step_sign_flipped", "euler_sample",
        ("euler_sample_steps", "euler_sample_returns_the_data", "euler_sample_few_steps_match_the_exact_recursion",
         "euler_sample_two_point_mixture", "euler_sample_generator_and_one_step"),
        "steps x ← x + v/steps although t decreases (dt = −1/steps)",
        _edit(EULER_SAMPLE, "x = x + (t_next - t) * v", "x = x + v / steps"),
        "wrong sign of the step",
    ),
    Mistake(
        "flow_euler_time_as_step_index", "euler_sample",
        ("euler_sample_calls_the_model_on_the_time_grid", "euler_sample_steps", "euler_sample_returns_the_data",
         "euler_sample_few_steps_match_the_exact_recursion", "euler_sample_two_point_mixture",
         "euler_sample_generator_and_one_step"),
        "feeds the network the loop index, as DDPM's integer timesteps, instead of the 1000·t it was trained on",
        _edit(EULER_SAMPLE, "torch.full((x.shape[0],), TIME_SCALE * t)", "torch.full((x.shape[0],), steps - 1 - i)"),
        "not the step index",
    ),
    Mistake(
        "flow_heun_corrector_reuses_old_velocity", "heun_sample",
        ("heun_sample_steps", "heun_sample_returns_the_data", "heun_sample_few_steps_match_the_exact_recursion",
         "heun_sample_generator_and_one_step"),
        "the corrector averages the old velocity with itself: two model calls per step for an Euler step",
        _edit(HEUN_SAMPLE, "x = x + h * (v + v_next) / 2", "x = x + h * (v + v) / 2"),
        "the corrector used the old velocity twice",
    ),
    Mistake(
        "flow_heun_time_unscaled", "heun_sample",
        ("heun_sample_calls_the_model", "heun_sample_steps", "heun_sample_returns_the_data",
         "heun_sample_few_steps_match_the_exact_recursion", "heun_sample_two_point_mixture",
         "heun_sample_generator_and_one_step"),
        "feeds the network t ∈ [0, 1] while it was trained on 1000·t",
        _edit(_edit(HEUN_SAMPLE, "torch.full((x.shape[0],), TIME_SCALE * t))", "torch.full((x.shape[0],), t))"),
              "torch.full((x.shape[0],), TIME_SCALE * t_next)", "torch.full((x.shape[0],), t_next)"),
        "not t itself",
    ),
]

# ------------------------------------------------------------------------------------------------ correct variants

ALTERNATIVES: list[Alternative] = [
    Alternative("linear_schedule_by_hand", "linear_beta_schedule", "a Python list comprehension", _src('''
        def linear_beta_schedule(T, beta_start=1e-4, beta_end=2e-2):
            return torch.tensor([beta_start + (beta_end - beta_start) * i / (T - 1) for i in range(T)],
                                dtype=torch.float64)
    ''')),
    Alternative("cosine_schedule_numpy", "cosine_beta_schedule", "numpy, then a float64 tensor", _src('''
        def cosine_beta_schedule(T, s=0.008, max_beta=0.999):
            t = np.arange(T + 1) / T
            f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
            return torch.from_numpy(np.minimum(1 - f[1:] / f[:-1], max_beta))
    ''')),
    Alternative("noise_schedule_loops", "NoiseSchedule", "tables filled with Python loops, gather by indexing",
                _src('''
        class NoiseSchedule:
            def __init__(self, betas):
                self.betas = torch.as_tensor(betas, dtype=torch.float64)
                T = len(self.betas)
                self.alphas = 1 - self.betas
                ab, prev, acc = [], [], 1.0
                for a in self.alphas.tolist():
                    prev.append(acc)
                    acc *= a
                    ab.append(acc)
                self.alpha_bars = torch.tensor(ab, dtype=torch.float64)
                self.alpha_bars_prev = torch.tensor(prev, dtype=torch.float64)
                b, a1, p = self.betas, self.alpha_bars, self.alpha_bars_prev
                self.posterior_variance = torch.stack([b[i] * (1 - p[i]) / (1 - a1[i]) for i in range(T)])
                self.posterior_mean_coef_x0 = torch.stack([p[i].sqrt() * b[i] / (1 - a1[i]) for i in range(T)])
                self.posterior_mean_coef_xt = torch.stack(
                    [self.alphas[i].sqrt() * (1 - p[i]) / (1 - a1[i]) for i in range(T)])

            def gather(self, values, t, x):
                t = torch.as_tensor(t).reshape(-1).expand(x.shape[0])
                return values[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    ''')),
    Alternative("q_sample_float32_indexing", "q_sample", "indexes the tables directly and computes in float32", _src('''
        def q_sample(x0, t, noise, schedule):
            ab = schedule.alpha_bars[t].float().reshape(-1, 1, 1, 1)
            return torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * noise
    ''')),
    Alternative("predict_x0_float32", "predict_x0", "explicit float32 tables", _src('''
        def predict_x0(x_t, t, eps, schedule):
            sa = schedule.sqrt_alpha_bars.float()[t].view(-1, 1, 1, 1)
            s1 = schedule.sqrt_one_minus_alpha_bars.float()[t].view(-1, 1, 1, 1)
            return x_t / sa - s1 / sa * eps
    ''')),
    Alternative("q_posterior_from_formula", "q_posterior", "eq. 7 written out from β and ᾱ", _src('''
        def q_posterior(x0, x_t, t, schedule):
            g = lambda v: schedule.gather(v, t, x_t)
            b, a, ab, prev = g(schedule.betas), g(schedule.alphas), g(schedule.alpha_bars), g(schedule.alpha_bars_prev)
            mean = (prev.sqrt() * b * x0 + a.sqrt() * (1 - prev) * x_t) / (1 - ab)
            return mean, b * (1 - prev) / (1 - ab)
    ''')),
    Alternative("embedding_pow", "SinusoidalTimeEmbedding", "10000 ** (−i/h) computed per call", _src('''
        class SinusoidalTimeEmbedding(nn.Module):
            def __init__(self, dim, max_period=10000.0):
                super().__init__()
                self.dim, self.max_period = dim, max_period

            def forward(self, t):
                half = self.dim // 2
                freqs = self.max_period ** (-torch.arange(half, dtype=torch.float32) / half)
                args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
                return torch.cat([args.sin(), args.cos()], dim=1)
    ''')),
    Alternative("resblock_other_names", "ResBlock", "other attribute names, SiLU modules, a separate time MLP",
                _src('''
        class ResBlock(nn.Module):
            def __init__(self, in_ch, out_ch, emb_dim, *, groups=32, dropout=0.0):
                super().__init__()
                self.first = nn.Sequential(nn.GroupNorm(math.gcd(groups, in_ch), in_ch), nn.SiLU(),
                                           nn.Conv2d(in_ch, out_ch, 3, padding=1))
                self.time = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
                self.norm = nn.GroupNorm(math.gcd(groups, out_ch), out_ch)
                self.second = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1))
                self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

            def forward(self, x, emb):
                h = self.first(x)
                s, b = self.time(emb).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
                return self.shortcut(x) + self.second(self.norm(h) * (1 + s) + b)
    ''')),
    Alternative("attention_by_hand", "SelfAttention", "multi-head attention with einsum and the reference's names",
                _src('''
        class SelfAttention(nn.Module):
            def __init__(self, channels, num_heads=1, *, groups=32):
                super().__init__()
                self.num_heads = num_heads
                self.norm = nn.GroupNorm(math.gcd(groups, channels), channels)
                self.qkv = nn.Conv2d(channels, 3 * channels, 1)
                self.proj = nn.Conv2d(channels, channels, 1)

            def forward(self, x):
                b, c, h, w = x.shape
                n, d = self.num_heads, c // self.num_heads
                q, k, v = self.qkv(self.norm(x)).reshape(b, 3, n, d, h * w).unbind(1)  # [B, n, d, HW]
                weights = torch.einsum("bndi,bndj->bnij", q, k).div(math.sqrt(d)).softmax(dim=-1)
                out = torch.einsum("bnij,bndj->bndi", weights, v).reshape(b, c, h, w)
                return x + self.proj(out)
    ''')),
    Alternative("unet_student", "UNet", "a UNet assembled from the lesson's blocks", UNET),
    Alternative("ddpm_loss_by_hand", "ddpm_loss", "noise and t drawn in the other order, squared error by hand",
                _src('''
        def ddpm_loss(model, x0, schedule, *, t=None, noise=None, generator=None):
            if noise is None:
                noise = torch.randn(x0.shape, generator=generator)
            if t is None:
                t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)
            ab = schedule.alpha_bars.float()[t].view(-1, 1, 1, 1)
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            return ((model(x_t, t) - noise) ** 2).mean()
    ''')),
    Alternative("train_step_student", "train_step", "zero_grad(set_to_none=False), clipping after backward",
                _edit(TRAIN_STEP, "optimizer.zero_grad()", "optimizer.zero_grad(set_to_none=False)")),
    Alternative("train_step_zero_grad_last", "train_step", "clears the gradients at the end of the step, not the start",
                _src('''
        from ddpm_ref import ddpm_loss


        def train_step(model, optimizer, x0, schedule, *, generator=None, grad_clip=1.0):
            loss = ddpm_loss(model, x0, schedule, generator=generator)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())
    ''')),
    Alternative("train_step_inline_loss", "train_step", "the loss written inline, noise drawn before t, AdamW-style "
                "zero_grad(set_to_none=True)", _src('''
        def train_step(model, optimizer, x0, schedule, *, generator=None, grad_clip=1.0):
            optimizer.zero_grad(set_to_none=True)
            noise = torch.randn_like(x0) if generator is None else torch.randn(x0.shape, generator=generator)
            t = torch.randint(schedule.T, (len(x0),), generator=generator)
            ab = schedule.alpha_bars.to(x0.dtype)[t][:, None, None, None]
            pred = model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t)
            loss = (pred - noise).pow(2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), grad_clip)
            optimizer.step()
            return loss.item()
    ''')),
    Alternative("p_sample_log_variance", "p_sample", "σ from posterior_log_variance, the mean written out",
                _src('''
        @torch.no_grad()
        def p_sample(model, x_t, t, schedule, *, generator=None, clip_x0=True, variance="posterior", noise=None):
            t = torch.as_tensor(t).reshape(-1).expand(x_t.shape[0])
            g = lambda v: v[t].float().view(-1, 1, 1, 1)
            eps = model(x_t, t)
            x0 = (x_t - g(schedule.sqrt_one_minus_alpha_bars) * eps) / g(schedule.sqrt_alpha_bars)
            if clip_x0:
                x0 = torch.clamp(x0, -1.0, 1.0)
            mean = g(schedule.posterior_mean_coef_x0) * x0 + g(schedule.posterior_mean_coef_xt) * x_t
            if variance == "posterior":
                std = torch.exp(0.5 * g(schedule.posterior_log_variance))
            else:
                std = g(schedule.betas).sqrt()
            z = torch.randn(x_t.shape, generator=generator) if noise is None else noise
            return torch.where((t == 0).view(-1, 1, 1, 1), mean, mean + std * z)
    ''')),
    Alternative("sample_student", "sample", "the lesson's loop", SAMPLE),
    Alternative("reconstruct_student", "reconstruct", "the lesson's loop", RECONSTRUCT),
    Alternative("psnr_torch", "psnr", "PSNR by hand in torch, per image", _src('''
        def psnr(x, y):
            a, b = (x.double().clamp(-1, 1) + 1) / 2, (y.double().clamp(-1, 1) + 1) / 2
            mse = ((a - b) ** 2).flatten(1).mean(dim=1)
            return (10 * torch.log10(1.0 / mse)).mean().item()
    ''')),
    Alternative("ssim_skimage_float32", "ssim", "skimage on float32 arrays", _src('''
        from skimage.metrics import structural_similarity


        def ssim(x, y):
            a, b = ((x + 1) / 2).numpy(), ((y + 1) / 2).numpy()
            scores = [structural_similarity(a[i], b[i], data_range=1.0, channel_axis=0) for i in range(a.shape[0])]
            return float(sum(scores) / len(scores))
    ''')),
    Alternative("ddim_step_student", "ddim_step", "the lesson's step", DDIM_STEP),
    Alternative("ddim_sample_student", "ddim_sample", "the lesson's loop", DDIM_SAMPLE),
    # ---------------------------------------------------------------- lesson 9 (flow matching)
    Alternative("flow_loss_student", "flow_matching_loss", "the lesson's loss", FLOW_LOSS),
    Alternative("flow_loss_lerp", "flow_matching_loss", "torch.lerp for the path, the error squared by hand",
                _src('''
        def flow_matching_loss(model, x0, *, t=None, noise=None, generator=None):
            b = x0.shape[0]
            t = torch.rand(b, generator=generator) if t is None else torch.as_tensor(t).float().reshape(-1).expand(b)
            eps = torch.randn(x0.shape, generator=generator) if noise is None else noise
            weight = t[:, None, None, None].expand_as(x0)
            x_t = torch.lerp(x0, eps, weight)  # x0 + t·(ε − x0)
            return ((model(x_t, 1000.0 * t) - (eps - x0)) ** 2).mean()
    ''')),
    Alternative("flow_euler_sample_student", "euler_sample", "the lesson's loop", EULER_SAMPLE),
    Alternative("flow_euler_sample_linspace", "euler_sample", "a torch.linspace grid and x -= dt·v", _src('''
        @torch.no_grad()
        def euler_sample(model, shape, *, steps=50, generator=None, device=None, x1=None, progress=True):
            x = x1.clone() if x1 is not None else torch.randn(*shape, generator=generator)
            grid = torch.linspace(1.0, 0.0, steps + 1)
            for t, t_next in zip(grid[:-1], grid[1:]):
                x -= (t - t_next) * model(x, (1000 * t).repeat(x.shape[0]))
            return x
    ''')),
    Alternative("flow_heun_sample_student", "heun_sample", "the lesson's loop", HEUN_SAMPLE),
    Alternative("flow_heun_sample_linspace", "heun_sample", "a torch.linspace grid, a helper for the velocity",
                _src('''
        @torch.no_grad()
        def heun_sample(model, shape, *, steps=25, generator=None, device=None, x1=None, progress=True):
            def velocity(x, t):
                return model(x, torch.full((x.shape[0],), 1000.0 * float(t)))

            x = x1.clone() if x1 is not None else torch.randn(*shape, generator=generator)
            grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
            for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
                dt = t_next - t
                k1 = velocity(x, t)
                k2 = velocity(x + dt * k1, t_next)
                x = x + 0.5 * dt * k1 + 0.5 * dt * k2
            return x
    ''')),
]


# ------------------------------------------------------------------------------------------------ cheats

#: reaches the repository's tests/ from a notebook, as a student who wants to patch the grader would
_GRADER_ON_PATH = """
import sys
from ddpm_ref.course import course_root
sys.path.insert(0, str(course_root()))
"""


def _cheat(name: str, exercise: str, description: str, source: str, feedback: str,
           local_feedback: str | None = "") -> Mistake:
    from tests.harness import REGISTRY, check_name, load_all_checks

    load_all_checks()
    return Mistake(name, exercise, tuple(check_name(f) for f in REGISTRY[exercise]), description,
                   _src(source), feedback, feedback if local_feedback == "" else local_feedback)


def _stub(signature: str) -> str:
    return f"def {signature}:\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"


_IS_REF = "is the reference"
_CALLS_REF = "calls the reference"
_TAMPERED = "replaced part of the grader"
#: what the judge shows for an exercise left as the stub
_STUB = "replace `raise NotImplementedError()` with your code"

CHEATS: list[Mistake] = [
    _cheat("cheat_import", "q_sample", "imports the reference as the answer",
           "from ddpm_ref.diffusion import q_sample", _IS_REF),
    _cheat("cheat_alias", "predict_x0", "binds the reference to the exercise's name",
           "import ddpm_ref\npredict_x0 = ddpm_ref.predict_x0", _IS_REF),
    _cheat("cheat_wrapper", "q_posterior", "a two-line wrapper around the reference",
           """
           import ddpm_ref


           def q_posterior(x0, x_t, t, schedule):
               return ddpm_ref.q_posterior(x0, x_t, t, schedule)
           """, _CALLS_REF),
    _cheat("cheat_deep_wrapper", "p_sample", "calls the reference through a helper and a module alias",
           """
           import ddpm_ref.samplers as helpers


           def _one_step(*args, **kwargs):
               return helpers.p_sample(*args, **kwargs)


           def p_sample(model, x_t, t, schedule, *, generator=None, clip_x0=True, variance="posterior"):
               return _one_step(model, x_t, t, schedule, generator=generator, clip_x0=clip_x0, variance=variance)
           """, _CALLS_REF),
    _cheat("cheat_other_entry_point", "sample", "calls the reference's own loop (p_sample_loop) under another name",
           """
           from ddpm_ref.samplers import p_sample_loop as loop


           def sample(model, schedule, shape, *, generator=None, device=None, return_intermediates=False,
                      progress=True):
               x_T = torch.randn(shape, generator=generator)
               return loop(model, x_T, schedule.T - 1, schedule, generator=generator, progress=progress,
                           return_intermediates=return_intermediates)
           """, _CALLS_REF),
    _cheat("cheat_lambda", "reconstruct", "a lambda around the reference",
           "import ddpm_ref\nreconstruct = lambda model, x0, t_start, schedule, **kw: ddpm_ref.reconstruct("
           "model, x0, t_start, schedule, **kw)", _CALLS_REF),
    _cheat("cheat_default_argument", "ddim_sample", "keeps the reference in a default argument",
           """
           import ddpm_ref


           def ddim_sample(model, schedule, shape, *, steps=50, eta=0.0, spacing="trailing", generator=None,
                           device=None, clip_x0=True, progress=True, return_intermediates=False, x_T=None,
                           _impl=ddpm_ref.ddim_sample):
               return _impl(model, schedule, shape, steps=steps, eta=eta, spacing=spacing, generator=generator,
                            device=device, clip_x0=clip_x0, progress=progress,
                            return_intermediates=return_intermediates, x_T=x_T)
           """, _CALLS_REF),
    _cheat("cheat_private_loop_helper", "ddim_sample",
           "drives ddim_step with the reference samplers' private grid loop (ddpm_ref.samplers._walk)",
           """
           import ddpm_ref.samplers as S


           def ddim_sample(model, schedule, shape, *, steps=50, eta=0.0, spacing="trailing", generator=None,
                           device=None, clip_x0=True, progress=True, return_intermediates=False, x_T=None):
               x = x_T.clone() if x_T is not None else torch.randn(tuple(shape), generator=generator)

               def step(x, t, t_prev):
                   return ddim_step(model, x, t, t_prev, schedule, eta=eta, clip_x0=clip_x0, generator=generator)

               return S._walk(ddim_timesteps(schedule.T, steps, spacing), x, step, desc="DDIM", progress=progress,
                              return_intermediates=return_intermediates)
           """, _CALLS_REF),
    _cheat("cheat_subclass", "UNet", "subclasses the reference class",
           "import ddpm_ref\n\n\nclass UNet(ddpm_ref.UNet):\n    pass", "subclasses the reference"),
    _cheat("cheat_wraps_reference_module", "SelfAttention", "a module that builds the reference module inside",
           """
           import ddpm_ref


           class SelfAttention(nn.Module):
               def __init__(self, channels, num_heads=1, *, groups=32):
                   super().__init__()
                   self.inner = ddpm_ref.unet.SelfAttention(channels, num_heads, groups=groups)

               def forward(self, x):
                   return self.inner(x)
           """, _CALLS_REF),
    _cheat("cheat_runner_rebound", "linear_beta_schedule", "leaves the stub and rebinds run_checks to do nothing",
           _stub("linear_beta_schedule(T, beta_start=1e-4, beta_end=2e-2)")
           + "\n\nrun_checks = lambda *args, **kwargs: None", _STUB, "NotImplementedError"),
    _cheat("cheat_runner_patched", "cosine_beta_schedule", "leaves the stub and patches ddpm_ref.course.run_checks",
           _stub("cosine_beta_schedule(T, s=0.008, max_beta=0.999)")
           + "\n\nimport ddpm_ref.course\nddpm_ref.course.run_checks = lambda *args, **kwargs: None", _STUB, _TAMPERED),
    _cheat("cheat_harness_patched", "SinusoidalTimeEmbedding", "leaves the stub and patches tests.harness.run_checks",
           "import torch.nn as nn\n\n\nclass SinusoidalTimeEmbedding(nn.Module):\n"
           "    def __init__(self, dim):\n        super().__init__()\n\n"
           "    def forward(self, t):\n        raise NotImplementedError()\n" + _GRADER_ON_PATH
           + "import tests.harness\ntests.harness.run_checks = lambda *args, **kwargs: None", _STUB, _TAMPERED),
    _cheat("cheat_asserts_replaced", "ssim", "a wrong answer, with the checks' assertion helpers replaced",
           "def ssim(x, y):\n    return 0.5\n" + _GRADER_ON_PATH
           + "import tests._asserts as checks\nfor _name in [n for n in dir(checks) if n.startswith('expect')]:\n"
           "    setattr(checks, _name, lambda *args, **kwargs: None)", "got 0.5", _TAMPERED),
]


# Cheats aimed at the grader's process itself: graded through the judge only (they end, hook or patch the process
# they run in, so the in-process proof cannot host them). Each leaves the exercise unsolved or wrong, or reaches
# the reference by a route the in-process tripwires could not see; none may earn a point.
CHEATS += [
    _cheat("cheat_exec_wrapper", "q_sample", "a wrapper around the reference defined through exec",
           """
           exec("import ddpm_ref\\ndef q_sample(x0, t, noise, schedule):\\n"
                "    return ddpm_ref.diffusion.q_sample(x0, t, noise, schedule)\\n")
           """, _CALLS_REF, None),
    _cheat("cheat_compiled_as_library", "predict_x0", "a wrapper compiled under the reference's own file name",
           """
           import ddpm_ref
           _src = "def predict_x0(x_t, t, eps, schedule):\\n    return ddpm_ref.predict_x0(x_t, t, eps, schedule)\\n"
           exec(compile(_src, ddpm_ref.__file__, "exec"), globals())
           """, _CALLS_REF, None),
    _cheat("cheat_rebuilt_code_object", "p_sample", "the reference's code object rebuilt into a new function",
           """
           import types
           import ddpm_ref.samplers as _s
           _f = _s.p_sample
           p_sample = types.FunctionType(_f.__code__, _f.__globals__, "p_sample", _f.__defaults__, _f.__closure__)
           p_sample.__kwdefaults__ = _f.__kwdefaults__
           """, _CALLS_REF, None),
    _cheat("cheat_reference_in_a_thread", "sample", "calls the reference from another thread and hides the error",
           """
           import threading
           import ddpm_ref


           def sample(model, schedule, shape, *, generator=None, device=None, return_intermediates=False,
                      progress=True):
               box = []

               def work():
                   try:
                       box.append(ddpm_ref.sample(model, schedule, shape, generator=generator, progress=False))
                   except BaseException:
                       box.append(torch.zeros(shape))

               worker = threading.Thread(target=work)
               worker.start()
               worker.join()
               return box[0]
           """, _CALLS_REF, None),
    _cheat("cheat_reference_in_a_subprocess", "reconstruct", "runs the reference in a child Python process",
           """
           import subprocess
           import sys
           import tempfile


           def reconstruct(model, x0, t_start, schedule, **kwargs):
               with tempfile.TemporaryDirectory() as d:
                   torch.save({"model": model, "x0": x0, "t": t_start, "s": schedule}, f"{d}/in.pt")
                   code = ("import torch, ddpm_ref; a = torch.load(r'%s/in.pt', weights_only=False); "
                           "torch.save(ddpm_ref.reconstruct(a['model'], a['x0'], a['t'], a['s']), r'%s/out.pt')")
                   subprocess.run([sys.executable, "-c", code % (d, d)], check=True, capture_output=True)
                   return torch.load(f"{d}/out.pt")
           """, "non-zero exit status", None),
    _cheat("cheat_input_transformer", "linear_beta_schedule",
           "leaves the stub and blanks every later cell that mentions run_checks (IPython input transformer)",
           _stub("linear_beta_schedule(T, beta_start=1e-4, beta_end=2e-2)") + "\n" + _src("""
           get_ipython().input_transformers_post.append(
               lambda lines: [] if any("run_checks" in line for line in lines) else lines)
           """), _STUB, None),
    _cheat("cheat_ast_transformer", "cosine_beta_schedule",
           "leaves the stub and removes run_checks calls from later cells (IPython AST transformer)",
           _stub("cosine_beta_schedule(T, s=0.008, max_beta=0.999)") + "\n" + _src("""
           import ast


           class _NoChecks(ast.NodeTransformer):
               def visit_Expr(self, node):
                   return None if "run_checks" in ast.unparse(node) else node


           get_ipython().ast_transformers.append(_NoChecks())
           """), _STUB, None),
    _cheat("cheat_patched_torch", "NoiseSchedule",
           "leaves the stub, with the torch comparisons the checks use patched to agree",
           "class NoiseSchedule:\n    def __init__(self, betas):\n        raise NotImplementedError()\n"
           + "\n" + _src("""
           torch.allclose = lambda *args, **kwargs: True
           torch.equal = lambda *args, **kwargs: True
           torch.testing.assert_close = lambda *args, **kwargs: None
           torch.Tensor.__ne__ = lambda self, other: torch.zeros_like(self, dtype=torch.bool)
           """), _STUB, None),
    _cheat("cheat_printed_output", "q_posterior", "leaves the stub and prints what passing checks print",
           _stub("q_posterior(x0, x_t, t, schedule)") + "\n" + _src("""
           import sys
           sys.stdout.write("  ✓ q_posterior_mean  (0.0 s)\\n  ✓ q_posterior_variance  (0.0 s)\\n"
                            "q_posterior: 2 passed, 0 failed\\n")
           """), _STUB, None),
    _cheat("cheat_swallows_errors", "ddpm_loss",
           "leaves the stub and makes the kernel swallow every later error (custom exception handler)",
           _stub("ddpm_loss(model, x0, schedule, *, t=None, noise=None, generator=None)") + "\n" + _src("""
           import sys
           get_ipython().set_custom_exc((BaseException,), lambda shell, etype, value, tb, tb_offset=None: None)
           sys.excepthook = lambda *args: None
           """), _STUB, None),
    _cheat("cheat_frame_inspection", "psnr", "returns the expected value found in the calling check's frames",
           """
           import sys


           def psnr(x, y):
               frame = sys._getframe(1)
               while frame is not None:
                   for name in ("expected", "want", "reference"):
                       if name in frame.f_locals:
                           return frame.f_locals[name]
                   frame = frame.f_back
               return 0.0
           """, "got 0", None),
    _cheat("cheat_exit", "ssim", "ends the process that grades it (os._exit) before any comparison",
           """
           import os


           def ssim(x, y):
               os._exit(0)
           """, "does your code call exit()", None),
    _cheat("cheat_signal", "ddim_step", "sends SIGTERM to its whole process group (the grader, it hopes)",
           """
           import os
           import signal


           def ddim_step(model, x_t, t, t_prev, schedule, *, eta=0.0, clip_x0=True, generator=None, noise=None):
               os.killpg(0, signal.SIGTERM)
           """, "stopped by signal 15", None),
    _cheat("cheat_rewrites_the_checks", "drop_labels",
           "leaves the stub and rewrites the course's checks and ddpm_ref on disk",
           _stub("drop_labels(labels, p_uncond, null_label, *, generator=None)") + "\n" + _src("""
           import pathlib
           import ddpm_ref
           for _path in [pathlib.Path(ddpm_ref.__file__).parent.parent / "tests" / "harness.py",
                         pathlib.Path(ddpm_ref.__file__)]:
               try:
                   with open(_path, "a") as _f:
                       _f.write("\\ndef run_checks(*args, **kwargs):\\n    return {}\\n")
               except OSError as _e:
                   print("refused:", _e)
           """), _STUB, None),
    _cheat("cheat_library_reference", "q_sample", "diffusers' DDPMScheduler.add_noise as the answer",
           """
           def q_sample(x0, t, noise, schedule):
               from diffusers import DDPMScheduler

               scheduler = DDPMScheduler(num_train_timesteps=schedule.T, trained_betas=schedule.betas.numpy())
               scheduler.alphas_cumprod = schedule.alpha_bars
               t = torch.as_tensor(t).expand(x0.shape[0])
               return scheduler.add_noise(x0.double(), noise.double(), t).to(x0.dtype)
           """, "not available while the course is graded", None),
    _cheat("cheat_zeroes_its_inputs", "predict_x0",
           "zeroes the check's tensors in place, so the value expected from them is zero too",
           """
           def predict_x0(x_t, t, eps, schedule):
               x_t.zero_()
               eps.zero_()
               return torch.zeros_like(x_t)
           """, "changed its input in place", None),
    _cheat("cheat_script_in_feedback", "psnr",
           "leaves the stub and shows script meant to run in the browser of whoever opens the feedback or the "
           "Formgrader", _stub("psnr(x, y)") + "\n" + _src("""
           from IPython.display import HTML, Javascript, display
           display(HTML('<script>window.DDPM_INJECTED = 1</script><img src=x onerror="window.DDPM_INJECTED = 2">'))
           display(Javascript("window.DDPM_INJECTED = 3"))
           """), _STUB, None),
    _cheat("cheat_reference_source", "guided_eps", "leaves the stub and executes the reference's source text",
           _stub("guided_eps(model, x_t, t, labels, w, *, null_label=None)") + "\n" + _src("""
           import ast
           import inspect
           import ddpm_ref.guidance
           _tree = ast.parse(inspect.getsource(ddpm_ref.guidance))
           _node = next(n for n in _tree.body if getattr(n, "name", None) == "guided_eps")
           exec(compile(ast.Module([_node], []), "<my guided_eps>", "exec"), globals())
           """), _STUB, None),
    _cheat("cheat_block_of_a_reference_dit", "DiTBlock", "takes its blocks from a reference DiT built inside",
           """
           import ddpm_ref


           class DiTBlock(nn.Module):
               def __new__(cls, dim, num_heads, mlp_ratio=4.0):
                   return ddpm_ref.DiT(dim=dim, depth=1, num_heads=num_heads, mlp_ratio=mlp_ratio).blocks[0]
           """, _CALLS_REF),
]

# ------------------------------------------------------------------------------------------------ lesson 8: guidance
# Templates: the lesson's solutions, written as a student would; each mistake is one edit of one of them.

LABEL_EMBEDDING = _src('''
    class LabelEmbedding(nn.Module):
        def __init__(self, num_classes, dim):
            super().__init__()
            self.num_classes = num_classes
            self.null_label = num_classes
            self.embedding = nn.Embedding(num_classes + 1, dim)

        def forward(self, labels):
            return self.embedding(labels)
''')

DROP_LABELS = _src('''
    def drop_labels(labels, p_uncond, null_label, *, generator=None):
        drop = torch.rand(labels.shape, generator=generator) < p_uncond
        return torch.where(drop, torch.full_like(labels, null_label), labels)
''')

GUIDED_EPS = _src('''
    def guided_eps(model, x_t, t, labels, w, *, null_label=None):
        if null_label is None:
            null_label = model.num_classes
        t = torch.as_tensor(t).expand(x_t.shape[0])
        null = torch.full_like(labels, null_label)
        eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + w * (eps_cond - eps_uncond)
''')

CFG_SAMPLE = _src('''
    from ddpm_ref import guided_eps, predict_x0, q_posterior


    @torch.no_grad()
    def cfg_sample(model, schedule, shape, labels, w, *, generator=None, device=None, null_label=None, clip_x0=True,
                   variance="posterior", x_T=None, progress=True):
        x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T
        for step in reversed(range(schedule.T)):
            t = torch.full((x.shape[0],), step, dtype=torch.long)
            eps = guided_eps(model, x, t, labels, w, null_label=null_label)
            x0 = predict_x0(x, t, eps, schedule)
            if clip_x0:
                x0 = x0.clamp(-1, 1)
            mean, var = q_posterior(x0, x, t, schedule)
            if variance == "beta":
                var = schedule.gather(schedule.betas, t, x)
            noise = torch.randn(x.shape, generator=generator)
            x = mean + (var.sqrt() * noise if step > 0 else 0)
        return x
''')

MISTAKES += [
    Mistake("label_embedding_no_null_row", "LabelEmbedding",
            ("LabelEmbedding_shapes_and_null_label", "LabelEmbedding_in_the_unet", "LabelEmbedding_any_size",
             "LabelEmbedding_one_label"),
            "a table of num_classes rows: the null label ∅ = num_classes has no vector",
            _edit(LABEL_EMBEDDING, "nn.Embedding(num_classes + 1, dim)", "nn.Embedding(num_classes, dim)"),
            "the null label needs its own row"),
    Mistake("drop_labels_never_drops", "drop_labels",
            ("drop_labels_extremes", "drop_labels_rate", "drop_labels_uses_the_generator",
             "drop_labels_every_class_alike", "drop_labels_small_batches",
             "drop_labels_uses_only_its_generator"),
            "label dropout missing: the null label is never trained, so guidance amplifies an untrained ε(x, ∅)",
            _src('''
        def drop_labels(labels, p_uncond, null_label, *, generator=None):
            return labels.clone()
    '''), "the null label is never trained"),
    Mistake("drop_labels_keeps_p_uncond", "drop_labels",
            ("drop_labels_extremes", "drop_labels_rate", "drop_labels_every_class_alike",
             "drop_labels_small_batches"),
            "u > p_uncond: drops 1 − p_uncond of the labels",
            _edit(DROP_LABELS, "< p_uncond", "> p_uncond"), "the wrong way round"),
    Mistake("drop_labels_in_place", "drop_labels",  # every call of it changes its input: every check fails
            ("drop_labels_extremes", "drop_labels_rate", "drop_labels_uses_the_generator",
             "drop_labels_every_class_alike", "drop_labels_leaves_the_input_alone",
             "drop_labels_small_batches", "drop_labels_uses_only_its_generator"),
            "writes ∅ into the caller's labels",
            _src('''
        def drop_labels(labels, p_uncond, null_label, *, generator=None):
            labels[torch.rand(labels.shape, generator=generator) < p_uncond] = null_label
            return labels
    '''), "changed its input in place"),
    Mistake("guided_eps_swapped", "guided_eps", ("guided_eps_formula", "guided_eps_null_label", "guided_eps_int_t",
                                                 "guided_eps_with_the_oracle",
                                                 "guided_eps_null_label_zero"),
            "conditional and unconditional estimates swapped: ε(c) + w·(ε(∅) − ε(c))",
            _edit(GUIDED_EPS, "return eps_uncond + w * (eps_cond - eps_uncond)",
                  "return eps_cond + w * (eps_uncond - eps_cond)"),
            "conditional and unconditional estimates are swapped"),
    Mistake("guided_eps_one_plus_w", "guided_eps", ("guided_eps_formula", "guided_eps_null_label",
                                                    "guided_eps_int_t",
                                                    "guided_eps_with_the_oracle",
                                                    "guided_eps_null_label_zero"),
            "the (1 + w) form of Ho & Salimans with this course's w: w = 1 already guides",
            _edit(GUIDED_EPS, "return eps_uncond + w * (eps_cond - eps_uncond)",
                  "return (1 + w) * eps_cond - w * eps_uncond"),
            "the (1 + w) form of Ho & Salimans"),
    Mistake("guided_eps_two_passes", "guided_eps", ("guided_eps_one_forward_pass",),
            "two forward passes instead of one on the doubled batch",
            _src('''
        def guided_eps(model, x_t, t, labels, w, *, null_label=None):
            null_label = model.num_classes if null_label is None else null_label
            t = torch.as_tensor(t).expand(x_t.shape[0])
            eps_cond = model(x_t, t, labels)
            eps_uncond = model(x_t, t, torch.full_like(labels, null_label))
            return eps_uncond + w * (eps_cond - eps_uncond)
    '''), "use one forward pass"),
    Mistake("cfg_sample_drops_labels", "cfg_sample",
            ("cfg_sample_guides_the_noise_estimate", "cfg_sample_w1_returns_each_class",
             "cfg_sample_honours_its_options"),
            "labels dropped at sampling time too (as in training)",
            _edit(CFG_SAMPLE, "    x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T\n",
                  "    x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T\n"
                  "    null = model.num_classes if null_label is None else null_label\n"
                  "    labels = torch.where(torch.rand(labels.shape, generator=generator) < 0.1, null, labels)\n"),
            "labels are dropped only in training, never at sampling time"),
    Mistake("cfg_sample_guides_x0", "cfg_sample", ("cfg_sample_guides_the_noise_estimate",
                                                   "cfg_sample_honours_its_options"),
            "guidance applied to x̂0 with the ε formula, after clipping each x̂0",
            _src('''
        from ddpm_ref import predict_x0, q_posterior


        @torch.no_grad()
        def cfg_sample(model, schedule, shape, labels, w, *, generator=None, device=None, null_label=None,
                       clip_x0=True, variance="posterior", x_T=None, progress=True):
            null = model.num_classes if null_label is None else null_label
            x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T
            for step in reversed(range(schedule.T)):
                t = torch.full((x.shape[0],), step, dtype=torch.long)
                x0_c = predict_x0(x, t, model(x, t, labels), schedule)
                x0_u = predict_x0(x, t, model(x, t, torch.full_like(labels, null)), schedule)
                if clip_x0:
                    x0_c, x0_u = x0_c.clamp(-1, 1), x0_u.clamp(-1, 1)
                x0 = x0_u + w * (x0_c - x0_u)
                mean, var = q_posterior(x0, x, t, schedule)
                if variance == "beta":
                    var = schedule.gather(schedule.betas, t, x)
                noise = torch.randn(x.shape, generator=generator)
                x = mean + (var.sqrt() * noise if step > 0 else 0)
            return x
    '''), "guidance was applied to x̂0 with the ε formula"),
]

ALTERNATIVES += [
    Alternative("label_embedding_student", "LabelEmbedding", "the lesson's nn.Embedding", LABEL_EMBEDDING),
    Alternative("label_embedding_parameter_table", "LabelEmbedding", "an nn.Parameter table indexed by hand",
                _src('''
        class LabelEmbedding(nn.Module):
            def __init__(self, num_classes, dim):
                super().__init__()
                self.table = nn.Parameter(torch.randn(num_classes + 1, dim) * 0.5)

            def forward(self, labels):
                return self.table[labels.long()]
    ''')),
    Alternative("drop_labels_student", "drop_labels", "the lesson's torch.where", DROP_LABELS),
    Alternative("drop_labels_bernoulli", "drop_labels", "a Bernoulli mask and masked_fill on a clone",
                _src('''
        def drop_labels(labels, p_uncond, null_label, *, generator=None):
            mask = torch.bernoulli(torch.full(labels.shape, float(p_uncond)), generator=generator).bool()
            return labels.clone().masked_fill(mask, null_label)
    ''')),
    Alternative("guided_eps_student", "guided_eps", "the lesson's batched pass", GUIDED_EPS),
    Alternative("guided_eps_null_first_weights", "guided_eps", "∅ half first, written as w·ε(c) + (1 − w)·ε(∅)",
                _src('''
        def guided_eps(model, x_t, t, labels, w, *, null_label=None):
            null = model.num_classes if null_label is None else null_label
            b = x_t.shape[0]
            t = torch.as_tensor(t).reshape(-1).expand(b)
            y = torch.cat([torch.full((b,), null, dtype=torch.long), labels])
            out = model(x_t.repeat(2, 1, 1, 1), t.repeat(2), y)
            return w * out[b:] + (1 - w) * out[:b]
    ''')),
    Alternative("cfg_sample_by_hand", "cfg_sample", "the chain written out with predict_x0 and q_posterior",
                CFG_SAMPLE),
    Alternative("cfg_sample_through_sample", "cfg_sample", "lesson 5's sampler with the guided estimate as the model",
                _src('''
        import ddpm_ref


        @torch.no_grad()
        def cfg_sample(model, schedule, shape, labels, w, *, generator=None, device=None, null_label=None,
                       clip_x0=True, variance="posterior", x_T=None, progress=True):
            def guided(x, t):
                return ddpm_ref.guided_eps(model, x, t, labels, w, null_label=null_label)

            return ddpm_ref.sample(guided, schedule, shape, generator=generator, device=device, clip_x0=clip_x0,
                                   variance=variance, x_T=x_T, progress=progress)
    ''')),
]


# ------------------------------------------------------------------------------------------------ the four contract
# classes (tests/test_usage_contract.py): options not honoured or not passed on, inputs changed in place, randomness not
# from the generator, small or edge inputs. At least one mistake per class in each lesson where the class applies.

#: the step lines of the SAMPLE and DDIM_SAMPLE templates
_SAMPLE_STEP = "x = p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, variance=variance)"
_DDIM_CALL = "ddim_step(model, x, t, t_prev, schedule, eta=eta, clip_x0=clip_x0, generator=generator)"

MISTAKES += [
    # lesson 1
    Mistake("cosine_schedule_s_or_default", "cosine_beta_schedule", ("cosine_beta_schedule_falsy_arguments",),
            "s = s or 0.008: the valid offset s = 0.0 is replaced by the default",
            _src('''
        def cosine_beta_schedule(T, s=0.008, max_beta=0.999):
            s = s or 0.008
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            return (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    '''), "s = 0.0 was replaced by the default"),
    Mistake("noise_schedule_alphas_in_place", "NoiseSchedule", ("NoiseSchedule_alphas_and_alpha_bars",
                                                                "NoiseSchedule_consistent_with_marginals",
                                                                "NoiseSchedule_gather",
                                                                "NoiseSchedule_posterior_mean_coefs",
                                                                "NoiseSchedule_posterior_variance",
                                                                "NoiseSchedule_small_inputs"),
            "α = 1 − β computed in place on the caller's β (betas.mul_(-1).add_(1))",
            _edit(_edit(NOISE_SCHEDULE, "self.betas = betas\n", "self.betas = betas.clone()\n"),
                  "self.alphas = 1.0 - betas", "self.alphas = betas.mul_(-1).add_(1.0)"),
            "changed its input in place"),
    Mistake("gather_int_t_as_0d", "NoiseSchedule", ("NoiseSchedule_gather", "NoiseSchedule_small_inputs"),
            "gather turns an int t into a 0-d tensor and reshapes by t.shape[0]",
            _edit(NOISE_SCHEDULE, '''        if isinstance(t, int):
            t = torch.full((x.shape[0],), t, dtype=torch.long)
''', '''        t = torch.as_tensor(t)
'''), "IndexError"),
    # lesson 2
    Mistake("predict_x0_int_t_crashes", "predict_x0", ("predict_x0_int_t_and_one_image",),
            "reshapes the gathered ᾱ by len(t): an int t (one timestep for the batch) crashes",
            _src('''
        def predict_x0(x_t, t, eps, schedule):
            ab = schedule.alpha_bars[t].float().view(len(t), 1, 1, 1)
            return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    '''), "has no len()"),
    Mistake("predict_x0_in_place", "predict_x0", ("predict_x0_int_t_and_one_image", "predict_x0_inverts_q_sample",
                                                  "predict_x0_values"),
            "solves for x̂0 in place on the caller's x_t",
            _src('''
        def predict_x0(x_t, t, eps, schedule):
            ab = schedule.gather(schedule.alpha_bars, t, x_t)
            return x_t.sub_((1 - ab).sqrt() * eps).div_(ab.sqrt())
    '''), "changed its input in place"),
    # lesson 3
    Mistake("embedding_ignores_max_period", "SinusoidalTimeEmbedding", ("SinusoidalTimeEmbedding_options_and_edges",),
            "hard-codes 10000 as the period: max_period is ignored",
            _src('''
        class SinusoidalTimeEmbedding(nn.Module):
            def __init__(self, dim, max_period=10000.0):
                super().__init__()
                self.dim = dim

            def forward(self, t):
                half = self.dim // 2
                freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
                args = t.float()[:, None] * freqs[None]
                return torch.cat([args.sin(), args.cos()], dim=-1)
    '''), "max_period was ignored"),
    Mistake("embedding_squeezes_the_batch", "SinusoidalTimeEmbedding", ("SinusoidalTimeEmbedding_options_and_edges",),
            "squeezes the output: a batch of one timestep loses its batch dimension",
            _edit(TIME_EMBEDDING, "return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)",
                  "return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).squeeze()"),
            "no .squeeze()"),
    Mistake("resblock_residual_into_input", "ResBlock", ("ResBlock_honours_groups_and_dropout",
                                                         "ResBlock_matches_reference_math",
                                                         "ResBlock_one_image_leaves_its_inputs_alone"),
            "adds h into skip(x) in place: with an identity skip that is the caller's x",
            _edit(RESBLOCK, "        return h + self.skip(x)\n",
                  "        out = self.skip(x)\n        out += h\n        return out\n"),
            "changed in place"),
    Mistake("attention_residual_into_input", "SelfAttention", ("SelfAttention_global_mixing",
                                                               "SelfAttention_matches_reference_math",
                                                               "SelfAttention_one_image_leaves_its_input_alone",
                                                               "SelfAttention_permutation_equivariance"),
            "x += proj(out): the residual is written into the caller's input",
            _edit(SELF_ATTENTION, "        return x + self.proj(out)\n",
                  "        x += self.proj(out)\n        return x\n"),
            "changed in place"),
    Mistake("unet_always_attention", "UNet", ("UNet_honours_its_options",),
            "builds the bottleneck attention whatever `attention` says",
            _edit(UNET, "self.mid_attn = SelfAttention(ch, num_heads, groups=groups) if attention else nn.Identity()",
                  "self.mid_attn = SelfAttention(ch, num_heads, groups=groups)"),
            "use the argument attention"),
    # lesson 4
    Mistake("loss_ignores_int_t", "ddpm_loss", ("ddpm_loss_int_t_and_given_noise",),
            "draws t whenever t is not a tensor: an int t (0 included) is ignored",
            _edit(DDPM_LOSS, "    if t is None:\n", "    if t is None or not torch.is_tensor(t):\n"),
            "an int t is one timestep"),
    Mistake("loss_t_from_one", "ddpm_loss", ("ddpm_loss_reaches_both_ends",),
            "torch.randint(1, T): t = 0, the step the sampler ends on, is never trained",
            _edit(DDPM_LOSS, "torch.randint(0, schedule.T,", "torch.randint(1, schedule.T,"),
            "both ends included"),
    Mistake("loss_noise_randn_like", "ddpm_loss", ("ddpm_loss_default_sampling", "ddpm_loss_uses_only_its_generator"),
            "draws the noise with torch.randn_like(x0), ignoring the generator",
            _edit(DDPM_LOSS, "noise = torch.randn(x0.shape, generator=generator)", "noise = torch.randn_like(x0)"),
            "global random state"),
    Mistake("loss_noises_x0_in_place", "ddpm_loss", ("ddpm_loss_default_sampling", "ddpm_loss_int_t_and_given_noise",
                                                     "ddpm_loss_reaches_both_ends",
                                                     "ddpm_loss_uses_only_its_generator",
                                                     "ddpm_loss_value"),
            "builds x_t in place on the caller's x0",
            _edit(DDPM_LOSS, "    x_t = q_sample(x0, t, noise, schedule)\n",
                  "    ab = schedule.gather(schedule.alpha_bars, t, x0)\n"
                  "    x_t = x0.mul_(ab.sqrt()).add_((1 - ab).sqrt() * noise)\n"),
            "changed its input in place"),
    Mistake("train_step_loss_without_generator", "train_step", ("train_step_uses_only_its_generator",),
            "calls ddpm_loss without passing the generator on",
            _edit(TRAIN_STEP, "loss = ddpm_loss(model, x0, schedule, generator=generator)",
                  "loss = ddpm_loss(model, x0, schedule)"),
            "global random state"),
    # lesson 5
    Mistake("p_sample_int_t_crashes", "p_sample", ("p_sample_int_t_and_one_image",),
            "masks the noise with (t > 0).float(): an int t (one timestep for the batch) crashes",
            _src('''
        from ddpm_ref import predict_x0, q_posterior


        @torch.no_grad()
        def p_sample(model, x_t, t, schedule, *, generator=None, clip_x0=True, variance="posterior", noise=None):
            eps = model(x_t, t)
            x0 = predict_x0(x_t, t, eps, schedule)
            if clip_x0:
                x0 = x0.clamp(-1, 1)
            mean, var = q_posterior(x0, x_t, t, schedule)
            if variance == "beta":
                var = schedule.gather(schedule.betas, t, x_t)
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator)
            return mean + (t > 0).float().reshape(-1, 1, 1, 1) * var.sqrt() * noise
    '''), "'bool' object has no attribute 'float'"),
    Mistake("sample_ignores_x_T", "sample", ("sample_honours_its_options",),
            "always starts from fresh noise: x_T is ignored",
            _edit(SAMPLE, "x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T",
                  "x = torch.randn(tuple(shape), generator=generator)"),
            "start the chain from x_T"),
    Mistake("sample_drops_its_options", "sample", ("sample_honours_its_options",),
            "never passes clip_x0 and variance on to p_sample",
            _edit(SAMPLE, _SAMPLE_STEP,
                  "x = p_sample(model, x, t, schedule, generator=generator)"),
            "pass clip_x0=clip_x0 and variance=variance on"),
    Mistake("sample_steps_without_generator", "sample", ("sample_uses_only_its_generator",),
            "draws x_T from the generator but never passes it on to p_sample",
            _edit(SAMPLE, _SAMPLE_STEP,
                  "x = p_sample(model, x, t, schedule, clip_x0=clip_x0, variance=variance)"),
            "global random state"),
    Mistake("sample_writes_into_x_T", "sample", ("sample_honours_its_options",),
            "updates x in place with x.copy_(…), and x is the caller's x_T",
            _edit(SAMPLE, "        x = p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, "
                  "variance=variance)",
                  "        x.copy_(p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, "
                  "variance=variance))"),
            "changed its input in place"),
    # lesson 6
    Mistake("reconstruct_t_start_or_T", "reconstruct", ("reconstruct_edge_t_start",),
            "t_start = t_start or T − 1: the valid start t_start = 0 becomes plain generation",
            _edit(RECONSTRUCT, "    if noise is None:\n",
                  "    t_start = t_start or schedule.T - 1\n    if noise is None:\n"),
            "t_start = 0 is a valid start"),
    Mistake("reconstruct_drops_its_options", "reconstruct", ("reconstruct_honours_its_options",),
            "never passes clip_x0 and variance on to p_sample",
            _edit(RECONSTRUCT, "x = p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, "
                  "variance=variance)", "x = p_sample(model, x, t, schedule, generator=generator)"),
            "pass clip_x0=clip_x0 and variance=variance on"),
    Mistake("reconstruct_steps_without_generator", "reconstruct", ("reconstruct_uses_only_its_generator",),
            "draws the noise from the generator but never passes it on to p_sample",
            _edit(RECONSTRUCT, "x = p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, "
                  "variance=variance)", "x = p_sample(model, x, t, schedule, clip_x0=clip_x0, variance=variance)"),
            "global random state"),
    Mistake("psnr_mean_over_channels", "psnr", ("psnr_channels_differ",),
            "one PSNR per channel, averaged: not the PSNR of the image",
            _src('''
        def psnr(x, y):
            a, b = (x.double() + 1) / 2, (y.double() + 1) / 2
            mse = ((a - b) ** 2).mean(dim=(2, 3))  # [B, C]
            return float((10 * torch.log10(1.0 / mse)).mean())
    '''), "PSNR averaged over channels"),
    Mistake("psnr_maps_in_place", "psnr", ("psnr_batch_mean", "psnr_channels_differ", "psnr_identical_is_inf",
                                           "psnr_known_noise"),
            "maps [−1, 1] to [0, 1] in place on the caller's images",
            _src('''
        def psnr(x, y):
            a, b = x.add_(1).div_(2).double(), y.add_(1).div_(2).double()
            mse = ((a - b) ** 2).flatten(1).mean(dim=1)
            return float((10 * torch.log10(1.0 / mse)).mean())
    '''), "changed its input in place"),
    Mistake("ssim_maps_in_place", "ssim", ("ssim_channels_differ", "ssim_identical_is_one", "ssim_matches_skimage"),
            "maps [−1, 1] to [0, 1] in place on the caller's images",
            _src('''
        from skimage.metrics import structural_similarity


        def ssim(x, y):
            a, b = x.add_(1).div_(2).double().numpy(), y.add_(1).div_(2).double().numpy()
            return float(np.mean([structural_similarity(a[i], b[i], data_range=1.0, channel_axis=0)
                                  for i in range(len(a))]))
    '''), "changed its input in place"),
    # lesson 7
    Mistake("ddim_sample_drops_eta", "ddim_sample", ("ddim_sample_honours_its_options",),
            "never passes eta on to ddim_step: every chain is deterministic",
            _edit(DDIM_SAMPLE, _DDIM_CALL,
                  "ddim_step(model, x, t, t_prev, schedule, clip_x0=clip_x0, generator=generator)"),
            "pass eta=eta"),
    Mistake("ddim_sample_drops_clip_x0", "ddim_sample", ("ddim_sample_honours_its_options",),
            "never passes clip_x0 on to ddim_step",
            _edit(DDIM_SAMPLE, _DDIM_CALL,
                  "ddim_step(model, x, t, t_prev, schedule, eta=eta, generator=generator)"),
            "pass clip_x0=clip_x0 on"),
    Mistake("ddim_sample_steps_without_generator", "ddim_sample", ("ddim_sample_uses_only_its_generator",),
            "draws x_T from the generator but never passes it on to ddim_step",
            _edit(DDIM_SAMPLE, _DDIM_CALL,
                  "ddim_step(model, x, t, t_prev, schedule, eta=eta, clip_x0=clip_x0)"),
            "global random state"),
    Mistake("ddim_sample_writes_into_x_T", "ddim_sample", ("ddim_sample_deterministic_chain",
                                                           "ddim_sample_honours_its_options"),
            "updates x in place with x.copy_(…), and x is the caller's x_T",
            _edit(DDIM_SAMPLE, "        x = ddim_step(model, x, t, t_prev, schedule, eta=eta, clip_x0=clip_x0, "
                  "generator=generator)",
                  "        x.copy_(ddim_step(model, x, t, t_prev, schedule, eta=eta, clip_x0=clip_x0, "
                  "generator=generator))"),
            "changed its input in place"),
    Mistake("ddim_step_noise_randn_like", "ddim_step", ("ddim_step_fresh_noise", "ddim_step_uses_only_its_generator"),
            "draws z with torch.randn_like(x_t), ignoring the generator",
            _edit(DDIM_STEP, "noise = torch.randn(x_t.shape, generator=generator)", "noise = torch.randn_like(x_t)"),
            "generator"),
    # lesson 8
    Mistake("label_embedding_squeezes_the_batch", "LabelEmbedding", ("LabelEmbedding_one_label",),
            "squeezes the output: one label loses its batch dimension",
            _edit(LABEL_EMBEDDING, "return self.embedding(labels)", "return self.embedding(labels).squeeze()"),
            "no .squeeze()"),
    Mistake("drop_labels_exactly_round_p_b", "drop_labels", ("drop_labels_small_batches",),
            "drops exactly round(p·B) labels per batch: a batch of 8 at p = 0.1 always drops one",
            _src('''
        def drop_labels(labels, p_uncond, null_label, *, generator=None):
            k = round(p_uncond * labels.shape[0])
            idx = torch.randperm(labels.shape[0], generator=generator)[:k]
            out = labels.clone()
            out[idx] = null_label
            return out
    '''), "not a fixed number round(p·B) per batch"),
    Mistake("drop_labels_bernoulli_without_generator", "drop_labels", ("drop_labels_uses_only_its_generator",
                                                                       "drop_labels_uses_the_generator"),
            "torch.bernoulli without the generator: the drops come from the global random state",
            _src('''
        def drop_labels(labels, p_uncond, null_label, *, generator=None):
            mask = torch.bernoulli(torch.full(labels.shape, float(p_uncond))).bool()
            return labels.masked_fill(mask, null_label)
    '''), "generator"),
    Mistake("guided_eps_null_label_or_default", "guided_eps", ("guided_eps_null_label_zero",),
            "null_label or model.num_classes: the valid null label 0 is replaced by the default",
            _edit(GUIDED_EPS, "    if null_label is None:\n        null_label = model.num_classes\n",
                  "    null_label = null_label or model.num_classes\n"),
            "null_label = 0 was replaced by model.num_classes"),
    Mistake("cfg_sample_drops_null_label", "cfg_sample", ("cfg_sample_honours_its_options",),
            "never passes null_label on to guided_eps",
            _edit(CFG_SAMPLE, "eps = guided_eps(model, x, t, labels, w, null_label=null_label)",
                  "eps = guided_eps(model, x, t, labels, w)"),
            "pass null_label=null_label on"),
    Mistake("cfg_sample_writes_into_x_T", "cfg_sample", ("cfg_sample_guides_the_noise_estimate",
                                                         "cfg_sample_honours_its_options"),
            "updates x in place with x.copy_(…), and x is the caller's x_T",
            _edit(CFG_SAMPLE, "        x = mean + (var.sqrt() * noise if step > 0 else 0)\n",
                  "        x.copy_(mean + (var.sqrt() * noise if step > 0 else 0))\n"),
            "changed its input in place"),
    Mistake("cfg_sample_noise_randn_like", "cfg_sample", ("cfg_sample_starts_from_noise",
                                                          "cfg_sample_uses_only_its_generator"),
            "draws each step's noise with torch.randn_like(x), ignoring the generator",
            _edit(CFG_SAMPLE, "        noise = torch.randn(x.shape, generator=generator)\n",
                  "        noise = torch.randn_like(x)\n"),
            "global random state"),
    # lesson 9
    Mistake("flow_loss_t_or_random", "flow_matching_loss", ("flow_matching_loss_t_zero_and_one_image",),
            "t = t if t else torch.rand(…): the valid time t = 0.0 is replaced by a random one",
            _edit(FLOW_LOSS, "    if t is None:\n", "    if t is None or (isinstance(t, float) and not t):\n"),
            "0.0 included"),
    Mistake("flow_loss_noise_randn_like", "flow_matching_loss", ("flow_matching_loss_draws_t_and_noise",
                                                                 "flow_matching_loss_uses_only_its_generator"),
            "draws ε with torch.randn_like(x0), ignoring the generator",
            _edit(FLOW_LOSS, "noise = torch.randn(x0.shape, generator=generator)", "noise = torch.randn_like(x0)"),
            "generator"),
    Mistake("flow_euler_writes_into_x1", "euler_sample", ("euler_sample_few_steps_match_the_exact_recursion",
                                                          "euler_sample_generator_and_one_step",
                                                          "euler_sample_steps"),
            "steps x in place (x += …) with x the caller's x1",
            _src('''
        from ddpm_ref.flow import TIME_SCALE


        @torch.no_grad()
        def euler_sample(model, shape, *, steps=50, generator=None, device=None, x1=None, progress=True):
            x = torch.randn(tuple(shape), generator=generator) if x1 is None else x1
            for i in range(steps):
                t, t_next = 1 - i / steps, 1 - (i + 1) / steps
                x += (t_next - t) * model(x, torch.full((x.shape[0],), TIME_SCALE * t))
            return x
    '''), "changed its input in place"),
    Mistake("flow_heun_noise_without_generator", "heun_sample", ("heun_sample_generator_and_one_step",),
            "draws x1 with torch.randn(shape), ignoring the generator",
            _edit(HEUN_SAMPLE, "torch.randn(tuple(shape), generator=generator)", "torch.randn(tuple(shape))"),
            "global random state"),
]

ALTERNATIVES += [
    Alternative("noise_schedule_clones_betas", "NoiseSchedule", "a float64 copy of β, then the tables in place on it",
                _edit(_edit(NOISE_SCHEDULE, "betas = torch.as_tensor(betas, dtype=torch.float64)",
                            "betas = torch.tensor(betas, dtype=torch.float64) if not torch.is_tensor(betas) else "
                            "betas.detach().to(torch.float64, copy=True)"),
                      "self.alphas = 1.0 - betas", "self.alphas = betas.clone().neg_().add_(1.0)")),
    Alternative("predict_x0_as_tensor_t", "predict_x0", "torch.as_tensor(t) broadcast by hand, in float64", _src('''
        def predict_x0(x_t, t, eps, schedule):
            t = torch.as_tensor(t).reshape(-1)
            ab = schedule.alpha_bars[t].reshape(-1, *([1] * (x_t.dim() - 1)))
            return ((x_t.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()).to(x_t.dtype)
    ''')),
    Alternative("ddpm_loss_int_t_filled", "ddpm_loss", "an int t made into a batch with torch.full, t from randint(T)",
                _src('''
        def ddpm_loss(model, x0, schedule, *, t=None, noise=None, generator=None):
            b = x0.shape[0]
            if t is None:
                t = torch.randint(schedule.T, (b,), generator=generator)
            elif isinstance(t, int):
                t = torch.full((b,), t, dtype=torch.long)
            noise = torch.randn(x0.shape, generator=generator) if noise is None else noise
            ab = schedule.alpha_bars.to(x0.dtype)[t].view(b, 1, 1, 1)
            return F.mse_loss(model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t), noise)
    ''')),
    Alternative("sample_clones_then_updates_in_place", "sample", "x_T cloned, then each step copied into x",
                _edit(_edit(SAMPLE, "x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T",
                            "x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T.clone()"),
                      "        x = p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, "
                      "variance=variance)",
                      "        x.copy_(p_sample(model, x, t, schedule, generator=generator, clip_x0=clip_x0, "
                      "variance=variance))")),
    Alternative("reconstruct_while_loop", "reconstruct", "a while loop from t_start down to 0, the options as a dict",
                _src('''
        from ddpm_ref import p_sample, q_sample


        @torch.no_grad()
        def reconstruct(model, x0, t_start, schedule, *, generator=None, noise=None, clip_x0=True, variance="posterior",
                        progress=False, return_noised=False):
            opts = {"generator": generator, "clip_x0": clip_x0, "variance": variance}
            eps = noise if noise is not None else torch.randn(x0.shape, generator=generator)
            x = x_start = q_sample(x0, t_start, eps, schedule)
            t = t_start
            while t >= 0:
                x = p_sample(model, x, t, schedule, **opts)
                t -= 1
            return (x, x_start) if return_noised else x
    ''')),
    Alternative("psnr_mse_per_image", "psnr", "the MSE per image with torch.mean over (1, 2, 3)", _src('''
        def psnr(x, y):
            mse = torch.mean(((x - y).double() / 2) ** 2, dim=(1, 2, 3))
            return float(torch.mean(-10 * torch.log10(mse)))
    ''')),
    Alternative("ddim_sample_clones_x_T", "ddim_sample", "x_T cloned, then each step copied into x",
                _edit(_edit(DDIM_SAMPLE, "x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T",
                            "x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T.clone()"),
                      "        x = ddim_step(model, x, t, t_prev, schedule, eta=eta, clip_x0=clip_x0, "
                      "generator=generator)",
                      "        x.copy_(ddim_step(model, x, t, t_prev, schedule, eta=eta, clip_x0=clip_x0, "
                      "generator=generator))")),
    Alternative("drop_labels_uniform_threshold", "drop_labels", "torch.rand(..., generator=...) compared by hand, "
                "index assignment on a copy", _src('''
        def drop_labels(labels, p_uncond, null_label, *, generator=None):
            out = labels.detach().clone()
            out[torch.rand(len(labels), generator=generator) < p_uncond] = null_label
            return out
    ''')),
    Alternative("guided_eps_explicit_none", "guided_eps", "∅ chosen with a conditional expression on `is None`",
                _src('''
        def guided_eps(model, x_t, t, labels, w, *, null_label=None):
            null = model.num_classes if null_label is None else null_label
            t = torch.as_tensor(t).reshape(-1).expand(x_t.shape[0])
            both = model(torch.cat([x_t, x_t]), torch.cat([t, t]),
                         torch.cat([labels, torch.full_like(labels, null)]))
            cond, uncond = both[: x_t.shape[0]], both[x_t.shape[0]:]
            return uncond + w * (cond - uncond)
    ''')),
    Alternative("cfg_sample_clones_x_T", "cfg_sample", "x_T cloned, each step written into x in place",
                _edit(_edit(CFG_SAMPLE, "x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T",
                            "x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T.clone()"),
                      "        x = mean + (var.sqrt() * noise if step > 0 else 0)\n",
                      "        x.copy_(mean + (var.sqrt() * noise if step > 0 else 0))\n")),
    Alternative("flow_loss_tensor_t", "flow_matching_loss", "any t made a [B] tensor with torch.full, then lerp",
                _src('''
        def flow_matching_loss(model, x0, *, t=None, noise=None, generator=None):
            b = x0.shape[0]
            if t is None:
                t = torch.rand(b, generator=generator)
            elif not torch.is_tensor(t):
                t = torch.full((b,), float(t))
            eps = noise if noise is not None else torch.randn(x0.shape, generator=generator)
            x_t = torch.lerp(x0, eps, t.float().reshape(-1, 1, 1, 1).expand_as(x0))
            return F.mse_loss(model(x_t, 1000 * t.float()), eps - x0)
    ''')),
]


# ------------------------------------------------------------------------------------------------ lesson 10
# scores, Langevin and the SDE view: a score model is model(x, t) with 0-based t; the samplers use the β of each jump

SCORE_FROM_EPS = _src('''
    def score_from_eps(eps, t, schedule):
        sigma = schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, eps)
        return -eps / sigma
''')

DSM_LOSS = _src('''
    from ddpm_ref import q_sample


    def dsm_loss(model, x0, schedule, *, t=None, noise=None, generator=None):
        if t is None:
            t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator)
        x_t = q_sample(x0, t, noise, schedule)
        sigma = schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, x0)
        target = -noise / sigma
        weight = sigma**2
        return (weight * (model(x_t, t) - target) ** 2).mean()
''')

LANGEVIN = _src('''
    @torch.no_grad()
    def langevin_sample(score_fn, x, *, step_size, steps, generator=None):
        for _ in range(steps):
            z = torch.randn(x.shape, generator=generator)
            x = x + step_size / 2 * score_fn(x) + math.sqrt(step_size) * z
        return x
''')

REVERSE_SDE = _src('''
    from ddpm_ref import ddim_timesteps


    @torch.no_grad()
    def reverse_sde_sample(model, schedule, shape, *, steps=None, generator=None, device=None, x_T=None,
                           progress=True):
        x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T
        ts = ddim_timesteps(schedule.T, schedule.T if steps is None else steps)
        for i, t in enumerate(ts):
            ab_next = schedule.alpha_bars[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
            beta = 1 - schedule.alpha_bars[t].item() / ab_next
            score = model(x, torch.full((x.shape[0],), t))
            x = x + beta * (0.5 * x + score)
            if i + 1 < len(ts):
                x = x + math.sqrt(beta) * torch.randn(x.shape, generator=generator)
        return x
''')

#: the probability-flow ODE is the reverse SDE's loop with half the score and no noise
PROBABILITY_FLOW = _edit(_edit(
    REVERSE_SDE,
    "reverse_sde_sample(model, schedule, shape, *, steps=None, generator=None, device=None, x_T=None,\n"
    "                       progress=True):",
    "probability_flow_sample(model, schedule, shape, *, steps=None, generator=None, device=None, x_T=None,\n"
    "                            progress=True):"),
    "        x = x + beta * (0.5 * x + score)\n"
    "        if i + 1 < len(ts):\n"
    "            x = x + math.sqrt(beta) * torch.randn(x.shape, generator=generator)\n",
    "        x = x + 0.5 * beta * (x + score)\n")

_L10: list[tuple[str, str, str, str, str]] = [
    # (name, exercise, description, source, feedback)
    ("score_sign_flipped", "score_from_eps", "returns +ε/√(1 − ᾱ_t): the score points away from the data",
     _edit(SCORE_FROM_EPS, "return -eps / sigma", "return eps / sigma"), "wrong sign"),
    ("score_divides_by_variance", "score_from_eps", "divides by 1 − ᾱ_t instead of its square root",
     _edit(SCORE_FROM_EPS, "schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, eps)",
           "schedule.gather(1 - schedule.alpha_bars, t, eps)"), "not by its variance"),
    ("score_alpha_instead_of_alpha_bar", "score_from_eps", "uses √(1 − α_t), the one-step noise, not √(1 − ᾱ_t)",
     _edit(SCORE_FROM_EPS, "schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, eps)",
           "schedule.gather((1 - schedule.alphas).sqrt(), t, eps)"), "you used α_t"),
    ("score_alpha_bar_prev", "score_from_eps", "uses ᾱ_{t−1} (alpha_bars_prev): t read as 1-based",
     _edit(SCORE_FROM_EPS, "schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, eps)",
           "schedule.gather((1 - schedule.alpha_bars_prev).sqrt(), t, eps)"), "alpha_bars_prev"),
    ("score_multiplies_by_sigma", "score_from_eps", "returns −√(1 − ᾱ_t)·ε: the inverse map (score to ε) by mistake",
     _edit(SCORE_FROM_EPS, "return -eps / sigma", "return -eps * sigma"), "do not multiply"),
    ("score_float64_table", "score_from_eps", "indexes the float64 table by hand: the score comes back in float64",
     _src('''
        def score_from_eps(eps, t, schedule):
            t = torch.as_tensor(t).reshape(-1)
            sigma = (1 - schedule.alpha_bars[t]).sqrt().reshape(-1, *([1] * (eps.ndim - 1)))
            return -eps / sigma
    '''), "float64"),
    ("dsm_no_weighting", "dsm_loss", "regresses the score with no weight λ(t) = 1 − ᾱ_t",
     _edit(DSM_LOSS, "weight = sigma**2", "weight = 1.0"), "weighting λ(t) = 1 − ᾱ_t is missing"),
    ("dsm_weight_sigma", "dsm_loss", "weights by √(1 − ᾱ_t) instead of 1 − ᾱ_t",
     _edit(DSM_LOSS, "weight = sigma**2", "weight = sigma"), "not √(1 − ᾱ_t)"),
    ("dsm_target_sign_flipped", "dsm_loss", "regresses +ε/√(1 − ᾱ_t): the target points away from the data",
     _edit(DSM_LOSS, "target = -noise / sigma", "target = noise / sigma"), "the target has the wrong sign"),
    ("dsm_target_over_variance", "dsm_loss", "target −ε/(1 − ᾱ_t): divides by the variance",
     _edit(DSM_LOSS, "target = -noise / sigma", "target = -noise / sigma**2"), "not −ε/(1 − ᾱ_t)"),
    ("dsm_t_one_based", "dsm_loss", "draws t from {1, …, T − 1}: the timestep 0 is never trained",
     _edit(DSM_LOSS, "torch.randint(0, schedule.T,", "torch.randint(1, schedule.T,"), "0-based"),
    ("dsm_noise_randn_like", "dsm_loss", "draws ε with torch.randn_like(x0), ignoring the generator",
     _edit(DSM_LOSS, "noise = torch.randn(x0.shape, generator=generator)", "noise = torch.randn_like(x0)"),
     "generator"),
    ("dsm_t_zero_redrawn", "dsm_loss", "`if not t`: the valid int t = 0 is replaced by random timesteps",
     _edit(DSM_LOSS, "    if t is None:\n", "    if t is None or (isinstance(t, int) and not t):\n"), "0 included"),
    ("langevin_full_step_drift", "langevin_sample", "drift δ·∇log p instead of (δ/2)·∇log p",
     _edit(LANGEVIN, "step_size / 2 * score_fn(x)", "step_size * score_fn(x)"), "half the step size"),
    ("langevin_noise_delta", "langevin_sample", "noise δ·z instead of √δ·z",
     _edit(LANGEVIN, "math.sqrt(step_size) * z", "step_size * z"), "not δ·z"),
    ("langevin_descends", "langevin_sample", "x − (δ/2)·∇log p: walks down the log-density",
     _edit(LANGEVIN, "x = x + step_size / 2 * score_fn(x)", "x = x - step_size / 2 * score_fn(x)"), "wrong sign"),
    ("langevin_no_noise", "langevin_sample", "no noise: plain gradient ascent on log p, every point falls on a mode",
     _edit(LANGEVIN, "x = x + step_size / 2 * score_fn(x) + math.sqrt(step_size) * z",
           "x = x + step_size / 2 * score_fn(x)"), "every step adds noise"),
    ("langevin_noise_randn_like", "langevin_sample", "draws z with torch.randn_like(x), ignoring the generator",
     _edit(LANGEVIN, "z = torch.randn(x.shape, generator=generator)", "z = torch.randn_like(x)"),
     "global random state"),
    ("langevin_steps_or_default", "langevin_sample", "`steps or 100`: the valid steps = 0 runs 100 steps",
     _edit(LANGEVIN, "for _ in range(steps):", "for _ in range(steps or 100):"), "0 included"),
    ("langevin_writes_into_x", "langevin_sample", "updates x in place (x += …), and x is the caller's tensor",
     _edit(LANGEVIN, "x = x + step_size / 2 * score_fn(x) + math.sqrt(step_size) * z",
           "x += step_size / 2 * score_fn(x) + math.sqrt(step_size) * z"), "changed its input in place"),
    ("sde_ode_score_coefficient", "reverse_sde_sample", "drift (β/2)·(x + s): the ODE's score coefficient in the SDE",
     _edit(REVERSE_SDE, "x = x + beta * (0.5 * x + score)", "x = x + 0.5 * beta * (x + score)"),
     "the score has the full coefficient β"),
    ("sde_noise_at_last_step", "reverse_sde_sample", "adds noise at the last step (t = 0) as well",
     _edit(REVERSE_SDE, "        if i + 1 < len(ts):\n            x = x + math",
           "        if True:\n            x = x + math"), "adds no noise"),
    ("sde_noise_beta", "reverse_sde_sample", "noise β·z instead of √β·z",
     _edit(REVERSE_SDE, "x = x + math.sqrt(beta) * torch.randn", "x = x + beta * torch.randn"), "not β·z"),
    ("sde_forward_drift", "reverse_sde_sample", "drift β·(−x/2 + s): the forward SDE's −β·x/2 kept in the reverse",
     _edit(REVERSE_SDE, "x = x + beta * (0.5 * x + score)", "x = x + beta * (-0.5 * x + score)"),
     "the reverse drift is +β·x/2"),
    ("sde_beta_t_for_jumps", "reverse_sde_sample", "uses β_t for a jump over several timesteps",
     _edit(REVERSE_SDE, "beta = 1 - schedule.alpha_bars[t].item() / ab_next", "beta = schedule.betas[t].item()"),
     "not β_t"),
    ("sde_stops_at_one", "reverse_sde_sample", "loops over t = T − 1, …, 1 and never takes the step at t = 0",
     _edit(REVERSE_SDE, "    for i, t in enumerate(ts):\n",
           "    ts = ts[:-1]\n    for i, t in enumerate(ts):\n"), "ends with the step at t = 0"),
    ("sde_noise_randn_like", "reverse_sde_sample", "draws each step's z with torch.randn_like(x)",
     _edit(REVERSE_SDE, "torch.randn(x.shape, generator=generator)", "torch.randn_like(x)"),
     "global random state"),
    ("ode_full_score_coefficient", "probability_flow_sample", "x + (β/2)·x + β·s: the SDE's score coefficient",
     _edit(PROBABILITY_FLOW, "x = x + 0.5 * beta * (x + score)", "x = x + 0.5 * beta * x + beta * score"),
     "half the SDE's score coefficient"),
    ("ode_adds_noise", "probability_flow_sample", "adds √β·z at every step as the SDE does: not deterministic",
     _edit(PROBABILITY_FLOW, "x = x + 0.5 * beta * (x + score)\n",
           "x = x + 0.5 * beta * (x + score) + math.sqrt(beta) * torch.randn(x.shape, generator=generator)\n"),
     "deterministic"),
    ("ode_forward_drift", "probability_flow_sample", "x + (β/2)·(−x + s): the forward drift's sign",
     _edit(PROBABILITY_FLOW, "x = x + 0.5 * beta * (x + score)", "x = x + 0.5 * beta * (-x + score)"),
     "the reverse drift is +(β/2)·x"),
    ("ode_score_sign", "probability_flow_sample", "x + (β/2)·(x − s): moves down the log-density",
     _edit(PROBABILITY_FLOW, "x = x + 0.5 * beta * (x + score)", "x = x + 0.5 * beta * (x - score)"),
     "wrong sign of the score"),
    ("ode_beta_t_for_jumps", "probability_flow_sample", "uses β_t for a jump over several timesteps",
     _edit(PROBABILITY_FLOW, "beta = 1 - schedule.alpha_bars[t].item() / ab_next", "beta = schedule.betas[t].item()"),
     "not β_t"),
    ("ode_start_without_generator", "probability_flow_sample", "draws x_T with torch.randn(shape), ignoring the "
     "generator",
     _edit(PROBABILITY_FLOW, "torch.randn(tuple(shape), generator=generator)", "torch.randn(tuple(shape))"),
     "global random state"),
]

#: the checks each lesson-10 mistake breaks (every other check of its exercise passes)
_L10_BREAKS: dict[str, tuple[str, ...]] = {
    "score_sign_flipped": (
        "score_from_eps_edge_timesteps", "score_from_eps_images_and_int_t",
        "score_from_eps_is_the_gradient_of_the_log_density", "score_from_eps_values",
    ),
    "score_divides_by_variance": (
        "score_from_eps_edge_timesteps", "score_from_eps_images_and_int_t",
        "score_from_eps_is_the_gradient_of_the_log_density", "score_from_eps_values",
    ),
    "score_alpha_instead_of_alpha_bar": (
        "score_from_eps_edge_timesteps", "score_from_eps_images_and_int_t",
        "score_from_eps_is_the_gradient_of_the_log_density", "score_from_eps_values",
    ),
    "score_alpha_bar_prev": (
        "score_from_eps_edge_timesteps", "score_from_eps_images_and_int_t",
        "score_from_eps_is_the_gradient_of_the_log_density", "score_from_eps_values",
    ),
    "score_multiplies_by_sigma": (
        "score_from_eps_edge_timesteps", "score_from_eps_images_and_int_t",
        "score_from_eps_is_the_gradient_of_the_log_density", "score_from_eps_values",
    ),
    "score_float64_table": (
        "score_from_eps_edge_timesteps", "score_from_eps_images_and_int_t", "score_from_eps_values",
    ),
    "dsm_no_weighting": (
        "dsm_loss_draws_t_and_noise", "dsm_loss_int_t_zero_and_one_point",
        "dsm_loss_of_a_score_is_the_ddpm_loss_of_its_noise", "dsm_loss_value",
    ),
    "dsm_weight_sigma": (
        "dsm_loss_draws_t_and_noise", "dsm_loss_int_t_zero_and_one_point",
        "dsm_loss_of_a_score_is_the_ddpm_loss_of_its_noise", "dsm_loss_value",
    ),
    "dsm_target_sign_flipped": (
        "dsm_loss_int_t_zero_and_one_point", "dsm_loss_of_a_score_is_the_ddpm_loss_of_its_noise", "dsm_loss_value",
    ),
    "dsm_target_over_variance": (
        "dsm_loss_draws_t_and_noise", "dsm_loss_int_t_zero_and_one_point",
        "dsm_loss_of_a_score_is_the_ddpm_loss_of_its_noise", "dsm_loss_value",
    ),
    "dsm_t_one_based": (
        "dsm_loss_draws_t_and_noise",
    ),
    "dsm_noise_randn_like": (
        "dsm_loss_draws_t_and_noise", "dsm_loss_uses_only_its_generator",
    ),
    "dsm_t_zero_redrawn": (
        "dsm_loss_int_t_zero_and_one_point",
    ),
    "langevin_full_step_drift": (
        "langevin_sample_exact_chain_few_steps", "langevin_sample_gaussian_stationary_law",
        "langevin_sample_mixture_modes", "langevin_sample_one_step", "langevin_sample_overlapping_mixture_weights",
    ),
    "langevin_noise_delta": (
        "langevin_sample_exact_chain_few_steps", "langevin_sample_gaussian_stationary_law",
        "langevin_sample_mixture_modes", "langevin_sample_one_step", "langevin_sample_overlapping_mixture_weights",
    ),
    "langevin_descends": (
        "langevin_sample_exact_chain_few_steps", "langevin_sample_gaussian_stationary_law",
        "langevin_sample_mixture_modes", "langevin_sample_one_step", "langevin_sample_overlapping_mixture_weights",
    ),
    "langevin_no_noise": (
        "langevin_sample_exact_chain_few_steps", "langevin_sample_gaussian_stationary_law",
        "langevin_sample_mixture_modes", "langevin_sample_one_step", "langevin_sample_overlapping_mixture_weights",
        "langevin_sample_uses_only_its_generator",
    ),
    "langevin_noise_randn_like": (
        "langevin_sample_uses_only_its_generator",
    ),
    "langevin_steps_or_default": (
        "langevin_sample_zero_steps_and_one_point",
    ),
    "langevin_writes_into_x": (
        "langevin_sample_exact_chain_few_steps", "langevin_sample_gaussian_stationary_law",
        "langevin_sample_mixture_modes", "langevin_sample_one_step", "langevin_sample_overlapping_mixture_weights",
        "langevin_sample_uses_only_its_generator",
    ),
    "sde_ode_score_coefficient": (
        "reverse_sde_sample_gaussian_moments", "reverse_sde_sample_honours_steps", "reverse_sde_sample_mixture",
        "reverse_sde_sample_steps",
    ),
    "sde_noise_at_last_step": (
        "reverse_sde_sample_honours_steps", "reverse_sde_sample_steps",
    ),
    "sde_noise_beta": (
        "reverse_sde_sample_gaussian_moments", "reverse_sde_sample_honours_steps", "reverse_sde_sample_mixture",
        "reverse_sde_sample_steps",
    ),
    "sde_forward_drift": (
        "reverse_sde_sample_gaussian_moments", "reverse_sde_sample_honours_steps", "reverse_sde_sample_mixture",
        "reverse_sde_sample_steps",
    ),
    "sde_beta_t_for_jumps": (
        "reverse_sde_sample_honours_steps",
    ),
    "sde_stops_at_one": (
        "reverse_sde_sample_calls_every_timestep", "reverse_sde_sample_honours_steps", "reverse_sde_sample_steps",
    ),
    "sde_noise_randn_like": (
        "reverse_sde_sample_uses_only_its_generator",
    ),
    "ode_full_score_coefficient": (
        "probability_flow_sample_converges_to_ddim", "probability_flow_sample_gaussian_affine_map",
        "probability_flow_sample_honours_steps", "probability_flow_sample_mixture", "probability_flow_sample_steps",
    ),
    "ode_adds_noise": (
        "probability_flow_sample_converges_to_ddim", "probability_flow_sample_gaussian_affine_map",
        "probability_flow_sample_honours_steps", "probability_flow_sample_mixture", "probability_flow_sample_steps",
    ),
    "ode_forward_drift": (
        "probability_flow_sample_converges_to_ddim", "probability_flow_sample_gaussian_affine_map",
        "probability_flow_sample_honours_steps", "probability_flow_sample_mixture", "probability_flow_sample_steps",
    ),
    "ode_score_sign": (
        "probability_flow_sample_converges_to_ddim", "probability_flow_sample_gaussian_affine_map",
        "probability_flow_sample_honours_steps", "probability_flow_sample_mixture", "probability_flow_sample_steps",
    ),
    "ode_beta_t_for_jumps": (
        "probability_flow_sample_converges_to_ddim", "probability_flow_sample_gaussian_affine_map",
        "probability_flow_sample_honours_steps",
    ),
    "ode_start_without_generator": (
        "probability_flow_sample_uses_only_its_generator",
    ),
}

MISTAKES += [Mistake(name, exercise, _L10_BREAKS[name], description, source, feedback)
             for name, exercise, description, source, feedback in _L10]

ALTERNATIVES += [
    Alternative("score_from_eps_student", "score_from_eps", "the lesson's two lines", SCORE_FROM_EPS),
    Alternative("score_from_eps_rsqrt", "score_from_eps", "ᾱ indexed by hand in eps's dtype, torch.rsqrt", _src('''
        def score_from_eps(eps, t, schedule):
            ab = schedule.alpha_bars.to(eps.dtype)[torch.as_tensor(t).reshape(-1)]
            return -eps * torch.rsqrt(1 - ab).reshape(-1, *([1] * (eps.dim() - 1)))
    ''')),
    Alternative("dsm_loss_student", "dsm_loss", "the lesson's loss", DSM_LOSS),
    Alternative("dsm_loss_eps_form", "dsm_loss", "(1 − ᾱ)·(s + ε/σ)² written as (σ·s + ε)², ᾱ indexed by hand",
                _src('''
        def dsm_loss(model, x0, schedule, *, t=None, noise=None, generator=None):
            b = x0.shape[0]
            if t is None:
                t = torch.randint(schedule.T, (b,), generator=generator)
            t = torch.as_tensor(t).reshape(-1).expand(b)
            eps = torch.randn(x0.shape, generator=generator) if noise is None else noise
            ab = schedule.alpha_bars.float()[t].view(b, *([1] * (x0.dim() - 1)))
            sigma = (1 - ab).sqrt()
            x_t = ab.sqrt() * x0 + sigma * eps
            return ((sigma * model(x_t, t) + eps) ** 2).mean()
    ''')),
    Alternative("langevin_student", "langevin_sample", "the lesson's loop", LANGEVIN),
    Alternative("langevin_normal_on_a_copy", "langevin_sample", "torch.normal with std √δ, in place on a clone",
                _src('''
        @torch.no_grad()
        def langevin_sample(score_fn, x, *, step_size, steps, generator=None):
            x = x.clone()
            for _ in range(steps):
                drift = 0.5 * step_size * score_fn(x)
                x.add_(drift).add_(torch.normal(0.0, step_size**0.5, size=x.shape, generator=generator))
            return x
    ''')),
    Alternative("reverse_sde_student", "reverse_sde_sample", "the lesson's loop", REVERSE_SDE),
    Alternative("reverse_sde_padded_alpha_bars", "reverse_sde_sample", "ᾱ padded with a 1 for t = −1, pairs of "
                "timesteps zipped, a while-free loop with the noise drawn first", _src('''
        from ddpm_ref import ddim_timesteps


        @torch.no_grad()
        def reverse_sde_sample(model, schedule, shape, *, steps=None, generator=None, device=None, x_T=None,
                               progress=True):
            x = x_T.clone() if x_T is not None else torch.randn(*shape, generator=generator)
            ab = torch.cat([schedule.alpha_bars, torch.ones(1, dtype=schedule.alpha_bars.dtype)])  # ab[-1] = 1
            ts = ddim_timesteps(schedule.T, steps or schedule.T)
            for t, t_next in zip(ts, ts[1:] + [-1]):
                beta = float(1 - ab[t] / ab[t_next])
                z = torch.randn(x.shape, generator=generator) if t_next >= 0 else torch.zeros_like(x)
                s = model(x, torch.tensor([t] * x.shape[0]))
                x = (1 + beta / 2) * x + beta * s + beta**0.5 * z
            return x
    ''')),
    Alternative("probability_flow_student", "probability_flow_sample", "the lesson's loop", PROBABILITY_FLOW),
    Alternative("probability_flow_alpha_bar_ratio", "probability_flow_sample", "the jump's β as 1 − ᾱ_t/ᾱ_next "
                "with ᾱ_−1 = 1 from a helper, the score model called on a long t, the loop over an index", _src('''
        from ddpm_ref import ddim_timesteps


        @torch.no_grad()
        def probability_flow_sample(model, schedule, shape, *, steps=None, generator=None, device=None, x_T=None,
                                    progress=True):
            def alpha_bar(t):
                return 1.0 if t < 0 else schedule.alpha_bars[t].item()

            visited = ddim_timesteps(schedule.T, steps or schedule.T) + [-1]
            x = torch.randn(*shape, generator=generator) if x_T is None else x_T
            for k in range(len(visited) - 1):
                jump = 1.0 - alpha_bar(visited[k]) / alpha_bar(visited[k + 1])
                t = torch.full((len(x),), visited[k], dtype=torch.long)
                x = x + jump / 2 * x + jump / 2 * model(x, t)
            return x
    ''')),
]



# ------------------------------------------------------------------------------------------------ lesson 12
# few-step ODE solvers of an ε-model: one step each, t_prev = −1 is the clean end (ᾱ = 1)

HEUN_STEP = _src('''
    from ddpm_ref import predict_eps, predict_x0


    @torch.no_grad()
    def karras_heun_step(model, x_t, t, t_prev, schedule, *, clip_x0=True, second_order=True):
        def slope(x, step):
            tt = torch.full((x.shape[0],), step, dtype=torch.long)
            eps = model(x, tt)
            x0 = predict_x0(x, tt, eps, schedule)
            if clip_x0:
                x0 = x0.clamp(-1, 1)
                eps = predict_eps(x, tt, x0, schedule)
            return x0, eps

        ab = schedule.alpha_bars[t].item()
        ab_prev = schedule.alpha_bars[t_prev].item() if t_prev >= 0 else 1.0
        sigma, sigma_prev = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev)
        x0, d = slope(x_t, t)
        if t_prev < 0:
            return x0
        x_bar = x_t / math.sqrt(ab)
        h = sigma_prev - sigma
        x_next = x_bar + h * d
        if second_order:
            _, d_next = slope(math.sqrt(ab_prev) * x_next, t_prev)
            x_next = x_bar + h * (d + d_next) / 2
        return math.sqrt(ab_prev) * x_next
''')

DPM_STEP = _src('''
    from ddpm_ref import predict_x0


    @torch.no_grad()
    def dpm_solver_pp_2m_step(model, x_t, t, t_prev, schedule, *, last=None, clip_x0=True):
        def lam(step):
            ab = schedule.alpha_bars[step].item()
            return 0.5 * math.log(ab / (1 - ab))

        tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
        x0 = predict_x0(x_t, tt, model(x_t, tt), schedule)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        if t_prev < 0:
            return x0, x0
        ab, ab_prev = schedule.alpha_bars[t].item(), schedule.alpha_bars[t_prev].item()
        h = lam(t_prev) - lam(t)
        d = x0
        if last is not None:
            t_last, x0_last = last
            r = (lam(t) - lam(t_last)) / h
            d = (1 + 1 / (2 * r)) * x0 - x0_last / (2 * r)
        x_prev = math.sqrt((1 - ab_prev) / (1 - ab)) * x_t - math.sqrt(ab_prev) * math.expm1(-h) * d
        return x_prev, x0
''')

_HEUN_WRAPPED = _edit(_edit(HEUN_STEP, "    if t_prev < 0:\n        return x0\n", ""),
                      "schedule.alpha_bars[t_prev].item() if t_prev >= 0 else 1.0",
                      "schedule.alpha_bars[t_prev].item()")
_HEUN_PLAIN_SIGMA = _edit(_edit(_edit(_edit(
    HEUN_STEP, "math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev)",
    "math.sqrt(1 - ab), math.sqrt(1 - ab_prev)"),
    "x_bar = x_t / math.sqrt(ab)", "x_bar = x_t"),
    "slope(math.sqrt(ab_prev) * x_next, t_prev)", "slope(x_next, t_prev)"),
    "return math.sqrt(ab_prev) * x_next", "return x_next")

_L12: list[tuple[str, str, str, str, str]] = [
    # (name, exercise, description, source, feedback)
    ("heun_returns_x_bar", "karras_heun_step", "returns x̄_{t_prev} = x/√ᾱ, forgetting to scale back by √ᾱ_{t_prev}",
     _edit(HEUN_STEP, "return math.sqrt(ab_prev) * x_next", "return x_next"), "you returned x̄"),
    ("heun_model_on_x_bar", "karras_heun_step", "calls the model on the Euler point x̄' itself, not on √ᾱ_{t_prev}·x̄'",
     _edit(HEUN_STEP, "slope(math.sqrt(ab_prev) * x_next, t_prev)", "slope(x_next, t_prev)"),
     "the model takes x = √ᾱ·x̄"),
    ("heun_second_slope_at_t", "karras_heun_step", "evaluates the corrector's slope d' at t instead of t_prev",
     _edit(HEUN_STEP, "slope(math.sqrt(ab_prev) * x_next, t_prev)", "slope(math.sqrt(ab_prev) * x_next, t)"),
     "evaluate the second slope d' at t_prev"),
    ("heun_second_slope_only", "karras_heun_step", "steps with d' alone, x̄ + h·d', instead of the average of d and d'",
     _edit(HEUN_STEP, "x_bar + h * (d + d_next) / 2", "x_bar + h * d_next"), "average the two slopes"),
    ("heun_corrector_from_euler_point", "karras_heun_step", "adds the corrector to the Euler point x̄' instead of x̄",
     _edit(HEUN_STEP, "x_next = x_bar + h * (d + d_next) / 2",
           "x_next = x_next + h * (d + d_next) / 2"),
     "the corrector starts from x̄"),
    ("heun_wrapped_clean_end", "karras_heun_step",
     "reads ᾱ_{−1} as alpha_bars[−1] and runs the corrector at t_prev = −1",
     _HEUN_WRAPPED, "alpha_bars[−1] is Python's last element"),
    ("heun_no_eps_recompute", "karras_heun_step", "clips x̂0 but keeps the model's ε̂ as the slope",
     _edit(HEUN_STEP, "            eps = predict_eps(x, tt, x0, schedule)\n", ""), "recompute ε̂"),
    ("heun_ignores_second_order", "karras_heun_step", "always runs the corrector, even with second_order=False",
     _edit(HEUN_STEP, "if second_order:", "if True:"), "without second_order the step is Euler's alone"),
    ("heun_no_change_of_variables", "karras_heun_step", "steps x along σ = √(1 − ᾱ) instead of x̄ = x/√ᾱ along σ̄",
     _HEUN_PLAIN_SIGMA, "not x along σ = √(1 − ᾱ)"),
    ("heun_t_prev_zero_is_the_end", "karras_heun_step", "`t_prev <= 0` ends the chain: at t_prev = 0 it returns x̂0",
     _edit(HEUN_STEP, "if t_prev < 0:", "if t_prev <= 0:"), "t_prev = 0 is the last timestep"),
    ("dpm_r_is_one", "dpm_solver_pp_2m_step", "takes r = 1 (D = 1.5·x̂0_t − 0.5·x̂0_last) whatever the steps",
     _edit(DPM_STEP, "r = (lam(t) - lam(t_last)) / h", "r = 1.0"), "not 1"),
    ("dpm_r_inverted", "dpm_solver_pp_2m_step", "r = h/(λ_t − λ_last): the ratio of the steps upside down",
     _edit(DPM_STEP, "r = (lam(t) - lam(t_last)) / h", "r = h / (lam(t) - lam(t_last))"),
     "not h/(λ_t − λ_last)"),
    ("dpm_r_in_timesteps", "dpm_solver_pp_2m_step", "measures the step ratio in timesteps, (t_last − t)/(t − t_prev)",
     _edit(DPM_STEP, "r = (lam(t) - lam(t_last)) / h", "r = (t_last - t) / (t - t_prev)"),
     "not in timesteps"),
    ("dpm_extrapolates_backwards", "dpm_solver_pp_2m_step", "swaps x̂0_t and x̂0_last in D",
     _edit(DPM_STEP, "d = (1 + 1 / (2 * r)) * x0 - x0_last / (2 * r)",
           "d = (1 + 1 / (2 * r)) * x0_last - x0 / (2 * r)"),
     "not with the two swapped"),
    ("dpm_exp_of_plus_h", "dpm_solver_pp_2m_step", "uses e^{h} − 1 instead of e^{−h} − 1",
     _edit(DPM_STEP, "math.expm1(-h)", "math.expm1(h)"), "not e^{h} − 1"),
    ("dpm_alpha_ratio", "dpm_solver_pp_2m_step", "scales x_t by α_{t_prev}/α_t (the noise-prediction form's factor)",
     _edit(DPM_STEP, "math.sqrt((1 - ab_prev) / (1 - ab)) * x_t", "math.sqrt(ab_prev / ab) * x_t"),
     "not by α_{t_prev}/α_t"),
    ("dpm_ignores_last", "dpm_solver_pp_2m_step", "never uses `last`: every step first order (DDIM)",
     _edit(DPM_STEP, "    if last is not None:\n        t_last, x0_last = last\n"
           "        r = (lam(t) - lam(t_last)) / h\n        d = (1 + 1 / (2 * r)) * x0 - x0_last / (2 * r)\n", ""),
     "the second-order step uses `last`"),
    ("dpm_wrapped_clean_end", "dpm_solver_pp_2m_step", "reads ᾱ_{−1} as alpha_bars[−1] and steps to it",
     _edit(DPM_STEP, "    if t_prev < 0:\n        return x0, x0\n", ""),
     "alpha_bars[−1] is Python's last element"),
    ("dpm_no_clip", "dpm_solver_pp_2m_step", "ignores clip_x0: x̂0 is never clipped",
     _edit(DPM_STEP, "    if clip_x0:\n        x0 = x0.clamp(-1, 1)\n", ""),
     "clip x̂0 to [−1, 1] when clip_x0"),
    ("dpm_t_prev_zero_is_the_end", "dpm_solver_pp_2m_step", "`t_prev <= 0` ends the chain: at t_prev = 0 it returns x̂0",
     _edit(DPM_STEP, "if t_prev < 0:", "if t_prev <= 0:"), "t_prev = 0 is the last timestep"),
]

#: the checks each lesson-12 mistake breaks (every other check of its exercise passes)
_L12_BREAKS: dict[str, tuple[str, ...]] = {
    "heun_returns_x_bar": (
        "karras_heun_step_clip", "karras_heun_step_corrector", "karras_heun_step_euler_is_ddim",
        "karras_heun_step_is_second_order", "karras_heun_step_options_and_edges",
    ),
    "heun_model_on_x_bar": (
        "karras_heun_step_clip", "karras_heun_step_corrector", "karras_heun_step_is_second_order",
        "karras_heun_step_options_and_edges",
    ),
    "heun_second_slope_at_t": (
        "karras_heun_step_clip", "karras_heun_step_corrector", "karras_heun_step_is_second_order",
        "karras_heun_step_options_and_edges",
    ),
    "heun_second_slope_only": (
        "karras_heun_step_clip", "karras_heun_step_corrector", "karras_heun_step_is_second_order",
        "karras_heun_step_options_and_edges",
    ),
    "heun_corrector_from_euler_point": (
        "karras_heun_step_batch_of_one_int_timesteps", "karras_heun_step_clip", "karras_heun_step_corrector",
        "karras_heun_step_is_second_order", "karras_heun_step_options_and_edges",
    ),
    "heun_wrapped_clean_end": (
        "karras_heun_step_is_second_order", "karras_heun_step_last_step",
    ),
    "heun_no_eps_recompute": (
        "karras_heun_step_clip", "karras_heun_step_options_and_edges",
    ),
    "heun_ignores_second_order": (
        "karras_heun_step_euler_is_ddim", "karras_heun_step_options_and_edges",
    ),
    "heun_no_change_of_variables": (
        "karras_heun_step_clip", "karras_heun_step_corrector", "karras_heun_step_euler_is_ddim",
        "karras_heun_step_is_second_order", "karras_heun_step_options_and_edges",
    ),
    "heun_t_prev_zero_is_the_end": (
        "karras_heun_step_batch_of_one_int_timesteps", "karras_heun_step_corrector", "karras_heun_step_euler_is_ddim",
        "karras_heun_step_is_second_order", "karras_heun_step_options_and_edges",
    ),
    "dpm_r_is_one": (
        "dpm_solver_pp_2m_step_batch_of_one", "dpm_solver_pp_2m_step_clip", "dpm_solver_pp_2m_step_options_and_edges",
        "dpm_solver_pp_2m_step_second_order",
    ),
    "dpm_r_inverted": (
        "dpm_solver_pp_2m_step_batch_of_one", "dpm_solver_pp_2m_step_clip", "dpm_solver_pp_2m_step_options_and_edges",
        "dpm_solver_pp_2m_step_second_order",
    ),
    "dpm_r_in_timesteps": (
        "dpm_solver_pp_2m_step_batch_of_one", "dpm_solver_pp_2m_step_clip", "dpm_solver_pp_2m_step_is_second_order",
        "dpm_solver_pp_2m_step_options_and_edges", "dpm_solver_pp_2m_step_second_order",
    ),
    "dpm_extrapolates_backwards": (
        "dpm_solver_pp_2m_step_batch_of_one", "dpm_solver_pp_2m_step_clip", "dpm_solver_pp_2m_step_is_second_order",
        "dpm_solver_pp_2m_step_options_and_edges", "dpm_solver_pp_2m_step_second_order",
    ),
    "dpm_exp_of_plus_h": (
        "dpm_solver_pp_2m_step_batch_of_one", "dpm_solver_pp_2m_step_clip", "dpm_solver_pp_2m_step_first_order",
        "dpm_solver_pp_2m_step_is_second_order", "dpm_solver_pp_2m_step_options_and_edges",
        "dpm_solver_pp_2m_step_second_order",
    ),
    "dpm_alpha_ratio": (
        "dpm_solver_pp_2m_step_batch_of_one", "dpm_solver_pp_2m_step_clip", "dpm_solver_pp_2m_step_first_order",
        "dpm_solver_pp_2m_step_is_second_order", "dpm_solver_pp_2m_step_options_and_edges",
        "dpm_solver_pp_2m_step_second_order",
    ),
    "dpm_ignores_last": (
        "dpm_solver_pp_2m_step_batch_of_one", "dpm_solver_pp_2m_step_clip", "dpm_solver_pp_2m_step_is_second_order",
        "dpm_solver_pp_2m_step_options_and_edges", "dpm_solver_pp_2m_step_second_order",
    ),
    "dpm_wrapped_clean_end": (
        "dpm_solver_pp_2m_step_is_second_order", "dpm_solver_pp_2m_step_last_step",
    ),
    "dpm_no_clip": (
        "dpm_solver_pp_2m_step_clip", "dpm_solver_pp_2m_step_last_step", "dpm_solver_pp_2m_step_options_and_edges",
    ),
    "dpm_t_prev_zero_is_the_end": (
        "dpm_solver_pp_2m_step_first_order", "dpm_solver_pp_2m_step_is_second_order",
        "dpm_solver_pp_2m_step_options_and_edges",
    ),
}

MISTAKES += [Mistake(name, exercise, _L12_BREAKS[name], description, source, feedback)
             for name, exercise, description, source, feedback in _L12]

ALTERNATIVES += [
    Alternative("karras_heun_step_student", "karras_heun_step", "the lesson's step", HEUN_STEP),
    Alternative("karras_heun_step_padded_sigmas", "karras_heun_step", "σ̄ from a float64 table padded with σ̄ = 0 for "
                "t = −1, the last step taken as the Euler step to σ̄ = 0 (x̂0 up to rounding), ε̂ by hand", _src('''
        @torch.no_grad()
        def karras_heun_step(model, x_t, t, t_prev, schedule, *, clip_x0=True, second_order=True):
            ab = torch.cat([schedule.alpha_bars, torch.ones(1, dtype=torch.float64)])  # ab[-1] = 1: the clean end
            sig = ((1 - ab) / ab).sqrt()

            def eps_hat(x_bar, i):
                a = float(ab[i].sqrt())
                x = a * x_bar
                e = model(x, torch.tensor([i] * x.shape[0]))
                if clip_x0:
                    x0 = ((x - (1 - a * a) ** 0.5 * e) / a).clamp(min=-1.0, max=1.0)
                    e = (x - a * x0) / (1 - a * a) ** 0.5
                return e

            x_bar = x_t / float(ab[t].sqrt())
            h = float(sig[t_prev] - sig[t])
            d = eps_hat(x_bar, t)
            euler = x_bar + h * d
            if second_order and t_prev >= 0:
                euler = x_bar + 0.5 * h * (d + eps_hat(euler, t_prev))
            return float(ab[t_prev].sqrt()) * euler
    ''')),
    Alternative("dpm_solver_pp_2m_step_student", "dpm_solver_pp_2m_step", "the lesson's step", DPM_STEP),
    Alternative("dpm_solver_pp_2m_step_tables", "dpm_solver_pp_2m_step", "α, σ and λ from the schedule's tables "
                "(schedule.gather), D written as x̂0 + (x̂0 − x̂0_last)/(2r), e^{−h} − 1 without expm1", _src('''
        @torch.no_grad()
        def dpm_solver_pp_2m_step(model, x_t, t, t_prev, schedule, *, last=None, clip_x0=True):
            lam = schedule.sqrt_alpha_bars.log() - schedule.sqrt_one_minus_alpha_bars.log()
            alpha = schedule.gather(schedule.sqrt_alpha_bars, t, x_t)
            sigma = schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, x_t)
            x0 = (x_t - sigma * model(x_t, torch.full((len(x_t),), t))) / alpha
            x0 = torch.clamp(x0, -1, 1) if clip_x0 else x0
            if t_prev == -1:
                return x0, x0
            h = float(lam[t_prev] - lam[t])
            if last is None:
                D = x0
            else:
                r = float(lam[t] - lam[last[0]]) / h
                D = x0 + (x0 - last[1]) / (2 * r)
            alpha_prev = schedule.gather(schedule.sqrt_alpha_bars, t_prev, x_t)
            sigma_prev = schedule.gather(schedule.sqrt_one_minus_alpha_bars, t_prev, x_t)
            return sigma_prev / sigma * x_t + alpha_prev * (1 - math.exp(-h)) * D, x0
    ''')),
]

def riding_variants(lesson_of: dict[str, str]) -> dict[str, int]:
    """The correct variants that ride in the nbgrader proof's mistake submissions (tests/test_course_nbgrader.py):
    {variant name: K}, the K-th round of mistakes of its lesson (1-based) being one where its exercise has no mistake
    left. ``lesson_of`` maps each exercise to its lesson; a variant whose exercise has no free round is left out (the
    judge's own test grades it)."""
    per_exercise = Counter(m.exercise for m in [*MISTAKES, *CHEATS])
    rounds: Counter[str] = Counter()  # {lesson: its rounds of mistakes}
    for exercise, n in per_exercise.items():
        if exercise in lesson_of:
            rounds[lesson_of[exercise]] = max(rounds[lesson_of[exercise]], n)
    placed: dict[str, int] = {}
    used: Counter[str] = Counter()
    for alt in ALTERNATIVES:
        k = per_exercise[alt.exercise] + used[alt.exercise] + 1
        if alt.exercise in lesson_of and k <= rounds[lesson_of[alt.exercise]]:
            placed[alt.name] = k
            used[alt.exercise] += 1
    return placed


def by_name(name: str) -> Mistake:
    """The mistake called ``name``."""
    for m in MISTAKES:
        if m.name == name:
            return m
    raise KeyError(f"no mistake named {name!r}")


def hidden_checks(mistake: Mistake) -> set[str]:
    """Which of ``mistake.breaks`` are hidden checks (graded by the ``check_<exercise>_hidden`` cell)."""
    from tests.harness import REGISTRY, check_name, load_all_checks

    load_all_checks()
    hidden = {check_name(f) for f in REGISTRY.get(mistake.exercise, []) if f.hidden}
    return set(mistake.breaks) & hidden

# ------------------------------------------------------------------------------------------------ lesson 11

REPARAMETERIZE = _src('''
    def reparameterize(mean, logvar, generator=None):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + std * eps
''')

KL_DIVERGENCE = _src('''
    def kl_divergence(mean, logvar):
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar)
        return kl.flatten(1).sum(dim=1).mean()
''')

LATENT_SCALE_FACTOR = _src('''
    def latent_scale_factor(latents):
        return 1.0 / latents.std().item()
''')

PATCHIFY = _src('''
    def patchify(x, patch_size):
        B, C, H, W = x.shape
        p = patch_size
        x = x.reshape(B, C, H // p, p, W // p, p)
        x = x.permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // p) * (W // p), p * p * C)
''')

DIT_BLOCK = _src('''
    from ddpm_ref.dit import Attention


    class DiTBlock(nn.Module):
        def __init__(self, dim, num_heads, mlp_ratio=4.0):
            super().__init__()
            self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
            nn.init.zeros_(self.ada_ln[1].weight)
            nn.init.zeros_(self.ada_ln[1].bias)
            hidden = int(dim * mlp_ratio)
            self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.attn = Attention(dim, num_heads)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

        def forward(self, x, c):
            shift1, scale1, gate1, shift2, scale2, gate2 = self.ada_ln(c).chunk(6, dim=1)
            h = self.norm1(x) * (1 + scale1[:, None]) + shift1[:, None]
            x = x + gate1[:, None] * self.attn(h)
            h = self.norm2(x) * (1 + scale2[:, None]) + shift2[:, None]
            return x + gate2[:, None] * self.mlp(h)
''')

_L11: list[tuple[str, str, str, str, str]] = [
    # (name, exercise, description, source, feedback)
    ("reparam_variance_as_std", "reparameterize", "scales ε by exp(logvar), the variance, not the std",
     _edit(REPARAMETERIZE, "torch.exp(0.5 * logvar)", "torch.exp(logvar)"), "exp(logvar) is the variance"),
    ("reparam_logvar_as_std", "reparameterize", "scales ε by logvar itself",
     _edit(REPARAMETERIZE, "torch.exp(0.5 * logvar)", "logvar"), "logvar is log σ², not σ"),
    ("reparam_no_mean", "reparameterize", "returns σ·ε: the mean is never added",
     _edit(REPARAMETERIZE, "return mean + std * eps", "return std * eps"), "add the mean"),
    ("reparam_randn_like", "reparameterize", "draws ε with torch.randn_like(mean), ignoring the generator",
     _edit(REPARAMETERIZE, "torch.randn(mean.shape, generator=generator, dtype=mean.dtype)",
           "torch.randn_like(mean)"), "global random state"),
    ("reparam_detached_std", "reparameterize", "σ from a detached logvar: the encoder's variance never learns",
     _edit(REPARAMETERIZE, "torch.exp(0.5 * logvar)", "torch.exp(0.5 * logvar.detach())"),
     "logvar gets no gradient"),
    ("reparam_negative_half", "reparameterize", "σ = exp(−½·logvar): a larger log-variance shrinks z",
     _edit(REPARAMETERIZE, "torch.exp(0.5 * logvar)", "torch.exp(-0.5 * logvar)"), "exp(+½·logvar)"),
    ("kl_mean_over_entries", "kl_divergence", "averages the KL over a sample's entries instead of summing them",
     _edit(KL_DIVERGENCE, "kl.flatten(1).sum(dim=1).mean()", "kl.mean()"), "do not average over the entries"),
    ("kl_sum_over_batch", "kl_divergence", "sums the per-sample KL over the batch instead of averaging",
     _edit(KL_DIVERGENCE, "kl.flatten(1).sum(dim=1).mean()", "kl.sum()"), "do not sum over it"),
    ("kl_no_half", "kl_divergence", "drops the factor ½ of the closed form",
     _edit(KL_DIVERGENCE, "kl = 0.5 * (", "kl = ("), "factor ½"),
    ("kl_var_and_logvar_swapped", "kl_divergence", "writes μ² + log σ² − 1 − σ²: variance and log-variance swapped",
     _edit(KL_DIVERGENCE, "logvar.exp() - 1 - logvar", "logvar - 1 - logvar.exp()"), "you swapped them"),
    ("kl_negated", "kl_divergence", "returns −KL: the sign of the closed form flipped",
     _edit(KL_DIVERGENCE, "kl = 0.5 * (", "kl = -0.5 * ("), "mind the sign"),
    ("kl_sum_channels_only", "kl_divergence", "sums over dim 1 only, then averages the rest with the batch",
     _edit(KL_DIVERGENCE, "kl.flatten(1).sum(dim=1).mean()", "kl.sum(dim=1).mean()"), "flatten(1).sum(1)"),
    ("scale_is_std", "latent_scale_factor", "returns std(z): the latents' spread is multiplied, not undone",
     _edit(LATENT_SCALE_FACTOR, "1.0 / latents.std().item()", "latents.std().item()"), "reciprocal"),
    ("scale_over_variance", "latent_scale_factor", "returns 1/var(z)",
     _edit(LATENT_SCALE_FACTOR, "1.0 / latents.std().item()", "1.0 / latents.var().item()"), "not by the variance"),
    ("scale_rms", "latent_scale_factor", "returns 1/√mean(z²): the mean of the latents counted as spread",
     _edit(LATENT_SCALE_FACTOR, "1.0 / latents.std().item()", "1.0 / latents.pow(2).mean().sqrt().item()"),
     "root mean square"),
    ("scale_per_channel", "latent_scale_factor", "one factor per channel, std over (batch, height, width)",
     _edit(LATENT_SCALE_FACTOR, "1.0 / latents.std().item()", "1.0 / latents.std(dim=(0, 2, 3))"), "one factor"),
    ("scale_abs_max", "latent_scale_factor", "returns 1/max|z|: squeezes the latents into [−1, 1] instead",
     _edit(LATENT_SCALE_FACTOR, "1.0 / latents.std().item()", "1.0 / latents.abs().max().item()"),
     "largest magnitude"),
    ("patchify_unfold", "patchify", "F.unfold's layout: each patch flattened as (channel, row, column)",
     _src('''
        def patchify(x, patch_size):
            return F.unfold(x, patch_size, stride=patch_size).transpose(1, 2)
     '''), "channels last"),
    ("patchify_grid_by_columns", "patchify", "reads the grid of patches column by column",
     _edit(PATCHIFY, "x.permute(0, 2, 4, 3, 5, 1)", "x.permute(0, 4, 2, 3, 5, 1)"), "row by row over the grid"),
    ("patchify_patch_transposed", "patchify", "flattens each patch column by column",
     _edit(PATCHIFY, "x.permute(0, 2, 4, 3, 5, 1)", "x.permute(0, 2, 4, 5, 3, 1)"),
     "inside a patch, go row by row"),
    ("patchify_square_only", "patchify", "takes the grid as (H/p)×(H/p): fails on an image that is not square",
     _edit(PATCHIFY, "x = x.reshape(B, C, H // p, p, W // p, p)", "x = x.reshape(B, C, H // p, p, H // p, p)"),
     "raised RuntimeError"),
    ("patchify_plain_reshape", "patchify", "reshapes [B, C, H, W] to [B, N, p·p·C] with no permute: no patches at all",
     _src('''
        def patchify(x, patch_size):
            B, C, H, W = x.shape
            return x.reshape(B, (H // patch_size) * (W // patch_size), patch_size * patch_size * C)
     '''), "row by row"),
    ("dit_gates_not_zero", "DiTBlock", "the adaLN layer keeps its random init: a fresh block is not the identity",
     _edit(DIT_BLOCK, "        nn.init.zeros_(self.ada_ln[1].weight)\n        nn.init.zeros_(self.ada_ln[1].bias)\n",
           ""), "zero-initialise"),
    ("dit_everything_zero", "DiTBlock", "zero-initialises every linear layer: no gradient reaches any parameter",
     _edit(DIT_BLOCK, "nn.Linear(hidden, dim))\n",
           "nn.Linear(hidden, dim))\n        for m in self.modules():\n            if isinstance(m, nn.Linear):\n"
           "                nn.init.zeros_(m.weight)\n                nn.init.zeros_(m.bias)\n"),
     "keep the attention and MLP weights random"),
    ("dit_no_gates", "DiTBlock", "adds the sub-blocks' outputs without their gates",
     _edit(_edit(DIT_BLOCK, "x + gate1[:, None] * self.attn(h)", "x + self.attn(h)"),
           "x + gate2[:, None] * self.mlp(h)", "x + self.mlp(h)"), "gate"),
    ("dit_modulate_without_one", "DiTBlock", "modulates as LN(x)·scale + shift: the features vanish at init",
     _edit(_edit(DIT_BLOCK, "(1 + scale1[:, None])", "scale1[:, None]"), "(1 + scale2[:, None])", "scale2[:, None]"),
     "the 1 keeps"),
    ("dit_chunk_order", "DiTBlock", "reads the chunks as (scale, shift, gate): shift and scale swapped",
     _edit(DIT_BLOCK, "shift1, scale1, gate1, shift2, scale2, gate2 =",
           "scale1, shift1, gate1, scale2, shift2, gate2 ="),
     "shift and scale are swapped"),
    ("dit_fixed_mlp_ratio", "DiTBlock", "the MLP is always 4·D wide: mlp_ratio is ignored",
     _edit(DIT_BLOCK, "hidden = int(dim * mlp_ratio)", "hidden = 4 * dim"), "use the mlp_ratio given"),
    ("dit_post_norm", "DiTBlock", "normalises after the residual sum (post-norm): a fresh block is not the identity",
     _edit(DIT_BLOCK, "x = x + gate1[:, None] * self.attn(h)", "x = self.norm1(x + gate1[:, None] * self.attn(h))"),
     "zero-initialise"),
]

#: the checks each lesson-11 mistake breaks (every other check of its exercise passes)
_L11_BREAKS: dict[str, tuple[str, ...]] = {
    "reparam_variance_as_std": (
        "reparameterize_formula", "reparameterize_gradients", "reparameterize_moments",
    ),
    "reparam_logvar_as_std": (
        "reparameterize_formula", "reparameterize_gradients", "reparameterize_moments",
        "reparameterize_one_sample_float64_and_tiny_variance",
    ),
    "reparam_no_mean": (
        "reparameterize_formula", "reparameterize_gradients", "reparameterize_moments",
        "reparameterize_one_sample_float64_and_tiny_variance",
    ),
    "reparam_randn_like": (
        "reparameterize_formula", "reparameterize_uses_only_its_generator",
    ),
    "reparam_detached_std": (
        "reparameterize_gradients",
    ),
    "reparam_negative_half": (
        "reparameterize_formula", "reparameterize_gradients", "reparameterize_moments",
        "reparameterize_one_sample_float64_and_tiny_variance",
    ),
    "kl_mean_over_entries": (
        "kl_divergence_analytic_values", "kl_divergence_flat_and_one_sample", "kl_divergence_gradients",
        "kl_divergence_matches_torch_distributions",
    ),
    "kl_sum_over_batch": (
        "kl_divergence_analytic_values", "kl_divergence_gradients", "kl_divergence_matches_torch_distributions",
    ),
    "kl_no_half": (
        "kl_divergence_analytic_values", "kl_divergence_flat_and_one_sample", "kl_divergence_gradients",
        "kl_divergence_matches_torch_distributions",
    ),
    "kl_var_and_logvar_swapped": (
        "kl_divergence_analytic_values", "kl_divergence_flat_and_one_sample", "kl_divergence_gradients",
        "kl_divergence_matches_torch_distributions",
    ),
    "kl_negated": (
        "kl_divergence_analytic_values", "kl_divergence_flat_and_one_sample", "kl_divergence_gradients",
        "kl_divergence_matches_torch_distributions",
    ),
    "kl_sum_channels_only": (
        "kl_divergence_analytic_values", "kl_divergence_flat_and_one_sample",
        "kl_divergence_matches_torch_distributions",
    ),
    "scale_is_std": (
        "latent_scale_factor_gives_unit_variance", "latent_scale_factor_is_one_over_std",
        "latent_scale_factor_one_sample_and_float64",
    ),
    "scale_over_variance": (
        "latent_scale_factor_gives_unit_variance", "latent_scale_factor_is_one_over_std",
        "latent_scale_factor_one_sample_and_float64",
    ),
    "scale_rms": (
        "latent_scale_factor_gives_unit_variance", "latent_scale_factor_is_one_over_std",
        "latent_scale_factor_one_sample_and_float64",
    ),
    "scale_per_channel": (
        "latent_scale_factor_gives_unit_variance", "latent_scale_factor_is_one_over_std",
        "latent_scale_factor_one_sample_and_float64",
    ),
    "scale_abs_max": (
        "latent_scale_factor_gives_unit_variance", "latent_scale_factor_is_one_over_std",
        "latent_scale_factor_one_sample_and_float64",
    ),
    "patchify_unfold": (
        "patchify_is_inverted_by_unpatchify", "patchify_layout", "patchify_one_image_float64_and_non_contiguous",
        "patchify_then_linear_is_the_strided_convolution",
    ),
    "patchify_grid_by_columns": (
        "patchify_is_inverted_by_unpatchify", "patchify_layout", "patchify_one_image_float64_and_non_contiguous",
        "patchify_then_linear_is_the_strided_convolution",
    ),
    "patchify_patch_transposed": (
        "patchify_is_inverted_by_unpatchify", "patchify_layout", "patchify_one_image_float64_and_non_contiguous",
        "patchify_then_linear_is_the_strided_convolution",
    ),
    "patchify_square_only": (
        "patchify_is_inverted_by_unpatchify", "patchify_layout", "patchify_one_image_float64_and_non_contiguous",
    ),
    "patchify_plain_reshape": (
        "patchify_is_inverted_by_unpatchify", "patchify_layout", "patchify_one_image_float64_and_non_contiguous",
        "patchify_then_linear_is_the_strided_convolution",
    ),
    "dit_gates_not_zero": (
        "DiTBlock_fresh_is_the_identity", "DiTBlock_honours_mlp_ratio_and_one_token",
    ),
    "dit_everything_zero": (
        "DiTBlock_fresh_can_learn", "DiTBlock_trains_a_latent_diffusion_model",
    ),
    "dit_no_gates": (
        "DiTBlock_fresh_is_the_identity", "DiTBlock_honours_mlp_ratio_and_one_token",
        "DiTBlock_with_reference_weights",
    ),
    "dit_modulate_without_one": (
        "DiTBlock_trains_a_latent_diffusion_model", "DiTBlock_with_reference_weights",
    ),
    "dit_chunk_order": (
        "DiTBlock_with_reference_weights",
    ),
    "dit_fixed_mlp_ratio": (
        "DiTBlock_honours_mlp_ratio_and_one_token",
    ),
    "dit_post_norm": (
        "DiTBlock_fresh_is_the_identity", "DiTBlock_honours_mlp_ratio_and_one_token",
        "DiTBlock_with_reference_weights",
    ),
}

MISTAKES += [Mistake(name, exercise, _L11_BREAKS[name], description, source, feedback)
             for name, exercise, description, source, feedback in _L11]

ALTERNATIVES += [
    Alternative("reparameterize_student", "reparameterize", "the lesson's three lines", REPARAMETERIZE),
    Alternative("reparameterize_addcmul", "reparameterize", "ε drawn in float32 and cast like mean, torch.addcmul, "
                "σ = √exp(logvar)", _src('''
        def reparameterize(mean, logvar, generator=None):
            eps = torch.randn(mean.size(), generator=generator).to(mean)
            return torch.addcmul(mean, logvar.exp().sqrt(), eps)
    ''')),
    Alternative("kl_divergence_student", "kl_divergence", "the lesson's closed form", KL_DIVERGENCE),
    Alternative("kl_divergence_distributions", "kl_divergence", "torch.distributions' KL of Normal(μ, σ) against "
                "Normal(0, 1), summed over the non-batch dims", _src('''
        from torch.distributions import Normal
        from torch.distributions import kl_divergence as kl_of


        def kl_divergence(mean, logvar):
            q = Normal(mean, torch.exp(0.5 * logvar))
            p = Normal(torch.zeros_like(mean), torch.ones_like(mean))
            return kl_of(q, p).sum(dim=tuple(range(1, mean.dim()))).mean()
    ''')),
    Alternative("latent_scale_factor_student", "latent_scale_factor", "the lesson's line", LATENT_SCALE_FACTOR),
    Alternative("latent_scale_factor_numpy_population", "latent_scale_factor", "numpy's population std (1/N) of a "
                "detached copy, as a numpy float", _src('''
        def latent_scale_factor(latents):
            return 1 / np.std(latents.detach().cpu().numpy())
    ''')),
    Alternative("latent_scale_factor_rsqrt_tensor", "latent_scale_factor", "a 0-d tensor: rsqrt of the variance",
                _src('''
        def latent_scale_factor(latents):
            return torch.rsqrt(latents.detach().float().var())
    ''')),
    Alternative("patchify_student", "patchify", "the lesson's reshape-permute-reshape", PATCHIFY),
    Alternative("patchify_tensor_unfold", "patchify", "Tensor.unfold over rows then columns, channels moved last",
                _src('''
        def patchify(x, patch_size):
            p = patch_size
            patches = x.unfold(2, p, p).unfold(3, p, p)  # [B, C, H/p, W/p, p, p]
            return patches.permute(0, 2, 3, 4, 5, 1).flatten(3).flatten(1, 2)
    ''')),
    Alternative("patchify_loop", "patchify", "a loop over the patches, stacked", _src('''
        def patchify(x, patch_size):
            B, C, H, W = x.shape
            p = patch_size
            tokens = [x[:, :, i:i + p, j:j + p].permute(0, 2, 3, 1).reshape(B, -1)
                      for i in range(0, H, p) for j in range(0, W, p)]
            return torch.stack(tokens, dim=1)
    ''')),
    Alternative("dit_block_student", "DiTBlock", "the lesson's block", DIT_BLOCK),
    Alternative("dit_block_own_attention", "DiTBlock", "its own attention (nn.MultiheadAttention), modulate from "
                "ddpm_ref, other names (its outputs then cannot be compared with the reference's weights)", _src('''
        from ddpm_ref.dit import modulate


        class DiTBlock(nn.Module):
            def __init__(self, dim, num_heads, mlp_ratio=4.0):
                super().__init__()
                self.ln_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
                self.mha = nn.MultiheadAttention(dim, num_heads, batch_first=True)
                self.ln_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
                width = int(mlp_ratio * dim)
                self.ff = nn.Sequential(nn.Linear(dim, width), nn.GELU(approximate="tanh"), nn.Linear(width, dim))
                self.to_mod = nn.Linear(dim, 6 * dim)
                nn.init.constant_(self.to_mod.weight, 0.0)
                nn.init.constant_(self.to_mod.bias, 0.0)

            def forward(self, x, c):
                mods = self.to_mod(F.silu(c)).reshape(c.shape[0], 6, -1).unbind(1)
                h = modulate(self.ln_attn(x), mods[0], mods[1])
                x = x + mods[2].unsqueeze(1) * self.mha(h, h, h, need_weights=False)[0]
                return x + mods[5].unsqueeze(1) * self.ff(modulate(self.ln_mlp(x), mods[3], mods[4]))
    ''')),
]
