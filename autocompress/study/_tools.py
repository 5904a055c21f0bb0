"""``autocompress estimate`` for a model by name, optionally compressed by a candidate."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from autocompress.exceptions import AutocompressError
from autocompress.hardware import HardwareProfile, LatencyEstimate, LatencyModel
from autocompress.models import create_model, load_checkpoint, resolve_model
from autocompress.space import Candidate
from autocompress.space._candidate import DATA_IMPORTANCES
from autocompress.transforms import compress

__all__ = ["ModelEstimate", "estimate_latency"]


@dataclass(frozen=True)
class ModelEstimate:
    estimate: LatencyEstimate
    profile: HardwareProfile
    input_shape: tuple[int, int, int, int]
    what: str


def _default_shape(model: str) -> tuple[int, int, int, int] | None:
    spec = resolve_model(model)
    if spec.source == "builtin":
        return (1, 3, 32, 32)
    if spec.source == "torchvision":
        return (1, 3, 224, 224)
    if spec.source == "timm":   # the architecture's own default input (metadata: no download)
        import timm

        config = timm.get_pretrained_cfg(model.removeprefix("timm:"))
        size = getattr(config, "input_size", None) if config is not None else None
        if size is not None and len(size) == 3:
            return (1, int(size[0]), int(size[1]), int(size[2]))
    return None


def estimate_latency(
    profile: str | Path,
    model: str,
    *,
    checkpoint: str | Path | None = None,
    candidate: str | Path | None = None,
    input_shape: tuple[int, int, int, int] | None = None,
    num_classes: int = 10,
) -> ModelEstimate:
    """The raw (uncalibrated) profile estimate of ``model``'s latency.

    ``candidate`` is a ``candidate.json`` written by ``pick`` (its input shape is used unless
    ``input_shape`` is given) or a candidate config; the model is compressed by it first.
    Builtin models default to 1x3x32x32, torchvision models to 1x3x224x224; a model from a
    file needs ``input_shape``.
    """
    loaded = HardwareProfile.load(profile)
    chosen = None
    if candidate is not None:
        path = Path(candidate)
        if not path.is_file():
            raise AutocompressError(f"candidate file {path} does not exist")
        text = path.read_text()
        chosen = Candidate.from_json(text)
        record = json.loads(text)
        if input_shape is None and record.get("input_shape"):
            input_shape = tuple(record["input_shape"])  # type: ignore[assignment]
        num_classes = int(record.get("num_classes", num_classes))
    shape = input_shape or _default_shape(model)
    if shape is None:
        raise AutocompressError(f"pass --input-shape 1,C,H,W: the input shape of {model} "
                                "cannot be told from the model alone")
    module = create_model(model, num_classes=num_classes, in_channels=shape[1]).eval()
    if checkpoint is not None:
        load_checkpoint(module, checkpoint)
    candidate = chosen or Candidate()
    if candidate.importance in DATA_IMPORTANCES:
        # which channels go depends on data; how many (all a latency estimate sees) does not
        candidate = dataclasses.replace(candidate, importance="l2")
    compressed = compress(module, candidate, torch.zeros(shape), num_classes=num_classes)
    what = model + (f" compressed as {candidate}" if chosen is not None else "")
    return ModelEstimate(compressed.estimate(LatencyModel(loaded)), loaded, shape, what)
