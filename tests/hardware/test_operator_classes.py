"""Elementwise operators costed by their class (GELU, SiLU, softmax, LayerNorm, two kinds of
transposes), Einsum costed as the matrix product it is, and the device factor of
``autocompress calibrate`` shrunk where it does not stand out of the references' scatter.

Profiles here are built by hand from known laws, so every figure asserted is exact; the
graphs that run are checked for what ONNX Runtime makes of them, not for how fast.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from autocompress.hardware import HardwareProfile, LatencyModel
from autocompress.hardware.backends import LatencyMeasurement
from autocompress.hardware.backends._ort_lowering import runtime_kernels
from autocompress.hardware.backends.onnxruntime import ELEMENTWISE_KERNELS
from autocompress.hardware.kernels import (
    ELEMENTWISE_OPS,
    Kernel,
    NodeKernel,
    costed_node,
    kernel_graph,
)
from autocompress.hardware.latency import SPLIT_KEYS, fit_key
from autocompress.hardware.profile import KernelMeasurement
from autocompress.study import device_scale

OVERHEAD_MS = 0.005
#: ms per element of the hand-made device, by class ("": an addition)
PER_ELEMENT = {"": 1e-7, "gelu": 3e-7, "permute": 4e-6}


def _measured(kernel: Kernel, ms: float) -> KernelMeasurement:
    return KernelMeasurement(kernel, LatencyMeasurement(ms, ms, ms, 10, True))


def _profile(classes: tuple[str, ...]) -> HardwareProfile:
    kernels = [_measured(Kernel("elementwise", c, c, s, s, op=op),
                         OVERHEAD_MS + 0.001 + PER_ELEMENT[op] * c * s * s)
               for op in classes for c in (8, 16, 64) for s in (7, 14, 28)]
    overhead = LatencyMeasurement(OVERHEAD_MS, OVERHEAD_MS, OVERHEAD_MS, 10, True)
    return HardwareProfile("synthetic", "x", {"threads": 1}, {}, overhead, tuple(kernels))


def _node(op: str, shapes: dict[str, list[int]], **attrs: object) -> NodeKernel:
    inputs = [name for name in shapes if name != "y"]
    node = helper.make_node(op, inputs, ["y"], **attrs)
    return costed_node(node, op, shapes)


def test_each_class_is_fitted_apart_and_costed_by_its_own_law() -> None:
    model = LatencyModel(_profile(("", "gelu", "permute")))
    assert {"elementwise", "elementwise:gelu", "elementwise:permute"} <= set(model.fits)
    for op, rate in PER_ELEMENT.items():
        kernel = Kernel("elementwise", 32, 32, 20, 20, op=op)
        ms, _ = model.kernel_ms(NodeKernel("n", "X", kernel))
        # the one-kernel law less the run overhead
        assert ms == pytest.approx(0.001 + rate * 32 * 20 * 20, rel=1e-6)


def test_a_profile_without_a_class_costs_it_as_an_addition() -> None:
    """Older profiles (and backends that fuse elementwise operators) have only additions."""
    model = LatencyModel(_profile(("",)))
    gelu = Kernel("elementwise", 32, 32, 20, 20, op="gelu")
    add = Kernel("elementwise", 32, 32, 20, 20)
    assert model.kernel_ms(NodeKernel("g", "Gelu", gelu)) == model.kernel_ms(
        NodeKernel("a", "Add", add))


def test_operators_map_to_their_class() -> None:
    x = [1, 49, 96]
    assert _node("Gelu", {"x": x, "y": x}).kernel.op == "gelu"
    assert _node("QuickGelu", {"x": x, "y": x}).kernel.op == "sigmoid"
    assert _node("Softmax", {"x": x, "y": x}).kernel.op == "softmax"
    layer_norm = _node("LayerNormalization", {"x": x, "g": [96], "b": [96], "y": x})
    assert layer_norm.kernel.op == "norm" and layer_norm.note == ""
    assert _node("Mul", {"x": x, "s": [1], "y": x}).kernel.op == ""
    for op in ELEMENTWISE_OPS:
        assert fit_key(Kernel("elementwise", 1, 1, 1, 1, op=op)) in SPLIT_KEYS


def test_a_reduction_is_costed_on_the_elements_it_reads() -> None:
    reduced = _node("ReduceL2", {"x": [1, 3, 49, 32], "y": [1, 3, 49, 1]})
    assert reduced.kernel.op == "norm"
    assert reduced.kernel.out_elements == 3 * 49 * 32


@pytest.mark.parametrize(("shape", "perm", "op"), [
    ([1, 96, 56, 56], [0, 2, 3, 1], "transpose"),        # NCHW -> NHWC: a matrix transpose
    ([1, 2, 58, 12, 12], [0, 2, 1, 3, 4], "transpose"),  # ShuffleNet's channel shuffle
    ([1, 64, 49, 2, 32], [0, 1, 3, 2, 4], "transpose"),  # attention heads: rows of 32 move
    ([1, 7, 7, 8, 8, 64], [0, 5, 3, 1, 4, 2], "permute"),  # MaxViT's window partition
    ([1, 96, 56, 56], [0, 3, 2, 1], "permute"),
    ([1, 96, 1, 56], [0, 3, 2, 1], "transpose"),         # a size-1 axis: C x W -> W x C
])
def test_transposes_are_classed_by_how_they_move_memory(shape: list[int], perm: list[int],
                                                        op: str) -> None:
    out = [shape[a] for a in perm]
    assert _node("Transpose", {"x": shape, "y": out}, perm=perm).kernel.op == op


def test_einsum_is_costed_as_its_matrix_product() -> None:
    """Attention's product of queries and keys as MaxViT exports it: batches fold into rows."""
    node = _node("Einsum", {"q": [1, 64, 2, 49, 32], "k": [1, 64, 2, 49, 32],
                            "y": [1, 64, 2, 49, 49]}, equation="bghid,bghjd->bghij")
    kernel = node.kernel
    assert kernel.kind == "gemm"
    assert (kernel.height, kernel.in_channels, kernel.out_channels) == (64 * 2 * 49, 32, 49)
    assert kernel.macs == 64 * 2 * 49 * 49 * 32
    # an equation that is not a product of two operands stays elementwise
    trace = _node("Einsum", {"a": [8, 8], "y": [8]}, equation="ii->i")
    assert trace.kernel.kind == "elementwise"


