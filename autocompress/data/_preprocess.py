"""Preprocessing as part of the model: what turns an image into the tensor a model expects.

In order: decode to RGB, resize (shorter side), center crop, scale to [0, 1] (pixel / 255),
then subtract a per-channel mean and divide by a per-channel standard deviation. The record
:class:`Preprocessing` holds the *resolved* values (the mean and std of ``dataset`` are
numbers once computed), so the same input can be prepared in the search, in ``pick``, in a
plain torchvision evaluation and by a deployment reading the ONNX model's metadata.

This module does not import torch: the search's settings and records use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from autocompress.exceptions import DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "METADATA_PREFIX", "NORMALIZE_NAMES", "DataRecord",
           "Preprocessing", "check_resize", "parse_center_crop", "parse_normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The named ``--normalize`` settings (or ``MEAN,STD`` numbers).
NORMALIZE_NAMES = ("dataset", "imagenet", "none")
#: Prefix of the keys written into an exported ONNX model's ``metadata_props``.
METADATA_PREFIX = "autocompress."

_NORMALIZE_HELP = ("--normalize must be dataset (the training data's per-channel mean and std), "
                   "imagenet, none, or MEAN,STD numbers on the 0-1 scale: one mean and one std "
                   "for every channel (e.g. 0.5,0.25) or one per channel, means first (e.g. "
                   "0.485,0.456,0.406,0.229,0.224,0.225)")


def parse_normalize(text: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The fixed ``(mean, std)`` a ``--normalize`` setting names; ``None`` for ``dataset``
    (computed from the training data); empty tuples for ``none``.

    Raises:
        DataError: not a valid setting (the message lists the valid forms).
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{_NORMALIZE_HELP}; got {text!r}")
    value = text.strip().lower()
    if value == "dataset":
        return None
    if value == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if value == "none":
        return (), ()
    try:
        numbers = [float(part) for part in value.split(",")]
    except ValueError:
        raise DataError(f"{_NORMALIZE_HELP}; got {text!r}") from None
    if len(numbers) % 2 or not all(math.isfinite(v) for v in numbers):
        raise DataError(f"{_NORMALIZE_HELP}; got {text!r} ({len(numbers)} numbers)")
    half = len(numbers) // 2
    mean, std = tuple(numbers[:half]), tuple(numbers[half:])
    if min(std) <= 0:
        raise DataError(f"--normalize: every std must be positive, got {text!r}")
    return mean, std


def parse_center_crop(value: object) -> tuple[int, int] | None:
    """``--center-crop`` as ``(height, width)``: one integer (a square) or ``H,W``.

    Raises:
        DataError: not one or two positive integers.
    """
    if value is None:
        return None
    parts: list[object]
    if isinstance(value, str):
        texts = [p.strip() for p in value.replace("x", ",").split(",")]
        try:
            parts = [int(p) for p in texts]
        except ValueError:
            parts = []
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    elif isinstance(value, tuple | list):
        parts = list(value)
    else:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0
                                  for p in parts):
        raise DataError(f"--center-crop must be a positive integer (a square) or H,W, "
                        f"got {value!r}")
    return (int(parts[0]), int(parts[1]))  # type: ignore[call-overload]


def check_resize(value: object) -> int | None:
    """``--resize``: the length the shorter side of every image is resized to."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"--resize must be a positive integer (the shorter side in pixels), "
                        f"got {value!r}")
    return value


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input, resolved to numbers.

    Attributes:
        normalize: the setting it came from: ``dataset``, ``imagenet``, ``none`` or the
            ``MEAN,STD`` text.
        mean, std: per channel, on the 0-1 scale (empty: no normalization).
        resize: the shorter side is resized to this many pixels (PIL's bilinear filter, as
            torchvision's ``Resize`` on a PIL image; ``None``: no resize).
        center_crop: ``(height, width)`` cut from the center after the resize.
        input_size: ``(height, width)`` of the model's input.
        embedded: whether the exported ONNX model does the normalization itself (its input
            is then the 0-1 image).
    """

    normalize: str = "dataset"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    resize: int | None = None
    center_crop: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    embedded: bool = False

    def describe(self) -> str:
        """One line: ``resize 256, center crop 224x224, /255, normalized (imagenet) ...``."""
        steps = []
        if self.resize is not None:
            steps.append(f"resize shorter side to {self.resize}")
        if self.center_crop is not None:
            steps.append(f"center crop {self.center_crop[0]}x{self.center_crop[1]}")
        steps.append("pixel/255")
        if self.mean:
            steps.append(f"normalized ({self.normalize}): mean "
                         f"{_numbers(self.mean)}, std {_numbers(self.std)}")
        else:
            steps.append("not normalized")
        return ", ".join(steps)

    def metadata(self, class_names: tuple[str, ...] = ()) -> dict[str, str]:
        """The keys written into an exported ONNX model's ``metadata_props``."""
        p = METADATA_PREFIX
        props = {
            f"{p}normalize": self.normalize,
            f"{p}normalize_mean": json.dumps(list(self.mean)),
            f"{p}normalize_std": json.dumps(list(self.std)),
            f"{p}input_size": json.dumps(list(self.input_size) if self.input_size else None),
            f"{p}resize": json.dumps(self.resize),
            f"{p}center_crop": json.dumps(list(self.center_crop) if self.center_crop else None),
            f"{p}input_scale": "pixel/255 (RGB, NCHW, float32 in [0, 1])",
            f"{p}preprocessing_embedded": json.dumps(self.embedded),
            f"{p}preprocessing": self.describe(),
        }
        if class_names:
            props[f"{p}class_names"] = json.dumps(list(class_names))
        return props


def _numbers(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass(frozen=True)
class DataRecord:
    """Where a run's training and validation samples come from, and how they are prepared.

    Attributes:
        train: the training data's spec.
        val: the separate validation data's spec; ``None`` when validation is a share of
            the training data (``val_fraction``, drawn by ``seed``).
        train_samples, val_samples: how many samples each side has.
        class_names: one name per class, in label order.
        preprocessing: how an image becomes the model's input.
    """

    train: str
    val: str | None
    train_samples: int
    val_samples: int
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    val_fraction: float | None = None
    seed: int = 0

    @property
    def same_source(self) -> bool:
        """Whether validation samples come from the training data (a held-out share)."""
        return self.val is None

    def validation_note(self) -> str:
        """One line saying where the validation accuracy comes from."""
        if self.val is not None:
            return (f"validation: {self.val_samples:,} samples of {self.val} (separate from "
                    f"the {self.train_samples:,} training samples of {self.train})")
        share = f"{self.val_fraction:.0%} " if self.val_fraction is not None else ""
        return (f"validation: {share}of {self.train} held out at random (seed {self.seed}), "
                f"{self.val_samples:,} samples from the same source as training; a model "
                "trained on all of it scores optimistically here: give --val-data")
