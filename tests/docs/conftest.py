"""Fixtures of the documentation tests: the site built once, and a real service for the snippets.

* ``site`` builds the site once per session with the command ``make docs`` runs (read from the
  Makefile with ``make -n``, so the test builds what a user builds), into a temporary folder:
  ``mkdocs build --strict``, where any warning (a broken link or anchor, a page missing from the
  nav, an unresolved reference) fails the build. Skipped, in one line, only where mkdocs is not
  installed.
* ``serve``, ``fault_export``, ``make_fault_bundle``, ``zmq_context`` and ``subscribe`` are the
  runtime tests' fixtures (tests/runtime/conftest.py): a real ``serve`` process on random loopback
  ports, scoring a small synthetic export, so a snippet can run against it in about a second.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..runtime.conftest import fault_export, make_fault_bundle, serve, subscribe, zmq_context  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BuiltSite:
    """The site as ``make docs`` built it: its folder, the command, its output and how long it took."""

    root: Path
    command: list[str]
    output: str
    seconds: float

    def page(self, path: str) -> str:
        """The HTML of a page by its source path, e.g. ``reference/cli.md`` -> ``reference/cli/index.html``."""
        target = path.removesuffix(".md")
        target = "index.html" if target == "index" else f"{target}/index.html"
        return (self.root / target).read_text()


def make_docs_command(site_dir: Path, venv: Path) -> list[str]:
    """The command ``make docs SITE=site_dir`` runs, with this interpreter in place of the venv's."""
    done = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), "docs", f"VENV={venv}",
                           f"SITE={site_dir}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if " -m mkdocs " in line]
    words = shlex.split(line)
    assert words[0] == f"{venv}/bin/python", words
    return [sys.executable, *words[1:]]


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> BuiltSite:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (the docs extra: pip install -e '.[docs]')")
    venv = tmp_path_factory.mktemp("venv")
    (venv / ".installed-cpu").touch()  # newer than pyproject.toml: `make -n docs` prints no setup step
    root = tmp_path_factory.mktemp("site")
    command = make_docs_command(root, venv)
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{shlex.join(command)}` failed:\n{output[-4000:]}"
    return BuiltSite(root, command, output, seconds)
