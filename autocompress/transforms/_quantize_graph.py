"""ONNX graph helpers of mixed-precision export: map graph nodes to torch layers, check
inputs and samples, prune dead nodes."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import numpy as np
import onnx

from autocompress.exceptions import DataError, ExportError

__all__ = ["onnx_layer_nodes"]

_logger = logging.getLogger(__name__)

# Operators that carry a layer's weight, and the input that holds it.
_WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1, "MatMulInteger": 1,
                 "QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3}
_INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QGemm", "QLinearMatMul"}
# Looked through when tracing a weight input back to its initializer.
_WEIGHT_PATH_OPS = {"DequantizeLinear", "Identity", "Transpose"}
# onnxruntime.quantization.quant_utils.TENSOR_NAME_QUANT_SUFFIX (a test checks they agree).
_QUANT_SUFFIX = "_quantized"
_COPY_MARK = "::copy_for::"  # names the private copy of a shared initializer
# ONNX Runtime's optimizer names a weight it rewrote after the fusion and the original:
# ``ConvMulFusion_W_stages.0.blocks.0.mlp.fc2.weight`` (a layer scale folded into a Conv)
_FUSED_WEIGHT = re.compile(r"^(?:[A-Za-z]+Fusion_[A-Za-z]+_)+")


def _label(node: onnx.NodeProto, index: int) -> str:
    """The node's key: its name, or the fallback ``kernels_of`` uses for unnamed nodes."""
    return node.name or f"{node.op_type}_{index}"


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _weight_source(tensor: str, producers: Mapping[str, onnx.NodeProto],
                   initializers: Mapping[str, onnx.TensorProto]) -> str | None:
    """The initializer a weight input comes from (through DequantizeLinear, Identity,
    Transpose), or ``None`` for an activation."""
    for _ in range(8):
        if tensor in initializers:
            return tensor
        node = producers.get(tensor)
        if node is None or node.op_type not in _WEIGHT_PATH_OPS or not node.input:
            return None
        tensor = node.input[0]
    return None


def _layer_from_weight(initializer: str) -> str | None:
    name = _FUSED_WEIGHT.sub("", initializer.removesuffix(_QUANT_SUFFIX).split(_COPY_MARK)[0])
    if name.endswith(".weight") and not name.startswith("onnx::"):
        return name.removesuffix(".weight")
    return None


def _layer_from_scope(node_name: str) -> str | None:
    """TorchScript names nodes ``/layer1/layer1.0/conv1/Conv``: one scope per module call,
    each the module's name from its last non-numeric atom on (``layer1.0``, ``conv1``), so
    each scope adds to its caller's what does not repeat it. A ``torch.fx.GraphModule`` (a
    block depth dropped a branch of) calls nested layers itself: ``/features.3.1/mlp.0/``
    is ``features.3.1.mlp.0``, but a layer called past a numbered level (``attn.1.qkv``)
    shows only its last atoms; Linear weights carry their layer's name for that reason
    (:func:`~autocompress.hardware.export.export_onnx`). A node ONNX Runtime's optimizer
    fused keeps the first node's name with the fusion's after it
    (``/block/block.3/MatMul/MatMulAddFusion``: a Linear on 3-d inputs made a Gemm): the
    scopes end before the fused op's name."""
    if not node_name.startswith("/"):
        return None
    segments = node_name.split("/")[1:]
    fused = next((i for i, segment in enumerate(segments) if "Fusion" in segment), None)
    if fused is not None:
        segments = segments[:fused]
    atoms, previous = [], ""
    for scope in segments[:-1]:
        atoms.append(scope.removeprefix(f"{previous}.") if previous else scope)
        previous = scope
    return ".".join(atoms) or None


def _layer_from_namespace(node: onnx.NodeProto) -> str | None:
    """The dynamo exporter's ``namespace``: ``": Net/layer1: Sequential/layer1.0.conv1: Conv2d
    /conv2d: aten.conv2d"``; the last entry is the operator, the one before it the module."""
    for prop in node.metadata_props:
        if prop.key == "namespace":
            modules = [entry.split(": ")[0] for entry in prop.value.split("/")[:-1]]
            named = [m for m in modules if m]
            return named[-1] if named else None
    return None


def _node_layers(graph: onnx.GraphProto) -> dict[str, str]:
    """Node key -> torch layer for every node that carries a layer's weight. The weight's
    own name (dynamo: ``layer1.0.conv1.weight``) wins: dynamo names a Conv with a folded
    BatchNorm after the BatchNorm module."""
    initializers = {init.name: init for init in graph.initializer}
    producers = _producers(graph)
    layers: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        slot = _WEIGHT_INPUT.get(node.op_type)
        if slot is None or len(node.input) <= slot:
            continue
        weight = _weight_source(node.input[slot], producers, initializers)
        if weight is None:
            continue  # activation x activation: not a layer
        layer = (_layer_from_weight(weight) or _layer_from_scope(node.name)
                 or _layer_from_namespace(node))
        if layer:
            layers[_label(node, index)] = layer
    return layers


def onnx_layer_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Torch module name (``layer1.0.conv1``, ``fc``) -> name of its Conv / Gemm / MatMul node
    in a graph from :func:`autocompress.hardware.export.export_onnx` (either exporter)."""
    found: dict[str, str] = {}
    for node_name, layer in _node_layers(model.graph).items():
        if layer in found:
            _logger.debug("layer %s runs in several nodes; %s is its first", layer, found[layer])
            continue
        found[layer] = node_name
    return found


def _load(model_bytes: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(model_bytes)
    except Exception as exc:
        raise ExportError(f"the bytes given are not an ONNX model ({exc}); pass the output "
                          "of autocompress.hardware.export.export_onnx") from exc


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes the key node_precisions uses; node names must be unique."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        node.name = _label(node, index)
        if node.name in seen:
            raise ExportError(f"two nodes of the ONNX graph are named {node.name!r}; "
                              "node names must be unique (export with export_onnx)")
        seen.add(node.name)


def _input_dims(model: onnx.ModelProto) -> tuple[str, list[int | None]]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f"the model has {len(inputs)} inputs; quantization and accuracy "
                          "support models with exactly one input")
    dims = [d.dim_value if d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def _check_samples(x: np.ndarray, dims: list[int | None], what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    fits = x.ndim == len(dims) and all(d is None or d == s
                                       for d, s in zip(dims[1:], x.shape[1:], strict=True))
    if not fits or len(x) == 0:
        shape = ("N", *("?" if d is None else d for d in dims[1:]))
        raise DataError(f"{what} has shape {x.shape}; the model takes samples shaped {shape} "
                        "(N >= 1)")
    return x


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.output and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | outputs
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    made = used | {o for node in graph.node for o in node.output}
    for info in [v for v in graph.value_info if v.name not in made]:
        graph.value_info.remove(info)
