"""Building the stacked graph of many bundles' trust heads and gates (run as a child process of the service).

``python -m trustvlm.runtime.scoring.stack_graph`` reads a job (JSON on stdin: the head and gate files
with the sha256 each bundle recorded, and the output path), verifies every file, joins the graphs
(:func:`stack_graphs`: vectorized where they share one structure, else side by side) and writes the
stacked graph; on stdout, one JSON line says which, and its node count. It runs in a child process
because the ``onnx`` package it needs takes about 16 MiB once imported, which the service would keep for
as long as it runs; ONNX Runtime then opens the written file in the service (:mod:`.stacked_heads`). Exit status 0:
written; 3: the graphs cannot be stacked (one line on stderr says why); anything else: a failure.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from trustvlm.contract.ood_gate import GATE_EMBEDDING_INPUT
from trustvlm.contract.scores import HEAD_INPUT
from trustvlm.runtime.scoring.vectorize_graph import CannotVectorize, vectorize

__all__ = ["head_prefix", "stack_graphs", "main", "CANNOT_STACK"]

#: Exit status of a job whose graphs cannot be stacked (not a failure: the service scores bundle by bundle).
CANNOT_STACK = 3


class CannotStack(ValueError):
    """Graphs that cannot be stacked (one line: why)."""


def head_prefix(index: int, part: str = "head") -> str:
    """The prefix of the `index`-th bundle's head (`part` "head") or gate ("gate") names in the stacked graph."""
    return f"b{index}/{part}/"


def stack_graphs(head_files: list[tuple[str, str]], gate_files: list[tuple[str, str] | None], out: Path) -> dict:
    """Write the stacked graph of these (path, sha256) files to `out`.

    Bundles of one structure (the usual case: the same classes, score and gate) are vectorized
    (:mod:`.vectorize_graph`): one head and one gate whose rows each take their bundle's constants, fed
    ``bundle_index``. Others are joined side by side, each bundle's head and gate over every row.

    Returns:
        ``{"kind": "vectorized" | "side_by_side", "nodes": [stacked graph's, the parts' together], "why": ...}``
        (why the graphs were not vectorized, or "").

    Raises:
        CannotStack: onnx missing, a file changed since it was verified, different opsets, subgraphs.
    """
    try:
        import onnx  # noqa: PLC0415 - build-time package; optional at run time
        from onnx import compose, helper  # noqa: PLC0415
    except ImportError as error:
        raise CannotStack("the onnx package is not installed (pip install onnx)") from error
    read = [_read_verified(item) for item in [*head_files, *gate_files] if item is not None]
    if any(data is None for data in read):
        raise CannotStack("a bundle file changed since it was verified")
    loaded = iter(onnx.load_model_from_string(data) for data in read)
    heads = [next(loaded) for _ in head_files]
    gates = [next(loaded) if item is not None else None for item in gate_files]
    models = heads + [gate for gate in gates if gate is not None]
    opsets = {tuple(sorted((entry.domain, entry.version) for entry in model.opset_import)) for model in models}
    if len(opsets) != 1:
        raise CannotStack(f"the bundles' graphs use different opsets {sorted(opsets)}")
    kind, why = "vectorized", ""
    try:
        if len({gate is None for gate in gates}) != 1:
            raise CannotVectorize("some bundles have a gate, others not")
        heads, gates = [vectorize(heads)], [None if gates[0] is None else vectorize(gates)]
    except CannotVectorize as error:
        kind, why = "side_by_side", str(error)
    inputs, nodes, initializers, outputs, functions = {}, [], [], [], []
    for index, (head, gate) in enumerate(zip(heads, gates)):
        for part, model, shared in (("head", head, {}), ("gate", gate, {GATE_EMBEDDING_INPUT: HEAD_INPUT})):
            if model is None:
                continue
            prefix = head_prefix(index, part)
            model = compose.add_prefix(model, prefix)
            constants = {initializer.name for initializer in model.graph.initializer}
            for graph_input in model.graph.input:
                if graph_input.name in constants:  # an initializer listed as an input (older exporters)
                    continue
                name = graph_input.name[len(prefix):]
                shared_name = shared.get(name, name)
                if shared_name not in inputs:
                    inputs[shared_name] = onnx.ValueInfoProto()
                    inputs[shared_name].CopyFrom(graph_input)
                    inputs[shared_name].name = shared_name
                nodes.append(helper.make_node("Identity", [shared_name], [graph_input.name]))
            nodes.extend(model.graph.node)
            initializers.extend(model.graph.initializer)
            outputs.extend(model.graph.output)
            functions.extend(model.functions)
    if any(attribute.g.node or attribute.graphs for node in nodes for attribute in node.attribute):
        raise CannotStack("a bundle's graph has subgraphs (If, Loop, Scan), which stacking does not merge")
    total = len(nodes)
    nodes, initializers = _share_common_work(nodes, initializers, outputs, helper)
    graph = helper.make_graph(nodes, "stacked_trust_heads", list(inputs.values()), outputs, initializers)
    stacked = helper.make_model(graph, opset_imports=list(models[0].opset_import), functions=functions,
                                ir_version=max(model.ir_version for model in models))
    onnx.save(stacked, str(out))
    return {"kind": kind, "nodes": [len(nodes), total], "why": why}


def _read_verified(item: tuple[str, str]) -> bytes | None:
    """The file's bytes, or None when they no longer have the recorded sha256."""
    path, expected = item
    data = Path(path).read_bytes()
    return data if hashlib.sha256(data).hexdigest() == expected else None


def _share_common_work(nodes: list, initializers: list, outputs: list, helper) -> tuple[list, list]:
    """Nodes and initializers with the work of several bundles done once where it is the same.

    Equal constants (same type, shape and bytes) become one; then a node with the same operator,
    attributes and inputs as an earlier one is dropped and its outputs read from that one's. What
    every bundle computes alike (the gate's frame statistics of the pixels, the normalised embedding)
    is computed once; what differs from the first differing constant on (prototypes, gate means,
    thresholds) stays per bundle. Graph outputs of dropped nodes are kept as Identity of the kept ones.
    """
    from onnx import numpy_helper  # noqa: PLC0415

    alias: dict[str, str] = {}
    kept_initializers, by_content = [], {}
    for initializer in initializers:
        array = numpy_helper.to_array(initializer)
        key = (initializer.data_type, tuple(initializer.dims), array.tobytes())
        if key in by_content:
            alias[initializer.name] = by_content[key]
        else:
            by_content[key] = initializer.name
            kept_initializers.append(initializer)
    kept_nodes, seen = [], {}
    for node in nodes:
        inputs = [alias.get(name, name) for name in node.input]
        attributes = tuple(sorted(attribute.SerializeToString() for attribute in node.attribute))
        key = (node.domain, node.op_type, tuple(inputs), attributes, len(node.output))
        if key in seen:
            alias.update(zip(node.output, seen[key]))
            continue
        seen[key] = list(node.output)
        del node.input[:]
        node.input.extend(inputs)
        kept_nodes.append(node)
    kept_nodes += [helper.make_node("Identity", [alias[output.name]], [output.name])
                   for output in outputs if output.name in alias]
    return kept_nodes, kept_initializers


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        written = stack_graphs([tuple(item) for item in job["heads"]],
                               [tuple(item) if item else None for item in job["gates"]], Path(job["out"]))
    except CannotStack as error:
        print(error, file=sys.stderr)
        return CANNOT_STACK
    print(json.dumps(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
