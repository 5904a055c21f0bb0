from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.exceptions import ModelError, SearchSpaceError
from autocompress.hardware import HardwareProfile, LatencyEstimate, LatencyModel, get_backend
from autocompress.hardware.export import export_onnx
from autocompress.space import Candidate, LowRank, Quantization, Sparsity
from autocompress.transforms import (
    Factorization,
    FactorizedLayer,
    apply_sparsity,
    compress,
    exported_precisions,
    factorize_layer,
    full_rank,
    low_rank,
    onnx_layer_nodes,
    rank_for,
)

# float32 weights rebuilt from a float64 SVD: products agree to a few float32 ulps
_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _conv(seed: int, *args: object, **kwargs: object) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(*args, **kwargs)  # type: ignore[arg-type]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class TinyNet(nn.Module):
    """Conv-BN stem, a strided conv, a depthwise conv and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.dw(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _tiny() -> tuple[TinyNet, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval(), torch.randn(2, 3, 16, 16)


# --- the defining property: exact at full rank, r*(in_k + out) weights, best rank-r -------------


_CONVS = {
    "3x3_bias": dict(in_channels=8, out_channels=12, kernel_size=3, padding=1),
    "strided_dilated": dict(in_channels=6, out_channels=10, kernel_size=3, stride=2,
                            padding=2, dilation=2, bias=False),
    "wide_5x3": dict(in_channels=4, out_channels=40, kernel_size=(5, 3), padding=(2, 1)),
    "1x1": dict(in_channels=16, out_channels=8, kernel_size=1),
}


@pytest.mark.parametrize("name", sorted(_CONVS))
def test_conv_at_full_rank_reproduces_the_layer(name: str) -> None:
    conv = _conv(1, **_CONVS[name]).eval()
    x = torch.randn(2, conv.in_channels, 11, 9)
    factors = factorize_layer(conv, full_rank(conv))

    first, second = factors
    assert isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
    assert (first.kernel_size, first.stride, first.padding, first.dilation) == (
        conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    assert second.kernel_size == (1, 1) and first.bias is None
    assert (second.bias is None) == (conv.bias is None)
    with torch.no_grad():
        expected, got = conv(x), factors(x)
    assert float(expected.abs().max()) > 0.1
    torch.testing.assert_close(got, expected, **_TOLERANCE)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_at_full_rank_reproduces_the_layer(bias: bool) -> None:
    torch.manual_seed(2)
    linear = nn.Linear(24, 7, bias=bias)
    x = torch.randn(5, 24)
    factors = factorize_layer(linear, full_rank(linear))
    assert full_rank(linear) == 7
    with torch.no_grad():
        torch.testing.assert_close(factors(x), linear(x), **_TOLERANCE)


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_parameter_count_is_rank_times_inputs_plus_outputs(rank: int) -> None:
    conv = _conv(3, 16, 32, 3, padding=1)  # in*kh*kw = 144, out = 32, bias 32
    factors = factorize_layer(conv, rank)
    assert factors.rank == rank
    assert _params(factors) == rank * 144 + rank * 32 + 32
    assert factors[0].weight.shape == (rank, 16, 3, 3)
    assert factors[1].weight.shape == (32, rank, 1, 1)

    torch.manual_seed(3)
    linear = nn.Linear(50, 20, bias=False)
    assert _params(factorize_layer(linear, rank)) == rank * 50 + rank * 20


def test_lower_rank_is_the_best_approximation() -> None:
    """Eckart-Young: the factorized weight is W's truncated SVD, so its error is the norm of
    the dropped singular values, in Frobenius and in spectral norm."""
    torch.manual_seed(4)
    linear = nn.Linear(30, 20)
    weight = linear.weight.detach().double()
    singular = torch.linalg.svdvals(weight)
    for rank in (1, 5, 12, 19):
        factors = factorize_layer(linear, rank)
        product = (factors[1].weight @ factors[0].weight).detach().double()
        error = weight - product
        torch.testing.assert_close(torch.linalg.matrix_norm(error),
                                   singular[rank:].norm(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.linalg.matrix_norm(error, ord=2), singular[rank],
                                   rtol=1e-5, atol=1e-6)
        # through the layers: the output error on the identity is the weight error
        with torch.no_grad():
            out = factors(torch.eye(30)) - linear(torch.eye(30))
        torch.testing.assert_close(out.double().T, -error, rtol=1e-4, atol=1e-5)
    conv = _conv(5, 8, 12, 3, padding=1)
    matrix = conv.weight.detach().double().reshape(12, -1)
    factors = factorize_layer(conv, 4)
    product = (factors[1].weight.reshape(12, 4) @ factors[0].weight.reshape(4, -1)).double()
    torch.testing.assert_close(torch.linalg.matrix_norm(matrix - product),
                               torch.linalg.svdvals(matrix)[4:].norm(), rtol=1e-5, atol=1e-6)


def test_rank_from_ratio_and_refusals() -> None:
    conv = _conv(6, 16, 32, 3)                  # full rank min(32, 144) = 32
    assert [rank_for(conv, r) for r in (0.25, 0.5, 1.0, 0.001)] == [8, 16, 32, 1]
    with pytest.raises(SearchSpaceError, match=r"\(0, 1\]"):
        rank_for(conv, 0.0)
    with pytest.raises(SearchSpaceError, match="from 1 to 32"):
        factorize_layer(conv, 33)
    with pytest.raises(ModelError, match="grouped"):
        factorize_layer(nn.Conv2d(8, 8, 3, groups=8), 2)
    with pytest.raises(SearchSpaceError, match="rank ratios"):
        Candidate(rank={"fc": 1.5})


# --- low_rank on a model: what is replaced, skipped and recorded --------------------------------


def test_low_rank_replaces_named_layers_and_skips_what_cannot_save(
        caplog: pytest.LogCaptureFixture) -> None:
    model, x = _tiny()
    with caplog.at_level(logging.INFO, logger="autocompress.transforms._lowrank"):
        done = low_rank(model, {"conv1": 1.0, "conv2": 0.25, "dw": 0.5, "fc": 0.5})

    assert "conv1" not in done and isinstance(model.conv1, nn.Conv2d)  # 1.0: untouched
    assert done["conv2"] == Factorization(8, 32, 32 * 144, 8 * (144 + 32))
    assert done["fc"] == Factorization(5, 10, 330, 5 * 32 + 5 * 10 + 10)
    assert isinstance(model.conv2, FactorizedLayer) and isinstance(model.fc, FactorizedLayer)
    assert not done["dw"].factorized and "grouped" in done["dw"].skipped
    assert isinstance(model.dw, nn.Conv2d)
    assert "dw (grouped convolution" in caplog.text
    with torch.no_grad():
        assert model(x).shape == (2, 10)

    model, _ = _tiny()
    # conv1: 3*9=27 inputs, 16 outputs; rank 14 of 16 needs 14*43 = 602 >= 432 weights
    done = low_rank(model, {"conv1": 0.9})
    assert not done["conv1"].factorized and "saves no parameters" in done["conv1"].skipped
    assert isinstance(model.conv1, nn.Conv2d)
    with pytest.raises(SearchSpaceError, match="bn1"):
        low_rank(model, {"bn1": 0.5})


# --- through the pipeline: compress, export, ONNX Runtime, latency -----------------------------


def test_candidate_with_rank_orders_transforms_and_roundtrips() -> None:
    candidate = Candidate(channel_keep={"conv1": 0.5}, rank={"conv2": 0.25, "fc": 1.0},
                          sparsity={"conv2": 0.5}, precision={"conv2": "int8"})
    kinds = [type(t).__name__ for t in candidate.transforms()]
    assert kinds == ["ChannelPruning", "LowRank", "Sparsity", "Quantization"]
    assert Candidate.from_json(candidate.to_json()) == candidate
    assert not Candidate(rank={"fc": 0.5}).is_identity
    assert Candidate(rank={"fc": 1.0}).is_identity
    assert "rank" not in Candidate().to_dict()  # older candidates keep their JSON


def test_compressed_candidate_exports_and_matches_onnxruntime() -> None:
    model, x = _tiny()
    candidate = Candidate(channel_keep={"conv1": 0.5}, rank={"conv2": 0.25, "fc": 0.5,
                                                             "dw": 0.5})
    compressed = compress(model, candidate, x)

    assert isinstance(model.conv2, nn.Conv2d)  # the original model is left untouched
    module = compressed.module
    assert isinstance(module.conv2, FactorizedLayer) and isinstance(module.fc, FactorizedLayer)
    assert module.conv2[0].in_channels == 8  # factorized after pruning: the pruned shape
    assert compressed.state["lowrank"]["conv2"].rank == 8  # min(32, 8*9) = 32 -> 8
    assert compressed.renamed == {"conv2": ("conv2.0", "conv2.1"), "fc": ("fc.0", "fc.1")}
    with torch.no_grad():
        expected = module(x).numpy()
    magnitude = float(np.abs(expected).max())
    assert magnitude > 1e-3

    onnx_bytes = export_onnx(module, x)
    layers = onnx_layer_nodes(onnx.load_from_string(onnx_bytes))
    assert {"conv2.0", "conv2.1", "fc.0", "fc.1", "conv1", "dw"} <= set(layers)
    got = get_backend("onnxruntime").run(onnx_bytes, x.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * max(magnitude, 1.0))


def test_full_rank_model_exports_with_the_original_outputs() -> None:
    model, x = _tiny()
    with torch.no_grad():
        reference = model(x)
    low_rank_model, _ = _tiny()
    for name in ("conv1", "conv2", "fc"):
        layer = low_rank_model.get_submodule(name)
        setattr(low_rank_model, name, factorize_layer(layer, full_rank(layer)))
    got = get_backend("onnxruntime").run(export_onnx(low_rank_model, x), x.numpy())
    np.testing.assert_allclose(got, reference.numpy(), rtol=1e-3, atol=1e-4)


def test_later_transforms_follow_a_factorized_layer() -> None:
    """Sparsity and precision named for a factorized layer apply to both its factors."""
    model, x = _tiny()
    candidate = Candidate(rank={"conv2": 0.25}, sparsity={"conv2": 0.5, "conv1": 0.5},
                          precision={"conv2": "int8"})
    compressed = compress(model, candidate, x)
    configs = {type(c): c for _, c in compressed._steps()}
    assert configs[LowRank].ranks == {"conv2": 0.25}
    assert dict(configs[Sparsity].amounts) == {"conv2.0": 0.5, "conv2.1": 0.5, "conv1": 0.5}
    assert dict(configs[Quantization].precision) == {"conv2.0": "int8", "conv2.1": "int8"}

    structure = onnx.load_from_string(compressed.structure_onnx())
    plan = compressed.node_precisions(structure)
    assert plan is not None
    nodes = onnx_layer_nodes(structure)
    assert plan[nodes["conv2.0"]] == plan[nodes["conv2.1"]] == "int8"
    assert plan[nodes["conv1"]] == "fp32"
    torch.manual_seed(1)
    calibration = torch.randn(8, 3, 16, 16).numpy()
    deployed = compressed.rewrite(compressed.structure_onnx(), lambda: calibration)
    assert exported_precisions(deployed) == {"conv1": "fp32", "conv2.0": "int8",
                                             "conv2.1": "int8", "dw": "fp32", "fc": "fp32"}

    apply_sparsity(compressed.module, candidate.sparsity)  # as the search's screening does
    for factor in compressed.module.conv2:
        zeros = float((factor.weight == 0).float().mean())
        assert zeros == pytest.approx(0.5, abs=0.01)


def test_latency_estimate_costs_both_factors(synthetic_profile: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.randn(1, 64, 16, 16)
    latency = LatencyModel(HardwareProfile.load(synthetic_profile))
    whole = compress(model, Candidate(), x).estimate(latency)
    factorized = compress(model, Candidate(rank={"0": 0.125}), x).estimate(latency)

    def convs(estimate: LatencyEstimate) -> int:
        return sum(1 for _, op_type, _ in estimate.per_node_ms if op_type == "Conv")

    assert convs(factorized) == convs(whole) + 1
    assert not factorized.unmodelled
    # rank 8 of 64: 8*(576 + 64) weights instead of 64*576, about a seventh of the work
    assert factorized.latency_ms < whole.latency_ms
    assert math.isfinite(factorized.latency_ms)
