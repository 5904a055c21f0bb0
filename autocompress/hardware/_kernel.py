"""The :class:`Kernel` record: one operator instance by kind, shapes and precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = ["BOUNDARY_KINDS", "CONTEXT_KINDS", "ELEMENTWISE_OPS", "FLAT_KINDS", "KINDS",
           "LAYOUT_KINDS", "PRECISIONS", "STREAM_KINDS", "WEIGHT_BYTES", "Kernel", "KernelKind",
           "Precision", "boundary_kind", "classify_conv"]

KernelKind = Literal["conv", "conv1x1", "dwconv", "gemm", "pool", "elementwise", "quantize",
                     "dequantize", "to_fp16", "from_fp16", "chain", "island", "reorder_in",
                     "reorder_out", "weights"]
#: Bytes per weight by the precision a kernel computes in.
WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
#: Kinds of the operators of a model.
KINDS: tuple[KernelKind, ...] = ("conv", "conv1x1", "dwconv", "gemm", "pool", "elementwise")
#: Kinds of the conversions at an edge where precision changes (elementwise on one tensor).
BOUNDARY_KINDS: tuple[KernelKind, ...] = ("quantize", "dequantize", "to_fp16", "from_fp16")
#: Kinds measured to see conversions in context: three 1x1 convolutions (``in_channels`` to
#: ``in_channels`` over ``height x width``) in a row, all in ``precision`` (``chain``), or
#: with only the middle one in ``precision`` and the others fp32 (``island``).
CONTEXT_KINDS: tuple[KernelKind, ...] = ("chain", "island")
#: Kinds of the layout conversions a runtime inserts between its own kernels (ONNX Runtime on
#: a CPU: into and out of its blocked NCHWc layout), over one ``in_channels x height x width``
#: tensor; measured where the backend's rules name them (``CostRules.layout_kernels``).
LAYOUT_KINDS: tuple[KernelKind, ...] = ("reorder_in", "reorder_out")
#: Kinds measured to see what reading a model's weights costs once they no longer fit in the
#: device's caches: ``height`` matrix-vector products in a row, each with its own
#: ``in_channels x out_channels`` fp32 weights (``weights``: ``height`` times 1 MiB at 512 x
#: 512), which the device reads once per run and barely computes with.
STREAM_KINDS: tuple[KernelKind, ...] = ("weights",)
#: Kinds over one tensor (or a matrix), whose output has the input's height and width.
FLAT_KINDS: tuple[KernelKind, ...] = ("gemm", "elementwise", *BOUNDARY_KINDS, *CONTEXT_KINDS,
                                      *LAYOUT_KINDS, *STREAM_KINDS)
#: Classes of elementwise operators that cost more per element than an addition, each measured
#: and fitted apart where a profile has such kernels (``Kernel.op``; ``""``: an addition,
#: multiplication, clip and the like): ``gelu`` (Gelu, and its fused forms), ``sigmoid``
#: (one transcendental function per element: Sigmoid, Tanh, Exp, ONNX Runtime's QuickGelu,
#: which is SiLU/Swish fused), ``softmax``, ``norm`` (LayerNormalization and reductions over
#: the last axis, costed on the elements they read), ``transpose`` (a permutation that keeps
#: the innermost axis, or a matrix transpose once adjacent axes are merged: runs of memory)
#: and ``permute`` (any other permutation: element by element, 15-20x slower per element on a
#: CPU; window partitions of MaxViT and Swin).
ELEMENTWISE_OPS: tuple[str, ...] = ("gelu", "sigmoid", "softmax", "norm", "transpose",
                                    "permute")
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
# The conversion kernel for each direct change of precision (others go through fp32).
_BOUNDARY_OF: dict[tuple[str, str], KernelKind] = {
    ("fp32", "int8"): "quantize", ("int8", "fp32"): "dequantize",
    ("fp32", "fp16"): "to_fp16", ("fp16", "fp32"): "from_fp16",
}


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
    ``kernel`` is the window's height and width; ``kernel_w``, where not 0, its width
    (a 1x7 or 7x1 convolution, as in Inception). ``padding``: the zeros a convolution or
    pooling adds on each side of its input (:attr:`pads`); -1, the usual case, is
    ``window // 2`` along each axis for a convolution (it keeps its size at stride 1, as every
    convolution of a profile's grid does) and none for pooling.
    ``unblocked``: the runtime runs this convolution outside its blocked channel layout (ONNX
    Runtime on a CPU, for channel counts off a multiple of 4 and some grouped convolutions:
    a generic path, up to 8x slower for a depthwise one); set from the runtime's own graph.
    ``op``: for an elementwise kernel, its class of operator (:data:`ELEMENTWISE_OPS`), or
    ``""`` for an addition and operators that cost like it.
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
    kernel_w: int = 0
    unblocked: bool = False
    op: str = ""
    padding: int = -1

    @property
    def window_w(self) -> int:
        """The window's width (``kernel`` where the window is square)."""
        return self.kernel_w or self.kernel

    @property
    def pads(self) -> tuple[int, int]:
        """The zeros added on each side of the input along its height and its width."""
        if self.kind not in ("conv", "conv1x1", "dwconv", "pool"):
            return 0, 0
        if self.padding >= 0:
            return self.padding, self.padding
        if self.kind == "pool":
            return 0, 0
        return self.kernel // 2, self.window_w // 2

    def _out_size(self, size: int, window: int, pad: int) -> int:
        if self.kind in FLAT_KINDS:
            return size
        if self.kind == "pool" and self.kernel == 0:
            return 1
        return (size + 2 * pad - window) // self.stride + 1

    @property
    def out_height(self) -> int:
        return self._out_size(self.height, self.kernel, self.pads[0])

    @property
    def out_width(self) -> int:
        return self._out_size(self.width, self.window_w, self.pads[1])

    @property
    def macs(self) -> int:
        if self.kind in ("conv", "conv1x1", "dwconv"):
            return (self.out_channels * self.out_height * self.out_width
                    * (self.in_channels // self.groups) * self.kernel * self.window_w)
        if self.kind in ("gemm", "weights"):
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
            return (self.out_channels * (self.in_channels // self.groups) * self.kernel
                    * self.window_w)
        if self.kind == "gemm":
            return self.in_channels * self.out_channels
        if self.kind == "weights":
            return self.height * self.in_channels * self.out_channels
        return 0

    @property
    def weight_bytes(self) -> int:
        """The bytes its weights take in its precision (:data:`WEIGHT_BYTES`)."""
        return self.weight_elements * WEIGHT_BYTES.get(self.precision, 4)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("kernel_w", "unblocked", "op"):  # the usual case: files as before
            if not data[name]:
                del data[name]
        if data["padding"] < 0:
            del data["padding"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Kernel:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def classify_conv(in_channels: int, out_channels: int, kernel: int, groups: int,
                  kernel_w: int = 0) -> KernelKind:
    if groups > 1 and groups == in_channels:
        return "dwconv"
    if kernel == 1 and kernel_w in (0, 1):
        return "conv1x1"
    return "conv"


def boundary_kind(source: str, target: str) -> KernelKind:
    """The conversion kernel for a direct change of precision ``source`` -> ``target``."""
    try:
        return _BOUNDARY_OF[(source, target)]
    except KeyError:
        raise ValueError(f"no single conversion from {source} to {target}; "
                         f"direct ones: {sorted(_BOUNDARY_OF)}") from None
