"""Sources decoded on the fly: image files and ``torch.utils.data.Dataset`` objects.

A :class:`StreamedSource` holds no image: it keeps the index of its samples and reads the
batches it is asked for through a ``torch.utils.data.DataLoader`` whose ``batch_sampler`` is
the list of index chunks, so worker processes decode the next batches while the model trains
on the current one. Memory stays bounded by the batches in flight (``prefetch`` per worker),
whatever the data set's size. :meth:`StreamedSource.cached` decodes everything once into a
uint8 tensor, for data that fits in memory; both give the same tensors for the same indices.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocompress.data._source import IDENTITY, BatchTransform, ImageSource, TensorSource
from autocompress.exceptions import DataError

__all__ = ["Decoder", "DatasetItems", "FileItems", "StreamSettings", "StreamedSource",
           "default_workers"]

_logger = logging.getLogger(__name__)


def default_workers() -> int:
    """Decoding workers: half the CPUs (the other half trains), 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass(frozen=True)
class StreamSettings:
    """How a streamed source reads: ``workers`` decoding processes (0: in this process),
    ``prefetch`` batches queued per worker; requests of fewer than ``min_samples`` samples
    are decoded in this process (starting workers would cost more)."""

    workers: int = 1
    prefetch: int = 4
    min_samples: int = 2048

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) \
                or self.workers < 0:
            raise DataError(f"--data-workers must be 0 or more, got {self.workers!r}")


@dataclass(frozen=True)
class Decoder:
    """An image file as a 3 x H x W RGB uint8 tensor: decoded (torchvision's decoder, PIL
    for other formats), then

    - ``size``: resized to exactly H x W (bilinear, antialiased, on the uint8 tensor, as
      ``load_data(image_size=...)`` always did);
    - ``resize``: the shorter side resized to this many pixels and ``center_crop``: the center
      cut out, as torchvision's classic ``Resize(resize)`` + ``CenterCrop(crop)`` do on a PIL
      image (PIL's bilinear filter). That is the pipeline most checkpoints were trained
      with, and a deployment with PIL alone reproduces it exactly (docs/data.md).
    """

    size: tuple[int, int] | None = None
    resize: int | None = None
    center_crop: tuple[int, int] | None = None

    def __call__(self, path: str) -> torch.Tensor:
        image = decode_file(path)
        if self.size is None and self.resize is None and self.center_crop is None:
            return image
        if self.size is not None and tuple(image.shape[1:]) != self.size:
            from torchvision.transforms.v2 import functional as TF

            image = TF.resize(image, list(self.size), antialias=True)
        if self.resize is None and self.center_crop is None:
            return image
        from PIL import Image
        from torchvision.transforms import functional as F

        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        if self.resize is not None:
            pil = F.resize(pil, [self.resize], interpolation=F.InterpolationMode.BILINEAR)
        if self.center_crop is not None:
            pil = F.center_crop(pil, list(self.center_crop))
        array = np.asarray(pil, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """The output size when every image gets it whatever its own size."""
        return self.center_crop or self.size


def decode_file(path: str) -> torch.Tensor:
    """One image file as a 3 x H x W RGB uint8 tensor (torchvision's decoder, PIL fallback)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    except OSError as error:
        raise DataError(f"cannot read image file {path}: {error}") from error
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        pass  # formats torchvision cannot decode (BMP, TIFF, ...): try PIL below
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            array = np.asarray(opened.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(
            f"cannot decode image file {path} ({error}); remove or replace it"
        ) from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class _Items(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Raw samples by index, a batch at a time (``__getitems__``: the DataLoader's batched
    fetch); an error comes back as its message, raised in the main process as one line."""

    labels: np.ndarray
    raw_shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor] | str:
        try:
            images = torch.stack([self.raw(int(i)) for i in indices])
        except DataError as error:
            return str(error)
        return images, torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)])

    def raw(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class FileItems(_Items):
    """The image files of a folder, with their labels (paths kept as one numpy array of
    bytes, so forked workers do not copy them)."""

    def __init__(self, root: Path, paths: Sequence[str], labels: Sequence[int],
                 decoder: Decoder) -> None:
        if not paths:
            raise DataError(f"no image files in {root}")
        self.root = root
        self.paths = np.array([os.fsencode(os.path.relpath(p, root)) for p in paths])
        self.labels = np.asarray(labels, dtype=np.int64)
        self.decoder = decoder
        first = decoder(self.path(0))
        self.raw_shape = (int(first.shape[0]), int(first.shape[1]), int(first.shape[2]))

    def path(self, index: int) -> str:
        return str(self.root / os.fsdecode(self.paths[index]))

    def raw(self, index: int) -> torch.Tensor:
        image = self.decoder(self.path(index))
        if tuple(image.shape) != self.raw_shape:
            _, height, width = self.raw_shape
            raise DataError(
                f"images in {self.root} differ in size: {self.path(0)} is {height}x{width} "
                f"(HxW), {self.path(index)} is {image.shape[1]}x{image.shape[2]}; pass "
                "--resize and/or --center-crop (image_size=(height, width) to load_data) to "
                "bring every image to one size")
        return image

    def describe(self) -> str:
        return str(self.root)


class DatasetItems(_Items):
    """A ``torch.utils.data.Dataset`` of ``(image, label)`` pairs: the image a PIL image, a
    uint8 C x H x W tensor (0..255) or a float one (0..1, as ``ToTensor`` gives)."""

    def __init__(self, dataset: Any, labels: Sequence[int], name: str) -> None:
        self.dataset, self.name = dataset, name
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) == 0:
            raise DataError(f"the data set {name} is empty")
        first = self.raw(0)
        self.raw_shape = (int(first.shape[0]), int(first.shape[1]), int(first.shape[2]))
        self.dtype = first.dtype

    def raw(self, index: int) -> torch.Tensor:
        item = self.dataset[index]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise DataError(f"{self.name}[{index}] is not an (image, label) pair")
        image = _as_chw(item[0], f"{self.name}[{index}]")
        if int(item[1]) != int(self.labels[index]):
            raise DataError(f"{self.name}[{index}] has label {int(item[1])} but its targets "
                            f"say {int(self.labels[index])}")
        if getattr(self, "raw_shape", None) and tuple(image.shape) != self.raw_shape:
            raise DataError(f"{self.name}[{index}] has shape {tuple(image.shape)}, the first "
                            f"sample {self.raw_shape}: every sample needs one size (resize "
                            "in the data set's transform)")
        return image

    def describe(self) -> str:
        return self.name


