"""fp16 layers of a mixed-precision export: ONNX Runtime's ``convert_float_to_float16``
with fp32 inputs and outputs, without needless fp32 round trips."""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from autocompress.exceptions import ExportError
from autocompress.hardware.kernels import Precision
from autocompress.hardware.quantization import quiet_onnxruntime_logging
from autocompress.transforms._quantize_graph import _producers, _remove_dead_nodes

__all__: list[str] = []


def _drop_cast_round_trips(model: onnx.ModelProto, blocked: set[str]) -> None:
    """convert_float_to_float16 casts every output of a blocked (fp32) node to fp16 and back
    before the next blocked node: fp32 tensors lose precision and cost two Casts. Reconnect
    the fp32 tensor where both ends are fp32."""
    graph = model.graph
    producers = _producers(graph)
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    fp32_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == float32}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Cast" or _cast_to(node) != float32:
            continue
        first = producers.get(node.input[0])
        if first is None or first.op_type != "Cast" or _cast_to(first) != float16:
            continue
        source = first.input[0]
        origin = producers.get(source)
        is_fp32 = source in fp32_inputs or (origin is not None and origin.name in blocked
                                            and origin.op_type != "Cast")
        if not is_fp32:
            continue
        if node.output[0] in outputs:
            node.op_type, node.input[0] = "Identity", source  # keep the output's name
            del node.attribute[:]
        else:
            rename[node.output[0]] = source
    for node in graph.node:
        for slot, name in enumerate(node.input):
            node.input[slot] = rename.get(name, name)
    _remove_dead_nodes(graph)


def _cast_to(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "to"), -1)


def _convert_fp16(model: onnx.ModelProto, plan: Mapping[str, Precision]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    blocked = {node.name for node in model.graph.node if plan.get(node.name) != "fp16"}
    try:
        with quiet_onnxruntime_logging():
            converted = convert_float_to_float16(model, keep_io_types=True,
                                                 node_block_list=sorted(blocked))
    except Exception as exc:
        raise ExportError(f"ONNX Runtime's fp16 conversion failed ({type(exc).__name__}: "
                          f"{exc}); request fp32 for the fp16 layers") from exc
    _drop_cast_round_trips(converted, blocked)
    return converted


