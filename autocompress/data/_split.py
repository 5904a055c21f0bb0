"""The in-memory data set every data source produces, and the helpers to build one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from autocompress.exceptions import DataError

__all__ = [
    "DataSplit",
    "channel_stats",
    "check_val_fraction",
    "fingerprint_of",
    "normalize",
    "resize_images",
    "split_indices",
]

# Smallest standard deviation used for normalization: a constant channel stays finite.
_MIN_STD = 1e-6
# Images per chunk when computing statistics, to bound the float64 working memory.
_STATS_CHUNK = 4096


@dataclass(frozen=True, eq=False)
class DataSplit:
    """A training and a validation set held as tensors, ready for a model.

    Attributes:
        name: the data spec it came from, e.g. ``"mnist"``.
        train_x: float32 images, N x C x H x W, normalized.
        train_y: int64 labels in ``[0, num_classes)``.
        val_x: validation images, normalized with the training statistics.
        val_y: validation labels.
        num_classes: number of classes.
        class_names: one name per class, in label order.
        fingerprint: stable identifier of the data and the split settings, for cache keys.
    """

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    val_x: torch.Tensor = field(repr=False)
    val_y: torch.Tensor = field(repr=False)
    num_classes: int
    class_names: tuple[str, ...]
    fingerprint: str

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("val", self.val_x, self.val_y)):
            if x.dtype != torch.float32 or x.dim() != 4:
                raise DataError(
                    f"data {self.name!r}: {split}_x must be a float32 N x C x H x W tensor, "
                    f"not {x.dtype} with shape {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(
                    f"data {self.name!r}: {split}_y must be an int64 tensor of {x.shape[0]} "
                    f"labels, not {y.dtype} with shape {tuple(y.shape)}"
                )
        if self.train_x.shape[1:] != self.val_x.shape[1:]:
            raise DataError(
                f"data {self.name!r}: train images {tuple(self.train_x.shape[1:])} and "
                f"validation images {tuple(self.val_x.shape[1:])} differ in shape"
            )
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"data {self.name!r}: {len(self.class_names)} class names for "
                f"{self.num_classes} classes"
            )

    def __repr__(self) -> str:
        return (
            f"DataSplit(name={self.name!r}, train={len(self.train_y)}, val={len(self.val_y)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"fingerprint={self.fingerprint!r})"
        )

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of one input batch of size 1: ``(1, C, H, W)``."""
        _, channels, height, width = self.train_x.shape
        return (1, channels, height, width)

    def with_channels(self, channels: int) -> DataSplit:
        """The same data with ``channels`` channels: 1 -> 3 repeats the single channel.

        Raises:
            DataError: any other change of channel count.
        """
        current = self.input_shape[1]
        if channels == current:
            return self
        if not (current == 1 and channels == 3):
            raise DataError(
                f"data {self.name!r} has {current} channel(s) and cannot be turned into "
                f"{channels}; only 1 -> 3 (repeating the channel) is supported. Choose a model "
                f"that takes {current}-channel input (the builtins adapt to any count)"
            )
        return self._derived(
            f"channels={channels}",
            train_x=self.train_x.expand(-1, channels, -1, -1).contiguous(),
            val_x=self.val_x.expand(-1, channels, -1, -1).contiguous(),
        )

    def resized(self, height: int, width: int) -> DataSplit:
        """The same data resized to ``height`` x ``width`` (bilinear, antialiased)."""
        for what, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"resize {what} must be a positive integer, not {value!r}")
        if (height, width) == self.input_shape[2:]:
            return self
        return self._derived(
            f"size={height}x{width}",
            train_x=resize_images(self.train_x, height, width),
            val_x=resize_images(self.val_x, height, width),
        )

    def _derived(self, change: str, *, train_x: torch.Tensor, val_x: torch.Tensor) -> DataSplit:
        return DataSplit(
            name=self.name,
            train_x=train_x,
            train_y=self.train_y,
            val_x=val_x,
            val_y=self.val_y,
            num_classes=self.num_classes,
            class_names=self.class_names,
            fingerprint=fingerprint_of({"base": self.fingerprint, "change": change}),
        )


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a float N x C x H x W batch."""
    return F.interpolate(
        images, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices of a fixed-seed random permutation of ``range(count)``.

    Raises:
        DataError: ``val_fraction`` is not in (0, 1), or leaves either split empty.
    """
    check_val_fraction(val_fraction)
    val_count = round(count * val_fraction)
    if val_count < 1 or val_count >= count:
        raise DataError(
            f"val_fraction={val_fraction} of {count} samples leaves "
            f"{'no validation' if val_count < 1 else 'no training'} samples; choose a fraction "
            f"that keeps at least one sample on each side"
        )
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(count, generator=generator)
    return permutation[val_count:], permutation[:val_count]


def check_val_fraction(val_fraction: float) -> None:
    """Raise :class:`DataError` unless ``0 < val_fraction < 1``."""
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, int | float)
        or not 0.0 < val_fraction < 1.0
    ):
        raise DataError(
            f"val_fraction must be a number between 0 and 1 (exclusive), not {val_fraction!r}"
        )


def normalize(
    train_x: torch.Tensor, val_x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x - mean) / std`` for both splits; ``mean`` and ``std`` have one value per channel."""
    mean = mean.reshape(1, -1, 1, 1).to(torch.float32)
    std = std.reshape(1, -1, 1, 1).to(torch.float32).clamp_min(_MIN_STD)
    return train_x.sub(mean).div_(std), val_x.sub(mean).div_(std)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) standard deviation of an N x C x H x W batch.

    Accumulates in float64 over chunks of images, so a uint8 or float32 batch of any size
    needs little extra memory.
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].to(torch.float64)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    return mean, std


def fingerprint_of(settings: dict[str, object]) -> str:
    """A short, stable hash of JSON-serialisable settings."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]
