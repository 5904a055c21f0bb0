"""Statistics of a model on a few training samples, for the data-driven channel criteria.

First-order Taylor (Molchanov et al.) ranks a channel by ``|sum(weight x gradient)|`` over
its weights; Optimal Brain Damage (LeCun et al.) by ``sum(weight^2 x h) / 2`` with ``h`` the
diagonal of the loss's Hessian, estimated here, as Torch-Pruning's ``GroupHessianImportance``
does, by the mean squared per-sample gradient (the empirical Fisher). Both need the gradients
of the unpruned model on a few training samples: computed once per model and data
(:func:`gradient_statistics`), then handed to every candidate built from that model, whose
parameters receive them as ``.grad`` for Torch-Pruning's importance classes to read.

The activation criterion ranks a channel by its mean activation after a ReLU: the mean of
``max(0, y)`` over samples and positions, ``y`` the channel's output of each BatchNorm,
Conv2d and Linear layer (the mean-activation criterion of Molchanov et al.'s comparison; APoZ,
Hu et al., counts the zeros instead). A channel the ReLU mostly zeroes passes little to the
next layer. Torch-Pruning has no such criterion: :class:`ActivationImportance` scores its
dependency groups with it, from statistics computed once like the gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

__all__ = ["GRADIENT_SAMPLES", "ActivationImportance", "GradientStatistics",
           "gradient_statistics", "training_statistics"]

#: Training samples the statistics are computed on (a fixed, seeded subset).
GRADIENT_SAMPLES = 64


@dataclass(frozen=True)
class GradientStatistics:
    """Per parameter name of the model they were computed on: the mean gradient of the loss
    (``grad``, for Taylor) and the mean squared per-sample gradient (``fisher``, for OBD);
    per layer name, the mean positive part of each output channel (``activation``)."""

    grad: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    samples: int
    activation: dict[str, torch.Tensor] = field(default_factory=dict)

    def install(self, model: nn.Module, criterion: str) -> None:
        """Set every parameter's ``.grad`` to this statistic for ``criterion`` (``taylor``:
        the mean gradient, ``obd``: the Fisher diagonal). ``model`` is the model they were
        computed on, or an unpruned copy of it."""
        source = self.grad if criterion == "taylor" else self.fisher
        for name, param in model.named_parameters():
            if name in source and source[name].shape == param.shape:
                param.grad = source[name].clone()


def training_statistics(model: nn.Module, train: Any,
                        samples: int = GRADIENT_SAMPLES) -> GradientStatistics:
    """:func:`gradient_statistics` of ``model`` on a fixed, seeded subset of ``samples``
    images of the training source ``train`` (the same subset in the search and in ``pick``)."""
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=generator)[:samples]
    inputs, labels = train.fetch(order)
    return gradient_statistics(model, inputs, labels)


def gradient_statistics(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
                        ) -> GradientStatistics:
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
        activation = _mean_activations(model, inputs)
        for i in range(count):  # per-sample gradients for the Fisher diagonal
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs[i:i + 1]), labels[i:i + 1]).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grad[n] += p.grad / count
                    fisher[n] += p.grad.square() / count
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return GradientStatistics(grad, fisher, count, activation)


_ACTIVATION_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


def _mean_activations(model: nn.Module, inputs: torch.Tensor, batch_size: int = 32
                      ) -> dict[str, torch.Tensor]:
    """Per BatchNorm/Conv2d/Linear layer name: the mean of ``max(0, output)`` per output
    channel (dimension 1; a Linear's last) over ``inputs``."""
    sums: dict[str, torch.Tensor] = {}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            y = output.detach().relu()
            y = y.movedim(-1, 1) if y.dim() == 3 else y   # (N, tokens, C) -> (N, C, tokens)
            per_channel = y.transpose(0, 1).reshape(y.shape[1], -1).mean(dim=1)
            sums[name] = sums.get(name, 0) + per_channel * len(output)
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, _ACTIVATION_LAYERS)]
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                model(inputs[start:start + batch_size])
    finally:
        for hook in hooks:
            hook.remove()
    return {name: total / len(inputs) for name, total in sums.items()}


class ActivationImportance(tp.importance.Importance):
    """Torch-Pruning importance: a group's channel scores are the mean activations (see
    :class:`GradientStatistics`) of its BatchNorm layers, or of its Conv2d/Linear layers
    where it has no BatchNorm, averaged over the layers that have statistics.

    ``names`` maps the pruned model's modules to their names in the model the statistics
    were computed on (the same names: a candidate is a copy of it)."""

    _OUTPUT_FNS = (tp.pruner.function.prune_conv_out_channels,
                   tp.pruner.function.prune_linear_out_channels,
                   tp.pruner.function.prune_batchnorm_out_channels)

    def __init__(self, activation: Mapping[str, torch.Tensor], names: Mapping[nn.Module, str]
                 ) -> None:
        self.activation = activation
        self.names = names

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        found: dict[bool, list[torch.Tensor]] = {True: [], False: []}
        size = len(group[0].idxs)
        for item in group:
            module = item.dep.target.module
            stats = self.activation.get(self.names.get(module, ""))
            if (stats is None or item.dep.handler not in self._OUTPUT_FNS
                    or max(item.idxs) >= len(stats)):
                continue
            scores = torch.zeros(size)
            scores.index_add_(0, torch.as_tensor(item.root_idxs), stats[item.idxs].float())
            norm = isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d)
            found[norm].append(scores)
        chosen = found[True] or found[False]
        return torch.stack(chosen).mean(dim=0) if chosen else None
