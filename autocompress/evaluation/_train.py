"""The training loop: a baseline from scratch, the short finetune after compression and,
with :class:`~autocompress.evaluation.DistillationLoss` plugged in, a student learning from
its teacher.

:func:`train` is the only optimisation loop. What varies between its uses plugs in:

* ``loss``, a :class:`BatchLoss`: the loss of one mini-batch (cross-entropy by default);
* ``extra_parameters``: tensors optimised with the model's (a hint regressor);
* ``pool``: the sample indices batches are drawn from (all but an early-stopping holdout);
* ``callbacks``, :class:`TrainCallback` objects: run after every step, may stop training
  (:class:`~autocompress.evaluation.EarlyStopper`).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data._augment import augment
from autocompress.data._source import ImageSource, as_source
from autocompress.exceptions import DataError, FinetuneDivergedError
from autocompress.settings import TrainSettings

__all__ = ["BatchLoss", "CrossEntropy", "TrainCallback", "TrainResult", "evaluate_accuracy",
           "train"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        steps: optimiser steps run.
        final_loss: the loss of the last step run (NaN when none ran).
        stopped_early: whether a callback stopped training before ``settings.steps``.
    """

    steps: int
    final_loss: float
    stopped_early: bool = False


class BatchLoss(ABC):
    """The loss :func:`train` minimises, one mini-batch at a time."""

    #: Names the run in error messages ("training diverged at step ...").
    name: ClassVar[str] = "training"

    @abstractmethod
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 idx: torch.Tensor) -> torch.Tensor:
        """The scalar loss of ``model`` on one batch.

        Args:
            model: the network being trained (in training mode).
            x: the batch's inputs, augmented as ``settings.augmentation`` says.
            y: the batch's labels.
            idx: the batch's sample indices into the training data (to look up values
                precomputed per sample, such as a teacher's cached outputs).
        """

    def active(self) -> AbstractContextManager[object]:
        """Entered around the whole loop: register hooks, put other networks in eval mode."""
        return nullcontext()

    def divergence_advice(self) -> str:
        """Appended to "lower the learning rate (now ...)" when the loss diverges."""
        return ""


