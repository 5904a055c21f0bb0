"""What ONNX Runtime runs: its optimized graph mapped to kernels, and estimates built on it.

These tests read graphs and shapes; the one test that profiles measures a few kernels and
asserts only what the profile holds, never how fast anything ran.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from autocompress.hardware import HardwareProfile, LatencyModel, MeasureSettings, get_backend
from autocompress.hardware.backends._ort_lowering import as_run, carried_layout, runtime_kernels
from autocompress.hardware.export import export_onnx
from autocompress.hardware.kernels import LAYOUT_KINDS, Kernel, kernels_of
from autocompress.hardware.profiler import TOKEN_GEMMS, profile_backend, upgrade_profile
from autocompress.models import create_model

FAST = MeasureSettings(warmup_runs=2, warmup_s=0.0, max_time_s=0.05, min_runs=6, round_runs=3)


class SqueezeExcite(nn.Module):
    """A convolution, then a squeeze-and-excitation gate: ONNX Runtime has no blocked kernel
    for the gate's Mul, so the tensor leaves and re-enters the blocked layout around it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Conv2d(32, 32, 1)
        self.out = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))
        return self.out(y * gate)


def _conv_kernels(nodes) -> Counter:
    return Counter((n.kernel.kind, n.kernel.in_channels, n.kernel.out_channels, n.kernel.height)
                   for n in nodes if n.kernel is not None
                   and n.kernel.kind in ("conv", "conv1x1", "dwconv"))


def test_resnet20_runs_its_convolutions_with_activations_and_additions_fused() -> None:
    torch.manual_seed(0)
    model = onnx.load_from_string(export_onnx(
        create_model("resnet20", num_classes=10, in_channels=3).eval(), torch.zeros(1, 3, 32, 32)))
    ran = runtime_kernels(model)
    assert ran is not None
    # every convolution of the exported graph, with its shapes; nothing else costs but the
    # pooling, the classifier and one reorder out of the blocked layout before it
    assert _conv_kernels(ran) == _conv_kernels(kernels_of(model))
    costed = Counter(n.op_type for n in ran if n.kernel is not None)
    assert "Relu" not in costed and "Add" not in costed
    assert costed["ReorderOutput"] == 1 and costed["ReorderInput"] == 0
    assert all(n.note in ("", "free") for n in ran)


def test_a_gate_without_a_blocked_kernel_costs_reorders_of_its_tensor() -> None:
    torch.manual_seed(0)
    model = onnx.load_from_string(export_onnx(SqueezeExcite().eval(), torch.zeros(1, 16, 8, 8)))
    ran = runtime_kernels(model)
    assert ran is not None
    layout = [n.kernel for n in ran if n.kernel is not None and n.kernel.kind in LAYOUT_KINDS]
    # the gated tensor (32 x 8 x 8) leaves the blocked layout for the Mul and comes back
    assert Kernel("reorder_out", 32, 32, 8, 8) in layout
    assert Kernel("reorder_in", 32, 32, 8, 8) in layout
    assert _conv_kernels(ran) == _conv_kernels(kernels_of(model))


def test_a_one_kernel_convolution_carries_a_reorder_in_and_out() -> None:
    conv = Kernel("conv", 32, 32, 16, 16, kernel=3)
    assert carried_layout(conv) == (Kernel("reorder_in", 32, 32, 16, 16),
                                    Kernel("reorder_out", 32, 32, 16, 16))
    assert carried_layout(Kernel("gemm", 64, 10, 1, 1)) == ()


