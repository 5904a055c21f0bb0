"""Per-layer mixed precision (fp32 / fp16 / int8) with ONNX Runtime's own tools.

A request names a precision per torch layer (``{"layer1.0.conv1": "int8", "fc": "fp16"}``;
layers not named stay fp32). :func:`node_precisions` spreads it over every node of the fp32
ONNX graph: the single assignment the latency estimator costs and :func:`quantize_onnx`
builds. int8 is ONNX Runtime's static QDQ quantization (``quant_pre_process`` then
``quantize_static``; ORT fuses the Q/DQ pairs into QLinearConv, QLinearAdd, QGemm, ...), fp16
its ``convert_float_to_float16``. :func:`exported_precisions` reads back what an exported
graph really runs, and :func:`prepare_qat` / :func:`finish_qat` finetune the int8 layers with
fake quantization (straight-through estimator) before export.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from autocompress.exceptions import (
    DataError,
    ExportError,
    SearchSpaceError,
)
from autocompress.hardware.kernels import FREE_OPS
from autocompress.space._candidate import PRECISIONS, Precision

__all__ = [
    "PRECISIONS",
    "Precision",
    "exported_precisions",
    "node_precisions",
    "onnx_accuracy",
    "onnx_layer_nodes",
    "quantize_onnx",
]

_logger = logging.getLogger(__name__)


# Operators that carry a layer's weight, and the input that holds it.
_WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1, "MatMulInteger": 1,
                 "QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3}
_INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QGemm", "QLinearMatMul"}
# Looked through when tracing a weight input back to its initializer.
_WEIGHT_PATH_OPS = {"DequantizeLinear", "Identity", "Transpose"}
# Activations ORT's QDQ quantizer may remove (their range is folded into the producer's Q).
_REMOVABLE_ACTIVATIONS = {"Relu", "Clip"}
# onnxruntime.quantization.quant_utils.TENSOR_NAME_QUANT_SUFFIX (a test checks they agree).
_QUANT_SUFFIX = "_quantized"
_COPY_MARK = "::copy_for::"  # names the private copy of a shared initializer
# 7-bit weights: x86 CPUs without VNNI (AVX2) multiply u8 x s8 pairs into int16 and
# saturate with full-range int8 weights (TinyNet on digits, per channel: 94% -> 74%).
_WEIGHT_QMAX = {True: 64, False: 127}  # reduce_range -> symmetric int8 weight range
_CALIBRATION_BATCH = 32  # samples per calibration run when the graph's batch is dynamic
_EVAL_BATCH = 256        # samples per run in onnx_accuracy when the batch is dynamic


# --------------------------------------------------------------------------- graph helpers

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
    name = initializer.removesuffix(_QUANT_SUFFIX).split(_COPY_MARK)[0]
    if name.endswith(".weight") and not name.startswith("onnx::"):
        return name.removesuffix(".weight")
    return None


def _layer_from_scope(node_name: str) -> str | None:
    """TorchScript names nodes ``/layer1/layer1.0/conv1/Conv``: one scope per module call,
    each the module's name from its last non-numeric atom on; the child's own atom is last."""
    if not node_name.startswith("/"):
        return None
    atoms = [scope.split(".")[-1] for scope in node_name.split("/")[1:-1]]
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


# ----------------------------------------------------------------------- precision plan

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
    otherwise fp32. Raises :class:`SearchSpaceError` for an unknown precision or layer.
    """
    layers = _node_layers(model.graph)
    request = _check_request(layer_precision, layers.values())
    int8_ops, fp16_blocked_ops = _supported_ops()
    tensors: dict[str, Precision] = {i.name: "fp32" for i in model.graph.input}
    initializers = {init.name for init in model.graph.initializer}
    plan: dict[str, Precision] = {}
    for index, node in enumerate(model.graph.node):
        key = _label(node, index)
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


# -------------------------------------------------------------------------- exporting

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


