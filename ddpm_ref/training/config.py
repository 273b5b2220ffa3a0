"""Training configuration: one dataclass, named presets, overrides from strings, JSON in and out.

Presets (``get_config(name)``; list them with ``PRESETS``):

- ``seed-celebahq256`` — the seed run's table exactly: 3×256×256, T=400, linear β 1e-4→2e-2, batch 16, AdamW
  lr 2e-4 wd 1e-4, EMA 0.999, 25 epochs, grad clip 1.0, cosine LR, AMP, UNet 64/128/256 with bottleneck attention.
  Its schedule stops short of pure noise: ᾱ_{T−1} ≈ 0.0176, so x_{T−1} keeps 13 % of the image
  (√ᾱ ≈ 0.13) while sampling starts from N(0, I) — a train/sample mismatch.
- ``celebahq256-fixed`` — the same with the 1000/T-scaled linear schedule (β 2.5e-4→5e-2 at T=400), which reaches
  ᾱ_{T−1} ≈ 4e-5 (Nichol & Dhariwal 2021, §3.2).
- ``lfw-tiny`` — the CPU model of the shipped checkpoint; see :data:`LFW_TINY_NOTES`.
- ``lfw-demo`` — lfw-tiny set for the demo's few minutes of training; see :data:`LFW_DEMO_NOTES`.
- ``lfw-flow`` — lfw-tiny's data, network and optimisation trained by flow matching (``objective="flow"``,
  :mod:`ddpm_ref.flow`; lesson 9): the network predicts the velocity ε − x0, sampled by Euler or Heun steps.
- ``digits-cfg`` — the class-conditional model of lesson 8 (classifier-free guidance on scikit-learn's 8×8 digits);
  see :data:`DIGITS_CFG_NOTES`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from ..diffusion import VPrediction
from ..schedule import SCHEDULES, NoiseSchedule
from ..unet import UNet

__all__ = [
    "TrainConfig",
    "PRESETS",
    "LFW_TINY_NOTES",
    "LFW_DEMO_NOTES",
    "DIGITS_CFG_NOTES",
    "get_config",
    "load_config",
    "apply_overrides",
    "parse_value",
    "build_model",
    "build_schedule",
]


@dataclass
class TrainConfig:
    """Every setting of a training run. Tuples are stored as lists in JSON and checkpoints.

    Data: ``data`` is ``"lfw"`` (the faces that ship with scikit-image, train split), ``"digits"`` (scikit-learn's
    labelled 8×8 digits, train split) or a folder of images;
    ``image_size`` H = W; ``channels`` 1 or 3; ``hflip`` random horizontal flips; ``dataset_repeat`` passes over
    the data per epoch (so tiny datasets get epochs of a useful length); ``num_workers`` DataLoader workers.
    Model: the :class:`~ddpm_ref.unet.UNet` arguments. ``objective``: "ddpm" (the network predicts ε, loss eq. 14),
    "v" (the same diffusion, the network predicting v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 of Salimans & Ho 2022 inside a
    :class:`~ddpm_ref.diffusion.VPrediction` that samples as an ε-model) or "flow" (it predicts the velocity
    ε − x0 of flow matching, :mod:`ddpm_ref.flow`; the schedule fields are then unused). Schedule:
    ``beta_schedule`` (linear, scaled_linear, cosine), ``T``, ``beta_start``/``beta_end`` (ignored by cosine).
    Optimisation: AdamW ``lr``,
    ``weight_decay``; ``lr_schedule`` "cosine" (to ``min_lr`` over the run, after ``warmup_steps`` of linear
    warmup) or "constant"; ``grad_clip`` max gradient norm; ``ema_decay`` of the parameter EMA, ramped up as
    min(decay, (1 + n)/(10 + n)) over the first updates n when ``ema_warmup`` (:mod:`.ema`); ``amp`` "auto"
    (fp16+GradScaler below compute capability 8, bf16 from 8, off on CPU), "off", "fp16" or "bf16".
    Length: ``epochs``; ``max_steps`` stops earlier when > 0 (the cosine length stays that of ``epochs``, so a run
    stopped early resumes exactly); ``time_budget_s``
    saves and stops cleanly after that many seconds of this session when > 0. Outputs: ``save_every_steps``
    extra ckpt_latest saves (0: only at epoch ends); ``milestone_every`` epochs between ckpt_epoch_XXX.pt;
    ``preview_every`` epochs between EMA preview grids of ``preview_n`` images (0: none).
    ``parallel``: "auto" (DDP under torchrun, DataParallel when several GPUs are visible), "none", "dp", "ddp".
    Speed (the math is unchanged; see :mod:`ddpm_ref.speed.perf`): ``channels_last``, ``fused_adamw``,
    ``cudnn_benchmark``, ``compile`` — None takes the default that :func:`ddpm_ref.speed.perf.recommended` measured for
    the run's device (CUDA: the first three on, compile off; CPU: all off); ``compile_mode`` the torch.compile
    mode ("" for torch's default); ``threads`` CPU threads (0: leave the
    process's setting). They may change between a run and its resumption.
    Guidance: ``num_classes`` > 0 trains a class-conditional UNet (needs labelled data: ``digits``), dropping each
    label to the null label with probability ``p_uncond`` (classifier-free guidance, Ho & Salimans 2022); 0 is
    unconditional.
    """

    name: str = "custom"
    # data
    data: str = "lfw"
    image_size: int = 24
    channels: int = 1
    hflip: bool = True
    dataset_repeat: int = 1
    num_workers: int = 0
    # model
    model_channels: tuple[int, ...] = (32, 64)
    num_res_blocks: int = 2
    attention: bool = True
    num_heads: int = 1
    dropout: float = 0.0
    objective: str = "ddpm"
    # schedule
    beta_schedule: str = "linear"
    T: int = 400
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    # optimisation
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = False
    amp: str = "auto"
    # length
    epochs: int = 25
    max_steps: int = 0
    time_budget_s: float = 0.0
    # outputs
    save_every_steps: int = 0
    milestone_every: int = 10
    preview_every: int = 1
    preview_n: int = 16
    # misc
    seed: int = 0
    parallel: str = "auto"
    device: str = "auto"
    # speed: None = ddpm_ref.speed.perf.recommended(device)
    channels_last: bool | None = None
    fused_adamw: bool | None = None
    cudnn_benchmark: bool | None = None
    compile: bool | None = None
    compile_mode: str = ""
    threads: int = 0
    # classifier-free guidance
    num_classes: int = 0
    p_uncond: float = 0.1

    def __post_init__(self) -> None:
        self.model_channels = tuple(int(c) for c in self.model_channels)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (one line, what to change) on an inconsistent setting."""
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.beta_schedule not in SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {sorted(SCHEDULES)}, got {self.beta_schedule!r}")
        if self.objective not in ("ddpm", "v", "flow"):
            raise ValueError(f"objective must be 'ddpm' (ε-prediction), 'v' (v-prediction) or 'flow' (flow "
                             f"matching), got {self.objective!r}")
        if self.objective == "v" and self.num_classes:
            raise ValueError("objective 'v' trains unconditional models only: set num_classes=0 or objective='ddpm'")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.amp not in ("auto", "off", "fp16", "bf16"):
            raise ValueError(f"amp must be 'auto', 'off', 'fp16' or 'bf16', got {self.amp!r}")
        if self.parallel not in ("auto", "none", "dp", "ddp"):
            raise ValueError(f"parallel must be 'auto', 'none', 'dp' or 'ddp', got {self.parallel!r}")
        factor = 2 ** len(self.model_channels)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by {factor} for model_channels "
                f"{list(self.model_channels)} (one downsample per level)"
            )
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: leave the process's setting), got {self.threads}")
        positive = {"T": self.T, "batch_size": self.batch_size, "dataset_repeat": self.dataset_repeat,
                    "epochs": self.epochs, "num_res_blocks": self.num_res_blocks}
        for key, value in positive.items():
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.num_classes < 0 or not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"num_classes must be >= 0 (0: unconditional) and p_uncond in [0, 1], got "
                             f"{self.num_classes} and {self.p_uncond}")
        if self.data == "digits" and self.num_classes not in (0, 10):
            raise ValueError(f"the digits have 10 classes: use num_classes=10 (or 0), got {self.num_classes}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"lr and grad_clip must be > 0, got lr={self.lr}, grad_clip={self.grad_clip}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists): what checkpoints and config files store."""
        d = dataclasses.asdict(self)
        d["model_channels"] = list(self.model_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


LFW_TINY_NOTES = """\
lfw-tiny trains on the 90 training faces of skimage's LFW subset (1×24×24) on a CPU in minutes.
Schedule: cosine with T=300 (Nichol & Dhariwal 2021). It reaches pure noise (ᾱ_{T−1} ≈ 3e-8), which the seed's
linear schedule does not (ᾱ_{T−1} = 0.048 at T=300), and it spends its steps where the image still matters: the
signal-to-noise ratio ᾱ/(1−ᾱ) drops below 0.01 only at t=280, whereas with the 1000/T-scaled linear schedule it
does so from t=201, so a third of the training draws of t and of the sampling steps would go to practically pure
noise. T=300 rather than 1000 makes sampling 3× cheaper on a CPU. Model: UNet 32/64 with 2 ResBlocks per level and
attention on the 6×6 bottleneck (0.86 M parameters). Optimisation: batch 16, AdamW lr 1e-3 (a tiny model tolerates
5× the seed's rate) with 100 warmup steps and cosine decay, EMA 0.995 (runs are 1000–7000 steps long, so a 0.999
average would still remember the first few hundred steps). Batch 16 rather than 32: for the same CPU time it makes
twice the updates, and at the demo's few minutes that gave visibly sharper faces (same images seen: 630 steps of 32
vs 1260 of 16). 40 epochs of 32 passes over the faces = 7200 steps (the shipped checkpoint); the demo sizes its
own run to the time budget.
"""

LFW_DEMO_NOTES = """\
lfw-demo is lfw-tiny (same data, network, optimiser type and T=300) set for the demo, which trains for about 900 steps
(2 CPU cores, fp32) instead of 7200 (BENCHMARKS.md, "Sample quality", has every figure: MS-SWD ×10³ of 48
samples against the 90 training faces, and the brightness gap). Four changes, each measured against runs of the same
length and seed. The network predicts v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho 2022; ``objective="v"``) instead of
ε: an ε-network's error reaches x̂0 multiplied by √((1−ᾱ_t)/ᾱ_t), so in a short run each face's overall brightness,
decided in the noisiest steps, comes out too dark or too bright; the v-loss is L_simple weighted by 1/ᾱ_t and x̂0's
error is at most v̂'s (900 steps: 82.3 / 0.069 → 54.6 / 0.018, the shipped 7200-step ε checkpoint being at 61.1 /
0.028; the same with cosine: 52.8 / 0.041, its sample brightness spread too narrow). The seed's linear schedule
β 1e-4→2e-2 instead of cosine (with ε-prediction at 1680 steps: 178.3 → 77.9, gap 0.357 → 0.057; cosine's
ᾱ_{T−1} ≈ 3e-8 multiplies an ε̂ error by up to 6000). EMA 0.99 instead of 0.995, because a short run's 0.995 average
still carries weights from before the learning rate came down (scaled linear: 84.7 → 75.0). A peak learning rate
of 4e-3 instead of 1e-3: a quarter of the steps needs larger ones (ε, seed 0: 1e-3 77.7 / 0.056, 2e-3 68.4 / 0.040,
4e-3 65.1 / 0.032, 8e-3 76.2 / 0.052). The shipped checkpoint keeps lfw-tiny (its config is stored in the file).
"""

DIGITS_CFG_NOTES = """\
digits-cfg trains the class-conditional model of lesson 8 on the 1,500 training digits of scikit-learn's
load_digits (1×8×8, 17 grey levels, labels 0–9) on a CPU in a few minutes. The digits stay at their native 8×8:
a U-Net 32/64 halves them twice (8 → 4 → 2, attention on the 2×2 bottleneck), each sample goes straight into a
classifier fitted on the real 8×8 digits, and 16×16 would cost four times as much per step for no new detail.
UNet 32/64 with one ResBlock per level (0.63 M parameters, label embedding added to the time embedding);
cosine schedule, T=200 (an 8×8 image needs fewer steps than a face, and guided sampling calls the network on a
doubled batch). Batch 64, AdamW lr 2e-3 with 100 warmup steps and cosine decay, EMA 0.995, no flips (a mirrored
digit is another shape), label dropout p_uncond = 0.1 (Ho & Salimans 2022 use 0.1–0.2). 10 epochs of 4 passes over
the digits = 930 steps: enough for a classifier fitted on the real digits to recognise every sample guided at w = 3
(lesson 8 measures it), and a few minutes on two CPU cores.
"""

PRESETS: dict[str, TrainConfig] = {
    "seed-celebahq256": TrainConfig(
        name="seed-celebahq256", data="", image_size=256, channels=3, model_channels=(64, 128, 256),
        num_res_blocks=2, attention=True, beta_schedule="linear", T=400, beta_start=1e-4, beta_end=2e-2,
        batch_size=16, lr=2e-4, weight_decay=1e-4, lr_schedule="cosine", grad_clip=1.0, ema_decay=0.999,
        amp="auto", epochs=25, milestone_every=10, preview_every=1, preview_n=5, num_workers=2,
    ),
    "celebahq256-fixed": TrainConfig(
        name="celebahq256-fixed", data="", image_size=256, channels=3, model_channels=(64, 128, 256),
        num_res_blocks=2, attention=True, beta_schedule="scaled_linear", T=400, beta_start=1e-4, beta_end=2e-2,
        batch_size=16, lr=2e-4, weight_decay=1e-4, lr_schedule="cosine", grad_clip=1.0, ema_decay=0.999,
        amp="auto", epochs=25, milestone_every=10, preview_every=1, preview_n=5, num_workers=2,
    ),
    "lfw-tiny": TrainConfig(
        name="lfw-tiny", data="lfw", image_size=24, channels=1, model_channels=(32, 64), num_res_blocks=2,
        attention=True, beta_schedule="cosine", T=300, batch_size=16, lr=1e-3, weight_decay=1e-4,
        lr_schedule="cosine", warmup_steps=100, grad_clip=1.0, ema_decay=0.995, amp="auto", epochs=40,
        dataset_repeat=32, milestone_every=20, preview_every=10, preview_n=16, num_workers=0,
    ),
    "lfw-demo": TrainConfig(
        name="lfw-demo", data="lfw", image_size=24, channels=1, model_channels=(32, 64), num_res_blocks=2,
        attention=True, objective="v", beta_schedule="linear", T=300, beta_start=1e-4, beta_end=2e-2, batch_size=16,
        lr=4e-3, weight_decay=1e-4, lr_schedule="cosine", warmup_steps=100, grad_clip=1.0, ema_decay=0.99, amp="auto",
        epochs=40, dataset_repeat=32, milestone_every=20, preview_every=10, preview_n=16, num_workers=0,
    ),
    "lfw-flow": TrainConfig(
        name="lfw-flow", data="lfw", image_size=24, channels=1, model_channels=(32, 64), num_res_blocks=2,
        attention=True, objective="flow", beta_schedule="cosine", T=300, batch_size=16, lr=1e-3, weight_decay=1e-4,
        lr_schedule="cosine", warmup_steps=100, grad_clip=1.0, ema_decay=0.995, amp="auto", epochs=40,
        dataset_repeat=32, milestone_every=20, preview_every=10, preview_n=16, num_workers=0,
    ),
    "digits-cfg": TrainConfig(
        name="digits-cfg", data="digits", image_size=8, channels=1, hflip=False, model_channels=(32, 64),
        num_res_blocks=1, attention=True, beta_schedule="cosine", T=200, batch_size=64, lr=2e-3, weight_decay=1e-4,
        lr_schedule="cosine", warmup_steps=100, grad_clip=1.0, ema_decay=0.995, amp="auto", epochs=10,
        dataset_repeat=4, milestone_every=0, preview_every=0, preview_n=0, num_workers=0, num_classes=10,
        p_uncond=0.1,
    ),
}


def get_config(name: str, **overrides: Any) -> TrainConfig:
    """A fresh copy of preset ``name`` with keyword overrides applied (validated)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    return base.replace(**overrides)


