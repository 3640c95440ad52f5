import numpy as np
import pytest

from trustvlm.runtime.decode.preprocess import PreprocessConfig, center_crop, preprocess_batch, resize_and_crop

CLIP = PreprocessConfig(224, (0.48, 0.45, 0.40), (0.26, 0.26, 0.27), "bicubic", "shortest", "center")


def test_shortest_side_resize_then_center_crop_keeps_the_middle():
    # A 100 x 200 image whose left and right quarters are black and middle white:
    # shortest side 100 -> 224 (width 448), center crop 224 keeps only the white middle.
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255
    out = resize_and_crop(image, CLIP)
    assert out.shape == (224, 224, 3)
    assert out[:, 10:-10].min() >= 250, "the kept middle is white"


def test_squash_resizes_without_cropping():
    config = PreprocessConfig(32, (0.5,) * 3, (0.5,) * 3, "bilinear", "squash", "none")
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = 255
    out = resize_and_crop(image, config)
    assert out.shape == (32, 32, 3)
    assert out[:, :14].min() == 255 and out[:, 18:].max() == 0, "left half white, right half black"


def test_grey_images_become_rgb_batches():
    batch = preprocess_batch([np.full((28, 28), 7, np.uint8)] * 3, CLIP)
    assert batch.shape == (3, 224, 224, 3) and batch.dtype == np.uint8
    assert np.all(batch == 7)


def test_center_crop_by_hand():
    image = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    assert np.array_equal(center_crop(image, 3), image[1:4, 1:4])


def test_float_images_are_refused_with_the_shape():
    with pytest.raises(ValueError, match="expected a uint8 H x W x 3 image, got float32"):
        resize_and_crop(np.zeros((4, 4, 3), np.float32), CLIP)


def test_config_round_trip_and_unknown_keys():
    assert PreprocessConfig.from_dict(CLIP.to_dict()) == CLIP
    with pytest.raises(ValueError, match="unknown preprocess keys"):
        PreprocessConfig.from_dict({**CLIP.to_dict(), "antialias": True})
    with pytest.raises(ValueError, match="interpolation should be one of"):
        PreprocessConfig(32, (0.5,) * 3, (0.5,) * 3, interpolation="lanczos9")
