"""What estimates add for weights that outgrow the caches, convolutions off the runtime's
blocked layout (and others a backend runs on a path of their own) fitted apart, non-square
windows and depthwise convolutions on padded channels.

Profiles here are built by hand from known laws, so every figure asserted is exact; the one
graph that runs is checked for what it computes, not for how fast.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from autocompress.hardware import HardwareProfile, LatencyModel
from autocompress.hardware.backends import LatencyMeasurement
from autocompress.hardware.kernels import Kernel, NodeKernel, costed_node, kernel_graph
from autocompress.hardware.latency import (
    WeightStreaming,
    fit_key,
    is_classifier,
    pays_whole_rate,
    weight_bytes,
)
from autocompress.hardware.profile import KernelMeasurement
from autocompress.hardware.profiler import adaptive_kernels

OVERHEAD_MS = 0.005
MIB = 1 << 20
#: ms per byte of the hand-made device: cached up to 8 MiB, slower beyond
RATES = {1: 1e-8, 2: 1e-8, 4: 1e-8, 8: 1e-8, 16: 2e-8, 32: 4e-8}


def _measured(kernel: Kernel, ms: float) -> KernelMeasurement:
    return KernelMeasurement(kernel, LatencyMeasurement(ms, ms, ms, 10, True))


def _dense_ms(k: Kernel) -> float:
    return OVERHEAD_MS + 0.001 + 1e-8 * k.macs + 1e-7 * k.out_elements


def _grouped_ms(k: Kernel) -> float:
    return OVERHEAD_MS + 0.002 + 3e-8 * k.macs + 1e-7 * k.out_elements


def _convs() -> list[Kernel]:
    return [Kernel("conv", c, c2, s, s, kernel=3)
            for c in (8, 16, 32, 64) for c2 in (16, 64) for s in (8, 16)]


def _grouped() -> list[Kernel]:
    """Grouped convolutions as a runtime that runs them outside its blocked layout marks
    them."""
    return [Kernel("conv", c, c, s, s, kernel=3, groups=c // width, unblocked=True)
            for c in (32, 64, 128) for width in (4, 8) for s in (8, 16)]


def _chains(rates: dict[int, float]) -> list[KernelMeasurement]:
    return [_measured(Kernel("weights", 512, 512, mib, 1), OVERHEAD_MS + mib * MIB * rate)
            for mib, rate in rates.items()]


def _profile(chains: bool = True, grouped: bool = False,
             rates: dict[int, float] = RATES) -> HardwareProfile:
    kernels = [_measured(k, _dense_ms(k)) for k in _convs()]
    kernels += [_measured(Kernel("gemm", k, n, 1, 1), _dense_ms(Kernel("gemm", k, n, 1, 1)))
                for k in (64, 512, 4096) for n in (10, 1000, 4096)]
    if grouped:
        kernels += [_measured(k, _grouped_ms(k)) for k in _grouped()]
    if chains:
        kernels += _chains(rates)
    overhead = LatencyMeasurement(OVERHEAD_MS, OVERHEAD_MS, OVERHEAD_MS, 10, True)
    return HardwareProfile("synthetic", "x", {"threads": 1}, {}, overhead, tuple(kernels))


def _node(name: str, kernel: Kernel) -> NodeKernel:
    return NodeKernel(name, "Conv", kernel)


def _model(channels: int, layers: int) -> list[NodeKernel]:
    """``layers`` 3x3 convolutions of ``channels`` channels on a 4x4 map: weights are
    ``layers * channels**2 * 36`` bytes."""
    return [_node(f"conv{i}", Kernel("conv", channels, channels, 4, 4, kernel=3))
            for i in range(layers)]


def test_streaming_curve_is_read_from_the_chains() -> None:
    streaming = WeightStreaming.from_profile(_profile())
    assert streaming is not None
    assert streaming.cached_ms_per_byte == pytest.approx(1e-8)
    assert streaming.rate(4 * MIB) == pytest.approx(1e-8)
    assert streaming.rate(32 * MIB) == pytest.approx(4e-8)
    assert streaming.rate(128 * MIB) == pytest.approx(4e-8)  # the last rate beyond the curve
    # halfway between 16 and 32 MiB on a log scale
    assert streaming.rate(np.sqrt(16 * 32) * MIB) == pytest.approx(3e-8)
    assert streaming.share(8 * MIB) == 0.0
    assert streaming.share(32 * MIB) == 1.0


def test_noise_in_the_curve_does_not_make_more_weights_cheaper() -> None:
    noisy = {**RATES, 1: 3e-8, 16: 3e-8, 32: 2.5e-8}  # slow first chain, a dip at 32 MiB
    streaming = WeightStreaming.from_profile(_profile(rates=noisy))
    assert streaming is not None
    assert streaming.cached_ms_per_byte == pytest.approx(1e-8)
    assert streaming.rate(1 * MIB) == pytest.approx(1e-8)  # the cached rate below the minimum
    assert streaming.rate(32 * MIB) == pytest.approx(3e-8)  # a running maximum


def test_fewer_than_three_chains_give_no_curve() -> None:
    assert WeightStreaming.from_profile(_profile(rates={1: 1e-8, 32: 4e-8})) is None
    assert WeightStreaming.from_profile(_profile(chains=False)) is None
    # a chain measured no slower than an empty run gives no rate to divide by
    assert WeightStreaming.from_profile(_profile(rates={**RATES, 2: 0.0})) is None


def test_weights_that_fit_in_cache_add_nothing() -> None:
    with_chains = LatencyModel(_profile())
    without = LatencyModel(_profile(chains=False))
    nodes = _model(64, 4)  # 0.6 MB of weights
    estimate = with_chains.estimate_nodes(nodes)
    assert estimate.streaming_ms == 0.0
    assert estimate.latency_ms == pytest.approx(without.estimate_nodes(nodes).latency_ms)


def test_windowed_convolutions_beyond_the_cache_pay_the_curve_s_whole_rate() -> None:
    """Inside a model whose weights outgrow the cache a 3x3 convolution pays the whole
    time of reading its weights at the model's footprint (:func:`pays_whole_rate`)."""
    model = LatencyModel(_profile())
    without = LatencyModel(_profile(chains=False))
    nodes = _model(512, 4)  # 4 x 9.4 MB: 37.7 MB of weights
    footprint = 4 * 512 * 512 * 9 * 4
    assert sum(weight_bytes(n.kernel) for n in nodes) == footprint
    estimate = model.estimate_nodes(nodes)
    assert estimate.streaming_ms == pytest.approx(footprint * 4e-8)
    assert estimate.latency_ms == pytest.approx(
        without.estimate_nodes(nodes).latency_ms + footprint * 4e-8)
    # each node carries its own reading
    plain = {name: ms for name, _, ms in without.estimate_nodes(nodes).per_node_ms}
    for name, _, ms in estimate.per_node_ms:
        assert ms == pytest.approx(plain[name] + footprint / 4 * 4e-8)


