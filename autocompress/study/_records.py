"""Typed, versioned records of a search: one :class:`TrialRecord` per trial (kept in the
Optuna study as one user attribute), and :class:`RunInfo`, the run's ``run.json``.

The objective writes a trial's record once; the front, ``pick``, the report and the
benchmarks read it back with :meth:`TrialRecord.of`. Records of another format version are
refused with a message that says what to do.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from autocompress._records import RecordError, fields_to_jsonable, from_jsonable
from autocompress._version import __version__
from autocompress.data._preprocess import DataRecord
from autocompress.exceptions import RunError, SearchSpaceError
from autocompress.hardware import LatencyMeasurement, LatencyModel
from autocompress.space import Candidate

__all__ = ["RECORD_ATTR", "RUN_FORMAT_VERSION", "TRIAL_RECORD_VERSION", "AllocationRecord",
           "BaselineRecord",
           "Budget", "Calibration", "CalibrationPoint", "ProfileRef", "RunIdentity",
           "RunInfo", "TrialRecord"]

#: The Optuna user attribute that holds a trial's record.
RECORD_ATTR = "record"
TRIAL_RECORD_VERSION = 1
RUN_FORMAT_VERSION = 2

LatencySource = Literal["estimate", "measured"]
AccuracySource = Literal["torch", "onnxruntime"]


@dataclass(frozen=True)
class TrialRecord:
    """Everything the search learnt about one candidate.

    ``estimated_latency_ms`` is the (calibrated) profile estimate; ``latency_ms`` is what
    the budget was checked against: the estimate, or a measurement on this machine when the
    estimate was near the budget (``latency_source``). A candidate over the budget is not
    trained (``finetuned`` is false) and its accuracy is that of the untrained network.
    """

    candidate: Candidate
    channels: Mapping[str, tuple[int, int]]
    estimated_latency_ms: float
    latency_ms: float
    latency_std_ms: float
    latency_source: LatencySource
    finetuned: bool
    accuracy: float
    accuracy_source: AccuracySource
    finetune_steps: int
    sparsity: float
    params: int
    nonzero_params: int
    flops: int
    size_bytes: int
    compressed_size_bytes: int
    seconds: float
    artifact: str | None = None
    float_accuracy: float | None = None
    stopped_early: bool | None = None
    #: adaptive-BatchNorm accuracy before training (within the budget only)
    screening_score: float | None = None
    format_version: int = TRIAL_RECORD_VERSION

    @property
    def kind(self) -> str:
        return self.candidate.kind

    @property
    def precision(self) -> str:
        return self.candidate.precision_summary

    @property
    def family(self) -> str:
        """A student's family and distillation, e.g. ``cifar_resnet d(1,1,1) ... kl T4``."""
        return self.candidate.student.describe() if self.candidate.student else ""

    def to_dict(self) -> dict[str, Any]:
        return fields_to_jsonable(self)

    @classmethod
    def from_dict(cls, data: Any) -> TrialRecord:
        version = data.get("format_version") if isinstance(data, Mapping) else None
        if version != TRIAL_RECORD_VERSION:
            raise RunError(
                f"a trial record has format_version {version!r}; this autocompress reads "
                f"{TRIAL_RECORD_VERSION}. The run was written by another autocompress version: "
                f"read it with that version, or search again into a new --out folder")
        try:
            return from_jsonable(cls, data)
        except (RecordError, SearchSpaceError) as exc:
            raise RunError(f"malformed trial record: {exc}") from exc

    def save(self, trial: optuna.Trial) -> None:
        """Write the record into ``trial`` (one user attribute)."""
        trial.set_user_attr(RECORD_ATTR, self.to_dict())

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord | None:
        """The record of ``trial``; ``None`` when it has none (failed, or still running).

        Raises:
            RunError: the trial was recorded by an autocompress whose records this one cannot
                read (the message says what to do).
        """
        data = trial.user_attrs.get(RECORD_ATTR)
        if data is None:
            if "accuracy" in trial.user_attrs:  # written before records were versioned
                raise RunError(
                    f"trial {trial.number} was recorded by autocompress 0.1 (no versioned "
                    "record); read the run with autocompress 0.1, or search again into a new "
                    "--out folder")
            return None
        return cls.from_dict(data)


# ------------------------------------------------------------------------------- run.json