@pytest.mark.parametrize("kernel", [k for k in ELEMENTWISE_KERNELS if k.in_channels == 4
                                    and k.width == 49])
def test_each_class_s_profile_graph_runs_as_one_operator_of_its_class(kernel: Kernel) -> None:
    graph = onnx.load_from_string(kernel_graph(kernel))
    nodes = [n for n in runtime_kernels(graph) if n.kernel is not None]
    assert len(nodes) == 1 and fit_key(nodes[0].kernel) == f"elementwise:{kernel.op}"
    session = ort.InferenceSession(graph.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 4, 49, 49)).astype(np.float32)
    y = session.run(None, {"x": x})[0]
    expected = {
        "gelu": lambda: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
        "sigmoid": lambda: x / (1 + np.exp(-x)),
        "softmax": lambda: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
        "transpose": lambda: x.transpose(0, 2, 1, 3),
        "permute": lambda: x.transpose(0, 3, 2, 1),
    }
    if kernel.op in expected:
        np.testing.assert_allclose(y, expected[kernel.op](), rtol=1e-4, atol=1e-5)
    else:  # LayerNorm with random scale and shift: each row standardized, then mapped
        assert kernel.op == "norm" and y.shape == x.shape


def test_kernel_records_keep_their_class() -> None:
    gelu = Kernel("elementwise", 8, 8, 4, 4, op="gelu")
    assert Kernel.from_dict(gelu.to_dict()) == gelu
    assert "op" not in Kernel("elementwise", 8, 8, 4, 4).to_dict()  # files as before


def test_a_device_factor_within_the_references_scatter_is_not_applied() -> None:
    """On the profile's own device the references' ratios scatter around 1 by each
    architecture's error: calibrating there must not move every estimate."""
    estimates = [1.0] * 5
    own_device = [1 / 0.97, 1 / 1.21, 1 / 0.91, 1 / 1.06, 1 / 1.12]
    assert device_scale(estimates, own_device) == 1.0
    # all five overestimated, by 1-19%: a mean within one deviation of the ratios is not
    # told apart from the profile's errors either
    assert device_scale(estimates, [1 / 1.03, 1 / 1.09, 1 / 1.06, 1 / 1.19, 1 / 1.01]) == \
        pytest.approx(0.991, abs=0.001)
    # a device 2.5x slower stands far out of the same scatter: all of it is applied
    slower = [2.5 * m for m in own_device]
    assert device_scale(estimates, slower) == pytest.approx(math.exp(np.mean(np.log(slower))))
    # references that agree exactly: their ratio, whatever it is
    assert device_scale([1.0, 2.0], [1.5, 3.0]) == pytest.approx(1.5)
    assert device_scale([2.0], [3.0]) == pytest.approx(1.5)