def test_other_kernels_beyond_the_cache_pay_only_the_rate_over_the_cached_one() -> None:
    """A matrix product's one-kernel time (here of 4 rows, a transformer's tokens; pointwise
    and depthwise convolutions alike) already read its weights from cache: inside a model
    whose weights outgrow the cache it pays what reading them from there costs more."""
    model = LatencyModel(_profile())
    nodes = [NodeKernel(f"mm{i}", "MatMul", Kernel("gemm", 1536, 1536, 4, 1))
             for i in range(4)]
    footprint = 4 * 1536 * 1536 * 4  # 37.7 MB, as the 3x3 convolutions above
    assert sum(weight_bytes(n.kernel) for n in nodes) == footprint
    assert not any(pays_whole_rate(n.kernel) for n in nodes)
    assert not pays_whole_rate(Kernel("conv1x1", 64, 64, 4, 4))
    assert not pays_whole_rate(Kernel("dwconv", 64, 64, 4, 4, kernel=3, groups=64))
    assert pays_whole_rate(Kernel("conv", 96, 96, 12, 12, kernel=3, groups=12))
    estimate = model.estimate_nodes(nodes)
    assert estimate.streaming_ms == pytest.approx(footprint * (4e-8 - 1e-8))
    # beside them, a 3x3 convolution of the same weights pays the whole rate
    mixed = [*nodes[:2], *_model(1536 // 3, 2)]
    assert sum(weight_bytes(n.kernel) for n in mixed) == footprint
    assert model.estimate_nodes(mixed).streaming_ms == pytest.approx(
        footprint / 2 * (4e-8 - 1e-8) + footprint / 2 * 4e-8)


def test_streaming_counts_the_weights_the_backend_says_a_kernel_reads() -> None:
    """Where the rules say a kernel reads fewer weights than it holds (ONNX Runtime skips
    the taps of a window in the padding), the footprint and each node's charge count those."""
    model = LatencyModel(_profile())
    nodes = _model(512, 12)  # 113 MB of weights held
    nominal = model.estimate_nodes(nodes).streaming_ms
    model.rules = replace(model.rules, weights_read=lambda k: k.weight_elements // 9)
    read = 12 * 512 * 512 * 4  # the centre taps' weights: 12.6 MB
    assert model.streaming is not None
    estimate = model.estimate_nodes(nodes)
    assert estimate.streaming_ms == pytest.approx(read * model.streaming.rate(2 * read))
    assert estimate.streaming_ms < nominal / 9


def test_the_curve_is_read_at_twice_the_weights_of_the_body() -> None:
    model = LatencyModel(_profile())
    streaming = model.streaming
    assert streaming is not None
    nodes = _model(384, 3)  # 15.9 MB: within the ramp alone, at the curve's top at twice
    weights = sum(weight_bytes(n.kernel) for n in nodes)
    assert 8 * MIB < weights < 16 * MIB and streaming.rate(weights) < 4e-8
    estimate = model.estimate_nodes(nodes)
    assert estimate.streaming_ms == pytest.approx(
        weights * streaming.rate(2 * weights) * streaming.share(2 * weights))


def test_a_classifier_does_not_move_the_footprint_and_pays_as_every_node() -> None:
    model = LatencyModel(_profile())
    streaming = model.streaming
    assert streaming is not None
    head = NodeKernel("fc", "Gemm", Kernel("gemm", 4096, 1000, 1, 1))
    assert is_classifier(head.kernel)
    assert not is_classifier(Kernel("gemm", 768, 768, 49, 1))  # a transformer's tokens
    assert not is_classifier(Kernel("conv1x1", 64, 16, 1, 1))  # a squeeze-excitation layer
    body = _model(384, 3)
    weights = sum(weight_bytes(n.kernel) for n in body)
    alone = model.estimate_nodes(body)
    both = model.estimate_nodes([*body, head])
    # the classifier's 16 MB do not move the body's footprint, and it pays, as every node,
    # the curve's rate at that footprint less the cached rate its one-kernel measurement ran at
    head_read = weight_bytes(head.kernel) * (
        streaming.rate(2 * weights) - streaming.cached_ms_per_byte) * streaming.share(2 * weights)
    assert head_read > 0
    assert both.streaming_ms == pytest.approx(alone.streaming_ms + head_read)
    # a model of a classifier alone keeps its weights in cache: nothing added
    assert model.estimate_nodes([head]).streaming_ms == 0.0


def test_estimates_with_streaming_stay_monotone_in_channels() -> None:
    model = LatencyModel(_profile())
    fixed = _model(384, 3)
    previous = 0.0
    for channels in range(8, 1025, 8):  # one layer grows through the cache's edge
        grown = [*fixed, _node("grown", Kernel("conv", 384, channels, 4, 4, kernel=3))]
        ms = model.estimate_nodes(grown).latency_ms
        assert ms >= previous - 1e-12, channels
        previous = ms
    previous = 0.0
    for classes in range(8, 8193, 8):  # and a classifier after them
        head = NodeKernel("fc", "Gemm", Kernel("gemm", 4096, classes, 1, 1))
        ms = model.estimate_nodes([*fixed, head]).latency_ms
        assert ms >= previous - 1e-12, classes
        previous = ms


def test_int8_and_fp16_weights_take_fewer_bytes() -> None:
    conv = Kernel("conv", 16, 32, 8, 8, kernel=3)
    assert weight_bytes(conv) == 16 * 32 * 9 * 4
    assert weight_bytes(Kernel("conv", 16, 32, 8, 8, kernel=3, precision="int8")) == 16 * 32 * 9
    assert weight_bytes(Kernel("conv", 16, 32, 8, 8, kernel=3, precision="fp16")) == 16 * 32 * 18
    assert weight_bytes(Kernel("elementwise", 16, 16, 8, 8)) == 0
    assert weight_bytes(None) == 0


def test_streaming_chain_graph_reads_each_weight_once() -> None:
    chain = Kernel("weights", 64, 64, 3, 1)
    model = onnx.load_from_string(kernel_graph(chain))
    assert [n.op_type for n in model.graph.node] == ["MatMul"] * 3
    assert sum(np.prod(i.dims) for i in model.graph.initializer) == chain.weight_elements
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, 64), np.float32)})
    assert y.shape == (1, 64) and np.isfinite(y).all()
    with pytest.raises(ValueError, match="square"):
        kernel_graph(Kernel("weights", 64, 32, 3, 1))


