"""Every command the documentation tells a user to run is run by a test, and its flags still exist.

The commands are read from README.md, BENCHMARKS.md, RELIABILITY.md and every page of the documentation
site, ``docs/**/*.md`` (code blocks and inline code that starts with ``make``, ``trustvlm`` or
``python -m trustvlm...``), not kept by hand.
``tests/documented_commands.toml`` names, for each, the tests that run it in its smallest form
(a ``make`` target: the command its recipe runs). The checks:

* every documented command has an entry, every entry is documented, every test named exists;
* every documented ``trustvlm`` command line parses with the real parser (placeholders filled);
* every documented ``make`` line expands (``make -n``) and each ``trustvlm`` command its recipe
  runs parses with the real parser, so a flag renamed in the CLI breaks this test, not a user.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
import subprocess
from pathlib import Path
from typing import Callable

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

from trustvlm.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "BENCHMARKS.md", "RELIABILITY.md",
        *sorted(str(path.relative_to(REPO)) for path in (REPO / "docs").rglob("*.md")))

#: Documented command -> the tests that run it (tests/documented_commands.toml).
RUN_BY: dict[str, list[str]] = tomllib.loads((REPO / "tests" / "documented_commands.toml").read_text())

#: Placeholders of documented command lines -> values the parsers accept (whole words, then parts of words).
PLACEHOLDER_WORDS = {"...": "x", "N": "2", "ADDRESS": "10.0.0.1:6379", "DIR": "x"}
PLACEHOLDERS = {"$M": "artifacts/demo_fmnist", "<head>": "10.0.0.1", "DEVICE": "127.0.0.1", "<model>": "demo_fmnist",
                "~/": "/home/user/"}
COMMAND_START = re.compile(r"^(?:\$ )?(make|trustvlm|(?:\.venv/bin/)?python3? -m) (\S+)(.*)$")


def code_lines(text: str) -> list[str]:
    """The lines of fenced code blocks (continuations joined) and every inline code span, whitespace-normalised."""
    lines, block, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            block.append(line)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(block))
    lines += [line.split("  #")[0].strip() for line in joined.splitlines()]
    lines += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))]
    return [line for line in lines if line]


def commands_in(text: str, subcommands: set[str]) -> dict[str, list[str]]:
    """The commands of one document's text: ``{"make TARGET" | "trustvlm SUB" | "python -m MODULE": [lines]}``."""
    found: dict[str, list[str]] = {}
    for line in code_lines(text):
        match = COMMAND_START.match(line)
        if not match:
            continue
        tool, name = match.group(1), match.group(2)
        if tool == "trustvlm" and name not in subcommands:
            continue  # printed output ("trustvlm eval: error: ...") or prose
        if tool.endswith("-m") and not name.startswith("trustvlm"):
            continue
        key = f"{'python -m' if tool.endswith('-m') else tool} {name}"
        found.setdefault(key, []).append(line)
    return found


def documented_commands(docs=DOCS) -> dict[str, list[str]]:
    """``{"make TARGET" | "trustvlm SUB" | "python -m MODULE": [the documented lines]}`` of every document."""
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    found: dict[str, list[str]] = {}
    for doc in docs:
        for key, lines in commands_in((REPO / doc).read_text(), subcommands).items():
            found.setdefault(key, []).extend(lines)
    return found


def fill(line: str, drop_ellipsis: bool = False) -> list[str]:
    """The words of a documented line, placeholders filled, ``[optional]`` brackets and ``a|b`` choices resolved."""
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    words = [word.strip("[]").split("|")[0] for word in shlex.split(line, comments=True)]
    if drop_ellipsis:
        return [word for word in words if "..." not in word]
    # "..." stands for a flag's value after a flag, for more flags elsewhere
    words = [word for at, word in enumerate(words) if word != "..." or words[at - 1].startswith("--")]
    return [PLACEHOLDER_WORDS.get(word, word) for word in words]


def test_every_documented_command_is_run_by_a_test_and_every_entry_is_documented():
    documented = documented_commands()
    missing = sorted(set(documented) - set(RUN_BY))
    stale = sorted(set(RUN_BY) - set(documented))
    assert not missing, f"documented, but no test named in RUN_BY runs them: {missing}"
    assert not stale, f"RUN_BY names commands no document shows any more: {stale}"


def test_every_make_target_the_docs_name_exists():
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    unknown = sorted(key for key in documented_commands() if key.startswith("make ") and key[5:] not in targets)
    assert not unknown, f"the docs name make targets the Makefile lacks: {unknown}"


