"""A candidate: one concrete compression plan, replayable on the original model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from autocompress.exceptions import SearchSpaceError

__all__ = ["CANDIDATE_FORMAT_VERSION", "Candidate", "Importance"]

CANDIDATE_FORMAT_VERSION = 1
Importance = Literal["l1", "l2"]


def _frozen(mapping: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in mapping.items()})


@dataclass(frozen=True)
class Candidate:
    """Per-group channel keep ratios and per-layer unstructured sparsity.

    ``channel_keep`` maps the name of a dependency group's root layer (as Torch-Pruning
    finds it) to the fraction of its output channels kept; groups not named keep all.
    ``sparsity`` maps a layer name to the fraction of its weights zeroed by magnitude.
    """

    channel_keep: Mapping[str, float] = field(default_factory=dict)
    sparsity: Mapping[str, float] = field(default_factory=dict)
    importance: Importance = "l2"
    round_to: int = 1
    min_channels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_keep", _frozen(self.channel_keep))
        object.__setattr__(self, "sparsity", _frozen(self.sparsity))

    def __hash__(self) -> int:
        return hash(self.to_json())

    @property
    def is_identity(self) -> bool:
        return all(r >= 1.0 for r in self.channel_keep.values()) and all(
            s <= 0.0 for s in self.sparsity.values()
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": CANDIDATE_FORMAT_VERSION,
            "channel_keep": dict(self.channel_keep),
            "sparsity": dict(self.sparsity),
            "importance": self.importance,
            "round_to": self.round_to,
            "min_channels": self.min_channels,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        version = data.get("format_version")
        if version != CANDIDATE_FORMAT_VERSION:
            raise SearchSpaceError(
                f"candidate format_version {version!r} is not supported; this autocompress "
                f"reads version {CANDIDATE_FORMAT_VERSION}"
            )
        try:
            importance = data.get("importance", "l2")
            if importance not in ("l1", "l2"):
                raise ValueError(f"importance must be 'l1' or 'l2', got {importance!r}")
            return cls(
                channel_keep=dict(data.get("channel_keep", {})),
                sparsity=dict(data.get("sparsity", {})),
                importance=importance,
                round_to=int(data.get("round_to", 1)),
                min_channels=int(data.get("min_channels", 1)),
            )
        except (TypeError, ValueError) as exc:
            raise SearchSpaceError(f"malformed candidate: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SearchSpaceError(f"candidate is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SearchSpaceError("candidate JSON must be an object")
        if "config" in data and isinstance(data["config"], dict):  # an exported candidate.json
            data = data["config"]
        return cls.from_dict(data)
