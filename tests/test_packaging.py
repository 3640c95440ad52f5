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


ORT_NAMES = ("onnxruntime", "onnxruntime-gpu")


def _requirement_names(requirements: list[str]) -> list[str]:
    from packaging.requirements import Requirement

    return [Requirement(r).name.lower().replace("_", "-") for r in requirements]


def _installed_closure(names: list[str]) -> dict[str, set[str]]:
    """Who requires whom among the installed distributions reachable from `names` (extras of each left out)."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    seen, todo, required_by = set(), list(names), {}
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (tensorrt on this machine): its own pins are checked by pip
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            todo.append(requirement.name)
            required_by.setdefault(requirement.name.lower().replace("_", "-"), set()).add(name)
    return required_by


def test_a_gpu_or_cpu_install_brings_exactly_one_onnxruntime():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = _requirement_names(project["dependencies"])
    assert not set(core) & set(ORT_NAMES), "the core install must leave the ONNX Runtime flavour to an extra"
    assert [n for n in _requirement_names(extras["cpu"]) if n in ORT_NAMES] == ["onnxruntime"]
    assert [n for n in _requirement_names(extras["gpu"]) if n in ORT_NAMES] == ["onnxruntime-gpu"]
    for extra, requirements in extras.items():
        if extra not in ("cpu", "gpu"):
            assert not set(_requirement_names(requirements)) & set(ORT_NAMES), f"[{extra}] names an onnxruntime"
    # nothing that core, export, trt, dev, cluster or docs pull in (as installed here) requires an onnxruntime of its own
    others = core + [n for extra in ("export", "trt", "dev", "cluster", "docs") for n in _requirement_names(extras[extra])]
    pulled = {name: by for name, by in _installed_closure(others).items() if name in ORT_NAMES}
    assert pulled == {}, f"a dependency brings its own onnxruntime: {pulled}"


def test_tensorrt_is_pinned_to_the_supported_major():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    from packaging.requirements import Requirement

    (trt,) = [Requirement(r) for r in extras["trt"]]
    assert trt.name == "tensorrt" and "10.3.0" in trt.specifier and "10.16.1" in trt.specifier
    assert "11.0.0" not in trt.specifier and "8.6.1" not in trt.specifier


def test_the_install_check_names_what_is_wrong_in_one_line():
    from trustvlm.runtime.scoring.gpu_info import check_onnxruntime_install

    assert check_onnxruntime_install(["numpy", "onnxruntime-gpu"]) is None
    both = check_onnxruntime_install(["onnxruntime", "onnxruntime_gpu", "numpy"])
    assert both.startswith("onnxruntime and onnxruntime-gpu are installed side by side") and "\n" not in both
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in both
    assert check_onnxruntime_install(["numpy"]).startswith("no ONNX Runtime is installed")
    result = subprocess.run([sys.executable, "-m", "trustvlm.runtime.install_check"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("install check: onnxruntime"), result.stderr


def test_make_setup_installs_one_flavour_and_switches_cleanly(tmp_path):
    def dry_run(*args):
        result = subprocess.run(["make", "-n", "-C", str(REPO), "setup", f"VENV={tmp_path / 'venv'}", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "pip install -q -e '.[cpu,export,dev,cluster,docs]'" in dry_run()
    gpu = dry_run("ORT=gpu")
    assert "pip install -q -e '.[gpu,trt,export,dev,cluster,docs]'" in gpu and "uninstall -y -q onnxruntime onnxruntime-gpu" in gpu
    assert "trustvlm.runtime.install_check" in gpu
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".installed-gpu").touch()
    assert "pip install -q -e '.[gpu,trt,export,dev,cluster,docs]'" not in dry_run(), "the flavour sticks to the venv"
