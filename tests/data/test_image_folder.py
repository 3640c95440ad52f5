import cv2
import numpy as np
import pytest

from tests.conftest import require_fashion_mnist
from trustvlm.data.fashion_mnist import load_split
from trustvlm.data.image_folder import UnreadableImageError, list_image_folder, load_image_folder, read_rgb


@pytest.fixture()
def image_folder(tmp_path):
    """A real ImageFolder tree: 3 Fashion-MNIST images of two classes, written as PNG and JPEG."""
    require_fashion_mnist()
    test = load_split("test")
    for class_id, folder in ((0, "t_shirt"), (1, "trouser")):
        (tmp_path / folder).mkdir()
        for i, index in enumerate(np.flatnonzero(test.labels == class_id)[:3]):
            suffix = ".png" if i % 2 == 0 else ".jpg"
            cv2.imwrite(str(tmp_path / folder / f"{i}{suffix}"), test.images[index])
    return tmp_path


def test_lists_classes_in_sorted_order_with_underscores_as_spaces(image_folder):
    files, labels, names = list_image_folder(image_folder)
    assert names == ("t shirt", "trouser")
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(files) == 6


def test_loads_resized_rgb(image_folder):
    data = load_image_folder(image_folder, size=32)
    assert data.images.shape == (6, 32, 32, 3) and data.images.dtype == np.uint8


def test_unreadable_image_gives_a_clear_error(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableImageError, match="cannot decode image"):
        read_rgb(bad)


def test_folder_with_one_class_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(ValueError, match="one sub-folder per class"):
        list_image_folder(tmp_path)
