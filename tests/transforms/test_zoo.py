"""Every torchvision classifier under 60 M parameters prunes, exports and runs, uniformly and
under random candidates of the depth space (mixed keep ratios, residual blocks dropped); those
Torch-Pruning cannot follow as a whole are pruned in their local groups, with a warning that
names the layers left whole (slow: about 51 models at random weights); and a spread of timm
architectures under random candidates of every transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torchvision

from autocompress.models import torchvision_zoo
from autocompress.space import Candidate, SearchSpace
from autocompress.transforms import (
    CompressedModel,
    compress,
    find_channel_groups,
    find_residual_blocks,
)

pytestmark = pytest.mark.slow

#: Pruned in part: Torch-Pruning cannot follow their channel shuffles, or traces their
#: attention for many minutes; only their local groups (MLP widths, bottlenecks) are pruned.
LOCAL_ONLY = ("shufflenet_v2_", "swin_", "maxvit_")


@pytest.mark.parametrize(("name", "size"), [(m.name, m.input_px) for m in torchvision_zoo()])
def test_zoo_model_prunes_exports_and_runs(name: str, size: int,
                                          caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    with caplog.at_level("WARNING", logger="autocompress.transforms._channels"):
        groups = find_channel_groups(model, x)
    partial = "only the" in caplog.text and "keep all their output channels" in caplog.text
    assert partial == name.startswith(LOCAL_ONLY), caplog.text
    compressed = compress(model, Candidate(
        channel_keep={g.name: 0.5 for g in groups}, round_to=8), x)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in compressed.module.parameters())
    assert after < (before if partial else 0.8 * before), f"{name}: {before} -> {after}"
    _runs_as_exported(compressed, x)


def _runs_as_exported(compressed: CompressedModel, x: torch.Tensor) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(compressed.structure_onnx(),
                                   providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = compressed.module(x).numpy()
    scale = max(float(np.abs(ref).max()), 1e-6)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4 * scale)


DEPTH_SPACE = Path(__file__).parents[2] / "search_spaces" / "depth.yaml"


@pytest.mark.parametrize(("name", "size"), [(m.name, m.input_px) for m in torchvision_zoo()])
def test_zoo_model_builds_random_depth_candidates(name: str, size: int) -> None:
    """Mixed keep ratios at a 16-channel block and dropped blocks: each group cut to its own
    count (a grouped convolution's groups must still divide it), blocks dropped in any
    combination (a transformer block adds two branches in a row)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    groups = [g.name for g in find_channel_groups(model, x)]
    blocks = [b.name for b in find_residual_blocks(model, x)]
    bound = SearchSpace.from_yaml(DEPTH_SPACE).for_device(16, "any").bind(
        groups, [], blocks=blocks)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(2):
        candidate = bound.sample(study.ask())
        _runs_as_exported(compress(model, candidate, x), x)


#: Mixed precision that ONNX Runtime's quantization tools cannot build yet: Swin V2's
#: attention defeats their shape inference, and an fp32 layer beside int8 ones then has no
#: known input shape.
INT8_GAPS = ("swin_v2_",)


@pytest.mark.parametrize(("name", "size"), [
    pytest.param(m.name, m.input_px, marks=pytest.mark.xfail(
        m.name.startswith(INT8_GAPS), reason="mixed int8 of Swin V2", strict=True))
    for m in torchvision_zoo()])
def test_zoo_model_deploys_random_candidates_of_every_transform(
        name: str, size: int, synthetic_int8_profile: Path) -> None:
    """Channels, sparsity, dropped blocks, per-layer fp32/int8 and low rank at once: the
    candidate builds, is estimated, is quantized as the device runs it, and runs."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    _deploys_random_candidates(model, torch.randn(1, 3, size, size), synthetic_int8_profile)


def _deploys_random_candidates(model: torch.nn.Module, x: torch.Tensor, profile: Path) -> None:
    import onnxruntime as ort

    from autocompress.hardware import HardwareProfile, LatencyModel
    from autocompress.transforms import sparsifiable_layers

    space = SearchSpace.from_dict({
        "format_version": 1,
        "channels": {"round_to": 16, "rules": [
            {"match": "*", "keep_ratio": {"low": 0.25, "high": 1.0, "step": 0.125}}]},
        "sparsity": {"rules": [{"match": "*", "amount": {"choices": [0.0, 0.5]}}]},
        "depth": {"rules": [{"match": "*", "keep": {"choices": [0, 1]}}]},
        "precision": {"method": "ptq", "calibration_samples": 8, "rules": [
            {"match": "*", "precision": {"choices": ["fp32", "int8"]}}]},
        "lowrank": {"rules": [{"match": "*", "rank_ratio": {"choices": [0.25, 1.0]}}]}})
    bound = space.bind([g.name for g in find_channel_groups(model, x)],
                       sparsifiable_layers(model, x),
                       blocks=[b.name for b in find_residual_blocks(model, x)])
    latency = LatencyModel(HardwareProfile.load(profile))
    calibration = np.random.default_rng(0).standard_normal((8, *x.shape[1:])).astype(np.float32)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(2):
        compressed = compress(model, bound.sample(study.ask()), x)
        assert compressed.estimate(latency).latency_ms > 0
        deployed = compressed.rewrite(compressed.structure_onnx(), lambda: calibration)
        session = ort.InferenceSession(deployed, providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == (1, 10) and np.isfinite(out).all()


#: timm architectures beyond torchvision's (name: input side), random candidates of every
#: transform as above. Left out for time: res2net50_14w_8s (passes, 100 s), coatnet and
#: maxvit (Torch-Pruning's tracing runs for many minutes), rexnet_100 (its tracing stops at
#: the 300 s limit, and channel pruning is refused).
TIMM = {
    "resnet10t": 64, "efficientnet_b0": 64, "mobilenetv3_small_050": 64, "ghostnet_050": 64,
    "regnetx_002": 64, "convnext_atto": 64, "deit_tiny_patch16_224": 224,
    "vit_tiny_patch16_224": 224, "repvgg_a0": 64, "hrnet_w18_small": 64, "cspresnet50": 64,
    "densenet121": 64, "lcnet_050": 64, "mobileone_s0": 64, "poolformer_s12": 64,
    "resmlp_12_224": 224, "gernet_s": 64, "selecsls42b": 64, "xception41": 96,
    "mobilenetv4_conv_small": 64, "tinynet_e": 64, "ese_vovnet19b_dw": 64, "hgnetv2_b0": 64,
    "inception_v3": 96, "tf_mixnet_s": 64, "semnasnet_050": 64, "repghostnet_050": 64,
    "mambaout_femto": 64, "starnet_s1": 64,
}
#: What does not build yet (name: input side, why).
TIMM_GAPS = {
    "levit_128s": (224, "its attention caches bias tensors by device, and a second torch.fx "
                        "trace reads the first trace's proxies"),
    "efficientformer_l1": (224, "the same attention bias cache as LeViT"),
    "fastvit_t8": (64, "a BatchNorm-folded 1x1 convolution a GraphModule calls past a "
                       "numbered level loses its name in the export's scopes"),
    "dla34": (64, "a tree's residual is passed in as a second input: traced alone, its owner "
                  "does not show the branch"),
    "edgenext_xx_small": (64, "with a block dropped, Torch-Pruning maps a split's channels "
                              "wrongly"),
    "nf_regnet_b0": (64, "weight-standardized convolutions compute their weight: the export "
                         "holds no weight to name the layer by"),
}


@pytest.mark.parametrize(("name", "size"), [
    *TIMM.items(), *(pytest.param(name, size, marks=pytest.mark.xfail(reason=why, strict=True))
                     for name, (size, why) in TIMM_GAPS.items())])
def test_timm_model_deploys_random_candidates_of_every_transform(
        name: str, size: int, synthetic_int8_profile: Path) -> None:
    from autocompress.models import create_model

    torch.manual_seed(0)
    model = create_model(f"timm:{name}", num_classes=10, in_channels=3,
                         input_size=(size, size)).eval()
    _deploys_random_candidates(model, torch.randn(1, 3, size, size), synthetic_int8_profile)
