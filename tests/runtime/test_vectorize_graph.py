"""Vectorizing bundles' graphs of one structure: each row computed with its own bundle's constants, or refused."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trustvlm.runtime.scoring.vectorize_graph import BUNDLE_INDEX_INPUT, CannotVectorize, vectorize


def tiny_head(scale: float, matrix: np.ndarray, bias: np.ndarray, vector: np.ndarray, k: int = 2):
    """x[N, 3] -> y = (x @ matrix.T) * scale + bias (Gemm transB, scalar and row broadcasts), z = x @ vector,
    top = TopK(y, k): the kinds of use a trust head makes of its constants."""
    constants = [numpy_helper.from_array(np.float32(scale), "scale"),
                 numpy_helper.from_array(matrix.astype(np.float32), "matrix"),
                 numpy_helper.from_array(bias.astype(np.float32), "bias"),
                 numpy_helper.from_array(vector.astype(np.float32), "vector"),
                 numpy_helper.from_array(np.asarray([k], np.int64), "k")]
    nodes = [helper.make_node("Gemm", ["x", "matrix"], ["xm"], transB=1),
             helper.make_node("Mul", ["xm", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "bias"], ["y"]),
             helper.make_node("MatMul", ["x", "vector"], ["z"]),
             helper.make_node("TopK", ["y", "k"], ["top", "top_ids"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y", "z")]
                              + [helper.make_tensor_value_info("top", TensorProto.FLOAT, None)], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run(model, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_each_row_gets_what_its_own_bundles_graph_gives_it():
    rng = np.random.default_rng(0)
    models = [tiny_head(float(rng.uniform(0.5, 2)), rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=3))
              for _ in range(3)]
    x = rng.normal(size=(7, 3)).astype(np.float32)
    route = np.array([2, 0, 1, 1, 2, 0, 2], np.int64)
    together = run(vectorize(models), {"x": x, BUNDLE_INDEX_INPUT: route})
    for row, bundle in enumerate(route):
        alone = run(models[bundle], {"x": x[row:row + 1]})
        for mine, reference in zip(together, alone):
            np.testing.assert_allclose(mine[row], reference[0], rtol=1e-5, atol=1e-6)


def test_graphs_of_other_structures_or_constants_used_per_bundle_elsewhere_are_refused():
    rng = np.random.default_rng(1)
    same = (rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=3))
    with pytest.raises(CannotVectorize, match="TopK reads a constant that differs"):
        vectorize([tiny_head(1.0, *same, k=2), tiny_head(1.0, *same, k=3)])
    with pytest.raises(CannotVectorize, match="differ in structure"):
        vectorize([tiny_head(1.0, *same), tiny_head(1.0, rng.normal(size=(5, 3)), rng.normal(size=5), same[2])])
