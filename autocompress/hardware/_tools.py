"""Torch-free entry points: profile a device, measure or estimate an ONNX file.

These run on a profile-only install (numpy, onnx, onnxruntime), e.g. on a small ARM board.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autocompress.exceptions import ExportError
from autocompress.hardware.backends import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    get_backend,
)
from autocompress.hardware.profile import HardwareProfile

__all__ = ["estimate_onnx", "measure_onnx", "measure_onnx_many", "profile_device"]

_MEASURE = MeasureSettings(max_time_s=3.0, min_runs=100, round_runs=50)


def profile_device(out: str | Path, *, backend: str = "onnxruntime",
                   threads: int | None = None, rounds: int = 2, progress: Any = None,
                   precisions: Sequence[str] = ("fp32",),
                   **backend_options: Any) -> HardwareProfile:
    """Measure this device's kernels with ``backend`` and save the profile to ``out``.

    ``threads`` and ``backend_options`` (``device``, ``target``, ``rpc``, ``scale``...; ``None``
    means the backend's default) go to :func:`get_backend`; ``precisions`` (e.g.
    ``("fp32", "int8")``) must be among the backend's; an interrupted run resumes from
    ``out`` + ``.partial``.
    """
    from autocompress.hardware.profiler import profile_backend

    runner = get_backend(backend, threads=threads, **backend_options)
    return profile_backend(runner, out, rounds=rounds, progress=progress,
                           precisions=precisions)


def _read(onnx: str | Path) -> bytes:
    path = Path(onnx)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist")
    return path.read_bytes()


def measure_onnx(onnx: str | Path, *, backend: str | Backend = "onnxruntime",
                 threads: int | None = None, rounds: int = 3,
                 **backend_options: Any) -> LatencyMeasurement:
    """Measure an ONNX file on a backend (a name, with options as for
    :func:`profile_device`, or a :class:`Backend`): the median over ``rounds`` measurement
    rounds."""
    if isinstance(backend, Backend):
        runner = backend
    else:
        runner = get_backend(backend, threads=threads, **backend_options)
    return runner.measure_many([_read(onnx)], _MEASURE, rounds=rounds)[0]


def measure_onnx_many(files: Sequence[str | Path], *, backend: Backend, rounds: int = 3
                      ) -> list[LatencyMeasurement]:
    """Measure several ONNX files on ``backend``, interleaved (round robin over ``rounds``
    rounds, so that slow drifts of the machine hit them alike)."""
    return backend.measure_many([_read(f) for f in files], _MEASURE, rounds=rounds)


def estimate_onnx(profile: str | Path, onnx: str | Path) -> Any:
    """The raw (uncalibrated) profile estimate of an ONNX file's latency.

    A quantized (QDQ) file is estimated as its fp32 structure with its quantized nodes in
    int8 (:func:`~autocompress.hardware._qdq.split_qdq`); the profile then needs int8
    kernels.
    """
    import onnx as onnx_lib

    from autocompress.hardware._qdq import is_qdq, split_qdq
    from autocompress.hardware.latency import LatencyModel

    model = LatencyModel(HardwareProfile.load(profile))
    data = _read(onnx)
    proto = onnx_lib.load_from_string(data)
    if is_qdq(proto):
        fp32, precisions = split_qdq(proto)
        return model.estimate(fp32, precisions)
    return model.estimate(data)
