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
    from autocompress.study import (
        ParetoFront,
        PickResult,
        SearchConfig,
        load_front,
        pick,
        profile_device,
        search,
    )

__all__ = ["AutocompressError", "ParetoFront", "PickResult", "SearchConfig", "__version__",
           "load_front", "pick", "profile_device", "search"]

_LAZY = {"ParetoFront", "PickResult", "SearchConfig", "load_front", "pick", "profile_device",
         "search"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from autocompress import study

        value = getattr(study, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
