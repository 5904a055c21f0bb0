"""Knowledge distillation: train a student from a teacher's outputs (and features).

The loss of one mini-batch (:class:`DistillationLoss`) is::

    alpha * CE(student, labels) + (1 - alpha) * KD(student, teacher) + hint_weight * hint

with KD the Hinton loss (:func:`kd_kl_loss`) or the squared error between the softened
outputs (:func:`kd_mse_loss`), and ``hint`` the FitNets loss (:func:`hint_loss`) between the
last feature maps of both networks, through a 1x1 convolution (the *regressor*, see
:class:`Hints`) trained with the student and discarded afterwards.

:func:`distill` plugs that loss into :func:`autocompress.evaluation.train` (SGD with Nesterov
momentum, warm-up then cosine decay, the same batches and augmentation), with the regressor
as extra parameters and, when asked, an :class:`~autocompress.evaluation.EarlyStopper`
watching the accuracy on a holdout carved from the *training* data (the validation split
stays untouched for the final measurement), which restores the best weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data._source import ImageSource, as_source
from autocompress.evaluation._early_stop import EarlyStopper, split_holdout
from autocompress.evaluation._features import FeatureTap, eval_mode, find_feature_layer
from autocompress.evaluation._train import BatchLoss, TrainCallback, train
from autocompress.exceptions import ModelError
from autocompress.settings import DistillSettings

__all__ = ["TEACHER_LOGITS_MAX_BYTES", "DistillResult", "DistillationLoss", "Hints",
           "caches_teacher_logits", "distill", "hint_loss", "kd_kl_loss", "kd_mse_loss",
           "teacher_logits_for"]

_logger = logging.getLogger(__name__)

#: The teacher's outputs are computed once for every training sample only when the samples
#: are in memory and the outputs take at most this many bytes; otherwise the teacher runs on
#: every batch (a streamed data set would be decoded whole for one finetune).
TEACHER_LOGITS_MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class DistillResult:
    """What :func:`distill` did.

    Attributes:
        steps: optimiser steps run.
        stopped_early: whether the holdout accuracy stopped improving before the budget.
        best_holdout_accuracy: accuracy of the returned weights on the holdout (``None``
            without early stopping).
        best_step: the step whose weights were kept (``None`` without early stopping).
        final_loss: the loss of the last step run.
    """

    steps: int
    stopped_early: bool
    best_holdout_accuracy: float | None
    best_step: int | None
    final_loss: float


# --- losses --------------------------------------------------------------------------------


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """Hinton's distillation loss: ``KL(softmax(t/T) || softmax(s/T)) * T^2``, averaged over
    the batch. The T^2 factor keeps the gradients' size independent of T."""
    t = temperature  # softmax in fp32: autocast would run it in bfloat16 (bf16 training)
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=1),
                    F.log_softmax(teacher_logits.detach().float() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def kd_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Squared error between the softened outputs ``softmax(s/T)`` and ``softmax(t/T)``:
    summed over classes, averaged over the batch, and scaled by T^2 as :func:`kd_kl_loss`
    is (the mean over classes would shrink the term C-fold against the cross-entropy)."""
    t = temperature
    diff = (F.softmax(student_logits.float() / t, dim=1)
            - F.softmax(teacher_logits.detach().float() / t, dim=1))
    return diff.pow(2).sum(dim=1).mean() * (t * t)


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor,
              regressor: nn.Module) -> torch.Tensor:
    """FitNets hint loss: mean squared error between ``regressor(student_feat)`` and the
    teacher's feature map.

    ``regressor`` (usually a 1x1 convolution) maps the student's channels to the teacher's.
    Maps of different spatial size are compared after adaptive average pooling of the larger
    one to the smaller size (pooling commutes with a 1x1 convolution, so the student's map
    is pooled first).
    """
    if student_feat.dim() != 4 or teacher_feat.dim() != 4:
        raise ModelError(
            f"hint loss needs N x C x H x W feature maps, got {tuple(student_feat.shape)} "
            f"(student) and {tuple(teacher_feat.shape)} (teacher)"
        )
    size = (min(student_feat.shape[2], teacher_feat.shape[2]),
            min(student_feat.shape[3], teacher_feat.shape[3]))
    if tuple(student_feat.shape[2:]) != size:
        student_feat = F.adaptive_avg_pool2d(student_feat, size)
    target = teacher_feat.detach()
    if tuple(target.shape[2:]) != size:
        target = F.adaptive_avg_pool2d(target, size)
    return F.mse_loss(regressor(student_feat), target)


# --- teacher -------------------------------------------------------------------------------


def caches_teacher_logits(source: torch.Tensor | ImageSource, num_classes: int) -> bool:
    """Whether the teacher's outputs for every sample of ``source`` are worth computing once:
    the samples are in memory and the outputs fit :data:`TEACHER_LOGITS_MAX_BYTES`."""
    in_memory = not isinstance(source, ImageSource) or source.in_memory
    return in_memory and len(source) * num_classes * 4 <= TEACHER_LOGITS_MAX_BYTES


@torch.no_grad()
def teacher_logits_for(teacher: nn.Module, x: torch.Tensor | ImageSource,
                       batch_size: int = 500) -> torch.Tensor:
    """The teacher's outputs (eval mode, no gradients) for every sample of ``x`` (inputs, or
    an :class:`~autocompress.data.ImageSource`), to compute once and reuse across students
    trained without hints or augmentation (these are the outputs for the un-augmented
    images)."""
    with eval_mode(teacher):
        if isinstance(x, ImageSource):
            return torch.cat([teacher(inputs) for inputs, _ in x.batches(batch_size)])
        return torch.cat([teacher(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@dataclass
class Hints:
    """FitNets hints: the last feature maps of student and teacher, captured by
    :class:`FeatureTap`\\ s while in a ``with`` block, and the 1x1 convolution mapping the
    student's channels to the teacher's."""

    student: FeatureTap
    teacher: FeatureTap
    regressor: nn.Conv2d

    @classmethod
    def between(cls, student: nn.Module, teacher: nn.Module, probe: torch.Tensor,
                seed: int) -> Hints:
        """Hints on the layers :func:`find_feature_layer` finds with the input ``probe``,
        with a regressor initialised from ``seed`` (global random state untouched)."""
        student_name = find_feature_layer(student, probe)
        teacher_name = find_feature_layer(teacher, probe)
        student_tap = FeatureTap(student, student_name)
        teacher_tap = FeatureTap(teacher, teacher_name)
        with torch.no_grad(), eval_mode(student), eval_mode(teacher), student_tap, teacher_tap:
            student(probe)
            teacher(probe)
            s_channels, t_channels = student_tap.take().shape[1], teacher_tap.take().shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            regressor = nn.Conv2d(s_channels, t_channels, 1)
        _logger.debug("hints: student %s (%d ch) -> teacher %s (%d ch)", student_name,
                      s_channels, teacher_name, t_channels)
        return cls(student_tap, teacher_tap, regressor)

    def loss(self) -> torch.Tensor:
        """:func:`hint_loss` between the maps captured by the last forward passes."""
        return hint_loss(self.student.take(), self.teacher.take(), self.regressor)


# --- the loss plug-in ----------------------------------------------------------------------


class DistillationLoss(BatchLoss):
    """``alpha * CE + (1 - alpha) * KD + hint_weight * hint`` of one batch, for
    :func:`~autocompress.evaluation.train`.

    The teacher runs in eval mode without gradients on the batch the student sees (after
    augmentation), unless ``teacher_logits`` (its outputs for every training sample,
    :func:`teacher_logits_for`) are given and usable: they are used, looked up by the
    batch's sample indices, only when ``settings.needs_teacher_per_batch`` is false (no
    hints, no augmentation: cached outputs are of the un-augmented images). Pass
    :meth:`parameters` (the hint regressor) to ``train(extra_parameters=...)``.
    """

    name = "distillation"

    def __init__(self, teacher: nn.Module, settings: DistillSettings, *,
                 teacher_logits: torch.Tensor | None = None, hints: Hints | None = None) -> None:
        if (hints is None) != (settings.hint_weight == 0):
            raise ModelError("DistillationLoss needs Hints exactly when hint_weight > 0 "
                             f"(hint_weight is {settings.hint_weight:g})")
        self.teacher = teacher
        self.settings = settings
        self.hints = hints
        self.teacher_logits = None if settings.needs_teacher_per_batch else teacher_logits
        self._kd = kd_kl_loss if settings.loss == "kl" else kd_mse_loss

    def parameters(self) -> list[nn.Parameter]:
        """Trained with the student: the hint regressor's, if any."""
        return list(self.hints.regressor.parameters()) if self.hints is not None else []

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 idx: torch.Tensor) -> torch.Tensor:
        s = self.settings
        logits = model(x)
        loss = F.cross_entropy(logits, y) * s.alpha if s.alpha > 0 else logits.new_zeros(())
        teacher_out: torch.Tensor | None = None
        if self.hints is not None:
            with torch.no_grad():
                teacher_out = self.teacher(x)
            loss = loss + s.hint_weight * self.hints.loss()
        if s.alpha < 1.0:
            if teacher_out is None and self.teacher_logits is not None:
                teacher_out = self.teacher_logits[idx]
            elif teacher_out is None:
                with torch.no_grad():
                    teacher_out = self.teacher(x)
            loss = loss + (1.0 - s.alpha) * self._kd(logits, teacher_out, s.temperature)
        return loss

    @contextmanager
    def active(self) -> Iterator[None]:
        """The teacher in eval mode and the hints' taps recording."""
        with ExitStack() as stack:
            stack.enter_context(eval_mode(self.teacher))
            if self.hints is not None:
                stack.enter_context(self.hints.student)
                stack.enter_context(self.hints.teacher)
            yield

    def divergence_advice(self) -> str:
        return (f" or the hint weight (now {self.settings.hint_weight:g})"
                if self.hints is not None else "")


