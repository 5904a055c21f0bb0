"""Backends that run and time ONNX models; the only place runtime libraries are imported."""

from __future__ import annotations

from autocompress.exceptions import ProfileError
from autocompress.hardware.backends._base import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    time_callable,
)

__all__ = ["BACKENDS", "Backend", "LatencyMeasurement", "MeasureSettings", "get_backend",
           "time_callable"]

BACKENDS = ("onnxruntime",)


def get_backend(name: str, *, threads: int = 1, device: str = "cpu") -> Backend:
    """The backend called ``name``, configured with ``threads`` and ``device``."""
    if name == "onnxruntime":
        from autocompress.hardware.backends.onnxruntime import OnnxRuntimeBackend

        if device not in ("cpu", "cuda"):
            raise ProfileError(f"unknown device {device!r} for onnxruntime; use cpu or cuda")
        return OnnxRuntimeBackend(threads=threads, device=device)  # type: ignore[arg-type]
    raise ProfileError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
