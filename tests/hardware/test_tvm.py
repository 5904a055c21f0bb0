"""The Apache TVM backend: compile, run and time ONNX models locally, over RPC, and for ARM."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from autocompress.exceptions import ExportError, ProfileError  # noqa: E402
from autocompress.hardware import MeasureSettings, get_backend  # noqa: E402
from autocompress.hardware.backends import BACKENDS  # noqa: E402
from autocompress.hardware.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from autocompress.hardware.backends.tvm import TvmBackend, resolve_target  # noqa: E402
from autocompress.hardware.kernels import Kernel, kernel_graph  # noqa: E402

FAST = MeasureSettings(warmup_runs=2, warmup_s=0.0, max_time_s=0.05, min_runs=10,
                       round_runs=10)
CONV = Kernel("conv", 8, 8, 8, 8, kernel=3)


@pytest.fixture(scope="module")
def backend() -> TvmBackend:
    return TvmBackend(threads=1)


@pytest.fixture(scope="module")
def ort() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(threads=1)


@pytest.fixture(scope="module")
def conv_model() -> bytes:
    return kernel_graph(CONV)


@pytest.fixture(scope="module")
def tiny_cnn() -> bytes:
    torch = pytest.importorskip("torch")
    from torch import nn

    from autocompress.hardware.export import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    return export_onnx(model, torch.randn(1, 3, 16, 16))


@pytest.fixture(scope="module")
def rpc_server() -> Iterator[str]:
    """A TVM RPC server on loopback (a subprocess; ~5 s to start)."""
    server = tvm.rpc.Server(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.terminate()


def test_tvm_is_a_registered_backend(backend: TvmBackend) -> None:
    assert "tvm" in BACKENDS
    made = get_backend("tvm", threads=1)
    assert isinstance(made, TvmBackend) and made.settings() == backend.settings()
    assert backend.version() == tvm.__version__


def test_measures_a_kernel_graph_and_matches_onnxruntime(
    backend: TvmBackend, ort: OnnxRuntimeBackend, conv_model: bytes
) -> None:
    m = backend.measure(conv_model, FAST)
    assert m.runs >= FAST.min_runs
    assert 0 < m.p25_ms <= m.median_ms <= m.p75_ms
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 8)).astype(np.float32)
    got = backend.run(conv_model, x)  # batch fixed at 1: three runs
    assert got.shape == (3, 8, 8, 8)
    np.testing.assert_allclose(got, ort.run(conv_model, x), rtol=1e-4, atol=1e-4)


def test_measures_a_tiny_cnn_and_matches_onnxruntime(
    backend: TvmBackend, ort: OnnxRuntimeBackend, tiny_cnn: bytes
) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = backend.run(tiny_cnn, x)
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, ort.run(tiny_cnn, x), rtol=1e-4, atol=1e-5)
    [tvm_ms, ort_ms] = [b.measure(tiny_cnn, FAST) for b in (backend, ort)]
    assert tvm_ms.median_ms > 0 and ort_ms.median_ms > 0


def test_run_pads_the_last_batch_of_a_dynamic_batch_model(
    backend: TvmBackend, ort: OnnxRuntimeBackend
) -> None:
    import onnx

    model = onnx.load_from_string(kernel_graph(Kernel("gemm", 16, 4, 1, 1)))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    dynamic = model.SerializeToString()
    x = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    got = backend.run(dynamic, x, batch_size=2)  # batches of 2, 2 and 1 (padded)
    np.testing.assert_allclose(got, ort.run(dynamic, x), rtol=1e-4, atol=1e-4)


def test_compiled_models_are_cached(backend: TvmBackend, conv_model: bytes) -> None:
    first, _ = backend.compile(conv_model)
    again, inputs = backend.compile(conv_model)
    assert again is first
    assert [(i.name, i.shape) for i in inputs] == [("x", (1, 8, 8, 8))]


def _two_outputs() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["z"])], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("y", "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    return model.SerializeToString()


def test_measures_over_rpc_on_loopback(
    rpc_server: str, conv_model: bytes, backend: TvmBackend
) -> None:
    remote = TvmBackend(threads=1, rpc=rpc_server)
    try:
        assert remote.settings()["rpc"] == rpc_server
        m = remote.measure(conv_model, FAST)
        assert m.runs >= FAST.min_runs
        assert 0 < m.p25_ms <= m.median_ms <= m.p75_ms
        x = np.random.default_rng(3).standard_normal((1, 8, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(remote.run(conv_model, x), backend.run(conv_model, x),
                                   rtol=1e-5, atol=1e-5)
        two = _two_outputs()  # a tuple result cannot be indexed over RPC
        assert remote.measure(two, FAST).median_ms > 0
        y = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
        np.testing.assert_allclose(remote.run(two, y), np.maximum(y, 0), rtol=1e-6)
    finally:
        remote.close()


def test_rpc_without_a_server_says_how_to_start_one(conv_model: bytes) -> None:
    with pytest.raises(ProfileError, match="tvm.exec.rpc_server"):
        TvmBackend(rpc="127.0.0.1:1").measure(conv_model, FAST)


def test_arm_alias_cross_compiles_without_running(conv_model: bytes, tmp_path: Path) -> None:
    arm = TvmBackend("arm")
    assert arm.target["mtriple"] == "aarch64-linux-gnu" and "+neon" in arm.target["mattr"]
    assert not arm.runs_here
    path = arm.export_library(conv_model, tmp_path / "conv.tar")
    with tarfile.open(path) as archive:
        assert any(name.endswith(".o") for name in archive.getnames())
    with pytest.raises(ProfileError, match="rpc=HOST:PORT"):
        arm.measure(conv_model, FAST)
    assert TvmBackend("aarch64").target == arm.target


def test_settings_round_trip_through_json() -> None:
    for target in (None, "llvm", "arm", '{"kind": "llvm", "mcpu": "znver3"}'):
        b = TvmBackend(target, threads=2, rpc="device.local:9090")
        settings = b.settings()
        assert json.loads(json.dumps(settings)) == settings
        assert settings["threads"] == 2 and settings["rpc"] == "device.local:9090"
        assert settings["tuned"] is False and settings["target"]["num-cores"] == 2
    assert TvmBackend().settings()["target"] == {"kind": "llvm", "num-cores": 1}


def test_unknown_targets_and_bad_options_are_refused() -> None:
    with pytest.raises(ProfileError, match="unknown TVM target 'riscv'.*llvm, arm"):
        TvmBackend("riscv")
    with pytest.raises(ProfileError, match="not valid JSON"):
        resolve_target('{"kind": "llvm",')
    with pytest.raises(ProfileError, match="kind"):
        resolve_target({"mcpu": "znver3"})
    with pytest.raises(ProfileError, match="llvm \\(CPU\\) and cuda"):
        TvmBackend('{"kind": "opencl"}')
    with pytest.raises(ProfileError, match="HOST:PORT"):
        TvmBackend(rpc="nohost")
    with pytest.raises(ProfileError, match="this machine only"):
        TvmBackend("arm", tuning_trials=4)
    with pytest.raises(ValueError, match="threads"):
        TvmBackend(threads=0)
    with pytest.raises(ProfileError, match="tvm backend"):
        get_backend("onnxruntime", target="llvm")
    with pytest.raises(ProfileError, match="does not fit"):
        get_backend("tvm", device="cuda", target="arm")


def test_unreadable_models_raise_export_errors(backend: TvmBackend) -> None:
    with pytest.raises(ExportError, match="ONNX"):
        backend.measure(b"not a model", FAST)


def test_threads_are_applied_to_the_runtime(conv_model: bytes) -> None:
    two = TvmBackend(threads=2)
    two.measure(conv_model, FAST)
    assert tvm.runtime.num_threads() == 2
    TvmBackend(threads=1).measure(conv_model, FAST)
    assert tvm.runtime.num_threads() == 1


@pytest.mark.skipif(tvm.cuda().exist, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ProfileError, match="no CUDA GPU"):
        get_backend("tvm", device="cuda")


@pytest.mark.skipif(not tvm.cuda().exist, reason="needs a CUDA GPU")
def test_cuda_measures_and_matches_onnxruntime(
    ort: OnnxRuntimeBackend, conv_model: bytes
) -> None:
    gpu = get_backend("tvm", device="cuda")
    assert gpu.settings()["target"]["kind"] == "cuda"
    m = gpu.measure(conv_model, FAST)
    assert 0 < m.p25_ms <= m.median_ms <= m.p75_ms
    x = np.random.default_rng(4).standard_normal((1, 8, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(gpu.run(conv_model, x), ort.run(conv_model, x),
                               rtol=1e-4, atol=1e-4)


def test_tuning_records_are_cached_apart_per_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOCOMPRESS_CACHE_DIR", str(tmp_path))
    base = TvmBackend(threads=1, tuning_trials=8).tuning_dir
    assert base.is_dir() and tmp_path in base.parents
    assert TvmBackend(threads=1, tuning_trials=8).tuning_dir == base
    others = {TvmBackend(threads=2, tuning_trials=8).tuning_dir,
              TvmBackend(threads=1, tuning_trials=16).tuning_dir,
              TvmBackend('{"kind": "llvm", "mcpu": "znver3"}', tuning_trials=8).tuning_dir}
    assert base not in others and len(others) == 3


def test_a_tvm_profile_says_whether_it_was_tuned() -> None:
    from autocompress.hardware import HardwareProfile

    root = Path(__file__).resolve().parents[2] / "hw_profiles"
    assert "untuned" in HardwareProfile.load(root / "tvm-llvm-cpu-t1.json").describe()
    tuned = HardwareProfile.load(root / "tvm-llvm-cpu-t1-tuned8.json")
    assert "tuned 8 trials per task" in tuned.describe()


@pytest.mark.slow
def test_a_tuned_convolution_computes_the_same_and_is_tuned_once(
        ort: OnnxRuntimeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """About 30 s on 2 cores (MetaSchedule's first build imports TVM's tensor intrinsics,
    ~25 s). How much tuning speeds a kernel up depends on the host: the tuned profile and
    benchmarks/latency_fidelity.py report it; here only behaviour is checked."""
    from tvm.s_tir import meta_schedule as ms

    monkeypatch.setenv("AUTOCOMPRESS_CACHE_DIR", str(tmp_path))
    model = kernel_graph(Kernel("conv", 32, 32, 16, 16, kernel=3))
    untuned = TvmBackend(threads=1)
    tuned = TvmBackend(threads=1, tuning_trials=4)
    assert tuned.settings()["tuned"] is True
    x = np.random.default_rng(5).standard_normal((1, 32, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(tuned.run(model, x), ort.run(model, x), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(untuned.run(model, x), tuned.run(model, x), rtol=1e-3,
                               atol=1e-3)
    measured = tuned.measure(model)
    assert 0 < measured.p25_ms <= measured.median_ms <= measured.p75_ms
    records = tuned.tuning_dir / "database_tuning_record.json"
    assert records.is_file() and records.read_text().strip()

    def no_tuning(**_: object) -> None:
        raise AssertionError("a task in the cache was tuned again")

    monkeypatch.setattr(ms, "tune_tasks", no_tuning)
    again = TvmBackend(threads=1, tuning_trials=4)  # a new process would start like this
    np.testing.assert_allclose(again.run(model, x), tuned.run(model, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ExportError, match="tuned again"):  # another budget: not cached
        TvmBackend(threads=1, tuning_trials=5).compile(model)
