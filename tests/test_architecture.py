"""The shape of the code: who may import whom, no import cycles, small modules.

The import graph is read from the source (every ``import``, at module level, inside a function, or
under ``if TYPE_CHECKING:``: a type-only import is still a dependency, and a cycle through one is a
cycle) of each module outside tests/. A "package" is a top-level folder (``runtime``, ``calibration``, ...)
or a top-level module (``cli``, ``cli_common``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = {"tests", "build", "artifacts"}
MAX_MODULE_LINES = 400
#: What the device runtime must never import: build-time code, demos, benchmarks and the top-level CLI.
RUNTIME_MAY_NOT_IMPORT = {"calibration", "export", "pipelines", "benchmarks", "training", "cli"}


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name (``trustvlm.runtime.scoring.scorer``) -> file, for the project's own source."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] in NOT_SOURCE or any(part.startswith(".") for part in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(("trustvlm",) + parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `name` imports (the nearest enclosing module for a name inside one)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from package import module` imports that module; `from module import name` the module itself
            found.update(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                         for alias in node.names)
    resolved = set()
    for target in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target not in (name, "trustvlm"):
            resolved.add(target)
    return resolved


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "trustvlm"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def test_the_graph_reader_sees_relative_lazy_type_only_and_from_imports(tmp_path):
    # Given a small package with a relative import, a lazy import inside a function, a type-only one and a plain one
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "__init__.py").write_text("")
    (tmp_path / "a" / "x.py").write_text("from . import y\n")
    (tmp_path / "a" / "y.py").write_text("def f():\n    from trustvlm.b import z\nif TYPE_CHECKING:\n    import trustvlm.a.x\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_text("import trustvlm.a.x\n")
    modules = source_modules(tmp_path)
    edges = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    # Then every edge is found, the type-only one too, and the three files form one cycle across two packages
    assert edges["trustvlm.a.x"] == {"trustvlm.a.y"} and edges["trustvlm.a.y"] == {"trustvlm.b.z", "trustvlm.a.x"}
    assert cycles(edges) == [["trustvlm.a.x", "trustvlm.a.y", "trustvlm.b.z"]]


def test_the_runtime_imports_no_build_time_code_no_demo_and_no_cli(graph):
    wrong = sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                   if package_of(module) == "runtime" and package_of(target) in RUNTIME_MAY_NOT_IMPORT)
    assert not wrong, "\n".join(wrong)


def test_the_contract_imports_nothing_else_of_the_project(graph):
    assert any(package_of(module) == "contract" for module in graph), "no contract package"
    wrong = sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                   if package_of(module) == "contract" and package_of(target) != "contract")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_files(graph):
    assert cycles(graph) == []


def test_no_import_cycle_between_packages(graph):
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        packages[package_of(module)].update(package_of(t) for t in targets if package_of(t) != package_of(module))
    assert cycles(dict(packages)) == [], {name: sorted(targets) for name, targets in sorted(packages.items())}


def test_every_module_outside_tests_is_at_most_400_lines():
    long = {name: n for name, path in source_modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


#: Cluster mode needs Ray, which a device does not have: the runtime never imports it, and it builds on the
#: runtime and the contract only.
CLUSTER_MAY_IMPORT = {"cluster", "runtime", "contract", "cli_common"}


def test_the_runtime_does_not_import_cluster_mode(graph):
    wrong = sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                   if package_of(module) == "runtime" and package_of(target) == "cluster")
    assert not wrong, "\n".join(wrong)


def test_cluster_mode_builds_on_the_runtime_and_the_contract_only(graph):
    assert any(package_of(module) == "cluster" for module in graph), "no cluster package"
    wrong = sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                   if package_of(module) == "cluster" and package_of(target) not in CLUSTER_MAY_IMPORT)
    assert not wrong, "\n".join(wrong)


#: The runtime's rooms, in the order a frame passes them, and what each may import besides itself: the shared
#: vocabulary (``runtime/frames.py``, ``messages.py``, ``schema.py``) and the rooms named here. The modules
#: at ``runtime/``'s top (the service, its scoring loop, config, publisher, metrics, CLI) tie the rooms together.
RUNTIME_VOCABULARY = {"trustvlm.runtime.frames", "trustvlm.runtime.messages", "trustvlm.runtime.schema"}
RUNTIME_ROOMS = {"decode": set(), "ingest": {"decode"}, "scoring": {"decode"}}


def runtime_room(module: str) -> str | None:
    """``decode`` / ``ingest`` / ``scoring`` for a module of a runtime room; "vocabulary"; None for the top."""
    if module in RUNTIME_VOCABULARY:
        return "vocabulary"
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "runtime" and parts[2] in RUNTIME_ROOMS else None


def room_violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per import of a runtime room that points the wrong way (into another room or the top)."""
    rooms = {module: runtime_room(module) for module in graph if package_of(module) == "runtime"}
    wrong = []
    for module, room in rooms.items():
        if room is None:
            continue
        allowed = {room, "vocabulary"} | RUNTIME_ROOMS.get(room, set())
        wrong += [f"{module} ({room}) imports {target} ({rooms.get(target) or 'the top of runtime/'})"
                  for target in graph[module] if package_of(target) == "runtime" and rooms.get(target) not in allowed]
    return sorted(wrong)


def test_the_runtime_rooms_point_one_way(graph):
    found = {runtime_room(module) for module in graph if package_of(module) == "runtime"}
    assert found == {None, "vocabulary", *RUNTIME_ROOMS}, found
    assert room_violations(graph) == []


def test_the_room_check_finds_arrows_the_wrong_way():
    graph = {"trustvlm.runtime.decode.pool": {"trustvlm.runtime.scoring.scorer", "trustvlm.runtime.frames"},
             "trustvlm.runtime.scoring.scorer": {"trustvlm.runtime.decode.pool", "trustvlm.runtime.service"},
             "trustvlm.runtime.frames": {"trustvlm.runtime.ingest.wire"}, "trustvlm.runtime.ingest.wire": set(),
             "trustvlm.runtime.service": {"trustvlm.runtime.scoring.scorer"}}
    assert room_violations(graph) == [
        "trustvlm.runtime.decode.pool (decode) imports trustvlm.runtime.scoring.scorer (scoring)",
        "trustvlm.runtime.frames (vocabulary) imports trustvlm.runtime.ingest.wire (ingest)",
        "trustvlm.runtime.scoring.scorer (scoring) imports trustvlm.runtime.service (the top of runtime/)"]