def test_convolutions_off_the_blocked_layout_get_their_own_fits_where_measured() -> None:
    grouped = Kernel("conv", 96, 96, 12, 12, kernel=3, groups=12, unblocked=True)
    assert fit_key(grouped) == "conv:grouped"
    assert fit_key(Kernel("conv", 58, 58, 12, 12, kernel=3, unblocked=True)) == "conv:unblocked"
    assert fit_key(Kernel("dwconv", 58, 58, 12, 12, kernel=3, groups=58,
                          unblocked=True)) == "dwconv:unblocked"
    # what the runtime runs in its blocked layout costs as its kind, grouped or not
    assert fit_key(Kernel("conv", 96, 96, 12, 12, kernel=3, groups=6)) == "conv"
    assert fit_key(Kernel("dwconv", 96, 96, 12, 12, kernel=3, groups=96)) == "dwconv"
    measured = LatencyModel(_profile(grouped=True))
    assert measured.fits["conv:grouped"].samples == len(_grouped())
    assert measured.fits["conv"].samples == len(_convs())
    node = _node("g", grouped)
    assert measured.kernel_ms(node)[0] == pytest.approx(_grouped_ms(grouped) - OVERHEAD_MS,
                                                        rel=1e-6)
    dense_only = LatencyModel(_profile(grouped=False))
    assert "conv:grouped" not in dense_only.fits  # then the kind's fit costs them
    assert dense_only.kernel_ms(node)[0] == pytest.approx(_dense_ms(grouped) - OVERHEAD_MS,
                                                          rel=1e-6)


