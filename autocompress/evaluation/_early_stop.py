"""Early stopping on a holdout carved from the training data, as a :func:`train` callback.

The validation split stays untouched for the final measurement: the holdout is a share of
the *training* data, set aside with :func:`split_holdout` and excluded from the batches by
passing the rest as ``train(..., pool=...)``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from autocompress.evaluation._train import TrainCallback, evaluate_accuracy
from autocompress.exceptions import ModelError
from autocompress.settings import EarlyStopping, TrainSettings

__all__ = ["EarlyStopper", "split_holdout"]

_logger = logging.getLogger(__name__)


def split_holdout(n: int, settings: EarlyStopping, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(holdout, rest)``: indices of ``n`` training samples, the holdout being the first
    ``settings.holdout_size(n)`` of a permutation drawn by its own generator seeded by
    ``seed`` (so the batches drawn from the rest do not depend on it).

    Raises:
        ModelError: ``n`` is too small to set the holdout aside and keep samples to train on.
    """
    size = settings.holdout_size(n)
    if size >= n:
        raise ModelError(f"{n} training samples are too few to set {size} aside for early "
                         "stopping; pass early_stopping=None")
    split = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return split[:size], split[size:]


class EarlyStopper(TrainCallback):
    """Checks the accuracy on a holdout every ``eval_every`` steps and after the last one,
    keeps a copy of the best weights, stops training after ``patience`` checks without an
    improvement of more than ``min_delta``, and restores the best weights at the end.

    After :func:`train` returns, :attr:`best_accuracy` and :attr:`best_step` (steps run when
    the kept weights were copied) describe the weights the model was left with.
    """

    def __init__(self, settings: EarlyStopping, x_holdout: torch.Tensor,
                 y_holdout: torch.Tensor) -> None:
        self.settings = settings
        self.holdout = (x_holdout, y_holdout)
        self.best_accuracy: float | None = None
        self.best_step: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._misses = 0
        self._total_steps = 0

    def before_training(self, model: nn.Module, settings: TrainSettings) -> None:
        self.best_accuracy, self.best_step, self._best_state = None, None, None
        self._misses = 0
        self._total_steps = settings.steps

    def after_step(self, model: nn.Module, step: int, loss: float) -> bool:
        done, total, stopper = step + 1, self._total_steps, self.settings
        if done % stopper.eval_every and done != total:
            return False
        accuracy = evaluate_accuracy(model, *self.holdout)
        model.train()
        if self.best_accuracy is None or accuracy > self.best_accuracy + stopper.min_delta:
            self.best_accuracy, self.best_step = accuracy, done
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self._misses = 0
        else:
            self._misses += 1
        _logger.debug("step %d: holdout accuracy %.4f (best %.4f at %d)", done, accuracy,
                      self.best_accuracy, self.best_step)
        if self._misses >= stopper.patience and done < total:
            _logger.info("stopped early at step %d/%d: holdout accuracy %.4f, best %.4f at "
                         "step %d", done, total, accuracy, self.best_accuracy, self.best_step)
            return True
        return False

    def after_training(self, model: nn.Module, steps: int) -> None:
        if self._best_state is not None:
            model.load_state_dict(self._best_state)
