"""Data pipeline: the shipped LFW faces, the image-folder dataset (incl. corrupt files) and synthetic faces."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_ref.data import (
    ImageFolderDataset,
    find_images,
    lfw_faces,
    lfw_split_indices,
    synthetic_faces,
    to_uint8_image,
)


def test_lfw_splits_are_fixed_disjoint_and_cover_the_100_faces():
    train, test = lfw_split_indices("train"), lfw_split_indices("test")
    assert len(train) == 90 and len(test) == 10
    assert set(train).isdisjoint(test)
    assert sorted(train + test) == list(range(100))
    assert lfw_split_indices("test") == test  # fixed, not re-drawn
    with pytest.raises(ValueError, match="split"):
        lfw_split_indices("val")


def test_lfw_faces_are_the_skimage_face_crops_in_minus1_1():
    from skimage.data import lfw_subset

    orig = lfw_subset()[:100]  # [100, 25, 25] in [0, 1]
    x = lfw_faces("all", size=24)
    assert x.shape == (100, 1, 24, 24) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    back = ((x[:, 0].double() + 1) / 2).numpy()
    # a 24×24 crop of the 25×25 originals: one of the four one-pixel offsets
    assert any(
        np.allclose(back, orig[:, a : a + 24, b : b + 24], atol=1e-6) for a in (0, 1) for b in (0, 1)
    ), "lfw_faces is not a crop of the first 100 lfw_subset images"
    test = lfw_faces("test")
    assert torch.equal(test, x[lfw_split_indices("test")])
    assert lfw_faces("train").shape == (90, 1, 24, 24)


def test_lfw_faces_resize():
    x = lfw_faces("test", size=32)
    assert x.shape == (10, 1, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="size"):
        lfw_faces("train", size=2)


def test_synthetic_faces_are_deterministic_rgb():
    a = synthetic_faces(4, 32, seed=3)
    assert a.shape == (4, 3, 32, 32)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, synthetic_faces(4, 32, seed=3))
    assert not torch.equal(a, synthetic_faces(4, 32, seed=4))
    assert a.std() > 0.2  # not a flat image


def _write(path: Path, x: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_image(x)).save(path)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    faces = synthetic_faces(4, 16, seed=0)
    _write(tmp_path / "a" / "0.png", faces[0])
    _write(tmp_path / "a" / "b" / "1.PNG", faces[1])
    _write(tmp_path / "2.jpg", faces[2])
    _write(tmp_path / "3.webp", faces[3])
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_finds_images_recursively_and_ignores_other_files(folder: Path):
    files = find_images(folder)
    assert [f.name for f in files] == ["2.jpg", "3.webp", "0.png", "1.PNG"]
    ds = ImageFolderDataset(folder, 16, hflip=False)
    assert len(ds) == 4
    x = ds[2]  # a/0.png: lossless and already 16×16, so it round-trips exactly
    expected = torch.from_numpy(to_uint8_image(synthetic_faces(1, 16, seed=0)[0])).permute(2, 0, 1).float()
    assert torch.equal(x, expected / 255 * 2 - 1)
    assert ds[0].shape == (3, 16, 16)


def test_image_folder_grayscale_and_hflip(folder: Path, tmp_path: Path):
    gray = ImageFolderDataset(folder, 8, channels=1, hflip=False)
    assert gray[0].shape == (1, 8, 8)
    side = tmp_path / "asym"
    _write(side / "face.png", lfw_faces("test", size=16)[0])  # a real face: not left-right symmetric
    plain = ImageFolderDataset(side, 16, channels=1, hflip=False)[0]
    flipper = ImageFolderDataset(side, 16, channels=1, hflip=True)
    torch.manual_seed(0)
    draws = [flipper[0] for _ in range(40)]
    n_plain = sum(torch.equal(x, plain) for x in draws)
    n_flip = sum(torch.equal(x, plain.flip(-1)) for x in draws)
    assert n_plain + n_flip == 40 and 8 <= n_flip <= 32, (n_plain, n_flip)


def test_image_folder_resize_then_center_crop(tmp_path: Path):
    img = np.zeros((20, 40), dtype=np.uint8)  # H=20, W=40: left half black, right half white
    img[:, 20:] = 255
    Image.fromarray(img).save(tmp_path / "wide.png")
    x = ImageFolderDataset(tmp_path, 16, channels=1, hflip=False)[0]
    assert x.shape == (1, 16, 16)  # shorter side to 16 (→ 16×32), then the central 16 columns
    assert torch.allclose(x[..., :6], torch.tensor(-1.0)) and torch.allclose(x[..., -6:], torch.tensor(1.0))


def test_corrupt_files_are_skipped_with_a_warning_and_counted(folder: Path):
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    ds = ImageFolderDataset(folder, 16, hflip=False)
    assert len(ds) == 6
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        items = [ds.load(i) for i in range(len(ds))]
    assert all(x.shape == (3, 16, 16) for x, _ in items)
    assert {p.name for p in ds.skipped} == {"broken.jpg", "empty.png"}
    # load(i) reports what it passed over: broken.jpg is passed once, empty.png twice (for itself and broken.jpg)
    passed = [p.name for _, bad in items for p in bad]
    assert sorted(passed) == ["broken.jpg", "empty.png", "empty.png"]
    with warnings.catch_warnings():  # warned once per file, not once per epoch
        warnings.simplefilter("error")
        _ = [ds[i] for i in range(len(ds))]


def test_clear_errors_for_missing_empty_and_unreadable_folders(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", 16)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no images found .*\.jpg"):
        ImageFolderDataset(tmp_path, 16)
    with pytest.raises(NotADirectoryError, match="is a file"):
        ImageFolderDataset(tmp_path / "readme.txt", 16)
    (tmp_path / "x.png").write_bytes(b"garbage")
    ds = ImageFolderDataset(tmp_path, 16)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="none of the 1 image files"):
        ds[0]
    with pytest.raises(ValueError, match="channels"):
        ImageFolderDataset(tmp_path, 16, channels=2)