def _as_chw(image: Any, where: str) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if image.dim() != 3 or image.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"{where}: the image must be a C x H x W uint8 or float32 tensor "
                            f"(or a PIL image), not {image.dtype} {tuple(image.shape)}")
        return image
    try:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except AttributeError:
        raise DataError(f"{where}: the image must be a PIL image or a C x H x W tensor, not "
                        f"{type(image).__name__}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _keep(batch: Any) -> Any:
    return batch


class StreamedSource(ImageSource):
    """Samples decoded on the fly from ``items`` (all, or those at ``indices``)."""

    def __init__(self, items: _Items, indices: np.ndarray | None = None,
                 transform: BatchTransform = IDENTITY,
                 settings: StreamSettings | None = None) -> None:
        self.items = items
        self.indices = (np.arange(len(items), dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))
        self.transform = transform
        self.settings = settings or StreamSettings(workers=default_workers())

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"StreamedSource({len(self)} of {self.items.describe()})"

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.items.labels[self.indices])

    @property
    def raw_shape(self) -> tuple[int, int, int]:
        return self.items.raw_shape

    def with_transform(self, transform: BatchTransform) -> StreamedSource:
        return StreamedSource(self.items, self.indices, transform, self.settings)

    def with_settings(self, settings: StreamSettings) -> StreamedSource:
        return StreamedSource(self.items, self.indices, self.transform, settings)

    def subset(self, indices: torch.Tensor) -> StreamedSource:
        chosen = self.indices[np.asarray(indices, dtype=np.int64)]
        return StreamedSource(self.items, chosen, self.transform, self.settings)

    def raw_batches(self, chunks: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor,
                                                                            torch.Tensor]]:
        mapped = [self.indices[np.asarray(c, dtype=np.int64)].tolist() for c in chunks]
        total = sum(len(c) for c in mapped)
        if self.settings.workers == 0 or total < self.settings.min_samples:
            batches: Any = (self.items.__getitems__(c) for c in mapped)
        else:
            batches = torch.utils.data.DataLoader(
                self.items, batch_sampler=mapped, num_workers=self.settings.workers,
                collate_fn=_keep, prefetch_factor=self.settings.prefetch)
        for batch in batches:
            if isinstance(batch, str):
                raise DataError(batch)
            yield batch

    def cached(self) -> TensorSource:
        """Every sample decoded once (by the workers) into one uint8 tensor in memory."""
        dtype = getattr(self.items, "dtype", torch.uint8)
        images = torch.empty((len(self), *self.raw_shape), dtype=dtype)
        chunks = [torch.arange(s, min(s + 256, len(self))) for s in range(0, len(self), 256)]
        for chunk, (raw, _) in zip(chunks, self.raw_batches(chunks), strict=True):
            images[chunk] = raw
        return TensorSource(images, self.labels.clone(), self.transform)
