"""Label CSV files (path,label as annotation tools export them): the same pool as the image folder, or one line."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import require_fashion_mnist
from trustvlm.calibration.pools import load_pool, read_class_names
from trustvlm.data.fashion_mnist import load_split
from trustvlm.data.label_csv import LabelCsvError, read_label_csv

CLASSES = (0, 5, 7)  # T-shirt/top, sandal, sneaker


@pytest.fixture(scope="module")
def fmnist_folder(tmp_path_factory) -> Path:
    """Four Fashion-MNIST calibration images of three classes as PNGs in root/<class>/<index>.png."""
    require_fashion_mnist()
    calib, root = load_split("calib"), tmp_path_factory.mktemp("fmnist") / "images"
    for label in CLASSES:
        folder = root / calib.class_names[label].replace("/", "_").replace(" ", "_")
        folder.mkdir(parents=True)
        for index in np.flatnonzero(calib.labels == label)[:4]:
            cv2.imwrite(str(folder / f"{int(calib.indices[index])}.png"), calib.images[index])
    return root


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def folder_rows(root: Path) -> list[list[str]]:
    return [[str(p.relative_to(root)), p.parent.name] for p in root.glob("*/*.png")]


def assert_same_pool(csv_pool, folder_pool) -> None:
    assert csv_pool.class_names == folder_pool.class_names == ("T-shirt top", "sandal", "sneaker")
    assert csv_pool.ids == folder_pool.ids
    np.testing.assert_array_equal(csv_pool.labels, folder_pool.labels)
    assert all(np.array_equal(a, b) for a, b in zip(csv_pool.images, folder_pool.images))
    assert csv_pool.root == folder_pool.root


def test_a_csv_over_an_image_folder_gives_the_folders_pool(fmnist_folder, tmp_path):
    # Given the folder's files listed in shuffled order, in the folder (Label Studio's header) and outside it
    rows = folder_rows(fmnist_folder)
    np.random.default_rng(0).shuffle(rows)
    inside = write_csv(fmnist_folder / "labels.csv", ["id", "image", "choice"], [["1", *row] for row in rows])
    outside = write_csv(tmp_path / "export" / "labels.csv", ["file", "class"], rows + rows[:2])  # repeats count once
    folder_pool = load_pool(fmnist_folder)
    try:
        # When / Then: the same images, labels, class names and ids, in the same order
        assert_same_pool(load_pool(inside), folder_pool)
        assert_same_pool(load_pool(outside, fmnist_folder), folder_pool)
        assert read_class_names(outside, fmnist_folder) == folder_pool.class_names
        # and the pool records the CSV itself
        assert load_pool(inside).source_sha256 == hashlib.sha256(inside.read_bytes()).hexdigest()
    finally:
        inside.unlink()
    # An absolute path is used as it is, its id is the path itself
    first = fmnist_folder / rows[0][0]
    absolute = write_csv(tmp_path / "abs.csv", ["path", "label"], [[str(first), "a"], [str(first.parent), "b"]])
    with pytest.raises(LabelCsvError, match="row 3: the image .* does not exist"):
        read_label_csv(absolute)
    absolute = write_csv(tmp_path / "abs.csv", ["path", "label"], [[str(first), "a"], [rows[1][0], "b"]])
    assert read_label_csv(absolute, fmnist_folder).ids == (str(first), rows[1][0])


#: (what is wrong, header, rows, the refusal after the file's name)
REFUSALS = [
    ("no path column", ["name", "label"], [["a.png", "x"]],
     r" row 1: no image path column: the header should name one of path, image, file, but has 'name', 'label'$"),
    ("no label column", ["path", "tag"], [["a.png", "x"]],
     r" row 1: no label column: the header should name one of label, class, choice, but has 'path', 'tag'$"),
    ("an empty label", ["path", "label"], [["a.png", "x"], ["b.png", " "]], r" row 3: the label of b.png is empty$"),
    ("a missing image", ["path", "label"], [["a.png", "x"], ["c.png", "y"]],
     r" row 3: the image 'c.png' does not exist \(.*c.png\)$"),
    ("a path leaving the root", ["path", "label"], [["a.png", "x"], ["../b.png", "y"]],
     r" row 3: the image path '../b.png' leaves .* \('..'\); list it from inside that folder or as an absolute path$"),
    ("one path, two labels", ["path", "label"], [["a.png", "x"], ["b.png", "y"], ["./a.png", "y"]],
     r" row 4: a.png is labelled 'y' here but 'x' in row 2$"),
    ("one class", ["path", "label"], [["a.png", "x"], ["b.png", "x"]],
     r": 1 class\(es\) \['x'\] among 2 image row\(s\); calibration needs at least 2 classes$"),
    ("two spellings of one class", ["path", "label"], [["a.png", "ankle boot"], ["b.png", "ankle_boot"]],
     r" row 3: the label 'ankle_boot' reads as the class 'ankle boot', as 'ankle boot' does"),
]


@pytest.mark.parametrize("wrong, header, rows, expected", REFUSALS, ids=[case[0] for case in REFUSALS])
def test_a_bad_label_csv_is_refused_in_one_line_naming_file_and_row(wrong, header, rows, expected, tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "data" / name), np.zeros((8, 8, 3), np.uint8))
    path = write_csv(tmp_path / "data" / "labels.csv", header, rows)
    with pytest.raises(LabelCsvError) as refused:
        load_pool(path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(str(path))
    assert re.search(expected, message[len(str(path)):]), message
