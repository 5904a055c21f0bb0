"""What ONNX Runtime runs on a CPU: a model's graph after its own graph optimizations.

With full optimization (``ORT_ENABLE_ALL``) on a CPU, ONNX Runtime rewrites a graph before it
runs it: activations and residual additions are fused into the convolution before them, most
convolutions and poolings run in a blocked channel layout (NCHWc: operators of the
``com.microsoft.nchwc`` domain), ``ReorderInput`` / ``ReorderOutput`` nodes convert tensors
into and out of that layout where an operator without a blocked kernel reads them (the
multiplication of a squeeze-and-excitation block, a channel shuffle's transpose, a
LayerNormalization), and patterns such as GELU or a MatMul with a scale become single
operators. ONNX Runtime saves that graph when asked (``optimized_model_filepath``); this
module maps its nodes to kernels (:func:`runtime_kernels`), instead of guessing from the
exported graph which nodes the runtime fuses.

What a one-kernel profile measurement of a convolution runs is mapped the same way: a
``ReorderInput``, the convolution and a ``ReorderOutput`` (:func:`carried_layout`), so that
the convolution's own time can be fitted apart from the reorders that, inside a model, run
only where the layout changes.

Shapes come from shape inference on the exported graph: a blocked node is named after the
exported tensor it computes (``<tensor>_nchwc``), and a reorder keeps its tensor's shape.
The rewrite depends on the machine's vector width (8-channel blocks with AVX2, 16 with
AVX-512): the graph is the one ONNX Runtime makes *here*, which for a remote device of
another width is an approximation.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import replace
from typing import Any

import onnx

from autocompress.hardware._kernel import LAYOUT_KINDS, Kernel
from autocompress.hardware.kernels import FREE_OPS, NodeKernel, costed_node, inferred_shapes

__all__ = ["FILTER_SET_BLOCKS", "LAYOUT_KINDS", "as_run", "carried_layout", "nchwc_block",
           "optimized_graph", "probed_block", "runtime_kernels"]

NCHWC = "com.microsoft.nchwc"
_CONV_KINDS = ("conv", "conv1x1", "dwconv")
#: Output-channel blocks an NCHWc convolution kernel of ONNX Runtime (MLAS) computes in one
#: pass over its input: its filter set (``MaximumFilterSetSize``). A convolution of fewer
#: output channels than a set makes as many passes as one of a whole set.
FILTER_SET_BLOCKS = 4
#: The block :func:`nchwc_block` assumes where no runtime is here to ask (AVX2's).
_DEFAULT_BLOCK = 8
#: Operators of the rewritten graph costed as another operator.
_AS = {"FusedConv": "Conv", "FusedMatMul": "MatMul", "FusedGemm": "Gemm"}


def _ort() -> Any | None:
    try:
        import onnxruntime
    except ImportError:  # the profile-only install: estimates fall back to the rules
        return None
    return onnxruntime


def optimized_graph(model: onnx.ModelProto | bytes) -> onnx.ModelProto | None:
    """``model`` as ONNX Runtime's CPU provider rewrites it with full optimization (one
    thread), or ``None`` where onnxruntime is not installed or cannot load the model."""
    ort = _ort()
    if ort is None:
        return None
    data = model if isinstance(model, bytes) else model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    handle, path = tempfile.mkstemp(suffix=".onnx")
    os.close(handle)
    try:
        options.optimized_model_filepath = path
        try:
            ort.InferenceSession(data, sess_options=options,
                                 providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - a model it cannot load is estimated without it
            return None
        return onnx.load(path)
    finally:
        os.unlink(path)


def runtime_kernels(model: onnx.ModelProto) -> list[NodeKernel] | None:
    """The kernels ONNX Runtime runs for ``model`` (fp32, batch size 1), node by node of its
    optimized graph; ``None`` where that graph cannot be had (see :func:`optimized_graph`).

    Fused activations and additions are not nodes any more; reorders are kernels of the
    :data:`LAYOUT_KINDS` over their tensor; everything else is costed as
    :func:`~autocompress.hardware.kernels.kernels_of` costs an exported node.
    """
    optimized = optimized_graph(model)
    if optimized is None:
        return None
    return _map(optimized, model)


def _map(optimized: onnx.ModelProto, model: onnx.ModelProto) -> list[NodeKernel]:
    shapes = _shapes(optimized, model)
    weights = {init.name: list(init.dims) for init in optimized.graph.initializer}
    out: list[NodeKernel] = []
    for node in optimized.graph.node:
        op = node.op_type
        label = node.name or f"{op}_{len(out)}"
        if op in FREE_OPS:
            out.append(NodeKernel(label, op, None, "free"))
        elif op in ("ReorderInput", "ReorderOutput"):
            tensor = node.input[0] if op == "ReorderInput" else node.output[0]
            kind = "reorder_in" if op == "ReorderInput" else "reorder_out"
            out.append(_layout_node(label, op, kind, shapes.get(tensor, [])))
        else:
            costed = costed_node(node, label, shapes, op=_AS.get(op, op))
            if costed.kernel is not None and costed.kernel.kind in _CONV_KINDS:
                costed = replace(costed, kernel=_as_blocked(node, costed.kernel, weights))
            out.append(costed)
    return out


def _as_blocked(node: onnx.NodeProto, kernel: Kernel, weights: dict[str, list[int]]
                ) -> Kernel:
    """A convolution as the runtime runs it: outside the blocked layout ``unblocked`` (a
    generic path); in it, on the channels its reordered weights have, padded to the block
    (8 output channels run as 16 with 16-channel blocks; a 24-channel depthwise convolution
    as 32 groups). An input of fewer channels than a block is read as it is (NCHW)."""
    if node.domain != NCHWC:
        return replace(kernel, unblocked=True)
    w = weights.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or len(w) != 4:
        return kernel
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    out_channels, in_channels = w[0], w[1] * groups
    if kernel.kind == "dwconv":
        return replace(kernel, in_channels=groups, out_channels=groups, groups=groups)
    return replace(kernel, in_channels=max(in_channels, kernel.in_channels),
                   out_channels=max(out_channels, kernel.out_channels), groups=groups)


def _shapes(optimized: onnx.ModelProto, model: onnx.ModelProto) -> dict[str, list[int]]:
    """The shape of every tensor of ``optimized``: an exported tensor's inferred shape; a
    blocked node's output has the shape of the exported tensor it is named after
    (``<tensor>_nchwc``, ``<tensor>_bn_nchwc`` for a BatchNormalization run as a blocked
    depthwise convolution); a node that kept its exported name has its outputs' shapes;
    else a convolution's, pooling's, matrix product's, transpose's or channels-last
    reorder's output shape is computed from its inputs, and any other operator's output has
    its input's shape."""
    shapes = dict(inferred_shapes(model))
    for init in optimized.graph.initializer:
        shapes.setdefault(init.name, list(init.dims))
    exported = {node.name: list(node.output) for node in model.graph.node if node.name}
    for node in optimized.graph.node:
        outputs = [o for o in node.output if o and o not in shapes]
        if not outputs:
            continue
        sources: list[str] = []
        if node.domain == NCHWC and node.name.endswith("_nchwc"):
            stem = node.name.removesuffix("_nchwc")
            sources = [stem if stem in shapes else stem.removesuffix("_bn")]
        elif node.name in exported and len(exported[node.name]) == len(node.output):
            sources = exported[node.name]
        for out, source in zip(node.output, sources, strict=False):
            if out in outputs and source in shapes:
                shapes[out] = shapes[source]
        if node.output[0] not in shapes and node.input and node.input[0] in shapes:
            shapes[node.output[0]] = _output_shape(node, shapes)
    return shapes


