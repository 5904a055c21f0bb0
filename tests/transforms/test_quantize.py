from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn.utils import parametrize

from autocompress.data import load_data
from autocompress.evaluation import TrainSettings, evaluate_accuracy, train
from autocompress.exceptions import (
    DataError,
    ExportError,
    FinetuneDivergedError,
    SearchSpaceError,
)
from autocompress.hardware.export import export_onnx
from autocompress.hardware.kernels import FREE_OPS
from autocompress.models import create_model
from autocompress.transforms import (
    PRECISIONS,
    exported_precisions,
    finish_qat,
    fold_batchnorms,
    node_precisions,
    onnx_accuracy,
    onnx_layer_nodes,
    prepare_qat,
    quantize_onnx,
)
from autocompress.transforms._quantize import _QUANT_SUFFIX

RESNET_INPUT = torch.zeros(1, 1, 28, 28)


class TinyNet(nn.Module):
    """Conv-BN-ReLU, a residual add with a 1x1 projection, global pooling, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.skip = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)) + self.skip(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SharedConvOutput(nn.Module):
    """The conv's output feeds its BatchNorm and, un-normalized, the sum: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def _seeded(factory, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _randomize_batchnorms(module: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            size = bn.num_features
            bn.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
            bn.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            bn.bias.data.copy_(torch.randn(size, generator=generator) * 0.2)


def _layer_names(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _ort_optimized_ops(model_bytes: bytes) -> dict[str, str]:
    """Node name -> operator after ONNX Runtime's own graph optimizations (Q/DQ fusion)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return {node.name: node.op_type for node in optimized.graph.node}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train far faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return _seeded(lambda: create_model("resnet20", num_classes=10, in_channels=1).eval())


@pytest.fixture(scope="module")
def resnet_onnx(resnet: nn.Module) -> bytes:
    return export_onnx(resnet, RESNET_INPUT)


@pytest.fixture(scope="module")
def resnet_calibration() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


@pytest.fixture(scope="module")
def trained_tiny(digits) -> TinyNet:
    """TinyNet trained briefly on scikit-learn digits (8x8): about 94% validation accuracy."""
    module = _seeded(TinyNet)
    train(module, digits.train_x, digits.train_y,
          TrainSettings(steps=200, batch_size=64, lr=0.1, seed=0))
    return module.eval()


# ------------------------------------------------------------------------------ layer mapping

def test_onnx_layer_nodes_maps_every_conv_and_linear(resnet, resnet_onnx) -> None:
    nodes = onnx_layer_nodes(onnx.load_from_string(resnet_onnx))
    assert sorted(nodes) == sorted(_layer_names(resnet))
    assert nodes["layer1.0.conv1"] == "/layer1/layer1.0/conv1/Conv"
    assert nodes["layer2.0.shortcut.0"] == "/layer2/layer2.0/shortcut/shortcut.0/Conv"
    assert nodes["fc"] == "/fc/Gemm"


def test_onnx_layer_nodes_reads_dynamo_names() -> None:
    """Dynamo names nodes node_Conv_1; a Conv with a folded BatchNorm has the BatchNorm's
    namespace, so the weight's name decides; without one, the namespace does."""
    nodes = [
        helper.make_node("Conv", ["x", "block.conv.weight"], ["c"], name="node_Conv_1"),
        helper.make_node("Relu", ["c"], ["r"], name="node_relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="node_view"),
        helper.make_node("MatMul", ["f", "val_7"], ["y"], name="node_MatMul_2"),
    ]
    for node, path in zip(nodes, ["block.bn: BatchNorm2d/bn: aten.bn", "relu: aten.relu",
                                  "view: aten.view", "head: Linear/linear: aten.linear"],
                          strict=True):
        node.metadata_props.add(key="namespace", value=f": Net/{path}")
    graph = helper.make_graph(
        nodes, "dynamo_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32),
                                             "block.conv.weight"),
                     numpy_helper.from_array(np.ones((32, 3), np.float32), "val_7")],
    )
    model = helper.make_model(graph)
    assert onnx_layer_nodes(model) == {"block.conv": "node_Conv_1", "head": "node_MatMul_2"}
    plan = node_precisions(model, {"block.conv": "int8", "head": "fp16"})
    assert plan == {"node_Conv_1": "int8", "node_relu": "int8", "node_view": "int8",
                    "node_MatMul_2": "fp16"}


def test_quant_suffix_matches_onnxruntime() -> None:
    from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX

    assert _QUANT_SUFFIX == TENSOR_NAME_QUANT_SUFFIX