@dataclass(frozen=True)
class RunIdentity:
    """The settings a resumed run (or another worker) must share with the run it joins."""

    model: str
    data: str
    finetune_steps: int
    finetune_lr: float
    batch_size: int
    seed: int
    threads: int
    study: str
    calibrate: bool
    sampler: str
    input_shape: tuple[int, ...] | None
    space_sha256: str
    profile_sha256: str
    checkpoint_sha256: str | None
    augmentation: str = "none"
    screen: int | None = 0
    objectives: tuple[str, ...] = ("accuracy", "latency")
    allocate: bool = False
    #: how finetunes learned (:data:`~autocompress.study._config.FINETUNE_DISTILL`)
    finetune_distill: str = "none"
    #: separate validation data (None: a share of ``data``) and the preprocessing settings
    val_data: str | None = None
    normalize: str = "dataset"
    resize: int | None = None
    center_crop: tuple[int, int] | None = None
    embed_preprocessing: bool = False
    #: seed of the train/validation split (None: ``seed``)
    split_seed: int | None = None
    #: arithmetic of the finetunes (:data:`~autocompress.evaluation.TRAIN_PRECISIONS`)
    train_precision: str = "fp32"

    @property
    def data_seed(self) -> int:
        """The seed the train/validation split was drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    def differences(self, other: RunIdentity) -> list[str]:
        """``name: old -> new`` for every setting that differs."""
        return [f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}"
                for name in self.__dataclass_fields__
                if getattr(self, name) != getattr(other, name)]


@dataclass(frozen=True)
class CalibrationPoint:
    keep_ratio: float
    estimate_ms: float
    measured_ms: float
    #: the precision every layer of the copy ran at
    precision: str = "fp32"


@dataclass(frozen=True)
class Calibration:
    """``measured = offset_ms + scale * estimate``, fitted on measured reference models:
    uniformly pruned copies of the baseline (``source`` "model", a search on the profiled
    machine) or the profile's device calibration (``source`` "device": reference models
    measured on a device the search cannot reach); identity when not ``applied``.
    ``precision_scales`` and ``precision_node_ms``: a factor on the time of the nodes in each
    other precision (int8) and a time added per such node, fitted on copies measured at that
    precision (see :meth:`~autocompress.hardware.LatencyModel.calibrated`)."""

    scale: float = 1.0
    offset_ms: float = 0.0
    applied: bool = False
    points: tuple[CalibrationPoint, ...] = ()
    raw_estimate_ms: float | None = None
    source: str = ""
    precision_scales: Mapping[str, float] = field(default_factory=dict)
    precision_node_ms: Mapping[str, float] = field(default_factory=dict)

    def describe_precisions(self) -> str:
        """``"; int8 nodes x 0.620 + 0.0040 ms each"`` for each precision's terms (``""``
        when none)."""
        return "".join(f"; {p} nodes x {self.precision_scales.get(p, 1.0):.3f} + "
                       f"{self.precision_node_ms.get(p, 0.0):.4f} ms each"
                       for p in sorted({*self.precision_scales, *self.precision_node_ms}))

    def at_speed(self, ratio: float) -> Calibration:
        """This calibration for the machine running ``ratio`` times as long as when it was
        fitted: every estimate ``ratio`` times its own (scale and offset scaled; the
        precision terms lie inside what the scale maps)."""
        return dataclasses.replace(self, scale=self.scale * ratio,
                                   offset_ms=self.offset_ms * ratio)

    def apply(self, raw: LatencyModel) -> LatencyModel:
        """``raw`` (the profile's uncalibrated model) with this calibration."""
        return raw.calibrated(self.scale, self.offset_ms, self.precision_scales,
                              self.precision_node_ms)


@dataclass(frozen=True)
class Budget:
    latency_ms: float
    source: str          # "given", or how it was derived from the baseline


@dataclass(frozen=True)
class BaselineRecord:
    """The model the search compresses: its accuracy, latency and size."""

    accuracy: float
    source: str
    latency_ms: float
    latency_source: LatencySource
    predicted_latency_ms: float
    params: int
    nonzero_params: int
    flops: int
    size_bytes: int
    compressed_size_bytes: int
    measured_latency: LatencyMeasurement | None = None


@dataclass(frozen=True)
class ProfileRef:
    source: str
    describe: str
    local: bool


@dataclass(frozen=True)
class AllocationRecord:
    """The latency-aware allocation: keep ratio per group, its estimated latency, the
    sensitivity it came from (score and latency per group and keep ratio) and the precision
    its layers run at."""

    keep: Mapping[str, float]
    params: Mapping[str, float]
    latency_ms: float
    predicted_loss: float
    sensitivity: Mapping[str, Mapping[str, tuple[float, float | None]]]
    seconds: float
    #: the precision of every layer (where the space offers it) the allocation started from
    precision: str = "fp32"


@dataclass(frozen=True)
class RunInfo:
    """``run.json``: what a search was, and what it settled before its first trial."""

    identity: RunIdentity
    model: str
    data: str
    input_shape: tuple[int, ...]
    num_classes: int
    study: str
    trials: int
    space: str
    profile: ProfileRef
    calibration: Calibration
    budget: Budget
    baseline: BaselineRecord
    fastest_estimate_ms: float
    #: the latency-aware allocation seeded into the search (None: not computed)
    allocation: AllocationRecord | None = None
    checkpoint: str | None = None
    storage: str | None = None
    #: where training and validation samples come from, and the preprocessing (resolved:
    #: the numbers ``dataset`` normalization came to); None in runs written before it was recorded
    data_record: DataRecord | None = None
    format_version: int = RUN_FORMAT_VERSION
    autocompress_version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(
        timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return fields_to_jsonable(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "run.json") -> RunInfo:
        """Read a run's record; another format version is refused with what to do.

        Raises:
            RunError: another format version, or a malformed record.
        """
        data = data if isinstance(data, Mapping) else {}
        version = data.get("format_version")
        if version != RUN_FORMAT_VERSION:
            raise RunError(
                f"{where} has run format_version {version!r}; this autocompress reads "
                f"{RUN_FORMAT_VERSION}. Read that run with the autocompress version that wrote "
                f"it ({data.get('autocompress_version', 'unknown')}), or search again into a "
                "new --out folder")
        try:
            return from_jsonable(cls, data, where)
        except RecordError as exc:
            raise RunError(f"{where} is malformed: {exc}") from exc