def test_every_test_named_in_run_by_exists():
    defined: dict[str, set[str]] = {}
    missing = []
    for key, node_ids in RUN_BY.items():
        for node_id in node_ids:
            path, _, name = node_id.partition("::")
            if path not in defined:
                source = REPO / path
                defined[path] = ({node.name for node in ast.walk(ast.parse(source.read_text()))
                                  if isinstance(node, ast.FunctionDef)} if source.exists() else set())
            if name not in defined[path]:
                missing.append(f"{key}: {node_id}")
    assert not missing, missing


def parse_trustvlm(words: list[str]) -> None:
    """Parse `trustvlm WORDS` with the real parser (``bench`` with the benchmark suite's); SystemExit on a bad flag."""
    if words[:1] == ["bench"]:
        from trustvlm.benchmarks.suite import build_parser as suite_parser  # noqa: PLC0415

        suite_parser().parse_args(words[1:])
        return
    build_parser().parse_args(words)


def documented_lines(tool: str) -> list[str]:
    return sorted({line for key, lines in documented_commands().items() if key.startswith(tool) for line in lines})


def trustvlm_line_problem(line: str, parser: Callable[[], argparse.ArgumentParser] = build_parser) -> str | None:
    """Why a documented ``trustvlm ...`` line does not parse with `parser` (the real one), or None when it does."""
    words = fill(line)[1:]
    if len(words) < 2 or words[1] in ("--help", "-h"):
        return None  # `trustvlm calibrate` named in prose: the subcommand alone
    if len(words) == 2 and words[1].startswith("--"):  # prose naming one flag: `trustvlm serve --cluster`
        subparser = parser()._subparsers._group_actions[0].choices[words[0]]
        return None if words[1] in subparser._option_string_actions else f"`{line}`: {words[0]} has no flag {words[1]}"
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            if parser is build_parser:
                parse_trustvlm(words)
            else:
                parser().parse_args(words)
    except SystemExit as error:
        return f"`{line}` does not parse: {errors.getvalue().strip().splitlines()[-1:]} (exit {error})"
    return None


@pytest.mark.parametrize("line", documented_lines("trustvlm "))
def test_documented_trustvlm_lines_parse(line):
    problem = trustvlm_line_problem(line)
    assert problem is None, problem


def make_dry_run(line: str, venv: Path) -> list[str]:
    """The commands `make -n` prints for a documented make line (the venv set up, so setup prints nothing)."""
    words = fill(line, drop_ellipsis=True)
    done = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), *words[1:], f"VENV={venv}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"`{line}`: make -n exited {done.returncode}: {done.stderr.strip()[-500:]}"
    return done.stdout.replace("\\\n", " ").splitlines()


@pytest.fixture(scope="module")
def ready_venv(tmp_path_factory) -> Path:
    """A venv folder that `make` takes as set up (its stamp newer than pyproject.toml): setup prints nothing."""
    venv = tmp_path_factory.mktemp("venv")
    (venv / ".installed-cpu").touch()
    return venv


#: Targets whose recipes run no `trustvlm` command (pytest, the venv, or a benchmark module's own parser).
NO_TRUSTVLM_COMMAND = {"setup", "test", "test-fast", "test-heavy", "bench-frame-path", "bench-gpu", "gpu-check",
                       "docs", "docs-serve"}


@pytest.mark.parametrize("line", documented_lines("make "))
def test_documented_make_lines_run_commands_that_parse(line, ready_venv, capsys):
    parsed = 0
    for command in make_dry_run(line, ready_venv):
        words = shlex.split(command)
        if len(words) > 2 and words[1] == "-m" and words[2] in ("trustvlm", "trustvlm.benchmarks"):
            try:
                parse_trustvlm(words[3:] if words[2] == "trustvlm" else ["bench", *words[3:]])
            except SystemExit:
                pytest.fail(f"`{line}` runs `{command}`, which does not parse: "
                            f"{capsys.readouterr().err.strip().splitlines()[-1:]}")
            parsed += 1
    assert parsed or fill(line, drop_ellipsis=True)[1] in NO_TRUSTVLM_COMMAND, f"`{line}` ran no trustvlm command"


def test_the_test_targets_select_declared_markers():
    declared = set(re.findall(r'^\s*"([a-z0-9_]+): ', (REPO / "pyproject.toml").read_text(), flags=re.M))
    makefile = (REPO / "Makefile").read_text()
    for target in ("test", "test-fast", "test-heavy"):
        recipe = re.search(rf"^{target}:.*\n\t(.*)$", makefile, flags=re.M).group(1)
        expression = re.search(r'-m (?:"([^"]+)"|(\w+))$', recipe)
        expression = expression.group(1) or expression.group(2)
        used = set(re.findall(r"[a-z_]+", expression)) - {"not", "and", "or"}
        assert used and used <= declared, (target, used - declared)