# ---------------------------------------------------------------------------- precision plan

def test_all_int8_request_marks_every_compute_node_int8(resnet, resnet_onnx) -> None:
    model = onnx.load_from_string(resnet_onnx)
    plan = node_precisions(model, dict.fromkeys(_layer_names(resnet), "int8"))
    compute = [n.name for n in model.graph.node if n.op_type not in FREE_OPS]
    assert len(plan) == len(model.graph.node)
    assert compute and all(plan[name] == "int8" for name in compute)
    assert plan["/Flatten"] == "int8"  # a free op follows its input


def test_mixed_request_keeps_add_fp32_when_an_input_is_fp32(resnet_onnx) -> None:
    model = onnx.load_from_string(resnet_onnx)
    layers = onnx_layer_nodes(model)
    request = dict.fromkeys(layers, "int8") | {"layer1.0.conv2": "fp32"}
    plan = node_precisions(model, request)
    assert plan["/layer1/layer1.0/conv2/Conv"] == "fp32"
    assert plan["/layer1/layer1.0/Add"] == "fp32"          # conv2 is fp32
    assert plan["/layer1/layer1.0/relu_1/Relu"] == "fp32"  # follows the Add
    assert plan["/layer1/layer1.1/Add"] == "fp32"          # its shortcut comes from fp32
    assert plan["/layer1/layer1.1/conv1/Conv"] == "int8"
    assert plan["/layer2/layer2.1/Add"] == "int8"          # both inputs int8 again


# ---------------------------------------------------------------------------------- export

def test_mixed_precision_export_runs_exactly_the_requested_precisions(
        resnet, resnet_onnx, resnet_calibration) -> None:
    layers = _layer_names(resnet)
    request = dict.fromkeys(layers, "int8") | {"layer1.0.conv2": "fp32", "layer3.2.conv1": "fp16"}
    del request["layer2.1.conv1"]  # not named: fp32
    quantized = quantize_onnx(resnet_onnx, request, resnet_calibration)

    expected = {layer: request.get(layer, "fp32") for layer in layers}
    assert exported_precisions(quantized) == expected
    # What ONNX Runtime really runs once it has fused the Q/DQ pairs.
    ops = _ort_optimized_ops(quantized)
    nodes = onnx_layer_nodes(onnx.load_from_string(resnet_onnx))
    for layer, precision in expected.items():
        int8_kernel = ops[nodes[layer]] in ("QLinearConv", "QGemm")
        assert int8_kernel == (precision == "int8"), (layer, ops[nodes[layer]])
    plan = node_precisions(onnx.load_from_string(resnet_onnx), request)
    adds = {name: p for name, p in plan.items() if name.endswith("/Add")}
    assert {"int8", "fp32"} <= set(adds.values())
    for name, precision in adds.items():
        assert ops[name] == ("QLinearAdd" if precision == "int8" else "Add"), name
    accuracy = onnx_accuracy(quantized, resnet_calibration, np.zeros(8, dtype=np.int64))
    assert 0.0 <= accuracy <= 1.0


def test_fp16_layers_get_float16_weights_and_no_fp32_round_trips(
        resnet, resnet_onnx, resnet_calibration) -> None:
    quantized = quantize_onnx(resnet_onnx, {"fc": "fp16"}, resnet_calibration)
    assert exported_precisions(quantized) == {layer: "fp16" if layer == "fc" else "fp32"
                                              for layer in _layer_names(resnet)}
    casts = [n for n in onnx.load_from_string(quantized).graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # into fc and out of it: fp32 nodes keep fp32 tensors
    x = resnet_calibration[:2]
    with torch.no_grad():
        reference = resnet(torch.from_numpy(x)).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(quantized, providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(2)])
    np.testing.assert_allclose(logits, reference, rtol=1e-2, atol=1e-2)


def test_all_fp32_request_returns_the_model_unchanged(resnet_onnx, resnet_calibration) -> None:
    assert quantize_onnx(resnet_onnx, {"fc": "fp32"}, resnet_calibration) is resnet_onnx
    assert set(exported_precisions(resnet_onnx).values()) == {"fp32"}


