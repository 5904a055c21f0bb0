"""Torch-free entry points: profile a device, measure or estimate an ONNX file.

These run on a profile-only install (numpy, onnx, onnxruntime), e.g. on a small ARM board.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autocompress.exceptions import ExportError
from autocompress.hardware.backends import LatencyMeasurement, MeasureSettings, get_backend
from autocompress.hardware.profile import HardwareProfile

__all__ = ["estimate_onnx", "measure_onnx", "profile_device"]

_MEASURE = MeasureSettings(max_time_s=3.0, min_runs=100, round_runs=50)


def profile_device(out: str | Path, *, backend: str = "onnxruntime", threads: int = 1,
                   rounds: int = 2, progress: Any = None,
                   **backend_options: str | None) -> HardwareProfile:
    """Measure this device's kernels with ``backend`` and save the profile to ``out``.

    ``backend_options`` (``target``, ``rpc``) go to :func:`get_backend`; an interrupted run
    resumes from ``out`` + ``.partial``.
    """
    from autocompress.hardware.profiler import profile_backend

    options = {k: v for k, v in backend_options.items() if v is not None}
    runner = get_backend(backend, threads=threads, **options)  # type: ignore[arg-type]
    return profile_backend(runner, out, rounds=rounds, progress=progress)


def _read(onnx: str | Path) -> bytes:
    path = Path(onnx)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist")
    return path.read_bytes()


def measure_onnx(onnx: str | Path, *, backend: str = "onnxruntime", threads: int = 1,
                 rounds: int = 3, **backend_options: str | None) -> LatencyMeasurement:
    """Measure an ONNX file on a backend: the median over ``rounds`` measurement rounds."""
    options = {k: v for k, v in backend_options.items() if v is not None}
    runner = get_backend(backend, threads=threads, **options)  # type: ignore[arg-type]
    return runner.measure_many([_read(onnx)], _MEASURE, rounds=rounds)[0]


def estimate_onnx(profile: str | Path, onnx: str | Path) -> Any:
    """The raw (uncalibrated) profile estimate of an ONNX file's latency."""
    from autocompress.hardware.latency import LatencyModel

    return LatencyModel(HardwareProfile.load(profile)).estimate(_read(onnx))
