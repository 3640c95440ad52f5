"""Code shown in the documentation runs: commands parse, Python snippets compile, import and run.

Every fenced ```python block of README.md, BENCHMARKS.md, RELIABILITY.md and docs/**/*.md is marked on
the line before it:

* ``<!-- test: run -->``: run here against a real ``trustvlm serve`` (the runtime tests' service on
  random loopback ports, scoring a small synthetic export), the documented addresses
  ``tcp://127.0.0.1:5555`` (ingest) and ``tcp://127.0.0.1:5556`` (publish) replaced by the service's;
* ``<!-- test: compile -->``: compiled, and every module it imports must be importable here.

:func:`document_problems` is the checker: for one document's text, every ``trustvlm`` command line
must parse with the real parser (tests/test_documented_commands.py's rules) and every Python block
must be marked, compile and import. Its self-checks rename a flag, once in a copy of a document and
once in the parser, and expect it to say so.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from trustvlm.cli import build_parser

from ..runtime.conftest import FAULT_CLASSES, fault_image
from ..test_documented_commands import DOCS, commands_in, trustvlm_line_problem

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- test: (run|compile) -->$")
INGEST, PUBLISH = "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"


@dataclass(frozen=True)
class Snippet:
    where: str  # document:line of the opening fence
    mode: str | None  # "run", "compile", or None when unmarked
    code: str


def python_snippets(text: str, doc: str) -> list[Snippet]:
    """The fenced ```python blocks of a Markdown text, each with the test marker on the line before it."""
    snippets, lines, at = [], text.splitlines(), 0
    while at < len(lines):
        if re.match(r"^```(python|py)\b", lines[at]):
            end = next(i for i in range(at + 1, len(lines)) if lines[i].startswith("```"))
            marker = MARKER.match(lines[at - 1].strip()) if at else None
            snippets.append(Snippet(f"{doc}:{at + 1}", marker.group(1) if marker else None,
                                    "\n".join(lines[at + 1:end]) + "\n"))
            at = end
        at += 1
    return snippets


def snippet_problems(snippet: Snippet) -> list[str]:
    if snippet.mode is None:
        return [f"{snippet.where}: a ```python block without <!-- test: run --> or <!-- test: compile --> before it"]
    try:
        tree = compile(snippet.code, snippet.where, "exec", ast.PyCF_ONLY_AST)
    except SyntaxError as error:
        return [f"{snippet.where}: does not compile: {error}"]
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return [f"{snippet.where}: imports {name}, which is not installed"
            for name in sorted(modules) if importlib.util.find_spec(name.split(".")[0]) is None]


def document_problems(text: str, doc: str, parser=build_parser) -> list[str]:
    """What is wrong with the code one document shows (empty: nothing)."""
    subcommands = set(parser()._subparsers._group_actions[0].choices)
    problems = [problem for key, lines in commands_in(text, subcommands).items() if key.startswith("trustvlm ")
                for line in lines if (problem := trustvlm_line_problem(line, parser))]
    return problems + [problem for snippet in python_snippets(text, doc) for problem in snippet_problems(snippet)]


def test_every_document_passes_the_checker():
    problems = [problem for doc in DOCS for problem in document_problems((REPO / doc).read_text(), doc)]
    assert not problems, "\n".join(problems)
    assert any(snippet.mode == "run" for doc in DOCS for snippet in python_snippets((REPO / doc).read_text(), doc))


SERVE_PAGE = "docs/how-to/serve.md"


def test_the_checker_reports_a_flag_renamed_in_a_copy_of_a_document(tmp_path):
    original = (REPO / SERVE_PAGE).read_text()
    assert document_problems(original, SERVE_PAGE) == []
    assert "--publish 'tcp://*:5556'" in original
    copy = tmp_path / "serve.md"
    copy.write_text(original.replace("--publish 'tcp://*:5556'", "--publish-to 'tcp://*:5556'"))
    problems = document_problems(copy.read_text(), str(copy))
    assert problems and "--publish-to" in problems[0] and "does not parse" in problems[0], problems


