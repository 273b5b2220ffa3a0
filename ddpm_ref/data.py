"""Training data: the LFW faces that ship with scikit-image, any folder of images, and synthetic RGB faces.

Every image comes out as a float32 tensor [C, H, W] (a batch: [N, C, H, W]) scaled to [−1, 1], the range the
forward process of Ho et al. (2020, §3.3) assumes.

- :func:`lfw_faces` — the 100 real face crops of ``skimage.data.lfw_subset()`` (25×25 grayscale; images 100–199
  of that set are non-faces and are never used), with a fixed 90/10 train/test split. No download.
- :class:`ImageFolderDataset` — every .jpg/.jpeg/.png/.webp under a folder tree: resize + center crop, optional
  random horizontal flip, RGB or grayscale. Unreadable files are skipped with a warning and counted.
- :func:`digits` — scikit-learn's bundled handwritten digits (1,797 labelled 8×8 images, ten classes), with a fixed
  train/test split: the labelled data of the guidance lesson. No download.
- :func:`synthetic_faces` — deterministic cartoon faces (seeded, any size) for RGB tests with no data at all.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "LFW_NUM_FACES",
    "LFW_TEST_SIZE",
    "LFW_SPLIT_SEED",
    "lfw_faces",
    "lfw_split_indices",
    "ImageFolderDataset",
    "uint8_to_unit",
    "find_images",
    "synthetic_faces",
    "to_uint8_image",
    "digits",
    "DIGITS_TEST_SIZE",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
LFW_NUM_FACES = 100  # lfw_subset(): images 0–99 are faces, 100–199 are not
LFW_TEST_SIZE = 10
LFW_SPLIT_SEED = 0

Split = Literal["train", "test", "all"]
DIGITS_TEST_SIZE = 297  # of 1797: 1500 to train on


def lfw_split_indices(split: Split) -> list[int]:
    """Indices into the 100 faces for a split: a fixed permutation (seed 0), the first 10 are ``test``.

    ``all`` is 0…99 in the original order; ``train`` (90) and ``test`` (10) are sorted and disjoint.
    """
    perm = torch.randperm(LFW_NUM_FACES, generator=torch.Generator().manual_seed(LFW_SPLIT_SEED)).tolist()
    if split == "all":
        return list(range(LFW_NUM_FACES))
    if split == "test":
        return sorted(perm[:LFW_TEST_SIZE])
    if split == "train":
        return sorted(perm[LFW_TEST_SIZE:])
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


def lfw_faces(split: Split = "train", size: int = 24) -> Tensor:
    """The LFW face crops shipped with scikit-image as a float32 tensor [N, 1, size, size] in [−1, 1].

    The 25×25 originals are center-cropped to 24×24 (even, so a U-Net can halve it three times) and then
    resized to ``size`` with antialiasing when ``size`` ≠ 24. N is 90 (``train``), 10 (``test``) or 100 (``all``).
    """
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an int >= 4 (pixels), got {size!r}")
    idx = lfw_split_indices(split)
    from skimage.data import lfw_subset

    faces = torch.from_numpy(np.asarray(lfw_subset()[:LFW_NUM_FACES], dtype=np.float32))  # [100, 25, 25] in [0, 1]
    x = faces[idx].unsqueeze(1)  # [N, 1, 25, 25]
    top = int(round((x.shape[-2] - 24) / 2.0))  # the center crop of torchvision's center_crop: rows and columns 0–23
    left = int(round((x.shape[-1] - 24) / 2.0))
    x = x[..., top:top + 24, left:left + 24]  # (a slice: importing torchvision costs a lesson kernel over 2 s)
    if size != 24:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x * 2.0 - 1.0).clamp(-1.0, 1.0).contiguous()


def find_images(root: str | Path) -> list[Path]:
    """Every file under ``root`` (recursively) whose extension is one of IMAGE_EXTENSIONS, sorted.

    Raises FileNotFoundError / NotADirectoryError with a message saying what was looked for and where.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"image folder {str(root)!r} does not exist: point --data at a folder of {'/'.join(IMAGE_EXTENSIONS)} "
            "images (or use --data lfw for the faces that ship with scikit-image)"
        )
    if not root.is_dir():
        raise NotADirectoryError(f"--data must be a folder of images, but {str(root)!r} is a file")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(
            f"no images found under {str(root.resolve())!r}: looked recursively for files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (case-insensitive)"
        )
    return files


