"""`serve` flags and config files, refusal at start, and the no-torch rule of the runtime."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from trustvlm.runtime.cli import add_serve_parser, config_from_args, main, run_serve
from trustvlm.runtime.config import ServiceConfig
from trustvlm.runtime.messages import WireFormat
from trustvlm.runtime.ingest.transport import SocketType

pytestmark = pytest.mark.timeout(60)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trustvlm")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def test_add_serve_parser_sets_the_handler():
    assert parse("--artifacts", "a", "--bundle", "b").handler is run_serve


def test_flags_override_the_config_file_whose_paths_are_relative_to_it(tmp_path):
    # Given a config file in a folder, with relative paths and a JSON publisher
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "serve.json").write_text(json.dumps({
        "artifacts": "art", "bundle": "bun", "publish": {"wire_format": "json", "heartbeat_ms": 250},
        "ingest": {"socket_type": "sub", "mode": "connect"}}))
    # When flags change the ingest socket and the bundle
    config = config_from_args(parse("--config", str(tmp_path / "conf" / "serve.json"), "--ingest-socket", "rep",
                                    "--bundle", "other", "--providers", "cuda", "cpu", "--no-watch"))
    # Then the file's values stay unless a flag says otherwise, paths from the file are relative to it
    assert config.artifacts == tmp_path / "conf" / "art"
    assert str(config.bundle) == "other", "a flag path is relative to the working directory"
    assert config.ingest.socket_type is SocketType.REP and config.ingest.mode.value == "connect"
    assert config.publish.wire_format is WireFormat.JSON and config.publish.heartbeat_ms == 250
    assert config.scorer.providers == ("cuda", "cpu") and config.reload.watch is False


def test_config_round_trips_and_rejects_unknown_keys():
    config = ServiceConfig.from_dict({"artifacts": "a", "bundle": "b", "metrics": "127.0.0.1:9100",
                                      "scorer": {"max_batch": 4, "threads": None}})
    assert ServiceConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"config.scorer: unknown keys \['batch'\]; expected some of \['providers'"):
        ServiceConfig.from_dict({"artifacts": "a", "bundle": "b", "scorer": {"batch": 4}})
    with pytest.raises(ValueError, match=r"config.ingest.socket_type should be one of \['pull', 'sub', 'rep'\]"):
        ServiceConfig.from_dict({"artifacts": "a", "bundle": "b", "ingest": {"socket_type": "router"}})
    with pytest.raises(ValueError, match="max_batch should be >= 1, but got 0"):
        ServiceConfig.from_dict({"artifacts": "a", "bundle": "b", "scorer": {"max_batch": 0}})
    with pytest.raises(ValueError, match="metrics should be 'host:port'"):
        ServiceConfig.from_dict({"artifacts": "a", "bundle": "b", "metrics": "9100"})


def test_dump_config_prints_the_effective_config(capsys):
    assert main(["serve", "--artifacts", "a", "--bundle", "b", "--max-batch", "3", "--dump-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["scorer"]["max_batch"] == 3 and printed["ingest"]["address"] == "tcp://*:5555"


def test_missing_paths_and_bad_bundles_fail_at_start_with_one_line(tmp_path, fault_export, capsys):
    assert main(["serve", "--artifacts", str(fault_export)]) == 1
    assert "error: --bundle DIR (one bundle for every camera) or --bundles FILE" in capsys.readouterr().err
    assert main(["serve", "--artifacts", str(fault_export), "--bundle", "b", "--bundles", "m.toml"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["serve", "--artifacts", str(fault_export), "--bundles", str(tmp_path / "none.toml")]) == 1
    assert "cannot read the camera map" in capsys.readouterr().err
    assert main(["serve", "--artifacts", str(fault_export), "--bundle", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("trustvlm serve: error: no bundle.json in") and "\n" not in err


def test_the_runtime_imports_neither_torch_nor_export_code():
    code = ("import sys, trustvlm.runtime.service, trustvlm.runtime.cli, trustvlm.runtime.metrics, "
            "trustvlm.runtime.scoring.engines, trustvlm.runtime.scoring.tensorrt_engine; "
            "print(sorted(m for m in sys.modules if m in ('torch', 'onnx', 'tensorrt') "
            "or m.startswith('trustvlm.export')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", f"the runtime imported {result.stdout.strip()}"