def test_int8_accuracy_in_onnxruntime_matches_fp32(trained_tiny, digits) -> None:
    example = digits.val_x[:1]
    fp32 = export_onnx(trained_tiny, example)
    torch_accuracy = evaluate_accuracy(trained_tiny, digits.val_x, digits.val_y)
    fp32_accuracy = onnx_accuracy(fp32, digits.val_x.numpy(), digits.val_y.numpy())
    int8 = quantize_onnx(fp32, dict.fromkeys(_layer_names(trained_tiny), "int8"),
                         digits.train_x[:64].numpy())
    int8_accuracy = onnx_accuracy(int8, digits.val_x.numpy(), digits.val_y.numpy())

    assert torch_accuracy > 0.8
    assert fp32_accuracy == pytest.approx(torch_accuracy, abs=1 / len(digits.val_y))
    assert set(exported_precisions(int8).values()) == {"int8"}
    assert int8_accuracy >= fp32_accuracy - 0.03


def test_int8_model_stores_weights_in_a_quarter_of_the_bytes(
        resnet, resnet_onnx, resnet_calibration) -> None:
    int8 = quantize_onnx(resnet_onnx, dict.fromkeys(_layer_names(resnet), "int8"),
                         resnet_calibration)
    assert len(int8) < 0.35 * len(resnet_onnx)


# ------------------------------------------------------------------------------------- QAT

def test_fold_batchnorms_keeps_the_function() -> None:
    module = _seeded(TinyNet).eval()
    _randomize_batchnorms(module)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = module(x)
    folded = fold_batchnorms(module, ["conv1", "conv2", "skip", "fc"], x[:1])
    with torch.no_grad():
        after = module(x)
    assert folded == ["conv1", "conv2"]  # skip and fc have no BatchNorm after them
    assert isinstance(module.bn1, nn.Identity) and isinstance(module.bn2, nn.Identity)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_fold_batchnorms_refuses_a_fold_that_changes_the_output(caplog) -> None:
    module = _seeded(SharedConvOutput).eval()
    _randomize_batchnorms(module)
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = module(x)
    with caplog.at_level(logging.WARNING, logger="autocompress.transforms._quantize"):
        assert fold_batchnorms(module, ["conv"], x) == []
    assert isinstance(module.bn, nn.BatchNorm2d)
    assert "stays unfolded" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(module(x), before)


def test_qat_keeps_the_function_and_bakes_int8_weights(trained_tiny, digits) -> None:
    module = _seeded(TinyNet)
    module.load_state_dict(trained_tiny.state_dict())
    module.eval()
    x = digits.val_x[:32]
    with torch.no_grad():
        reference = module(x)
    layers = _layer_names(module)
    handle = prepare_qat(module, layers, x)
    assert handle.folded == ("conv1", "conv2")
    assert all(parametrize.is_parametrized(module.get_submodule(n), "weight") for n in layers)
    with torch.no_grad():
        fake_quantized = module(x)
    finished = finish_qat(handle)
    with torch.no_grad():
        baked = finished(x)
    scale = float(reference.abs().max())
    assert float((fake_quantized - reference).abs().max()) < 0.1 * scale
    assert float((baked - reference).abs().max()) < 0.05 * scale
    for name in layers:
        layer = finished.get_submodule(name)
        assert not parametrize.is_parametrized(layer) and not layer._forward_pre_hooks
        weight = layer.weight.detach().flatten(1)
        steps = weight / (weight.abs().amax(dim=1, keepdim=True) / 64)  # 7-bit weights
        torch.testing.assert_close(steps, steps.round(), atol=1e-3, rtol=0)


def test_qat_gradients_flow_through_the_fake_quantization(trained_tiny, digits) -> None:
    module = _seeded(TinyNet)
    module.load_state_dict(trained_tiny.state_dict())
    x, y = digits.val_x[:64], digits.val_y[:64]
    handle = prepare_qat(module, _layer_names(module), x)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    module.train()
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    original = module.conv2.parametrizations.weight.original
    assert original.grad is not None and float(original.grad.abs().sum()) > 0
    assert losses[-1] < 0.5 * losses[0]
    assert handle.observers["conv2"].high > handle.observers["conv2"].low


def test_qat_stops_when_activations_blow_up(digits) -> None:
    module = _seeded(TinyNet)
    prepare_qat(module, ["conv2"], digits.train_x[:8])
    module.train()
    with pytest.raises(FinetuneDivergedError, match="conv2.*lower the learning rate"):
        module(torch.full((2, 1, 8, 8), float("inf")))


