"""scikit-learn's digits written as disjoint train / calib / test image folders and a CoOp split file."""

from __future__ import annotations

import json

import pytest

from trustvlm.data.image_folder import list_image_folder, read_rgb
from trustvlm.data.sklearn_digits import CLASS_NAMES, SPLIT_FILE, write_digits_folders

pytest.importorskip("sklearn")


def test_digits_become_three_disjoint_folders_and_a_matching_split_file(tmp_path):
    counts = write_digits_folders(tmp_path / "digits")
    assert counts == {"train": 898, "calib": 450, "test": 449}, "1,797 digits, 50/25/25 per class"
    seen = set()
    for part, n in counts.items():
        files, labels, names = list_image_folder(tmp_path / "digits" / part)
        assert len(files) == n and names == tuple(sorted(CLASS_NAMES))
        seen |= {path.name for path in files}
    assert len(seen) == 1797, "no digit is in two parts"
    assert read_rgb(files[0]).shape == (28, 28, 3)
    splits = json.loads((tmp_path / "digits" / SPLIT_FILE).read_text())
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 898, "val": 450, "test": 449}
    relpath, label, name = splits["val"][0]
    assert relpath.startswith(f"calib/{name}/") and CLASS_NAMES[label] == name
