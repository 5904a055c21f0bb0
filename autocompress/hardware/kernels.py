"""Kernels: the unit a hardware profile measures and a latency model adds up.

A :class:`Kernel` describes one operator instance by its kind, shapes and precision. The same
record is built two ways: from a grid when profiling (:func:`kernel_graph` turns it into a
one-operator ONNX model, built with ``onnx`` alone so profiling needs no torch; int8 and fp16
versions go through ONNX Runtime's converters, see :mod:`autocompress.hardware._qdq`), and
from every node of a model to be estimated (:func:`kernels_of`, with a precision per node).

Which nodes cost nothing (fused into the node before them, or removed by int8 quantization)
and which regressors a kernel's latency is fitted on depend on the backend: its
:class:`~autocompress.hardware.rules.CostRules`. Functions here take them as ``rules`` and
default to the neutral rules.

Where precision changes along an edge of a mixed-precision model the tensor is converted: a
:class:`Boundary` (:func:`boundaries_of`) costs a ``quantize`` (fp32 -> int8),
``dequantize`` (int8 -> fp32), ``to_fp16`` or ``from_fp16`` kernel over its elements.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from autocompress.hardware._graphs import kernel_graph, overhead_graph
from autocompress.hardware._kernel import (
    _BOUNDARY_OF,
    BOUNDARY_KINDS,
    CONTEXT_KINDS,
    ELEMENTWISE_OPS,
    KINDS,
    LAYOUT_KINDS,
    PRECISIONS,
    STREAM_KINDS,
    WEIGHT_BYTES,
    Kernel,
    KernelKind,
    Precision,
    boundary_kind,
    classify_conv,
)
from autocompress.hardware.rules import NEUTRAL_RULES, CostRules

__all__ = ["BOUNDARY_KINDS", "CONTEXT_KINDS", "ELEMENTWISE_OPS", "FREE_OPS", "KINDS",
           "LAYOUT_KINDS", "PRECISIONS", "STREAM_KINDS", "WEIGHT_BYTES",
           "Boundary", "Kernel", "KernelKind", "NodeKernel", "Precision", "boundaries_of",
           "boundary_kind", "classify_conv", "costed_node", "features", "inferred_shapes",
           "kernel_graph", "kernels_of", "overhead_graph"]

_logger = logging.getLogger(__name__)

# Operators that only change metadata or are removed by graph optimization.
FREE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant",
            "Dropout", "Cast"}
_POOL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "MaxPool", "AveragePool", "ReduceMean"}
_ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid",
                    "HardSwish", "Tanh", "LeakyRelu", "Concat", "Pad", "Transpose", "Slice",
                    "Split", "BatchNormalization", "Softmax", "Max", "Min", "Neg", "Exp",
                    "Expand", "Erf", "LayerNormalization", "ReduceL2", "ReduceSum",
                    "ReduceMax",
                    # ONNX Runtime's fused activations and normalizations (its optimized graph)
                    "Gelu", "QuickGelu", "FastGelu", "BiasGelu", "SkipLayerNormalization",
                    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"}
#: The class of each elementwise operator that costs more per element than an addition
#: (:data:`~autocompress.hardware._kernel.ELEMENTWISE_OPS`); Transpose is classed by its
#: permutation (:func:`_transpose_op`).
_OP_CLASS = {
    **dict.fromkeys(("Gelu", "FastGelu", "BiasGelu", "Erf"), "gelu"),
    **dict.fromkeys(("QuickGelu", "Sigmoid", "Tanh", "Exp", "Softplus"), "sigmoid"),
    **dict.fromkeys(("Softmax", "LogSoftmax"), "softmax"),
    **dict.fromkeys(("LayerNormalization", "SimplifiedLayerNormalization",
                     "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
                     "InstanceNormalization", "GroupNorm", "ReduceL2", "ReduceSum", "ReduceMax",
                     "ReduceMin", "ReduceSumSquare", "ReduceL1"), "norm"),
}
#: Reductions: costed on the elements they read, not the few they write.
_REDUCE_OPS = {"ReduceL2", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceSumSquare",
               "ReduceL1"}
_FUSED = "fused into "


def features(kernel: Kernel, rules: CostRules = NEUTRAL_RULES) -> np.ndarray:
    """Regressors of the linear latency model for ``kernel`` under ``rules`` (default: the
    neutral ones), all non-decreasing in the channel counts (so a fit with non-negative
    weights is monotone in channels)."""
    return rules.features(kernel)


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


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """The shape of every tensor of ``model`` (unknown dimensions as 1), by shape inference."""
    return _infer(model)[0]


def _infer(model: onnx.ModelProto) -> tuple[dict[str, list[int]], set[str]]:
    """Shapes of every tensor, and the names of float tensors (activations that precision
    conversions apply to).

    Shape inference cannot follow shapes computed in the graph (a Pad whose pads come from
    the input's size, as Swin's windows): where it leaves float tensors with unknown
    dimensions, the model is run once on zeros in ONNX Runtime, without optimizations, to
    read their shapes (where onnxruntime is installed; else unknown dimensions count as 1).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    floats: set[str] = set()
    unknown: list[str] = []
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            floats.add(info.name)
            if any(d.dim_value <= 0 for d in dims):
                unknown.append(info.name)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    if unknown:
        shapes.update(_run_shapes(model, unknown))
    return shapes, floats


