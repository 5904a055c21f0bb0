"""Data sets held in memory as tensors, split and normalized.

>>> from autocompress.data import load_data
>>> data = load_data("mnist", seed=0)
>>> data.input_shape
(1, 1, 28, 28)

Specs: ``"mnist"``, ``"digits"`` and ``"imagefolder:PATH"`` (see :func:`list_datasets`).
Nothing is cached to disk.
"""

from __future__ import annotations

from autocompress.data._load import list_datasets, load_data
from autocompress.data._split import DataSplit

__all__ = ["DataSplit", "list_datasets", "load_data"]
