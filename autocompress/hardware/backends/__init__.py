"""Backends that run and time ONNX models; the only place runtime libraries are imported.

Backends register themselves by name (:func:`register_backend`); :func:`get_backend` builds
one from its options and :func:`backend_for` from a profile's recorded settings. Importing
this package imports the built-in backends' modules, never their runtime libraries.
"""

from __future__ import annotations

from autocompress.hardware.backends import onnxruntime as _onnxruntime  # noqa: F401
from autocompress.hardware.backends import synthetic as _synthetic  # noqa: F401
from autocompress.hardware.backends import tvm as _tvm  # noqa: F401
from autocompress.hardware.backends._base import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    median_of_rounds,
    run_in_batches,
    time_callable,
)
from autocompress.hardware.backends._registry import (
    available_backends,
    backend_class,
    backend_for,
    get_backend,
    is_local,
    register_backend,
    rules_for,
)

__all__ = ["BACKENDS", "Backend", "LatencyMeasurement", "MeasureSettings",
           "available_backends", "backend_class", "backend_for", "get_backend", "is_local",
           "median_of_rounds", "register_backend", "rules_for", "run_in_batches",
           "time_callable"]


def __getattr__(name: str) -> tuple[str, ...]:
    # BACKENDS is read from the registry each time, so it includes backends registered
    # after this package was imported.
    if name == "BACKENDS":
        return available_backends()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
