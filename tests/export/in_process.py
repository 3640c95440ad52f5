"""`trustvlm ...` run in the test's own process: the real parser and handler, its exit status and output.

For tests whose point is what the command says and does, not the process boundary: a subprocess
spends seconds importing torch, open_clip and timm again, which the test session already holds.
Output is captured at the file descriptors (pytest's ``capfd``), so what a library writes around
``sys.stdout`` / ``sys.stderr`` is seen as a subprocess would see it. An exception the command does
not turn into its one line propagates and fails the test (a subprocess would print a traceback).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class CliRun:
    """What a `trustvlm` command returned and wrote (the fields of ``subprocess.CompletedProcess`` tests read)."""

    returncode: int
    stdout: str
    stderr: str


def run_in_process(capfd: pytest.CaptureFixture, *args) -> CliRun:
    """Run ``trustvlm *args`` through :func:`trustvlm.cli.main` and capture what it wrote."""
    from trustvlm.cli import main  # noqa: PLC0415

    capfd.readouterr()  # what the test wrote before is not the command's
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as error:  # argparse refuses a command line this way
        code = error.code if isinstance(error.code, int) else 1
    out, err = capfd.readouterr()
    return CliRun(code, out, err)


def hub_offline(monkeypatch: pytest.MonkeyPatch, home: Path | None = None) -> None:
    """What HF_HUB_OFFLINE=1 (and HF_HOME=`home`) do to a new process, for this one: every Hugging Face hub
    request is refused (and the local cache is `home`/hub, an empty one for a new folder).

    huggingface_hub reads the variables once, at import; its requests ask ``constants.is_offline_mode()``
    and the cache is ``constants.HF_HUB_CACHE`` when a file is looked for (transformers' too).
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if home is not None:
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
