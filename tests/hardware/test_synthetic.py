"""The synthetic backend: a deterministic stand-in device whose latency is a known formula."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from autocompress.exceptions import ProfileError
from autocompress.hardware import HardwareProfile, LatencyModel, get_backend, is_local
from autocompress.hardware._qdq import quantize_qdq
from autocompress.hardware._tools import estimate_onnx
from autocompress.hardware.backends.synthetic import (
    COEFFICIENTS,
    INT8_FACTOR,
    OVERHEAD_MS,
    SCALE_ENV,
    SyntheticBackend,
)
from autocompress.hardware.export import export_onnx
from autocompress.hardware.kernels import KINDS, Kernel, kernel_graph, overhead_graph
from autocompress.hardware.profiler import profile_backend
from autocompress.hardware.rules import neutral_features
from autocompress.models import create_model

CONV = Kernel("conv", 8, 16, 8, 8, kernel=3)


def _cost(kernel: Kernel, factor: float = 1.0) -> float:
    weights = np.array(COEFFICIENTS[kernel.kind])
    weights[1:] *= factor
    return float(weights @ neutral_features(kernel))


@pytest.fixture(scope="module")
def backend() -> SyntheticBackend:
    return SyntheticBackend(scale=1.0)


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic device's profile over the default grid, fp32 and int8 (seconds)."""
    path = tmp_path_factory.mktemp("synthetic") / "p.json"
    profile_backend(SyntheticBackend(scale=1.0), path, rounds=1, precisions=("fp32", "int8"))
    return path


@pytest.fixture(scope="module")
def resnet20_8x8() -> bytes:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    return export_onnx(model, torch.zeros(1, 1, 8, 8))


def test_measure_is_the_formula_exactly(backend: SyntheticBackend) -> None:
    overhead = backend.measure(overhead_graph())
    assert overhead.median_ms == pytest.approx(OVERHEAD_MS + _cost(Kernel("elementwise", 1, 1,
                                                                          1, 1)))
    conv = backend.measure(kernel_graph(CONV))  # the ReLU is fused: the conv alone
    assert conv.median_ms == pytest.approx(OVERHEAD_MS + _cost(CONV))
    assert conv.median_ms == conv.p25_ms == conv.p75_ms and conv.stable
    assert backend.measure(kernel_graph(CONV)) == conv  # deterministic
    assert SyntheticBackend(scale=1.0).measure_many([kernel_graph(CONV)], rounds=3)[0] \
        .median_ms == conv.median_ms


def test_int8_graphs_cost_their_kernels_and_conversions(backend: SyntheticBackend) -> None:
    int8 = dataclasses.replace(CONV, precision="int8")
    measured = backend.measure(kernel_graph(int8)).median_ms
    # a QDQ conv: the input quantized, the conv in int8, its output dequantized
    expected = (OVERHEAD_MS + _cost(CONV, INT8_FACTOR) + _cost(Kernel("quantize", 8, 8, 8, 8))
                + _cost(Kernel("dequantize", 16, 16, 8, 8)))
    assert measured == pytest.approx(expected)
    # mixed precision: the middle conv of a chain in int8 pays two conversions
    fp32_conv = _cost(Kernel("conv1x1", 16, 16, 8, 8))
    int8_conv = _cost(Kernel("conv1x1", 16, 16, 8, 8), INT8_FACTOR)
    conversions = _cost(Kernel("quantize", 16, 16, 8, 8)) + _cost(Kernel("dequantize", 16, 16,
                                                                        8, 8))
    island = backend.measure(kernel_graph(Kernel("island", 16, 16, 8, 8, precision="int8")))
    assert island.median_ms == pytest.approx(OVERHEAD_MS + 2 * fp32_conv + int8_conv
                                             + conversions)
    chain = backend.measure(kernel_graph(Kernel("chain", 16, 16, 8, 8)))
    assert chain.median_ms == pytest.approx(OVERHEAD_MS + 3 * fp32_conv)


def test_scale_comes_from_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    model = kernel_graph(CONV)
    base = SyntheticBackend(scale=1.0).measure(model).median_ms
    monkeypatch.setenv(SCALE_ENV, "0.4")
    faster = get_backend("synthetic")
    assert faster.settings() == {"scale": 0.4, "channel_block": 1}
    assert faster.describe_device() == {"cpu": "synthetic", "scale": 0.4}
    assert faster.measure(model).median_ms == pytest.approx(0.4 * base)
    assert get_backend("synthetic", scale=2.5).measure(model).median_ms == pytest.approx(
        2.5 * base)  # the option wins over the environment
    monkeypatch.setenv(SCALE_ENV, "fast")
    with pytest.raises(ProfileError, match=SCALE_ENV):
        get_backend("synthetic")
    monkeypatch.delenv(SCALE_ENV)
    assert get_backend("synthetic").settings() == {"scale": 1.0, "channel_block": 1}
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ProfileError, match="positive"):
            SyntheticBackend(scale=bad)


def test_run_computes_real_outputs(backend: SyntheticBackend) -> None:
    model = kernel_graph(CONV)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 8)).astype(np.float32)
    expected = get_backend("onnxruntime").run(model, x)
    np.testing.assert_array_equal(backend.run(model, x), expected)


