"""One graph for many bundles of the same shape: each row computed with its own bundle's constants.

Bundles calibrated by the same code on the same classes have trust heads (and gates) of one
structure: the same nodes in the same order, the same initializer names and shapes; only some
initializers' values differ (the prototypes, lambda, the fused score's coefficients, the gate's
means and whitening). :func:`vectorize` turns K such graphs into one that takes a ``bundle_index``
per row: every differing initializer ``P`` becomes a ``[K, *shape]`` stack and a ``Gather`` of each
row's own ``[N, *shape]``, and the nodes that read it are rewritten so that row ``i`` is computed with
bundle ``index[i]``'s values:

* elementwise operators (``Add``, ``Sub``, ``Mul``, ``Div``, ...) broadcast the gathered values, with
  axes of length 1 inserted after the row axis to match the other operand's rank;
* ``MatMul(X, P)`` becomes a batched ``MatMul`` of ``X[N, 1, D]`` and ``P[N, D, C]`` (or, for a vector
  ``P``, a row-wise dot product), ``Gemm(X, P)`` likewise (``transB`` as a transpose; no ``alpha``, ``beta`` or ``C``).

Any other use of a differing initializer, or graphs that do not share one structure, raise
:class:`CannotVectorize`: the caller then joins the graphs side by side instead
(:mod:`.stack_graph`). The cost of a batch is then one head's, whatever the number of bundles.
Imported only by :mod:`.stack_graph`, in its own process (it needs the ``onnx`` package).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BUNDLE_INDEX_INPUT", "CannotVectorize", "vectorize"]

#: The vectorized graph's extra input: int64 ``[N]``, each row's bundle (its position in the list given).
BUNDLE_INDEX_INPUT = "bundle_index"

_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Equal", "Greater", "Less",
                          "GreaterOrEqual", "LessOrEqual", "And", "Or"})


class CannotVectorize(ValueError):
    """Graphs that cannot share one vectorized graph (one line: why)."""


def _structure(model) -> tuple:
    graph = model.graph
    nodes = tuple((n.op_type, n.domain, tuple(n.input), tuple(n.output),
                   tuple(sorted(a.SerializeToString() for a in n.attribute))) for n in graph.node)
    constants = tuple((i.name, i.data_type, tuple(i.dims)) for i in graph.initializer)
    return (nodes, constants, tuple(i.name for i in graph.input), tuple(o.name for o in graph.output),
            tuple((o.domain, o.version) for o in model.opset_import))


def vectorize(models: list):
    """One model computing each row with its own bundle's constants (see the module docstring).

    Raises:
        CannotVectorize: Graphs of different structures, or a differing constant used where rows cannot
            each take their own.
    """
    import onnx  # noqa: PLC0415
    from onnx import helper, numpy_helper, shape_inference  # noqa: PLC0415

    first = models[0]
    if any(_structure(model) != _structure(first) for model in models[1:]):
        raise CannotVectorize("the bundles' graphs differ in structure (other classes, scores or gate components)")
    if any(a.g.node or a.graphs for n in first.graph.node for a in n.attribute):
        raise CannotVectorize("a graph with subgraphs")
    values = [{i.name: numpy_helper.to_array(i) for i in model.graph.initializer} for model in models]
    varying = {name for name in values[0]
               if any(not np.array_equal(v[name], values[0][name], equal_nan=True) for v in values[1:])}
    ranks = _ranks(shape_inference.infer_shapes(first))
    nodes, extra = [], []
    rows = {}  # varying initializer -> the name of its gathered [N, *shape] rows
    for name in sorted(varying):
        stack = np.stack([v[name] for v in values])
        extra.append(numpy_helper.from_array(stack, f"{name}/stack"))
        rows[name] = f"{name}/rows"
        nodes.append(helper.make_node("Gather", [f"{name}/stack", BUNDLE_INDEX_INPUT], [rows[name]], axis=0))
    counter = iter(range(1 << 30))

    def axes(*values_: int) -> str:
        name = f"vectorize/axes{next(counter)}"
        extra.append(numpy_helper.from_array(np.asarray(values_, np.int64), name))
        return name

    for node in first.graph.node:
        used = [i for i, name in enumerate(node.input) if name in varying]
        if not used:
            nodes.append(node)
            continue
        nodes.extend(_rewrite(node, used, rows, ranks, values[0], axes, helper))
    graph = first.graph
    inputs = list(graph.input) + [helper.make_tensor_value_info(BUNDLE_INDEX_INPUT, onnx.TensorProto.INT64, ["N"])]
    kept = [i for i in graph.initializer if i.name not in varying]
    out = helper.make_graph(nodes, graph.name, [i for i in inputs if i.name not in varying], list(graph.output),
                            kept + extra)
    return helper.make_model(out, opset_imports=list(first.opset_import), ir_version=first.ir_version)


def _ranks(model) -> dict[str, int]:
    ranks = {}
    for info in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    ranks.update({i.name: len(i.dims) for i in model.graph.initializer})
    return ranks


def _rewrite(node, used: list[int], rows: dict, ranks: dict, constants: dict, axes, helper) -> list:
    """The nodes that compute `node` with each row's own values of its differing inputs (positions `used`)."""
    op, out = node.op_type, node.output[0]
    if op in _ELEMENTWISE and len(used) == 1 and len(node.input) == 2:
        position = used[0]
        param, other = node.input[position], node.input[1 - position]
        missing = ranks.get(other, -1) - 1 - len(constants[param].shape)
        if other not in ranks or missing < 0:
            raise CannotVectorize(f"{op} of {param!r} with an operand of unknown or lower rank")
        shaped = rows[param]
        prefix = []
        if missing:
            shaped = f"{rows[param]}/as_{out}"
            prefix = [helper.make_node("Unsqueeze", [rows[param], axes(*range(1, 1 + missing))], [shaped])]
        inputs = list(node.input)
        inputs[position] = shaped
        return prefix + [helper.make_node(op, inputs, list(node.output), name=node.name)]
    if op in ("MatMul", "Gemm") and used == [1] and len(node.input) == 2 and ranks.get(node.input[0]) == 2:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("transA", 0) or float(attributes.get("alpha", 1.0)) != 1.0:
            raise CannotVectorize("Gemm with transA or alpha")
        param, x = node.input[1], node.input[0]
        if len(constants[param].shape) == 1 and op == "MatMul":  # X[N, D] @ p[D] -> [N]
            product = f"{out}/product"
            return [helper.make_node("Mul", [x, rows[param]], [product]),
                    helper.make_node("ReduceSum", [product, axes(-1)], list(node.output), keepdims=0)]
        if len(constants[param].shape) != 2:
            raise CannotVectorize(f"{op} with a constant of rank {len(constants[param].shape)}")
        matrix = rows[param]
        made = []
        if attributes.get("transB", 0):
            matrix = f"{out}/transposed"
            made.append(helper.make_node("Transpose", [rows[param]], [matrix], perm=[0, 2, 1]))
        return made + [helper.make_node("Unsqueeze", [x, axes(1)], [f"{out}/x3"]),
                       helper.make_node("MatMul", [f"{out}/x3", matrix], [f"{out}/y3"]),
                       helper.make_node("Squeeze", [f"{out}/y3", axes(1)], [out])]
    raise CannotVectorize(f"{op} reads a constant that differs between bundles ({[node.input[i] for i in used]})")
