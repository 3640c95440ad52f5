"""Static check of an exported ONNX graph against TensorRT's documented ONNX parser limits.

The tests run engines on a fake TensorRT (ONNX Runtime on the CPU), which accepts graphs that the
real parser refuses. This module reads the graph itself and reports what TensorRT 10's ONNX parser
(onnx-tensorrt, ``docs/operators.md`` of the 10.x releases) documents as unsupported, for the
parts that matter to our encoders:

* tensor types: UINT8 "is only supported as network input or output tensor types", so a uint8
  tensor may be a graph input (consumed only by Cast nodes) or output, never an intermediate one;
  DOUBLE is only cast down, string and other types not at all;
* operators: each node's op must be in the parser's support matrix (default ONNX domain);
* opset: the parser takes opsets 9 to 20.

It is a necessary check, not a sufficient one (per-op type and attribute restrictions are not all
modelled); the engine build on a GPU remains the real test.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

#: Operators that the TensorRT 10 ONNX parser supports ("Y" in onnx-tensorrt's docs/operators.md).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot
Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
""".split())

#: Types TensorRT takes for any tensor (INT8/FP8/INT4 only through quantization, which we do not use here).
INTERMEDIATE_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32,
                                TensorProto.INT64, TensorProto.BOOL})
#: Types TensorRT takes only as a network input or output.
IO_ONLY_TYPES = frozenset({TensorProto.UINT8})
OPSET_RANGE = (9, 20)


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (inputs, initializers, node outputs), after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """What TensorRT's ONNX parser would refuse in `model`, one line each (empty: nothing found)."""
    graph = model.graph
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset} is outside TensorRT's {OPSET_RANGE[0]}..{OPSET_RANGE[1]}")
    for op in sorted({(n.domain, n.op_type) for n in graph.node
                      if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS}):
        problems.append(f"operator {op[0] + '::' if op[0] else ''}{op[1]} is not supported by TensorRT's ONNX parser")
    types = tensor_types(model)
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    for name in inputs | outputs:
        elem = types.get(name)
        if elem not in INTERMEDIATE_TYPES | IO_ONLY_TYPES:
            problems.append(f"graph input/output '{name}' has type {_type_name(elem or 0)}, which TensorRT does not take")
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for name in sorted(inputs):
        if types.get(name) in IO_ONLY_TYPES:
            wrong = sorted({n.op_type for n in consumers.get(name, []) if n.op_type != "Cast"})
            if wrong:
                problems.append(f"{_type_name(types[name])} input '{name}' feeds {', '.join(wrong)}: TensorRT takes "
                                f"{_type_name(types[name])} only into a Cast")
    produced = [(name, node) for node in graph.node for name in node.output if name]
    for name, node in produced + [(init.name, None) for init in graph.initializer]:
        if name in outputs or name in inputs:
            continue
        elem = types.get(name)
        where = f"output of {node.op_type} '{node.name}'" if node is not None else "initializer"
        if elem is None:
            problems.append(f"tensor '{name}' ({where}) has no inferred type; TensorRT needs every type known")
        elif elem not in INTERMEDIATE_TYPES:
            problems.append(f"intermediate tensor '{name}' ({where}) is {_type_name(elem)}; TensorRT takes "
                            f"{'it only as a network input or output' if elem in IO_ONLY_TYPES else 'no such type'}")
    return problems


def graph_precision(model: onnx.ModelProto) -> str:
    """'fp16' when any tensor of the graph is FLOAT16, else 'fp32' (what a strongly typed engine of it computes in)."""
    return "fp16" if TensorProto.FLOAT16 in tensor_types(model).values() else "fp32"


def check_for_tensorrt(path: str | Path) -> list[str]:
    """:func:`tensorrt_problems` of the ONNX file at `path` (weights loaded, external data included)."""
    return tensorrt_problems(onnx.load(str(path)))