def test_profile_fits_the_formula_and_is_local(profile_path: Path) -> None:
    profile = HardwareProfile.load(profile_path, backend="synthetic")
    assert profile.backend_version == "synthetic-1"
    assert profile.precisions == ("fp32", "int8")
    assert profile.device == {"cpu": "synthetic", "scale": 1.0}
    assert is_local(profile)
    model = LatencyModel(profile)
    for precision, fits in model.precision_fits.items():
        assert set(KINDS) <= set(fits)
        for fit in fits.values():
            assert fit.rel_rmse < 1e-9, (precision, fit)  # the formula is linear in them


def test_estimate_of_resnet20_agrees_with_the_measurement(
    profile_path: Path, resnet20_8x8: bytes, backend: SyntheticBackend, tmp_path: Path,
) -> None:
    """What is left is the one-element Add of the overhead graph, counted once per node."""
    measured = backend.measure(resnet20_8x8).median_ms
    assert 0.05 < measured < 1.0  # the ballpark of ONNX Runtime on a small CPU
    assert OVERHEAD_MS < 0.15 * measured
    estimate = LatencyModel(HardwareProfile.load(profile_path)).estimate(resnet20_8x8)
    assert estimate.latency_ms == pytest.approx(measured, rel=0.04)
    proto = onnx.load_from_string(resnet20_8x8)
    path = tmp_path / "int8.onnx"
    path.write_bytes(quantize_qdq(proto, nodes_to_exclude=["/fc/Gemm"]))
    int8_measured = backend.measure(path.read_bytes()).median_ms
    assert int8_measured < measured  # int8 kernels are cheaper on this device
    assert estimate_onnx(profile_path, path).latency_ms == pytest.approx(int8_measured,
                                                                         rel=0.04)


def test_a_scaled_device_scales_every_estimate(tmp_path: Path) -> None:
    """scale=0.4 simulates a host 2.5x faster: every measurement and estimate is 0.4x."""
    grid = [Kernel("conv", c, c, s, s, kernel=3) for c in (8, 16, 32) for s in (4, 8)]
    conv = kernel_graph(Kernel("conv", 24, 24, 8, 8, kernel=3))
    estimates = {}
    for scale in (1.0, 0.4):
        profile = profile_backend(SyntheticBackend(scale=scale), tmp_path / f"{scale}.json",
                                  grid=grid, rounds=1, adaptive=0)
        estimates[scale] = LatencyModel(profile).estimate(conv).latency_ms
    assert estimates[0.4] == pytest.approx(0.4 * estimates[1.0], rel=1e-9)


def test_measure_apart_runs_the_backend_as_configured_in_a_fresh_process() -> None:
    from autocompress.hardware._apart import measure_apart

    backend = SyntheticBackend(scale=3.0)  # a setting the fresh process must rebuild
    models = [kernel_graph(CONV), overhead_graph(), kernel_graph(Kernel("conv1x1", 16, 32, 4, 4))]
    passes = measure_apart(models, backend, rounds=2, passes=2)
    here = backend.measure_many(models, rounds=2)
    assert [[m.median_ms for m in one] for one in passes] == [[m.median_ms for m in here]] * 2
    assert SyntheticBackend(scale=1.0).measure(models[0]).median_ms < here[0].median_ms


def test_measure_apart_raises_what_failed_in_the_fresh_process() -> None:
    from autocompress.exceptions import ExportError
    from autocompress.hardware._apart import measure_apart

    with pytest.raises(ExportError, match="not a readable ONNX model"):
        measure_apart([kernel_graph(CONV), b"not an onnx graph"], SyntheticBackend(scale=1.0))


def test_a_backend_apart_measures_in_one_worker_process_and_delegates_the_rest() -> None:
    from autocompress.hardware._apart import ApartBackend

    backend = SyntheticBackend(scale=3.0)
    worker = ApartBackend(backend)
    models = [kernel_graph(CONV), overhead_graph()]
    try:
        first = worker.measure_many(models, rounds=2)
        pid = worker._worker.pid
        assert [m.median_ms for m in first] == [m.median_ms for m in
                                                 backend.measure_many(models, rounds=2)]
        assert worker.measure(models[0]) == backend.measure(models[0])
        assert worker._worker.pid == pid  # the same process measured both
        assert worker.settings() == backend.settings() and worker.name == "synthetic"
        from autocompress.exceptions import ExportError
        with pytest.raises(ExportError, match="not a readable ONNX model"):
            worker.measure(b"not an onnx graph")  # raised there, again here
        assert worker.measure(models[1]) == backend.measure(models[1])  # and it goes on
    finally:
        worker.close()
    assert worker._worker is None


def test_only_onnx_runtime_on_this_cpu_is_measured_apart() -> None:
    from autocompress.hardware import get_backend
    from autocompress.hardware._apart import ApartBackend, apart

    synthetic = SyntheticBackend(scale=1.0)
    assert apart(synthetic) is synthetic
    assert isinstance(apart(get_backend("onnxruntime", threads=1)), ApartBackend)


def test_a_worker_process_ends_with_its_backend() -> None:
    import gc

    from autocompress.hardware._apart import ApartBackend

    def measured_once():
        worker = ApartBackend(SyntheticBackend(scale=1.0))
        worker.measure(kernel_graph(CONV))
        return worker._worker

    process = measured_once()  # no one holds the backend now (the exit hook: a weak ref)
    gc.collect()
    assert process.wait(timeout=10) == 0