# --- distill -------------------------------------------------------------------------------


def _num_classes(student: nn.Module, teacher: nn.Module, probe: torch.Tensor) -> int:
    with torch.no_grad(), eval_mode(student), eval_mode(teacher):
        student_classes, teacher_classes = student(probe).shape[1], teacher(probe).shape[1]
    if student_classes != teacher_classes:
        raise ModelError(
            f"the student gives {student_classes} outputs but the teacher {teacher_classes}; "
            "build the student with the teacher's number of classes"
        )
    return int(teacher_classes)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor | ImageSource,
    y: torch.Tensor | None,
    settings: DistillSettings,
    *,
    teacher_logits: torch.Tensor | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> DistillResult:
    """Train ``student`` in place from ``teacher`` on the training data (x, y).

    Without early stopping the batches (and their augmentation) are exactly those
    :func:`~autocompress.evaluation.train` draws for the same ``settings.training``.

    Args:
        student: the network to train (left in eval mode, with the best weights when early
            stopping is on).
        teacher: the trained network to learn from; run in eval mode without gradients and
            left unchanged.
        x, y: the training data (an :class:`~autocompress.data.ImageSource` with ``y``
            ``None``, or tensors); the early-stopping holdout is carved from it.
        settings: losses, schedule, budget, augmentation and early stopping.
        teacher_logits: the teacher's outputs for every sample of ``x``
            (:func:`teacher_logits_for`), to share across students; computed here when
            needed and not given (and :func:`caches_teacher_logits` allows it; else the
            teacher runs on every batch). Unused when ``settings.needs_teacher_per_batch``
            (hints or augmentation: the teacher runs on every batch).
        on_step: called with ``(step, loss)`` after every step.

    Raises:
        FinetuneDivergedError: the loss became NaN or infinite.
        ModelError: student and teacher disagree on the number of classes,
            ``teacher_logits`` does not match ``x``, or ``x`` is too small for the holdout.
    """
    training = settings.training
    if training.steps <= 0:
        return DistillResult(0, False, None, None, float("nan"))
    source = as_source(x, y)
    n, probe = len(source), source.head(2)
    classes = _num_classes(student, teacher, probe)
    if teacher_logits is not None and teacher_logits.shape != (n, classes):
        raise ModelError(
            f"teacher_logits has shape {tuple(teacher_logits.shape)}, expected "
            f"{(n, classes)}: compute it with teacher_logits_for(teacher, x)"
        )
    hints = (Hints.between(student, teacher, probe, training.seed)
             if settings.hint_weight > 0 else None)
    if (settings.alpha < 1.0 and not settings.needs_teacher_per_batch and teacher_logits is None
            and caches_teacher_logits(source, classes)):
        teacher_logits = teacher_logits_for(teacher, source)
    loss = DistillationLoss(teacher, settings, teacher_logits=teacher_logits, hints=hints)

    pool: torch.Tensor | None = None
    callbacks: list[TrainCallback] = []
    stopper: EarlyStopper | None = None
    if settings.early_stopping is not None:
        holdout, pool = split_holdout(n, settings.early_stopping, training.seed + 1)
        stopper = EarlyStopper(settings.early_stopping, *source.fetch(holdout))
        callbacks.append(stopper)
    result = train(student, source, None, training, loss=loss,
                   extra_parameters=loss.parameters(),
                   pool=pool, on_step=on_step, callbacks=callbacks)
    return DistillResult(
        steps=result.steps, stopped_early=result.stopped_early,
        best_holdout_accuracy=stopper.best_accuracy if stopper is not None else None,
        best_step=stopper.best_step if stopper is not None else None,
        final_loss=result.final_loss)
