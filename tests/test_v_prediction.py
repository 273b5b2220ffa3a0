"""The v-parametrisation (Salimans & Ho 2022): its target against diffusers, the ε-model it presents to every sampler,
its loss as a weighted L_simple, and a run of the trainer with ``objective="v"`` that checkpoints and reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import ddpm_ref as R
from ddpm_ref.checkpoint import model_from_checkpoint
from ddpm_ref.config import TrainConfig, build_model, get_config
from ddpm_ref.diffusion import VPrediction, v_loss, v_target
from ddpm_ref.train import Trainer
from tests._fixtures import gen

T = 400


class FixedOutput(nn.Module):
    """A "network" whose output is a fixed function of (x_t, t): ``fn(x_t, t)``."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.fn(x_t, t)


def _batch(schedule: R.NoiseSchedule) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x0 = torch.rand(5, 1, 8, 8, generator=gen(0)) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen(1))
    t = torch.tensor([0, 1, 150, schedule.T - 2, schedule.T - 1])
    return x0, noise, t, R.q_sample(x0, t, noise, schedule)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_the_exact_v_gives_back_the_exact_noise_and_image(name: str) -> None:
    """With v̂ = v, the wrapper's ε̂ is ε and x̂0 is x0, at every t (cosine: ᾱ_{T−1} ≈ 3e-8, where an ε-network's
    x̂0 would divide by 1.7e-4)."""
    s = R.NoiseSchedule.from_name(name, T)
    x0, noise, t, x_t = _batch(s)
    model = VPrediction(FixedOutput(lambda x, tt: v_target(x0, noise, tt, s).float()), s)
    torch.testing.assert_close(model(x_t, t), noise, atol=2e-6, rtol=0)
    torch.testing.assert_close(model(x_t, t, output="v"), v_target(x0, noise, t, s).float())
    # x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂, through the samplers' own predict_x0 of the wrapper's ε̂ (float32 rounding / √ᾱ)
    torch.testing.assert_close(R.predict_x0(x_t, t, model(x_t, t), s), x0, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="'eps' or 'v'"):
        model(x_t, t, output="x0")


def test_v_loss_is_l_simple_weighted_by_one_over_alpha_bar() -> None:
    """‖v̂ − v‖² = ‖ε̂ − ε‖²/ᾱ_t for any network output, so v_loss = mean over the batch of L_simple_t/ᾱ_t."""
    s = R.NoiseSchedule.from_name("linear", T)
    x0, noise, t, x_t = _batch(s)
    net = FixedOutput(lambda x, tt: torch.sin(3 * x) + tt.float().reshape(-1, 1, 1, 1) / T)
    model = VPrediction(net, s)
    per_sample_eps = ((model(x_t, t) - noise) ** 2).mean(dim=(1, 2, 3))
    weighted = (per_sample_eps / s.alpha_bars[t].float()).mean()
    torch.testing.assert_close(v_loss(model, x0, s, t=t, noise=noise), weighted, rtol=1e-5, atol=0)
    exact = VPrediction(FixedOutput(lambda x, tt: v_target(x0, noise, tt, s).float()), s)
    assert float(v_loss(exact, x0, s, t=t, noise=noise)) < 1e-12


def test_v_target_and_the_sampling_step_match_diffusers() -> None:
    """v = diffusers' ``get_velocity``; one DDPMScheduler.step with prediction_type="v_prediction" on v̂ equals
    p_sample on the wrapper (same generator seed, so the same noise)."""
    diffusers = pytest.importorskip("diffusers")
    s = R.NoiseSchedule.from_name("linear", T)
    x0, noise, t, x_t = _batch(s)
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                    clip_sample=True, variance_type="fixed_small", prediction_type="v_prediction")
    torch.testing.assert_close(v_target(x0, noise, t, s).float(), sched.get_velocity(x0, noise, t),
                               atol=1e-5, rtol=1e-5)
    v_hat = torch.randn(x_t.shape, generator=gen(2))
    model = VPrediction(FixedOutput(lambda x, tt: v_hat[: x.shape[0]]), s)
    for tt in (0, 57, 399):
        theirs = sched.step(v_hat[:1], tt, x_t[:1], generator=gen(99)).prev_sample
        ours = R.p_sample(model, x_t[:1], tt, s, generator=gen(99))
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_a_v_run_trains_checkpoints_and_reloads_as_an_eps_model(tmp_path: Path) -> None:
    cfg = get_config("lfw-demo", objective="v", T=50, model_channels=(8, 16), num_res_blocks=1, batch_size=16,
                     dataset_repeat=2, epochs=4, warmup_steps=2, milestone_every=0, preview_every=0)
    trainer = Trainer(cfg, tmp_path, progress=False)
    assert isinstance(trainer.net, VPrediction)
    result = trainer.fit()
    losses = result.step_losses
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, "the v-loss did not fall"
    model, schedule, config = model_from_checkpoint(tmp_path / "checkpoints" / "ckpt_latest.pt")
    assert config.objective == "v" and isinstance(model, VPrediction)
    ckpt = torch.load(tmp_path / "checkpoints" / "ckpt_latest.pt", weights_only=True)
    assert all(k.startswith("net.") for k in ckpt["ema"]), "only the network's weights are stored"
    x = R.sample(model, schedule, (2, 1, 24, 24), generator=gen(0), progress=False)
    assert x.shape == (2, 1, 24, 24) and bool(torch.isfinite(x).all())


def test_v_objective_is_validated() -> None:
    assert isinstance(build_model(TrainConfig(objective="v")), VPrediction)
    assert isinstance(build_model(TrainConfig()), R.UNet)
    with pytest.raises(ValueError, match="unconditional"):
        TrainConfig(objective="v", num_classes=10)
    with pytest.raises(ValueError, match="'v'"):
        TrainConfig(objective="x0")
