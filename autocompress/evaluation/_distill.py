"""Knowledge distillation: train a student from a teacher's outputs (and features).

The loss of one mini-batch is::

    alpha * CE(student, labels) + (1 - alpha) * KD(student, teacher) + hint_weight * hint

with KD the Hinton loss (:func:`kd_kl_loss`) or the squared error between the softened
outputs (:func:`kd_mse_loss`), and ``hint`` the FitNets loss (:func:`hint_loss`) between the
last feature maps of both networks, through a 1x1 convolution (the *regressor*) trained with
the student and discarded afterwards.

The optimiser and schedule are :func:`autocompress.evaluation.train`'s (SGD with Nesterov
momentum, warm-up then cosine decay). Early stopping watches the accuracy on a holdout carved
from the *training* data (the validation split stays untouched for the final measurement)
and restores the best weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.evaluation._train import TrainSettings, _lr_factor, evaluate_accuracy
from autocompress.exceptions import FinetuneDivergedError, ModelError, SearchSpaceError

__all__ = ["DISTILL_LOSSES", "DistillLoss", "DistillResult", "DistillSettings",
           "EarlyStopping", "FeatureTap", "distill", "find_feature_layer", "hint_loss",
           "kd_kl_loss", "kd_mse_loss", "teacher_logits_for"]

_logger = logging.getLogger(__name__)

DistillLoss = Literal["kl", "mse"]
#: The distillation losses :class:`DistillSettings` accepts.
DISTILL_LOSSES: tuple[str, ...] = ("kl", "mse")
#: Largest accepted temperature and hint weight.
MAX_TEMPERATURE = 20.0
MAX_HINT_WEIGHT = 100.0
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


# --- settings ------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SearchSpaceError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the holdout accuracy has not improved for ``patience`` checks.

    Attributes:
        eval_every: steps between two holdout checks (the last step is always checked).
        patience: checks without an improvement of more than ``min_delta`` before stopping.
        holdout_fraction: share of the training data set aside for the checks, in (0, 0.5].
        max_holdout: at most this many samples are set aside.
        min_delta: an accuracy gain of at most this much does not count as an improvement.
    """

    eval_every: int = 50
    patience: int = 3
    holdout_fraction: float = 0.1
    max_holdout: int = 1000
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        for name in ("eval_every", "patience", "max_holdout"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 1,
                   f"early stopping {name} must be a positive integer, not {value!r}")
        _check(_is_number(self.holdout_fraction) and 0 < self.holdout_fraction <= 0.5,
               f"early stopping holdout_fraction must be in (0, 0.5], not "
               f"{self.holdout_fraction!r}")
        _check(_is_number(self.min_delta) and 0 <= self.min_delta < 1,
               f"early stopping min_delta must be in [0, 1), not {self.min_delta!r}")

    def holdout_size(self, n: int) -> int:
        """How many of ``n`` training samples are set aside."""
        return min(self.max_holdout, max(1, round(self.holdout_fraction * n)))