def _run_shapes(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, list[int]]:
    """The shapes of the float tensors ``names`` of ``model``, from one run on zeros in ONNX
    Runtime (empty where onnxruntime is not installed or the run fails)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names if n not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1   # no thread pool on every core for one probe
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        feeds = {}
        for arg in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
            dtype = np.float32 if arg.type == "tensor(float)" else np.int64
            feeds[arg.name] = np.zeros(shape, dtype=dtype)
        wanted = [n for n in names if n in {o.name for o in session.get_outputs()}]
        values = session.run(wanted, feeds)
    except Exception:  # noqa: BLE001 - the estimate then counts unknown dimensions as 1
        _logger.debug("could not run the model to read tensor shapes", exc_info=True)
        return {}
    return {n: list(v.shape) for n, v in zip(wanted, values, strict=True)}


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _padding(node: onnx.NodeProto, usual: tuple[int, int]) -> int:
    """:attr:`Kernel.padding` of a convolution or pooling node whose usual pads along height
    and width are ``usual``: -1 where the node's are those, else the pad on each side (the
    mean of the four where they differ: an asymmetric padding is rare in exported models)."""
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto == "VALID":
        pads = [0, 0, 0, 0]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):  # as a window // 2 padding gives at odd windows
        window = [int(k) for k in _attr(node, "kernel_shape", [1, 1])]
        pads = [window[0] // 2, window[-1] // 2] * 2
    else:
        pads = [int(p) for p in _attr(node, "pads", [0, 0, 0, 0])]
    if len(pads) != 4 or pads == [*usual, *usual]:
        return -1
    return sum(pads) // 4


def _chw(shape: list[int]) -> tuple[int, int, int]:
    """(channels, height, width) of an activation, flattening what is not NCHW: the second
    dimension is the channels, the leading one (a batch of attention heads, the rows of a
    matrix) is folded into the height, so that the element count is the tensor's."""
    if len(shape) == 4:
        return shape[1], shape[0] * shape[2], shape[3]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2], 1
    if len(shape) == 2:
        return shape[1], shape[0], 1
    total = int(np.prod(shape)) if shape else 1
    return total, 1, 1


def _readers(model: onnx.ModelProto) -> dict[str, int]:
    """How many node inputs read each tensor (graph outputs do not count)."""
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    return readers


def kernels_of(model: onnx.ModelProto, precisions: Mapping[str, str] | None = None, *,
               rules: CostRules = NEUTRAL_RULES) -> list[NodeKernel]:
    """Map every node of ``model`` (batch size 1) to the kernel that costs its time.

    ``precisions`` maps node names of ``model`` to ``fp32``, ``fp16`` or ``int8``: a node it
    does not name runs in fp32, except a free or fused node, which follows its input; an
    activation stays fused into its convolution only in the same precision, and in int8 an
    activation of ``rules.int8_removed_ops`` after an int8 node is removed. Without it every
    node is fp32. ``rules`` (default: the neutral ones) are the backend's: which operators
    fuse into the node before them. Raises ``ValueError`` for unknown precisions or node
    names.
    """
    shapes = _infer(model)[0]
    nodes = _fp32_kernels(model, shapes, rules)
    if precisions is None:
        return nodes
    return _assign_precisions(model, nodes, precisions, shapes, rules)


