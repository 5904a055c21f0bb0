"""The contract every registered backend keeps, run for each one in the registry (a new
backend is covered by registering it). Behaviour only: nothing here asserts speed."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from autocompress.exceptions import MissingDependencyError, ProfileError
from autocompress.hardware import HardwareProfile, LatencyMeasurement, LatencyModel
from autocompress.hardware.backends import (
    Backend,
    MeasureSettings,
    available_backends,
    backend_for,
    get_backend,
    is_local,
)
from autocompress.hardware.kernels import PRECISIONS, Kernel, kernel_graph
from autocompress.hardware.profiler import profile_backend

FAST = MeasureSettings(warmup_runs=1, warmup_s=0.0, max_time_s=0.02, min_runs=5,
                       round_runs=5)
CONV = Kernel("conv", 4, 8, 6, 6, kernel=3)
GRID = [CONV, Kernel("conv", 8, 8, 6, 6, kernel=3)]
# options of variants that need hardware this machine may lack: skipped without it
_VARIANTS = {"onnxruntime": [{"device": "cuda"}], "tvm": [{"device": "cuda"}]}


def _variants() -> Iterator[object]:
    for name in available_backends():
        yield pytest.param((name, {}), id=name)
        for options in _VARIANTS.get(name, []):
            yield pytest.param((name, options), id="-".join([name, *map(str, options.values())]))


@pytest.fixture(scope="module", params=list(_variants()))
def backend(request: pytest.FixtureRequest) -> Backend:
    name, options = request.param
    if name == "tvm" and importlib.util.find_spec("tvm") is None:
        pytest.skip("Apache TVM is not installed")
    try:
        made = get_backend(name, **options)
        made.version()  # imports the runtime
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    except ProfileError as exc:
        if options.get("device") == "cuda":
            pytest.skip(f"no GPU here: {exc}")
        raise
    return made


@pytest.fixture(scope="module")
def conv_model() -> bytes:
    return kernel_graph(CONV)


def _reference(model: bytes, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's CPU output, one sample at a time."""
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _dynamic_batch(model: bytes) -> bytes:
    proto = onnx.load_from_string(model)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto.SerializeToString()


def test_is_registered_and_reports_a_version(backend: Backend) -> None:
    assert backend.name in available_backends()
    version = backend.version()
    assert isinstance(version, str) and version.strip()


def test_settings_are_json_and_rebuild_the_backend(backend: Backend) -> None:
    settings = backend.settings()
    assert json.loads(json.dumps(settings)) == settings
    again = backend_for(backend.name, json.loads(json.dumps(settings)))
    assert type(again) is type(backend)
    assert again.settings() == settings
    assert again.describe_device() == backend.describe_device()
    assert set(type(backend).options()) <= set(settings)  # every option is recorded


def test_precisions_start_with_fp32(backend: Backend) -> None:
    assert backend.precisions[0] == "fp32"
    assert set(backend.precisions) <= set(PRECISIONS)
    assert len(set(backend.precisions)) == len(backend.precisions)


def _valid(m: LatencyMeasurement) -> None:
    assert math.isfinite(m.median_ms) and m.median_ms > 0
    assert 0 < m.p25_ms <= m.median_ms <= m.p75_ms
    assert m.runs >= 1 and isinstance(m.stable, bool)


def test_measure_returns_a_positive_median_within_its_quartiles(backend: Backend,
                                                                 conv_model: bytes) -> None:
    _valid(backend.measure(conv_model, FAST))


def test_measures_every_precision_it_declares(backend: Backend) -> None:
    for precision in backend.precisions:
        _valid(backend.measure(kernel_graph(replace(CONV, precision=precision)), FAST))


def test_measure_many_keeps_order_and_interleaves_rounds(
    backend: Backend, conv_model: bytes, monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = kernel_graph(GRID[1])
    results = backend.measure_many([conv_model, other], FAST, rounds=2)
    assert len(results) == 2
    for m in results:
        _valid(m)
        assert m.runs >= 2
    calls: list[bytes] = []
    tagged = {conv_model: 1.0, other: 2.0}

    def fake(model: bytes, settings: MeasureSettings | None = None) -> LatencyMeasurement:
        calls.append(model)
        return LatencyMeasurement(tagged[model], tagged[model], tagged[model], 1, True)

    monkeypatch.setattr(backend, "measure", fake)
    assert [m.median_ms for m in backend.measure_many([other, conv_model], rounds=2)] == [2, 1]
    assert calls == [other, conv_model, other, conv_model]  # round robin


def test_run_matches_onnxruntime(backend: Backend, conv_model: bytes) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4, 6, 6)).astype(np.float32)
    got = backend.run(conv_model, x)  # a fixed batch of 1: three runs
    assert got.shape == (3, 8, 6, 6)
    np.testing.assert_allclose(got, _reference(conv_model, x), rtol=1e-3, atol=1e-3)
    dynamic = _dynamic_batch(kernel_graph(Kernel("gemm", 16, 4, 1, 1)))
    y = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    got = backend.run(dynamic, y, batch_size=2)  # batches of 2, 2 and 1
    np.testing.assert_allclose(got, _reference(dynamic, y), rtol=1e-3, atol=1e-3)


def test_a_small_profile_round_trips_and_estimates(backend: Backend, conv_model: bytes,
                                                   tmp_path: Path) -> None:
    profile = profile_backend(backend, tmp_path / "p.json", grid=GRID, settings=FAST,
                              rounds=1, adaptive=0)
    loaded = HardwareProfile.load(tmp_path / "p.json", backend=backend.name)
    assert loaded == profile
    assert loaded.backend_settings == backend.settings()
    assert loaded.device == backend.describe_device()
    assert backend_for(loaded.backend, loaded.backend_settings).settings() == backend.settings()
    assert is_local(loaded) == backend.runs_here
    estimate = LatencyModel(loaded).estimate(conv_model)
    assert math.isfinite(estimate.latency_ms) and estimate.latency_ms > 0
    assert math.isfinite(estimate.std_ms) and estimate.std_ms >= 0
