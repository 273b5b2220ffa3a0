"""Where things are on Kaggle: the input and working folders, settings from the environment, the dataset's image
folder, and a previous run's output attached as an input (adopted to resume)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SEED_DATASET", "SEED_DATA_DIR", "KaggleDataNotFound", "input_root", "working_dir", "env_value",
           "count_images", "find_image_dir", "Adopted", "adopt_previous_run", "resume_conflicts"]

#: the Kaggle dataset of the seed run and the folder the seed notebook reads
SEED_DATASET = "denislukovnikov/celebahq256-images-only"
SEED_DATA_DIR = "celebahq256-images-only/data256x256"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_MIN_IMAGES = 1000
#: folder names that hold a run's own outputs, never training data
OUTPUT_FOLDERS = {"generated", "previews", "checkpoints", "eval", "plots", "ddpm_ref_src"}


class KaggleDataNotFound(FileNotFoundError):
    """No image folder under the input root: the message says which dataset to attach and how."""


def input_root() -> Path:
    """Where Kaggle mounts attached datasets and notebook outputs (``DDPM_INPUT_ROOT`` overrides)."""
    return Path(os.environ.get("DDPM_INPUT_ROOT", "/kaggle/input")).expanduser()


def working_dir() -> Path:
    """The only folder a Kaggle notebook may write and keep (``DDPM_WORKING_DIR`` overrides); created."""
    path = Path(os.environ.get("DDPM_WORKING_DIR", "/kaggle/working")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_value(name: str, default: Any) -> Any:
    """``DDPM_<NAME>`` from the environment, parsed to the type of ``default``; ``default`` when unset.

    bool: 1/true/yes/on or 0/false/no/off; int, float, str as such; a tuple or list: comma-separated numbers;
    a dict: a JSON object. A value that does not parse raises a one-line ValueError naming the variable.
    """
    var = f"DDPM_{name.upper()}"
    text = os.environ.get(var)
    if text is None or text.strip() == "":
        return default
    text = text.strip()
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, (tuple, list)):
            items = [float(v) if "." in v or "e" in v.lower() else int(v) for v in text.split(",") if v.strip()]
            return type(default)(items)
        if isinstance(default, dict):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (ValueError, json.JSONDecodeError):
        raise ValueError(f"environment variable {var}={text!r} cannot be read as {type(default).__name__}; "
                         f"unset it or give a value like {default!r}") from None
    return text


def count_images(folder: Path) -> int:
    """Number of image files directly inside ``folder`` (not recursive)."""
    try:
        return sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError:
        return 0


def find_image_dir(root: Path | None = None, *, min_images: int | None = None, max_depth: int = 5) -> Path:
    """The folder of training images under ``root`` (default :func:`input_root`).

    ``DDPM_DATA_DIR`` wins when set. Otherwise the seed's path ``<root>/celebahq256-images-only/data256x256``
    is used when it holds images; else the folder (at most ``max_depth`` levels down) with the most images
    directly inside, if it has at least ``min_images`` (default ``DDPM_MIN_IMAGES`` or 1000). Folders of a run's
    own outputs (``generated/``, ``checkpoints/`` …) never count. Raises :class:`KaggleDataNotFound` naming
    the dataset to attach.
    """
    explicit = os.environ.get("DDPM_DATA_DIR")
    if explicit:
        path = Path(explicit).expanduser()
        if count_images(path) == 0:
            raise KaggleDataNotFound(f"DDPM_DATA_DIR={explicit!r} holds no {'/'.join(IMAGE_SUFFIXES)} images: "
                                     "point it at the image folder or unset it to search the inputs")
        return path
    root = input_root() if root is None else Path(root)
    if min_images is None:
        min_images = int(os.environ.get("DDPM_MIN_IMAGES", DEFAULT_MIN_IMAGES))
    seed_path = root / SEED_DATA_DIR
    if count_images(seed_path) > 0:
        return seed_path
    best, best_n = None, 0
    if root.is_dir():
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            depth = len(here.relative_to(root).parts)
            dirnames[:] = sorted(d for d in dirnames if d not in OUTPUT_FOLDERS and not d.startswith("."))
            if depth >= max_depth:
                dirnames[:] = []
            n = count_images(here)
            if n > best_n:
                best, best_n = here, n
    if best is not None and best_n >= min_images:
        return best
    found = f" (the largest image folder, {best}, holds only {best_n})" if best is not None else ""
    raise KaggleDataNotFound(
        f"no folder of at least {min_images} images under {str(root)!r}{found}. Attach the dataset "
        f"{SEED_DATASET!r}: in the notebook's right panel, Add Input → Datasets → search 'celebahq256-images-only' "
        f"→ Add (it mounts at {str(seed_path)!r}), then run this cell again"
    )


def _checkpoint_step(path: Path) -> int:
    """The optimizer step stored in a training checkpoint (−1 when it cannot be read)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt.get("step", -1))
    except Exception:  # a torn or foreign file is simply not a candidate
        return -1


@dataclass
class Adopted:
    """What :func:`adopt_previous_run` did: the checkpoint used (if any), its step and the files copied."""

    source: Path | None = None
    step: int = -1
    copied: list[Path] = field(default_factory=list)
    note: str = ""


def adopt_previous_run(
    work: Path,
    root: Path | None = None,
    *,
    ckpt_name: str = "checkpoints/ckpt_latest.pt",
    also: Sequence[str] = ("checkpoints/ckpt_epoch_*.pt", "losses.csv", "previews/*.png"),
    max_depth: int = 4,
) -> Adopted:
    """Continue from a previous run's output that was attached as an input (a notebook version's output).

    When ``work/ckpt_name`` exists this session already has a run and nothing changes. Otherwise every
    ``ckpt_name`` under ``root`` (default :func:`input_root`, at most ``max_depth`` levels down) is a candidate;
    the one with the most optimizer steps is copied into ``work`` with the files matching ``also`` next to it
    (milestones, the loss log, previews), so the trainer resumes from it and the new output is complete.
    """
    own = work / ckpt_name
    if own.is_file():
        return Adopted(own, _checkpoint_step(own), [], f"resuming this session's own run ({own})")
    root = input_root() if root is None else Path(root)
    candidates: list[tuple[int, Path]] = []
    if root.is_dir():
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if len(here.relative_to(root).parts) >= max_depth:
                dirnames[:] = []
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            path = here / ckpt_name
            if path.is_file():
                candidates.append((_checkpoint_step(path), here))
    candidates = [c for c in candidates if c[0] >= 0]
    if not candidates:
        return Adopted(note="no checkpoint here or in the inputs: training starts from scratch")
    step, run_dir = max(candidates, key=lambda c: (c[0], str(c[1])))
    copied: list[Path] = []
    for pattern in (ckpt_name, *also):
        for src in sorted(run_dir.glob(pattern)):
            dst = work / src.relative_to(run_dir)
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)  # a copy cut short never looks like a checkpoint
            copied.append(dst)
    return Adopted(run_dir / ckpt_name, step, copied,
                   f"continuing the attached run {run_dir} from step {step} ({len(copied)} files copied)")


def resume_conflicts(checkpoint: Path, config: Any) -> list[str]:
    """How ``config`` differs from the config stored in ``checkpoint`` in the model and diffusion settings
    (:data:`ddpm_ref.checkpoint.MODEL_FIELDS`; empty: compatible). A missing file has none.

    Each entry reads ``"beta_schedule: linear in the checkpoint, scaled_linear now"``.
    """
    import torch

    from ddpm_ref.checkpoint import resume_check

    if not Path(checkpoint).is_file():
        return []
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("config", {})
    return resume_check(stored, config).conflicts
