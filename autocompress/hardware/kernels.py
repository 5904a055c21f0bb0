"""Kernels: the unit a hardware profile measures and a latency model adds up.

A :class:`Kernel` describes one operator instance by its kind, shapes and precision. The same
record is built two ways: from a grid when profiling (:func:`kernel_graph` turns it into a
one-operator ONNX model, built with ``onnx`` alone so profiling needs no torch; int8 and fp16
versions go through ONNX Runtime's converters, see :mod:`autocompress.hardware._qdq`), and
from every node of a model to be estimated (:func:`kernels_of`, with a precision per node).

Where precision changes along an edge of a mixed-precision model the tensor is converted: a
:class:`Boundary` (:func:`boundaries_of`) costs a ``quantize`` (fp32 -> int8),
``dequantize`` (int8 -> fp32), ``to_fp16`` or ``from_fp16`` kernel over its elements.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["BOUNDARY_KINDS", "CONTEXT_KINDS", "KINDS", "PRECISIONS", "Boundary", "Kernel",
           "NodeKernel",
           "boundaries_of", "boundary_kind", "features", "kernel_graph", "kernels_of"]

_logger = logging.getLogger(__name__)

KernelKind = Literal["conv", "conv1x1", "dwconv", "gemm", "pool", "elementwise", "quantize",
                     "dequantize", "to_fp16", "from_fp16", "chain", "island"]
#: Kinds of the operators of a model.
KINDS: tuple[KernelKind, ...] = ("conv", "conv1x1", "dwconv", "gemm", "pool", "elementwise")
#: Kinds of the conversions at an edge where precision changes (elementwise on one tensor).
BOUNDARY_KINDS: tuple[KernelKind, ...] = ("quantize", "dequantize", "to_fp16", "from_fp16")
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
# The conversion kernel for each direct change of precision (others go through fp32) and the
# precision whose profile measures it.
_BOUNDARY_OF: dict[tuple[str, str], KernelKind] = {
    ("fp32", "int8"): "quantize", ("int8", "fp32"): "dequantize",
    ("fp32", "fp16"): "to_fp16", ("fp16", "fp32"): "from_fp16",
}
#: Kinds measured to see conversions in context: three 1x1 convolutions (``in_channels`` to
#: ``in_channels`` over ``height x width``) in a row, all in ``precision`` (``chain``), or
#: with only the middle one in ``precision`` and the others fp32 (``island``).
CONTEXT_KINDS: tuple[KernelKind, ...] = ("chain", "island")
_FLAT_KINDS = ("gemm", "elementwise", *BOUNDARY_KINDS, *CONTEXT_KINDS)

_OPSET = 20
# Activations ONNX Runtime fuses into a preceding Conv (FusedConv / NCHWc Conv).
_FUSABLE_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "Tanh"}
# Operators that only change metadata or are removed by graph optimization.
FREE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant",
             "Dropout", "Cast"}
_POOL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "MaxPool", "AveragePool", "ReduceMean"}


@dataclass(frozen=True)
class Kernel:
    """One operator instance at batch size 1.

    conv/conv1x1/dwconv: ``in_channels x height x width`` input, ``out_channels`` outputs.
    gemm: ``in_channels`` (K) -> ``out_channels`` (N), ``height`` rows (M).
    pool: ``kernel == 0`` means global pooling. elementwise, the boundary kinds
    (:data:`BOUNDARY_KINDS`) and the context kinds (:data:`CONTEXT_KINDS`): a tensor of
    ``in_channels x height x width`` elements.
    ``precision`` is the precision the operator computes in (``fp32``, ``fp16``, ``int8``);
    a boundary kernel has the precision of the profile part that measures it (``int8`` for
    ``quantize``/``dequantize``, ``fp16`` for the casts).
    """

    kind: KernelKind
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    precision: str = "fp32"

    @property
    def out_height(self) -> int:
        if self.kind in _FLAT_KINDS:
            return self.height
        if self.kind == "pool" and self.kernel == 0:
            return 1
        pad = self.kernel // 2 if self.kind != "pool" else 0
        return (self.height + 2 * pad - self.kernel) // self.stride + 1

    @property
    def out_width(self) -> int:
        if self.kind in _FLAT_KINDS:
            return self.width
        if self.kind == "pool" and self.kernel == 0:
            return 1
        pad = self.kernel // 2 if self.kind != "pool" else 0
        return (self.width + 2 * pad - self.kernel) // self.stride + 1

    @property
    def macs(self) -> int:
        if self.kind in ("conv", "conv1x1", "dwconv"):
            return (self.out_channels * self.out_height * self.out_width
                    * (self.in_channels // self.groups) * self.kernel * self.kernel)
        if self.kind == "gemm":
            return self.height * self.in_channels * self.out_channels
        return 0

    @property
    def in_elements(self) -> int:
        return self.in_channels * self.height * self.width

    @property
    def out_elements(self) -> int:
        if self.kind == "gemm":
            return self.height * self.out_channels
        return self.out_channels * self.out_height * self.out_width

    @property
    def weight_elements(self) -> int:
        if self.kind in ("conv", "conv1x1", "dwconv"):
            return self.out_channels * (self.in_channels // self.groups) * self.kernel**2
        if self.kind == "gemm":
            return self.in_channels * self.out_channels
        return 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Kernel:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def features(kernel: Kernel) -> np.ndarray:
    """Regressors of the linear latency model for ``kernel``'s kind, all non-decreasing in
    the channel counts (so a fit with non-negative weights is monotone in channels)."""
    if kernel.kind == "elementwise" or kernel.kind in (*BOUNDARY_KINDS, *CONTEXT_KINDS):
        return np.array([1.0, kernel.out_elements], dtype=float)
    if kernel.kind == "pool" and kernel.precision == "fp32":
        return np.array([1.0, kernel.in_elements, kernel.out_elements], dtype=float)
    if kernel.kind == "pool":
        # int8 (and fp16) pooling: global average and windowed max pooling are different
        # kernels (on ONNX Runtime's CPU uint8 MaxPool costs 10x more per element than
        # QLinearGlobalAveragePool), so each gets its own work term
        windowed = kernel.kernel > 0
        window_work = kernel.out_elements * kernel.kernel**2 if windowed else 0
        return np.array([1.0, 0 if windowed else kernel.in_elements, window_work],
                        dtype=float)
    if kernel.precision == "fp32":
        return np.array([1.0, kernel.macs, kernel.in_elements, kernel.out_elements,
                         kernel.weight_elements], dtype=float)
    # int8 (and fp16): also a cost per output pixel whatever the channel count, which
    # dominates narrow layers (ONNX Runtime's CPU QLinearConv: ~30 ns per output pixel of an
    # 8-channel 3x3 convolution, 6x the fp32 cost)
    return np.array([1.0, kernel.macs, kernel.in_elements, kernel.out_elements,
                     kernel.weight_elements, kernel.out_height * kernel.out_width], dtype=float)


def classify_conv(in_channels: int, out_channels: int, kernel: int, groups: int) -> KernelKind:
    if groups > 1 and groups == in_channels:
        return "dwconv"
    if kernel == 1:
        return "conv1x1"
    return "conv"


# --------------------------------------------------------------------------- kernel graphs

def _conv_node(k: Kernel, x: str, y: str, prefix: str, rng: np.random.Generator
               ) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    w = rng.standard_normal((k.out_channels, k.in_channels // k.groups, k.kernel, k.kernel))
    b = rng.standard_normal(k.out_channels)
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{prefix}w"),
             numpy_helper.from_array(b.astype(np.float32), f"{prefix}b")]
    pad = k.kernel // 2
    conv = helper.make_node("Conv", [x, f"{prefix}w", f"{prefix}b"], [f"{prefix}c"],
                            kernel_shape=[k.kernel, k.kernel], strides=[k.stride, k.stride],
                            pads=[pad] * 4, group=k.groups)
    relu = helper.make_node("Relu", [f"{prefix}c"], [y])
    return [conv, relu], inits


def kernel_graph(kernel: Kernel, seed: int = 0) -> bytes:
    """A serialized one-operator ONNX model that runs ``kernel`` (convs with a fused ReLU,
    as they appear in real models) in ``kernel.precision``.

    int8: the fp32 graph quantized by ONNX Runtime's ``quantize_static`` (QDQ, per-channel
    int8 weights, uint8 activations), as deployed models are, so the measured graph carries a
    QuantizeLinear on its input and a DequantizeLinear on its output. fp16: the fp32 graph
    converted with float inputs and outputs, so it carries a Cast at each end. Boundary kinds
    are the conversion alone; context kinds are three-convolution chains
    (:data:`CONTEXT_KINDS`).
    """
    if kernel.kind in BOUNDARY_KINDS:
        return _serialize(_boundary_graph(kernel))
    if kernel.kind in CONTEXT_KINDS:
        model = _chain_graph(kernel, seed)
    else:
        model = _fp32_graph(kernel, seed)
    if kernel.precision == "fp32":
        return _serialize(model)
    from autocompress.hardware import _qdq

    ends = ["conv0", "relu0", "conv2", "relu2"] if kernel.kind == "island" else []
    if kernel.precision == "int8":
        return _qdq.quantize_qdq(model, seed=seed, nodes_to_exclude=ends)
    if kernel.precision == "fp16":
        return _qdq.to_fp16(model, nodes_to_exclude=ends)
    raise ValueError(f"unknown precision {kernel.precision!r}; known: {', '.join(PRECISIONS)}")


def _chain_graph(kernel: Kernel, seed: int) -> onnx.ModelProto:
    """Three 1x1 convolutions with ReLUs, ``conv0`` to ``conv2``, over one tensor shape."""
    rng = np.random.default_rng(seed)
    c = kernel.in_channels
    shape = [1, c, kernel.height, kernel.width]
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    x = "x"
    for i in range(3):
        w = rng.standard_normal((c, c, 1, 1)) / np.sqrt(c)  # keeps activations in range
        b = rng.standard_normal(c) * 0.1
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        y = "y" if i == 2 else f"r{i}"
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [y], name=f"relu{i}")]
        x = y
    return _model(nodes, f"{kernel.kind}_{c}", helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, shape), helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                         shape), inits)


def _serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def _model(nodes: list[onnx.NodeProto], name: str, x: onnx.ValueInfoProto,
           y: onnx.ValueInfoProto, inits: list[TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 9
    return model


def _fp32_graph(kernel: Kernel, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    k = kernel
    nodes: list[onnx.NodeProto]
    inits: list[TensorProto] = []
    if k.kind in ("conv", "conv1x1", "dwconv"):
        in_shape = [1, k.in_channels, k.height, k.width]
        out_shape = [1, k.out_channels, k.out_height, k.out_width]
        nodes, inits = _conv_node(k, "x", "y", "", rng)
    elif k.kind == "gemm":
        in_shape = [k.height, k.in_channels]
        out_shape = [k.height, k.out_channels]
        w = rng.standard_normal((k.out_channels, k.in_channels)).astype(np.float32)
        b = rng.standard_normal(k.out_channels).astype(np.float32)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    elif k.kind == "pool":
        in_shape = [1, k.in_channels, k.height, k.width]
        out_shape = [1, k.out_channels, k.out_height, k.out_width]
        if k.kernel == 0:
            nodes = [helper.make_node("GlobalAveragePool", ["x"], ["y"])]
        else:
            nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k.kernel] * 2,
                                      strides=[k.stride] * 2)]
    elif k.kind == "elementwise":
        in_shape = out_shape = [1, k.in_channels, k.height, k.width]
        other = rng.standard_normal(in_shape).astype(np.float32)
        inits = [numpy_helper.from_array(other, "other")]
        nodes = [helper.make_node("Add", ["x", "other"], ["y"])]
    else:  # pragma: no cover - KernelKind is closed
        raise ValueError(f"unknown kernel kind {k.kind}")
    return _model(nodes, f"kernel_{k.kind}",
                  helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape),
                  helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape), inits)


# Quantization parameters of a boundary graph: per-tensor, as activations are quantized.
_BOUNDARY_SCALE = 0.05
_BOUNDARY_ZERO_POINT = 128


def _boundary_graph(kernel: Kernel) -> onnx.ModelProto:
    """QuantizeLinear (float -> uint8), DequantizeLinear (uint8 -> float) or a Cast between
    float and float16 over an NCHW tensor of ``kernel``'s elements."""
    shape = [1, kernel.in_channels, kernel.height, kernel.width]
    scale = numpy_helper.from_array(np.array(_BOUNDARY_SCALE, dtype=np.float32), "scale")
    zero = numpy_helper.from_array(np.array(_BOUNDARY_ZERO_POINT, dtype=np.uint8), "zero")
    elem_in, elem_out = {
        "quantize": (TensorProto.FLOAT, TensorProto.UINT8),
        "dequantize": (TensorProto.UINT8, TensorProto.FLOAT),
        "to_fp16": (TensorProto.FLOAT, TensorProto.FLOAT16),
        "from_fp16": (TensorProto.FLOAT16, TensorProto.FLOAT),
    }[kernel.kind]
    inits: list[TensorProto] = []
    if kernel.kind == "quantize":
        node = helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["y"])
        inits = [scale, zero]
    elif kernel.kind == "dequantize":
        node = helper.make_node("DequantizeLinear", ["x", "scale", "zero"], ["y"])
        inits = [scale, zero]
    else:
        node = helper.make_node("Cast", ["x"], ["y"], to=elem_out)
    return _model([node], f"boundary_{kernel.kind}",
                  helper.make_tensor_value_info("x", elem_in, shape),
                  helper.make_tensor_value_info("y", elem_out, shape), inits)