class _ArrayReader:
    """ORT CalibrationDataReader (duck-typed: ORT checks for ``get_next``) over an array,
    in batches of the size the graph declares."""

    def __init__(self, name: str, x: np.ndarray, batch: int) -> None:
        self._name, self._x, self._batch, self._start = name, x, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start + self._batch > len(self._x):
            return None
        chunk = self._x[self._start:self._start + self._batch]
        self._start += self._batch
        return {self._name: chunk}


@contextlib.contextmanager
def _root_logging_guard() -> Iterator[None]:
    """ORT's quantizer calls ``logging.info()`` on the root logger, which runs
    ``logging.basicConfig()`` when the root has no handler; keep the application's setup."""
    guard = logging.NullHandler() if not logging.root.handlers else None
    if guard is not None:
        logging.root.addHandler(guard)
    try:
        yield
    finally:
        if guard is not None:
            logging.root.removeHandler(guard)


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


def _quantize_int8(model: onnx.ModelProto, plan: Mapping[str, Precision], calibration: np.ndarray,
                   per_channel: bool, reduce_range: bool, folder: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    name, dims = _input_dims(model)
    x = _check_samples(calibration, dims, "the calibration data")
    batch = dims[0] or min(_CALIBRATION_BATCH, len(x))
    if len(x) < batch:
        raise DataError(f"the model's batch size is {batch} but only {len(x)} calibration "
                        f"samples were given; pass at least {batch}")
    source, target = folder / "prepared.onnx", folder / "int8.onnx"
    onnx.save(model, source)
    exclude = [node for node, precision in plan.items() if precision != "int8"]
    try:
        with _root_logging_guard():
            quantize_static(source, target, _ArrayReader(name, x, batch),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime's int8 quantization failed ({type(exc).__name__}: "
                          f"{exc}); request fp32 or fp16 for the layers that fail") from exc
    quantized = onnx.load(target)
    _keep_float_inputs(quantized, plan)
    _dequantize_per_axis_into_float_layers(quantized, plan)
    _check_int8_plan(quantized, plan, {node.name: node.op_type for node in model.graph.node})
    return quantized


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
        with _root_logging_guard():
            converted = convert_float_to_float16(model, keep_io_types=True,
                                                 node_block_list=sorted(blocked))
    except Exception as exc:
        raise ExportError(f"ONNX Runtime's fp16 conversion failed ({type(exc).__name__}: "
                          f"{exc}); request fp32 for the fp16 layers") from exc
    _drop_cast_round_trips(converted, blocked)
    return converted


def quantize_onnx(model_bytes: bytes, layer_precision: Mapping[str, str],
                  calibration: np.ndarray, *, per_channel: bool = True,
                  reduce_range: bool = True) -> bytes:
    """The deployable model for a per-layer precision request (layers not named: fp32).

    int8 layers: ORT's ``quant_pre_process`` and static QDQ quantization (per-channel
    symmetric int8 weights, per-tensor asymmetric uint8 activations) calibrated on
    ``calibration`` (float32 samples shaped like the model's input, at least one batch of the
    size the graph declares). ``reduce_range`` keeps weights to 7 bits ([-64, 64]), which
    x86 CPUs without VNNI (AVX2) need to avoid int16 saturation; pass the same value to
    :func:`prepare_qat`. fp16 layers: ORT's ``convert_float_to_float16`` with fp32 inputs
    and outputs. Every node runs at the precision :func:`node_precisions` assigns it; the
    result is checked with :func:`exported_precisions`. All fp32: ``model_bytes`` unchanged.
    Raises :class:`SearchSpaceError` for a bad request, :class:`DataError` for calibration data
    of the wrong shape, :class:`ExportError` when ORT cannot build the model.
    """
    model = _load(model_bytes)
    request = _check_request(layer_precision, onnx_layer_nodes(model))
    if all(precision == "fp32" for precision in request.values()):
        return model_bytes
    _name_nodes(model)
    expected = node_precisions(model, request)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="autocompress-quantize-") as tmp:
        folder = Path(tmp)
        try:
            with _root_logging_guard():
                quant_pre_process(model, folder / "pre.onnx")
        except Exception as exc:
            raise ExportError(f"ONNX Runtime's quantization pre-processing failed ({exc}); "
                              "check the model runs in ONNX Runtime at fp32") from exc
        prepared = onnx.load(folder / "pre.onnx")
        plan = node_precisions(prepared, request)
        changed = sorted(n for n in plan.keys() & expected.keys() if plan[n] != expected[n])
        missing = sorted(layer for layer, p in request.items()
                         if p != "fp32" and layer not in onnx_layer_nodes(prepared))
        if changed or missing:
            raise ExportError(f"ONNX Runtime's pre-processing rewrote the graph: nodes "
                              f"{(changed + missing)[:5]} no longer match the precision plan; "
                              "request fp32 for those layers")
        _unshare_weights(prepared, plan)
        if "int8" in plan.values():
            prepared = _quantize_int8(prepared, plan, calibration, per_channel, reduce_range,
                                      folder)
    if "fp16" in plan.values():
        prepared = _convert_fp16(prepared, plan)
    result = prepared.SerializeToString()
    actual = exported_precisions(result)
    wrong = {layer: actual.get(layer) for layer in onnx_layer_nodes(model)
             if actual.get(layer) != request.get(layer, "fp32")}
    if wrong:
        raise ExportError(f"the exported graph runs layers {sorted(wrong)[:5]} at "
                          f"{[wrong[k] for k in sorted(wrong)[:5]]}, not as requested; "
                          "request fp32 for them")
    return result


