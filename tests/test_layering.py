"""Package layering: the contract stands alone, and the runtime needs no build-time stage.

Read from the syntax tree of every source file (lazy imports inside functions count too).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: What the runtime must never import: the build-time stages and the tools built on the runtime.
NOT_FOR_RUNTIME = {"calibration", "export", "pipelines", "benchmarks", "training"}


def package_imports() -> dict[str, set[tuple[str, str]]]:
    """``{package: {(imported package, importing file)}}`` over the project's sources (tests left out)."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] == "tests" or rel.parts[0].startswith("."):
            continue
        package = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "trustvlm" and len(parts) > 1 and parts[1] != package:
                    edges[package].add((parts[1], str(rel)))
    return edges


def test_the_contract_imports_nothing_from_the_project():
    assert not package_imports().get("contract"), "contract/ may import only the standard library and numpy"


def test_the_runtime_imports_no_build_time_stage():
    found = sorted((target, where) for target, where in package_imports().get("runtime", ())
                   if target in NOT_FOR_RUNTIME)
    assert not found, f"runtime/ imports {found}; move what both sides need into contract/"


def test_the_runtime_imports_no_package_that_imports_it():
    edges = package_imports()
    runtime_needs = {target for target, _ in edges.get("runtime", ())}
    users = {package for package, targets in edges.items() if any(target == "runtime" for target, _ in targets)}
    assert not runtime_needs & (users - {"cli"}), f"import cycle through runtime/: {sorted(runtime_needs & users)}"
