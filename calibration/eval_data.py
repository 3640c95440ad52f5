"""What `trustvlm eval` measures on: calibration images, a separate test set, and their identity.

    fashion-mnist           shots, lambda and threshold from the 5,000-image calibration split;
                            the report on the 10,000-image test split.
    <folder>                shots from the folder, lambda and threshold from the rest of it
                            (as `trustvlm calibrate`); the report on ``test_data``, a second
                            folder with the same class sub-folders (e.g. a held-out recording of
                            the same camera).
    <split>.json            shots from its "train" rows, lambda and threshold on "val"; the report
                            on its "test" rows (or on ``test_data`` when given).
    <labels>.csv            a ``path,label`` file (:mod:`trustvlm.data.label_csv`), as a folder;
                            ``test_data`` may be one too (its paths start from ``image_root`` when
                            given).

Images are loaded by :func:`trustvlm.calibration.pools.load_pool`, the loader calibration uses.
Without a separate test set there is no report: scoring the images that chose the prototypes,
lambda and the threshold would overstate every score, so :class:`NoTestSetError` says so.

The report records the data's identity (:func:`data_identity`): paths, counts per part, and the
sha256 of the list of (part, image id, label), and of a label CSV file itself, so two reports can be told
to be on the same data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trustvlm.calibration.pools import FASHION_MNIST, SPLIT_SUFFIX, LabelledPool, load_pool, load_split_test
from trustvlm.data.fashion_mnist import load_split
from trustvlm.data.label_csv import is_label_csv

#: What a user gives when there is no separate test set.
TEST_DATA_FLAG = "--test-data"


class NoTestSetError(ValueError):
    """The data have no test set apart from the calibration images."""


@dataclass(frozen=True)
class EvalData:
    """Calibration and test images of one evaluation (see the module docstring).

    Attributes:
        calib: Shots, lambda and threshold images (``shot_pool`` / ``held_out_pool`` set for a split file).
        test: The report's images, never used to build or choose anything.
        identity: :func:`data_identity` of both.
    """

    calib: LabelledPool
    test: LabelledPool
    identity: dict

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.calib.class_names


def _stacked(pool: LabelledPool) -> LabelledPool:
    """`pool` with its images as one array when they all have the same shape (faster shifts and encoding)."""
    images = pool.images
    if isinstance(images, list) and images and len({image.shape for image in images}) == 1:
        return replace(pool, images=np.stack(images))
    return pool


def _fashion_mnist() -> tuple[LabelledPool, LabelledPool]:
    """Grey calibration and test splits (shifts act on the grey images, as the camera would see them)."""
    calib, test = load_split("calib"), load_split("test")
    return tuple(LabelledPool(part.images, part.labels, tuple(part.class_names), f"fashion-mnist/{name}",
                              tuple(int(i) for i in part.indices))
                 for name, part in (("calib", calib), ("test", test)))


def _limited(pool: LabelledPool, limit: int | None, seed: int, first: bool) -> LabelledPool:
    """The first `limit` images (Fashion-MNIST, as before) or a seeded sample of them (sorted folders)."""
    if limit is None:
        return pool
    if limit < 1:
        raise ValueError(f"test_limit should be >= 1, but got {limit}")
    keep = np.arange(min(limit, len(pool))) if first else np.sort(
        np.random.default_rng([seed, 2]).permutation(len(pool))[:limit])
    return LabelledPool(pool.take(keep), pool.labels[keep], pool.class_names, pool.source,
                        tuple(pool.ids[i] for i in keep), pool.root, source_sha256=pool.source_sha256)


def _check_same_classes(calib: LabelledPool, test: LabelledPool) -> None:
    if tuple(calib.class_names) != tuple(test.class_names):
        raise ValueError(f"the test set's classes {list(test.class_names)} differ from the calibration data's "
                         f"{list(calib.class_names)}; give both the same class sub-folders / class names")


def load_eval_data(data: str, image_root: str | None = None, test_data: str | None = None,
                   test_limit: int | None = None, seed: int = 0) -> EvalData:
    """Load the calibration images and the separate test set of an evaluation.

    Args:
        data: ``"fashion-mnist"``, an image folder, a CoOp split ``.json`` file or a label ``.csv`` file.
        image_root: The folder a split file's (or label CSV's) image paths start from.
        test_data: An image folder or label CSV to report on (a folder `data`'s test set, or in place of a
            split file's "test" rows).
        test_limit: Report on only this many test images (the first ones for Fashion-MNIST, a
            seeded sample otherwise).
        seed: Seed of that sample.

    Raises:
        NoTestSetError: No test set apart from the calibration images.
        ValueError: Test classes that differ from the calibration classes, the same folder as
            calibration and test data, ``test_data`` with Fashion-MNIST, or what
            :func:`~trustvlm.calibration.pools.load_pool` refuses.
        FileNotFoundError: A missing dataset, folder, split file or image.
    """
    if str(data) == FASHION_MNIST:
        if test_data is not None:
            raise ValueError(f"{TEST_DATA_FLAG} goes with a folder or split file; fashion-mnist is reported on its "
                             "own 10,000-image test split")
        calib, test = _fashion_mnist()
        test = _limited(test, test_limit, seed, first=True)
    else:
        calib = load_pool(data, image_root)
        test = None
        if test_data is not None:
            if Path(test_data).resolve() == Path(data).resolve():
                raise ValueError(f"{TEST_DATA_FLAG} {test_data} is the calibration folder itself; give a held-out "
                                 "folder of the same classes")
            test = load_pool(test_data, image_root if is_label_csv(test_data) else None)
        elif Path(data).suffix == SPLIT_SUFFIX:
            test = load_split_test(data, image_root)
        if test is None:
            where = "its 'test' rows are missing" if Path(data).suffix == SPLIT_SUFFIX else "a folder has none"
            raise NoTestSetError(
                f"cannot make the report: {data} has no test set apart from its calibration images ({where}); "
                f"give a held-out folder of the same classes with {TEST_DATA_FLAG} FOLDER (scoring the images "
                "that chose the prototypes, lambda and the threshold would overstate every score)")
        _check_same_classes(calib, test)
        calib, test = _stacked(calib), _stacked(_limited(test, test_limit, seed, first=False))
    return EvalData(calib, test, data_identity(calib, test, data, image_root, test_data))


def _file_list_sha256(parts: dict[str, LabelledPool]) -> str:
    digest = hashlib.sha256()
    for name, pool in parts.items():
        for image_id, label in zip(pool.ids, pool.labels):
            digest.update(f"{name}\t{image_id}\t{int(label)}\n".encode())
    return digest.hexdigest()


def data_identity(calib: LabelledPool, test: LabelledPool, data: str, image_root: str | None,
                  test_data: str | None) -> dict:
    """Paths, image counts per part, the sha256 of the (part, image id, label) list and of a label CSV file."""
    shots = len(calib) if calib.shot_pool is None else len(calib.shot_pool)
    held_out = None if calib.held_out_pool is None else len(calib.held_out_pool)
    return {"data": str(data), "image_root": None if image_root is None else str(image_root),
            "test_data": None if test_data is None else str(test_data),
            "calibration_source": calib.source, "test_source": test.source,
            "classes": len(calib.class_names),
            "counts": {"calibration": len(calib), "shot_candidates": shots,
                       "held_out": held_out if held_out is not None else "the calibration images that are not shots",
                       "test": len(test)},
            "file_list_sha256": _file_list_sha256({"calibration": calib, "test": test}),
            **{f"{name}_sha256": pool.source_sha256 for name, pool in (("data", calib), ("test_data", test))
               if pool.source_sha256 is not None}}


def describe_data(identity: dict) -> str:
    """One sentence for the report: where the calibration and test images come from."""
    counts = identity["counts"]
    held_out = counts["held_out"]
    return (f"Calibration data {identity['calibration_source']} ({counts['calibration']} images, "
            f"{identity['classes']} classes; shots from {counts['shot_candidates']}, lambda and threshold from "
            f"{held_out if isinstance(held_out, str) else f'{held_out} held-out images'}); "
            f"test set {identity['test_source']} ({counts['test']} images); "
            f"file list sha256 {identity['file_list_sha256'][:16]}.")