def _pointwise_ms(k: Kernel) -> float:
    """The hand-made device's pointwise convolutions: those over fewer than 16 input channels
    run another kernel, four times slower per output element."""
    per_output = 4e-7 if k.in_channels < 16 else 1e-7
    return OVERHEAD_MS + 0.001 + 1e-8 * k.macs + per_output * k.out_elements


def test_a_backend_fits_apart_the_kernels_it_runs_on_a_path_of_their_own(monkeypatch) -> None:
    import autocompress.hardware.latency as latency
    from autocompress.hardware.rules import CostRules

    rules = CostRules(fit_apart=lambda k: "conv1x1:narrow" if (
        k.kind == "conv1x1" and k.in_channels < 16) else None)
    monkeypatch.setattr(latency, "rules_for", lambda backend: rules)
    wide = [Kernel("conv1x1", c, c2, s, s) for c in (16, 64, 256) for c2 in (16, 128)
            for s in (7, 28)]
    narrow = [Kernel("conv1x1", c, c2, s, s) for c in (4, 8, 12) for c2 in (16, 64)
              for s in (14, 28)]
    overhead = LatencyMeasurement(OVERHEAD_MS, OVERHEAD_MS, OVERHEAD_MS, 10, True)

    def model(kernels: list[Kernel]) -> LatencyModel:
        return LatencyModel(HardwareProfile(
            "synthetic", "x", {"threads": 1}, {}, overhead,
            tuple(_measured(k, _pointwise_ms(k)) for k in kernels)))

    apart = model(wide + narrow)
    assert apart.fits["conv1x1:narrow"].samples == len(narrow)
    assert apart.fits["conv1x1"].samples == len(wide)
    for k in (Kernel("conv1x1", 8, 48, 24, 24), Kernel("conv1x1", 32, 96, 24, 24)):
        assert fit_key(k, rules) == ("conv1x1:narrow" if k.in_channels < 16 else "conv1x1")
        assert fit_key(k) == "conv1x1"  # the neutral rules fit no such kernels apart
        # each law recovered from its own kernels
        assert apart.kernel_ms(_node("p", k))[0] == pytest.approx(
            _pointwise_ms(k) - OVERHEAD_MS, rel=1e-6)
    # from fewer than four such kernels no fit apart is made: the kind's fit costs them
    few = model(wide + narrow[:3])
    assert "conv1x1:narrow" not in few.fits
    assert few.kernel_ms(_node("p", Kernel("conv1x1", 8, 48, 24, 24)))[0] > 0


