"""Data sets as sources of batches: split, normalized, in memory or streamed from files.

>>> from autocompress.data import load_data
>>> data = load_data("mnist", seed=0)
>>> data.input_shape
(1, 1, 28, 28)
>>> x, y = data.train.fetch(torch.arange(64))      # doctest: +SKIP

Specs: ``"mnist"``, ``"digits"`` and ``"imagefolder:PATH"`` (see :func:`list_datasets`), or a
``torch.utils.data.Dataset``. A :class:`DataSplit` holds two :class:`ImageSource` objects
(``train``, ``val``); image folders too large for memory are decoded on the fly by worker
processes. Nothing is cached to disk.
"""

from __future__ import annotations

from autocompress.data._load import (
    CACHE_MODES,
    MEMORY_CACHE_BYTES,
    list_datasets,
    load_data,
    spec_name,
)
from autocompress.data._preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZE_NAMES,
    DataRecord,
    Preprocessing,
    parse_center_crop,
    parse_normalize,
)
from autocompress.data._source import BatchTransform, ImageSource, TensorSource, as_source
from autocompress.data._split import DataSplit
from autocompress.data._stream import StreamedSource, StreamSettings

__all__ = ["CACHE_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "MEMORY_CACHE_BYTES",
           "NORMALIZE_NAMES", "BatchTransform", "DataRecord", "DataSplit", "ImageSource",
           "Preprocessing", "StreamSettings", "StreamedSource", "TensorSource", "as_source",
           "list_datasets", "load_data", "parse_center_crop", "parse_normalize", "spec_name"]
