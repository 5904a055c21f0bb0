"""The data a model trains and is validated on: :class:`DataSplit`, two
:class:`~autocompress.data.ImageSource` objects and what describes them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import torch

from autocompress.data._preprocess import DataRecord, Preprocessing
from autocompress.data._source import ImageSource, TensorSource, resize_images
from autocompress.exceptions import DataError

__all__ = [
    "DataSplit",
    "channel_stats",
    "check_val_fraction",
    "fingerprint_of",
    "resize_images",
    "split_indices",
]

# Images per chunk when computing statistics (fewer for large images: a chunk holds at most
# _STATS_VALUES values, about 100 MB in float64), to bound the working memory.
_STATS_CHUNK = 4096
_STATS_VALUES = _STATS_CHUNK * 3 * 32 * 32


@dataclass(frozen=True, eq=False, init=False)
class DataSplit:
    """A training and a validation source, ready for a model.

    Build one with :func:`~autocompress.data.load_data`, :meth:`from_sources`, or from four
    tensors (``DataSplit(name, train_x, train_y, val_x, val_y, num_classes, class_names,
    fingerprint)``, normalized float32 images held in memory).

    Attributes:
        name: the data spec it came from, e.g. ``"mnist"``.
        train, val: the sources of training and validation samples; every consumer reads
            them by index (:meth:`ImageSource.fetch`, :meth:`ImageSource.stream`).
        class_names: one name per class, in label order.
        fingerprint: stable identifier of the data and its settings, for cache keys.
        record: where the samples come from and how they are prepared.
    """

    name: str
    train: ImageSource
    val: ImageSource
    class_names: tuple[str, ...]
    fingerprint: str
    record: DataRecord

    def __init__(self, name: str, train_x: torch.Tensor, train_y: torch.Tensor,
                 val_x: torch.Tensor, val_y: torch.Tensor, num_classes: int,
                 class_names: tuple[str, ...], fingerprint: str) -> None:
        for split, x, y in (("train", train_x, train_y), ("val", val_x, val_y)):
            if x.dtype != torch.float32 or x.dim() != 4:
                raise DataError(
                    f"data {name!r}: {split}_x must be a float32 N x C x H x W tensor, "
                    f"not {x.dtype} with shape {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(
                    f"data {name!r}: {split}_y must be an int64 tensor of {x.shape[0]} "
                    f"labels, not {y.dtype} with shape {tuple(y.shape)}"
                )
        if len(class_names) != num_classes:
            raise DataError(
                f"data {name!r}: {len(class_names)} class names for {num_classes} classes"
            )
        record = DataRecord(train=name, val=None, train_samples=len(train_y),
                            val_samples=len(val_y), class_names=tuple(class_names),
                            preprocessing=Preprocessing(
                                normalize="as given",
                                input_size=(int(train_x.shape[2]), int(train_x.shape[3]))))
        self._set(name, TensorSource(train_x, train_y), TensorSource(val_x, val_y),
                  tuple(class_names), fingerprint, record)

    def _set(self, name: str, train: ImageSource, val: ImageSource,
             class_names: tuple[str, ...], fingerprint: str, record: DataRecord) -> None:
        if train.sample_shape != val.sample_shape:
            raise DataError(
                f"data {name!r}: train images {train.sample_shape} and validation images "
                f"{val.sample_shape} differ in shape"
            )
        if len(train) == 0 or len(val) == 0:
            raise DataError(f"data {name!r}: {'training' if len(train) == 0 else 'validation'}"
                            " data is empty")
        for key, value in (("name", name), ("train", train), ("val", val),
                           ("class_names", class_names), ("fingerprint", fingerprint),
                           ("record", record)):
            object.__setattr__(self, key, value)

    @classmethod
    def from_sources(cls, name: str, train: ImageSource, val: ImageSource, *,
                     class_names: tuple[str, ...], fingerprint: str,
                     record: DataRecord) -> DataSplit:
        """A split of two sources (in memory or streamed)."""
        split = cls.__new__(cls)
        split._set(name, train, val, tuple(class_names), fingerprint, record)
        return split

    def __repr__(self) -> str:
        return (
            f"DataSplit(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"fingerprint={self.fingerprint!r})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.record.preprocessing

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of one input batch of size 1: ``(1, C, H, W)``."""
        channels, height, width = self.train.sample_shape
        return (1, channels, height, width)

    # --- the tensors, for data held in memory ---------------------------------------------

    @property
    def train_x(self) -> torch.Tensor:
        """All training inputs as one float32 tensor (in-memory data only)."""
        return _tensor_of(self.train, self.name, "train_x")

    @property
    def val_x(self) -> torch.Tensor:
        """All validation inputs as one float32 tensor (in-memory data only)."""
        return _tensor_of(self.val, self.name, "val_x")

    @property
    def train_y(self) -> torch.Tensor:
        return self.train.labels

    @property
    def val_y(self) -> torch.Tensor:
        return self.val.labels

    # --- derived splits --------------------------------------------------------------------

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
        return self._derived(f"channels={channels}", channels=channels)

    def resized(self, height: int, width: int) -> DataSplit:
        """The same data resized to ``height`` x ``width`` (bilinear, antialiased, after
        normalization)."""
        for what, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"resize {what} must be a positive integer, not {value!r}")
        if (height, width) == self.input_shape[2:]:
            return self
        return self._derived(f"size={height}x{width}", size=(height, width))

    def _derived(self, change: str, *, channels: int | None = None,
                 size: tuple[int, int] | None = None) -> DataSplit:
        train = _derive(self.train, channels, size)
        val = _derive(self.val, channels, size)
        record = replace(self.record, preprocessing=replace(
            self.record.preprocessing, input_size=train.sample_shape[1:]))
        return DataSplit.from_sources(
            self.name, train, val, class_names=self.class_names,
            fingerprint=fingerprint_of({"base": self.fingerprint, "change": change}),
            record=record)