def load_config(path: str | Path) -> TrainConfig:
    """A config from a JSON file written by :meth:`TrainConfig.save_json` (``--config``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"config file {str(path)!r} must hold a JSON object of settings")
    if "preset" in d:  # {"preset": "lfw-tiny", "lr": 5e-4}: a preset plus overrides
        return get_config(d.pop("preset"), **d)
    return TrainConfig.from_dict(d)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def parse_value(key: str, text: str) -> Any:
    """Parse the string ``text`` for config field ``key`` (e.g. "0.5", "true", "32,64")."""
    hints = _field_types()
    if key not in hints:
        raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(hints))}")
    tp = hints[key]
    if tp == (bool | None):  # a speed switch: "auto" (or "none") leaves it to ddpm_ref.speed.perf.recommended
        if text.strip().lower() in ("auto", "none", "default"):
            return None
        tp = bool
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            value = float(text)
            if not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            return float(text)
        if typing.get_origin(tp) is tuple:
            return tuple(int(v) for v in text.replace("(", "").replace(")", "").split(",") if v.strip())
        if tp is str or isinstance(tp, types.UnionType):
            return text
    except ValueError:
        raise ValueError(f"cannot read {text!r} as {getattr(tp, '__name__', tp)} for config key {key!r}") from None
    return text


def apply_overrides(config: TrainConfig, pairs: list[str] | dict[str, Any]) -> TrainConfig:
    """Apply ``["key=value", …]`` strings (or a dict of already-typed values) to a config."""
    if isinstance(pairs, dict):
        return config.replace(**pairs)
    changes: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} must look like key=value (e.g. lr=5e-4)")
        key, text = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        changes[key] = parse_value(key, text.strip())
    return config.replace(**changes)


def build_model(config: TrainConfig) -> nn.Module:
    """The UNet a config describes (in_channels = out_channels = ``config.channels``), inside a
    :class:`~ddpm_ref.diffusion.VPrediction` when ``objective="v"`` (it then still returns ε̂)."""
    net = UNet(
        in_channels=config.channels, channels=config.model_channels, num_res_blocks=config.num_res_blocks,
        attention=config.attention, num_heads=config.num_heads, dropout=config.dropout,
        num_classes=config.num_classes or None,
    )
    return VPrediction(net, build_schedule(config)) if config.objective == "v" else net


def build_schedule(config: TrainConfig) -> NoiseSchedule:
    """The NoiseSchedule a config describes."""
    if config.beta_schedule == "cosine":
        return NoiseSchedule.from_name("cosine", config.T)
    return NoiseSchedule.from_name(config.beta_schedule, config.T, beta_start=config.beta_start,
                                   beta_end=config.beta_end)

__doc__ = (__doc__ or "") + "\nWhy lfw-tiny is set as it is:\n\n" + LFW_TINY_NOTES
__doc__ += "\nWhy lfw-demo is set as it is:\n\n" + LFW_DEMO_NOTES
__doc__ += "\nWhy digits-cfg is set as it is:\n\n" + DIGITS_CFG_NOTES
