"""The contract's file utilities: JSON-safe floats and atomic folder publishing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trustvlm.contract.files import json_safe, staged_folder


def test_json_safe_writes_non_finite_floats_as_text_by_default():
    data = {"a": [float("nan"), np.float32(np.inf), -math.inf], "b": (np.int64(3), 1.5), "c": "x"}
    safe = json_safe(data)
    assert safe == {"a": ["nan", "inf", "-inf"], "b": [3, 1.5], "c": "x"}
    json.dumps(safe, allow_nan=False)
    assert [float(v) for v in safe["a"][1:]] == [math.inf, -math.inf]


def test_json_safe_null_mode_writes_null():
    assert json_safe({"a": [float("nan"), np.float64(2.0)]}, non_finite="null") == {"a": [None, 2.0]}
    with pytest.raises(ValueError, match="non_finite should be one of"):
        json_safe(1.0, non_finite="zero")


def test_staged_folder_replaces_a_folder_whole_and_leaves_it_on_error(tmp_path):
    target = tmp_path / "out"
    with staged_folder(target) as stage:
        (stage / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with staged_folder(target) as stage:
            (stage / "b.txt").write_text("2")
            raise RuntimeError("stop")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no stage folder left behind
    with staged_folder(target) as stage:
        (stage / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