def boundary_kind(source: str, target: str) -> KernelKind:
    """The conversion kernel for a direct change of precision ``source`` -> ``target``."""
    try:
        return _BOUNDARY_OF[(source, target)]
    except KeyError:
        raise ValueError(f"no single conversion from {source} to {target}; "
                         f"direct ones: {sorted(_BOUNDARY_OF)}") from None


def overhead_graph() -> bytes:
    """The smallest real model: one Add on a single float. Its latency is the per-run cost."""
    return kernel_graph(Kernel("elementwise", 1, 1, 1, 1))


# ------------------------------------------------------------------- model -> kernels

@dataclass(frozen=True)
class NodeKernel:
    """A node of a model and the kernel it maps to (``None``: free or fused), with the
    precision the node runs in."""

    node: str
    op_type: str
    kernel: Kernel | None
    note: str = ""
    precision: str = "fp32"


@dataclass(frozen=True)
class Boundary:
    """A conversion where a tensor crosses from ``source`` to ``target`` precision: a graph
    input read by a non-fp32 node, a tensor produced in one precision and read in another,
    or a non-fp32 graph output. ``kernel`` is the conversion over the tensor's elements."""

    tensor: str
    source: str
    target: str
    kernel: Kernel


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    return _infer(model)[0]


def _infer(model: onnx.ModelProto) -> tuple[dict[str, list[int]], set[str]]:
    """Shapes of every tensor, and the names of float tensors (activations that precision
    conversions apply to)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    floats: set[str] = set()
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            floats.add(info.name)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes, floats


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _chw(shape: list[int]) -> tuple[int, int, int]:
    """(channels, height, width) of an activation, flattening what is not NCHW."""
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    if len(shape) == 3:
        return shape[1], shape[2], 1
    if len(shape) == 2:
        return shape[1], 1, 1
    total = int(np.prod(shape)) if shape else 1
    return total, 1, 1


def kernels_of(model: onnx.ModelProto, precisions: Mapping[str, str] | None = None
               ) -> list[NodeKernel]:
    """Map every node of ``model`` (batch size 1) to the kernel that costs its time.

    ``precisions`` maps node names of ``model`` to ``fp32``, ``fp16`` or ``int8``: a node it
    does not name runs in fp32, except a free or fused node, which follows its input; an
    activation stays fused into its convolution only in the same precision, and in int8 a
    ReLU/Clip after an int8 node is removed. Without it every node is fp32 (as before
    precisions existed). Raises ``ValueError`` for unknown precisions or node names.
    """
    shapes = _shapes(model)
    nodes = _fp32_kernels(model, shapes)
    if precisions is None:
        return nodes
    return _assign_precisions(model, nodes, precisions, shapes)


def _fp32_kernels(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[NodeKernel]:
    consumers: dict[str, int] = {}
    producers: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
        for name in node.output:
            producers[name] = node
    out: list[NodeKernel] = []
    for node in model.graph.node:
        op = node.op_type
        label = node.name or f"{op}_{len(out)}"
        x = shapes.get(node.input[0], []) if node.input else []
        y = shapes.get(node.output[0], []) if node.output else []
        if op in FREE_OPS:
            out.append(NodeKernel(label, op, None, "free"))
            continue
        if op in _FUSABLE_ACTIVATIONS:
            source = producers.get(node.input[0])
            sole_use = consumers.get(node.input[0]) == 1
            if source is not None and source.op_type == "Conv" and sole_use:
                out.append(NodeKernel(label, op, None, "fused into Conv"))
                continue
        if op == "Conv" and len(x) == 4 and len(y) == 4:
            w = shapes.get(node.input[1], [])
            kernel_size = int(w[2]) if len(w) == 4 else int(_attr(node, "kernel_shape", [1])[0])
            groups = int(_attr(node, "group", 1))
            strides = _attr(node, "strides", [1, 1])
            kind = classify_conv(x[1], y[1], kernel_size, groups)
            out.append(NodeKernel(label, op, Kernel(
                kind, in_channels=x[1], out_channels=y[1], height=x[2], width=x[3],
                kernel=kernel_size, stride=int(strides[0]), groups=groups)))
            continue
        if op in ("Gemm", "MatMul") and x and y:
            k_dim = x[-1]
            rows = int(np.prod(x[:-1])) if len(x) > 1 else 1
            out.append(NodeKernel(label, op, Kernel(
                "gemm", in_channels=k_dim, out_channels=y[-1], height=rows, width=1)))
            continue
        if op in _POOL_OPS and x:
            c, h, w_ = _chw(x)
            global_pool = op.startswith("Global") or op == "ReduceMean"
            k_size = 0 if global_pool else int(_attr(node, "kernel_shape", [2])[0])
            stride = 1 if global_pool else int(_attr(node, "strides", [k_size])[0])
            out.append(NodeKernel(label, op, Kernel(
                "pool", in_channels=c, out_channels=c, height=h, width=w_,
                kernel=k_size, stride=stride)))
            continue
        if y:
            c, h, w_ = _chw(y)
            note = "" if op in _ELEMENTWISE_OPS else "unmodelled op, costed as elementwise"
            out.append(NodeKernel(label, op, Kernel(
                "elementwise", in_channels=c, out_channels=c, height=h, width=w_), note))
            continue
        out.append(NodeKernel(label, op, None, "no shape known; not costed"))
    return out


_ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid",
                    "HardSwish", "Tanh", "LeakyRelu", "Concat", "Pad", "Transpose", "Slice",
                    "Split", "BatchNormalization", "Softmax", "Max", "Min", "Neg", "Exp"}


# ------------------------------------------------------------------ mixed precision

# Activations ONNX Runtime's QDQ quantizer removes after a quantized producer (their effect
# is folded into the producer's uint8 output range), so they cost nothing in int8.
_INT8_REMOVED_ACTIVATIONS = {"Relu", "Clip"}


def _producers(model: onnx.ModelProto) -> dict[str, int]:
    return {name: i for i, node in enumerate(model.graph.node) for name in node.output}


def _constants(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from weights alone (initializers, Constant nodes and what is derived
    from them only, such as the Identity copies an exporter makes of shared weights)."""
    constants = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if all(not name or name in constants for name in node.input):
            constants.update(node.output)
    return constants


