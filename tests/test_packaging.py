"""What a device install gets: the runtime imports without torch, onnx or export code."""

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_runtime_imports_without_torch_onnx_or_export_code():
    probe = ("import sys, trustvlm.runtime.service, trustvlm.runtime.cli, trustvlm.calibration.bundle; "
             "bad = [m for m in sys.modules if m in ('torch', 'onnx', 'open_clip') or m.startswith('trustvlm.export')];"
             "print(bad)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_core_dependencies_hold_no_build_time_packages():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for heavy in ("torch", "open_clip", "onnx>=", "onnxscript", "tensorrt"):
        assert heavy not in core, f"{heavy} belongs in an extra, not in the device install"
    assert "torch==2.14.1" in project["optional-dependencies"]["export"]


def test_schemas_and_registry_ship_as_package_data():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "schemas/*.json" in setuptools["package-data"]["trustvlm"]
    assert "registry.json" in " ".join(setuptools["package-data"]["trustvlm.models"]) or \
        "*.json" in setuptools["package-data"]["trustvlm.models"]
