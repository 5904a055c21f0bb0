from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from autocompress.exceptions import MissingDependencyError, ProfileError
from autocompress.hardware import (
    HardwareProfile,
    LatencyMeasurement,
    LatencyModel,
    MeasureSettings,
    get_backend,
)
from autocompress.hardware.backends import time_callable
from autocompress.hardware.backends._ort_lowering import runtime_kernels
from autocompress.hardware.backends.onnxruntime import OnnxRuntimeBackend
from autocompress.hardware.backends.synthetic import SyntheticBackend
from autocompress.hardware.export import export_onnx
from autocompress.hardware.kernels import (
    KINDS,
    LAYOUT_KINDS,
    Kernel,
    NodeKernel,
    kernel_graph,
    kernels_of,
    overhead_graph,
)
from autocompress.hardware.latency import fit_calibration
from autocompress.hardware.profile import PROFILE_FORMAT_VERSION, KernelMeasurement
from autocompress.hardware.profiler import (
    GRID_NAME,
    OVERHEAD_EVERY,
    adaptive_kernels,
    default_grid,
    profile_backend,
)
from autocompress.models import create_model
from autocompress.space import SearchSpace
from autocompress.transforms import find_channel_groups, prune_channels

FAST = MeasureSettings(warmup_runs=2, warmup_s=0.0, max_time_s=0.05, min_runs=10,
                       round_runs=10)
KEEP_RATIOS = (0.25, 0.5, 0.75, 1.0)


def _small_grid() -> list[Kernel]:
    """Every 8th kernel of the default grid, plus at least two of each kind."""
    grid = default_grid()
    small = grid[::8]
    for kind in KINDS:
        extra = [k for k in grid if k.kind == kind and k not in small]
        while sum(k.kind == kind for k in small) < 2:
            small.append(extra.pop(0))
    return small


@pytest.fixture(scope="module")
def backend() -> OnnxRuntimeBackend:
    return get_backend("onnxruntime", threads=1)


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory, backend: OnnxRuntimeBackend) -> Path:
    path = tmp_path_factory.mktemp("profile") / "ort.json"
    profile_backend(backend, path, grid=_small_grid(), settings=FAST, rounds=1, adaptive=0)
    return path


@pytest.fixture(scope="module")
def profile(profile_path: Path) -> HardwareProfile:
    return HardwareProfile.load(profile_path, backend="onnxruntime")


@pytest.fixture(scope="module")
def latency_model(profile: HardwareProfile) -> LatencyModel:
    return LatencyModel(profile)


