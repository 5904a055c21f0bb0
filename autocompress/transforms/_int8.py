"""int8 layers of a mixed-precision export: ONNX Runtime's static QDQ quantization (the one
routine profiling uses too), then the graph fixed so that every node runs at its planned
precision."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx

from autocompress.exceptions import DataError, ExportError
from autocompress.hardware.kernels import FREE_OPS, Precision
from autocompress.hardware.quantization import quantize_static_int8
from autocompress.transforms._precision_plan import _supported_ops
from autocompress.transforms._quantize_graph import (
    _COPY_MARK,
    _check_samples,
    _consumers,
    _input_dims,
    _node_layers,
    _producers,
    _remove_dead_nodes,
)

__all__: list[str] = []

# Activations ORT's QDQ quantizer may remove (their range is folded into the producer's Q).
_REMOVABLE_ACTIVATIONS = {"Relu", "Clip"}
# 7-bit weights: x86 CPUs without VNNI (AVX2) multiply u8 x s8 pairs into int16 and
# saturate with full-range int8 weights (TinyNet on digits, per channel: 94% -> 74%).
_WEIGHT_QMAX = {True: 64, False: 127}  # reduce_range -> symmetric int8 weight range
_CALIBRATION_BATCH = 32  # samples per calibration run when the graph's batch is dynamic


def _unshare_weights(model: onnx.ModelProto, plan: Mapping[str, Precision]) -> None:
    """Give each non-fp32 node its own copy of initializers it shares with other nodes: ORT
    rewrites a quantized or fp16 initializer for every node that reads it."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input) & initializers.keys():
            readers[name] = readers.get(name, 0) + 1
    for node in graph.node:
        if plan.get(node.name, "fp32") == "fp32":
            continue
        for slot, name in enumerate(node.input):
            if readers.get(name, 0) > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}{_COPY_MARK}{node.name}"
                graph.initializer.append(copy)
                node.input[slot] = copy.name
                readers[name] -= 1


def _keep_float_inputs(model: onnx.ModelProto, plan: Mapping[str, Precision]) -> None:
    """Feed non-int8 nodes the float tensor, not its Q/DQ copy, where the producer is not
    int8. ORT shares a Q/DQ pair between all consumers; an excluded node whose inputs all
    come from DequantizeLinear and whose output meets a Q would be fused into QLinear*."""
    graph = model.graph
    producers = _producers(graph)
    for node in graph.node:
        if node.name not in plan or plan[node.name] == "int8":
            continue
        for slot, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue  # a weight's DequantizeLinear
            source = producers.get(q.input[0])
            if source is None or plan.get(source.name, "fp32") != "int8":
                node.input[slot] = q.input[0]
    _remove_dead_nodes(graph)


def _dequantize_per_axis_into_float_layers(model: onnx.ModelProto,
                                           plan: Mapping[str, Precision]) -> None:
    """Feed each non-int8 layer that reads an int8 tensor through its own DequantizeLinear
    whose scale is the same value repeated along a channel axis.

    At session creation ORT's ``WeightBiasQuantization`` optimizer quantizes the float weight
    of a Conv/Gemm whose input comes from a per-tensor DequantizeLinear (per-tensor int8), and
    the QDQ fusion then turns it into QLinearConv when a Q follows: the fp32 layer would run
    in int8. A per-axis DequantizeLinear gives the same values but does not match.
    """
    graph = model.graph
    shapes = {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
              for info in onnx.shape_inference.infer_shapes(model).graph.value_info}
    producers = _producers(graph)
    initializers = {init.name: init for init in graph.initializer}
    layers = _node_layers(graph)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        dq = producers.get(node.input[0]) if node.input else None
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" \
            else None
        if (node.name in layers and plan.get(node.name) != "int8" and q is not None
                and q.op_type == "QuantizeLinear" and len(dq.input) == 3):
            shape = shapes.get(node.input[0], [])
            axis = next((a for a in (1, *range(len(shape))) if a < len(shape) and shape[a] > 1),
                        None)
            if axis is None:
                raise ExportError(f"cannot keep layer {layers[node.name]} at "
                                  f"{plan.get(node.name)} next to int8 layers (its input's "
                                  "shape is unknown); request int8 or fp32 around it")
            prefix = f"{node.name}/input"
            for suffix, source in (("_scale", dq.input[1]), ("_zero_point", dq.input[2])):
                value = onnx.numpy_helper.to_array(initializers[source]).reshape(-1)[:1]
                graph.initializer.append(onnx.numpy_helper.from_array(
                    np.repeat(value, shape[axis]), prefix + suffix))
            nodes.append(onnx.helper.make_node(
                "DequantizeLinear", [dq.input[0], prefix + "_scale", prefix + "_zero_point"],
                [prefix + "_dequantized"], name=prefix + "_DequantizeLinear", axis=axis))
            node.input[0] = prefix + "_dequantized"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _remove_dead_nodes(graph)