def _assign_precisions(model: onnx.ModelProto, nodes: list[NodeKernel],
                       precisions: Mapping[str, str], shapes: dict[str, list[int]]
                       ) -> list[NodeKernel]:
    """Set each node's precision: the one ``precisions`` names it with; a node it does not
    name runs in fp32, except a free or fused node (reshapes, an activation fused into its
    convolution), which follows the node producing its first input.

    An activation fused into a convolution stays fused only in the convolution's precision;
    in int8, a ReLU/Clip that is its int8 producer's only reader is removed by quantization.
    """
    unknown = sorted({str(p) for p in precisions.values()} - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}; known: {list(PRECISIONS)}")
    names = {n.node for n in nodes}
    missing = sorted(set(precisions) - names)
    if missing:
        example = next((n.node for n in nodes if n.kernel is not None), "")
        raise ValueError(
            f"precisions name {len(missing)} node(s) that are not in the model, e.g. "
            f"{missing[:3]}; use node names of the exported fp32 ONNX graph such as "
            f"{example!r}")
    producers = _producers(model)
    readers: dict[str, int] = {}
    for proto in model.graph.node:
        for name in proto.input:
            readers[name] = readers.get(name, 0) + 1
    out: list[NodeKernel] = []
    for proto, nk in zip(model.graph.node, nodes, strict=True):
        source = producers.get(proto.input[0]) if proto.input else None
        source_precision = out[source].precision if source is not None else "fp32"
        named = precisions.get(nk.node)
        if named is not None:
            precision = named
        elif nk.kernel is None and source is not None:
            precision = source_precision
        else:
            precision = "fp32"
        kernel, note = nk.kernel, nk.note
        if kernel is None and note == "fused into Conv" and precision != source_precision:
            c, h, w = _chw(shapes.get(proto.output[0], []))
            kernel = Kernel("elementwise", c, c, h, w)
            note = f"not fused: its Conv runs in {source_precision}"
        if (kernel is not None and precision == "int8" and source_precision == "int8"
                and proto.op_type in _INT8_REMOVED_ACTIVATIONS
                and readers.get(proto.input[0]) == 1):
            kernel, note = None, "removed by int8 quantization"
        if kernel is not None:
            kernel = replace(kernel, precision=precision)
        out.append(NodeKernel(nk.node, nk.op_type, kernel, note, precision))
    return out


