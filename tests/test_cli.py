import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trustvlm.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def registered_subcommands() -> set[str]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def listed_subcommands(help_text: str) -> dict[str, str]:
    """Command name -> description in the 'commands' section of `trustvlm --help`.

    A name is indented 4 columns; its description follows on the same line or on the lines below, indented
    deeper (argparse moves it there when the name is long).
    """
    section = help_text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    listed: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        found = re.match(r"^    (\S+)\s*(.*)$", line)
        if found:
            name = found.group(1)
            listed[name] = found.group(2)
        elif name is not None and line.startswith("      "):
            listed[name] = (listed[name] + " " + line.strip()).strip()
    return listed


def test_top_level_help_lists_every_registered_subcommand_with_a_description(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    listed = listed_subcommands(out)
    assert set(listed) == registered_subcommands()
    assert {"demo", "soak", "keys", "bench"} <= set(listed)
    assert all(len(description.split()) >= 4 for description in listed.values()), listed


@pytest.mark.parametrize("command", sorted(registered_subcommands() - {"bench"}))
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: trustvlm " + command in out and len(out.splitlines()) > 4


def test_subcommand_help_works_from_the_command_line():
    # `python -m trustvlm demo --help` and `... soak --help` exit 0 as real processes too
    for command in ("demo", "soak"):
        result = subprocess.run([sys.executable, "-m", "trustvlm", command, "--help"], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: trustvlm {command}")


def test_cli_modules_take_shared_bits_from_the_leaf_module_only():
    # cli_common imports nothing of the project, and no */cli.py imports the top-level cli.py
    leaf = ast.parse((REPO / "cli_common.py").read_text())
    imported = [n.module or "" for n in ast.walk(leaf) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(leaf) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("trustvlm")], imported
    for path in REPO.glob("*/cli.py"):
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "trustvlm.cli" not in modules, f"{path.relative_to(REPO)} imports trustvlm.cli"


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