def _fused_into(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto],
                readers: Mapping[str, int], anchors: Mapping[int, str], rules: CostRules
                ) -> str | None:
    """The operator ``node`` is fused into under ``rules``, or ``None``."""
    if node.op_type not in rules.fused_ops or not node.input:
        return None
    for name in node.input if rules.fuse_chains else node.input[:1]:
        source = producers.get(name)
        if source is None or readers.get(name) != 1:
            continue
        if source.op_type in rules.fusing_ops:
            return source.op_type
        if rules.fuse_chains and source.op_type in rules.fused_ops:
            return anchors.get(id(source), source.op_type)
    return None


def _fp32_kernels(model: onnx.ModelProto, shapes: dict[str, list[int]], rules: CostRules
                  ) -> list[NodeKernel]:
    readers = _readers(model)
    producers = {name: node for node in model.graph.node for name in node.output}
    anchors: dict[int, str] = {}  # fused node -> the operator its group is fused into
    out: list[NodeKernel] = []
    for node in model.graph.node:
        op = node.op_type
        label = node.name or f"{op}_{len(out)}"
        if op in FREE_OPS:
            out.append(NodeKernel(label, op, None, "free"))
            continue
        anchor = _fused_into(node, producers, readers, anchors, rules)
        if anchor is not None:
            anchors[id(node)] = anchor
            out.append(NodeKernel(label, op, None, _FUSED + anchor))
            continue
        out.append(costed_node(node, label, shapes))
    return out


