"""Tests for trustvlm.calibration.shifts (degraded-camera variants)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from trustvlm.calibration.shifts import (SHIFTS, ShiftSpec, apply_shift, gaussian_blur, gaussian_noise,
                                         jpeg_artifacts, low_light, parse_shift)
from trustvlm.data.fashion_mnist import load_split

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    """200 real Fashion-MNIST calibration images (28 x 28 grey)."""
    return load_split("calib").images[:200]


@pytest.mark.parametrize("name", list(SHIFTS))
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_every_shift_keeps_shape_and_dtype_and_is_deterministic(name, rgb, real_images):
    images = np.repeat(real_images[..., None], 3, axis=-1) if rgb else real_images
    out = apply_shift(name, images, seed=3)
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, apply_shift(name, images, seed=3))
    assert np.mean(np.abs(out.astype(int) - images)) > 3, f"{name} should visibly change real images"


def test_noise_depends_on_the_seed_and_has_the_stated_strength():
    grey = np.full((50, 28, 28), 128, dtype=np.uint8)  # mid-grey: no clipping
    a, b = gaussian_noise(grey, seed=0), gaussian_noise(grey, seed=1)
    assert not np.array_equal(a, b)
    assert np.std(a.astype(float)) == pytest.approx(0.12 * 255, rel=0.03)
    assert np.mean(a.astype(float)) == pytest.approx(128, abs=0.5)


def laplacian_variance(images: np.ndarray) -> float:
    """Mean over images of the variance of their Laplacian (high-frequency energy)."""
    return float(np.mean([np.var(cv2.Laplacian(image.astype(np.float64), cv2.CV_64F)) for image in images]))


def test_blur_keeps_a_flat_image_and_smooths_edges(real_images):
    flat = np.full((2, 28, 28), 77, dtype=np.uint8)
    np.testing.assert_array_equal(gaussian_blur(flat), flat)
    sharp = laplacian_variance(real_images)
    blurred = laplacian_variance(gaussian_blur(real_images))
    assert blurred < 0.5 * sharp, f"Laplacian variance {sharp:.0f} -> {blurred:.0f}"


def test_low_light_dims_by_gain_and_gamma():
    white = np.full((20, 28, 28), 255, dtype=np.uint8)
    half = np.full((20, 28, 28), 128, dtype=np.uint8)
    # 255 -> 0.5 * 1 ** 2 * 255 = 127.5; 128 -> 0.5 * (128/255) ** 2 * 255 = 32.1 (plus zero-mean noise)
    assert np.mean(low_light(white, seed=0)) == pytest.approx(127.5, abs=0.5)
    assert np.mean(low_light(half, seed=0)) == pytest.approx(0.5 * (128 / 255) ** 2 * 255, abs=0.5)


def test_jpeg_is_an_opencv_round_trip_at_quality_12(real_images):
    out = jpeg_artifacts(real_images[:3])
    ok, encoded = cv2.imencode(".jpg", real_images[1], [cv2.IMWRITE_JPEG_QUALITY, 12])
    assert ok
    np.testing.assert_array_equal(out[1], cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE))
    # higher quality stays closer to the original
    error = lambda q: np.mean(np.abs(jpeg_artifacts(real_images, quality=q).astype(int) - real_images))  # noqa: E731
    assert error(95) < error(12)


def test_bad_input_is_rejected():
    known = r"\['blur', 'noise', 'low_light', 'jpeg'\]"
    with pytest.raises(ValueError, match=rf"unknown shift 'fog'; expected one of {known}"):
        apply_shift("fog", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="expected a uint8 batch"):
        gaussian_noise(np.zeros((1, 28, 28), np.float32))
    with pytest.raises(ValueError, match="expected a uint8 batch"):
        gaussian_blur(np.zeros((28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"quality should be in \[1, 100\]"):
        jpeg_artifacts(np.zeros((1, 28, 28), np.uint8), quality=0)


def test_a_shift_with_changed_parameters_runs_its_function_with_those_keywords(real_images):
    # When a darker low-light camera is read from text
    spec = parse_shift("low_light:gain=0.25, gamma=2.2")
    # Then it is the shift's function with those keyword arguments, and it prints as it is written
    assert spec == ShiftSpec("low_light", (("gain", 0.25), ("gamma", 2.2)))
    assert str(spec) == "low_light:gain=0.25,gamma=2.2"
    np.testing.assert_array_equal(apply_shift(spec.name, real_images[:5], 3, **spec.kwargs),
                                  low_light(real_images[:5], 3, gain=0.25, gamma=2.2))
    # And a bare name is the shift with its defaults; an integer parameter stays an integer
    assert parse_shift("blur") == ShiftSpec("blur") and str(parse_shift("blur")) == "blur"
    assert parse_shift("jpeg:quality=30").kwargs == {"quality": 30}
    assert isinstance(parse_shift("jpeg:quality=30").kwargs["quality"], int)


@pytest.mark.parametrize("text, message", [
    ("fog:density=1", r"unknown shift 'fog'; expected one of \['blur', 'noise', 'low_light', 'jpeg'\]"),
    ("low_light:gian=0.2", r"shift 'low_light' has no parameter 'gian'; its parameters: gain=0.5, gamma=2, "
                           r"read_noise=0.03 \(in 'low_light:gian=0.2'\)"),
    ("low_light:gain", r"shift parameter low_light:gain should be a number \(key=value\), but got 'gain'"),
    ("jpeg:quality=3.5", r"shift parameter jpeg:quality should be an integer"),
    ("blur:sigma=0", r"shift 'blur:sigma=0': sigma should be > 0, but got 0.0"),
    ("blur:sigma=1,sigma=2", r"shift 'blur:sigma=1,sigma=2' gives a parameter twice"),
])
def test_a_bad_shift_is_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_shift(text)
    assert "\n" not in str(error.value)