def test_shapes_computed_in_the_graph_are_read_from_a_run() -> None:
    # Reshape(x, Shape(x)): shape inference cannot follow it; the convolution after it
    # would be costed on a 1 x 1 map of 1 channel
    w = numpy_helper.from_array(np.zeros((8, 8, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Reshape", ["x", "s"], ["r"]),
         helper.make_node("Conv", ["r", "w"], ["y"], pads=[1, 1, 1, 1])],
        "computed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    conv = next(n.kernel for n in kernels_of(model) if n.op_type == "Conv")
    assert conv == Kernel("conv", 8, 8, 6, 6, kernel=3)


@pytest.fixture(scope="module")
def layout_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real profile of ONNX Runtime on this CPU with its layout conversions."""
    path = tmp_path_factory.mktemp("lowering") / "ort.json"
    grid = [Kernel("conv", c, c, s, s, kernel=3) for c in (16, 32, 64) for s in (8, 16, 32)]
    grid += [Kernel("conv1x1", c, 2 * c, s, s) for c in (16, 32, 64) for s in (8, 16)]
    grid += [Kernel("pool", c, c, s, s, kernel=0) for c in (16, 64) for s in (8, 32)]
    grid += [Kernel("gemm", k, 10, 1, 1) for k in (16, 64, 256)]
    grid += [Kernel("elementwise", c, c, s, s) for c in (16, 64) for s in (8, 32)]
    profile_backend(get_backend("onnxruntime", threads=1), path, grid=grid, settings=FAST,
                    rounds=1, adaptive=0, sweep=False)
    return path


def test_a_profile_with_layout_conversions_estimates_the_graph_the_runtime_runs(
        layout_profile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    onnx_bytes = export_onnx(create_model("resnet20", num_classes=10, in_channels=3).eval(),
                             torch.zeros(1, 3, 32, 32))
    model = LatencyModel(HardwareProfile.load(layout_profile))
    assert model.lowered
    # the convolutions' fits are of their time inside a model: the one-kernel graphs'
    # reorders are taken out
    assert all(model.fits[kind].inside for kind in ("conv", "conv1x1", "pool"))
    lowered = model.estimate(onnx_bytes)
    assert [op for _, op, _ in lowered.per_node_ms].count("ReorderOutput") == 1
    # where the runtime cannot give its graph, the rules map the exported one and every
    # convolution costs the reorders its one-kernel measurement ran
    monkeypatch.setattr(model, "rules", replace(model.rules, lowering=lambda m: None))
    fallback = model.estimate(onnx_bytes)
    carried = Counter(name.rsplit("(", 1)[-1] for name, op, _ in fallback.per_node_ms
                      if op == "Conv" and name.endswith(")"))
    # the 21 convolutions' reorders out, and in, but for the first (3 input channels)
    assert carried == {"reorder_out)": 21, "reorder_in)": 20}
    # the same convolutions, plus reorders and additions whose fits are non-negative (a
    # fast host may fit small reorders at zero): never less, whatever the host's speed
    assert fallback.latency_ms >= lowered.latency_ms > 0


def test_without_layout_conversions_the_rules_decide(layout_profile: Path) -> None:
    profile = HardwareProfile.load(layout_profile)
    without = replace(profile, kernels=tuple(m for m in profile.kernels
                                             if m.kernel.kind not in LAYOUT_KINDS))
    model = LatencyModel(without)
    assert not model.lowered and not model.fits["conv"].inside


def test_upgrade_measures_what_an_older_profile_lacks(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    grid = [Kernel("conv", 16, 16, 8, 8, kernel=3), Kernel("elementwise", 16, 16, 8, 8)]
    profile_backend(get_backend("onnxruntime", threads=1), path, grid=grid, settings=FAST,
                    rounds=1, adaptive=0, sweep=False, layout=False)
    upgraded = upgrade_profile(path, rounds=1)
    kernels = [m.kernel for m in upgraded.kernels]
    assert kernels[:2] == grid
    assert set(TOKEN_GEMMS) <= set(kernels)
    assert {k.kind for k in kernels} >= set(LAYOUT_KINDS)
    assert upgraded.channel_block is not None
    assert upgraded.layout_block == get_backend("onnxruntime", threads=1).layout_block
    assert upgraded.channel_block >= upgraded.layout_block
    assert LatencyModel(HardwareProfile.load(path)).lowered


def test_the_layout_block_is_read_from_the_graph_the_runtime_runs() -> None:
    """No timing: the block is the channels ONNX Runtime pads a 4-channel convolution's
    outputs to in its blocked layout (8 with AVX2, 16 with AVX-512), 1 where it runs the
    convolution unblocked."""
    block = get_backend("onnxruntime", threads=1).layout_block
    ran = as_run(Kernel("conv", 16, 4, 8, 8, kernel=3))
    assert block == (1 if ran.unblocked else ran.out_channels)
    assert block in (1, 8, 16)
