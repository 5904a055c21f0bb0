"""A candidate: one concrete compression plan, replayable on the original model."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from autocompress.exceptions import SearchSpaceError

# Numeric precisions a layer can run at; which of them a device runs is the backend's say.
from autocompress.hardware.kernels import PRECISIONS, Precision

if TYPE_CHECKING:
    from autocompress.space._students import StudentPlan

__all__ = ["CANDIDATE_FORMAT_VERSION", "DATA_IMPORTANCES", "EVERY", "IMPORTANCES", "PRECISIONS",
           "SCHEDULES", "Candidate", "ChannelPruning", "Depth", "Importance", "LowRank",
           "Schedule",
           "ScheduleKind",
           "Precision", "Quantization", "QuantizationMethod", "Sparsity", "Student",
           "TransformConfig"]

CANDIDATE_FORMAT_VERSION = 1
Importance = Literal["l1", "l2", "taylor", "obd", "activation"]
#: Channel importance criteria: L1/L2 weight magnitude, first-order Taylor (|weight x
#: gradient|), Optimal Brain Damage (weight^2 x diagonal Fisher estimate of the Hessian) and
#: activation (mean activation after a ReLU); the last three need statistics of the model on
#: a few training samples.
IMPORTANCES: tuple[str, ...] = ("l1", "l2", "taylor", "obd", "activation")
#: Criteria that need statistics of the model on training samples
#: (:class:`autocompress.transforms.GradientStatistics`).
DATA_IMPORTANCES: tuple[str, ...] = ("taylor", "obd", "activation")
#: How a quantized candidate gets its accuracy back: post-training calibration only, or a
#: quantization-aware finetune (fake quantization, straight-through estimator) first.
QuantizationMethod = Literal["ptq", "qat"]
ScheduleKind = Literal["oneshot", "polynomial"]
#: How pruning reaches its targets: all at once before training, or step by step during it.
SCHEDULES: tuple[str, ...] = ("oneshot", "polynomial")


@dataclass(frozen=True)
class Schedule:
    """When channel pruning and sparsity reach their targets during training.

    ``oneshot``: everything is pruned before training starts. ``polynomial``: pruning starts
    at ``begin`` and ends at ``end`` (fractions of the training steps) in ``stages`` pruning
    steps spread evenly between them, each layer's (or channel group's) pruned share
    following TF Model Optimization's ``PolynomialDecay``:
    ``s(t) = s_f + (s_i - s_f) * (1 - (t - t_b) / (t_e - t_b)) ** power``, from ``s_i``
    (``initial_sparsity``, at most the layer's own target ``s_f``) at step ``t_b`` to ``s_f``
    at step ``t_e``; nothing is pruned before ``t_b``. The training steps are those of the
    finetune (or distillation): a schedule adds none.
    """

    kind: ScheduleKind = "oneshot"
    stages: int = 4
    power: float = 3.0
    begin: float = 0.0
    end: float = 0.5
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise SearchSpaceError(f"schedule kind must be one of {', '.join(SCHEDULES)}, got "
                                   f"{self.kind!r}")
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise SearchSpaceError(f"schedule stages must be a positive integer, got "
                                   f"{self.stages!r}")
        if not 0.0 <= self.begin <= self.end <= 1.0:
            raise SearchSpaceError(f"schedule begin and end are fractions of the training "
                                   f"steps with 0 <= begin <= end <= 1, got {self.begin!r} and "
                                   f"{self.end!r}")
        if not self.power > 0.0:
            raise SearchSpaceError(f"schedule power must be positive, got {self.power!r}")
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise SearchSpaceError(f"schedule initial_sparsity must lie in [0, 1), got "
                                   f"{self.initial_sparsity!r}")

    @property
    def gradual(self) -> bool:
        return self.kind != "oneshot"

    def steps(self, total: int) -> tuple[int, int]:
        """The begin and end steps for ``total`` training steps."""
        return round(self.begin * total), round(self.end * total)

    def pruning_steps(self, total: int) -> tuple[int, ...]:
        """The steps (optimizer steps done) at which pruning advances: ``stages`` steps
        spread evenly from the begin step to the end step."""
        begin, end = self.steps(total)
        if self.stages == 1 or begin == end:
            return (end,)
        return tuple(sorted({round(begin + i * (end - begin) / (self.stages - 1))
                             for i in range(self.stages)}))

    def sparsity(self, final: float, step: int, total: int) -> float:
        """The pruned share at ``step`` (optimizer steps done) of a target pruned to
        ``final``: its value at the last pruning step at or before ``step``."""
        if not self.gradual:
            return final
        done = [s for s in self.pruning_steps(total) if s <= step]
        if not done:
            return 0.0
        return self.sparsity_at(final, done[-1], total)

    def sparsity_at(self, final: float, step: int, total: int) -> float:
        """The polynomial decay itself at ``step`` (0 before the begin step)."""
        begin, end = self.steps(total)
        if step < begin:
            return 0.0
        if step >= end:
            return final
        initial = min(self.initial_sparsity, final)
        progress = (step - begin) / (end - begin)
        return final + (initial - final) * (1.0 - progress) ** self.power

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "stages": self.stages, "power": self.power,
                "begin": self.begin, "end": self.end,
                "initial_sparsity": self.initial_sparsity}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        unknown = sorted(set(data) - {"kind", "stages", "power", "begin", "end",
                                      "initial_sparsity"})
        if unknown:
            raise SearchSpaceError(f"schedule: unknown keys {unknown}")
        try:
            return cls(kind=data.get("kind", "oneshot"), stages=int(data.get("stages", 4)),
                       power=float(data.get("power", 3.0)), begin=float(data.get("begin", 0.0)),
                       end=float(data.get("end", 0.5)),
                       initial_sparsity=float(data.get("initial_sparsity", 0.0)))
        except (TypeError, ValueError) as exc:
            raise SearchSpaceError(f"malformed schedule: {exc}") from exc


#: A name in ``channel_keep`` or ``precision`` that stands for every group or layer.
EVERY = "*"


def _frozen(mapping: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in mapping.items()})


# ----------------------------------------------------------------- one config per transform

@dataclass(frozen=True)
class Student:
    """Replace the model by a freshly built student, trained by distillation from it."""

    plan: StudentPlan


@dataclass(frozen=True)
class Depth:
    """Drop the residual branches of the blocks named in ``drop`` (each block's output
    becomes its input; see :mod:`autocompress.transforms._depth`)."""

    drop: tuple[str, ...]


@dataclass(frozen=True)
class ChannelPruning:
    """Keep ``keep[group]`` of each dependency group's output channels (groups not named keep
    all), ranked by ``importance``, rounded to multiples of ``round_to``."""

    keep: Mapping[str, float]
    importance: Importance = "l2"
    round_to: int = 1
    min_channels: int = 1
    schedule: Schedule = Schedule()


@dataclass(frozen=True)
class LowRank:
    """Replace each named Conv2d/Linear by two smaller layers from the truncated SVD of its
    weight, at the rank ratio ``ranks[layer]`` in (0, 1] of its full rank (layers not named,
    or at 1.0, stay whole)."""

    ranks: Mapping[str, float]


@dataclass(frozen=True)
class Sparsity:
    """Zero the smallest-magnitude fraction ``amounts[layer]`` of each named layer's weight,
    and keep it zero while the model trains (reached as ``schedule`` says)."""

    amounts: Mapping[str, float]
    schedule: Schedule = Schedule()


@dataclass(frozen=True)
class Quantization:
    """Run each named layer at ``precision[layer]`` (others fp32); ``method`` says how
    quantized layers regain accuracy (``ptq``: calibration only; ``qat``: fake-quantized
    finetune first)."""

    precision: Mapping[str, str]
    method: QuantizationMethod = "ptq"


TransformConfig = Student | Depth | ChannelPruning | LowRank | Sparsity | Quantization


@dataclass(frozen=True)
class Candidate:
    """One plan: a compression of the original model, or a student distilled from it.

    ``channel_keep`` maps the name of a dependency group's root layer (as Torch-Pruning
    finds it) to the fraction of its output channels kept; groups not named keep all.
    ``sparsity`` maps a layer name to the fraction of its weights zeroed by magnitude.
    ``rank`` maps a Conv2d/Linear layer name to the rank ratio in (0, 1] it is factorized at
    (two layers from a truncated SVD; layers not named, or at 1.0, stay whole).
    ``precision`` maps a layer name to ``fp32``, ``fp16`` or ``int8`` (layers not named stay
    fp32); ``quantization`` says how quantized layers regain accuracy.
    ``student``, when set, is a :class:`~autocompress.space.StudentPlan` (family spec and
    distillation settings): the candidate is that student trained by distillation from the
    original model instead of a compression of it.
    ``depth`` maps the name of a residual block (see
    :func:`autocompress.transforms.find_residual_blocks`) to 1.0 (kept) or 0.0 (its branch
    dropped); blocks not named are kept. Names of layers and groups inside a dropped block
    are ignored by the other transforms.

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
    rank: Mapping[str, float] = field(default_factory=dict)
    schedule: Schedule = field(default_factory=Schedule)
    depth: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_keep", _frozen(self.channel_keep))
        object.__setattr__(self, "depth", _frozen(self.depth))
        bad = sorted(k for k, v in self.depth.items() if v not in (0.0, 1.0))
        if bad:
            raise SearchSpaceError(f"depth values are 1 (block kept) or 0 (dropped); blocks "
                                   f"{bad[:5]} have {[self.depth[k] for k in bad[:5]]}")
        if self.dropped_blocks and self.student is not None:
            raise SearchSpaceError("a student candidate cannot also drop residual blocks: "
                                   "choose its depth in the student's spec")
        object.__setattr__(self, "sparsity", _frozen(self.sparsity))
        object.__setattr__(self, "rank", _frozen(self.rank))
        bad = sorted(k for k, v in self.rank.items() if not 0.0 < v <= 1.0)
        if bad:
            raise SearchSpaceError(f"rank ratios must lie in (0, 1]; layers {bad[:5]} have "
                                   f"{[self.rank[k] for k in bad[:5]]}")
        unknown = sorted({str(p) for p in self.precision.values()} - set(PRECISIONS))
        if unknown:
            raise SearchSpaceError(f"unknown precision(s) {unknown}; known: {list(PRECISIONS)}")
        if self.quantization not in ("ptq", "qat"):
            raise SearchSpaceError(
                f"quantization must be 'ptq' or 'qat', got {self.quantization!r}")
        object.__setattr__(self, "precision", MappingProxyType(
            {str(k): str(v) for k, v in self.precision.items()}))
        if self.schedule.gradual and (self.quantization == "qat" and self.quantized_layers
                                      or any(r < 1.0 for r in self.rank.values())):
            raise SearchSpaceError(
                "a gradual pruning schedule cannot be combined with quantization-aware "
                "training or low-rank factorization yet: both change the layers the "
                "schedule prunes during training; use schedule kind 'oneshot' with them")
        if self.student is not None and not hasattr(self.student, "distill"):
            raise SearchSpaceError(
                f"a candidate's student must be a StudentPlan, not {type(self.student).__name__}"
                "; rebuild it with StudentPlan.from_dict(...)")

    def __hash__(self) -> int:
        return hash(self.to_json())

    def transforms(self) -> tuple[TransformConfig, ...]:
        """The plan as typed transform configs, in the order they apply: the student (if any)
        replaces the model, residual branches are dropped, then channels are pruned, layers
        are factorized (low rank, on the pruned shapes), sparsity is attached for training,
        and layers are quantized at export."""
        found: list[TransformConfig] = []
        if self.student is not None:
            found.append(Student(self.student))
        if self.dropped_blocks:
            found.append(Depth(self.dropped_blocks))
        if any(r < 1.0 for r in self.channel_keep.values()):
            found.append(ChannelPruning(self.channel_keep, self.importance, self.round_to,
                                        self.min_channels, self.schedule))
        if any(r < 1.0 for r in self.rank.values()):
            found.append(LowRank(self.rank))
        if any(a > 0.0 for a in self.sparsity.values()):
            found.append(Sparsity(self.sparsity, self.schedule))
        if self.quantized_layers:
            found.append(Quantization(self.precision, self.quantization))
        return tuple(found)

    @property
    def dropped_blocks(self) -> tuple[str, ...]:
        """The residual blocks whose branch this candidate drops."""
        return tuple(name for name, keep in self.depth.items() if keep < 1.0)

    @property
    def unresolved(self) -> bool:
        """Whether ``channel_keep`` or ``precision`` name every group or layer with
        :data:`EVERY` (a student's compression: its names are known once it is built)."""
        return EVERY in self.channel_keep or EVERY in self.precision

    def resolved(self, groups: Sequence[str], layers: Sequence[str]) -> Candidate:
        """This candidate with :data:`EVERY` replaced by the names of ``groups`` (channel
        groups) and ``layers`` (Conv2d/Linear layers) of the network it compresses."""
        keep = dict(self.channel_keep)
        if EVERY in keep:
            ratio = keep.pop(EVERY)
            keep.update({g: ratio for g in groups if g not in keep})
        precision = dict(self.precision)
        if EVERY in precision:
            chosen = precision.pop(EVERY)
            precision.update({layer: chosen for layer in layers if layer not in precision})
        return replace(self, channel_keep=keep, precision=precision)

    @property
    def combines(self) -> str:
        """What the candidate combines, in application order: ``student`` (distilled),
        ``depth``, ``channels``, ``lowrank``, ``sparsity``, ``bits`` (int8/fp16 layers);
        ``none``."""
        names = {Student: "student", Depth: "depth", ChannelPruning: "channels",
                 LowRank: "lowrank", Sparsity: "sparsity", Quantization: "bits"}
        return "+".join(names[type(c)] for c in self.transforms()) or "none"

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
        return (self.student is None and not self.quantized_layers and not self.dropped_blocks
                and all(r >= 1.0 for r in self.channel_keep.values())
                and all(s <= 0.0 for s in self.sparsity.values())
                and all(r >= 1.0 for r in self.rank.values()))

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
        if self.rank:  # only when set: candidates without it keep their JSON (and hash)
            out["rank"] = dict(self.rank)
        if self.schedule != Schedule():  # likewise
            out["schedule"] = self.schedule.to_dict()
        if self.depth:  # likewise
            out["depth"] = dict(self.depth)
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
                rank=dict(data.get("rank", {})),
                schedule=Schedule.from_dict(data.get("schedule", {})),
                depth=dict(data.get("depth", {})),
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
