"""ddpm_ref: the reference DDPM of the course (Ho et al. 2020), in plain PyTorch.

At the top, the math and data a student reads (schedule → diffusion → samplers → solvers → flow → guidance → score;
unet, the latent-diffusion pair vae and dit, metrics, oracle, data; with progress, plots, pictures and atomic file
writes). Beside them, packages, each importing only from the ones before it: ``speed`` (the switches) →
``training`` (the Trainer) → ``evaluation`` → ``bench`` → ``course`` (what the notebooks share) → ``grading`` →
``cli``. Module paths from before the packages still import (:mod:`ddpm_ref._moved`).
Timesteps are 0-based (t ∈ {0, …, T−1}); images are [B, C, H, W] in [−1, 1].
"""

from . import _moved
from .diffusion import ddpm_loss, predict_eps, predict_x0, q_posterior, q_sample
from .dit import DiT, DiTBlock, patchify, unpatchify
from .flow import GaussianMixtureVelocity, euler_sample, flow_matching_loss, heun_sample
from .guidance import (
    GuidedModel,
    LabelledGaussianMixtureOracle,
    cfg_sample,
    cfg_train_step,
    conditional_ddpm_loss,
    drop_labels,
    guided_eps,
)
from .metrics import psnr, ssim
from .oracle import GaussianMixtureOracle
from .samplers import ddim_sample, ddim_step, ddim_timesteps, p_sample, p_sample_loop, reconstruct, sample
from .schedule import (
    NoiseSchedule,
    cosine_beta_schedule,
    linear_beta_schedule,
    make_betas,
    scaled_linear_beta_schedule,
)
from .score import (
    ScoreFromEps,
    dsm_loss,
    langevin_sample,
    probability_flow_sample,
    reverse_sde_sample,
    score_from_eps,
)
from .solvers import (
    dpm_solver_pp_2m_sample,
    dpm_solver_pp_2m_step,
    karras_euler_sample,
    karras_heun_sample,
    karras_heun_step,
)
from .unet import LabelEmbedding, ResBlock, SelfAttention, SinusoidalTimeEmbedding, UNet
from .vae import ConvVAE, kl_divergence, latent_scale_factor, reparameterize, vae_loss

__version__ = "0.1.0"

__all__ = [
    "ConvVAE",
    "DiT",
    "DiTBlock",
    "kl_divergence",
    "latent_scale_factor",
    "patchify",
    "reparameterize",
    "unpatchify",
    "vae_loss",
    "GaussianMixtureOracle",
    "GaussianMixtureVelocity",
    "GuidedModel",
    "LabelEmbedding",
    "LabelledGaussianMixtureOracle",
    "NoiseSchedule",
    "ResBlock",
    "ScoreFromEps",
    "SelfAttention",
    "SinusoidalTimeEmbedding",
    "UNet",
    "cfg_sample",
    "cfg_train_step",
    "conditional_ddpm_loss",
    "cosine_beta_schedule",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_loss",
    "dpm_solver_pp_2m_sample",
    "dpm_solver_pp_2m_step",
    "dsm_loss",
    "euler_sample",
    "flow_matching_loss",
    "heun_sample",
    "langevin_sample",
    "drop_labels",
    "karras_euler_sample",
    "karras_heun_sample",
    "karras_heun_step",
    "guided_eps",
    "linear_beta_schedule",
    "make_betas",
    "p_sample",
    "p_sample_loop",
    "predict_eps",
    "predict_x0",
    "probability_flow_sample",
    "psnr",
    "q_posterior",
    "q_sample",
    "reconstruct",
    "reverse_sde_sample",
    "sample",
    "scaled_linear_beta_schedule",
    "score_from_eps",
    "ssim",
]

# Training engine, data and checkpoints: data → (config, ema, checkpoint) → train.
from .data import ImageFolderDataset, digits, lfw_faces, synthetic_faces  # noqa: E402
from .training.checkpoint import load_pretrained_lfw_tiny, model_from_checkpoint  # noqa: E402
from .training.config import PRESETS, TrainConfig, get_config  # noqa: E402
from .training.trainer import Trainer, TrainResult, train_step  # noqa: E402

__all__ += [
    "PRESETS",
    "ImageFolderDataset",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "digits",
    "get_config",
    "lfw_faces",
    "load_pretrained_lfw_tiny",
    "model_from_checkpoint",
    "synthetic_faces",
    "train_step",
]

_moved.install()  # the module paths from before the packages (ddpm_ref.perf, ddpm_ref.train, …) keep working


def __getattr__(name: str) -> object:
    """``ddpm_ref.perf``, ``ddpm_ref.train``, … (modules that moved into packages) as attributes, imported when used."""
    return _moved.module(name)
