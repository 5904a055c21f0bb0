"""Scoring a compressed network without training it: adaptive BatchNorm (EagleEye).

Pruning a network leaves its BatchNorm layers with the statistics of the channels that fed
them before; accuracy right after pruning is mostly a measure of that mismatch and ranks
candidates badly. Re-estimating the BatchNorm statistics on a few training batches (no
gradient, no weight changes) and then measuring accuracy ranks candidates much like their
accuracy after a finetune does (Li et al., *EagleEye*, ECCV 2020), for the price of a few
forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autocompress.data._source import ImageSource, as_source
from autocompress.evaluation._train import evaluate_accuracy

__all__ = ["ScreeningSettings", "recalibrate_batchnorm", "screening_score"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class ScreeningSettings:
    """``batches`` training batches of ``batch_size`` re-estimate BatchNorm statistics; the
    score is the accuracy on the first ``val_samples`` validation samples."""

    batches: int = 8
    batch_size: int = 64
    val_samples: int = 500
    seed: int = 0


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor | ImageSource, *,
                          batches: int = 8, batch_size: int = 64, seed: int = 0) -> int:
    """Re-estimate the running mean and variance of every BatchNorm layer of ``model`` on
    ``batches`` random batches of ``x`` (inputs, or an
    :class:`~autocompress.data.ImageSource`; a cumulative average, as if the statistics had been
    computed on those samples alone). Nothing else changes: weights, biases and the affine
    parameters stay as they are. Returns the number of BatchNorm layers recalibrated; the
    model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, _BATCHNORMS) and m.track_running_stats]
    if not norms:
        model.eval()
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None          # cumulative moving average over the batches seen
    model.eval()
    for m in norms:
        m.train()                  # only the BatchNorm layers see training-mode batches
    source = x if isinstance(x, ImageSource) else None
    count = len(x)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    chunks = []
    for i in range(batches):
        idx = order[(i * batch_size) % count:][:batch_size]
        if len(idx) == 0:
            break
        chunks.append(idx)
    if source is None:
        for idx in chunks:
            model(x[idx])
    else:
        for inputs, _ in source.stream(chunks):
            model(inputs)
    for m, (momentum, _) in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()
    return len(norms)


def screening_score(model: nn.Module, train_x: torch.Tensor | ImageSource,
                    val_x: torch.Tensor | ImageSource, val_y: torch.Tensor | None = None,
                    settings: ScreeningSettings = ScreeningSettings()) -> float:
    """Validation accuracy of ``model`` after :func:`recalibrate_batchnorm` (in place): a
    training-free estimate of how well the compressed network will do once finetuned.

    ``train_x`` and ``val_x`` are :class:`~autocompress.data.ImageSource` objects (then
    ``val_y`` is ``None``) or tensors."""
    recalibrate_batchnorm(model, train_x, batches=settings.batches,
                          batch_size=settings.batch_size, seed=settings.seed)
    val = as_source(val_x, val_y)
    n = min(settings.val_samples, len(val))
    return evaluate_accuracy(model, val.subset(torch.arange(n)))
