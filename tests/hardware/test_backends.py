"""The backend registry, cost rules per backend, the shared rules of measuring (median of
rounds, non-negative least squares) and the one int8 quantization routine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autocompress.cli.main import _parser
from autocompress.exceptions import ProfileError
from autocompress.hardware import (
    HardwareProfile,
    LatencyMeasurement,
    LatencyModel,
    _device,
    backends,
)
from autocompress.hardware._device import cpu_features, describe_device, same_device
from autocompress.hardware._nnls import nnls
from autocompress.hardware.backends import (
    BACKENDS,
    Backend,
    MeasureSettings,
    _registry,
    available_backends,
    get_backend,
    is_local,
    median_of_rounds,
    register_backend,
    rules_for,
)
from autocompress.hardware.backends._ort_lowering import FILTER_SET_BLOCKS, nchwc_block
from autocompress.hardware.backends.onnxruntime import (
    GROUPED_CONVS,
    NARROW_POINTWISE,
    ONNXRUNTIME_RULES,
    SPILL_BYTES,
)
from autocompress.hardware.backends.tvm import TVM_RULES
from autocompress.hardware.kernels import (
    KINDS,
    PRECISIONS,
    Kernel,
    NodeKernel,
    kernel_graph,
    kernels_of,
)
from autocompress.hardware.latency import weight_bytes
from autocompress.hardware.profile import KernelMeasurement
from autocompress.hardware.profiler import profile_backend
from autocompress.hardware.rules import NEUTRAL_RULES, CostRules

FAST = MeasureSettings(warmup_runs=1, warmup_s=0.0, max_time_s=0.02, min_runs=5,
                       round_runs=5)


# --- registry --------------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations in a test are undone after it."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    yield


def test_builtin_backends_are_registered_and_offered_on_the_command_line() -> None:
    assert {"onnxruntime", "tvm", "synthetic"} <= set(available_backends())
    assert BACKENDS == available_backends()
    for name in available_backends():
        args = _parser().parse_args(["measure", "--onnx", "m.onnx", "--backend", name])
        assert args.backend == name
    with pytest.raises(SystemExit):
        _parser().parse_args(["measure", "--onnx", "m.onnx", "--backend", "nope"])


def test_a_registered_backend_is_built_by_name_with_its_options(scratch_registry: None
                                                                ) -> None:
    rules = CostRules(fused_ops=frozenset({"Relu"}))

    @register_backend("toy")
    class Toy(Backend):
        cost_rules = rules
        summary = "is a toy"

        def __init__(self, speed: float = 1.0) -> None:
            self.speed = speed

        def version(self) -> str:
            return "toy-1"

        def settings(self) -> dict[str, Any]:
            return {"speed": self.speed}

        def measure(self, onnx_model: bytes, settings: MeasureSettings | None = None
                    ) -> LatencyMeasurement:
            return LatencyMeasurement(self.speed, self.speed, self.speed, 1, True)

        def run(self, onnx_model: bytes, inputs: np.ndarray, batch_size: int = 256
                ) -> np.ndarray:
            return inputs

    assert Toy.name == "toy" and "toy" in backends.BACKENDS  # read from the registry
    made = get_backend("toy", speed=2.0, threads=None)  # None: not given
    assert isinstance(made, Toy) and made.speed == 2.0
    assert rules_for("toy") is rules
    with pytest.raises(ProfileError, match="speed is an option of the toy backend"):
        get_backend("onnxruntime", speed=2.0)
    with pytest.raises(ProfileError, match="toy has no option colour; toy is a toy"):
        get_backend("toy", colour="red")
    with pytest.raises(ValueError, match="registered already"):
        register_backend("onnxruntime")(Toy)


def test_options_of_another_backend_are_refused_with_what_to_do() -> None:
    with pytest.raises(ProfileError) as info:
        get_backend("onnxruntime", target="llvm", rpc="device:9090")
    message = str(info.value)
    assert message.startswith("target and rpc are options of the tvm backend; onnxruntime "
                              "measures on this machine")
    assert "drop them, or use backend 'tvm'" in message
    with pytest.raises(ProfileError, match="threads is an option of the onnxruntime and tvm"):
        get_backend("synthetic", threads=2)
    with pytest.raises(ProfileError, match="unknown backend 'nope'; available: onnxruntime"):
        get_backend("nope")


def test_importing_hardware_loads_no_runtime_and_no_search_dependency() -> None:
    code = ("import sys, autocompress.hardware, autocompress.hardware.backends; "
            "print([m for m in ('onnxruntime', 'tvm', 'torch', 'scipy') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "[]"


# --- cost rules ------------------------------------------------------------------------------


def test_rules_are_found_by_backend_name() -> None:
    assert rules_for("onnxruntime") is ONNXRUNTIME_RULES
    assert rules_for("tvm") is TVM_RULES
    assert rules_for("no-such-backend") is NEUTRAL_RULES


def _kernel(kind: str, c_in: int, c_out: int, precision: str) -> Kernel:
    if kind in ("dwconv", "pool", "elementwise", "quantize", "dequantize", "chain", "island"):
        c_in = c_out
    return Kernel(kind, c_in, c_out, 14, 14,  # type: ignore[arg-type]
                  kernel=3 if kind in ("conv", "dwconv", "pool") else 1,
                  groups=c_out if kind == "dwconv" else 1, precision=precision)


@pytest.mark.parametrize("name", available_backends())
def test_every_backends_features_never_fall_with_more_channels(name: str) -> None:
    """So that a fit with non-negative weights is monotone in channel counts."""
    features = rules_for(name).features
    widths = list(range(8, 200, 16))
    for kind in (*KINDS, "quantize", "dequantize", "chain", "island"):
        for precision in PRECISIONS:
            for fewer, more in zip(widths, widths[1:], strict=False):
                for c_in, c_out in (((64, fewer), (64, more)), ((fewer, 64), (more, 64))):
                    assert (features(_kernel(kind, *c_out, precision))
                            >= features(_kernel(kind, *c_in, precision))).all(), (kind,
                                                                                  precision)


def test_onnxruntime_features_add_a_per_pixel_term() -> None:
    conv = Kernel("conv", 8, 8, 14, 14, kernel=3)
    # then filter-set passes, unfolded rows and spilled outputs
    per_pixel = ONNXRUNTIME_RULES.features(conv)[:-3]
    taps = 14 * 3 - 2  # per axis: the two border pixels lose a tap each to the padding
    neutral = NEUTRAL_RULES.features(conv).tolist()
    assert per_pixel.tolist() == [neutral[0], 8 * 8 * taps * taps, *neutral[2:], 14 * 14]
    gemm = Kernel("gemm", 64, 10, 1, 1)
    assert np.array_equal(ONNXRUNTIME_RULES.features(gemm), NEUTRAL_RULES.features(gemm))
    int8 = replace(conv, precision="int8")
    assert len(ONNXRUNTIME_RULES.features(int8)) == len(NEUTRAL_RULES.features(int8)) + 1
    assert ONNXRUNTIME_RULES.features(int8)[-1] == 14 * 14
    assert TVM_RULES.features(int8).tolist() == NEUTRAL_RULES.features(int8).tolist()


def test_onnxruntime_costs_a_whole_filter_set_of_input_reads_for_fewer_outputs() -> None:
    """MLAS computes up to four blocks of output channels in one pass over the input, so 8
    outputs read the input as often as a whole set does, and one block more than a set
    reads it twice."""
    block = nchwc_block()
    assert block in (4, 8, 16)
    set_width = FILTER_SET_BLOCKS * block

    def passes(c_in: int, c_out: int, **kw: Any) -> float:
        return float(ONNXRUNTIME_RULES.features(Kernel("conv", c_in, c_out, 14, 14, kernel=3,
                                                       **kw))[-3])

    one_read = 64 * 40 * 40  # every input channel under the window's taps inside the map
    assert passes(64, 8) == passes(64, set_width) == one_read
    assert passes(64, set_width + block) == passes(64, 2 * set_width) == 2 * one_read
    # grouped: per group; depthwise and unblocked convolutions have no filter sets
    assert passes(64, 64, groups=2) == 2 * (32 * 40 * 40) * -(-32 // set_width)
    assert passes(64, 64, unblocked=True) == 0.0
    depthwise = Kernel("dwconv", 64, 64, 14, 14, kernel=3, groups=64)
    assert ONNXRUNTIME_RULES.features(depthwise)[-3] == 0.0
    assert ONNXRUNTIME_RULES.features(replace(depthwise, precision="int8")).size == 6


def test_onnxruntime_costs_only_the_taps_of_a_window_inside_the_map() -> None:
    """ONNX Runtime's blocked fp32 convolutions skip the rows of a window that fall in the
    padding, and on a 1x1 map most of its work (a 3x3 convolution of 512 channels there ran
    in 27.5 us where a 1x1 one ran in 21.5, with nine times the nominal multiply-adds and
    weights; AMD EPYC VM, 2026-12-07; ``benchmarks/padded_windows.py``), so their
    multiply-adds and the weights they read count the taps inside the map; the generic path
    (``unblocked``) and other precisions count them all."""
    def macs_and_weights(kernel: Kernel) -> tuple[float, float]:
        features = ONNXRUNTIME_RULES.features(kernel)
        return float(features[1]), float(features[4])

    on_one_pixel = Kernel("conv", 512, 256, 1, 1, kernel=3)
    assert macs_and_weights(on_one_pixel) == (512 * 256, 512 * 256)
    assert ONNXRUNTIME_RULES.weights_read(on_one_pixel) == 512 * 256
    assert weight_bytes(on_one_pixel, ONNXRUNTIME_RULES.weights_read) == 512 * 256 * 4
    assert weight_bytes(on_one_pixel) == 512 * 256 * 9 * 4
    # a 1x7 window on a 4-pixel-wide map: every pixel meets 4 taps, every tap some pixel
    row = Kernel("conv", 16, 16, 4, 4, kernel=1, kernel_w=7)
    assert macs_and_weights(row) == (16 * 16 * 4 * (4 * 4), 16 * 16 * 7)
    # strided: 7x7 windows at stride 2 on 8 px (pad 3) meet 4, 6, 7 and 5 pixels of each axis
    stem = Kernel("conv", 3, 64, 8, 8, kernel=7, stride=2)
    assert macs_and_weights(stem)[0] == 3 * 64 * (4 + 6 + 7 + 5) ** 2
    for kernel in (Kernel("conv", 8, 8, 14, 14, kernel=3), Kernel("conv1x1", 8, 16, 3, 3)):
        assert macs_and_weights(kernel)[1] == kernel.weight_elements
    for kernel in (replace(on_one_pixel, unblocked=True), replace(on_one_pixel, precision="int8")):
        assert ONNXRUNTIME_RULES.weights_read(kernel) == on_one_pixel.weight_elements
    assert macs_and_weights(replace(on_one_pixel, unblocked=True)) == (
        on_one_pixel.macs, on_one_pixel.weight_elements)
    # non-decreasing in channels, as every regressor
    wider = replace(on_one_pixel, in_channels=520, out_channels=264)
    wide, narrow = macs_and_weights(wider), macs_and_weights(on_one_pixel)
    assert wide[0] >= narrow[0] and wide[1] >= narrow[1]


def test_onnxruntime_prices_fp32_convolution_outputs_beyond_a_cores_cache_apart() -> None:
    """Output elements beyond SPILL_BYTES are a term of their own (0 below it), so that a
    few kernels with outputs of many MiB do not raise every output element's price."""
    def spilled(kernel: Kernel) -> float:
        return float(ONNXRUNTIME_RULES.features(kernel)[-1])

    limit = SPILL_BYTES // 4  # fp32 elements
    side = 32
    below = Kernel("conv1x1", 16, limit // side**2, side, side)
    assert below.out_elements == limit and spilled(below) == 0.0
    beyond = replace(below, out_channels=below.out_channels + 16)
    assert spilled(beyond) == 16 * side**2
    assert spilled(replace(beyond, kind="dwconv", in_channels=beyond.out_channels,
                           groups=beyond.out_channels, kernel=3)) == 16 * side**2
    # int8 and fp16 convolutions, gemm and elementwise kernels have no such term
    assert ONNXRUNTIME_RULES.features(replace(beyond, precision="int8")).size == 6
    big = Kernel("elementwise", 512, 512, 64, 64)
    assert np.array_equal(ONNXRUNTIME_RULES.features(big), NEUTRAL_RULES.features(big))


def test_a_few_large_outputs_do_not_raise_every_output_elements_price() -> None:
    """A device on which each output element beyond SPILL_BYTES costs 4x the others: with
    the output term, an ONNX Runtime fit of its pointwise convolutions prices both the
    three 15 MiB-output kernels and the small-output ones (a linear price per element would
    have to miss one or the other)."""
    overhead = 0.005
    limit = SPILL_BYTES / 4

    def ms(k: Kernel) -> float:
        beyond = max(k.out_elements - limit, 0.0)
        return overhead + 0.001 + 1e-8 * k.macs + 1e-7 * k.out_elements + 3e-7 * beyond

    small = [Kernel("conv1x1", c, c2, s, s) for c in (16, 64, 256) for c2 in (32, 96, 384)
             for s in (8, 16, 28)]
    large = [Kernel("conv1x1", 8, c2, 56, 56) for c2 in (1272, 1280, 1288)]
    measured = tuple(KernelMeasurement(k, LatencyMeasurement(ms(k), ms(k), ms(k), 10, True))
                     for k in small + large)
    profile = HardwareProfile("onnxruntime", "x", {"threads": 1}, {},
                              LatencyMeasurement(overhead, overhead, overhead, 10, True),
                              measured)
    model = LatencyModel(profile)
    assert not model.lowered  # no layout kernels: nodes are costed as given
    for k in (*small, *large, Kernel("conv1x1", 16, 96, 48, 48)):
        node_ms, _ = model.kernel_ms(NodeKernel("n", "Conv", k))
        assert node_ms == pytest.approx(ms(k) - overhead, rel=0.02), k


def test_onnxruntime_grid_has_grouped_convolutions_off_every_x86_block() -> None:
    """Groups not a multiple of the block wide run ONNX Runtime's generic path, fitted apart
    (``conv:grouped``); the grid must give that fit wide groups with 8- and 16-channel blocks
    alike, not only the 4-wide ones (a RegNet pruned to half has 28- and 60-wide groups)."""
    widths = sorted({k.in_channels // k.groups for k in GROUPED_CONVS})
    off_block = [w for w in widths if w % 8 and w > 4]
    assert len(off_block) >= 5 and max(off_block) >= 56, widths
    narrow = [k for k in GROUPED_CONVS if (k.in_channels // k.groups) % 8]
    assert len(narrow) >= 10


def test_grouped_convolutions_off_the_block_pay_per_unfolded_row() -> None:
    """A device on which a grouped convolution off the block pays a fixed time per row of
    its unfolded input (an input channel and window tap) besides its multiply-adds: with
    the rows as a term and the grid's small maps, the ``conv:grouped`` fit prices RegNet's
    last grouped convolutions at 96x96 (3 to 12 px) as well as the grid's large maps. A
    constant per convolution, which a fit without the term has to use, misses one or the
    other."""
    overhead = 0.005

    def rows(k: Kernel) -> int:
        return k.in_channels * k.kernel * k.window_w

    def ms(k: Kernel) -> float:
        return overhead + 0.001 + 2e-8 * k.macs + 1.3e-5 * rows(k)

    grid = [replace(k, unblocked=True) for k in GROUPED_CONVS
            if (k.in_channels // k.groups) % nchwc_block()]
    assert min(k.height for k in grid) <= 3
    measured = tuple(KernelMeasurement(k, LatencyMeasurement(ms(k), ms(k), ms(k), 10, True))
                     for k in grid)
    profile = HardwareProfile("onnxruntime", "x", {"threads": 1}, {},
                              LatencyMeasurement(overhead, overhead, overhead, 10, True),
                              measured)
    model = LatencyModel(profile)
    assert not model.lowered  # no layout kernels: nodes are costed as given
    regnet = [Kernel("conv", c, c, s, s, kernel=3, stride=stride, groups=c // 8,
                     unblocked=True)
              for c, s, stride in ((200, 3, 1), (200, 6, 2), (80, 6, 1), (32, 12, 1),
                                   (16, 48, 2))]
    for k in (*grid, *regnet):
        node_ms, _ = model.kernel_ms(NodeKernel("n", "Conv", k))
        assert node_ms == pytest.approx(ms(k) - overhead, rel=0.03), k
    assert ONNXRUNTIME_RULES.features(regnet[0])[-2] == rows(regnet[0])
    # blocked, dense and depthwise convolutions have no such term
    for k in (replace(regnet[0], unblocked=False), Kernel("conv", 8, 8, 3, 3, kernel=3,
                                                          unblocked=True),
              Kernel("dwconv", 18, 18, 3, 3, kernel=3, groups=18, unblocked=True)):
        assert ONNXRUNTIME_RULES.features(k)[-2] == 0.0, k


def test_onnxruntime_grid_has_narrow_pointwise_convolutions_on_large_maps() -> None:
    """Inverted-residual blocks expand and project few channels on the large maps of their
    first stages; a pointwise fit pulled by the grid's many-channel and small-map kernels put
    those at 1.2-1.7x their one-kernel times (``docs/latency.md``, "Narrow pointwise
    convolutions"). The profile measures some of each: expansions and projections, on maps
    from 24 to 48 px, with no more than 96 channels on either side."""
    grid = [k for k in ONNXRUNTIME_RULES.grid_kernels if k.kind == "conv1x1"]
    narrow = [k for k in grid if max(k.in_channels, k.out_channels) <= 96 and k.height >= 24]
    assert set(NARROW_POINTWISE) <= set(narrow)
    assert len(narrow) >= 8
    assert any(k.out_channels > k.in_channels for k in narrow)  # expansions
    assert any(k.out_channels < k.in_channels for k in narrow)  # projections
    assert {24, 48} <= {k.height for k in narrow}
    assert min(k.in_channels for k in narrow) <= 8


def _residual_block() -> onnx.ModelProto:
    """x -> conv -> relu_a -> add(x) -> relu_b -> y (8 channels at 8x8)."""
    weight = numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu_a"),
             helper.make_node("Add", ["r", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu_b")]
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 8, 8]) for n in "xy"]
    return helper.make_model(helper.make_graph(nodes, "block", value[:1], value[1:], [weight]),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_tvm_fuses_the_residual_add_and_relu_into_the_conv_onnxruntime_does_not() -> None:
    model = _residual_block()
    ort = {n.node: n for n in kernels_of(model, rules=ONNXRUNTIME_RULES)}
    assert ort["relu_a"].note == "fused into Conv"
    assert ort["add"].kernel is not None and ort["relu_b"].kernel is not None
    tvm = {n.node: n for n in kernels_of(model, rules=TVM_RULES)}
    assert [tvm[n].kernel for n in ("relu_a", "add", "relu_b")] == [None] * 3
    assert {tvm[n].note for n in ("relu_a", "add", "relu_b")} == {"fused into Conv"}
    assert tvm["conv"].kernel == ort["conv"].kernel
    assert kernels_of(model) == kernels_of(model, rules=NEUTRAL_RULES)


# --- local profiles --------------------------------------------------------------------------


def test_is_local_needs_this_device_and_the_installed_backend(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    profile = profile_backend(get_backend("onnxruntime"), path, grid=[Kernel("conv", 8, 8, 4,
                                                                              4, kernel=3)],
                              settings=FAST, rounds=1, adaptive=0)
    assert is_local(HardwareProfile.load(path))
    other_cpu = replace(profile, device={**profile.device, "cpu": "another CPU"})
    assert not is_local(other_cpu)
    other_isa = replace(profile, device={**profile.device, "features": ["avx512_vnni"]})
    assert not is_local(other_isa)
    assert not is_local(replace(profile, backend_version="0.0.1"))
    assert not is_local(replace(profile, backend="no-such-backend"))
    assert not is_local(replace(profile, backend_settings={"threads": 0}))
    pytest.importorskip("tvm")
    remote = replace(profile, backend="tvm", backend_settings={"rpc": "device:9090"})
    assert not is_local(remote)


_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_1 avx fma avx2 aes\n"


def test_a_cpu_is_told_apart_by_the_kernel_features_its_name_hides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_device, "_cpuinfo", lambda: _AVX2.replace("avx2", "avx2 avx512f"))
    profiled = describe_device()
    monkeypatch.setattr(_device, "_cpuinfo", lambda: _AVX2)
    here = describe_device()
    assert profiled["cpu"] == here["cpu"] == "AMD EPYC"
    assert here["features"] == ["avx", "avx2", "fma", "sse4_1"]
    assert not same_device(profiled, here)
    assert same_device(here, describe_device())
    # a profile written before devices recorded features is compared by the rest
    assert same_device({k: v for k, v in profiled.items() if k != "features"}, here)
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sve\n"
    assert cpu_features(arm) == ["asimd", "asimddp", "sve"]
    assert cpu_features("") == []


# --- measuring -------------------------------------------------------------------------------


def test_median_of_rounds_keeps_the_spread_of_all_rounds() -> None:
    rounds = [LatencyMeasurement(1.0, 0.9, 1.2, 10, True),
              LatencyMeasurement(3.0, 2.5, 3.5, 10, False),
              LatencyMeasurement(2.0, 1.9, 2.1, 20, True)]
    m = median_of_rounds(rounds)
    assert (m.median_ms, m.p25_ms, m.p75_ms, m.runs, m.stable) == (2.0, 0.9, 3.5, 40, False)
    assert median_of_rounds(rounds[:1]) == rounds[0]
    assert median_of_rounds(rounds[:2]).median_ms == 2.0
    with pytest.raises(ValueError, match="at least one"):
        median_of_rounds([])


def test_nnls_solves_a_known_problem() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x, residual = nnls(a, a @ np.array([2.0, 3.0]))
    assert x == pytest.approx([2.0, 3.0]) and residual == pytest.approx(0.0, abs=1e-12)
    x, _ = nnls(a, np.array([-1.0, 2.0, 1.0]))  # unconstrained: x0 < 0
    assert x[0] == 0.0 and x[1] > 0


def test_nnls_agrees_with_scipy() -> None:
    scipy_nnls = pytest.importorskip("scipy.optimize").nnls
    rng = np.random.default_rng(0)
    for _ in range(300):
        rows, columns = int(rng.integers(2, 30)), int(rng.integers(1, 7))
        a = rng.standard_normal((rows, columns))
        if columns > 1 and rng.random() < 0.3:
            a[:, -1] = a[:, 0]  # collinear columns, as gemm's MACs and weights at M=1
        b = rng.standard_normal(rows)
        ours, residual = nnls(a, b)
        theirs, expected = scipy_nnls(a, b)
        assert (ours >= 0).all()
        assert residual == pytest.approx(expected, rel=1e-9, abs=1e-12)
        if np.linalg.matrix_rank(a) == columns:
            np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)


# --- int8 ------------------------------------------------------------------------------------


def _int8_weights(model: bytes) -> np.ndarray:
    proto = onnx.load_from_string(model)
    return np.concatenate([numpy_helper.to_array(init).ravel() for init in
                           proto.graph.initializer
                           if init.data_type == TensorProto.INT8 and len(init.dims) == 4])


def test_profiled_int8_kernels_have_the_7_bit_weights_of_deployed_models() -> None:
    weights = _int8_weights(kernel_graph(Kernel("conv", 8, 16, 8, 8, kernel=3,
                                                precision="int8")))
    assert weights.size == 16 * 8 * 9
    assert np.abs(weights.astype(int)).max() == 64  # reduce_range, as quantize_onnx
