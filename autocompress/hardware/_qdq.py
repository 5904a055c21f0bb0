"""int8 (QDQ) and fp16 versions of fp32 ONNX graphs, in the form deployed models have, and
back: the fp32 structure and node precisions of a QDQ model, to estimate it.

The profiler measures a kernel in a precision on the graph a deployment would run, so the
conversion is the one autocompress uses for models: for int8,
:func:`~autocompress.hardware.quantization.quantize_static_int8` (ONNX Runtime's
``quantize_static``, QDQ format, per-channel 7-bit int8 weights, uint8 activations), and ONNX
Runtime's ``convert_float_to_float16`` with float inputs and outputs. Both only rewrite the
graph: their output is standard ONNX that any backend can load, which is why this converter
lives beside the kernels and not under ``backends/``. They are imported lazily so that
``import autocompress.hardware`` stays light and fp32 profiling does not load them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from autocompress.exceptions import ExportError, MissingDependencyError
from autocompress.hardware.quantization import quantize_static_int8

__all__ = ["is_qdq", "quantize_qdq", "split_qdq", "to_fp16"]

_logger = logging.getLogger(__name__)

_CALIBRATION_BATCHES = 2


def _float_inputs(model: onnx.ModelProto) -> list[tuple[str, list[int]]]:
    constants = {init.name for init in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        tensor = value.type.tensor_type
        if value.name in constants or tensor.elem_type != onnx.TensorProto.FLOAT:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim]
        inputs.append((value.name, dims))
    return inputs


def quantize_qdq(model: onnx.ModelProto | bytes, *, nodes_to_exclude: Sequence[str] = (),
                 seed: int = 0, calibration: Sequence[dict[str, np.ndarray]] | None = None
                 ) -> bytes:
    """``model`` quantized to int8 in QDQ format exactly as models are for deployment
    (:func:`~autocompress.hardware.quantization.quantize_static_int8`), calibrated on
    ``calibration`` batches (default: two batches of standard normal inputs from ``seed``).

    Nodes named in ``nodes_to_exclude`` stay fp32. Operators whose input is not quantized
    (a max pool reading the graph input) are quantized anyway, so that a one-operator graph
    runs the operator in int8 as it would inside an int8 model.
    """
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else model
    if calibration is None:
        rng = np.random.default_rng(seed)
        calibration = [{name: rng.standard_normal(shape).astype(np.float32)
                        for name, shape in _float_inputs(proto)}
                       for _ in range(_CALIBRATION_BATCHES)]
    quantized = quantize_static_int8(proto, calibration, nodes_to_exclude=nodes_to_exclude,
                                     quantize_latent_ops=True)
    return quantized.SerializeToString()


def to_fp16(model: onnx.ModelProto | bytes, *, nodes_to_exclude: Sequence[str] = ()
            ) -> bytes:
    """``model`` with float16 weights and computation, and float32 inputs and outputs (a Cast
    at each end), as ``onnxruntime.transformers.float16`` converts models for GPUs; nodes
    named in ``nodes_to_exclude`` stay fp32."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
        raise MissingDependencyError(
            "fp16 graphs are built with ONNX Runtime's float16 converter: pip install "
            "onnxruntime") from exc
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.ModelProto()
    if not isinstance(model, bytes):
        proto.CopyFrom(model)
    converted = convert_float_to_float16(proto, keep_io_types=True,
                                         node_block_list=list(nodes_to_exclude) or None)
    _sort_topologically(converted.graph)  # the converter appends its input Casts last
    return converted.SerializeToString()


def _sort_topologically(graph: onnx.GraphProto) -> None:
    available = {init.name for init in graph.initializer} | {v.name for v in graph.input}
    available.add("")
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:  # a cycle or a dangling input: leave the order to the runtime
            return
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


_QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QGemm",
                  "ConvInteger", "MatMulInteger", "QLinearGlobalAveragePool"}


def is_qdq(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds QuantizeLinear/DequantizeLinear nodes (a quantized graph)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def split_qdq(model: onnx.ModelProto | bytes) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The fp32 graph of a QDQ model, and the precision of its nodes that ran in int8.

    Quantized weights become float weights of the same shape (zeros: only shapes matter for
    latency), each activation QuantizeLinear -> DequantizeLinear pair is removed, and a node
    whose activation input arrives dequantized and whose output is quantized again (maybe
    through a ReLU) is int8, as the QDQ form means and ONNX Runtime runs it.
    Unnamed nodes get the ``{op}_{index}`` name :func:`~autocompress.hardware.kernels.
    kernels_of` would give them. Raises :class:`ExportError` for QOperator graphs
    (QLinearConv...), whose structure is not that of the fp32 model.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(onnx.load_from_string(model) if isinstance(model, bytes) else model)
    graph = proto.graph
    operators = sorted({n.op_type for n in graph.node} & _QOPERATOR_OPS)
    if operators:
        raise ExportError(
            f"the model holds QOperator-format nodes ({', '.join(operators)}); estimate the "
            "fp32 model with a precision per node, or quantize with QuantFormat.QDQ")
    weights = {init.name: init for init in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    source: dict[str, str] = {}  # a dequantized tensor -> the float tensor it stands for
    dequantized: set[str] = set()
    new_weights: list[onnx.TensorProto] = []
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            dims = list(weights[node.input[0]].dims)
            new_weights.append(numpy_helper.from_array(np.zeros(dims, np.float32),
                                                       node.output[0]))
            dropped.add(id(node))
        elif node.op_type == "DequantizeLinear":
            quantize = producer.get(node.input[0])
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                source[node.output[0]] = quantize.input[0]
                dequantized.add(node.output[0])
                dropped.update((id(node), id(quantize)))

    def resolve(name: str) -> str:
        while name in source:
            name = source[name]
        return name

    # a tensor is quantized if a QuantizeLinear reads it, directly or through a ReLU/Clip
    # (which the quantization range absorbs): then its producer runs quantized, as the QDQ
    # form means, even where the quantizer was told to exclude it (ONNX Runtime then
    # quantizes its float weights itself)
    quantized_outputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    quantized_outputs |= {n.input[0] for n in graph.node if n.op_type in ("Relu", "Clip")
                          and n.output[0] in quantized_outputs
                          and len(readers.get(n.input[0], [])) == 1}
    precisions: dict[str, str] = {}
    kept = [n for n in graph.node if id(n) not in dropped]
    for index, node in enumerate(kept):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
        if (any(name in dequantized for name in node.input)
                and any(name in quantized_outputs for name in node.output)):
            precisions[node.name] = "int8"
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
    outputs = {o.name: o for o in graph.output}
    for name in list(outputs):
        if resolve(name) != name:
            outputs[name].name = resolve(name)
    used = {name for n in kept for name in n.input}
    remaining = [w for w in graph.initializer if w.name in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend([*remaining, *(w for w in new_weights if w.name in used)])
    del graph.value_info[:]
    return proto, precisions
