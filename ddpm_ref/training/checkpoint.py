"""Checkpoints: atomic writes, ``weights_only`` loading, RNG state capture, EMA export and the shipped model.

A training checkpoint (``ckpt_latest.pt``, ``ckpt_epoch_010.pt``, …) is a dict of plain types and tensors, so
``torch.load(path, weights_only=True)`` reads it::

    format        "ddpm_ref.ckpt/1"
    config        TrainConfig.to_dict()
    model, ema    unwrapped state dicts (no ``module.`` prefix); ema_n_averaged: int
    optimizer, lr_scheduler, scaler (None without fp16)   state dicts
    epoch         completed epochs; step: optimizer steps so far; epoch_step: steps into the current epoch
    epoch_loss_sum, epoch_loss_count, nonfinite_steps, elapsed_s, world_size
    rng           {"torch", "cuda", "numpy", "python", "train_generators": one per rank}

An exported model (``export_ema``, the shipped ``assets/lfw_tiny.pt``) holds only
``{"format": "ddpm_ref.ema/1", "config", "ema", "step", "epoch"}``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..files import atomic_file
from ..schedule import NoiseSchedule
from .config import TrainConfig, build_model, build_schedule

__all__ = [
    "CKPT_FORMAT",
    "EXPORT_FORMAT",
    "ASSETS_DIR",
    "LFW_TINY_ASSET",
    "atomic_save",
    "load_checkpoint",
    "strip_module_prefix",
    "load_weights",
    "capture_rng_state",
    "restore_rng_state",
    "model_from_checkpoint",
    "export_ema",
    "load_pretrained_lfw_tiny",
    "MODEL_FIELDS",
    "FREE_FIELDS",
    "ResumeCheck",
    "resume_check",
]

CKPT_FORMAT = "ddpm_ref.ckpt/1"
EXPORT_FORMAT = "ddpm_ref.ema/1"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
LFW_TINY_ASSET = ASSETS_DIR / "lfw_tiny.pt"


#: settings that define the model and the diffusion: a checkpoint trained with other values is another model
MODEL_FIELDS = ("image_size", "channels", "model_channels", "num_res_blocks", "attention", "num_heads", "objective",
                "beta_schedule", "T", "beta_start", "beta_end")
#: settings that may change between a run and its resumption without a word: how long, where and how fast it runs
#: and how often it writes (every other change makes the run no longer one reproducible experiment)
FREE_FIELDS = frozenset({"name", "epochs", "max_steps", "time_budget_s", "save_every_steps", "milestone_every",
                         "preview_every", "preview_n", "num_workers", "device", "parallel", "channels_last",
                         "fused_adamw", "cudnn_benchmark", "compile", "compile_mode", "threads"})


@dataclass(frozen=True)
class ResumeCheck:
    """How a config differs from the one a checkpoint was trained with; each entry reads
    ``"beta_schedule: linear in the checkpoint, scaled_linear now"``."""

    conflicts: list[str]  # in MODEL_FIELDS: the checkpoint is another model or diffusion
    changed: list[str]  # other settings outside FREE_FIELDS: resumable, but no longer one experiment

    def __bool__(self) -> bool:
        return bool(self.conflicts or self.changed)

    @property
    def keys(self) -> list[str]:
        return sorted(entry.split(":", 1)[0] for entry in self.conflicts + self.changed)


def resume_check(stored: dict[str, Any], config: TrainConfig) -> ResumeCheck:
    """Compare a checkpoint's ``config`` dict with ``config`` (the one rule of the trainer and the Kaggle notebook).

    A key missing from ``stored`` (a checkpoint written before the field existed) counts as unchanged.
    """
    now = config.to_dict()

    def entries(keys: Any) -> list[str]:
        return [f"{k}: {stored[k]} in the checkpoint, {now[k]} now"
                for k in keys if k in stored and stored[k] != now[k]]

    return ResumeCheck(entries(MODEL_FIELDS),
                       entries(k for k in now if k not in FREE_FIELDS and k not in MODEL_FIELDS))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` that never leaves a torn file: the old checkpoint or the new one, fsynced
    (:func:`ddpm_ref.files.atomic_file`)."""
    with atomic_file(path, durable=True) as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint or exported model with ``weights_only=True``; one-line errors for bad files."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found: train first (python -m ddpm_ref train) "
                                "or pass --ckpt with an existing .pt file")
    if path.is_dir():
        latest = path / "checkpoints" / "ckpt_latest.pt"
        if latest.is_file():
            path = latest
        else:
            raise IsADirectoryError(f"{str(path)!r} is a folder without checkpoints/ckpt_latest.pt: "
                                    "pass a .pt file or a training output folder")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        if not is_zip:
            why = "not a file written by torch.save"
        elif "weights_only" in str(e):
            why = "it holds Python objects besides tensors and plain data, which a ddpm_ref checkpoint never does"
        else:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            why = "truncated or corrupted: " + first.split(". ")[0][:160]
        raise ValueError(f"{str(path)!r} is not a readable checkpoint ({why}); use a file written by "
                         "ddpm_ref train or ddpm_ref export") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CKPT_FORMAT, EXPORT_FORMAT):
        raise ValueError(f"{str(path)!r} is not a ddpm_ref checkpoint (no 'format': {CKPT_FORMAT!r} entry); "
                         "use a file written by ddpm_ref train or ddpm_ref export")
    ckpt["path"] = str(path)
    return ckpt


def strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` (DataParallel/DDP/AveragedModel) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = {}
    for k, v in state.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def load_weights(model: nn.Module, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load a state dict (with or without ``module.`` prefixes) strictly; a mismatch is a one-line ValueError."""
    state = strip_module_prefix(state)
    state.pop("n_averaged", None)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        detail = []
        if shapes:
            k = shapes[0]
            detail.append(f"{k}: {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model")
        if missing:
            detail.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ValueError(f"{source} was trained with a different architecture ({'; '.join(detail)}): use the "
                         "preset/config it was trained with, or a new output folder")
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and plain types (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def model_from_checkpoint(
    source: str | Path | dict[str, Any],
    *,
    ema: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, NoiseSchedule, TrainConfig]:
    """(model in eval mode, schedule, config) rebuilt from a checkpoint's own config; EMA weights by default."""
    ckpt = source if isinstance(source, dict) else load_checkpoint(source)
    config = TrainConfig.from_dict(dict(ckpt["config"]))
    model = build_model(config)
    key = "ema" if ema and ckpt.get("ema") is not None else "model"
    if key not in ckpt:
        raise ValueError(f"{ckpt.get('path', 'checkpoint')!r} holds no {key!r} weights")
    load_weights(model, ckpt[key], source=repr(ckpt.get("path", "checkpoint")))
    return model.to(device).eval(), build_schedule(config), config


def export_ema(ckpt_path: str | Path, out_path: str | Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write the EMA weights of a training checkpoint (in ``dtype``) with its config: a small inference file."""
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.get("ema") is None:
        raise ValueError(f"{str(ckpt_path)!r} holds no EMA weights")
    ema = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in strip_module_prefix(ckpt["ema"]).items()}
    out = {"format": EXPORT_FORMAT, "config": ckpt["config"], "ema": ema,
           "step": int(ckpt.get("step", 0)), "epoch": int(ckpt.get("epoch", 0))}
    return atomic_save(out, out_path)


def load_pretrained_lfw_tiny(device: str | torch.device = "cpu") -> tuple[nn.Module, NoiseSchedule]:
    """(model, schedule) of the shipped lfw-tiny checkpoint: EMA weights, fp32, eval mode.

    Reproduce the file with the command in ``TRAINING.md`` (train the lfw-tiny preset, then export).
    """
    if not LFW_TINY_ASSET.is_file():
        raise FileNotFoundError(f"the shipped checkpoint {str(LFW_TINY_ASSET)!r} is missing: reinstall ddpm-course "
                                "or rebuild it (see TRAINING.md)")
    model, schedule, _ = model_from_checkpoint(LFW_TINY_ASSET, device=device)
    return model, schedule