def test_onnx_runtime_fits_apart_pointwise_convolutions_over_fewer_channels_than_a_block(
        monkeypatch) -> None:
    from autocompress.hardware.backends import onnxruntime as ort_backend

    rules = ort_backend.ONNXRUNTIME_RULES
    monkeypatch.setattr(ort_backend, "nchwc_block", lambda: 16)  # AVX-512's block
    assert fit_key(Kernel("conv1x1", 8, 48, 24, 24), rules) == "conv1x1:nchw"
    assert fit_key(Kernel("conv1x1", 12, 1280, 7, 7), rules) == "conv1x1:nchw"
    assert fit_key(Kernel("conv1x1", 16, 48, 24, 24), rules) == "conv1x1"
    assert fit_key(Kernel("conv1x1", 8, 48, 24, 24, precision="int8"), rules) == "conv1x1"
    assert fit_key(Kernel("conv1x1", 6, 48, 24, 24, unblocked=True),
                   rules) == "conv1x1:unblocked"
    assert fit_key(Kernel("conv", 8, 48, 24, 24, kernel=3), rules) == "conv"
    monkeypatch.setattr(ort_backend, "nchwc_block", lambda: 8)  # AVX2's: 8 is a block
    assert fit_key(Kernel("conv1x1", 8, 48, 24, 24), rules) == "conv1x1"


def test_onnx_runtime_says_which_convolutions_it_runs_outside_its_blocked_layout() -> None:
    from autocompress.hardware.backends._ort_lowering import as_run, runtime_kernels

    blocked = Kernel("dwconv", 60, 60, 12, 12, kernel=3, groups=60)
    off = Kernel("dwconv", 58, 58, 12, 12, kernel=3, groups=58)
    assert not as_run(blocked).unblocked
    assert as_run(off).unblocked
    assert as_run(Kernel("conv1x1", 58, 64, 12, 12)).unblocked
    assert not as_run(Kernel("conv", 3, 58, 12, 12, kernel=3)).unblocked  # NCHW input
    nodes = runtime_kernels(onnx.load_from_string(kernel_graph(off)))
    assert nodes is not None
    assert [n.kernel.unblocked for n in nodes if n.kernel is not None] == [True]
    assert "unblocked" not in blocked.to_dict()
    assert Kernel.from_dict(as_run(off).to_dict()) == as_run(off)


