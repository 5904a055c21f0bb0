"""Search spaces: YAML files validated on load, sampled by Optuna into candidates."""

from __future__ import annotations

from autocompress.space._candidate import CANDIDATE_FORMAT_VERSION, Candidate
from autocompress.space._space import DEFAULT_SPACE_PATH, BoundSpace, SearchSpace

__all__ = ["CANDIDATE_FORMAT_VERSION", "DEFAULT_SPACE_PATH", "BoundSpace", "Candidate",
           "SearchSpace"]