class CrossEntropy(BatchLoss):
    """Cross-entropy between the model's outputs and the labels: :func:`train`'s default.

    With ``label_smoothing`` (in [0, 1)), the target puts that much of its mass evenly on
    every class (Szegedy et al., 2016), as :func:`torch.nn.functional.cross_entropy` does.

    Raises:
        ValueError: ``label_smoothing`` outside [0, 1).
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), not {label_smoothing!r}")
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing)


class TrainCallback:
    """Watches :func:`train` and may stop it; override the methods needed."""

    def before_training(self, model: nn.Module, settings: TrainSettings) -> None:
        """Called once before the first step."""

    def after_step(self, model: nn.Module, step: int, loss: float) -> bool:
        """Called after optimiser step ``step`` (counted from 0) with its loss; return True
        to stop training after this step. The model must be left in training mode."""
        return False

    def after_training(self, model: nn.Module, steps: int) -> None:
        """Called once when training ends without an error (also after a stop), with the
        model in eval mode and the number of steps run."""


def _lr_factor(step: int, settings: TrainSettings) -> float:
    if settings.warmup_steps and step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(settings.steps - settings.warmup_steps, 1)
    progress = (step - settings.warmup_steps) / span
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _optimizer(params: list[torch.Tensor], settings: TrainSettings
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                                nesterov=settings.momentum > 0,
                                weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, settings))
    return optimizer, scheduler


def _autocast(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """The forward passes of a step in ``precision`` (see :class:`TrainSettings`). Only the
    loss is computed under autocast: with the backward pass and the optimiser step inside it
    as well, resnet20 trained to chance accuracy on CPU (torch 2.14)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _batches(source: ImageSource, pool: torch.Tensor | None, batch_size: int,
             generator: torch.Generator, steps: int
             ) -> Generator[tuple[torch.Tensor, torch.Tensor, torch.Tensor], None, None]:
    """``(indices, inputs, labels)`` of ``steps`` batches: each pass a fresh permutation of
    ``pool`` (default all samples), cut into ``batch_size`` chunks; an incomplete last chunk
    is skipped. A permutation is drawn from ``generator`` when its pass's first batch is
    needed (between the augmentation draws of the batches before it); the pass's chunks are
    then known, so a streamed source decodes them ahead while the model trains."""
    m = len(source) if pool is None else len(pool)
    left = steps
    while left > 0:
        order = torch.randperm(m, generator=generator)
        per_pass = min(max(m // batch_size, 1), left)
        chunks = [order[i * batch_size:(i + 1) * batch_size] for i in range(per_pass)]
        if pool is not None:
            chunks = [pool[chunk] for chunk in chunks]
        for idx, (x, y) in zip(chunks, source.stream(chunks), strict=True):
            yield idx, x, y
        left -= per_pass


def _device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live: batches are moved there (after augmentation, which
    runs on the CPU so that a seed gives the same batches on every device)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _check_finite(value: float, step: int, settings: TrainSettings, loss: BatchLoss) -> None:
    if not math.isfinite(value):
        raise FinetuneDivergedError(
            f"{loss.name} diverged at step {step + 1}/{settings.steps} (loss {value}); "
            f"lower the learning rate (now {settings.lr:g}){loss.divergence_advice()}"
        )


def train(
    model: nn.Module,
    x: torch.Tensor | ImageSource,
    y: torch.Tensor | None,
    settings: TrainSettings,
    *,
    loss: BatchLoss | None = None,
    extra_parameters: Iterable[torch.Tensor] = (),
    pool: torch.Tensor | None = None,
    on_step: Callable[[int, float], None] | None = None,
    callbacks: Sequence[TrainCallback] = (),
) -> TrainResult:
    """Train ``model`` in place for ``settings.steps`` mini-batches drawn from (x, y).

    SGD with Nesterov momentum, linear warm-up then cosine decay (:class:`TrainSettings`);
    every batch is augmented as ``settings.augmentation`` says before ``loss`` sees it. The
    batch order and the augmentation draw from one generator seeded by ``settings.seed``, so
    the same settings and ``pool`` give the same batches whatever the loss.

    Args:
        model: trained in place; left in eval mode.
        x, y: the training data: an :class:`~autocompress.data.ImageSource` (in memory or
            streamed; ``y`` is then ``None``), or tensors of inputs and labels.
        settings: optimiser, schedule, step budget, seed and augmentation.
        loss: the loss of one batch; :class:`CrossEntropy` by default.
        extra_parameters: optimised together with the model's parameters.
        pool: indices of the samples batches are drawn from (default: all of ``x``).
        on_step: called with ``(step, loss)`` after every step (``step`` from 0).
        callbacks: told before, after every step and after training; a callback's
            ``after_step`` returning True stops training.

    Raises:
        FinetuneDivergedError: as soon as the loss is NaN or infinite.
        DataError: ``pool`` is empty.
    """
    if settings.steps <= 0:
        return TrainResult(0, float("nan"))
    if pool is not None and len(pool) == 0:
        raise DataError("train() was given an empty pool of sample indices to draw from")
    source = as_source(x, y)
    device = _device_of(model)
    loss_fn = loss if loss is not None else CrossEntropy()
    generator = torch.Generator().manual_seed(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters)
    optimizer, scheduler = _optimizer(params, settings)
    batches = _batches(source, pool, settings.batch_size, generator, settings.steps)
    loss_value, steps_run, stop = float("nan"), 0, False
    for callback in callbacks:
        callback.before_training(model, settings)
    model.train()
    try:
        with loss_fn.active():
            while steps_run < settings.steps and not stop:
                idx, inputs, labels = next(batches)
                batch = augment(inputs, settings.augmentation, generator).to(device)
                with _autocast(settings.precision, device):
                    value = loss_fn(model, batch, labels.to(device), idx)
                loss_value = float(value.detach())
                _check_finite(loss_value, steps_run, settings, loss_fn)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                scheduler.step()
                steps_run += 1
                if on_step is not None:
                    on_step(steps_run - 1, loss_value)
                # every callback sees every step, even when an earlier one asks to stop
                stop = any([c.after_step(model, steps_run - 1, loss_value) for c in callbacks])
    finally:
        batches.close()  # stops a streamed source's workers when training stops early
        model.eval()
    for callback in callbacks:
        callback.after_training(model, steps_run)
    return TrainResult(steps_run, loss_value, stopped_early=steps_run < settings.steps)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor | ImageSource,
                      y: torch.Tensor | None = None, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on an :class:`~autocompress.data.ImageSource` ``x`` (then
    ``y`` is ``None``) or on tensors (x, y), in [0, 1]."""
    source = as_source(x, y)
    model.eval()
    correct = 0
    device = _device_of(model)
    for inputs, labels in source.batches(batch_size):
        correct += int((model(inputs.to(device)).argmax(dim=1).cpu() == labels).sum())
    return correct / max(len(source), 1)