def test_adaptive_neighbours_of_grouped_convolutions_stay_valid() -> None:
    measured = [(k, _dense_ms(k) * (1.5 if k.groups > 1 else 1.0))
                for k in _convs() + _grouped()]
    extra = adaptive_kernels(measured, 30)
    grouped = [k for k in extra if k.groups > 1]
    assert grouped
    assert all(k.out_channels % k.groups == 0 and k.in_channels % k.groups == 0
               for k in grouped)


def test_non_square_windows_count_their_own_area() -> None:
    one_by_seven = Kernel("conv", 64, 48, 17, 17, kernel=1, kernel_w=7)
    assert one_by_seven.macs == 48 * 64 * 7 * 17 * 17
    assert one_by_seven.weight_elements == 48 * 64 * 7
    assert (one_by_seven.out_height, one_by_seven.out_width) == (17, 17)
    assert Kernel.from_dict(one_by_seven.to_dict()) == one_by_seven
    assert "kernel_w" not in Kernel("conv", 8, 8, 4, 4, kernel=3).to_dict()  # files as before
    for window, kind in (((1, 7), "conv"), ((7, 1), "conv"), ((1, 1), "conv1x1")):
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=list(window),
                                pads=[window[0] // 2, window[1] // 2] * 2)
        shapes = {"x": [1, 64, 17, 17], "w": [48, 64, *window], "y": [1, 48, 17, 17]}
        k = costed_node(node, "conv", shapes).kernel
        assert k is not None and k.kind == kind
        assert k.macs == 48 * 64 * window[0] * window[1] * 17 * 17


def test_a_convolution_or_pooling_pads_as_its_node_says() -> None:
    """SqueezeNet's 7x7 stem at stride 2 and Inception's reductions pad nothing, ConvNeXt's
    and Swin's patch convolutions neither, a max pooling pads by one: their outputs, work and
    one-kernel graphs follow their pads, not a convolution that keeps its size."""
    def costed(op: str, pads: list[int], x: list[int], y: list[int], **attrs: object
               ) -> Kernel:
        if pads:
            attrs["pads"] = pads
        node = helper.make_node(op, ["x", "w"] if op == "Conv" else ["x"], ["y"], **attrs)
        kernel = costed_node(node, op, {"x": x, "w": [y[1], x[1], 7, 7], "y": y}).kernel
        assert kernel is not None
        return kernel

    stem = costed("Conv", [0, 0, 0, 0], [1, 3, 96, 96], [1, 96, 45, 45], kernel_shape=[7, 7],
                  strides=[2, 2])
    assert stem.padding == 0 and stem.pads == (0, 0)
    assert (stem.out_height, stem.out_width) == (45, 45)
    assert stem.macs == 96 * 45 * 45 * 3 * 49
    # every tap of an unpadded window is inside the map
    from autocompress.hardware.backends import onnxruntime as ort_backend
    taps = ort_backend.ONNXRUNTIME_RULES.features(stem)[1]
    assert taps == stem.macs
    same = costed("Conv", [3, 3, 3, 3], [1, 3, 96, 96], [1, 64, 48, 48], kernel_shape=[7, 7],
                  strides=[2, 2])
    assert same.padding == -1 and same.pads == (3, 3) and same.out_height == 48
    assert "padding" not in same.to_dict() and stem.to_dict()["padding"] == 0  # files as before
    assert Kernel.from_dict(stem.to_dict()) == stem
    valid = costed("Conv", [], [1, 3, 9, 9], [1, 8, 3, 3], kernel_shape=[7, 7], auto_pad="VALID")
    assert valid.padding == 0 and valid.out_height == 3
    pool = costed("MaxPool", [1, 1, 1, 1], [1, 64, 48, 48], [1, 64, 24, 24],
                  kernel_shape=[3, 3], strides=[2, 2])
    assert pool.padding == 1 and (pool.out_height, pool.out_width) == (24, 24)
    assert Kernel("pool", 64, 64, 48, 48, kernel=3, stride=2).out_height == 23  # unpadded
    # the one-kernel graphs run the same padding, and the runtime computes those shapes
    for kernel in (stem, pool):
        graph = onnx.load_from_string(kernel_graph(kernel))
        session = ort.InferenceSession(graph.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        x = np.zeros((1, kernel.in_channels, kernel.height, kernel.width), np.float32)
        assert session.run(None, {"x": x})[0].shape == (1, kernel.out_channels,
                                                        kernel.out_height, kernel.out_width)


def test_depthwise_convolution_on_padded_channels_is_depthwise() -> None:
    # ONNX Runtime's blocked graph runs 24 channels as 32 groups
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=32, kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1])
    shapes = {"x": [1, 24, 8, 8], "w": [32, 1, 3, 3], "y": [1, 24, 8, 8]}
    k = costed_node(node, "dw", shapes).kernel
    assert k is not None and k.kind == "dwconv" and k.groups == 24
    assert k.macs == 24 * 9 * 64


