"""autocompress: hardware-aware automated neural-network compression.

The public API mirrors the command line::

    import autocompress
    front = autocompress.search(autocompress.SearchConfig(model="resnet20", data="mnist"))
    front.to_frame()                       # pandas DataFrame of the Pareto front
    best = front.pick(latency_budget_ms=0.5)

Heavy modules (torch, optuna, onnxruntime) load on first use, not on ``import autocompress``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autocompress._version import __version__
from autocompress.exceptions import AutocompressError

if TYPE_CHECKING:
    from autocompress.hardware._tools import estimate_onnx, measure_onnx, profile_device
    from autocompress.study import (
        ParetoFront,
        PickResult,
        SearchConfig,
        estimate_latency,
        load_front,
        pick,
        search,
    )

__all__ = ["AutocompressError", "ParetoFront", "PickResult", "SearchConfig", "__version__",
           "estimate_latency", "estimate_onnx", "load_front", "measure_onnx", "pick",
           "profile_device", "search"]

_LAZY_STUDY = {"ParetoFront", "PickResult", "SearchConfig", "estimate_latency", "load_front",
               "pick", "search"}
_LAZY_HARDWARE = {"estimate_onnx", "measure_onnx", "profile_device"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_STUDY | _LAZY_HARDWARE:
        if name in _LAZY_STUDY:
            from autocompress import study as source
        else:
            from autocompress.hardware import _tools as source
        value = getattr(source, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
