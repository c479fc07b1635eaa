"""Tests for workers.styles on real photos from skimage.data."""

from functools import cache

import cv2
import numpy as np
import pytest
from skimage import data

from workers.errors import EngineError
from workers.styles import STYLES, apply_style

PHOTOS = ("astronaut", "coffee", "chelsea")
STYLE_NAMES = ("cartoon", "product", "sketch", "watercolor")
# Per style: minimum mean abs difference from the photo, minimum edge-map correlation.
MIN_CHANGE = {"cartoon": 10.0, "product": 4.0, "sketch": 40.0, "watercolor": 8.0}
MIN_EDGE_CORR = {"cartoon": 0.65, "product": 0.95, "sketch": 0.5, "watercolor": 0.8}


@cache
def photo(name: str) -> np.ndarray:
    image = getattr(data, name)()
    image.setflags(write=False)
    return image


@cache
def styled(name: str, style: str) -> np.ndarray:
    return apply_style(photo(name), style)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def luma(image: np.ndarray, side: int) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64)


def edge_map(image: np.ndarray) -> np.ndarray:
    gray = cv2.GaussianBlur(luma(image, 128), (0, 0), 1.5)
    return np.hypot(cv2.Sobel(gray, cv2.CV_64F, 1, 0), cv2.Sobel(gray, cv2.CV_64F, 0, 1))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def distinct_colours(image: np.ndarray) -> int:
    packed = image.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], np.int32)
    return len(np.unique(packed))


def laplacian_var(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_registry_lists_the_styles():
    assert sorted(STYLES) == sorted(STYLE_NAMES)
    for name, info in STYLES.items():
        assert info.name == name
        assert info.title and info.description


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("style", STYLE_NAMES)
def test_style_changes_photo_but_keeps_its_structure(name, style):
    original, out = photo(name), styled(name, style)
    assert out.shape == original.shape and out.dtype == np.uint8
    assert mean_abs_diff(out, original) > MIN_CHANGE[style]
    assert correlation(edge_map(out), edge_map(original)) > MIN_EDGE_CORR[style]
    assert correlation(luma(out, 64), luma(original, 64)) > 0.5


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_style_is_deterministic(style):
    image = photo("chelsea")
    assert np.array_equal(apply_style(image, style), apply_style(image, style))


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_strength_zero_returns_original_copy(style):
    image = photo("chelsea")
    out = apply_style(image, style, strength=0.0)
    assert np.array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_half_strength_sits_between_original_and_full_effect(style):
    image = photo("chelsea")
    full = mean_abs_diff(styled("chelsea", style), image)
    half = mean_abs_diff(apply_style(image, style, strength=0.5), image)
    assert 0.35 * full < half < 0.65 * full


@pytest.mark.parametrize("style", STYLE_NAMES)
@pytest.mark.parametrize("size", [(16, 16), (17, 23), (16, 301), (257, 19), (61, 90)])
def test_small_and_odd_sizes_work(style, size):
    height, width = size
    image = cv2.resize(photo("astronaut"), (width, height), interpolation=cv2.INTER_AREA)
    out = apply_style(image, style)
    assert out.shape == image.shape and out.dtype == np.uint8


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_large_image_keeps_size_and_structure(style):
    image = cv2.resize(photo("coffee"), (1200, 1000), interpolation=cv2.INTER_CUBIC)
    out = apply_style(image, style)
    assert out.shape == image.shape
    assert correlation(edge_map(out), edge_map(image)) > MIN_EDGE_CORR[style]


def test_non_contiguous_input_is_accepted():
    image = photo("astronaut")[::2, ::-2]
    out = apply_style(image, "cartoon")
    assert out.shape == image.shape


@pytest.mark.parametrize("name", PHOTOS)
def test_cartoon_has_far_fewer_colours(name):
    assert distinct_colours(styled(name, "cartoon")) < distinct_colours(photo(name)) / 5


@pytest.mark.parametrize("name", PHOTOS)
def test_sketch_is_grayscale(name):
    out = styled(name, "sketch").astype(np.int16)
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 2
    assert np.abs(out[..., 1] - out[..., 2]).max() <= 2


@pytest.mark.parametrize("name", PHOTOS)
def test_sketch_is_mostly_light_paper(name):
    assert np.median(styled(name, "sketch")) > 180


@pytest.mark.parametrize("name", PHOTOS)
def test_watercolor_is_softer_than_the_photo(name):
    assert laplacian_var(styled(name, "watercolor")) < 0.5 * laplacian_var(photo(name))


@pytest.mark.parametrize("name", PHOTOS)
def test_product_is_sharper_yet_natural(name):
    original, out = photo(name), styled(name, "product")
    assert laplacian_var(out) > 1.3 * laplacian_var(original)
    channel_shift = np.abs(out.reshape(-1, 3).mean(0) - original.reshape(-1, 3).mean(0))
    assert channel_shift.max() < 20
    assert correlation(luma(out, 64), luma(original, 64)) > 0.93


def test_product_corrects_a_colour_cast_a_little():
    image = photo("astronaut").astype(np.float32)
    cast = np.clip(image * [1.0, 1.0, 0.85], 0, 255).astype(np.uint8)  # yellowish cast
    out = apply_style(cast, "product")
    blue_red = lambda img: img[..., 2].mean() / img[..., 0].mean()  # noqa: E731
    assert blue_red(out) > blue_red(cast) + 0.005


def test_unknown_style_lists_the_choices():
    with pytest.raises(EngineError) as info:
        apply_style(photo("chelsea"), "vaporwave")
    assert str(info.value) == (
        "unknown style 'vaporwave'; choose one of: cartoon, product, sketch, watercolor"
    )


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.zeros((32, 32, 3), np.float32), "uint8"),
        (np.zeros((32, 32), np.uint8), "HxWx3"),
        (np.zeros((32, 32, 4), np.uint8), "HxWx3"),
        (np.zeros((0, 32, 3), np.uint8), "empty"),
        ([[0, 0, 0]], "array"),
    ],
)
def test_bad_input_is_rejected_clearly(image, fragment):
    with pytest.raises(EngineError, match=fragment):
        apply_style(image, "sketch")


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_strength_out_of_range_is_rejected(strength):
    with pytest.raises(EngineError, match="strength"):
        apply_style(photo("chelsea"), "sketch", strength=strength)
