"""Training loops: a baseline from scratch and the short finetune after compression."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.exceptions import FinetuneDivergedError

__all__ = ["TrainResult", "TrainSettings", "evaluate_accuracy", "train"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """SGD with Nesterov momentum, linear warm-up then cosine decay to zero."""

    steps: int = 200
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    steps: int
    final_loss: float


def _lr_factor(step: int, settings: TrainSettings) -> float:
    if settings.warmup_steps and step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(settings.steps - settings.warmup_steps, 1)
    progress = (step - settings.warmup_steps) / span
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``settings.steps`` mini-batches drawn from (x, y).

    Raises :class:`FinetuneDivergedError` as soon as the loss is NaN or infinite.
    """
    if settings.steps <= 0:
        return TrainResult(0, float("nan"))
    generator = torch.Generator().manual_seed(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                                nesterov=settings.momentum > 0,
                                weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, settings))
    model.train()
    n = len(x)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    loss_value = float("nan")
    for step in range(settings.steps):
        if cursor + settings.batch_size > n:
            order = torch.randperm(n, generator=generator)
            cursor = 0
        idx = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            model.eval()
            raise FinetuneDivergedError(
                f"training diverged at step {step + 1}/{settings.steps} (loss {loss_value}); "
                f"lower the learning rate (now {settings.lr:g})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step(step, loss_value)
    model.eval()
    return TrainResult(settings.steps, loss_value)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on (x, y), in [0, 1]."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(dim=1) == y[i:i + batch_size]).sum())
    return correct / max(len(x), 1)