def exported_precisions(model_bytes: bytes) -> dict[str, Precision]:
    """Torch layer -> the precision its node really runs at in an exported graph: int8 when
    its weight is an int8 tensor (DequantizeLinear of int8, QLinearConv, QGemm, ...), fp16 when
    its weight is float16, else fp32."""
    graph = _load(model_bytes).graph
    initializers = {init.name: init for init in graph.initializer}
    producers = _producers(graph)
    nodes = {_label(node, i): node for i, node in enumerate(graph.node)}
    integer = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    found: dict[str, Precision] = {}
    for key, layer in _node_layers(graph).items():
        node = nodes[key]
        weight = node.input[_WEIGHT_INPUT[node.op_type]]
        dq = producers.get(weight)
        if node.op_type in _INTEGER_OPS or (
                dq is not None and dq.op_type == "DequantizeLinear"
                and dq.input[0] in initializers
                and initializers[dq.input[0]].data_type in integer):
            precision: Precision = "int8"
        elif weight in initializers and initializers[weight].data_type == onnx.TensorProto.FLOAT16:
            precision = "fp16"
        else:
            precision = "fp32"
        found.setdefault(layer, precision)
    return found


def onnx_accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray, *, threads: int = 1) -> float:
    """Top-1 accuracy of the ONNX model in ONNX Runtime (CPU provider, ``threads`` intra-op
    threads; 0: ORT's default) on samples ``x`` (float32, shaped like the input) and labels
    ``y``. A graph with a fixed batch size runs one batch of that size at a time."""
    import onnxruntime as ort

    name, dims = _input_dims(_load(model_bytes))
    x = _check_samples(np.asarray(x), dims, "the evaluation data")
    labels = np.asarray(y).reshape(-1)
    if len(labels) != len(x):
        raise DataError(f"{len(x)} samples but {len(labels)} labels; pass one label per sample")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the model ({exc})") from exc
    batch = dims[0] or _EVAL_BATCH
    correct = 0
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        size = len(chunk)
        if dims[0] is not None and size < batch:  # a fixed batch: pad the last one
            chunk = np.concatenate([chunk, np.zeros((batch - size, *x.shape[1:]), np.float32)])
        logits = session.run(None, {name: chunk})[0]
        predicted = np.asarray(logits).reshape(len(chunk), -1)[:size].argmax(axis=1)
        correct += int((predicted == labels[start:start + size]).sum())
    return correct / len(x)
