"""Labelled image pools that calibration draws its shots and held-out images from.

    fashion-mnist   the 5,000-image calibration split (never trained on, never the test split);
                    images are identified by their index in the training idx file.
    <folder>        an ImageFolder tree (one sub-folder per class); every image is read here,
                    so an unreadable file fails calibration at the start. Shots are identified
                    by relative path and file sha256.
    <split>.json    a CoOp-style split file (``split_zhou_*.json``: ``{"train": [[relpath, label,
                    classname], ...], "val": [...], "test": [...]}``) with the folder its paths
                    start from (``image_root``). Shots come from "train" only; lambda and the
                    accept threshold are chosen on "val" only; calibration never reads "test"
                    (its rows only complete the class list; `trustvlm eval` reports on them,
                    :func:`load_split_test`). Identified like a folder's images.
    <labels>.csv    a ``path,label`` file as annotation tools export it (:mod:`trustvlm.data.label_csv`);
                    paths relative to its folder or to ``image_root``. Identified like a folder's
                    images; the pool records the file's sha256 (``source_sha256``).

For the first two, shots may be any image and the held-out images are the rest of the pool; a
split file fixes both (:meth:`LabelledPool.shot_candidates`, :meth:`LabelledPool.held_out`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.calibration.image_prototypes import remaining_indices
from trustvlm.contract.files import sha256_file
from trustvlm.data.fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASSES
from trustvlm.data.fashion_mnist import load_split, to_rgb
from trustvlm.data.image_folder import list_image_folder, read_rgb
from trustvlm.data.label_csv import is_label_csv, read_label_csv

FASHION_MNIST = "fashion-mnist"
SPLIT_SUFFIX = ".json"
#: Splits of a CoOp split file: shots from the first, lambda and threshold on the second.
SHOT_SPLIT, HELD_OUT_SPLIT, TEST_SPLIT = "train", "val", "test"


@dataclass(frozen=True)
class LabelledPool:
    """Images with labels, and how to name each image in a bundle.

    Attributes:
        images: uint8 RGB images: an ``N x H x W x 3`` array, or a list when sizes differ.
        labels: ``N`` int64 labels in ``[0, C)``.
        class_names: The C class names, in label order.
        source: What the pool is (``fashion-mnist/calib``, the folder path, or the split file).
        ids: Per image, its index in the source file (Fashion-MNIST) or its path relative to
            the folder (``root``).
        root: The folder the image paths start from (None for Fashion-MNIST).
        shot_pool: Sorted indices the shots may be drawn from (None: every image).
        held_out_pool: Sorted indices that choose lambda and the threshold (None: every image
            that is not a shot).
        source_sha256: The sha256 of the file that lists the images (a label CSV), else None.
    """

    images: np.ndarray | list
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    ids: tuple
    root: Path | None = None
    shot_pool: np.ndarray | None = None
    held_out_pool: np.ndarray | None = None
    source_sha256: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> np.ndarray | list:
        """The images at `indices` (same container type as `images`)."""
        if isinstance(self.images, list):
            return [self.images[i] for i in indices]
        return self.images[indices]

    def shot_candidates(self) -> np.ndarray:
        """Indices the shots may be drawn from, sorted."""
        return np.arange(len(self)) if self.shot_pool is None else self.shot_pool

    def held_out(self, shot_indices: np.ndarray) -> np.ndarray:
        """Sorted indices that choose lambda and the threshold, given the shots drawn."""
        if self.held_out_pool is None:
            return remaining_indices(len(self), shot_indices)
        return self.held_out_pool


def load_pool(data: str | os.PathLike, image_root: str | os.PathLike | None = None) -> LabelledPool:
    """Load 'fashion-mnist' (its calibration split), an ImageFolder tree, a CoOp split file or a label CSV.

    Args:
        data: ``"fashion-mnist"``, an image folder, a ``.json`` split file or a ``.csv`` label file.
        image_root: The folder a split file's relative paths start from (split files only; for a label
            CSV optional, default its own folder).

    Raises:
        FileNotFoundError: If the dataset, folder, split file or one of its images is missing.
        ValueError: On a folder without class sub-folders or images, a malformed split file,
            a split file without `image_root` or an `image_root` without a split file.
        trustvlm.data.image_folder.UnreadableImageError: On an image OpenCV cannot decode.
    """
    if Path(data).suffix == SPLIT_SUFFIX:
        if image_root is None:
            raise ValueError(f"{data}: a CoOp split file needs the folder its image paths start from "
                             "(image_root, --image-root)")
        return load_split_file(data, image_root)
    if is_label_csv(data):
        listed = read_label_csv(data, image_root)
        return LabelledPool([read_rgb(path) for path in listed.files], listed.labels, listed.class_names, str(data),
                            listed.ids, listed.root, source_sha256=listed.sha256)
    if image_root is not None:
        raise ValueError(f"image_root ({image_root}) goes with a CoOp split .json file or a label .csv file, but "
                         f"data is {str(data)!r}")
    if str(data) == FASHION_MNIST:
        calib = load_split("calib")
        return LabelledPool(to_rgb(calib.images), calib.labels, tuple(calib.class_names), "fashion-mnist/calib",
                            tuple(int(i) for i in calib.indices))
    root = Path(data)
    files, labels, names = list_image_folder(root)
    images = [read_rgb(path) for path in files]
    return LabelledPool(images, labels, names, str(root), tuple(str(p.relative_to(root)) for p in files), root)


def read_class_names(data: str | os.PathLike, image_root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The class names of what :func:`load_pool` would load, without reading any image.

    Raises:
        As :func:`load_pool` for a missing or malformed folder or split file.
    """
    if Path(data).suffix == SPLIT_SUFFIX:
        path = Path(data)
        splits = _read_splits(path, Path(image_root) if image_root is not None else path.parent)
        return split_class_names([row for name in (SHOT_SPLIT, HELD_OUT_SPLIT, TEST_SPLIT)
                                  for row in _split_rows(splits, name, path)], path)
    if str(data) == FASHION_MNIST:
        return tuple(FASHION_MNIST_CLASSES)
    if is_label_csv(data):
        return read_label_csv(data, image_root).class_names
    return list_image_folder(data)[2]