def _check_int8_plan(model: onnx.ModelProto, plan: Mapping[str, Precision],
                     op_types: Mapping[str, str]) -> None:
    """int8 nodes read only DequantizeLinear outputs (or were removed: an activation whose
    range ORT folds into the producer's Q); no other node can be fused by ORT into int8."""
    int8_ops, _ = _supported_ops()
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    producers, consumers = _producers(graph), _consumers(graph)
    layers = _node_layers(graph)
    present = {node.name: node for node in graph.node}
    for name, precision in plan.items():
        node = present.get(name)
        if node is None:
            removable = _REMOVABLE_ACTIVATIONS | FREE_OPS
            if precision == "int8" and op_types[name] not in removable:
                raise ExportError(f"ONNX Runtime's quantizer removed node {name} "
                                  f"({op_types[name]}); request fp32 for the layers around it")
            continue
        if node.op_type in FREE_OPS or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        activations = [t for t in node.input if t and t not in initializers]
        from_dq = [producers.get(t) is not None and producers[t].op_type == "DequantizeLinear"
                   for t in activations]
        if precision == "int8" and not all(from_dq):
            raise ExportError(f"node {name} ({node.op_type}) should run in int8 but ONNX Runtime "
                              "did not quantize all its inputs; request fp32 for its layer")
        into_q = all(c.op_type == "QuantizeLinear"
                     for out in node.output for c in consumers.get(out, []))
        if (precision != "int8" and name not in layers and node.op_type in int8_ops
                and activations and all(from_dq) and into_q):
            raise ExportError(f"node {name} ({node.op_type}) should run in {precision} but sits "
                              "between Q/DQ pairs that ONNX Runtime would fuse into int8")


def _calibration_batches(name: str, x: np.ndarray, batch: int
                         ) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of ``batch`` samples of ``x`` (a short last batch is dropped: a graph with a
    fixed batch size takes no other)."""
    for start in range(0, len(x) - batch + 1, batch):
        yield {name: x[start:start + batch]}


def _quantize_int8(model: onnx.ModelProto, plan: Mapping[str, Precision],
                   calibration: np.ndarray, per_channel: bool, reduce_range: bool
                   ) -> onnx.ModelProto:
    """``model`` with the int8 nodes of ``plan`` quantized by the one int8 routine of
    autocompress (:func:`~autocompress.hardware.quantization.quantize_static_int8`, which
    profiling uses too), then checked against the plan."""
    name, dims = _input_dims(model)
    x = _check_samples(calibration, dims, "the calibration data")
    batch = dims[0] or min(_CALIBRATION_BATCH, len(x))
    if len(x) < batch:
        raise DataError(f"the model's batch size is {batch} but only {len(x)} calibration "
                        f"samples were given; pass at least {batch}")
    exclude = [node for node, precision in plan.items() if precision != "int8"]
    try:
        quantized = quantize_static_int8(model, _calibration_batches(name, x, batch),
                                         nodes_to_exclude=exclude, per_channel=per_channel,
                                         reduce_range=reduce_range)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime's int8 quantization failed ({type(exc).__name__}: "
                          f"{exc}); request fp32 or fp16 for the layers that fail") from exc
    _keep_float_inputs(quantized, plan)
    _dequantize_per_axis_into_float_layers(quantized, plan)
    _check_int8_plan(quantized, plan, {node.name: node.op_type for node in model.graph.node})
    return quantized