def _derive(source: ImageSource, channels: int | None,
            size: tuple[int, int] | None) -> ImageSource:
    """``source`` with a channel repeat and/or resize after its transform; computed once for
    prepared tensors in memory (as they always were), per batch otherwise."""
    derived = source.with_transform(source.transform.then(channels=channels, size=size))
    if (isinstance(source, TensorSource) and source.transform.identity
            and source.images.dtype == torch.float32):
        assert isinstance(derived, TensorSource)
        return TensorSource(derived.inputs(), source.labels)
    return derived


def _tensor_of(source: ImageSource, name: str, what: str) -> torch.Tensor:
    if isinstance(source, TensorSource):
        return source.inputs()
    raise DataError(
        f"data {name!r} is streamed from its files, so it has no {what} tensor; read it "
        f"through data.{what.split('_')[0]} (fetch(indices), batches(size)), or load it with "
        "cache='memory'"
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


def channel_stats(source: ImageSource | torch.Tensor, indices: torch.Tensor | None = None,
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) standard deviation of raw images on the 0-1 scale
    (uint8 pixels / 255), of a source's samples at ``indices`` (default: all) or of an
    N x C x H x W tensor.

    Accumulates in float64 over chunks of 4,096 images (fewer when the images are larger
    than 3 x 32 x 32, so that a chunk holds at most 4,096 such images' values), read
    ``batch_size`` at a time, so a streamed source decodes them in its workers: a source of
    any size and any image size needs little memory, and the same images give the same
    numbers however they are stored.
    """
    if isinstance(source, torch.Tensor):
        source = TensorSource(source, torch.zeros(len(source), dtype=torch.int64))
    count = len(source) if indices is None else len(indices)
    order = torch.arange(count) if indices is None else indices
    chunks = [order[s:s + batch_size] for s in range(0, count, batch_size)]
    channels, height, width = source.raw_shape
    per_chunk = min(_STATS_CHUNK, max(1, _STATS_VALUES // (channels * height * width)))
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    pending: list[torch.Tensor] = []
    pending_count = 0

    def add(parts: list[torch.Tensor]) -> None:
        chunk = torch.cat(parts) if len(parts) > 1 else parts[0]
        unit = chunk.to(torch.float32).div_(255.0) if chunk.dtype == torch.uint8 else chunk.to(
            torch.float32)
        wide = unit.to(torch.float64)
        total.add_(wide.sum(dim=(0, 2, 3)))
        total_sq.add_(wide.square().sum(dim=(0, 2, 3)))

    for raw, _ in source.raw_batches(chunks):
        pending.append(raw)
        pending_count += len(raw)
        while pending_count >= per_chunk:
            whole = torch.cat(pending)
            add([whole[:per_chunk]])
            pending, pending_count = [whole[per_chunk:]], len(whole) - per_chunk
    if pending_count:
        add(pending)
    pixels = count * height * width
    mean = total / pixels
    std = (total_sq / pixels - mean.square()).clamp_min(0.0).sqrt()
    return mean, std


def fingerprint_of(settings: dict[str, object]) -> str:
    """A short, stable hash of JSON-serialisable settings."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]