def boundaries_of(model: onnx.ModelProto, nodes: Sequence[NodeKernel]) -> list[Boundary]:
    """The precision conversions a model with node precisions ``nodes`` (from
    :func:`kernels_of` with ``precisions``) runs: one per float tensor and precision it is
    read in other than the one it is produced in (graph inputs are fp32; graph outputs are
    read in fp32). A change between two non-fp32 precisions goes through fp32 (two
    conversions). An fp32 tensor read in fp32 and in int8 is quantized once, and its fp32
    readers read the float tensor (as a deployment should: ``quantize_static`` alone would
    feed them its Q -> DQ copy, one more DequantizeLinear).
    """
    shapes, floats = _infer(model)
    producers = _producers(model)
    constants = _constants(model)
    precision_of = {name: nodes[i].precision for name, i in producers.items()}
    readers: dict[str, list[str]] = {}  # tensor -> reading precisions, in graph order
    for proto, nk in zip(model.graph.node, nodes, strict=True):
        for name in proto.input:
            if name and name not in constants and name in floats:
                readers.setdefault(name, []).append(nk.precision)
    for out in model.graph.output:
        if out.name in floats:
            readers.setdefault(out.name, []).append("fp32")
    found: list[Boundary] = []
    for tensor, targets in readers.items():
        source = precision_of.get(tensor, "fp32")
        c, h, w = _chw(shapes.get(tensor, []))
        steps: list[tuple[str, str]] = []
        for target in dict.fromkeys(targets):
            if target == source:
                continue
            direct = (source, target) in _BOUNDARY_OF
            steps.extend([(source, target)] if direct else [(source, "fp32"), ("fp32", target)])
        for a, b in dict.fromkeys(steps):
            kind = boundary_kind(a, b)
            measured_in = b if kind in ("quantize", "to_fp16") else a
            found.append(Boundary(tensor, a, b, Kernel(kind, c, c, h, w,
                                                       precision=measured_in)))
    return found
