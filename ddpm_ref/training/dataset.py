"""The trainer's data: the images of a config, repeated per epoch, and a sampler that can resume mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from ..data import ImageFolderDataset, digits, lfw_faces
from .config import TrainConfig

__all__ = ["TrainImages", "LabelledImages", "build_dataset", "ResumableSampler"]


class TrainImages(Dataset):
    """Items (image [C, H, W], number of unreadable files skipped to get it), dataset repeated ``repeat`` times.

    Images of an :class:`ImageFolderDataset` come as uint8 pixels (the trainer maps them to [−1, 1] on the
    device, :func:`ddpm_ref.data.uint8_to_unit`); tensors and other datasets as they are."""

    def __init__(self, base: Dataset | Tensor, repeat: int = 1) -> None:
        self.base = base
        self.n = len(base)
        self.repeat = repeat

    def __len__(self) -> int:
        return self.n * self.repeat

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        i %= self.n
        if isinstance(self.base, Tensor):
            return self.base[i], 0
        if isinstance(self.base, ImageFolderDataset):  # uint8 across the worker boundary: 4× less shared memory
            x, bad = self.base.load(i, uint8=True)
            return x, len(bad)
        item = self.base[i]
        return (item[0] if isinstance(item, (tuple, list)) else item), 0


class LabelledImages(Dataset):
    """Items (image [C, H, W], 0, label) of labelled images, repeated ``repeat`` times (class-conditional runs)."""

    def __init__(self, images: Tensor, labels: Tensor, repeat: int = 1) -> None:
        self.images, self.labels, self.repeat = images, labels, repeat

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def __getitem__(self, i: int) -> tuple[Tensor, int, Tensor]:
        i %= len(self.images)
        return self.images[i], 0, self.labels[i]


def build_dataset(config: TrainConfig) -> Dataset | Tensor:
    """The training images of a config: the LFW train split (``data="lfw"``), scikit-learn's digits
    (``data="digits"``) or an :class:`ImageFolderDataset`.

    Flips are not done here: the trainer flips whole batches with its own seeded generator (exact resume).
    """
    if config.data == "digits":
        if config.channels != 1:
            raise ValueError("the digits are grayscale: use channels=1 with data=digits")
        return digits("train", size=config.image_size)[0]
    if config.data == "lfw":
        if config.channels != 1:
            raise ValueError("the LFW faces are grayscale: use channels=1 with data=lfw")
        return lfw_faces("train", size=config.image_size)
    if not config.data:
        raise ValueError(f"preset {config.name!r} needs a data folder: pass --data PATH (a folder of images), "
                         "e.g. /kaggle/input/celebahq256-images-only/data256x256")
    return ImageFolderDataset(config.data, config.image_size, channels=config.channels, hflip=False)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle per epoch, rank slice) that can start part-way into an epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:  # type: ignore[override]
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
