"""Labels exported by annotation tools: a ``path,label`` CSV file (Label Studio, CVAT, a spreadsheet).

    image,choice
    forklift/0001.jpg,forklift
    /mnt/cam/0002.png,pallet

The header row names the columns (case-insensitive, other columns ignored): the image path is the
first of :data:`PATH_COLUMNS` present, the label the first of :data:`LABEL_COLUMNS`. A relative path
starts from the CSV file's folder, or from ``image_root`` when given, and may not leave it (``..``);
an absolute path is used as it is. A path listed twice counts once (two different labels for it are
refused).

Class names are the distinct labels in sorted order, underscores read as spaces, as
:mod:`trustvlm.data.image_folder` orders and names its sub-folders; images are ordered by class, then
path, so a CSV over an image folder's files gives the same images in the same order as the folder.

Every refusal is one :class:`LabelCsvError` line naming the file, the row (the header is row 1) and
what is wrong; all of them are found without reading any pixel.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CSV_SUFFIX = ".csv"
#: Accepted names of the image-path column, in order of preference.
PATH_COLUMNS = ("path", "image", "file")
#: Accepted names of the label column, in order of preference.
LABEL_COLUMNS = ("label", "class", "choice")


class LabelCsvError(ValueError):
    """A label CSV file that cannot be used (one line: file, row, what is wrong)."""


@dataclass(frozen=True)
class LabelCsv:
    """The images a label CSV lists, without their pixels.

    Attributes:
        files: Path of each image.
        ids: Each image's path as listed (normalized; relative to ``root`` unless absolute).
        labels: ``N`` int64 labels in ``[0, C)``.
        class_names: The C class names, in label order.
        root: The folder relative paths start from.
        sha256: The sha256 of the CSV file's bytes.
    """

    files: tuple[Path, ...]
    ids: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    root: Path
    sha256: str


def is_label_csv(data: str | os.PathLike) -> bool:
    """Whether `data` names a label CSV file (by its suffix)."""
    return Path(data).suffix.lower() == CSV_SUFFIX


def _column(header: list[str], names: tuple[str, ...], what: str, path: Path) -> int:
    lowered = [name.strip().lower() for name in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise LabelCsvError(f"{path} row 1: no {what} column: the header should name one of {', '.join(names)}, "
                        f"but has {', '.join(map(repr, header)) or 'nothing'}")


def _image_id(text: str, root: Path, where: str) -> tuple[str, Path]:
    """(id, file) of one listed path; refuses an empty path, one leaving `root`, or a missing file."""
    if not text:
        raise LabelCsvError(f"{where}: the image path is empty")
    if os.path.isabs(text):
        image_id = os.path.normpath(text)
        file = Path(image_id)
    else:
        image_id = Path(os.path.normpath(text)).as_posix()
        if image_id == ".." or image_id.startswith("../"):
            raise LabelCsvError(f"{where}: the image path {text!r} leaves {root} ('..'); list it from inside that "
                                "folder or as an absolute path")
        file = root / image_id
    if not file.is_file():
        raise LabelCsvError(f"{where}: the image {text!r} does not exist ({file})")
    return image_id, file


def read_label_csv(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> LabelCsv:
    """Read and check a label CSV file (see the module docstring); no image is read.

    Args:
        path: The CSV file.
        image_root: The folder relative paths start from (default: the CSV file's folder).

    Raises:
        FileNotFoundError: A missing CSV file or image root.
        LabelCsvError: Missing columns, an empty path or label, a path leaving the root, a missing
            image, a path listed with two labels, two labels that read as one class name, fewer
            than 2 classes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    root = path.parent if image_root is None else Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise LabelCsvError(f"{path}: not UTF-8 text ({error})") from error
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    path_col = _column(header, PATH_COLUMNS, "image path", path)
    label_col = _column(header, LABEL_COLUMNS, "label", path)
    seen: dict[str, tuple[str, int]] = {}
    rows: list[tuple[str, Path, str, int]] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        where = f"{path} row {reader.line_num}"
        if len(row) <= max(path_col, label_col):
            raise LabelCsvError(f"{where}: {len(row)} column(s), but the header has {len(header)}")
        label = row[label_col].strip()
        image_id, file = _image_id(row[path_col].strip(), root, where)
        if not label:
            raise LabelCsvError(f"{where}: the label of {image_id} is empty")
        if image_id in seen:
            first_label, first_row = seen[image_id]
            if first_label != label:
                raise LabelCsvError(f"{where}: {image_id} is labelled {label!r} here but {first_label!r} in row "
                                    f"{first_row}")
            continue
        seen[image_id] = (label, reader.line_num)
        rows.append((image_id, file, label, reader.line_num))
    labels = sorted({label for _, _, label, _ in rows})
    if len(labels) < 2:
        raise LabelCsvError(f"{path}: {len(labels)} class(es) {labels} among {len(rows)} image row(s); "
                            "calibration needs at least 2 classes")
    names: dict[str, str] = {}
    for label in labels:
        name = label.replace("_", " ")
        if name in names:
            row = min(line for _, _, other, line in rows if other == label)
            raise LabelCsvError(f"{path} row {row}: the label {label!r} reads as the class {name!r}, as "
                                f"{names[name]!r} does (underscores are read as spaces); use one spelling")
        names[name] = label
    index = {label: i for i, label in enumerate(labels)}
    rows.sort(key=lambda row: (index[row[2]], row[0]))
    return LabelCsv(tuple(file for _, file, _, _ in rows), tuple(image_id for image_id, _, _, _ in rows),
                    np.asarray([index[label] for _, _, label, _ in rows], dtype=np.int64),
                    tuple(label.replace("_", " ") for label in labels), root, hashlib.sha256(raw).hexdigest())
