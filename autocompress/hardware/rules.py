"""Cost rules: what a backend does to a graph that decides what each node costs.

A latency model is fitted from a profile file, possibly on a machine without the backend
that measured it, so every backend declares its :class:`CostRules` as plain data on its
class (:attr:`Backend.cost_rules <autocompress.hardware.backends.Backend.cost_rules>`),
reachable by the backend's name without importing its runtime
(:func:`autocompress.hardware.backends.rules_for`). The rules say

* which operators cost nothing because the backend fuses them into the node before them
  (``fused_ops`` after one of ``fusing_ops``; with ``fuse_chains``, also after a node that is
  itself fused or fusable, as compilers fuse chains of elementwise operators);
* which activations cost nothing after an int8 producer (the QDQ quantizer folds their
  range into the producer's output quantization);
* which regressors (:attr:`CostRules.features`) a kernel's fitted latency is linear in;
* optionally, what the runtime really runs (:attr:`CostRules.lowering`): the kernels of the
  graph as the runtime rewrites it, and the layout conversions it runs around a one-kernel
  profile graph (:attr:`CostRules.carried_layout`), measured as :attr:`layout_kernels`;
* optionally, which chains of weights show what reading weights costs beyond the caches
  (:attr:`CostRules.stream_kernels`);
* optionally, which kernels the runtime runs on a path of their own, to be fitted apart
  (:attr:`CostRules.fit_apart`).

Every feature function must return regressors that never decrease with channel counts, so
that a fit with non-negative weights is monotone in channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autocompress.hardware._kernel import BOUNDARY_KINDS, CONTEXT_KINDS, LAYOUT_KINDS, Kernel

if TYPE_CHECKING:
    import onnx

    from autocompress.hardware.kernels import NodeKernel

__all__ = ["NEUTRAL_RULES", "CarriedFn", "CostRules", "FeatureFn", "LoweringFn", "neutral_features"]

FeatureFn = Callable[[Kernel], np.ndarray]
#: A model -> the kernels the runtime runs for it, or ``None`` where that cannot be had here.
LoweringFn = Callable[["onnx.ModelProto"], "list[NodeKernel] | None"]
#: A profile kernel -> the layout kernels its one-kernel graph runs besides it (``None``:
#: cannot be had here).
CarriedFn = Callable[[Kernel], "tuple[Kernel, ...] | None"]


def neutral_features(kernel: Kernel) -> np.ndarray:
    """Regressors that suit any backend, in every precision: a constant, and for
    convolutions and gemm the multiply-adds, input, output and weight elements; for pooling
    the input and output elements; for one-tensor kinds (elementwise, conversions) the
    elements. All are non-decreasing in the channel counts."""
    if kernel.kind == "elementwise" or kernel.kind in (*BOUNDARY_KINDS, *CONTEXT_KINDS,
                                                       *LAYOUT_KINDS):
        return np.array([1.0, kernel.out_elements], dtype=float)
    if kernel.kind == "pool":
        return np.array([1.0, kernel.in_elements, kernel.out_elements], dtype=float)
    return np.array([1.0, kernel.macs, kernel.in_elements, kernel.out_elements,
                     kernel.weight_elements], dtype=float)


@dataclass(frozen=True)
class CostRules:
    """How one backend turns graph nodes into costed kernels (see the module docstring).

    The defaults are the neutral rules: ReLU and Clip fuse into a preceding Conv (every
    inference runtime we know does this), the same two are removed after an int8 producer
    (ONNX Runtime's QDQ quantizer, which writes every int8 model here, removes them), and
    :func:`neutral_features`.
    """

    #: Operators that cost nothing when they read a fusing node's output as its only reader.
    fused_ops: frozenset[str] = frozenset({"Relu", "Clip"})
    #: Operators that others fuse into.
    fusing_ops: frozenset[str] = frozenset({"Conv"})
    #: Whether fusion looks at every activation input and continues through fused and
    #: fusable operators (compilers such as TVM), or only at the first input, directly
    #: after a fusing operator (ONNX Runtime).
    fuse_chains: bool = False
    #: Activations removed after an int8 producer whose only reader they are.
    int8_removed_ops: frozenset[str] = frozenset({"Relu", "Clip"})
    #: Regressors of a kernel's latency, by kind and precision.
    features: FeatureFn = neutral_features
    #: The kernels the runtime runs for a model, from its own optimized graph (fp32). Used,
    #: with :attr:`carried_layout`, when the profile measured :attr:`layout_kernels`.
    lowering: LoweringFn | None = None
    #: The layout kernels a one-kernel profile graph runs besides its kernel.
    carried_layout: CarriedFn | None = None
    #: A profile kernel as the runtime runs it (ONNX Runtime: a convolution on the channels
    #: its blocked layout pads to, or marked ``unblocked`` outside that layout), so that it is
    #: fitted as the model nodes :attr:`lowering` gives are costed; used with it.
    as_run: Callable[[Kernel], Kernel] | None = None
    #: Layout conversions (:data:`~autocompress.hardware.kernels.LAYOUT_KINDS`) a profile of
    #: this backend measures.
    layout_kernels: tuple[Kernel, ...] = ()
    #: Weight-streaming chains (:data:`~autocompress.hardware.kernels.STREAM_KINDS`) a profile
    #: of this backend measures: what reading weights costs at each footprint, so that a
    #: model whose weights outgrow the caches pays for reading them (see
    #: :class:`~autocompress.hardware.latency.WeightStreaming`).
    stream_kernels: tuple[Kernel, ...] = ()
    #: The weight elements a kernel reads per run, where the runtime skips some
    #: (:attr:`Kernel.weight_elements` where ``None``): what a model whose weights outgrow
    #: the caches pays to read (see :class:`~autocompress.hardware.latency.WeightStreaming`).
    weights_read: Callable[[Kernel], int] | None = None
    #: The key of a fit apart from its kind's for a kernel (as :attr:`as_run` gives it) that
    #: this backend runs on a path of its own, or ``None`` (ONNX Runtime: a pointwise fp32
    #: convolution over fewer input channels than its block, whose input MLAS reads as it
    #: is); besides the fits apart every backend gets
    #: (:func:`~autocompress.hardware.latency.fit_key`).
    fit_apart: Callable[[Kernel], str | None] | None = None
    #: Kernels a profile of this backend measures besides the default grid, and fits with it
    #: (ONNX Runtime: grouped convolutions and convolutions on channel counts off a multiple
    #: of 4, which it runs outside its blocked layout, and elementwise operators of each
    #: class of ``Kernel.op``; estimates fit each apart).
    grid_kernels: tuple[Kernel, ...] = ()


#: The neutral rules: what a backend without its own gets, and what estimates without a
#: backend (``kernels_of(model)``) use.
NEUTRAL_RULES = CostRules()