def test_blocked_convolutions_run_on_the_channels_of_their_reordered_weights() -> None:
    from autocompress.hardware.backends._ort_lowering import NCHWC, _as_blocked

    conv = Kernel("conv", 24, 8, 16, 16, kernel=3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], domain=NCHWC, group=1)
    ran = _as_blocked(node, conv, {"w": [16, 32, 3, 3]})  # padded to 16-channel blocks
    assert (ran.in_channels, ran.out_channels, ran.unblocked) == (32, 16, False)
    depthwise = Kernel("dwconv", 24, 24, 16, 16, kernel=3, groups=24)
    node = helper.make_node("Conv", ["x", "w"], ["y"], domain=NCHWC, group=32)
    ran = _as_blocked(node, depthwise, {"w": [32, 1, 3, 3]})
    assert (ran.in_channels, ran.out_channels, ran.groups) == (32, 32, 32)
    # an input narrower than a block is read as it is
    stem = Kernel("conv", 3, 16, 32, 32, kernel=3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], domain=NCHWC, group=1)
    assert _as_blocked(node, stem, {"w": [16, 3, 3, 3]}) == stem
    generic = helper.make_node("FusedConv", ["x", "w"], ["y"], domain="com.microsoft")
    assert _as_blocked(generic, stem, {}).unblocked


def test_blocked_kernels_as_run_are_never_narrower_and_stay_monotone() -> None:
    from autocompress.hardware.backends._ort_lowering import as_run

    previous = 0
    for out in range(8, 65, 4):
        ran = as_run(Kernel("conv", 32, out, 14, 14, kernel=3))
        assert ran.out_channels >= out and ran.out_channels >= previous
        previous = ran.out_channels
    assert as_run(Kernel("conv", 32, 64, 14, 14, kernel=3)).out_channels == 64


def test_a_channels_last_reorder_puts_channels_second() -> None:
    from autocompress.hardware.backends._ort_lowering import NCHWC, _output_shape

    node = helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC, channels_last=1)
    assert _output_shape(node, {"x": [1, 24, 24, 96]}) == [1, 96, 24, 24]
    plain = helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC)
    assert _output_shape(plain, {"x": [1, 96, 24, 24]}) == [1, 96, 24, 24]
    transpose = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])
    assert _output_shape(transpose, {"x": [1, 24, 24, 96]}) == [1, 96, 24, 24]