@pytest.fixture(scope="module")
def resnet20_onnx() -> dict[float, bytes]:
    """resnet20 (1x1x32x32) uniformly pruned to each keep ratio of KEEP_RATIOS, exported."""
    torch.manual_seed(0)
    base = create_model("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 32, 32)
    groups = [g.name for g in find_channel_groups(base, x)]
    bound = SearchSpace.default().bind(groups, [])
    out = {}
    for ratio in KEEP_RATIOS:
        model = create_model("resnet20", num_classes=10, in_channels=1).eval()
        model.load_state_dict(base.state_dict())
        prune_channels(model, bound.uniform(ratio), x)
        out[ratio] = export_onnx(model, x)
    return out


# --- kernels ---------------------------------------------------------------------------------


def _expected_shape(k: Kernel) -> tuple[int, ...]:
    if k.kind == "gemm":
        return (k.height, k.out_channels)
    return (1, k.out_channels, k.out_height, k.out_width)


_HAND_KERNELS = [
    Kernel("conv", 3, 16, 15, 15, kernel=3, stride=2),
    Kernel("conv", 8, 12, 9, 9, kernel=5),
    Kernel("conv1x1", 24, 40, 8, 8, kernel=1, stride=2),
    Kernel("dwconv", 32, 32, 7, 7, kernel=3, stride=2, groups=32),
    Kernel("gemm", 64, 10, 1, 1),
    Kernel("pool", 16, 16, 7, 7, kernel=0),
    Kernel("pool", 16, 16, 8, 8, kernel=3, stride=2),
    Kernel("elementwise", 8, 8, 5, 5),
]


@pytest.mark.parametrize("kernel", _HAND_KERNELS + [next(k for k in default_grid()
                                                         if k.kind == kind) for kind in KINDS],
                         ids=lambda k: f"{k.kind}-{k.in_channels}-{k.out_channels}-{k.height}"
                                       f"-k{k.kernel}s{k.stride}")
def test_kernel_graph_runs_in_onnxruntime_with_the_right_shape(
    backend: OnnxRuntimeBackend, kernel: Kernel,
) -> None:
    model_bytes = kernel_graph(kernel)
    onnx.checker.check_model(onnx.load_from_string(model_bytes), full_check=True)
    session = backend.session(model_bytes)
    (output,) = session.run(None, backend.random_inputs(session))
    assert output.shape == _expected_shape(kernel)
    assert np.isfinite(output).all()


def test_kernel_graph_is_deterministic_per_seed() -> None:
    kernel = _HAND_KERNELS[0]
    assert kernel_graph(kernel, seed=3) == kernel_graph(kernel, seed=3)
    assert kernel_graph(kernel, seed=3) != kernel_graph(kernel, seed=4)


def test_kernels_of_a_kernel_graph_recovers_the_kernel() -> None:
    """What the profile measures is exactly what the estimate of a model looks up."""
    for kernel in _small_grid() + _HAND_KERNELS:
        nodes = kernels_of(onnx.load_from_string(kernel_graph(kernel)))
        costed = [n.kernel for n in nodes if n.kernel is not None]
        assert costed == [kernel]
        if kernel.kind in ("conv", "conv1x1", "dwconv"):
            assert [n.note for n in nodes if n.kernel is None] == ["fused into Conv"]


def test_kernel_dict_round_trip_and_macs() -> None:
    for kernel in _HAND_KERNELS:
        assert Kernel.from_dict(kernel.to_dict()) == kernel
        assert Kernel.from_dict({**kernel.to_dict(), "latency": {}}) == kernel
    conv = Kernel("conv", 8, 16, 10, 10, kernel=3)
    assert (conv.out_height, conv.out_width) == (10, 10)
    assert conv.macs == 16 * 10 * 10 * 8 * 9
    dw = Kernel("dwconv", 32, 32, 8, 8, kernel=3, stride=2, groups=32)
    assert dw.macs == 32 * 4 * 4 * 9 and dw.weight_elements == 32 * 9
    assert Kernel("pool", 8, 8, 7, 7, kernel=0).out_elements == 8


def test_kernels_of_resnet20_finds_convs_and_fuses_relus(resnet20_onnx: dict[float, bytes]
                                                         ) -> None:
    nodes = kernels_of(onnx.load_from_string(resnet20_onnx[1.0]))
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == 21  # stem + 18 block convs + 2 projection shortcuts
    assert Counter(n.kernel.kind for n in convs) == {"conv": 19, "conv1x1": 2}
    assert sum(n.kernel.stride == 2 for n in convs) == 4
    assert convs[0].kernel == Kernel("conv", 1, 16, 32, 32, kernel=3, stride=1)
    assert {n.kernel.out_channels for n in convs} == {16, 32, 64}
    relus = [n for n in nodes if n.op_type == "Relu"]
    fused = [n for n in relus if n.kernel is None]
    assert len(fused) == 10  # the stem's and each block's first ReLU follow a Conv directly
    assert all(n.note == "fused into Conv" for n in fused)
    assert all(n.kernel is not None and n.kernel.kind == "elementwise"
               for n in relus if n not in fused)  # ReLUs after the residual add
    assert [n.kernel.kind for n in nodes if n.op_type == "Gemm"] == ["gemm"]
    assert [n.kernel for n in nodes if n.op_type == "Gemm"][0].out_channels == 10


def test_kernels_of_pruned_resnet20_sees_fewer_channels(resnet20_onnx: dict[float, bytes]
                                                        ) -> None:
    full = kernels_of(onnx.load_from_string(resnet20_onnx[1.0]))
    half = kernels_of(onnx.load_from_string(resnet20_onnx[0.5]))
    assert [n.op_type for n in full] == [n.op_type for n in half]
    full_convs = [n.kernel for n in full if n.op_type == "Conv"]
    half_convs = [n.kernel for n in half if n.op_type == "Conv"]
    assert all(h.out_channels * 2 == f.out_channels for f, h in zip(full_convs, half_convs,
                                                                      strict=True))


# --- profiling and the profile file ----------------------------------------------------------


def test_default_grid_is_deterministic_and_covers_every_kind() -> None:
    grid = default_grid()
    assert grid == default_grid()
    assert grid != default_grid(seed=1)
    assert set(Counter(k.kind for k in grid)) == set(KINDS)
    assert len(set(grid)) == len(grid)
    assert all(k.macs <= 120_000_000 and k.out_height >= 1 for k in grid)


def test_profile_holds_one_measurement_per_grid_kernel(profile: HardwareProfile) -> None:
    grid = _small_grid()
    # then ONNX Runtime's reorders into and out of its blocked layout (a CPU profile), then
    # its weight-streaming chains
    backend = get_backend("onnxruntime")
    layout, stream = list(backend.layout_kernels), list(backend.stream_kernels)
    assert layout and stream
    assert [m.kernel for m in profile.kernels] == grid + layout + stream
    assert profile.backend == "onnxruntime" and profile.threads == 1
    assert profile.grid == GRID_NAME
    assert profile.measure_settings["rounds"] == 1
    assert profile.measure_settings["min_runs"] == FAST.min_runs
    for m in (profile.overhead, *(k.latency for k in profile.kernels)):
        assert 0 < m.p25_ms <= m.median_ms <= m.p75_ms
        assert m.runs >= FAST.round_runs


def test_profile_save_load_round_trip(profile: HardwareProfile, profile_path: Path,
                                      tmp_path: Path) -> None:
    again = HardwareProfile.load(profile_path)
    assert again.to_dict() == profile.to_dict()
    copy_path = profile.save(tmp_path / "sub" / "copy.json")
    loaded = HardwareProfile.load(copy_path)
    assert loaded.kernels == profile.kernels
    assert loaded.overhead == profile.overhead
    assert loaded.backend_settings == profile.backend_settings
    assert loaded == profile
    assert not profile_path.with_name(profile_path.name + ".partial").exists()


def test_profile_round_trip_keeps_elapsed_time(profile: HardwareProfile, tmp_path: Path
                                               ) -> None:
    original = dataclasses.replace(profile, elapsed_s=1.234)
    assert HardwareProfile.load(original.save(tmp_path / "p.json")) == original


def _rewrite(source: Path, target: Path, **changes: object) -> Path:
    data = json.loads(source.read_text())
    data.update(changes)
    target.write_text(json.dumps(data))
    return target


def test_profile_of_another_format_version_is_refused(profile_path: Path, tmp_path: Path
                                                      ) -> None:
    path = _rewrite(profile_path, tmp_path / "v2.json", format_version=PROFILE_FORMAT_VERSION + 1)
    with pytest.raises(ProfileError, match=f"format_version {PROFILE_FORMAT_VERSION + 1}") as info:
        HardwareProfile.load(path)
    assert str(path) in str(info.value)


def test_profile_of_another_backend_is_refused(profile_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        HardwareProfile.load(profile_path, backend="tvm")
    message = str(info.value)
    assert "'onnxruntime'" in message and "'tvm'" in message and str(profile_path) in message


@pytest.mark.parametrize(("content", "fragment"), [
    ("{not json", "not readable JSON"),
    (b"\xff\xfe\x00garbage", "not readable JSON"),
    ('{"kernels": []}', "not an autocompress hardware profile"),
    ("[1, 2, 3]", "not an autocompress hardware profile"),
])
def test_unreadable_profile_is_refused(tmp_path: Path, content: str | bytes, fragment: str
                                       ) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ProfileError, match=fragment) as info:
        HardwareProfile.load(path)
    assert str(path) in str(info.value)


def test_missing_profile_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "missing.json"
    with pytest.raises(ProfileError, match="does not exist") as info:
        HardwareProfile.load(path)
    assert str(path) in str(info.value) and "autocompress profile" in str(info.value)


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"kernels": []}, "no kernel measurements"),
    ({"kernels": [{"kind": "conv"}]}, "malformed"),
    ({"overhead": {"median_ms": 1.0}}, "malformed"),
    ({"backend": "onnxruntime"}, "malformed"),
])
def test_malformed_profile_is_refused(profile_path: Path, tmp_path: Path,
                                      changes: dict, fragment: str) -> None:
    path = _rewrite(profile_path, tmp_path / "bad.json", **changes)
    with pytest.raises(ProfileError, match=fragment):
        HardwareProfile.load(path)


