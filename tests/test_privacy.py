from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity

from serdab.errors import ImageSetError
from serdab.privacy import best_map_similarity, default_images, load_image_dir, measure_leakage
from serdab.privacy.metrics import ssim_batch


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    image = default_images()[1].pixels  # scikit-image's camera man, grey
    return image[::4, ::4].astype(np.float32)


def test_identical_image_has_full_similarity(photo) -> None:
    sim = best_map_similarity(photo, photo[None])
    assert sim.pearson == pytest.approx(1.0, abs=1e-5)
    assert sim.ssim == pytest.approx(1.0, abs=1e-4)
    assert sim.mse == pytest.approx(0.0, abs=1e-5)


def test_inverted_image_is_just_as_revealing(photo) -> None:
    sim = best_map_similarity(photo, (1.0 - photo)[None] * 7.0 + 3.0)
    assert sim.pearson == pytest.approx(1.0, abs=1e-5)
    assert sim.ssim == pytest.approx(1.0, abs=1e-4)


def test_independent_noise_is_about_zero(photo) -> None:
    noise = np.random.default_rng(0).random((4, *photo.shape)).astype(np.float32)
    sim = best_map_similarity(photo, noise)
    assert sim.pearson < 0.05
    assert sim.ssim < 0.05
    assert sim.mse > 0.1


def test_downsampled_copy_still_leaks_and_blank_maps_do_not(photo) -> None:
    small = photo[::8, ::8]
    assert best_map_similarity(photo, small[None]).pearson > 0.8
    assert best_map_similarity(photo, np.ones((3, 1, 1), np.float32)).pearson == 0.0


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 40), st.integers(8, 40), st.integers(0, 2**31 - 1))
def test_batched_ssim_equals_scikit_image(h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.random((h, w)).astype(np.float32)
    b = (0.6 * a + 0.4 * rng.random((h, w))).astype(np.float32)
    ours = float(ssim_batch(torch.from_numpy(a), torch.from_numpy(b)[None])[0])
    assert ours == pytest.approx(structural_similarity(a, b, data_range=1.0), abs=1e-4)


def test_screened_ssim_matches_exhaustive_on_real_feature_maps(lenet) -> None:
    images = default_images(grey_digits=True, count=3)
    screened = measure_leakage(lenet, "lenet5", images, ssim_candidates=2)
    exhaustive = measure_leakage(lenet, "lenet5", images, ssim_candidates=None)
    for a, b in zip(screened.cuts, exhaustive.cuts, strict=True):
        assert a.pearson == b.pearson and a.mse == b.mse
        assert a.ssim <= b.ssim + 1e-6


def test_leakage_report_covers_every_cut_with_worst_image(lenet) -> None:
    report = measure_leakage(lenet, "lenet5", default_images(grey_digits=True, count=4))
    assert [c.index for c in report.cuts] == list(range(len(lenet.blocks) - 1))
    first, flat = report.cuts[0], report.cuts[6]
    assert first.resolution == [28, 28] and first.pearson > 0.5
    assert flat.resolution is None and flat.pixels == 1 and flat.pearson == 0.0
    assert set(first.worst_image) == {"pearson", "ssim", "mse"}


def test_image_directory_errors(tmp_path) -> None:
    with pytest.raises(ImageSetError, match="not found"):
        load_image_dir(tmp_path / "nope")
    with pytest.raises(ImageSetError, match="no image files"):
        load_image_dir(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageSetError, match="cannot read image"):
        load_image_dir(tmp_path)


def test_user_images_are_loaded(tmp_path) -> None:
    from skimage import io

    io.imsave(tmp_path / "frame.png", (np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8))
    images = load_image_dir(tmp_path)
    assert [i.name for i in images] == ["frame"] and images[0].pixels.shape == (40, 30, 3)