def costed_node(node: onnx.NodeProto, label: str, shapes: Mapping[str, list[int]], *,
                op: str | None = None) -> NodeKernel:
    """The kernel of a node that is neither free nor fused, with tensor ``shapes``; ``op``
    costs it as another operator (a runtime's fused ``FusedConv`` as ``Conv``)."""
    op = op or node.op_type
    x = shapes.get(node.input[0], []) if node.input else []
    y = shapes.get(node.output[0], []) if node.output else []
    if op == "Conv" and len(x) == 4 and len(y) == 4:
        w = shapes.get(node.input[1], [])
        window = [int(d) for d in w[2:]] if len(w) == 4 else [
            int(d) for d in _attr(node, "kernel_shape", [1, 1])]
        kernel_size, kernel_w = window[0], window[-1]
        groups = int(_attr(node, "group", 1))
        if groups > x[1]:
            # a depthwise convolution a runtime runs on channels padded to its block (ONNX
            # Runtime's blocked layout: 32 groups over 24 channels): one group per channel
            groups = x[1]
        strides = _attr(node, "strides", [1, 1])
        kernel_w = 0 if kernel_w == kernel_size else kernel_w
        kind = classify_conv(x[1], y[1], kernel_size, groups, kernel_w)
        return NodeKernel(label, node.op_type, Kernel(
            kind, in_channels=x[1], out_channels=y[1], height=x[2], width=x[3],
            kernel=kernel_size, stride=int(strides[0]), groups=groups, kernel_w=kernel_w,
            padding=_padding(node, (kernel_size // 2, window[-1] // 2))))
    if op in ("Gemm", "MatMul") and x and y:
        rows = int(np.prod(x[:-1])) if len(x) > 1 else 1
        return NodeKernel(label, node.op_type, Kernel(
            "gemm", in_channels=x[-1], out_channels=y[-1], height=rows, width=1))
    if op == "Einsum" and y:
        product = _einsum_product(_attr(node, "equation", b""),
                                  [shapes.get(i, []) for i in node.input])
        if product is not None:
            rows, inner, cols = product
            return NodeKernel(label, node.op_type, Kernel(
                "gemm", in_channels=inner, out_channels=cols, height=rows, width=1))
    if op in _POOL_OPS and x:
        c, h, w_ = _chw(x)
        global_pool = op.startswith("Global") or op == "ReduceMean"
        k_size = 0 if global_pool else int(_attr(node, "kernel_shape", [2])[0])
        stride = 1 if global_pool else int(_attr(node, "strides", [k_size])[0])
        return NodeKernel(label, node.op_type, Kernel(
            "pool", in_channels=c, out_channels=c, height=h, width=w_,
            kernel=k_size, stride=stride,
            padding=-1 if global_pool else _padding(node, (0, 0))))
    if y:
        c, h, w_ = _chw(x if op in _REDUCE_OPS and x else y)
        note = "" if op in _ELEMENTWISE_OPS else "unmodelled op, costed as elementwise"
        op_class = _transpose_op(x, _attr(node, "perm", None)) if op == "Transpose" else \
            _OP_CLASS.get(op, "")
        return NodeKernel(label, node.op_type, Kernel(
            "elementwise", in_channels=c, out_channels=c, height=h, width=w_, op=op_class),
            note)
    return NodeKernel(label, node.op_type, None, "no shape known; not costed")


def _transpose_op(shape: Sequence[int], perm: Sequence[int] | None) -> str:
    """``transpose`` for a permutation that moves runs of memory (it keeps the innermost
    axis, or is a matrix transpose once axes of size 1 are dropped and axes that stay
    neighbours are merged); ``permute`` for any other, which moves element by element."""
    if not shape:
        return "transpose"
    rank = len(shape)
    perm = list(perm) if perm is not None else list(range(rank))[::-1]
    kept = [a for a in perm if shape[a] != 1]
    merged = [a for i, a in enumerate(kept) if i == 0 or a != kept[i - 1] + 1]
    innermost = max((a for a in range(rank) if shape[a] != 1), default=0)
    if len(merged) <= 2 or kept[-1] == innermost:
        return "transpose"
    return "permute"


def _einsum_product(equation: bytes | str, shapes: Sequence[Sequence[int]]
                    ) -> tuple[int, int, int] | None:
    """(rows, inner, columns) of a two-operand Einsum as a matrix product, batches folded
    into the rows (attention's products of queries and keys, as MaxViT exports them); None
    where the equation is not such a product."""
    text = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    if "->" not in text or "." in text or len(shapes) != 2:
        return None
    inputs, output = text.split("->")
    terms = inputs.split(",")
    if len(terms) != 2 or any(len(t) != len(s) for t, s in zip(terms, shapes, strict=True)):
        return None
    size: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        for letter, dim in zip(term, shape, strict=True):
            size[letter] = int(dim)
    first, second = terms
    inner = [a for a in size if a in first and a in second and a not in output]
    cols = [a for a in output if a in second and a not in first]
    rows = [a for a in output if a not in cols]
    if not inner or any(a not in size for a in output):
        return None

    def prod(letters: list[str]) -> int:
        return int(np.prod([size[a] for a in letters])) if letters else 1

    return prod(rows), prod(inner), prod(cols)


# ------------------------------------------------------------------ mixed precision

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


def _check_precisions(nodes: Sequence[NodeKernel], precisions: Mapping[str, str]) -> None:
    unknown = sorted({str(p) for p in precisions.values()} - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}; known: {list(PRECISIONS)}")
    missing = sorted(set(precisions) - {n.node for n in nodes})
    if missing:
        example = next((n.node for n in nodes if n.kernel is not None), "")
        raise ValueError(
            f"precisions name {len(missing)} node(s) that are not in the model, e.g. "
            f"{missing[:3]}; use node names of the exported fp32 ONNX graph such as "
            f"{example!r}")


def _assign_precisions(model: onnx.ModelProto, nodes: list[NodeKernel],
                       precisions: Mapping[str, str], shapes: dict[str, list[int]],
                       rules: CostRules) -> list[NodeKernel]:
    """Set each node's precision: the one ``precisions`` names it with; a node it does not
    name runs in fp32, except a free or fused node (reshapes, an activation fused into its
    convolution), which follows the node producing its first input.

    A fused node stays fused only in its producer's precision; in int8, an activation of
    ``rules.int8_removed_ops`` that is its int8 producer's only reader is removed by
    quantization.
    """
    _check_precisions(nodes, precisions)
    producers = _producers(model)
    readers = _readers(model)
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
        if kernel is None and note.startswith(_FUSED) and precision != source_precision:
            c, h, w = _chw(shapes.get(proto.output[0], []))
            kernel = Kernel("elementwise", c, c, h, w)
            note = f"not fused: its {note.removeprefix(_FUSED)} runs in {source_precision}"
        if (kernel is not None and precision == "int8" and source_precision == "int8"
                and proto.op_type in rules.int8_removed_ops
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
