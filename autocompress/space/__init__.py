"""Search spaces: YAML files validated on load, sampled by Optuna into candidates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autocompress.space._candidate import (
    CANDIDATE_FORMAT_VERSION,
    Candidate,
    ChannelPruning,
    Depth,
    LowRank,
    Quantization,
    Schedule,
    Sparsity,
    Student,
    TransformConfig,
)
from autocompress.space._space import DEFAULT_SPACE_PATH, BoundSpace, SearchSpace

if TYPE_CHECKING:
    from autocompress.space._students import StudentPlan

__all__ = ["CANDIDATE_FORMAT_VERSION", "DEFAULT_SPACE_PATH", "BoundSpace", "Candidate",
           "ChannelPruning", "Depth", "LowRank", "Quantization", "Schedule", "SearchSpace",
           "Sparsity", "Student", "StudentPlan", "TransformConfig"]


def __getattr__(name: str) -> Any:
    if name == "StudentPlan":  # its module builds student networks: torch loads on first use
        from autocompress.space._students import StudentPlan

        return StudentPlan
    raise AttributeError(f"module 'autocompress.space' has no attribute {name!r}")