def uint8_to_unit(x: Tensor) -> Tensor:
    """Pixels 0…255 (uint8, any shape, any device) → float32 in [−1, 1]: x/255·2 − 1."""
    return x.float().div_(255.0).mul_(2.0).sub_(1.0)


class ImageFolderDataset(Dataset):
    """Images of a folder tree as tensors [C, size, size] in [−1, 1] (C = ``channels``: 3 RGB, 1 grayscale).

    Each image is resized (shorter side to ``size``, antialiased) and center-cropped to size×size, flipped
    left-right with probability 1/2 when ``hflip``, and scaled from [0, 1] to [−1, 1]. A file that cannot be
    decoded is skipped with a warning, recorded in ``skipped`` (this process) and replaced by the next readable
    file, so an epoch never crashes on one bad image. ``load(i)`` also returns the paths skipped on the way.
    """

    def __init__(self, root: str | Path, size: int, *, channels: int = 3, hflip: bool = True) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int (pixels), got {size!r}")
        self.root = Path(root).expanduser()
        self.files = find_images(self.root)
        self.size = size
        self.channels = channels
        self.hflip = hflip
        self.skipped: set[Path] = set()
        from torchvision.transforms import v2 as T

        self._resize = T.Compose([
            T.Resize(size, antialias=True),
            T.CenterCrop(size),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        mode = "RGB" if self.channels == 3 else "grayscale"
        return f"ImageFolderDataset({str(self.root)!r}, {len(self)} images, {self.size}px {mode}, hflip={self.hflip})"

    def _read(self, path: Path, uint8: bool = False) -> Tensor:
        with Image.open(path) as im:
            im = im.convert("RGB" if self.channels == 3 else "L")
            arr = np.asarray(im, dtype=np.uint8).copy()
        x = torch.from_numpy(arr)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)  # [C, H, W] uint8
        x = self._resize(x)  # uint8 in, uint8 out
        return x if uint8 else uint8_to_unit(x)

    def load(self, index: int, *, uint8: bool = False) -> tuple[Tensor, list[Path]]:
        """Image ``index`` (or the next readable one) [C, size, size] and the unreadable paths passed over.

        ``uint8=True`` returns the resized pixels as uint8 (a quarter of the bytes a data-loader worker hands over
        through shared memory); :func:`uint8_to_unit` turns them into exactly the [−1, 1] floats of the default."""
        bad: list[Path] = []
        n = len(self.files)
        for k in range(n):
            path = self.files[(index + k) % n]
            try:
                x = self._read(path, uint8)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                if path not in self.skipped:
                    warnings.warn(f"skipping unreadable image {path}: {type(e).__name__}: {e}", stacklevel=2)
                self.skipped.add(path)
                bad.append(path)
                continue
            if self.hflip and bool(torch.rand(()) < 0.5):
                x = x.flip(-1)
            return x, bad
        raise RuntimeError(f"none of the {n} image files under {str(self.root)!r} could be read")

    def __getitem__(self, index: int) -> Tensor:
        return self.load(index)[0]


# ----------------------------------------------------------------------------------------------------------------
# Synthetic faces: deterministic RGB test images with a face's layout (skin oval, eyes, brows, mouth, hair).


def synthetic_faces(n: int, size: int = 32, *, seed: int = 0) -> Tensor:
    """``n`` cartoon faces [n, 3, size, size] in [−1, 1]; the same ``seed`` gives the same images.

    Each face varies in skin and hair colour, face width, eye spacing and smile. Drawn analytically on a
    pixel grid (antialiased edges), so any size works and no file is needed.
    """
    if n < 1 or size < 4:
        raise ValueError(f"need n >= 1 and size >= 4, got n={n}, size={size}")
    g = torch.Generator().manual_seed(seed)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    soft = 2.0 / size  # edge width: one pixel

    def disc(cx: float, cy: float, rx: float, ry: float) -> Tensor:
        r = torch.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
        return torch.clamp((1 - r) / (soft / min(rx, ry)) + 0.5, 0, 1)

    out = torch.empty(n, 3, size, size)
    for i in range(n):
        u = torch.rand(12, generator=g).tolist()
        bg = torch.tensor([0.2 + 0.6 * u[0], 0.3 + 0.5 * u[1], 0.5 + 0.4 * u[2]])
        skin = torch.tensor([0.75 + 0.2 * u[3], 0.55 + 0.2 * u[3], 0.4 + 0.2 * u[3]]) * (0.55 + 0.45 * u[4])
        hair = torch.tensor([0.1 + 0.5 * u[5], 0.07 + 0.3 * u[5], 0.05 + 0.15 * u[5]])
        fw, fh = 0.52 + 0.12 * u[6], 0.68 + 0.08 * u[7]
        eye_dx, eye_y = 0.18 + 0.08 * u[8], -0.12 + 0.06 * u[9]
        smile = 0.05 + 0.1 * u[10]
        img = bg[:, None, None].expand(3, size, size).clone()

        def paint(mask: Tensor, colour: Tensor, img: Tensor = img) -> None:
            img.mul_(1 - mask).add_(mask * colour[:, None, None])

        paint(disc(0.0, -0.18, fw * 1.08, fh * 0.85), hair)
        paint(disc(0.0, 0.05, fw, fh), skin)
        for sx in (-1, 1):
            paint(disc(sx * eye_dx, eye_y, 0.09, 0.06), torch.tensor([0.95, 0.95, 0.95]))
            paint(disc(sx * eye_dx, eye_y, 0.045, 0.045), torch.tensor([0.1, 0.1, 0.15]))
            brow = disc(sx * eye_dx, eye_y - 0.13, 0.11, 0.025)
            paint(brow, hair * 0.8)
        paint(disc(0.0, 0.08, 0.04, 0.1), skin * 0.85)
        lips = disc(0.0, 0.36, 0.2, 0.04 + smile) * (1 - disc(0.0, 0.36 - smile, 0.22, 0.04 + smile))
        paint(lips, torch.tensor([0.65, 0.2, 0.25]))
        out[i] = img
    return (out.clamp(0, 1) * 2 - 1).contiguous()


def to_uint8_image(x: Tensor) -> np.ndarray:
    """One image [C, H, W] in [−1, 1] → uint8 array [H, W] (C=1) or [H, W, 3], for PIL."""
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected one image [C, H, W] with C in (1, 3), got shape {tuple(x.shape)}")
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return a[0].numpy() if a.shape[0] == 1 else a.permute(1, 2, 0).numpy()



def digits(split: Split = "train", size: int = 8) -> tuple[Tensor, Tensor]:
    """scikit-learn's handwritten digits (``sklearn.datasets.load_digits``): images and labels. No download.

    Returns (images float32 [N, 1, size, size] in [−1, 1], labels LongTensor [N] in 0…9). The originals are 8×8
    with 17 grey levels (0…16, ink bright), mapped linearly to [−1, 1]; ``size`` ≠ 8 resizes them bilinearly.
    A fixed permutation (seed 0) puts 297 images in ``test`` and 1500 in ``train``; ``all`` is the 1797 in the
    original order.
    """
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an int >= 4 (pixels), got {size!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1) / 16.0  # [1797, 1, 8, 8] in [0, 1]
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    if split == "test":
        idx = perm[:DIGITS_TEST_SIZE].sort().values
    elif split == "train":
        idx = perm[DIGITS_TEST_SIZE:].sort().values
    elif split == "all":
        idx = torch.arange(len(y))
    else:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    x, y = x[idx], y[idx]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < 8)
    return (x * 2.0 - 1.0).clamp(-1.0, 1.0).contiguous(), y.contiguous()
