"""Every torchvision classifier under 60 M parameters prunes, exports and runs, or is refused
with a message that says what to do instead (slow: about 51 models at random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models import get_model_weights, list_models

from autocompress.exceptions import ModelError
from autocompress.space import Candidate
from autocompress.transforms import compress, find_channel_groups

pytestmark = pytest.mark.slow

MAX_PARAMS = 60_000_000
#: Refused, with a message: channel shuffles Torch-Pruning cannot follow, and attention models
#: whose dependency tracing runs past the time limit.
MAY_BE_REFUSED = ("shufflenet_v2_", "swin_", "maxvit_")


def _zoo() -> list[tuple[str, int]]:
    """(name, input size): 96 px, or the model's minimum (transformers: 224 or 256)."""
    out = []
    for name in list_models(module=torchvision.models):
        meta = get_model_weights(name).DEFAULT.meta  # metadata only: nothing is downloaded
        if meta["num_params"] < MAX_PARAMS:
            out.append((name, max(96, meta.get("min_size", (1, 1))[0])))
    return out


@pytest.mark.parametrize(("name", "size"), _zoo())
def test_zoo_model_prunes_exports_and_runs_or_is_refused(
        name: str, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    # only models that may be refused are traced against the clock: whether the others pass
    # must not depend on how fast this host is
    monkeypatch.setenv("AUTOCOMPRESS_TRACE_TIMEOUT_S",
                       "60" if name.startswith(MAY_BE_REFUSED) else "0")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    try:
        groups = find_channel_groups(model, x)
        compressed = compress(model, Candidate(
            channel_keep={g.name: 0.5 for g in groups}, round_to=8), x)
    except ModelError as exc:
        assert name.startswith(MAY_BE_REFUSED), f"{name} refused: {exc}"
        assert "Channel pruning is not available for this model" in str(exc)
        return
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in compressed.module.parameters())
    assert after < 0.8 * before, f"{name}: {before} -> {after} parameters"
    session = ort.InferenceSession(compressed.structure_onnx(),
                                   providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = compressed.module(x).numpy()
    scale = max(float(np.abs(ref).max()), 1e-6)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4 * scale)
