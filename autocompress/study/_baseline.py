"""The model to compress: loaded from a checkpoint, or trained briefly and cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autocompress._io import write_bytes_atomic, write_json_atomic
from autocompress.data import DataSplit
from autocompress.evaluation import TrainSettings, evaluate_accuracy, train
from autocompress.models import ModelSpec, create_model, load_checkpoint
from autocompress.study._cache import cache_dir

__all__ = ["BASELINE_TRAINING", "Baseline", "prepare_baseline"]

_logger = logging.getLogger(__name__)

#: How a model without a checkpoint is trained before the search (about 4 epochs of mnist).
BASELINE_TRAINING = TrainSettings(steps=300, batch_size=64, lr=0.05, warmup_steps=30,
                                  weight_decay=5e-4)


@dataclass
class Baseline:
    module: nn.Module
    accuracy: float
    source: str           # "checkpoint PATH", "cache PATH" or "trained"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_baseline(
    spec: ModelSpec,
    data: DataSplit,
    *,
    checkpoint: str | Path | None = None,
    training: TrainSettings = BASELINE_TRAINING,
    seed: int = 0,
) -> Baseline:
    """Build the model; load ``checkpoint``, or train it on ``data`` (cached by settings)."""
    in_channels = data.input_shape[1]
    module = create_model(spec.name, num_classes=data.num_classes, in_channels=in_channels,
                          input_size=data.input_shape[2:])
    if checkpoint is not None:
        load_checkpoint(module, checkpoint)
        module.eval()
        accuracy = evaluate_accuracy(module, data.val)
        return Baseline(module, accuracy, f"checkpoint {checkpoint}")

    settings = dataclasses.replace(training, seed=seed)
    key_material = json.dumps({
        "model": spec.fingerprint, "data": data.fingerprint, "classes": data.num_classes,
        "input": list(data.input_shape), "training": settings.to_dict(), "torch": torch.__version__,
    }, sort_keys=True)
    key = hashlib.sha256(key_material.encode()).hexdigest()[:20]
    folder = cache_dir("baselines")
    weights = folder / f"{key}.pt"
    if weights.is_file():
        try:
            load_checkpoint(module, weights)
            module.eval()
            accuracy = evaluate_accuracy(module, data.val)
            _logger.info("baseline loaded from cache %s (accuracy %.4f)", weights, accuracy)
            return Baseline(module, accuracy, f"cache {weights}")
        except Exception as exc:  # a broken cache entry is retrained, not fatal
            _logger.warning("ignoring unusable cached baseline %s: %s", weights, exc)

    start = time.perf_counter()
    _logger.info("training the baseline %s on %s for %d steps (no --checkpoint given)",
                 spec.name, data.name, settings.steps)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching global state
        torch.manual_seed(seed)
        module = create_model(spec.name, num_classes=data.num_classes, in_channels=in_channels)
        train(module, data.train, None, settings)
    accuracy = evaluate_accuracy(module, data.val)
    buffer = _serialize(module)
    write_bytes_atomic(weights, buffer)
    write_json_atomic(weights.with_suffix(".json"), {
        "key": json.loads(key_material), "accuracy": accuracy,
        "train_seconds": round(time.perf_counter() - start, 1)})
    _logger.info("baseline trained in %.0f s, accuracy %.4f, cached at %s",
                 time.perf_counter() - start, accuracy, weights)
    return Baseline(module, accuracy, "trained")


def _serialize(module: nn.Module) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()
