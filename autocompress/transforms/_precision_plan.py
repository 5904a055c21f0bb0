"""The precision plan: a per-layer precision request spread over every node of the fp32
ONNX graph (:func:`node_precisions`), the single assignment the latency estimator costs and
:func:`~autocompress.transforms._quantize.quantize_onnx` builds."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import onnx

from autocompress.exceptions import SearchSpaceError
from autocompress.hardware.kernels import FREE_OPS, PRECISIONS, Precision
from autocompress.transforms._quantize_graph import _label, _node_layers

__all__ = ["node_precisions"]

#: Ops whose output describes a tensor's shape, not its values: a constant once shapes are known.
_SHAPE_OPS = frozenset({"Shape", "Size"})


def _check_request(layer_precision: Mapping[str, str],
                   layers: Iterable[str]) -> dict[str, Precision]:
    known = set(layers)
    checked: dict[str, Precision] = {}
    for layer, precision in layer_precision.items():
        if precision not in PRECISIONS:
            raise SearchSpaceError(
                f"unknown precision {precision!r} for layer {layer!r}; use one of "
                f"{', '.join(PRECISIONS)}"
            )
        if layer not in known:
            raise SearchSpaceError(
                f"the precision request names layer {layer!r}, which the model does not have; "
                f"its Conv/Linear layers are: {', '.join(sorted(known)[:8])}"
                f"{', ...' if len(known) > 8 else ''}"
            )
        checked[layer] = precision  # type: ignore[assignment]  # checked against PRECISIONS
    return checked


@functools.cache
def _supported_ops() -> tuple[frozenset[str], frozenset[str]]:
    """(ops ORT's quantize_static quantizes, ops convert_float_to_float16 leaves fp32)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry), frozenset(DEFAULT_OP_BLOCK_LIST)


def node_precisions(model: onnx.ModelProto,
                    layer_precision: Mapping[str, str]) -> dict[str, Precision]:
    """The precision of every node of the fp32 graph ``model`` for a per-layer request.

    Keys are node names (``kernels_of``'s fallback ``{op}_{index}`` for unnamed nodes).
    Conv/Gemm/MatMul layers take their layer's precision (fp32 when not named). Free ops
    (Reshape, Flatten, ...) follow their input. Any other node runs at ``p`` when every input
    made by a node is at ``p`` (graph inputs are fp32) and ORT supports the op at ``p``;
    otherwise fp32. Constants count as initializers: whatever a node makes from
    initializers alone (the exporter's ``Constant`` nodes, an ``Identity`` of a shared
    initializer) or from shapes (``Shape`` and the arithmetic on it), which ORT's
    pre-processing folds into initializers (a ReLU6's Clip bounds, ShuffleNet's split
    points); such nodes are fp32 in the plan. Raises :class:`SearchSpaceError` for an
    unknown precision or layer.
    """
    layers = _node_layers(model.graph)
    request = _check_request(layer_precision, layers.values())
    int8_ops, fp16_blocked_ops = _supported_ops()
    tensors: dict[str, Precision] = {i.name: "fp32" for i in model.graph.input}
    initializers = {init.name for init in model.graph.initializer}
    plan: dict[str, Precision] = {}
    for index, node in enumerate(model.graph.node):
        key = _label(node, index)
        if key not in layers and (node.op_type in _SHAPE_OPS or all(
                t in initializers for t in node.input if t)):
            plan[key] = "fp32"       # a constant: like an initializer, no precision of its own
            initializers.update(node.output)
            continue
        if key in layers:
            precision: Precision = request.get(layers[key], "fp32")
        elif node.op_type in FREE_OPS:
            precision = tensors.get(node.input[0], "fp32") if node.input else "fp32"
        else:
            found = {tensors[t] for t in node.input if t in tensors and t not in initializers}
            precision = found.pop() if len(found) == 1 else "fp32"
            if (precision == "int8" and node.op_type not in int8_ops) or (
                    precision == "fp16" and node.op_type in fp16_blocked_ops):
                precision = "fp32"
        plan[key] = precision
        for out in node.output:
            tensors[out] = precision
    return plan