def test_interrupted_profiling_resumes_from_partial_file(
    backend: OnnxRuntimeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    grid = sorted(_small_grid(), key=lambda k: k.macs)[:15]
    out = tmp_path / "resume.json"
    partial = out.with_name(out.name + ".partial")
    calls: list[int] = []
    measure = backend.measure

    def counting_measure(model: bytes, settings: MeasureSettings | None = None
                         ) -> LatencyMeasurement:
        calls.append(1)
        return measure(model, settings)

    monkeypatch.setattr(backend, "measure", counting_measure)

    class Interrupted(Exception):
        pass

    def interrupt(done: int, total: int) -> None:
        assert total == len(grid) + 1
        if done == 12:
            raise Interrupted

    with pytest.raises(Interrupted):
        profile_backend(backend, out, grid=grid, settings=FAST, rounds=1, adaptive=0,
                        progress=interrupt, sweep=False, layout=False,
                        streaming=False)
    first_calls = len(calls)
    assert first_calls == 12  # the overhead and 11 kernels
    assert partial.is_file() and not out.exists()
    saved = json.loads(partial.read_text())["done"]
    assert 0 < len(saved) < len(grid)

    calls.clear()
    seen: list[int] = []
    result = profile_backend(backend, out, grid=grid, settings=FAST, rounds=1, adaptive=0,
                             progress=lambda done, total: seen.append(done), sweep=False,
                             layout=False, streaming=False)
    # the overhead before and after the round, and what was not saved
    assert len(calls) == 2 + len(grid) - len(saved)
    assert len(calls) < 2 + len(grid)
    assert seen[-1] == len(grid) + 1
    assert [m.kernel for m in result.kernels] == grid
    assert out.is_file() and not partial.exists()
    assert HardwareProfile.load(out).kernels == result.kernels


def test_partial_file_of_other_backend_settings_is_not_reused(tmp_path: Path) -> None:
    grid = sorted(_small_grid(), key=lambda k: k.macs)[:3]
    out = tmp_path / "p.json"
    partial = out.with_name(out.name + ".partial")
    other = get_backend("onnxruntime", threads=2)
    done = {json.dumps(k.to_dict(), sort_keys=True): [dict(median_ms=99.0, p25_ms=98.0,
                                                          p75_ms=100.0, runs=1, stable=True)]
            for k in grid}
    partial.write_text(json.dumps({"backend": other.settings(), "grid": GRID_NAME,
                                   "done": done}))
    result = profile_backend(get_backend("onnxruntime", threads=1), out, grid=grid,
                             settings=FAST, rounds=1, adaptive=0)
    assert all(m.latency.median_ms != 99.0 for m in result.kernels)
    assert all(m.latency.runs >= FAST.round_runs for m in result.kernels)


def test_adaptive_sampling_adds_neighbours_of_the_worst_fitted_kernel() -> None:
    convs = [Kernel("conv", c, c, 8, 8, kernel=3) for c in (16, 32, 48, 64, 96, 128)]
    measured = [(k, 1e-3 + k.macs * 1e-8) for k in convs]
    outlier = convs[2]
    measured[2] = (outlier, 10 * measured[2][1])
    extra = adaptive_kernels(measured, 2)
    assert len(extra) == 2
    assert all(k.kind == "conv" and k not in convs for k in extra)
    assert {k.out_channels for k in extra} == {outlier.out_channels + 8, outlier.out_channels - 8}
    assert adaptive_kernels(measured, 0) == []


def test_profile_with_adaptive_sampling_measures_extra_kernels(tmp_path: Path) -> None:
    grid = [k for k in _small_grid() if k.kind in ("conv", "elementwise")]
    result = profile_backend(get_backend("onnxruntime", threads=1), tmp_path / "p.json",
                             grid=grid, settings=FAST, rounds=1, adaptive=3, layout=False,
                             streaming=False)
    kernels = [m.kernel for m in result.kernels]
    assert kernels[:len(grid)] == grid
    assert len(kernels) == len(grid) + 3 and len(set(kernels)) == len(kernels)
    assert result.measure_settings["adaptive"] == 3


# --- latency model ---------------------------------------------------------------------------


def test_every_profiled_kind_gets_a_non_negative_fit(latency_model: LatencyModel) -> None:
    assert set(latency_model.fits) == set(KINDS) | set(LAYOUT_KINDS)
    for kind, fit in latency_model.fits.items():
        assert fit.kind == kind and fit.samples >= 2
        assert all(w >= 0 for w in fit.weights)
        assert len(fit.weights) == len(latency_model.rules.features(Kernel(kind, 8, 8, 4, 4)))
        assert fit.rel_rmse >= 0 and math.isfinite(fit.rel_rmse)


def test_estimate_is_overhead_plus_nodes(latency_model: LatencyModel,
                                         resnet20_onnx: dict[float, bytes]) -> None:
    estimate = latency_model.estimate(resnet20_onnx[1.0])
    overhead = latency_model.profile.overhead.median_ms
    assert estimate.overhead_ms == overhead
    assert estimate.latency_ms == pytest.approx(overhead + sum(ms for _, _, ms in
                                                                estimate.per_node_ms))
    assert estimate.latency_ms > overhead and estimate.std_ms >= 0
    # one entry per node ONNX Runtime runs: its optimized graph, with the ReLUs and residual
    # additions fused into the convolutions and one reorder out of the blocked layout
    assert latency_model.lowered
    ran = runtime_kernels(onnx.load_from_string(resnet20_onnx[1.0]))
    assert ran is not None and len(estimate.per_node_ms) == len(ran)
    assert [op for _, op, _ in estimate.per_node_ms].count("ReorderOutput") == 1
    assert "Relu" not in {op for _, op, _ in estimate.per_node_ms}
    assert estimate.unmodelled == ()
    assert estimate == latency_model.estimate(onnx.load_from_string(resnet20_onnx[1.0]))


def test_estimate_grows_with_keep_ratio(latency_model: LatencyModel,
                                        resnet20_onnx: dict[float, bytes]) -> None:
    estimates = [latency_model.estimate(resnet20_onnx[r]).latency_ms for r in KEEP_RATIOS]
    assert estimates == sorted(estimates)
    sizes = [len(resnet20_onnx[r]) for r in KEEP_RATIOS]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # the models really differ


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_cost_never_falls_with_more_channels(latency_model: LatencyModel, kind: str
                                                    ) -> None:
    def cost(channels_in: int, channels_out: int) -> float:
        if kind == "dwconv":
            kernel = Kernel(kind, channels_out, channels_out, 16, 16, kernel=3,
                            groups=channels_out)
        elif kind in ("pool", "elementwise"):
            kernel = Kernel(kind, channels_out, channels_out, 16, 16, kernel=0)
        elif kind == "gemm":
            kernel = Kernel(kind, channels_in, channels_out, 1, 1)
        else:
            kernel = Kernel(kind, channels_in, channels_out, 16, 16,
                            kernel=3 if kind == "conv" else 1)
        ms, std = latency_model.kernel_ms(NodeKernel("n", "Op", kernel))
        assert ms >= 0 and std >= 0
        return ms

    widths = list(range(8, 513, 24))
    by_out = [cost(64, c) for c in widths]
    by_in = [cost(c, 64) for c in widths]
    assert by_out == sorted(by_out)
    assert by_in == sorted(by_in)


def test_fused_and_free_nodes_cost_nothing(latency_model: LatencyModel) -> None:
    assert latency_model.kernel_ms(NodeKernel("relu", "Relu", None, "fused into Conv")) == (0, 0)


def test_missing_kind_in_profile_raises(profile: HardwareProfile) -> None:
    only_conv = dataclasses.replace(profile, kernels=tuple(
        m for m in profile.kernels if m.kernel.kind == "conv"))
    model = LatencyModel(only_conv)
    with pytest.raises(ProfileError, match="'gemm'"):
        model.kernel_ms(NodeKernel("fc", "Gemm", Kernel("gemm", 64, 10, 1, 1)))


def test_fit_recovers_a_known_linear_law() -> None:
    overhead = LatencyMeasurement(0.01, 0.009, 0.011, 10, True)
    kernels = []
    for c in (8, 16, 32, 64, 128):
        k = Kernel("elementwise", c, c, 8, 8)
        ms = 0.02 + 1e-5 * k.out_elements
        kernels.append(KernelMeasurement(k, LatencyMeasurement(ms, ms, ms, 10, True)))
    synthetic = HardwareProfile("onnxruntime", "x", {"threads": 1}, {}, overhead,
                                tuple(kernels))
    fit = LatencyModel(synthetic).fits["elementwise"]
    assert fit.weights == pytest.approx((0.02, 1e-5), rel=1e-6)
    assert fit.rel_rmse == pytest.approx(0.0, abs=1e-9)


def test_fit_calibration_recovers_an_affine_map() -> None:
    raw = [1.0, 2.0, 3.5, 5.0]
    scale, offset = fit_calibration(raw, [0.3 + 1.7 * r for r in raw])
    assert scale == pytest.approx(1.7) and offset == pytest.approx(0.3)


def test_fit_calibration_falls_back_to_a_ratio() -> None:
    assert fit_calibration([2.0], [5.0]) == (2.5, 0.0)
    assert fit_calibration([2.0, 2.0], [5.0, 3.0]) == (pytest.approx(2.5), 0.0)  # no spread
    scale, offset = fit_calibration([1.0, 4.0], [6.0, 2.0])  # decreasing: through the largest
    assert (scale, offset) == (pytest.approx(0.5), 0.0)


def test_calibrated_model_maps_estimates(latency_model: LatencyModel,
                                         resnet20_onnx: dict[float, bytes]) -> None:
    raw = latency_model.estimate(resnet20_onnx[0.5])
    calibrated = latency_model.calibrated(2.0, 0.5).estimate(resnet20_onnx[0.5])
    assert calibrated.latency_ms == pytest.approx(0.5 + 2.0 * raw.latency_ms)
    assert calibrated.std_ms == pytest.approx(2.0 * raw.std_ms)
    assert calibrated.scale == 2.0


@pytest.mark.parametrize(("scale", "offset"), [(0.0, 0.0), (-1.0, 0.0), (math.nan, 0.0),
                                               (math.inf, 0.0), (1.0, math.nan)])
def test_calibrated_rejects_bad_maps(latency_model: LatencyModel, scale: float,
                                     offset: float) -> None:
    with pytest.raises(ValueError, match="positive scale"):
        latency_model.calibrated(scale, offset)


# --- backends and timing ---------------------------------------------------------------------


def test_time_callable_reports_consistent_quartiles_and_enough_runs() -> None:
    calls: list[int] = []
    settings = MeasureSettings(warmup_runs=3, warmup_s=0.0, round_runs=10, min_runs=30,
                               rel_tolerance=1.0, max_time_s=5.0)
    m = time_callable(lambda: calls.append(sum(range(200))), settings)
    assert m.p25_ms <= m.median_ms <= m.p75_ms
    assert m.runs >= settings.min_runs and m.runs % settings.round_runs == 0
    assert m.runs == 30 and m.stable  # any round is "stable" with a 100% tolerance
    assert len(calls) == settings.warmup_runs + m.runs
    assert 0 <= m.rel_spread


def test_time_callable_stops_at_its_time_limit_and_says_unstable() -> None:
    settings = MeasureSettings(warmup_runs=0, warmup_s=0.0, round_runs=5, min_runs=1000,
                               max_time_s=0.0)
    m = time_callable(lambda: None, settings)
    assert m.runs == 5 and not m.stable  # one round, then the time limit
    assert m.p25_ms <= m.median_ms <= m.p75_ms


def test_measure_many_returns_one_measurement_per_model(backend: OnnxRuntimeBackend) -> None:
    models = [kernel_graph(k) for k in _HAND_KERNELS[:2]]
    results = backend.measure_many(models, FAST, rounds=2)
    assert len(results) == 2
    for m in results:
        assert m.runs >= 2 * FAST.round_runs
        assert m.p25_ms <= m.median_ms <= m.p75_ms


def test_backend_reports_its_settings(backend: OnnxRuntimeBackend) -> None:
    assert backend.name == "onnxruntime"
    settings = backend.settings()
    assert settings["threads"] == 1 and settings["device"] == "cpu"
    assert backend.version().count(".") >= 1
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    out = backend.run(kernel_graph(Kernel("gemm", 64, 10, 1, 1)), x)
    assert out.shape == (3, 10)  # fixed batch 1: run in three batches of one


def test_get_backend_refuses_unknown_names_and_settings() -> None:
    with pytest.raises(ProfileError, match="onnxruntime"):
        get_backend("tvm-nonexistent")
    with pytest.raises(ProfileError, match="cpu or cuda"):
        get_backend("onnxruntime", device="tpu")
    with pytest.raises(ValueError, match="threads"):
        get_backend("onnxruntime", threads=0)


def test_cuda_device_needs_the_gpu_build() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA ONNX Runtime")
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu"):
        get_backend("onnxruntime", device="cuda")


# --- GPU paths: run where a GPU is present, skipped elsewhere --------------------------------


def _has_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def test_onnxruntime_cuda_without_a_gpu_says_what_to_install() -> None:
    if _has_cuda_provider():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu"):
        get_backend("onnxruntime", device="cuda")


@pytest.mark.skipif(not _has_cuda_provider(), reason="needs onnxruntime-gpu and a GPU")
def test_onnxruntime_cuda_measures_a_kernel() -> None:
    backend = get_backend("onnxruntime", device="cuda")
    assert backend.settings()["providers"][0] == "CUDAExecutionProvider"
    m = backend.measure(kernel_graph(Kernel("conv", 32, 32, 16, 16, kernel=3)), FAST)
    assert m.median_ms > 0


class _Recording(SyntheticBackend):
    """The synthetic device, counting its measurements of the run-overhead graph; with
    ``first_slow``, its first measurement that many times slow (as after an idle spell)."""

    def __init__(self, first_slow: float = 1.0) -> None:
        super().__init__(scale=1.0)
        self.first_slow, self.calls, self.overheads = first_slow, 0, 0

    def measure(self, onnx_model: bytes, settings: MeasureSettings | None = None
                ) -> LatencyMeasurement:
        self.calls += 1
        self.overheads += onnx_model == overhead_graph()
        m = super().measure(onnx_model, settings)
        if self.calls > 1:
            return m
        f = self.first_slow
        return dataclasses.replace(m, median_ms=f * m.median_ms, p25_ms=f * m.p25_ms,
                                   p75_ms=f * m.p75_ms)


_BARE = {"adaptive": 0, "sweep": False, "layout": False, "streaming": False, "rounds": 2}


def test_a_slow_first_measurement_does_not_set_the_run_overhead(tmp_path: Path) -> None:
    """The overhead, subtracted from every kernel, is measured first, then among the kernels,
    and the median kept: a first measurement 1.5x slow is outvoted."""
    grid = _small_grid()[:12]
    steady = profile_backend(SyntheticBackend(scale=1.0), tmp_path / "a.json", grid=grid,
                             **_BARE)
    slow = profile_backend(_Recording(first_slow=1.5), tmp_path / "b.json", grid=grid, **_BARE)
    assert slow.overhead.median_ms == pytest.approx(steady.overhead.median_ms)
    assert slow.kernels == steady.kernels


def test_the_run_overhead_is_measured_among_the_kernels(tmp_path: Path) -> None:
    grid = default_grid()[:60]
    backend = _Recording()
    profile_backend(backend, tmp_path / "p.json", grid=grid, **_BARE)
    # first; after every OVERHEAD_EVERY ticks (the first overhead is tick 1, kernels 2-121);
    # after each of the two rounds
    assert backend.overheads == 1 + (1 + 2 * len(grid)) // OVERHEAD_EVERY + 2
