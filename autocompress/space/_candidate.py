"""A candidate: one concrete compression plan, replayable on the original model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from autocompress.exceptions import SearchSpaceError

# Numeric precisions a layer can run at; which of them a device runs is the backend's say.
from autocompress.hardware.kernels import PRECISIONS, Precision

if TYPE_CHECKING:
    from autocompress.space._students import StudentPlan

__all__ = ["CANDIDATE_FORMAT_VERSION", "GRADIENT_IMPORTANCES", "IMPORTANCES", "PRECISIONS",
           "Candidate", "ChannelPruning", "Importance",
           "Precision", "Quantization", "QuantizationMethod", "Sparsity", "Student",
           "TransformConfig"]

CANDIDATE_FORMAT_VERSION = 1
Importance = Literal["l1", "l2", "taylor", "obd"]
#: Channel importance criteria: L1/L2 weight magnitude, first-order Taylor (|weight x
#: gradient|) and Optimal Brain Damage (weight^2 x diagonal Fisher estimate of the Hessian);
#: the last two need gradient statistics from a few training samples.
IMPORTANCES: tuple[str, ...] = ("l1", "l2", "taylor", "obd")
#: Criteria that need gradient statistics (:class:`autocompress.transforms.GradientStatistics`).
GRADIENT_IMPORTANCES: tuple[str, ...] = ("taylor", "obd")
#: How a quantized candidate gets its accuracy back: post-training calibration only, or a
#: quantization-aware finetune (fake quantization, straight-through estimator) first.
QuantizationMethod = Literal["ptq", "qat"]


def _frozen(mapping: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in mapping.items()})


# ----------------------------------------------------------------- one config per transform

@dataclass(frozen=True)
class Student:
    """Replace the model by a freshly built student, trained by distillation from it."""

    plan: StudentPlan


@dataclass(frozen=True)
class ChannelPruning:
    """Keep ``keep[group]`` of each dependency group's output channels (groups not named keep
    all), ranked by ``importance``, rounded to multiples of ``round_to``."""

    keep: Mapping[str, float]
    importance: Importance = "l2"
    round_to: int = 1
    min_channels: int = 1


@dataclass(frozen=True)
class Sparsity:
    """Zero the smallest-magnitude fraction ``amounts[layer]`` of each named layer's weight,
    and keep it zero while the model trains."""

    amounts: Mapping[str, float]


@dataclass(frozen=True)
class Quantization:
    """Run each named layer at ``precision[layer]`` (others fp32); ``method`` says how
    quantized layers regain accuracy (``ptq``: calibration only; ``qat``: fake-quantized
    finetune first)."""

    precision: Mapping[str, str]
    method: QuantizationMethod = "ptq"


TransformConfig = Student | ChannelPruning | Sparsity | Quantization


@dataclass(frozen=True)
class Candidate:
    """One plan: a compression of the original model, or a student distilled from it.

    ``channel_keep`` maps the name of a dependency group's root layer (as Torch-Pruning
    finds it) to the fraction of its output channels kept; groups not named keep all.
    ``sparsity`` maps a layer name to the fraction of its weights zeroed by magnitude.
    ``precision`` maps a layer name to ``fp32``, ``fp16`` or ``int8`` (layers not named stay
    fp32); ``quantization`` says how quantized layers regain accuracy.
    ``student``, when set, is a :class:`~autocompress.space.StudentPlan` (family spec and
    distillation settings): the candidate is that student trained by distillation from the
    original model instead of a compression of it.

    :meth:`transforms` lists the plan as one typed config per transform, in the order the
    pipeline (:func:`autocompress.transforms.compress`) applies them.
    """

    channel_keep: Mapping[str, float] = field(default_factory=dict)
    sparsity: Mapping[str, float] = field(default_factory=dict)
    importance: Importance = "l2"
    round_to: int = 1
    min_channels: int = 1
    precision: Mapping[str, str] = field(default_factory=dict)
    quantization: QuantizationMethod = "ptq"
    student: StudentPlan | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_keep", _frozen(self.channel_keep))
        object.__setattr__(self, "sparsity", _frozen(self.sparsity))
        unknown = sorted({str(p) for p in self.precision.values()} - set(PRECISIONS))
        if unknown:
            raise SearchSpaceError(f"unknown precision(s) {unknown}; known: {list(PRECISIONS)}")
        if self.quantization not in ("ptq", "qat"):
            raise SearchSpaceError(
                f"quantization must be 'ptq' or 'qat', got {self.quantization!r}")
        object.__setattr__(self, "precision", MappingProxyType(
            {str(k): str(v) for k, v in self.precision.items()}))
        if self.student is not None and not hasattr(self.student, "distill"):
            raise SearchSpaceError(
                f"a candidate's student must be a StudentPlan, not {type(self.student).__name__}"
                "; rebuild it with StudentPlan.from_dict(...)")

    def __hash__(self) -> int:
        return hash(self.to_json())

    def transforms(self) -> tuple[TransformConfig, ...]:
        """The plan as typed transform configs, in the order they apply: the student (if any)
        replaces the model, then channels are pruned, sparsity is attached for training, and
        layers are quantized at export."""
        found: list[TransformConfig] = []
        if self.student is not None:
            found.append(Student(self.student))
        if any(r < 1.0 for r in self.channel_keep.values()):
            found.append(ChannelPruning(self.channel_keep, self.importance, self.round_to,
                                        self.min_channels))
        if any(a > 0.0 for a in self.sparsity.values()):
            found.append(Sparsity(self.sparsity))
        if self.quantized_layers:
            found.append(Quantization(self.precision, self.quantization))
        return tuple(found)

    @property
    def kind(self) -> Literal["compressed", "student"]:
        return "student" if self.student is not None else "compressed"

    @property
    def quantized_layers(self) -> dict[str, str]:
        """Layers that do not run in fp32, with their precision."""
        return {k: v for k, v in self.precision.items() if v != "fp32"}

    @property
    def precision_summary(self) -> str:
        """``fp32``, ``int8``, ``fp16`` when every named layer has that precision, else
        ``mixed``."""
        kinds = set(self.precision.values()) or {"fp32"}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def is_identity(self) -> bool:
        return (self.student is None and not self.quantized_layers
                and all(r >= 1.0 for r in self.channel_keep.values())
                and all(s <= 0.0 for s in self.sparsity.values()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": CANDIDATE_FORMAT_VERSION,
            "channel_keep": dict(self.channel_keep),
            "sparsity": dict(self.sparsity),
            "importance": self.importance,
            "round_to": self.round_to,
            "min_channels": self.min_channels,
            "precision": dict(self.precision),
            "quantization": self.quantization,
        }
        if self.student is not None:
            out["student"] = self.student.to_dict()
        return out

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
            if importance not in IMPORTANCES:
                raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got "
                                 f"{importance!r}")
            student = data.get("student")
            if student is not None:
                from autocompress.space._students import StudentPlan

                student = StudentPlan.from_dict(student)
            return cls(
                channel_keep=dict(data.get("channel_keep", {})),
                sparsity=dict(data.get("sparsity", {})),
                importance=importance,
                round_to=int(data.get("round_to", 1)),
                min_channels=int(data.get("min_channels", 1)),
                precision=dict(data.get("precision", {})),
                quantization=data.get("quantization", "ptq"),
                student=student,
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
