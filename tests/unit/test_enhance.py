"""Tests for workers.enhance."""

import cv2
import numpy as np
import pytest
from skimage import data

from workers.enhance import EnhanceOptions, enhance
from workers.errors import EngineError


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.chelsea()


def luma(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def laplacian_var(image: np.ndarray) -> float:
    return float(cv2.Laplacian(luma(image), cv2.CV_64F).var())


def test_all_options_off_returns_an_equal_copy(photo):
    out = enhance(photo, EnhanceOptions())
    assert np.array_equal(out, photo)
    assert not np.shares_memory(out, photo)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_upscale_multiplies_the_size(photo, factor):
    out = enhance(photo, EnhanceOptions(upscale=factor))
    height, width = photo.shape[:2]
    assert out.shape == (height * factor, width * factor, 3)
    assert out.dtype == np.uint8


def test_numpy_integer_upscale_is_accepted(photo):
    assert enhance(photo, EnhanceOptions(upscale=np.int64(2))).shape[0] == 2 * photo.shape[0]


def test_upscaled_image_shrinks_back_to_the_original(photo):
    out = enhance(photo, EnhanceOptions(upscale=2))
    back = cv2.resize(out, photo.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(back.astype(np.int16) - photo).mean() < 2.0


@pytest.mark.parametrize("factor", [0, 3, 8, -2, 2.0, True, "2"])
def test_other_upscale_factors_are_rejected(photo, factor):
    with pytest.raises(EngineError, match="upscale must be one of 1, 2, 4"):
        enhance(photo, EnhanceOptions(upscale=factor))


def test_output_over_the_pixel_limit_is_refused_with_the_size():
    image = np.zeros((3000, 2000, 3), np.uint8)
    with pytest.raises(EngineError) as info:
        enhance(image, EnhanceOptions(upscale=4))
    message = str(info.value)
    assert "8000x12000 (96.0 MP)" in message
    assert "over the limit" in message and "smaller upscale" in message


def test_pixel_limit_is_configurable(photo):
    height, width = photo.shape[:2]
    enhance(photo, EnhanceOptions(upscale=2), max_output_pixels=4 * height * width)
    with pytest.raises(EngineError, match="over the limit"):
        enhance(photo, EnhanceOptions(upscale=2), max_output_pixels=4 * height * width - 1)


def test_sharpen_increases_laplacian_variance(photo):
    out = enhance(photo, EnhanceOptions(sharpen=True))
    assert out.shape == photo.shape
    assert laplacian_var(out) > 1.5 * laplacian_var(photo)


def test_local_contrast_lifts_a_flat_image():
    flat = (data.astronaut().astype(np.float32) * 0.3 + 90).astype(np.uint8)
    out = enhance(flat, EnhanceOptions(local_contrast=True))
    assert luma(out).std() > 1.3 * luma(flat).std()


def test_options_combine(photo):
    out = enhance(photo, EnhanceOptions(upscale=2, sharpen=True, local_contrast=True))
    plain = enhance(photo, EnhanceOptions(upscale=2))
    assert out.shape == plain.shape
    assert laplacian_var(out) > laplacian_var(plain)


def test_enhance_is_deterministic(photo):
    options = EnhanceOptions(upscale=2, sharpen=True, local_contrast=True)
    assert np.array_equal(enhance(photo, options), enhance(photo, options))


@pytest.mark.parametrize("size", [(16, 16), (17, 5), (1, 1)])
def test_tiny_images_work(size):
    image = np.full((*size, 3), 100, np.uint8)
    out = enhance(image, EnhanceOptions(upscale=4, sharpen=True, local_contrast=True))
    assert out.shape == (size[0] * 4, size[1] * 4, 3)


def test_bad_image_is_rejected():
    with pytest.raises(EngineError, match="uint8"):
        enhance(np.zeros((8, 8, 3), np.float64), EnhanceOptions())
