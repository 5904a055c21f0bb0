"""Where autocompress caches trained baselines, local device profiles and TVM tuning records
(:func:`autocompress._io.cache_dir`)."""

from __future__ import annotations

from autocompress._io import cache_dir

__all__ = ["cache_dir"]
