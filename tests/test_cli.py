import subprocess
import sys

import pytest

from trustvlm.cli import build_parser, main


@pytest.mark.parametrize("command", ["export", "calibrate", "eval", "serve", "keys", "source", "controller", "zeroshot", "train-demo", "models"])
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: trustvlm " + command in out and len(out.splitlines()) > 4


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "clip_vitb32" in out and "ViT-B-16-SigLIP" in out and "demo_fmnist" in out


def test_zeroshot_on_a_folder_without_artifacts_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trustvlm", "zeroshot", "--artifacts", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("trustvlm zeroshot: error: no manifest.json")
    assert "Traceback" not in result.stderr


def test_bench_passes_its_flags_to_the_benchmark_suite(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "BENCHMARKS.md" in capsys.readouterr().out