def _output_shape(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> list[int]:
    """A convolution's, pooling's, matrix product's, transpose's or channels-last reorder's
    output shape from its inputs and attributes (the input's shape for any other
    operator)."""
    x = shapes[node.input[0]]
    op = _AS.get(node.op_type, node.op_type)
    if op == "ReorderInput" and len(x) == 4 and any(
            a.name == "channels_last" and a.i for a in node.attribute):
        return [x[0], x[3], x[1], x[2]]  # a permute from NHWC folded into the reorder
    if op == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"),
                    list(range(len(x)))[::-1])
        return [x[p] for p in perm] if len(perm) == len(x) else x
    if op in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in shapes:
        b = shapes[node.input[1]]
        trans = any(a.name == "transB" and a.i for a in node.attribute)
        return [*x[:-1], b[-2] if trans and len(b) >= 2 else b[-1]]
    if op not in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
                  "GlobalMaxPool") or len(x) != 4:
        return x
    if node.op_type.startswith("Global"):
        return [x[0], x[1], 1, 1]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    w = shapes.get(node.input[1], []) if node.op_type == "Conv" and len(node.input) > 1 else []
    kernel = attrs.get("kernel_shape") or (w[2:] if len(w) == 4 else [1, 1])
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    channels = w[0] if len(w) == 4 else x[1]
    size = [(x[2 + i] + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1)
            // strides[i] + 1 for i in range(2)]
    if attrs.get("auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER"):
        size = [-(-x[2 + i] // strides[i]) for i in range(2)]
    return [x[0], channels, *size]


def _layout_node(label: str, op: str, kind: str, shape: list[int]) -> NodeKernel:
    if len(shape) != 4:
        return NodeKernel(label, op, None, "no shape known; not costed")
    return NodeKernel(label, op, Kernel(kind, shape[1], shape[1], shape[2], shape[3]))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4096)
def _one_kernel(kernel: Kernel) -> tuple[NodeKernel, ...] | None:
    """What ONNX Runtime runs for ``kernel``'s one-kernel profile graph."""
    from autocompress.hardware._graphs import kernel_graph

    nodes = runtime_kernels(onnx.load_from_string(kernel_graph(kernel)))
    return None if nodes is None else tuple(nodes)


def carried_layout(kernel: Kernel) -> tuple[Kernel, ...] | None:
    """The reorders ONNX Runtime runs around ``kernel`` in its one-kernel profile graph
    (``None`` where the graph cannot be had)."""
    nodes = _one_kernel(kernel)
    if nodes is None:
        return None
    return tuple(n.kernel for n in nodes
                 if n.kernel is not None and n.kernel.kind in LAYOUT_KINDS)


def as_run(kernel: Kernel) -> Kernel:
    """``kernel`` as ONNX Runtime runs it, from its one-kernel graph: a convolution in the
    blocked layout on its padded channels, one outside it marked ``unblocked`` (``kernel``
    itself where that graph cannot be had, and for other kinds)."""
    if kernel.kind not in _CONV_KINDS or kernel.precision != "fp32":
        return kernel
    nodes = _one_kernel(kernel)
    ran = [n.kernel for n in nodes or () if n.kernel is not None
           and n.kernel.kind in _CONV_KINDS]
    return ran[0] if len(ran) == 1 else kernel


@functools.lru_cache(maxsize=1)
def probed_block() -> int | None:
    """The channel block of ONNX Runtime's NCHWc layout on this machine (8 with AVX2, 16 with
    AVX-512): the output channels it runs a 4-channel convolution on (:func:`as_run`), read
    from its optimized graph, not timed. ``None`` where onnxruntime is not installed or does
    not block that convolution (a CPU without the blocked layout)."""
    probe = Kernel("conv", 16, 4, 8, 8, kernel=3)
    if _one_kernel(probe) is None:
        return None
    ran = as_run(probe)
    return None if ran.unblocked else ran.out_channels


def nchwc_block() -> int:
    """:func:`probed_block`, or 8 where it cannot tell (what the cost formulas assume)."""
    return probed_block() or _DEFAULT_BLOCK
