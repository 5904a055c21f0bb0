"""How a network is trained, augmented, distilled and stopped early: plain frozen records.

These settings are pure data with no torch import, so that the search space (which samples
them) and the command line can use them without the training code; the loops that read them
live in :mod:`autocompress.evaluation` (which re-exports every name here) and
:mod:`autocompress.data` (augmentation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from autocompress.exceptions import DataError, SearchSpaceError

__all__ = ["DISTILL_LOSSES", "MAX_HINT_WEIGHT", "MAX_TEMPERATURE", "NO_AUGMENTATION",
           "STANDARD_AUGMENTATION", "TRAIN_PRECISIONS", "Augmentation", "DistillLoss",
           "DistillSettings", "EarlyStopping", "TrainSettings"]

DistillLoss = Literal["kl", "mse"]
#: The distillation losses :class:`DistillSettings` accepts.
DISTILL_LOSSES: tuple[str, ...] = ("kl", "mse")
#: Largest accepted temperature and hint weight.
MAX_TEMPERATURE = 20.0
MAX_HINT_WEIGHT = 100.0
#: The arithmetic :class:`TrainSettings` may train in: fp32, or the forward passes under
#: bfloat16 autocast (weights, gradients and optimiser state stay fp32).
TRAIN_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SearchSpaceError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


# --- augmentation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Random crop with ``crop_padding`` pixels of padding (0: no crop), horizontal flip,
    and cutout: a ``cutout`` x ``cutout`` square erased at a random place (0: none).

    Cutout (DeVries and Taylor, 2017) erases a square centred anywhere in the image, so that
    part of it may fall outside; erased pixels take the value zero of the normalized data
    (the training split's mean colour). The standard crop and flip is the default for image
    folders; cutout is for training a baseline long enough to fit its training images.

    Applied to training batches by :func:`autocompress.data._augment.augment`.
    """

    crop_padding: int = 0
    horizontal_flip: bool = False
    cutout: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.crop_padding) or self.crop_padding < 0:
            raise DataError(
                f"augmentation crop_padding must be a non-negative integer, "
                f"not {self.crop_padding!r}"
            )
        if not isinstance(self.horizontal_flip, bool):
            raise DataError(
                f"augmentation horizontal_flip must be true or false, "
                f"not {self.horizontal_flip!r}"
            )
        if not _is_int(self.cutout) or self.cutout < 0:
            raise DataError(
                f"augmentation cutout must be a non-negative integer (the side of the erased "
                f"square in pixels), not {self.cutout!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.horizontal_flip or self.cutout > 0

    def check_fits(self, height: int, width: int) -> None:
        """Refuse a cutout square larger than ``height`` x ``width`` images.

        Raises:
            DataError: the square is larger than the images; the message says what fits.
        """
        if self.cutout > min(height, width):
            raise DataError(f"augmentation cutout={self.cutout} erases a square larger than "
                            f"the {height} x {width} images; use at most half their side "
                            f"(cutout={min(height, width) // 2})")

    def describe(self) -> str:
        parts = [f"crop(pad={self.crop_padding})"] if self.crop_padding else []
        parts += ["hflip"] if self.horizontal_flip else []
        parts += [f"cutout({self.cutout})"] if self.cutout else []
        return "+".join(parts) or "none"

    def spec(self) -> str:
        """The text :meth:`parse` reads back: ``none`` or e.g. ``crop=4,flip,cutout=16``."""
        parts = [f"crop={self.crop_padding}"] if self.crop_padding else []
        parts += ["flip"] if self.horizontal_flip else []
        parts += [f"cutout={self.cutout}"] if self.cutout else []
        return ",".join(parts) or "none"

    @classmethod
    def parse(cls, text: str) -> Augmentation:
        """``"none"``, ``"standard"`` (crop with 4 px padding and flip), or a list of
        ``crop=P``, ``flip`` and ``cutout=S`` such as ``"crop=4,flip,cutout=16"``.

        Raises:
            DataError: any other text; the message lists the valid forms.
        """
        value = text.strip().lower()
        if value == "none":
            return NO_AUGMENTATION
        if value == "standard":
            return STANDARD_AUGMENTATION
        padding, flip, cutout = 0, False, 0
        for part in filter(None, (p.strip() for p in value.split(","))):
            if part == "flip":
                flip = True
            elif part.startswith("crop=") and part.removeprefix("crop=").isdigit():
                padding = int(part.removeprefix("crop="))
            elif part.startswith("cutout=") and part.removeprefix("cutout=").isdigit():
                cutout = int(part.removeprefix("cutout="))
            else:
                raise DataError(
                    f"unknown augmentation {text!r}: use 'none', 'standard' (random crop with "
                    "4 px padding and horizontal flip) or a list such as 'crop=4,flip' or "
                    "'crop=4,flip,cutout=16'"
                )
        return cls(crop_padding=padding, horizontal_flip=flip, cutout=cutout)


NO_AUGMENTATION = Augmentation()
STANDARD_AUGMENTATION = Augmentation(crop_padding=4, horizontal_flip=True)


# --- training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """SGD with Nesterov momentum, linear warm-up then cosine decay to zero.

    Attributes:
        steps: optimiser steps (mini-batches); 0 trains nothing.
        batch_size: samples per mini-batch.
        lr: peak learning rate, reached after ``warmup_steps``.
        momentum: SGD momentum (Nesterov when above 0).
        weight_decay: L2 penalty of the optimiser.
        warmup_steps: steps of linear warm-up before the cosine decay.
        seed: seeds the batch order and the augmentation draws.
        augmentation: random crop and flip of every training batch.
        precision: ``fp32``, or ``bf16``: every forward pass (the losses' included) under
            bfloat16 autocast, while weights, gradients and the optimiser stay fp32. Up to
            about twice as fast for a full-width resnet20 on a CPU with AVX512_BF16, little
            for small pruned networks (``benchmarks/results/train_precision.md``); slower
            where the hardware has no bfloat16 arithmetic. Evaluation always runs in fp32.
    """

    steps: int = 200
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    seed: int = 0
    augmentation: Augmentation = NO_AUGMENTATION
    precision: str = "fp32"

    def __post_init__(self) -> None:
        _check(self.precision in TRAIN_PRECISIONS,
               f"training precision must be one of {', '.join(TRAIN_PRECISIONS)}, not "
               f"{self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the augmentation as a nested mapping). Without cutout the
        augmentation is written as it was before cutout existed, and fp32 training without a
        precision, so records, and the keys of baselines cached from them, stay what they
        were."""
        data = asdict(self)
        if not self.augmentation.cutout:
            del data["augmentation"]["cutout"]
        if self.precision == "fp32":
            del data["precision"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> TrainSettings:
        """Rebuild settings written by :meth:`to_dict`; missing keys (such as
        ``augmentation`` in files written before it existed) take the defaults.

        Raises:
            SearchSpaceError: not a mapping, unknown keys, or an invalid augmentation.
        """
        _check(isinstance(data, dict), f"training settings must be a mapping, not {data!r}")
        values = dict(data)
        try:
            if isinstance(values.get("augmentation"), dict):
                values["augmentation"] = Augmentation(**values["augmentation"])
            return cls(**values)
        except (TypeError, DataError) as exc:
            raise SearchSpaceError(f"training settings: {exc}") from exc


# --- early stopping ------------------------------------------------------------------------


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


# --- distillation --------------------------------------------------------------------------


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
            0 turns hints off.
        training: optimiser, schedule, step budget, seed and augmentation, as for
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
        _check(isinstance(t.augmentation, Augmentation),
               f"distillation training augmentation must be an Augmentation, not "
               f"{t.augmentation!r}")
        _check(self.early_stopping is None or isinstance(self.early_stopping, EarlyStopping),
               f"early_stopping must be an EarlyStopping or None, not {self.early_stopping!r}")

    @property
    def needs_teacher_per_batch(self) -> bool:
        """Whether the teacher must run on every batch, so that its outputs cannot be
        computed once and reused (:func:`~autocompress.evaluation.teacher_logits_for`).

        True with hints (the teacher's feature maps of each batch are needed) and with
        augmentation (the teacher must see the same randomly cropped and flipped images as
        the student; cached outputs are of the un-augmented images).
        """
        return self.hint_weight > 0 or self.training.augmentation.enabled

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss, "temperature": self.temperature, "alpha": self.alpha,
            "hint_weight": self.hint_weight, "training": self.training.to_dict(),
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
        if isinstance(values.get("training"), dict):
            values["training"] = TrainSettings.from_dict(values["training"])
        try:
            if isinstance(values.get("early_stopping"), dict):
                values["early_stopping"] = EarlyStopping(**values["early_stopping"])
            return cls(**values)
        except TypeError as exc:
            raise SearchSpaceError(f"distillation settings: {exc}") from exc