def _split_rows(splits: dict, name: str, path: Path) -> list[tuple[str, int, str]]:
    rows = splits.get(name, [])
    if not isinstance(rows, list):
        raise ValueError(f"{path}: {name!r} should be a list of [relative path, label, class name], "
                         f"but got {type(rows).__name__}")
    checked = []
    for position, row in enumerate(rows):
        ok = (isinstance(row, (list, tuple)) and len(row) == 3 and isinstance(row[0], str)
              and isinstance(row[1], int) and not isinstance(row[1], bool) and isinstance(row[2], str))
        if not ok:
            raise ValueError(f"{path}: {name}[{position}] should be [relative path, integer label, class name], "
                             f"but got {row!r}")
        checked.append((row[0], row[1], row[2]))
    return checked


def split_class_names(rows: list[tuple[str, int, str]], path: Path) -> tuple[str, ...]:
    """Class names in label order from the rows of every split; labels must be 0..C-1, one name each."""
    names: dict[int, str] = {}
    for relpath, label, name in rows:
        if names.setdefault(label, name) != name:
            raise ValueError(f"{path}: label {label} is named both {names[label]!r} and {name!r} ({relpath})")
    missing = sorted(set(range(max(names) + 1)) - set(names)) if names else []
    if not names or min(names) < 0 or missing:
        raise ValueError(f"{path}: labels should be 0..C-1 with every class present; found labels "
                         f"{sorted(names)[:5]}... (missing {missing[:10]})")
    if len(names) < 2:
        raise ValueError(f"{path}: expected at least 2 classes, found {len(names)}")
    return tuple(names[label] for label in range(len(names)))


def load_split_file(path: str | os.PathLike, image_root: str | os.PathLike) -> LabelledPool:
    """Read a CoOp split file's "train" and "val" images (see the module docstring).

    Raises:
        FileNotFoundError: A missing split file, image root or image.
        ValueError: Malformed JSON or rows, labels that are not 0..C-1 with one name each,
            an empty "train" or "val".
        trustvlm.data.image_folder.UnreadableImageError: On an image OpenCV cannot decode.
    """
    path, root = Path(path), Path(image_root)
    splits = _read_splits(path, root)
    for name in (SHOT_SPLIT, HELD_OUT_SPLIT):
        if not splits.get(name):
            raise ValueError(f"{path}: the {name!r} split is missing or empty (has {sorted(splits)}); shots come "
                             f"from {SHOT_SPLIT!r}, lambda and the threshold are chosen on {HELD_OUT_SPLIT!r}")
    train, val = _split_rows(splits, SHOT_SPLIT, path), _split_rows(splits, HELD_OUT_SPLIT, path)
    class_names = split_class_names(train + val + _split_rows(splits, TEST_SPLIT, path), path)
    images, labels = _read_rows(path, root, train + val)
    return LabelledPool(images, labels, class_names, f"{path} (train + val)",
                        tuple(relpath for relpath, _, _ in train + val), root,
                        shot_pool=np.arange(len(train)), held_out_pool=np.arange(len(train), len(train) + len(val)))


def _read_splits(path: Path, root: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} does not exist")
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(splits, dict):
        raise ValueError(f"{path}: expected an object with {SHOT_SPLIT!r} and {HELD_OUT_SPLIT!r} lists")
    return splits


def _read_rows(path: Path, root: Path, rows: list[tuple[str, int, str]]) -> tuple[list[np.ndarray], np.ndarray]:
    images = []
    for relpath, _, _ in rows:
        file = root / relpath
        if not file.is_file():
            raise FileNotFoundError(f"{path}: image {relpath} is not under {root}")
        images.append(read_rgb(file))
    return images, np.asarray([label for _, label, _ in rows], dtype=np.int64)


def load_split_test(path: str | os.PathLike, image_root: str | os.PathLike) -> LabelledPool | None:
    """A CoOp split file's "test" images (for evaluation only), or None when it has no "test" rows.

    Raises:
        As :func:`load_split_file`.
    """
    path, root = Path(path), Path(image_root)
    splits = _read_splits(path, root)
    test = _split_rows(splits, TEST_SPLIT, path)
    if not test:
        return None
    class_names = split_class_names(
        _split_rows(splits, SHOT_SPLIT, path) + _split_rows(splits, HELD_OUT_SPLIT, path) + test, path)
    images, labels = _read_rows(path, root, test)
    return LabelledPool(images, labels, class_names, f"{path} (test)", tuple(relpath for relpath, _, _ in test), root)


def describe_shots(pool: LabelledPool, shot_indices: np.ndarray) -> dict:
    """How a bundle records its shots: source indices, or relative paths and file sha256s."""
    rows = np.asarray(shot_indices)
    if pool.root is None:
        return {"source": pool.source, "id": "index in train-images-idx3-ubyte",
                "indices": [[pool.ids[i] for i in row] for row in rows]}
    where = {"id": "path relative to the folder"} if pool.shot_pool is None else {
        "id": "path relative to the image root", "image_root": str(pool.root)}
    return {"source": pool.source, **where,
            "files": [[pool.ids[i] for i in row] for row in rows],
            "sha256": [[sha256_file(pool.root / pool.ids[i]) for i in row] for row in rows]}
