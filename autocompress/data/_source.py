"""One split of a data set as a source of batches: :class:`ImageSource`.

Every consumer (the training loop, accuracy, adaptive BatchNorm, int8 calibration, teacher
outputs) asks a source for samples *by index*: :meth:`ImageSource.fetch` for one batch,
:meth:`ImageSource.stream` for many (a streamed source decodes them ahead in worker
processes). Whether the images sit in memory or are decoded from files, the same indices in
the same order give the same tensors: a source stores *raw* batches (uint8 pixels, or floats
in [0, 1]) and turns each into the model's input with one :class:`BatchTransform`, the same
arithmetic either way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from autocompress.exceptions import DataError

__all__ = ["BatchTransform", "ImageSource", "TensorSource", "as_source", "resize_images"]

# Smallest standard deviation used for normalization: a constant channel stays finite.
MIN_STD = 1e-6


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a float N x C x H x W batch."""
    return F.interpolate(
        images, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )


@dataclass(frozen=True, eq=False)
class BatchTransform:
    """Raw batch -> model input: uint8 pixels scaled to [0, 1] (``/ 255``), then
    ``(x - mean) / std`` per channel, the single channel repeated to ``channels``, and a
    bilinear resize to ``size``; each step only when set.

    The arithmetic is the one the in-memory data always used on whole tensors, applied per
    batch: elementwise, so a batch gives bitwise the same values as the whole tensor.
    """

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    channels: int | None = None
    size: tuple[int, int] | None = None
    _stats: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False,
                                                             repr=False)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise DataError(f"normalization needs as many means as stds, got {self.mean} and "
                            f"{self.std}")
        if self.mean:
            mean = torch.tensor(self.mean, dtype=torch.float64).reshape(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float64).reshape(1, -1, 1, 1)
            object.__setattr__(self, "_stats", (mean.to(torch.float32),
                                                std.to(torch.float32).clamp_min(MIN_STD)))

    @property
    def identity(self) -> bool:
        return not self.mean and self.channels is None and self.size is None

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.to(torch.float32).div_(255.0) if raw.dtype == torch.uint8 else raw.to(
            torch.float32)
        if self._stats is not None:
            mean, std = self._stats
            if mean.shape[1] not in (1, x.shape[1]):
                raise DataError(f"normalization has {mean.shape[1]} channel values but the "
                                f"images have {x.shape[1]} channels; give one value per "
                                "channel (or one for all)")
            x = x.sub(mean).div_(std)
        if self.channels is not None and self.channels != x.shape[1]:
            x = x.expand(-1, self.channels, -1, -1).contiguous()
        if self.size is not None and tuple(x.shape[2:]) != self.size:
            x = resize_images(x, *self.size)
        return x

    def output_shape(self, raw_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        channels = self.channels if self.channels is not None else raw_shape[0]
        height, width = self.size if self.size is not None else raw_shape[1:]
        return (channels, height, width)

    def then(self, *, channels: int | None = None, size: tuple[int, int] | None = None
             ) -> BatchTransform:
        """This transform followed by a channel repeat and/or a resize."""
        return replace(self, channels=channels if channels is not None else self.channels,
                       size=size if size is not None else self.size)


IDENTITY = BatchTransform()


class ImageSource(ABC):
    """The samples of one split, fetched by index and turned into model inputs.

    Subclasses store raw batches (:meth:`raw_batches`); this class applies
    :attr:`transform`. ``len(source)`` samples, labels ``0 .. num_classes - 1``.
    """

    transform: BatchTransform = IDENTITY

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def labels(self) -> torch.Tensor:
        """Every sample's label (int64), in index order."""

    @property
    @abstractmethod
    def raw_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one raw sample, before :attr:`transform`."""

    @abstractmethod
    def raw_batches(self, chunks: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor,
                                                                            torch.Tensor]]:
        """``(raw images, labels)`` for every chunk of indices, in order."""

    @abstractmethod
    def with_transform(self, transform: BatchTransform) -> ImageSource:
        """The same samples, turned into inputs by ``transform``."""

    @abstractmethod
    def subset(self, indices: torch.Tensor) -> ImageSource:
        """The samples at ``indices`` (in that order), as a source of their own."""

    #: whether every sample is held in memory (fetching costs no decoding)
    in_memory: bool = False

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one model input."""
        return self.transform.output_shape(self.raw_shape)

    def fetch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` of the samples at ``indices``."""
        return next(self.stream([indices]))

    def stream(self, chunks: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor,
                                                                       torch.Tensor]]:
        """``(inputs, labels)`` for every chunk of indices, in order (decoded ahead by worker
        processes where the source streams from files)."""
        for raw, labels in self.raw_batches(chunks):
            yield self.transform(raw), labels

    def batches(self, batch_size: int, count: int | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``count`` samples (default: all) in index order, ``batch_size`` at a time."""
        total = len(self) if count is None else min(count, len(self))
        return self.stream(sequential_chunks(total, batch_size))

    def head(self, count: int) -> torch.Tensor:
        """The inputs of the first ``count`` samples."""
        return self.fetch(torch.arange(min(count, len(self))))[0]

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every input and label as two tensors (memory: the whole split as float32)."""
        parts = list(self.batches(4096))
        if not parts:
            return torch.empty((0, *self.sample_shape)), torch.empty(0, dtype=torch.int64)
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def sequential_chunks(count: int, batch_size: int) -> list[torch.Tensor]:
    return [torch.arange(start, min(start + batch_size, count))
            for start in range(0, count, batch_size)]


class TensorSource(ImageSource):
    """Samples held in memory: raw images (uint8, or float32 in [0, 1], or inputs already
    prepared when :attr:`transform` is the identity) and their labels."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: BatchTransform = IDENTITY) -> None:
        if images.dim() != 4:
            raise DataError(f"images must be an N x C x H x W tensor, not shape "
                            f"{tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise DataError(f"labels must be an int64 tensor of {images.shape[0]} labels, not "
                            f"{labels.dtype} with shape {tuple(labels.shape)}")
        self.images, self._labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"TensorSource({len(self)} x {tuple(self.images.shape[1:])} "
                f"{self.images.dtype})")

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    @property
    def raw_shape(self) -> tuple[int, int, int]:
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def raw_batches(self, chunks: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor,
                                                                            torch.Tensor]]:
        for idx in chunks:
            yield self.images[idx], self._labels[idx]

    def with_transform(self, transform: BatchTransform) -> TensorSource:
        return TensorSource(self.images, self._labels, transform)

    def subset(self, indices: torch.Tensor) -> TensorSource:
        return TensorSource(self.images[indices], self._labels[indices], self.transform)

    def inputs(self) -> torch.Tensor:
        """All inputs as one tensor (the images themselves when nothing is applied)."""
        if self.transform.identity and self.images.dtype == torch.float32:
            return self.images
        return self.transform(self.images)


def as_source(x: torch.Tensor | ImageSource, y: torch.Tensor | None) -> ImageSource:
    """``x`` if it is a source (then ``y`` must be ``None``), else the tensors ``(x, y)``."""
    if isinstance(x, ImageSource):
        if y is not None:
            raise DataError("labels come with an ImageSource; pass y=None with it")
        return x
    if y is None:
        raise DataError("tensors of inputs need their labels: pass y")
    return TensorSource(x, y)
