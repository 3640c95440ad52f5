"""`trustvlm serve --cluster`: flags, and a single-machine `serve` that never imports Ray (nor torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import sys, contextlib, io
import trustvlm.runtime.service, trustvlm.runtime.cli, trustvlm.cluster
from trustvlm.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main({argv!r})
    except SystemExit:
        pass
print(sorted(m for m in sys.modules if m in ("ray", "torch") or m.startswith(("ray.", "torch."))))
print(out.getvalue())
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=120)


def test_serve_help_offers_cluster_mode_without_importing_ray():
    result = _run(["serve", "--help"])
    assert result.returncode == 0, result.stderr
    imported, help_text = result.stdout.split("\n", 1)
    assert imported == "[]", f"`serve --help` imported Ray or torch: {imported}"
    for flag in ("--cluster ADDRESS", "--replicas", "--replica-gpus", "--replica-resource", "ray start --head"):
        assert flag in help_text, flag


def test_cluster_settings_are_checked_and_shown_before_ray_is_imported(tmp_path):
    result = _run(["serve", "--artifacts", str(tmp_path), "--bundle", str(tmp_path / "b"), "--cluster",
                   "10.0.0.1:6379", "--replicas", "3", "--replica-gpus", "0.25", "--replica-resource",
                   "trustvlm_replica", "--dump-config"])
    assert result.returncode == 0, result.stderr
    imported, dumped = result.stdout.split("\n", 1)
    assert imported == "[]"
    cluster = json.loads(dumped)["cluster"]
    assert (cluster["address"], cluster["replicas"], cluster["replica_gpus"], cluster["replica_resources"]) == \
        ("10.0.0.1:6379", 3, 0.25, {"trustvlm_replica": 1.0})


@pytest.mark.parametrize("flags, message", [
    (["--replicas", "0"], "replicas should be >= 1, but got 0"),
    (["--backend", "tensorrt-engine"], "--cluster runs the replicas on --backend onnxruntime"),
    (["--replica-cpus", "-1"], "replica_cpus should be >= 0, but got -1.0"),
])
def test_bad_cluster_settings_are_one_line_that_says_what_is_wrong(tmp_path, flags, message):
    result = subprocess.run([sys.executable, "-m", "trustvlm", "serve", "--artifacts", str(tmp_path), "--bundle",
                             str(tmp_path), "--cluster", "127.0.0.1:1", *flags], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_replica_resource_needs_a_name_and_a_positive_amount(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trustvlm", "serve", "--artifacts", str(tmp_path), "--bundle",
                             str(tmp_path), "--cluster", "auto", "--replica-resource", "gpu_slot=0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "expected NAME or NAME=AMOUNT with AMOUNT > 0, but got 'gpu_slot=0'" in result.stderr


def test_a_camera_map_is_served_in_cluster_mode_and_shown_before_ray_is_imported(tmp_path):
    camera_map = tmp_path / "cameras.toml"
    camera_map.write_text('[cameras]\nfront = "bundles/front"\n')
    result = _run(["serve", "--artifacts", str(tmp_path), "--bundles", str(camera_map), "--cluster", "10.0.0.1:6379",
                   "--replicas", "2", "--dump-config"])
    assert result.returncode == 0, result.stderr
    imported, dumped = result.stdout.split("\n", 1)
    assert imported == "[]"
    config = json.loads(dumped)
    assert (config["bundles"], config["cluster"]["replicas"]) == (str(camera_map), 2)


def test_an_unreadable_camera_map_is_refused_in_one_line_before_the_cluster_is_joined(tmp_path):
    (tmp_path / "cameras.toml").write_text("[cameras]\nfront = 3\n")
    result = subprocess.run([sys.executable, "-m", "trustvlm", "serve", "--artifacts", str(tmp_path), "--bundles",
                             str(tmp_path / "cameras.toml"), "--cluster", "127.0.0.1:1"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert "cameras.toml: bundle folders should be non-empty strings" in result.stderr, result.stderr
    assert "Ray cluster" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
