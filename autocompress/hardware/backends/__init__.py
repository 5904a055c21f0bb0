"""Backends that run and time ONNX models; the only place runtime libraries are imported."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from autocompress.exceptions import ProfileError
from autocompress.hardware.backends._base import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    time_callable,
)

__all__ = ["BACKENDS", "Backend", "LatencyMeasurement", "MeasureSettings", "backend_for",
           "get_backend", "time_callable"]

BACKENDS = ("onnxruntime", "tvm")


def get_backend(name: str, *, threads: int = 1, device: str = "cpu",
                target: str | None = None, rpc: str | None = None) -> Backend:
    """The backend called ``name``, configured with ``threads`` and ``device``.

    ``target`` (an alias such as ``llvm``, ``arm``, ``cuda``, or a target JSON) and ``rpc``
    (``HOST:PORT`` of a TVM RPC server) are options of the ``tvm`` backend only.
    """
    if device not in ("cpu", "cuda"):
        raise ProfileError(f"unknown device {device!r} for {name}; use cpu or cuda")
    if name == "onnxruntime":
        from autocompress.hardware.backends.onnxruntime import OnnxRuntimeBackend

        if target is not None or rpc is not None:
            raise ProfileError(
                "target and rpc are options of the tvm backend; onnxruntime measures on this "
                "machine: drop them, or use backend 'tvm'"
            )
        return OnnxRuntimeBackend(threads=threads, device=device)  # type: ignore[arg-type]
    if name == "tvm":
        from autocompress.hardware.backends.tvm import TvmBackend, resolve_target

        if device == "cuda":
            if target is None:
                target = "cuda"
            elif resolve_target(target)["kind"] != "cuda":
                raise ProfileError(f"device 'cuda' does not fit TVM target {target!r}; drop one")
        return TvmBackend(target=target, threads=threads, rpc=rpc)
    raise ProfileError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


def backend_for(name: str, settings: Mapping[str, Any]) -> Backend:
    """The backend a profile was measured with, rebuilt from its recorded settings."""
    threads = int(settings.get("threads", 1))
    device = str(settings.get("device", "cpu"))
    if name == "tvm":
        target = settings.get("target")
        return get_backend("tvm", threads=threads, device=device,
                           target=json.dumps(target) if isinstance(target, dict) else target,
                           rpc=settings.get("rpc"))
    return get_backend(name, threads=threads, device=device)