def test_finished_qat_module_exports_and_quantizes_to_int8(trained_tiny, digits) -> None:
    module = _seeded(TinyNet)
    module.load_state_dict(trained_tiny.state_dict())
    layers = _layer_names(module)
    handle = prepare_qat(module, layers, digits.train_x[:64])
    train(module, digits.train_x, digits.train_y, TrainSettings(steps=20, lr=0.01, seed=1))
    finished = finish_qat(handle).eval()
    torch_accuracy = evaluate_accuracy(finished, digits.val_x, digits.val_y)
    int8 = quantize_onnx(export_onnx(finished, digits.val_x[:1]), dict.fromkeys(layers, "int8"),
                         digits.train_x[:64].numpy())
    assert exported_precisions(int8) == dict.fromkeys(layers, "int8")
    int8_accuracy = onnx_accuracy(int8, digits.val_x.numpy(), digits.val_y.numpy())
    assert int8_accuracy >= torch_accuracy - 0.03


# ---------------------------------------------------------------------------------- errors

def test_bad_requests_raise_clear_errors(resnet, resnet_onnx, resnet_calibration) -> None:
    model = onnx.load_from_string(resnet_onnx)
    with pytest.raises(SearchSpaceError, match="unknown precision 'int4'.*fp32, fp16, int8"):
        quantize_onnx(resnet_onnx, {"fc": "int4"}, resnet_calibration)
    with pytest.raises(SearchSpaceError, match="'layer9.conv'.*conv1"):
        node_precisions(model, {"layer9.conv": "int8"})
    with pytest.raises(SearchSpaceError, match="'bn1'"):
        prepare_qat(_seeded(TinyNet), ["bn1"], torch.zeros(1, 1, 8, 8))
    with pytest.raises(DataError, match=r"shape \(4, 3, 28, 28\).*\('N', 1, 28, 28\)"):
        quantize_onnx(resnet_onnx, {"fc": "int8"}, np.zeros((4, 3, 28, 28), np.float32))
    with pytest.raises(DataError, match="labels"):
        onnx_accuracy(resnet_onnx, resnet_calibration, np.zeros(3, dtype=np.int64))
    with pytest.raises(ExportError, match="not an ONNX model"):
        exported_precisions(b"not a model")
    assert PRECISIONS == ("fp32", "fp16", "int8")


# ------------------------------------------------------------- shared with hardware/

def _fixed_batch_classifier(batch: int) -> tuple[bytes, np.ndarray]:
    """logits = x @ w.T for 6 features and 3 classes, a fixed batch of ``batch``."""
    w = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                             ).SerializeToString(), w


def test_onnx_accuracy_runs_through_a_backend_and_pads_a_fixed_batch() -> None:
    from autocompress.hardware.backends.synthetic import SyntheticBackend

    model, w = _fixed_batch_classifier(4)
    x = np.random.default_rng(1).standard_normal((10, 6)).astype(np.float32)
    labels = (x @ w.T).argmax(axis=1)
    labels[:3] = (labels[:3] + 1) % 3  # three wrong on purpose
    assert onnx_accuracy(model, x, labels) == pytest.approx(0.7)  # 4 + 4 + 2 (padded)
    runs: list[int] = []

    class Counting(SyntheticBackend):
        def run(self, onnx_model: bytes, inputs: np.ndarray, batch_size: int = 256
                ) -> np.ndarray:
            runs.append(len(inputs))
            return super().run(onnx_model, inputs, batch_size)

    assert onnx_accuracy(model, x, labels, backend=Counting(scale=1.0)) == pytest.approx(0.7)
    assert runs == [10]


def test_deployment_and_profiling_quantize_with_one_routine(
        resnet, resnet_onnx, resnet_calibration, monkeypatch) -> None:
    from autocompress.hardware import _qdq, quantization
    from autocompress.hardware.kernels import Kernel, kernel_graph
    from autocompress.transforms import _int8

    calls: list[dict] = []

    def spy(model, calibration, **options):
        calls.append(options)
        return quantization.quantize_static_int8(model, calibration, **options)

    monkeypatch.setattr(_int8, "quantize_static_int8", spy)
    monkeypatch.setattr(_qdq, "quantize_static_int8", spy)
    deployed = quantize_onnx(resnet_onnx, dict.fromkeys(_layer_names(resnet), "int8"),
                             resnet_calibration)
    profiled = kernel_graph(Kernel("conv", 8, 16, 8, 8, kernel=3, precision="int8"))
    assert len(calls) == 2
    assert calls[0]["reduce_range"] and not calls[0].get("quantize_latent_ops", False)
    assert calls[1].get("quantize_latent_ops") and calls[1].get("reduce_range", True)
    for model in (deployed, profiled):  # 7-bit weights in both
        weights = [numpy_helper.to_array(init) for init in onnx.load_from_string(model)
                   .graph.initializer if init.data_type == TensorProto.INT8
                   and len(init.dims) == 4]
        assert weights and max(int(np.abs(w.astype(int)).max()) for w in weights) <= 64