def test_the_checker_reports_a_flag_renamed_in_the_cli():
    def renamed_parser() -> argparse.ArgumentParser:
        parser = build_parser()
        serve = parser._subparsers._group_actions[0].choices["serve"]
        action = serve._option_string_actions.pop("--publish")
        action.option_strings = ["--publish-endpoint"]
        serve._option_string_actions["--publish-endpoint"] = action
        return parser

    problems = document_problems((REPO / SERVE_PAGE).read_text(), SERVE_PAGE, parser=renamed_parser)
    assert problems and "--publish" in problems[0], problems


def run_snippets() -> dict[str, Snippet]:
    """Every snippet marked run, by what it is: sender (schema 1 over PUSH), subscriber, imagezmq sender."""
    kinds = {}
    for doc in DOCS:
        for snippet in python_snippets((REPO / doc).read_text(), doc):
            if snippet.mode != "run":
                continue
            kind = ("imagezmq" if "imagezmq" in snippet.code else "sender" if "zmq.PUSH" in snippet.code
                    else "subscriber" if "zmq.SUB" in snippet.code else None)
            assert kind and kind not in kinds, f"{snippet.where}: marked run, but no test here runs it"
            kinds[kind] = snippet
    return kinds


def at_service(snippet: Snippet, service) -> str:
    """The snippet's code with the documented addresses replaced by the running service's."""
    code = snippet.code
    assert INGEST in code or PUBLISH in code, f"{snippet.where} names neither {INGEST} nor {PUBLISH}"
    return code.replace(INGEST, service.ingest).replace(PUBLISH, service.publish)


@pytest.fixture
def frame_folder(tmp_path) -> Path:
    """A folder with frame.jpg (the image the snippets read): a frame the synthetic export scores as finite."""
    import cv2  # noqa: PLC0415

    folder = tmp_path / "client"
    folder.mkdir()
    assert cv2.imwrite(str(folder / "frame.jpg"), fault_image())
    return folder


def run_python(code: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-2000:]}"


def test_the_frame_sender_and_the_decision_subscriber_run_against_a_real_service(
        serve, make_fault_bundle, fault_export, frame_folder, tmp_path):
    """The subscriber snippet prints the decision of a frame the sender snippet sent; the bundle accepts all.

    A SUB socket sees only what is published after its subscription reaches the service, so the
    sender runs again, each time as a new camera (its ``camera_id`` replaced), until the subscriber
    prints a decision.
    """
    snippets = run_snippets()
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")))
    subscriber = subprocess.Popen([sys.executable, "-u", "-c", at_service(snippets["subscriber"], service)],
                                  cwd=frame_folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sender = at_service(snippets["sender"], service)
    assert '"camera_id": "cam0"' in sender
    try:
        line = ""
        for attempt in range(30):
            run_python(sender.replace('"camera_id": "cam0"', f'"camera_id": "docs{attempt}"'), frame_folder)
            if select.select([subscriber.stdout], [], [], 2)[0]:
                line = subscriber.stdout.readline()
                break
            assert subscriber.poll() is None, subscriber.stderr.read()
        camera, seq, decision, reason, label, kappa = line.split()
        assert re.fullmatch(r"docs\d+", camera) and seq == "0", line
        assert (decision, reason) == ("accept", "meets_threshold") and label in FAULT_CLASSES, line
        float(kappa)
        assert subscriber.poll() is None, "the subscriber stops only when stopped"
    finally:
        subscriber.kill()
        subscriber.wait(10)
    assert service.stop() == 0


def test_the_imagezmq_sender_runs_against_a_rep_service(serve, make_fault_bundle, fault_export, frame_folder,
                                                         subscribe, tmp_path):
    snippet = run_snippets()["imagezmq"]
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")),
                    "--ingest-socket", "rep")
    decisions = subscribe(service.publish)
    run_python(at_service(snippet, service), frame_folder)  # asserts the b"OK" reply itself
    assert decisions.wait_for(lambda s: any(d.camera_id == "cam1" for d in s.decisions), 20), decisions.decisions
    (decision,) = [d for d in decisions.decisions if d.camera_id == "cam1"]
    assert decision.decision.value == "accept", decision
    assert service.stop() == 0
