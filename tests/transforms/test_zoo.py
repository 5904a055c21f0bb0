"""Every torchvision classifier under 60 M parameters prunes, exports and runs; those
Torch-Pruning cannot follow as a whole are pruned in their local groups, with a warning that
names the layers left whole (slow: about 51 models at random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from autocompress.models import torchvision_zoo
from autocompress.space import Candidate
from autocompress.transforms import compress, find_channel_groups

pytestmark = pytest.mark.slow

#: Pruned in part: Torch-Pruning cannot follow their channel shuffles, or traces their
#: attention for many minutes; only their local groups (MLP widths, bottlenecks) are pruned.
LOCAL_ONLY = ("shufflenet_v2_", "swin_", "maxvit_")


@pytest.mark.parametrize(("name", "size"), [(m.name, m.input_px) for m in torchvision_zoo()])
def test_zoo_model_prunes_exports_and_runs(name: str, size: int,
                                          caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime as ort

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
    session = ort.InferenceSession(compressed.structure_onnx(),
                                   providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = compressed.module(x).numpy()
    scale = max(float(np.abs(ref).max()), 1e-6)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4 * scale)
