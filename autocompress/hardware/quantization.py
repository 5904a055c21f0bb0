"""The one int8 quantization routine of autocompress, shared by profiling and deployment.

Profiled int8 kernels must be quantized exactly as deployed models are, so both call
:func:`quantize_static_int8`: ONNX Runtime's ``quantize_static`` in QDQ format with
per-channel symmetric int8 weights reduced to 7 bits (``reduce_range``: x86 CPUs without VNNI
multiply u8 x s8 pairs into int16 and saturate with full-range weights) and per-tensor
asymmetric uint8 activations, calibrated by min/max. It needs no torch, and imports ONNX
Runtime's quantization tools only when called.

ONNX Runtime's quantizer logs through the root logger (``logging.info()``), which would
configure logging for the whole application and print its advice to run pre-processing at
every call: :func:`quiet_onnxruntime_logging` prevents both.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from autocompress.exceptions import MissingDependencyError

__all__ = ["quantize_static_int8", "quiet_onnxruntime_logging"]


class _PreprocessingHint(logging.Filter):
    """Drops ONNX Runtime's advice to run its pre-processing, logged on the root logger at
    every call (callers run it themselves where it helps)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextmanager
def quiet_onnxruntime_logging() -> Iterator[None]:
    """While ONNX Runtime's quantization tools run: keep the application's logging setup
    (they call ``logging.info()`` on the root logger, which runs ``logging.basicConfig()``
    when the root has no handler) and drop their advice to run pre-processing."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    hint = _PreprocessingHint()
    if guard is not None:
        root.addHandler(guard)
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)
        if guard is not None:
            root.removeHandler(guard)


def _quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
        raise MissingDependencyError(
            "int8 models are built with ONNX Runtime's quantization tools: pip install "
            "onnxruntime") from exc
    return quantization


def quantize_static_int8(model: onnx.ModelProto | bytes | str | Path,
                         calibration: Iterable[Mapping[str, np.ndarray]], *,
                         nodes_to_exclude: Sequence[str] = (),
                         quantize_latent_ops: bool = False, per_channel: bool = True,
                         reduce_range: bool = True) -> onnx.ModelProto:
    """``model`` quantized to int8 in QDQ format as deployed models are (see the module
    docstring), calibrated on the feed dicts of ``calibration``.

    Nodes named in ``nodes_to_exclude`` stay fp32. ``quantize_latent_ops``: quantize
    operators such as MaxPool even where their input is not quantized (ONNX Runtime's
    ``ForceQuantizeNoInputCheck``), so that a one-operator graph reading the graph input runs
    the operator in int8 as it would inside an int8 model. ``per_channel`` and
    ``reduce_range`` stay as they are for deployment unless a caller knows its device.
    Errors of ONNX Runtime's quantizer propagate.
    """
    quantization = _quantization()
    feeds = iter(calibration)

    class _Reader(quantization.CalibrationDataReader):  # type: ignore[misc, name-defined]
        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(feeds, None)
            return None if batch is None else dict(batch)

    extra_options = {"ForceQuantizeNoInputCheck": True} if quantize_latent_ops else {}
    # quantize_static writes its result to a file, and given a ModelProto it rewrites that
    # object's weights as external data in a temporary folder it then deletes: always hand
    # it a file.
    with tempfile.TemporaryDirectory(prefix="autocompress-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        if isinstance(model, str | Path):
            source = Path(model)
        elif isinstance(model, bytes):
            source.write_bytes(model)
        else:
            onnx.save(model, source)
        with quiet_onnxruntime_logging():
            quantization.quantize_static(
                str(source), str(target), _Reader(),
                quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
                reduce_range=reduce_range, activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                nodes_to_exclude=list(nodes_to_exclude), extra_options=extra_options,
            )
        return onnx.load(target)