# ------------------------------------------------------------------- models beyond resnet

class _SixBlocks(nn.Module):
    """What MobileNetV2, ShuffleNetV2 and transformers put between their layers: a ReLU6
    (Clip with constant bounds), a split at half the channels read off the shape, and a
    Linear on 3-d tokens (a MatMul whose weight the exporter stores transposed)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 1)
        self.tokens = nn.Linear(16, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(x))
        half = x.shape[1] // 2
        x = torch.cat([self.left(x[:, :half]), x[:, half:]], dim=1)
        tokens = self.tokens(x.flatten(2).transpose(1, 2))     # (1, 64, 32)
        return self.fc(F.relu6(tokens).mean(1))


@pytest.mark.parametrize("int8", [("stem",), ("stem", "left"), ("tokens",), ("left", "fc"),
                                  ("stem", "left", "tokens", "fc")])
def test_mixed_precision_of_relu6_splits_and_token_linears_exports(int8) -> None:
    model = _seeded(_SixBlocks).eval()
    x = torch.randn(1, 3, 8, 8)
    onnx_bytes = export_onnx(model, x)
    layers = onnx_layer_nodes(onnx.load_from_string(onnx_bytes))
    assert set(layers) == {"stem", "left", "tokens", "fc"}
    request = dict.fromkeys(layers, "fp32") | dict.fromkeys(int8, "int8")
    calibration = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    quantized = quantize_onnx(onnx_bytes, request, calibration)
    assert exported_precisions(quantized) == request


def test_constants_and_shape_arithmetic_take_no_precision_of_their_own() -> None:
    model = _seeded(_SixBlocks).eval()
    graph = onnx.load_from_string(export_onnx(model, torch.randn(1, 3, 8, 8)))
    plan = node_precisions(graph, {"stem": "int8", "left": "int8"})
    clips = [n.name for n in graph.graph.node if n.op_type == "Clip"]
    assert plan[clips[0]] == "int8"        # after the int8 stem, its bounds are constants
    assert plan[clips[1]] == "fp32"        # after the fp32 token Linear
    assert all(plan[n.name] == "fp32" for n in graph.graph.node
               if n.op_type in ("Shape", "Constant"))


def test_a_linear_on_tokens_keeps_its_weight_name_in_the_export() -> None:
    model = _seeded(_SixBlocks).eval()
    graph = onnx.load_from_string(export_onnx(model, torch.randn(1, 3, 8, 8))).graph
    matmul = next(n for n in graph.node if n.op_type == "MatMul")
    assert matmul.input[1] == "tokens.weight"
    weight = next(i for i in graph.initializer if i.name == "tokens.weight")
    np.testing.assert_array_equal(numpy_helper.to_array(weight),
                                  model.tokens.weight.detach().t().numpy())


class _LayerScale(nn.Module):
    """A layer scale after a convolution (ConvNeXt, FastViT, PoolFormer: ``gamma * conv(x)``),
    which ONNX Runtime's optimizer folds into the convolution's weight under a new name."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.fc2 = nn.Conv2d(16, 16, 1)
        self.gamma = nn.Parameter(torch.linspace(0.1, 1.0, 16).reshape(16, 1, 1))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.fc2(x) * self.gamma
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("int8", [("stem",), ("fc2", "head")])
def test_a_layer_scale_folded_into_its_convolution_keeps_the_layer_name(int8) -> None:
    model = _seeded(_LayerScale).eval()
    onnx_bytes = export_onnx(model, torch.randn(1, 3, 8, 8))
    request = {"stem": "fp32", "fc2": "fp32", "head": "fp32"} | dict.fromkeys(int8, "int8")
    calibration = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    assert exported_precisions(quantize_onnx(onnx_bytes, request, calibration)) == request


@pytest.mark.parametrize(("name", "layer"), [
    ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
    # ONNX Runtime's optimizer fused a MatMul and its Add into a Gemm
    ("/features/features.1/features.1.0/block/block.3/MatMul/MatMulAddFusion",
     "features.1.0.block.3"),
    # a torch.fx GraphModule (a block depth dropped a branch of) calls its MLP's layers itself
    ("/features/features.3/features.3.1/mlp.0/MatMul", "features.3.1.mlp.0"),
])
def test_layers_are_read_from_node_scopes(name: str, layer: str) -> None:
    from autocompress.transforms._quantize_graph import _layer_from_scope

    assert _layer_from_scope(name) == layer