@dataclass(frozen=True)
class DistillSettings:
    """How a student learns from its teacher.

    Attributes:
        loss: ``"kl"`` (Hinton et al., 2015: KL divergence between the softened outputs,
            scaled by T^2) or ``"mse"`` (squared error between the softened outputs).
        temperature: softmax temperature T of both networks' outputs, in (0, 20].
        alpha: weight of the cross-entropy with the true labels, in [0, 1]; the
            distillation term gets ``1 - alpha``.
        hint_weight: weight of the FitNets hint loss on the last feature maps, in [0, 100];
            0 turns hints off (and lets the teacher's outputs be computed once, not per
            batch).
        training: optimiser, schedule, step budget and seed, as for
            :func:`~autocompress.evaluation.train`.
        early_stopping: holdout checks, or ``None`` to train every step on all the data.
    """

    loss: DistillLoss = "kl"
    temperature: float = 4.0
    alpha: float = 0.5
    hint_weight: float = 0.0
    training: TrainSettings = field(default_factory=TrainSettings)
    early_stopping: EarlyStopping | None = field(default_factory=EarlyStopping)

    def __post_init__(self) -> None:
        _check(self.loss in DISTILL_LOSSES,
               f"distillation loss must be one of {', '.join(DISTILL_LOSSES)}, not "
               f"{self.loss!r}")
        _check(_is_number(self.temperature) and 0 < self.temperature <= MAX_TEMPERATURE,
               f"distillation temperature must be in (0, {MAX_TEMPERATURE:g}], not "
               f"{self.temperature!r}")
        _check(_is_number(self.alpha) and 0 <= self.alpha <= 1,
               f"distillation alpha must be in [0, 1], not {self.alpha!r}")
        _check(_is_number(self.hint_weight) and 0 <= self.hint_weight <= MAX_HINT_WEIGHT,
               f"distillation hint_weight must be in [0, {MAX_HINT_WEIGHT:g}], not "
               f"{self.hint_weight!r}")
        _check(isinstance(self.training, TrainSettings),
               f"distillation training must be a TrainSettings, not {self.training!r}")
        t = self.training
        _check(_is_int(t.steps) and t.steps >= 0 and _is_int(t.batch_size) and t.batch_size >= 1
               and _is_int(t.warmup_steps) and t.warmup_steps >= 0,
               f"distillation training needs integer steps >= 0, batch_size >= 1 and "
               f"warmup_steps >= 0, not {t}")
        _check(_is_number(t.lr) and t.lr > 0 and _is_number(t.momentum) and t.momentum >= 0
               and _is_number(t.weight_decay) and t.weight_decay >= 0,
               f"distillation training needs lr > 0, momentum >= 0 and weight_decay >= 0, "
               f"not {t}")
        _check(self.early_stopping is None or isinstance(self.early_stopping, EarlyStopping),
               f"early_stopping must be an EarlyStopping or None, not {self.early_stopping!r}")

    @property
    def needs_teacher_per_batch(self) -> bool:
        """With hints the teacher's features are needed for every batch; without, its
        outputs can be computed once (:func:`teacher_logits_for`) and reused."""
        return self.hint_weight > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss, "temperature": self.temperature, "alpha": self.alpha,
            "hint_weight": self.hint_weight, "training": asdict(self.training),
            "early_stopping": (asdict(self.early_stopping)
                               if self.early_stopping is not None else None),
        }

    @classmethod
    def from_dict(cls, data: Any) -> DistillSettings:
        """Rebuild settings written by :meth:`to_dict` (missing keys take the defaults).

        Raises:
            SearchSpaceError: not a mapping, unknown keys, or invalid values.
        """
        allowed = {"loss", "temperature", "alpha", "hint_weight", "training", "early_stopping"}
        _check(isinstance(data, dict), f"distillation settings must be a mapping, not {data!r}")
        unknown = sorted(set(map(str, data)) - allowed)
        _check(not unknown, f"distillation settings: unknown key(s) {unknown}; allowed: "
                            f"{sorted(allowed)}")
        values = dict(data)
        try:
            if isinstance(values.get("training"), dict):
                values["training"] = TrainSettings(**values["training"])
            if isinstance(values.get("early_stopping"), dict):
                values["early_stopping"] = EarlyStopping(**values["early_stopping"])
        except TypeError as exc:
            raise SearchSpaceError(f"distillation settings: {exc}") from exc
        return cls(**values)


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
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1),
                    F.log_softmax(teacher_logits.detach() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def kd_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Squared error between the softened outputs ``softmax(s/T)`` and ``softmax(t/T)``:
    summed over classes, averaged over the batch, and scaled by T^2 as :func:`kd_kl_loss`
    is (the mean over classes would shrink the term C-fold against the cross-entropy)."""
    t = temperature
    diff = F.softmax(student_logits / t, dim=1) - F.softmax(teacher_logits.detach() / t, dim=1)
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


# --- features ------------------------------------------------------------------------------


def find_feature_layer(model: nn.Module, example_input: torch.Tensor) -> str:
    """Name of the module whose output is the model's last feature map before global
    pooling, found by running ``example_input`` through ``model`` with forward hooks.

    When the network pools with a module (``nn.AdaptiveAvgPool2d`` and the like, returning a
    1x1 map with no spatial map computed after it), the feature map is that module's input;
    otherwise (pooling by ``x.mean((2, 3))``) it is the last 4-D map any module returns.
    Where nested modules return the same map, the outermost is named (``layer3`` rather than
    ``layer3.2.relu``). Squeeze-and-excitation pools inside the network are followed by
    larger maps and so are not taken for the global pool.

    Raises:
        ModelError: the model produces no 4-D map (not a convolutional network).
    """
    events: list[_Event] = []  # in the order modules finish: children before parents

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                pixels = output.shape[2] * output.shape[3]
                pool_input = (inputs[0] if isinstance(module, _POOLS) and pixels == 1
                              and inputs and isinstance(inputs[0], torch.Tensor) else None)
                events.append(_Event(name, output, pixels, pool_input))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad(), _eval_mode(model):
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    if not events:
        raise ModelError(
            f"{type(model).__name__} returns no 4-D feature map before its global pooling, so "
            "it cannot take part in a hint loss; set hint_weight to 0"
        )
    for index in range(len(events) - 1, -1, -1):
        pool = events[index]
        if pool.pool_input is None or any(
                later.pixels > 1 and not pool.name.startswith(later.name + ".")
                for later in events[index + 1:]):
            continue  # not a pool, or a squeeze-and-excitation pool inside the network
        before = events[:index]
        same = [e.name for e in before if e.output is pool.pool_input]
        if same:
            return same[-1]
        if before:
            return before[-1].name
    return events[-1].name


@dataclass(frozen=True)
class _Event:
    name: str
    output: torch.Tensor
    pixels: int
    pool_input: torch.Tensor | None  # set for pooling modules returning a 1x1 map


class FeatureTap:
    """Keeps the latest output of one module (by name) while in a ``with`` block."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self.module = model.get_submodule(name)
        self.name = name
        self.value: torch.Tensor | None = None
        self._handle: Any = None

    def _record(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.value = output

    def __enter__(self) -> FeatureTap:
        self._handle = self.module.register_forward_hook(self._record)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._handle.remove()
        self.value = None

    def take(self) -> torch.Tensor:
        """The captured map (and forget it)."""
        if self.value is None:
            raise ModelError(f"module {self.name!r} did not run in the last forward pass")
        value, self.value = self.value, None
        return value


# --- teacher -------------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def teacher_logits_for(teacher: nn.Module, x: torch.Tensor, batch_size: int = 500
                       ) -> torch.Tensor:
    """The teacher's outputs (eval mode, no gradients) for every sample of ``x``, to compute
    once and reuse across students trained without hints."""
    with _eval_mode(teacher):
        return torch.cat([teacher(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


# --- training ------------------------------------------------------------------------------


@dataclass
class _Hints:
    student: FeatureTap
    teacher: FeatureTap
    regressor: nn.Conv2d


def _make_hints(student: nn.Module, teacher: nn.Module, probe: torch.Tensor,
                seed: int) -> _Hints:
    student_name = find_feature_layer(student, probe)
    teacher_name = find_feature_layer(teacher, probe)
    student_tap, teacher_tap = FeatureTap(student, student_name), FeatureTap(teacher, teacher_name)
    with torch.no_grad(), _eval_mode(student), _eval_mode(teacher), student_tap, teacher_tap:
        student(probe)
        teacher(probe)
        s_channels, t_channels = student_tap.take().shape[1], teacher_tap.take().shape[1]
    with torch.random.fork_rng(devices=[]):  # seeded init without touching global state
        torch.manual_seed(seed)
        regressor = nn.Conv2d(s_channels, t_channels, 1)
    _logger.debug("hints: student %s (%d ch) -> teacher %s (%d ch)", student_name, s_channels,
                  teacher_name, t_channels)
    return _Hints(student_tap, teacher_tap, regressor)


def _kd_term(settings: DistillSettings) -> Callable[[torch.Tensor, torch.Tensor, float],
                                                   torch.Tensor]:
    return kd_kl_loss if settings.loss == "kl" else kd_mse_loss


def distill(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: DistillSettings,
    *,
    teacher_logits: torch.Tensor | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> DistillResult:
    """Train ``student`` in place from ``teacher`` on the training data (x, y).

    Args:
        student: the network to train (left in eval mode, with the best weights when early
            stopping is on).
        teacher: the trained network to learn from; run in eval mode without gradients and
            left unchanged.
        x, y: the training data; the early-stopping holdout is carved from it.
        settings: losses, schedule, budget and early stopping.
        teacher_logits: the teacher's outputs for every sample of ``x``
            (:func:`teacher_logits_for`), to share across students; computed here when
            needed and not given. Unused with hints (the teacher runs per batch).
        on_step: called with ``(step, loss)`` after every step.

    Raises:
        FinetuneDivergedError: the loss became NaN or infinite.
        ModelError: student and teacher disagree on the number of classes, or
            ``teacher_logits`` does not match ``x``.
    """
    train_cfg = settings.training
    n = len(x)
    if train_cfg.steps <= 0:
        return DistillResult(0, False, None, None, float("nan"))
    probe = x[:2]
    with torch.no_grad(), _eval_mode(student), _eval_mode(teacher):
        student_classes, teacher_classes = student(probe).shape[1], teacher(probe).shape[1]
    if student_classes != teacher_classes:
        raise ModelError(
            f"the student gives {student_classes} outputs but the teacher {teacher_classes}; "
            "build the student with the teacher's number of classes"
        )
    use_kd = settings.alpha < 1.0
    hints = (_make_hints(student, teacher, probe, train_cfg.seed)
             if settings.hint_weight > 0 else None)
    if teacher_logits is not None and teacher_logits.shape != (n, teacher_classes):
        raise ModelError(
            f"teacher_logits has shape {tuple(teacher_logits.shape)}, expected "
            f"{(n, teacher_classes)}: compute it with teacher_logits_for(teacher, x)"
        )
    if use_kd and hints is None and teacher_logits is None:
        teacher_logits = teacher_logits_for(teacher, x)

    # The holdout is drawn with its own generator, so that without early stopping the
    # batches are exactly those train() draws for the same seed.
    pool = torch.arange(n)
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None
    stopper = settings.early_stopping
    if stopper is not None:
        size = stopper.holdout_size(n)
        if size >= n:
            raise ModelError(f"{n} training samples are too few to set {size} aside for early "
                             "stopping; pass early_stopping=None")
        split = torch.randperm(n, generator=torch.Generator().manual_seed(train_cfg.seed + 1))
        holdout = (x[split[:size]], y[split[:size]])
        pool = split[size:]

    generator = torch.Generator().manual_seed(train_cfg.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    if hints is not None:
        params += list(hints.regressor.parameters())
    optimizer = torch.optim.SGD(params, lr=train_cfg.lr, momentum=train_cfg.momentum,
                                nesterov=train_cfg.momentum > 0,
                                weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, train_cfg))
    kd_term = _kd_term(settings)

    best_accuracy: float | None = None
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    checks_without_gain = 0
    stopped_early = False
    loss_value = float("nan")
    steps_run = 0
    m = len(pool)
    order = torch.randperm(m, generator=generator)
    cursor = 0
    teacher_was_training = teacher.training
    teacher.eval()
    student.train()
    try:
        with _taps(hints):
            for step in range(train_cfg.steps):
                if cursor + train_cfg.batch_size > m:
                    order = torch.randperm(m, generator=generator)
                    cursor = 0
                idx = pool[order[cursor:cursor + train_cfg.batch_size]]
                cursor += train_cfg.batch_size
                xb, yb = x[idx], y[idx]
                logits = student(xb)
                loss = (F.cross_entropy(logits, yb) * settings.alpha
                        if settings.alpha > 0 else logits.new_zeros(()))
                if hints is not None:
                    with torch.no_grad():
                        batch_teacher = teacher(xb)
                    loss = loss + settings.hint_weight * hint_loss(
                        hints.student.take(), hints.teacher.take(), hints.regressor)
                elif use_kd:
                    assert teacher_logits is not None
                    batch_teacher = teacher_logits[idx]
                if use_kd:
                    loss = loss + (1.0 - settings.alpha) * kd_term(
                        logits, batch_teacher, settings.temperature)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise FinetuneDivergedError(
                        f"distillation diverged at step {step + 1}/{train_cfg.steps} (loss "
                        f"{loss_value}); lower the learning rate (now {train_cfg.lr:g})"
                        + (f" or the hint weight (now {settings.hint_weight:g})"
                           if hints is not None else "")
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                steps_run = step + 1
                if on_step is not None:
                    on_step(step, loss_value)
                if stopper is None or holdout is None:
                    continue
                if steps_run % stopper.eval_every and steps_run != train_cfg.steps:
                    continue
                accuracy = evaluate_accuracy(student, *holdout)
                student.train()
                if best_accuracy is None or accuracy > best_accuracy + stopper.min_delta:
                    best_accuracy, best_step = accuracy, steps_run
                    best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
                    checks_without_gain = 0
                else:
                    checks_without_gain += 1
                _logger.debug("distill step %d: holdout accuracy %.4f (best %.4f at %d)",
                              steps_run, accuracy, best_accuracy, best_step)
                if checks_without_gain >= stopper.patience and steps_run < train_cfg.steps:
                    stopped_early = True
                    _logger.info("distillation stopped early at step %d/%d: holdout accuracy "
                                 "%.4f, best %.4f at step %d", steps_run, train_cfg.steps,
                                 accuracy, best_accuracy, best_step)
                    break
    finally:
        student.eval()
        teacher.train(teacher_was_training)
    if best_state is not None:
        student.load_state_dict(best_state)
    return DistillResult(steps_run, stopped_early, best_accuracy, best_step, loss_value)


@contextmanager
def _taps(hints: _Hints | None) -> Iterator[None]:
    if hints is None:
        yield
        return
    with hints.student, hints.teacher:
        yield
