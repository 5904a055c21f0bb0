"""A deterministic stand-in device for tests and CI: ``--backend synthetic``.

Its "measured" latency of an ONNX model is a documented function of the graph, the same on
every machine and at every call, so that tests of profiling, estimating, budgets and
mixed-precision logic can assert exact behaviour without timing anything. Outputs are real:
:meth:`SyntheticBackend.run` runs the model with ONNX Runtime on the CPU, so accuracy checks
work. It describes no real hardware; use it for nothing but tests, CI and demonstrations.

**The formula** (``synthetic-1``; milliseconds), for a model at batch size 1::

    latency = scale * (OVERHEAD_MS + sum over nodes of cost(kernel)
                                    + sum over precision boundaries of cost(conversion))
    cost(kernel) = COEFFICIENTS[kind] . neutral_features(kernel)        (fp32)
    int8 kernels: the same constant, every other coefficient times INT8_FACTOR

Nodes map to kernels with :func:`~autocompress.hardware.kernels.kernels_of` under
:data:`SYNTHETIC_RULES` (the neutral rules: ReLU and Clip fuse into the Conv before them and
are removed after an int8 producer; reshapes and casts are free; unknown operators cost as
elementwise). :func:`~autocompress.hardware.rules.neutral_features` are, by kind:

* conv, conv1x1, dwconv, gemm: ``[1, MACs, input elements, output elements, weights]``
* pool: ``[1, input elements, output elements]``
* elementwise, quantize, dequantize: ``[1, elements]``

A QDQ (int8) graph is costed as its fp32 structure with its int8 nodes
(:func:`~autocompress.hardware._qdq.split_qdq`) plus one ``quantize`` or ``dequantize``
conversion wherever precision changes along an edge
(:func:`~autocompress.hardware.kernels.boundaries_of`); a lone QuantizeLinear or
DequantizeLinear costs as that conversion. The magnitudes put a builtin resnet20 at 1x1x8x8
near 0.1 ms and at 1x1x28x28 near 0.8 ms, as ONNX Runtime on one thread of a small CPU, with
the per-run overhead a small part of either.

``channel_block`` (default 1: none) makes the device run convolutions in blocks of
channels: a conv, conv1x1 or dwconv kernel whose channel counts are not all multiples of
the block costs as the kernel with its counts rounded up to the block, times
:data:`UNALIGNED_FACTOR` (the slower path a runtime takes off its blocked layout).

``scale`` multiplies everything: ``scale=0.4`` simulates a host 2.5x faster, ``2.5`` one 2.5x
slower. It defaults to the environment variable ``AUTOCOMPRESS_SYNTHETIC_SCALE`` (else 1.0)
and is recorded in the backend's settings, so a profile remembers it.

A profile of this backend fits its kernels nearly exactly (the fit is linear in the same
regressors); its estimates fall short of :meth:`measure` only by the cost of the one-element
Add that every profile's overhead graph includes, once per costed node (about 2% of resnet20
at 8x8).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx

from autocompress.exceptions import ExportError, ProfileError
from autocompress.hardware._kernel import Kernel
from autocompress.hardware._qdq import is_qdq, split_qdq
from autocompress.hardware.backends._base import Backend, LatencyMeasurement, MeasureSettings
from autocompress.hardware.backends._registry import register_backend
from autocompress.hardware.backends.onnxruntime import OnnxRuntimeBackend
from autocompress.hardware.kernels import NodeKernel, boundaries_of, kernels_of
from autocompress.hardware.rules import CostRules, neutral_features

__all__ = ["COEFFICIENTS", "INT8_FACTOR", "OVERHEAD_MS", "SCALE_ENV", "SYNTHETIC_RULES",
           "SyntheticBackend", "synthetic_latency_ms"]

#: The environment variable that sets the default ``scale``.
SCALE_ENV = "AUTOCOMPRESS_SYNTHETIC_SCALE"
#: The version of the formula; it changes whenever a number here does.
VERSION = "synthetic-1"
#: The cost of one run of any model (ms).
OVERHEAD_MS = 0.008
#: Weights (ms) of each kind's regressors (:func:`neutral_features`), in their order.
COEFFICIENTS: Mapping[str, tuple[float, ...]] = MappingProxyType({
    #            const   per MAC  per input per output per weight
    "conv":     (1.0e-3, 2.0e-8, 1.0e-7, 1.0e-7, 2.0e-8),
    "conv1x1":  (1.0e-3, 2.0e-8, 1.0e-7, 1.0e-7, 2.0e-8),
    "dwconv":   (1.0e-3, 1.0e-7, 1.0e-7, 1.0e-7, 2.0e-8),
    "gemm":     (1.0e-3, 4.0e-8, 1.0e-7, 1.0e-7, 4.0e-8),
    #            const   per input per output
    "pool":     (5.0e-4, 1.0e-7, 1.0e-7),
    #            const   per element
    "elementwise": (5.0e-5, 2.0e-7),
    "quantize":    (3.0e-4, 4.0e-7),
    "dequantize":  (3.0e-4, 3.0e-7),
})
#: int8 kernels cost this fraction of fp32's work (their constant is fp32's).
INT8_FACTOR = 0.5
#: Off a ``channel_block``, a convolution costs its rounded-up kernel times this.
UNALIGNED_FACTOR = 1.3
_BLOCKED_KINDS = ("conv", "conv1x1", "dwconv")
#: The cost rules of the synthetic device: the neutral ones.
SYNTHETIC_RULES = CostRules()
_CONVERSION_OPS = {"QuantizeLinear": "quantize", "DequantizeLinear": "dequantize"}


def _aligned(kernel: Kernel, block: int) -> tuple[Kernel, float]:
    """The kernel a device with ``block``-channel blocks runs for ``kernel``, and the factor
    on its cost."""
    if block <= 1 or kernel.kind not in _BLOCKED_KINDS:
        return kernel, 1.0
    up = [-(-c // block) * block for c in (kernel.in_channels, kernel.out_channels)]
    if up == [kernel.in_channels, kernel.out_channels]:
        return kernel, 1.0
    groups = up[0] if kernel.kind == "dwconv" else kernel.groups
    return replace(kernel, in_channels=up[0], out_channels=up[1], groups=groups), \
        UNALIGNED_FACTOR


def _kernel_ms(kernel: Kernel, block: int = 1) -> float:
    kernel, factor = _aligned(kernel, block)
    return factor * _plain_kernel_ms(kernel)


def _plain_kernel_ms(kernel: Kernel) -> float:
    weights = np.array(COEFFICIENTS[kernel.kind])
    if kernel.precision == "int8" and kernel.kind not in ("quantize", "dequantize"):
        weights = np.concatenate([weights[:1], weights[1:] * INT8_FACTOR])
    return float(weights @ neutral_features(kernel))


def _node_ms(node: NodeKernel, block: int = 1) -> float:
    if node.kernel is None:
        return 0.0
    conversion = _CONVERSION_OPS.get(node.op_type)
    if conversion is not None:  # a Q or DQ without its partner: the conversion alone
        k = node.kernel
        return _kernel_ms(Kernel(conversion, k.in_channels, k.out_channels,  # type: ignore[arg-type]
                                 k.height, k.width, precision="int8"))
    return _kernel_ms(node.kernel, block)


def synthetic_latency_ms(onnx_model: bytes | onnx.ModelProto, scale: float = 1.0,
                         channel_block: int = 1) -> float:
    """The synthetic device's latency of ``onnx_model`` in ms (the module docstring's
    formula)."""
    try:
        model = (onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes)
                 else onnx_model)
    except Exception as exc:
        raise ExportError(f"not a readable ONNX model: {exc}") from exc
    precisions: dict[str, str] | None = None
    if is_qdq(model):
        model, precisions = split_qdq(model)
    nodes = kernels_of(model, precisions, rules=SYNTHETIC_RULES)
    total = OVERHEAD_MS + sum(_node_ms(node, channel_block) for node in nodes)
    if precisions:
        total += sum(_kernel_ms(b.kernel) for b in boundaries_of(model, nodes))
    return scale * total


def _default_scale() -> float:
    text = os.environ.get(SCALE_ENV, "").strip()
    if not text:
        return 1.0
    try:
        return float(text)
    except ValueError:
        raise ProfileError(f"{SCALE_ENV}={text!r} is not a number; set it to a positive "
                           "factor such as 0.4 (a host 2.5x faster) or unset it") from None


@register_backend("synthetic")
class SyntheticBackend(Backend):
    """A deterministic stand-in device (see the module docstring): ``measure`` returns the
    synthetic latency exactly, ``run`` computes real outputs with ONNX Runtime's CPU.

    ``scale`` multiplies every latency (default: ``$AUTOCOMPRESS_SYNTHETIC_SCALE``, else 1);
    ``channel_block`` makes convolutions cheapest at multiples of that many channels.
    """

    cost_rules = SYNTHETIC_RULES
    summary = "computes a deterministic latency formula on any machine"

    def __init__(self, scale: float | None = None, channel_block: int = 1) -> None:
        value = _default_scale() if scale is None else scale
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value > 0):
            source = "scale" if scale is not None else SCALE_ENV
            raise ProfileError(f"the synthetic backend's scale must be a positive number, "
                               f"not {value!r} (from {source})")
        self.scale = float(value)
        if isinstance(channel_block, bool) or not isinstance(channel_block, int) or \
                channel_block < 1:
            raise ProfileError(f"the synthetic backend's channel_block must be a positive "
                               f"integer, not {channel_block!r}")
        self.channel_block = channel_block
        self._runner: OnnxRuntimeBackend | None = None

    def version(self) -> str:
        return VERSION

    @property
    def precisions(self) -> tuple[str, ...]:
        return ("fp32", "int8")

    def settings(self) -> dict[str, Any]:
        return {"scale": self.scale, "channel_block": self.channel_block}

    def describe_device(self) -> dict[str, Any]:
        return {"cpu": "synthetic", "scale": self.scale}

    def measure(
        self, onnx_model: bytes, settings: MeasureSettings | None = None
    ) -> LatencyMeasurement:
        ms = synthetic_latency_ms(onnx_model, self.scale, self.channel_block)
        return LatencyMeasurement(median_ms=ms, p25_ms=ms, p75_ms=ms, runs=1, stable=True)

    def run(self, onnx_model: bytes, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        if self._runner is None:
            self._runner = OnnxRuntimeBackend(threads=1)
        return self._runner.run(onnx_model, inputs, batch_size)
