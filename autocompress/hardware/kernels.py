"""Kernels: the unit a hardware profile measures and a latency model adds up.

A :class:`Kernel` describes one operator instance by its kind and shapes. The same record is
built two ways: from a grid when profiling (:func:`kernel_graph` turns it into a one-operator
ONNX model, built with ``onnx`` alone so profiling needs no torch), and from every node of a
model to be estimated (:func:`kernels_of`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["KINDS", "Kernel", "NodeKernel", "features", "kernel_graph", "kernels_of"]

_logger = logging.getLogger(__name__)

KernelKind = Literal["conv", "conv1x1", "dwconv", "gemm", "pool", "elementwise"]
KINDS: tuple[KernelKind, ...] = ("conv", "conv1x1", "dwconv", "gemm", "pool", "elementwise")

_OPSET = 20
# Activations ONNX Runtime fuses into a preceding Conv (FusedConv / NCHWc Conv).
_FUSABLE_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "Tanh"}
# Operators that only change metadata or are removed by graph optimization.
_FREE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant",
             "Dropout", "Cast"}
_POOL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "MaxPool", "AveragePool", "ReduceMean"}


@dataclass(frozen=True)
class Kernel:
    """One operator instance at batch size 1.

    conv/conv1x1/dwconv: ``in_channels x height x width`` input, ``out_channels`` outputs.
    gemm: ``in_channels`` (K) -> ``out_channels`` (N), ``height`` rows (M).
    pool: ``kernel == 0`` means global pooling. elementwise: a tensor of
    ``in_channels x height x width`` elements.
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
        if self.kind in ("gemm", "elementwise"):
            return self.height
        if self.kind == "pool" and self.kernel == 0:
            return 1
        pad = self.kernel // 2 if self.kind != "pool" else 0
        return (self.height + 2 * pad - self.kernel) // self.stride + 1

    @property
    def out_width(self) -> int:
        if self.kind in ("gemm", "elementwise"):
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
    if kernel.kind == "elementwise":
        return np.array([1.0, kernel.out_elements], dtype=float)
    if kernel.kind == "pool":
        return np.array([1.0, kernel.in_elements, kernel.out_elements], dtype=float)
    return np.array([1.0, kernel.macs, kernel.in_elements, kernel.out_elements,
                     kernel.weight_elements], dtype=float)


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
    as they appear in real models)."""
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
    graph = helper.make_graph(
        nodes, f"kernel_{k.kind}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 9
    return model.SerializeToString()


def overhead_graph() -> bytes:
    """The smallest real model: one Add on a single float. Its latency is the per-run cost."""
    return kernel_graph(Kernel("elementwise", 1, 1, 1, 1))


# ------------------------------------------------------------------- model -> kernels

@dataclass(frozen=True)
class NodeKernel:
    """A node of a model and the kernel it maps to (``None``: free or fused)."""

    node: str
    op_type: str
    kernel: Kernel | None
    note: str = ""


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


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


def kernels_of(model: onnx.ModelProto) -> list[NodeKernel]:
    """Map every node of ``model`` (batch size 1) to the kernel that costs its time."""
    shapes = _shapes(model)
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
        if op in _FREE_OPS:
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
