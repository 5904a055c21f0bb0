"""Mixed-precision latency: profiling kernels in int8 (and fp16 graphs), precision
conversions at boundaries, and estimates with a precision per node."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from autocompress.cli.main import main as cli_main
from autocompress.exceptions import ProfileError
from autocompress.hardware import HardwareProfile, LatencyModel, MeasureSettings, get_backend
from autocompress.hardware._qdq import is_qdq, quantize_qdq, split_qdq
from autocompress.hardware._tools import estimate_onnx
from autocompress.hardware.backends import Backend
from autocompress.hardware.backends.onnxruntime import OnnxRuntimeBackend
from autocompress.hardware.export import export_onnx
from autocompress.hardware.kernels import (
    BOUNDARY_KINDS,
    CONTEXT_KINDS,
    KINDS,
    LAYOUT_KINDS,
    Kernel,
    boundaries_of,
    kernel_graph,
    kernels_of,
)
from autocompress.hardware.profiler import precision_grid, profile_backend
from autocompress.models import create_model

FAST = MeasureSettings(warmup_runs=2, warmup_s=0.0, max_time_s=0.03, min_runs=10,
                       round_runs=10)

# two fp32 kernels of every kind: small, so that profiling takes a few seconds
_GRID = [
    Kernel("conv", 8, 16, 8, 8, kernel=3), Kernel("conv", 16, 32, 14, 14, kernel=3, stride=2),
    Kernel("conv1x1", 16, 16, 8, 8), Kernel("conv1x1", 32, 64, 14, 14),
    Kernel("dwconv", 16, 16, 8, 8, kernel=3, groups=16),
    Kernel("dwconv", 32, 32, 14, 14, kernel=3, stride=2, groups=32),
    Kernel("gemm", 64, 10, 1, 1), Kernel("gemm", 256, 100, 1, 1),
    Kernel("pool", 16, 16, 8, 8, kernel=0), Kernel("pool", 32, 32, 14, 14, kernel=3, stride=2),
    Kernel("elementwise", 16, 16, 8, 8), Kernel("elementwise", 32, 32, 14, 14),
]


@pytest.fixture(scope="module")
def backend() -> OnnxRuntimeBackend:
    return get_backend("onnxruntime", threads=1)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def int8_path(tmp_path_factory: pytest.TempPathFactory, backend: OnnxRuntimeBackend) -> Path:
    path = tmp_path_factory.mktemp("int8") / "ort-int8.json"
    profile_backend(backend, path, grid=_GRID, settings=FAST, rounds=1, adaptive=0,
                    precisions=("fp32", "int8"))
    return path


@pytest.fixture(scope="module")
def int8_profile(int8_path: Path) -> HardwareProfile:
    return HardwareProfile.load(int8_path, backend="onnxruntime")


@pytest.fixture(scope="module")
def fp32_profile(int8_profile: HardwareProfile) -> HardwareProfile:
    """The same measurements without the int8 part: what an fp32-only profile holds."""
    return dataclasses.replace(int8_profile, kernels=tuple(
        m for m in int8_profile.kernels if m.kernel.precision == "fp32"))


@pytest.fixture(scope="module")
def resnet20() -> bytes:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    return export_onnx(model, torch.zeros(1, 1, 28, 28))


def _all(model: bytes, precision: str) -> dict[str, str]:
    return {n.name: precision for n in onnx.load_from_string(model).graph.node}


# --- backends and graphs ---------------------------------------------------------------------


def test_backends_declare_the_precisions_they_run(backend: OnnxRuntimeBackend) -> None:
    assert backend.precisions == ("fp32", "int8")  # x86 CPU runs fp16 graphs in fp32
    cuda = object.__new__(OnnxRuntimeBackend)
    cuda.device = "cuda"
    assert cuda.precisions == ("fp32", "fp16", "int8")
    assert Backend.precisions.fget(backend) == ("fp32",)  # type: ignore[attr-defined]
    from autocompress.hardware.backends.tvm import TvmBackend

    assert object.__new__(TvmBackend).precisions == ("fp32",)


def _optimized_ops(model: bytes, tmp_path: Path) -> list[str]:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize(("kernel", "runs"), [
    (Kernel("conv", 8, 16, 8, 8, kernel=3, precision="int8"), "QLinearConv"),
    (Kernel("gemm", 64, 10, 1, 1, precision="int8"), "QGemm"),
    (Kernel("pool", 16, 16, 8, 8, kernel=0, precision="int8"), "QLinearGlobalAveragePool"),
    (Kernel("elementwise", 8, 8, 4, 4, precision="int8"), "QLinearAdd"),
], ids=lambda v: v if isinstance(v, str) else v.kind)
def test_int8_kernel_graph_is_qdq_and_runs_int8_operators(
    kernel: Kernel, runs: str, backend: OnnxRuntimeBackend, tmp_path: Path,
) -> None:
    model_bytes = kernel_graph(kernel)
    model = onnx.load_from_string(model_bytes)
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] >= 2 and ops["DequantizeLinear"] >= 2  # standard QDQ form
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {TensorProto.FLOAT}
    optimized = _optimized_ops(model_bytes, tmp_path)
    assert runs in optimized
    assert optimized[0] == "QuantizeLinear" and optimized[-1] == "DequantizeLinear"
    session = backend.session(model_bytes)
    (out,) = session.run(None, backend.random_inputs(session))
    assert np.isfinite(out).all()


def test_int8_max_pool_is_quantized_though_it_reads_the_graph_input(tmp_path: Path) -> None:
    model = kernel_graph(Kernel("pool", 16, 16, 8, 8, kernel=3, stride=2, precision="int8"))
    assert _optimized_ops(model, tmp_path) == ["QuantizeLinear", "MaxPool", "DequantizeLinear"]


def test_fp16_kernel_graph_has_float_ends_and_half_weights() -> None:
    kernel = Kernel("conv", 8, 16, 8, 8, kernel=3, precision="fp16")
    model = onnx.load_from_string(kernel_graph(kernel))
    onnx.checker.check_model(model, full_check=True)  # nodes are topologically sorted
    nodes = [n.op_type for n in model.graph.node]
    assert nodes[0] == "Cast" and nodes[-1] == "Cast" and "Conv" in nodes
    assert {init.data_type for init in model.graph.initializer} == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


@pytest.mark.parametrize(("kind", "inputs", "outputs"), [
    ("quantize", TensorProto.FLOAT, TensorProto.UINT8),
    ("dequantize", TensorProto.UINT8, TensorProto.FLOAT),
    ("to_fp16", TensorProto.FLOAT, TensorProto.FLOAT16),
    ("from_fp16", TensorProto.FLOAT16, TensorProto.FLOAT),
])
def test_boundary_kernel_graph_converts_one_tensor(kind: str, inputs: int, outputs: int) -> None:
    kernel = Kernel(kind, 16, 16, 8, 8)  # type: ignore[arg-type]
    assert kernel.out_elements == kernel.in_elements == 16 * 8 * 8
    model = onnx.load_from_string(kernel_graph(kernel))
    onnx.checker.check_model(model, full_check=True)
    assert len(model.graph.node) == 1
    assert model.graph.input[0].type.tensor_type.elem_type == inputs
    assert model.graph.output[0].type.tensor_type.elem_type == outputs


# --- profiling ---------------------------------------------------------------------------------


def test_precision_grid_takes_part_of_the_grid_and_adds_conversions() -> None:
    grid = _GRID + [Kernel("conv", 8, 8, 4, 4, kernel=3), Kernel("conv", 8, 8, 8, 8, kernel=5)]
    int8 = precision_grid(grid, "int8")
    assert all(k.precision == "int8" for k in int8 if k.kind != "chain")
    kinds = Counter(k.kind for k in int8)
    assert set(kinds) == set(KINDS) | {"quantize", "dequantize", *CONTEXT_KINDS}
    convs = [k for k in int8 if k.kind == "conv"]
    # every fourth of the 4 convs is one: topped up to two per kind
    assert convs[:2] == [dataclasses.replace(grid[i], precision="int8") for i in (0, 1)]
    narrow = convs[2:]  # narrow convolutions on large maps, not in the grid
    assert narrow and all(k.in_channels <= 16 and k.height >= 14 for k in narrow)
    assert kinds["pool"] == kinds["gemm"] == 2  # at least two per kind
    assert kinds["quantize"] == kinds["dequantize"] >= 8
    sizes = sorted(k.in_elements for k in int8 if k.kind == "quantize")
    assert len(set(sizes)) == len(sizes) and sizes[0] <= 128 and sizes[-1] >= 100_000
    # convolution chains for conversions in context: all fp32, all int8, int8 in the middle
    chains = Counter((k.kind, k.precision) for k in int8 if k.kind in CONTEXT_KINDS)
    assert chains["chain", "fp32"] == chains["chain", "int8"] == chains["island", "int8"] >= 4
    fp16 = precision_grid(grid, "fp16")
    assert {k.kind for k in fp16} == set(KINDS) | {"to_fp16", "from_fp16", *CONTEXT_KINDS}


def test_profile_with_int8_holds_int8_kernels_and_conversions(int8_profile: HardwareProfile,
                                                              int8_path: Path) -> None:
    assert int8_profile.precisions == ("fp32", "int8")
    fp32 = [m.kernel for m in int8_profile.kernels if m.kernel.precision == "fp32"]
    assert [k for k in fp32 if k.kind in KINDS] == _GRID
    assert {k.kind for k in fp32} == set(KINDS) | {"chain"} | set(LAYOUT_KINDS) | {"weights"}
    int8 = [m.kernel for m in int8_profile.kernels if m.kernel.precision == "int8"]
    assert {k.kind for k in int8} == set(KINDS) | {"quantize", "dequantize", *CONTEXT_KINDS}
    assert all(m.latency.median_ms > 0 for m in int8_profile.kernels)
    data = json.loads(int8_path.read_text())
    assert data["format_version"] == 1 and data["precisions"] == ["fp32", "int8"]
    assert data["measure_settings"]["precisions"] == ["fp32", "int8"]
    assert "fp32+int8" in int8_profile.describe()


@pytest.mark.parametrize(("precisions", "fragments"), [
    (("fp32", "fp16"), ["does not run fp16", "runs fp32, int8"]),
    (("fp32", "int4"), ["unknown precision", "fp32, fp16, int8"]),
    (("int8",), ["always measures fp32", "fp32,int8"]),
])
def test_profiling_a_precision_the_backend_does_not_run_is_refused(
    backend: OnnxRuntimeBackend, tmp_path: Path, precisions: tuple[str, ...],
    fragments: list[str],
) -> None:
    with pytest.raises(ProfileError) as info:
        profile_backend(backend, tmp_path / "p.json", grid=_GRID[:2], settings=FAST,
                        rounds=1, adaptive=0, precisions=precisions)
    assert all(f in str(info.value) for f in fragments), str(info.value)
    assert not (tmp_path / "p.json").exists()


def test_cli_profile_refuses_fp16_on_cpu_in_one_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["profile", "--out", str(tmp_path / "p.json"), "--precisions",
                     "fp32,fp16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not run fp16" in err and "runs fp32, int8" in err


def test_profile_file_without_precisions_reads_as_fp32(int8_path: Path, tmp_path: Path) -> None:
    data = json.loads(int8_path.read_text())
    data["kernels"] = [k for k in data["kernels"] if k["precision"] == "fp32"]
    del data["precisions"]  # as files written before precisions existed
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert HardwareProfile.load(old).precisions == ("fp32",)
    data["precisions"] = ["fp32", "int8"]  # lists what it does not hold
    old.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="malformed"):
        HardwareProfile.load(old)


# --- estimates ---------------------------------------------------------------------------------


def test_estimate_without_precisions_is_unchanged_by_int8_kernels(
    int8_profile: HardwareProfile, fp32_profile: HardwareProfile, resnet20: bytes,
) -> None:
    with_int8 = LatencyModel(int8_profile)
    fp32_only = LatencyModel(fp32_profile)
    assert with_int8.fits == fp32_only.fits
    assert set(with_int8.fits) == set(KINDS) | set(LAYOUT_KINDS)
    plain = with_int8.estimate(resnet20)
    assert plain == fp32_only.estimate(resnet20)
    assert plain.boundary_ms == ()
    # all-fp32, or nothing named: the same estimate and no conversions
    assert with_int8.estimate(resnet20, _all(resnet20, "fp32")) == plain
    assert with_int8.estimate(resnet20, {}) == plain


def test_int8_fits_have_their_own_weights(int8_profile: HardwareProfile) -> None:
    model = LatencyModel(int8_profile)
    assert set(model.precision_fits) == {"fp32", "int8"}
    int8 = model.precision_fits["int8"]
    assert set(int8) == set(KINDS) | {"quantize", "dequantize", "island"}
    for kind in (*KINDS, "island"):
        assert int8[kind].precision == "int8" and int8[kind].inside
        assert all(w >= 0 for w in int8[kind].weights)
    assert not int8["quantize"].inside  # conversions are one-kernel fits, like fp32
    assert int8["island"].samples >= 4  # what a conversion costs between convolutions


def test_a_precision_factor_scales_that_precision_and_nothing_else(
        int8_profile: HardwareProfile, resnet20: bytes) -> None:
    """What a run calibration measured of int8 inside a network (its factor) multiplies the
    int8 nodes and conversions only, and its time per node is added to int8 nodes only: fp32
    estimates stay as they were, and the run's offset and scale apply on top."""
    raw = LatencyModel(int8_profile)
    factored = raw.calibrated(1.2, 0.05, {"int8": 0.5})
    plain = raw.calibrated(1.2, 0.05)
    assert factored.estimate(resnet20) == plain.estimate(resnet20)
    int8 = _all(resnet20, "int8")
    before, after = plain.estimate(resnet20, int8), factored.estimate(resnet20, int8)
    assert [ms for *_, ms in after.per_node_ms] == pytest.approx(
        [ms / 2 for *_, ms in before.per_node_ms])
    assert [ms for *_, ms in after.boundary_ms] == pytest.approx(
        [ms / 2 for *_, ms in before.boundary_ms])
    inside = before.latency_ms - 0.05 - before.overhead_ms
    assert after.latency_ms == pytest.approx(0.05 + before.overhead_ms + inside / 2)
    # half the nodes in int8: the fp32 half keeps its time
    names = [n.name for n in onnx.load_from_string(resnet20).graph.node]
    mixed = {name: "int8" for name in names[len(names) // 2:]}
    half_before = dict((n, ms) for n, _, ms in plain.estimate(resnet20, mixed).per_node_ms)
    half_after = dict((n, ms) for n, _, ms in factored.estimate(resnet20, mixed).per_node_ms)
    # every costed fp32 node, whatever its time: on a noisy machine the mini-profile measured
    # above has given every one of them 0 (cause not pinned down), and 0 must stay 0
    kept = [n for n in names[:len(names) // 2] if n in half_before]
    assert kept and all(half_after[n] == pytest.approx(half_before[n]) for n in kept)
    # a fixed time per int8 node the profile's one-kernel graphs did not show
    costed = sum(1 for n in kernels_of(onnx.load_from_string(resnet20), int8)
                 if n.kernel is not None)
    per_node = raw.calibrated(1.2, 0.05, None, {"int8": 0.01}).estimate(resnet20, int8)
    assert per_node.latency_ms == pytest.approx(before.latency_ms + 1.2 * 0.01 * costed)
    assert raw.calibrated(1.2, 0.05, None, {"int8": 0.01}).estimate(resnet20) == \
        plain.estimate(resnet20)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="non-negative"):
            raw.calibrated(1.0, 0.0, {"int8": bad})
        with pytest.raises(ValueError, match="non-negative"):
            raw.calibrated(1.0, 0.0, None, {"int8": bad})


def test_a_calibration_at_another_speed_scales_every_estimate_alike(
        int8_profile: HardwareProfile, resnet20: bytes) -> None:
    """A run whose calibration pass ran in a slow spell scales its estimates to the speed
    the machine ran at later (``Calibration.at_speed``): fp32, int8 and its per-node terms
    alike."""
    from autocompress.study._records import Calibration

    raw = LatencyModel(int8_profile)
    fitted = Calibration(scale=1.2, offset_ms=0.05, applied=True,
                         precision_scales={"int8": 0.5}, precision_node_ms={"int8": 0.01})
    faster = fitted.at_speed(0.8)
    for precisions in ({}, _all(resnet20, "int8")):
        assert faster.apply(raw).estimate(resnet20, precisions).latency_ms == pytest.approx(
            0.8 * fitted.apply(raw).estimate(resnet20, precisions).latency_ms)
    assert faster.points == fitted.points and faster.applied


def test_all_int8_estimate_uses_int8_fits(int8_profile: HardwareProfile, resnet20: bytes
                                          ) -> None:
    model = LatencyModel(int8_profile)
    fp32 = model.estimate(resnet20)
    int8 = model.estimate(resnet20, _all(resnet20, "int8"))
    assert int8.latency_ms != pytest.approx(fp32.latency_ms, rel=1e-3)
    nodes = kernels_of(onnx.load_from_string(resnet20), _all(resnet20, "int8"))
    costed = [n for n in nodes if n.kernel is not None]
    assert costed and all(n.kernel.precision == "int8" for n in costed)
    convs = [n for n in costed if n.op_type == "Conv"]
    per_node = dict((name, ms) for name, _, ms in int8.per_node_ms)
    fit = model.precision_fits["int8"][convs[0].kernel.kind]
    from autocompress.hardware.kernels import features

    # the profile's backend's regressors (ONNX Runtime's: int8 adds a per-pixel term)
    assert per_node[convs[0].node] == pytest.approx(float(features(convs[0].kernel,
                                                                   model.rules)
                                                          @ np.array(fit.weights)))
    # the ReLUs after the residual adds are folded into the int8 adds by quantization
    relus = [n for n in nodes if n.op_type == "Relu"]
    assert all(n.kernel is None for n in relus)
    # all-int8: the input is quantized once and the logits dequantized once
    assert [kind for _, kind, _ in int8.boundary_ms] == ["quantize", "dequantize"]
    assert int8.latency_ms == pytest.approx(
        int8.overhead_ms + sum(ms for *_, ms in int8.per_node_ms)
        + sum(ms for *_, ms in int8.boundary_ms))


def _mixed_graph() -> onnx.ModelProto:
    """x -> conv_a -> relu_a -> conv_b -> relu_b -> add(relu_a, relu_b) -> gap -> flat ->
    fc -> y, 8 channels at 8x8."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["ca"], name="conv_a", pads=[1] * 4),
        helper.make_node("Relu", ["ca"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "wb", "bb"], ["cb"], name="conv_b", pads=[1] * 4),
        helper.make_node("Relu", ["cb"], ["rb"], name="relu_b"),
        helper.make_node("Add", ["ra", "rb"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [weight("wa", 8, 8, 3, 3), weight("ba", 8), weight("wb", 8, 8, 3, 3), weight("bb", 8),
         weight("wf", 10, 8), weight("bf", 10)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _precision_changes(model: onnx.ModelProto, precision_of: dict[str, str]
                       ) -> Counter[str]:
    """Q and DQ expected: distinct (tensor, reading precision) pairs that differ from the
    producing precision, over the graph's edges, the input (fp32) and the output (fp32)."""
    produced = {"x": "fp32"}
    for node in model.graph.node:
        produced.update({o: precision_of[node.name] for o in node.output})
    weights = {init.name for init in model.graph.initializer}
    edges = {(t, precision_of[n.name]) for n in model.graph.node for t in n.input
             if t not in weights}
    edges |= {(o.name, "fp32") for o in model.graph.output}
    return Counter("quantize" if target == "int8" else "dequantize"
                   for tensor, target in edges if produced[tensor] != target)


@pytest.mark.parametrize("named", [
    {"conv_a": "int8", "conv_b": "fp32", "add": "int8", "gap": "int8", "fc": "fp32"},
    {"conv_a": "fp32", "conv_b": "int8", "add": "fp32"},
    {"conv_a": "fp32", "conv_b": "int8", "add": "fp32", "gap": "int8", "fc": "int8"},
    {"conv_a": "int8", "conv_b": "int8", "add": "int8", "gap": "int8", "fc": "int8"},
    {"conv_b": "int8"},
])
def test_boundaries_are_the_precision_changes_on_edges(int8_profile: HardwareProfile,
                                                       named: dict[str, str]) -> None:
    model = _mixed_graph()
    nodes = kernels_of(model, named)
    precision_of = {n.node: n.precision for n in nodes}
    # free and fused nodes not named follow their input; costed ones not named are fp32
    assert precision_of["relu_a"] == named.get("conv_a", "fp32")
    assert precision_of["flat"] == named.get("gap", "fp32")
    found = boundaries_of(model, nodes)
    assert Counter(b.kernel.kind for b in found) == _precision_changes(model, precision_of)
    assert all(b.kernel.in_elements == {"x": 512, "ra": 512, "rb": 512, "s": 512, "g": 8,
                                        "f": 8, "y": 10}[b.tensor] for b in found)
    estimate = LatencyModel(int8_profile).estimate(model, named)
    assert len(estimate.boundary_ms) == len(found)
    assert all(ms >= 0 for *_, ms in estimate.boundary_ms)  # tiny tensors can cost ~0
    assert estimate.latency_ms == pytest.approx(
        estimate.overhead_ms + sum(ms for *_, ms in estimate.per_node_ms)
        + sum(ms for *_, ms in estimate.boundary_ms))


def test_first_mixed_case_has_two_quantize_and_two_dequantize() -> None:
    """Worked by hand: x->conv_a is Q, relu_a->conv_b DQ, relu_b->add Q, flat->fc DQ."""
    model = _mixed_graph()
    named = {"conv_a": "int8", "conv_b": "fp32", "add": "int8", "gap": "int8", "fc": "fp32"}
    found = boundaries_of(model, kernels_of(model, named))
    assert sorted((b.tensor, b.kernel.kind) for b in found) == [
        ("f", "dequantize"), ("ra", "dequantize"), ("rb", "quantize"), ("x", "quantize")]


def test_an_fp32_tensor_read_in_fp32_and_int8_is_quantized_once() -> None:
    """relu_a's output is quantized for conv_b (int8); the fp32 add reads the float tensor.
    conv_b's output (int8, relu_b fused) is dequantized for the add."""
    model = _mixed_graph()
    found = boundaries_of(model, kernels_of(model, {"conv_b": "int8"}))
    assert sorted((b.tensor, b.kernel.kind) for b in found) == [
        ("ra", "quantize"), ("rb", "dequantize")]


def test_activation_fusion_follows_precision() -> None:
    model = _mixed_graph()
    # relu_a named fp32 after an int8 conv: not fused, costed as an fp32 elementwise op
    nodes = {n.node: n for n in kernels_of(model, {"conv_a": "int8", "relu_a": "fp32"})}
    assert nodes["relu_a"].kernel is not None and nodes["relu_a"].kernel.precision == "fp32"
    assert nodes["relu_a"].note.startswith("not fused")
    nodes = {n.node: n for n in kernels_of(model, {"conv_a": "int8"})}
    assert nodes["relu_a"].kernel is None and nodes["conv_a"].kernel.precision == "int8"


def test_profile_without_int8_refuses_int8_with_the_reprofile_command(
    fp32_profile: HardwareProfile, resnet20: bytes,
) -> None:
    model = LatencyModel(fp32_profile)
    with pytest.raises(ProfileError) as info:
        model.estimate(resnet20, _all(resnet20, "int8"))
    message = str(info.value)
    assert "this profile has no int8 kernels" in message
    assert "autocompress profile --precisions fp32,int8" in message
    with pytest.raises(ProfileError, match="fp32,fp16"):
        model.estimate(resnet20, _all(resnet20, "fp16"))


def test_bad_precision_maps_are_refused(int8_profile: HardwareProfile, resnet20: bytes) -> None:
    model = LatencyModel(int8_profile)
    with pytest.raises(ValueError, match="unknown precision"):
        model.estimate(resnet20, {"/conv1/Conv": "int4"})
    with pytest.raises(ValueError, match="not in the model") as info:
        model.estimate(resnet20, {"conv1.weight": "int8"})
    assert "/conv1/Conv" in str(info.value)  # shows what node names look like


def test_boundary_kinds_are_not_model_kinds() -> None:
    assert not set(BOUNDARY_KINDS) & set(KINDS)
    assert not set(CONTEXT_KINDS) & {*KINDS, *BOUNDARY_KINDS}


@pytest.mark.parametrize(("kind", "precision", "fp32_convs"), [
    ("chain", "int8", 0), ("island", "int8", 2), ("island", "fp16", 2), ("chain", "fp32", 3)])
def test_context_graphs_convert_the_right_convolutions(kind: str, precision: str,
                                                       fp32_convs: int) -> None:
    kernel = Kernel(kind, 16, 16, 8, 8, precision=precision)  # type: ignore[arg-type]
    model = onnx.load_from_string(kernel_graph(kernel))
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    float_weights = [c for c in convs if c.input[1] in inits
                     and inits[c.input[1]].data_type == TensorProto.FLOAT]
    assert len(float_weights) == fp32_convs  # the others read converted weights


# --- quantized ONNX files ------------------------------------------------------------------------


def test_a_qdq_file_is_estimated_as_its_fp32_structure_with_int8_nodes(
    int8_path: Path, resnet20: bytes, tmp_path: Path,
) -> None:
    proto = onnx.load_from_string(resnet20)
    # the stem's ReLU too: the quantizer keeps an activation whose input is fp32 in fp32
    fp32_nodes = {"/conv1/Conv", "/relu/Relu", "/fc/Gemm"}
    precisions = {n.name: "fp32" if n.name in fp32_nodes else "int8" for n in proto.graph.node}
    qdq = quantize_qdq(proto, nodes_to_exclude=sorted(fp32_nodes))
    structure, found = split_qdq(qdq)
    onnx.checker.check_model(structure)
    assert not is_qdq(structure) and is_qdq(onnx.load_from_string(qdq))
    assert set(found) <= {n for n, p in precisions.items() if p == "int8"}
    assert {n.name for n in proto.graph.node if n.op_type in ("Conv", "Add")} - fp32_nodes \
        <= set(found)
    assert "/layer1/layer1.0/relu_1/Relu" not in found  # removed by the quantizer
    assert not fp32_nodes & set(found)
    path = tmp_path / "int8.onnx"
    path.write_bytes(qdq)
    from_file = estimate_onnx(int8_path, path)
    from_map = LatencyModel(HardwareProfile.load(int8_path)).estimate(resnet20, precisions)
    assert from_file.latency_ms == pytest.approx(from_map.latency_ms)
    assert len(from_file.boundary_ms) == len(from_map.boundary_ms) == 2  # Q after conv1, DQ


def test_an_excluded_node_between_quantized_ones_reads_as_int8(tmp_path: Path) -> None:
    """quantize_static keeps conv1 fp32 when told to, but its neighbours quantize its input
    and output: ONNX Runtime then quantizes its weights and runs it in int8, and so does the
    estimate of the QDQ file."""
    chain = kernel_graph(Kernel("chain", 16, 16, 8, 8))
    qdq = quantize_qdq(chain, nodes_to_exclude=["conv1", "relu1"])
    assert _optimized_ops(qdq, tmp_path).count("QLinearConv") == 3
    _, found = split_qdq(qdq)
    assert {"conv0", "conv1", "conv2"} <= set(found)
    # the ends of an island read the graph's float input and write its float output: fp32
    _, island = split_qdq(kernel_graph(Kernel("island", 16, 16, 8, 8, precision="int8")))
    assert set(island) == {"conv1"}
