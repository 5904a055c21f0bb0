"""Gradient statistics for the data-driven channel importance criteria.

First-order Taylor (Molchanov et al.) ranks a channel by ``|sum(weight x gradient)|`` over
its weights; Optimal Brain Damage (LeCun et al.) by ``sum(weight^2 x h) / 2`` with ``h`` the
diagonal of the loss's Hessian, estimated here, as Torch-Pruning's ``GroupHessianImportance``
does, by the mean squared per-sample gradient (the empirical Fisher). Both need the gradients
of the unpruned model on a few training samples: computed once per model and data
(:func:`gradient_statistics`), then handed to every candidate built from that model, whose
parameters receive them as ``.grad`` for Torch-Pruning's importance classes to read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GRADIENT_SAMPLES", "GradientStatistics", "gradient_statistics"]

#: Training samples the statistics are computed on (a fixed, seeded subset).
GRADIENT_SAMPLES = 64


@dataclass(frozen=True)
class GradientStatistics:
    """Per parameter name of the model they were computed on: the mean gradient of the loss
    (``grad``, for Taylor) and the mean squared per-sample gradient (``fisher``, for OBD)."""

    grad: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    samples: int

    def install(self, model: nn.Module, criterion: str) -> None:
        """Set every parameter's ``.grad`` to this statistic for ``criterion`` (``taylor``:
        the mean gradient, ``obd``: the Fisher diagonal). ``model`` is the model they were
        computed on, or an unpruned copy of it."""
        source = self.grad if criterion == "taylor" else self.fisher
        for name, param in model.named_parameters():
            if name in source and source[name].shape == param.shape:
                param.grad = source[name].clone()


def gradient_statistics(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 32) -> GradientStatistics:
    """The statistics of ``model`` (evaluation mode: BatchNorm uses its running statistics,
    so the result depends on the samples alone) on ``inputs`` and ``labels``; ``model`` is
    left as it was, without gradients."""
    was_training = model.training
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grad = {n: torch.zeros_like(p) for n, p in params.items()}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    count = len(inputs)
    try:
        for start in range(0, count, batch_size):
            x, y = inputs[start:start + batch_size], labels[start:start + batch_size]
            for i in range(len(x)):  # per-sample gradients for the Fisher diagonal
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
                for n, p in params.items():
                    if p.grad is not None:
                        grad[n] += p.grad / count
                        fisher[n] += p.grad.square() / count
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return GradientStatistics(grad, fisher, count)
