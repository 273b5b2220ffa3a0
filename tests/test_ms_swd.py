"""ddpm_ref.metrics.ms_swd (Karras et al. 2018, multi-scale sliced Wasserstein distance) and brightness_gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import ndimage

from ddpm_ref.data import lfw_faces
from ddpm_ref.metrics import (
    MSSWD,
    brightness_gap,
    laplacian_pyramid,
    ms_swd,
    pyramid_resolutions,
    sliced_wasserstein,
)


@pytest.fixture(scope="module")
def faces() -> tuple[torch.Tensor, torch.Tensor]:
    return lfw_faces("train"), lfw_faces("test")


def _noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def test_a_set_against_itself_is_zero_at_the_same_positions_and_the_sampling_floor_otherwise(faces):
    train, test = faces
    same = ms_swd(train, train, same_positions=True)
    assert isinstance(same, MSSWD) and same.mean == 0.0 and all(d == 0.0 for _, d in same.levels)
    floor = ms_swd(train, train)
    assert 0 < floor.mean < 0.5 * ms_swd(test, train).mean  # independent positions: small, but not zero


def test_levels_follow_the_pyramid_and_mean_is_their_average(faces):
    train, test = faces
    r = ms_swd(test, train)
    assert [res for res, _ in r.levels] == [24, 12] == pyramid_resolutions(24)
    assert r.mean == pytest.approx(np.mean([d for _, d in r.levels]))
    assert pyramid_resolutions(256) == [256, 128, 64, 32, 16]
    assert pyramid_resolutions(128) == [128, 64, 32, 16]  # the paper's Table 1 columns
    assert pyramid_resolutions(32) == [32, 16] and pyramid_resolutions(16) == [16, 8]


def test_symmetric(faces):
    train, _ = faces
    a, b = train[:45], _noisy(train[45:], 0.1)
    ab, ba = ms_swd(a, b, same_positions=True), ms_swd(b, a, same_positions=True)
    assert ab.mean == pytest.approx(ba.mean, rel=1e-6)  # same positions and directions: exactly symmetric
    floor = ms_swd(train, train).mean
    assert abs(ms_swd(a, b).mean - ms_swd(b, a).mean) < 2 * floor  # independent positions: up to sampling


def test_deterministic_for_a_seed(faces):
    train, test = faces
    assert ms_swd(test, train, seed=3) == ms_swd(test, train, seed=3)
    assert ms_swd(test, train, seed=3) != ms_swd(test, train, seed=4)


@pytest.mark.parametrize("degrade, levels", [
    (lambda x, s: _noisy(x, s), (0.03, 0.1, 0.3, 1.0)),
    (lambda x, s: TF.gaussian_blur(x, 9, s), (0.6, 1.0, 1.6, 2.5)),
])
def test_grows_with_a_controlled_degradation(faces, degrade, levels):
    train, _ = faces
    d = [ms_swd(degrade(train, s), train).mean for s in levels]
    assert d == sorted(d) and d[0] < d[-1] / 2, d


def test_ranks_noise_and_blurred_faces_below_held_out_real_faces(faces):
    train, test = faces
    real = ms_swd(test, train).mean
    blurred = ms_swd(TF.gaussian_blur(test, 5, 1.5), train).mean
    noise = ms_swd(torch.rand(10, 1, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1, train).mean
    assert real < 0.7 * blurred and real < 0.5 * noise, (real, blurred, noise)


def test_sliced_wasserstein_matches_a_hand_computation():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    # along x: sorted {0, 1} vs {0, 2} → |0-0|, |1-2| → 0.5; along y: {0, 0} vs {0, 1} → 0.5;
    # along (1, 1)/√2: {0, 1/√2} vs {1/√2, 2/√2} → 1/√2 each
    dirs = torch.tensor([[1.0, 0.0, 2**-0.5], [0.0, 1.0, 2**-0.5]])
    assert sliced_wasserstein(a, b, dirs) == pytest.approx((0.5 + 0.5 + 2**-0.5) / 3)


def test_laplacian_pyramid_matches_scipy_and_reconstructs():
    # ProGAN's code: scipy.ndimage.convolve(mode="mirror") with the 5×5 binomial kernel (cv2.pyrDown / pyrUp)
    k1 = np.array([1, 4, 6, 4, 1]) / 16
    k = np.outer(k1, k1)[None, None]
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32))

    def down(m):
        return ndimage.convolve(m, k, mode="mirror")[:, :, ::2, ::2]

    def up(m):
        r = np.zeros((m.shape[0], m.shape[1], m.shape[2] * 2, m.shape[3] * 2))
        r[:, :, ::2, ::2] = m
        return ndimage.convolve(r, k * 4, mode="mirror")

    ref = [x]
    for _ in range(2):
        ref.append(down(ref[-1]))
        ref[-2] = ref[-2] - up(ref[-1])
    ours = laplacian_pyramid(torch.from_numpy(x), 3)
    for o, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(o.numpy(), r, atol=1e-12)
    # collapsing the pyramid gives the image back
    rebuilt = ours[2]
    for lvl in (1, 0):
        rebuilt = ours[lvl] + torch.from_numpy(up(rebuilt.numpy()))
    np.testing.assert_allclose(rebuilt.numpy(), x, atol=1e-12)


def test_brightness_gap_hand_cases(faces):
    a = torch.zeros(2, 1, 16, 16)
    a[1] = 0.5
    b = torch.full((2, 1, 16, 16), 0.25)
    assert brightness_gap(a, b) == pytest.approx(0.25)  # sorted means {0, 0.5} vs {0.25, 0.25}
    train, _ = faces
    # a shift of every image moves it by as much
    assert brightness_gap(train * 0.5 + 0.2, train * 0.5) == pytest.approx(0.2, abs=1e-6)
    assert brightness_gap(train, train) == 0.0


@pytest.mark.parametrize("a, b, message", [
    (torch.zeros(4, 24, 24), torch.zeros(4, 1, 24, 24), r"must be an image set \[N, C, H, W\]"),
    (torch.full((4, 1, 24, 24), 2.0), torch.zeros(4, 1, 24, 24), r"values in \[2, 2\]; images must lie in \[-1, 1\]"),
    (torch.zeros(1, 1, 24, 24), torch.zeros(4, 1, 24, 24), "holds 1 image"),
    (torch.zeros(4, 1, 24, 24), torch.zeros(4, 3, 24, 24), r"same \[C, H, W\]"),
    (torch.zeros(4, 1, 24, 24), torch.zeros(4, 1, 32, 32), r"same \[C, H, W\]"),
    (torch.zeros(4, 1, 12, 12), torch.zeros(4, 1, 12, 12), "too small"),
    (torch.zeros(4, 1, 24, 24, dtype=torch.uint8), torch.zeros(4, 1, 24, 24), "dtype torch.uint8"),
])
def test_bad_input_one_line_errors(a, b, message):
    with pytest.raises(ValueError, match=message) as err:
        ms_swd(a, b)
    assert "\n" not in str(err.value)


def test_same_positions_needs_equal_sizes(faces):
    train, test = faces
    with pytest.raises(ValueError, match="same_positions needs sets of equal size"):
        ms_swd(test, train, same_positions=True)
