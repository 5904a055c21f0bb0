"""One-operator ONNX models of kernels, built with ``onnx`` alone (profiling needs no torch).

int8 and fp16 versions go through ONNX Runtime's converters, see
:mod:`autocompress.hardware._qdq`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from autocompress.hardware import _qdq
from autocompress.hardware._kernel import (
    BOUNDARY_KINDS,
    CONTEXT_KINDS,
    ELEMENTWISE_OPS,
    LAYOUT_KINDS,
    PRECISIONS,
    STREAM_KINDS,
    Kernel,
)

__all__ = ["kernel_graph", "overhead_graph"]

_OPSET = 20
_NCHWC = "com.microsoft.nchwc"
# Quantization parameters of a boundary graph: per-tensor, as activations are quantized.
_BOUNDARY_SCALE = 0.05
_BOUNDARY_ZERO_POINT = 128


def _conv_node(k: Kernel, x: str, y: str, prefix: str, rng: np.random.Generator
               ) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    w = rng.standard_normal((k.out_channels, k.in_channels // k.groups, k.kernel, k.window_w))
    b = rng.standard_normal(k.out_channels)
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{prefix}w"),
             numpy_helper.from_array(b.astype(np.float32), f"{prefix}b")]
    pads = list(k.pads) * 2
    conv = helper.make_node("Conv", [x, f"{prefix}w", f"{prefix}b"], [f"{prefix}c"],
                            kernel_shape=[k.kernel, k.window_w], strides=[k.stride, k.stride],
                            pads=pads, group=k.groups)
    relu = helper.make_node("Relu", [f"{prefix}c"], [y])
    return [conv, relu], inits


def kernel_graph(kernel: Kernel, seed: int = 0) -> bytes:
    """A serialized one-operator ONNX model that runs ``kernel`` (convs with a fused ReLU,
    as they appear in real models) in ``kernel.precision``.

    int8: the fp32 graph quantized as deployed models are
    (:func:`~autocompress.hardware._qdq.quantize_static_int8`: QDQ, per-channel 7-bit int8
    weights, uint8 activations), so the measured graph carries a QuantizeLinear on its input
    and a DequantizeLinear on its output. fp16: the fp32 graph converted with float inputs
    and outputs, so it carries a Cast at each end. Boundary kinds are the conversion alone;
    context kinds are three-convolution chains (:data:`CONTEXT_KINDS`); layout kinds are ONNX
    Runtime's reorder into or out of its blocked layout alone (:data:`LAYOUT_KINDS`); the
    weight-streaming kind is a chain of matrix-vector products (:data:`STREAM_KINDS`).
    """
    if kernel.kind in STREAM_KINDS:
        return _stream_graph(kernel, seed).SerializeToString()
    if kernel.kind in BOUNDARY_KINDS:
        return _boundary_graph(kernel).SerializeToString()
    if kernel.kind in LAYOUT_KINDS:
        return _layout_graph(kernel).SerializeToString()
    if kernel.kind in CONTEXT_KINDS:
        model = _chain_graph(kernel, seed)
    else:
        model = _fp32_graph(kernel, seed)
    if kernel.precision == "fp32":
        return model.SerializeToString()
    ends = ["conv0", "relu0", "conv2", "relu2"] if kernel.kind == "island" else []
    if kernel.precision == "int8":
        return _qdq.quantize_qdq(model, seed=seed, nodes_to_exclude=ends)
    if kernel.precision == "fp16":
        return _qdq.to_fp16(model, nodes_to_exclude=ends)
    raise ValueError(f"unknown precision {kernel.precision!r}; known: {', '.join(PRECISIONS)}")


def overhead_graph() -> bytes:
    """The smallest real model: one Add on a single float. Its latency is the per-run cost."""
    return kernel_graph(Kernel("elementwise", 1, 1, 1, 1))


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


def _stream_graph(kernel: Kernel, seed: int) -> onnx.ModelProto:
    """``kernel.height`` MatMuls of a ``1 x in_channels`` row by square ``in_channels x
    in_channels`` weights of their own, in a row: a run reads every weight once and computes
    little, so its time per byte is what reading weights costs at that footprint."""
    if kernel.in_channels != kernel.out_channels or kernel.height < 1:
        raise ValueError(f"a weight-streaming chain has square weights and at least one "
                         f"layer, got {kernel}")
    rng = np.random.default_rng(seed)
    c = kernel.in_channels
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    x = "x"
    for i in range(kernel.height):
        w = rng.standard_normal((c, c), dtype=np.float32) / np.float32(np.sqrt(c))
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        y = "y" if i == kernel.height - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y], name=f"matmul{i}"))
        x = y
    row = [1, c]
    return _model(nodes, f"weights_{kernel.height}x{c}",
                  helper.make_tensor_value_info("x", TensorProto.FLOAT, row),
                  helper.make_tensor_value_info("y", TensorProto.FLOAT, row), inits)


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
            padded = {"pads": list(k.pads) * 2} if any(k.pads) else {}
            nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k.kernel] * 2,
                                      strides=[k.stride] * 2, **padded)]
    elif k.kind == "elementwise":
        in_shape = out_shape = [1, k.in_channels, k.height, k.width]
        nodes, inits, out_shape = _elementwise_nodes(k, in_shape, rng)
    else:  # pragma: no cover - KernelKind is closed
        raise ValueError(f"unknown kernel kind {k.kind}")
    return _model(nodes, f"kernel_{k.kind}",
                  helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape),
                  helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape), inits)


# The permutation each class of transposes is measured with, on 1 x C x H x W: rows of W
# elements moved whole; and C, H, W all reversed, which moves element by element.
_PERMS = {"transpose": [0, 2, 1, 3], "permute": [0, 3, 2, 1]}


def _elementwise_nodes(k: Kernel, shape: list[int], rng: np.random.Generator
                       ) -> tuple[list[onnx.NodeProto], list[TensorProto], list[int]]:
    """The nodes, initializers and output shape of an elementwise kernel of class ``k.op``
    (:data:`~autocompress.hardware._kernel.ELEMENTWISE_OPS`) over a ``shape`` tensor, its
    normalizations over the last axis (``width``); ``""``: an addition."""
    if k.op == "":
        other = numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "other")
        return [helper.make_node("Add", ["x", "other"], ["y"])], [other], shape
    if k.op == "gelu":
        return [helper.make_node("Gelu", ["x"], ["y"])], [], shape
    if k.op == "sigmoid":  # x * sigmoid(x), which ONNX Runtime fuses into QuickGelu
        return [helper.make_node("Sigmoid", ["x"], ["s"]),
                helper.make_node("Mul", ["x", "s"], ["y"])], [], shape
    if k.op == "softmax":
        return [helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [], shape
    if k.op == "norm":
        inits = [numpy_helper.from_array(rng.standard_normal(shape[-1]).astype(np.float32), n)
                 for n in ("gamma", "beta")]
        return [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"],
                                 axis=-1)], inits, shape
    if k.op in _PERMS:
        perm = _PERMS[k.op]
        return ([helper.make_node("Transpose", ["x"], ["y"], perm=perm)], [],
                [shape[a] for a in perm])
    raise ValueError(f"unknown elementwise op class {k.op!r}; known: "
                     f"{', '.join(ELEMENTWISE_OPS)}")


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


def _layout_graph(kernel: Kernel) -> onnx.ModelProto:
    """ONNX Runtime's ``ReorderInput`` (NCHW -> blocked NCHWc) or ``ReorderOutput`` (blocked
    -> NCHW) over a ``1 x in_channels x height x width`` tensor (``in_channels`` a multiple of
    16, so that the blocked tensor has the same shape whether blocks are 8 or 16 wide)."""
    if kernel.in_channels % 16:
        raise ValueError(f"a reorder is profiled on a multiple of 16 channels, "
                         f"got {kernel.in_channels}")
    shape = [1, kernel.in_channels, kernel.height, kernel.width]
    if kernel.kind == "reorder_in":
        node = helper.make_node("ReorderInput", ["x"], ["y"], domain=_NCHWC)
    else:
        node = helper.make_node("ReorderOutput", ["x"], ["y"], domain=_NCHWC,
                                channels=kernel.in_channels)
    graph = helper.make_graph([node], f"layout_{kernel.kind}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET),
                                                    helper.make_opsetid(_NCHWC, 1)])
    model.ir_version = 9
    return model
