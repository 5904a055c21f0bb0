"""Where autocompress caches trained baselines and local device profiles."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """``$AUTOCOMPRESS_CACHE_DIR`` or ``~/.cache/autocompress`` (``$XDG_CACHE_HOME`` honoured),
    with ``parts`` appended; created on demand."""
    root = os.environ.get("AUTOCOMPRESS_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "autocompress"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
