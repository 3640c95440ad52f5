"""Static rules of the runtime source: nothing received is unpickled or evaluated, and msgpack has explicit limits.

The rules read the syntax tree of every runtime/*.py and contract/*.py (which the service uses to
read manifests and load bundles), so docstrings that *mention* pickle do not count, and an alias
(``import pickle as p``) does not hide a use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)
REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted((REPO / "runtime").glob("*.py")) + sorted((REPO / "contract").glob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "yaml"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_ATTRIBUTES = {"recv_pyobj", "recv_serialized", "send_pyobj", "send_serialized", "loads_pickle"}
MSGPACK_LIMITS = {"max_str_len", "max_bin_len", "max_array_len", "max_map_len"}


def findings(path: Path, root: Path = REPO) -> list[str]:
    """Every breach of the rules in one file, as 'file:line: what'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    unsafe_names = set(UNSAFE_MODULES)  # and whatever names an import binds them to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            unsafe_names |= {a.asname or a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES}
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if isinstance(func, ast.Name) and name in UNSAFE_CALLS:
                found.append(f"{where}: {name}()")
            if name in UNSAFE_ATTRIBUTES:
                found.append(f"{where}: .{name}()")
            for keyword in node.keywords:
                if keyword.arg == "allow_pickle" and not (isinstance(keyword.value, ast.Constant)
                                                          and keyword.value.value is False):
                    found.append(f"{where}: allow_pickle is not False")
            if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") in ("np", "numpy") \
                    and not any(k.arg == "allow_pickle" for k in node.keywords):
                found.append(f"{where}: np.load without allow_pickle=False")
            on_msgpack = isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "msgpack"
            if name in ("unpackb", "Unpacker") or (on_msgpack and name == "unpack"):
                missing = MSGPACK_LIMITS - {k.arg for k in node.keywords}
                if missing:
                    found.append(f"{where}: msgpack.{name} without {sorted(missing)}")
        elif isinstance(node, ast.Attribute) and node.attr in ("loads", "load") and \
                getattr(node.value, "id", "") in unsafe_names:
            found.append(f"{where}: {node.value.id}.{node.attr}")
    return found


def test_the_runtime_never_unpickles_or_evaluates_anything():
    assert len(SOURCES) > 10, SOURCES
    problems = [problem for path in SOURCES for problem in findings(path)]
    assert problems == [], "\n".join(problems)


def test_the_rules_catch_what_they_are_meant_to(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import pickle as p\nfrom marshal import loads\nimport msgpack, numpy as np\n"
                      "eval('1')\nx = p.loads(b'')\nmsgpack.unpackb(b'', max_str_len=1)\n"
                      "np.load('f.npz')\nsock.recv_pyobj()\n")
    text = "\n".join(findings(sample, tmp_path))
    for expected in ("import pickle", "from marshal", "eval()", "p.loads", "msgpack.unpackb without",
                     "np.load without", ".recv_pyobj()"):
        assert expected in text, f"{expected!r} not found in:\n{text}"
