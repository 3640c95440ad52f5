import gzip

import numpy as np
import pytest

from tests.conftest import require_fashion_mnist
from trustvlm.data.fashion_mnist import (CALIBRATION_PER_CLASS, DatasetMissingError, calibration_indices,
                                         load_split, read_idx, resolve_root, to_rgb)


@pytest.fixture(scope="module")
def splits():
    require_fashion_mnist()
    return {name: load_split(name) for name in ("train", "calib", "test")}


def test_split_sizes_and_calibration_is_held_out(splits):
    assert len(splits["train"]) == 55_000
    assert len(splits["calib"]) == 5_000
    assert len(splits["test"]) == 10_000
    assert not np.intersect1d(splits["train"].indices, splits["calib"].indices).size, "calib leaked into train"
    assert np.array_equal(np.bincount(splits["calib"].labels), [CALIBRATION_PER_CLASS] * 10)


def test_calibration_split_is_deterministic(splits):
    labels = np.concatenate([splits["train"].labels, splits["calib"].labels])
    order = np.concatenate([splits["train"].indices, splits["calib"].indices])
    labels_by_index = labels[np.argsort(order)]
    assert np.array_equal(calibration_indices(labels_by_index), splits["calib"].indices)


def test_images_are_real_pictures(splits):
    image = splits["test"].images[0]
    assert image.shape == (28, 28) and image.dtype == np.uint8
    assert image.std() > 20, "a real image has contrast"
    assert to_rgb(splits["test"].images[:2]).shape == (2, 28, 28, 3)


def test_truncated_idx_file_is_refused(tmp_path):
    path = tmp_path / "bad.gz"
    header = (0x0803).to_bytes(4, "big") + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path.write_bytes(gzip.compress(header + b"\x00" * 100))
    with pytest.raises(ValueError, match="truncated IDX file"):
        read_idx(path)


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        resolve_root(tmp_path)


def test_unknown_split_lists_the_valid_ones():
    with pytest.raises(ValueError, match="expected one of"):
        load_split("validation")
