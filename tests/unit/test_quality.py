"""Tests for safety.quality."""

import json

import numpy as np
import pytest
from skimage import data

from safety.quality import QualityReport, Verdict, check_quality


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_real_photos_pass(name):
    report = check_quality(getattr(data, name)())
    assert report.verdict is Verdict.PASS
    assert report.reasons == []
    assert not any(report.checks[k] for k in ("is_black", "is_blank", "is_uniform"))
    assert report.checks["std"] > 20


@pytest.mark.parametrize("value", [0, 3])
def test_black_image_is_flagged(value):
    report = check_quality(np.full((64, 80, 3), value, np.uint8))
    assert report.verdict is Verdict.FLAG
    assert report.checks["is_black"] is True
    assert report.reasons == [f"the image is almost entirely black (mean {value:.1f}/255)"]


@pytest.mark.parametrize("shape", [(2000, 3000, 3), (2000, 3000, 4), (2000, 3000)])
def test_huge_flat_image_is_uniform(shape):
    flat = np.full(shape, 100, np.uint8)
    if flat.ndim == 3:
        flat[..., 0] = 30  # channels differ, but each channel is flat
    report = check_quality(flat)
    assert report.checks["is_uniform"] is True
    assert report.checks["std"] == 0.0


def test_pixel_noise_is_not_uniform():
    noise = np.random.default_rng(1).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
    report = check_quality(noise)
    assert report.checks["std"] > 60
    assert report.verdict is Verdict.PASS


def test_noisy_near_black_image_is_flagged():
    noise = np.random.default_rng(0).integers(0, 12, (128, 128, 3), dtype=np.uint8)
    report = check_quality(noise)
    assert report.checks["is_black"] is True
    assert report.checks["is_uniform"] is False
    assert report.verdict is Verdict.FLAG


def test_dark_photo_is_not_black(photo):
    dark = (photo // 6).astype(np.uint8)
    report = check_quality(dark)
    assert report.checks["is_black"] is False
    assert report.verdict is Verdict.PASS


def test_white_image_is_flagged_as_blank():
    report = check_quality(np.full((50, 50, 3), 252, np.uint8))
    assert report.verdict is Verdict.FLAG
    assert report.checks["is_blank"] is True
    assert "almost entirely white" in report.reasons[0]
    assert len(report.reasons) == 1


def test_uniform_gray_is_flagged():
    report = check_quality(np.full((40, 60, 3), (120, 130, 140), np.uint8))
    assert report.verdict is Verdict.FLAG
    assert report.checks["is_uniform"] is True
    assert report.checks["is_black"] is False and report.checks["is_blank"] is False
    assert report.reasons == ["the image is a single flat colour (std 0.00)"]


def test_colour_variation_with_flat_luma_is_not_uniform():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (200, 60, 60)
    image[:, 32:] = (60, 200, 60)
    assert check_quality(image).checks["is_uniform"] is False


def test_thresholds_are_configurable():
    gray = np.full((32, 32, 3), 20, np.uint8)
    assert check_quality(gray).checks["is_black"] is False
    assert check_quality(gray, black_mean=25.0).checks["is_black"] is True


def test_identical_to_input_is_flagged(photo):
    report = check_quality(photo.copy(), reference=photo)
    assert report.verdict is Verdict.FLAG
    assert report.checks["identical_to_input"] is True
    assert report.checks["mean_abs_diff"] == 0.0
    assert report.reasons == ["the output is unchanged from the input (mean difference 0.00/255)"]


def test_changed_output_is_not_identical(photo):
    changed = np.clip(photo.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    report = check_quality(changed, reference=photo)
    assert report.checks["identical_to_input"] is False
    assert report.checks["mean_abs_diff"] > 2.0
    assert report.verdict is Verdict.PASS


def test_alpha_is_ignored_for_stats_but_compared_for_identity(photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    assert check_quality(rgba).checks["std"] == check_quality(photo).checks["std"]
    assert check_quality(rgba, reference=rgba.copy()).checks["identical_to_input"] is True


def test_reference_of_another_shape_is_not_identical(photo):
    report = check_quality(photo, reference=photo[:256])
    assert report.checks["identical_to_input"] is False
    assert report.verdict is Verdict.PASS


@pytest.mark.parametrize(
    "image",
    [
        np.full((1, 1, 3), 128, np.uint8),
        np.full((16, 16), 128, np.uint8),
        np.full((7, 3, 4), 128, np.uint8),
        np.full((9, 9, 1), 128, np.uint8),
    ],
)
def test_tiny_and_other_layouts_work(image):
    report = check_quality(image)
    assert report.checks["is_uniform"] is True
    assert report.checks["mean"] == pytest.approx(128, abs=1)


def test_huge_image_is_sampled_without_aliasing():
    huge = np.zeros((4000, 6000, 3), np.uint8)
    huge[::2] = 255  # fine periodic pattern: a regular stride would see one flat colour
    huge[:, ::3] = 90
    report = check_quality(huge, reference=huge)
    assert report.checks["identical_to_input"] is True
    assert report.checks["is_uniform"] is False


def test_report_is_json_serialisable(photo):
    black = np.zeros((32, 32, 3), np.uint8)
    report = check_quality(black, reference=black.copy())
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["verdict"] == "flag"
    assert payload["checks"]["is_black"] is True
    assert payload["checks"]["identical_to_input"] is True
    assert payload["reasons"] == report.reasons
    assert isinstance(report, QualityReport)


@pytest.mark.parametrize(
    "image",
    [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 2), np.uint8), np.zeros((0, 4), np.uint8)],
)
def test_invalid_arrays_raise_value_error(image):
    with pytest.raises(ValueError):
        check_quality(image)
