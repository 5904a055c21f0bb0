"""The ``students:`` section of a search space: student architectures and how they learn.

::

    students:
      families:
        - family: cifar_resnet
          depths: {choices: [1, 2, 3]}        # sampled per stage (or depths_by_stage: [..x3])
          widths: {choices: [8, 16, 24, 32]}  # sampled per stage (or widths_by_stage: [..x3])
        - family: mobilenet_v2
          width_mult: {choices: [0.25, 0.35, 0.5]}
          expand_ratio: {choices: [2, 4, 6]}
        - family: torchvision
          name: {choices: [mobilenet_v3_small, shufflenet_v2_x0_5]}
      distillation:
        loss: {choices: [kl, mse]}
        temperature: {low: 2, high: 8}
        alpha: {choices: [0.0, 0.5]}
        hint_weight: {choices: [0.0, 1.0]}
      compress:                               # optional: the student is compressed too
        keep_ratio: {choices: [0.5, 0.75, 1.0]}   # of every channel group of the student
        precision: {choices: [fp32, int8]}        # of every Conv/Linear layer of the student

Every value is a number or name (fixed), ``{low, high[, step]}`` (numbers) or
``{choices: [...]}``. Optuna parameters are prefixed ``student/``: ``student/family``, then
the chosen family's own (``student/cifar_resnet/depth1``, ``student/mobilenet_v2/width_mult``,
``student/torchvision/name``; sampled only when that family is chosen) and
``student/distill/loss``, ``.../temperature``, ``.../alpha``, ``.../hint_weight``, and
``student/keep_ratio``, ``student/precision`` for ``compress``.

With ``compress``, a student candidate is also channel-pruned (every dependency group of the
student at the sampled keep ratio, ranked and rounded as the ``channels`` section says) and
quantized (every Conv/Linear layer at the sampled precision) by the same pipeline as a
compressed model: student, channels, bits and distillation in one candidate. Its channels
are pruned as the space's ``schedule`` says: a ``polynomial`` schedule prunes the student
while it is distilled, after ``begin`` of the steps; ``oneshot`` prunes it before training,
which is a smaller student from the start.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from autocompress.exceptions import SearchSpaceError
from autocompress.models.students import (
    CIFAR_RESNET_DEPTH_RANGE,
    CIFAR_RESNET_WIDTH_RANGE,
    MOBILENET_V2_EXPAND_RANGE,
    MOBILENET_V2_WIDTH_RANGE,
    TORCHVISION_STUDENTS,
    CifarResNetStudent,
    MobileNetV2Student,
    StudentSpec,
    TorchvisionStudent,
    student_from_dict,
)
from autocompress.settings import (
    DISTILL_LOSSES,
    MAX_HINT_WEIGHT,
    MAX_TEMPERATURE,
    DistillSettings,
    EarlyStopping,
    TrainSettings,
)
from autocompress.space._distributions import check_keys as _check_keys
from autocompress.space._distributions import parse_choices as _parse_choices
from autocompress.space._distributions import parse_value_spec

__all__ = ["PLAN_FORMAT_VERSION", "STUDENT_KEEP_PARAM", "STUDENT_PARAM_PREFIX",
           "STUDENT_PRECISION_PARAM", "StudentPlan", "StudentSpace", "parse_students_section"]

PLAN_FORMAT_VERSION = 1
STUDENT_PARAM_PREFIX = "student/"
_FAMILY_PARAM = "student/family"
_SECTION_KEYS = {"families", "distillation", "compress"}
_COMPRESS_KEYS = {"keep_ratio", "precision"}
#: Optuna parameters of a student's own compression (uniform over its groups and layers).
STUDENT_KEEP_PARAM = f"{STUDENT_PARAM_PREFIX}keep_ratio"
STUDENT_PRECISION_PARAM = f"{STUDENT_PARAM_PREFIX}precision"
_DISTILL_KEYS = {"loss", "temperature", "alpha", "hint_weight"}
_STAGES = 3

Value = int | float | str


# --- plans ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentPlan:
    """One student to try: its architecture and how it is distilled from the teacher."""

    student: StudentSpec
    distill: DistillSettings

    def describe(self) -> str:
        """E.g. ``cifar_resnet d(1,1,1) w(8,16,32), kl T4 alpha0.5``."""
        d = self.distill
        hint = f" hint{d.hint_weight:g}" if d.hint_weight > 0 else ""
        return f"{self.student.describe()}, {d.loss} T{d.temperature:g} alpha{d.alpha:g}{hint}"

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": PLAN_FORMAT_VERSION, "student": self.student.to_dict(),
                "distill": self.distill.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentPlan:
        """Rebuild a plan written by :meth:`to_dict`.

        Raises:
            SearchSpaceError: wrong format version or malformed distillation settings.
            ModelError: unknown student family or invalid architecture values.
        """
        if not isinstance(data, Mapping):
            raise SearchSpaceError(f"a student plan must be a mapping, not {data!r}")
        if data.get("format_version") != PLAN_FORMAT_VERSION:
            raise SearchSpaceError(
                f"student plan format_version {data.get('format_version')!r} is not supported; "
                f"this autocompress reads version {PLAN_FORMAT_VERSION}"
            )
        unknown = sorted(set(map(str, data)) - {"format_version", "student", "distill"})
        if unknown:
            raise SearchSpaceError(f"student plan: unknown key(s) {unknown}; allowed: "
                                   "['distill', 'format_version', 'student']")
        return cls(student_from_dict(data.get("student")),  # type: ignore[arg-type]
                   DistillSettings.from_dict(dict(data.get("distill") or {})))


# --- one searchable value ------------------------------------------------------------------


@dataclass(frozen=True)
class _Dim:
    """One value of a plan: fixed, or an Optuna parameter with its distribution."""

    param: str
    fixed: Value | None = None
    distribution: BaseDistribution | None = None

    def sample(self, trial: optuna.Trial) -> Value:
        dist = self.distribution
        if dist is None:
            assert self.fixed is not None
            return self.fixed
        if isinstance(dist, CategoricalDistribution):
            return trial.suggest_categorical(self.param, dist.choices)  # type: ignore[return-value,arg-type]
        if isinstance(dist, IntDistribution):
            return trial.suggest_int(self.param, dist.low, dist.high, step=dist.step)
        assert isinstance(dist, FloatDistribution)
        return trial.suggest_float(self.param, dist.low, dist.high, step=dist.step)

    def read(self, params: Mapping[str, Any]) -> Value:
        """The value of this dimension in ``params`` (checked against the distribution)."""
        dist = self.distribution
        if dist is None:
            assert self.fixed is not None
            return self.fixed
        value = params[self.param]
        ok: bool
        if isinstance(dist, CategoricalDistribution):
            ok = value in dist.choices
            allowed = f"one of {list(dist.choices)}"
        elif isinstance(dist, IntDistribution):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            ok = (isinstance(value, int) and not isinstance(value, bool)
                  and dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0)
            allowed = f"an integer in [{dist.low}, {dist.high}] (step {dist.step})"
        else:
            assert isinstance(dist, FloatDistribution)
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and dist.low <= value <= dist.high)
            allowed = f"a number in [{dist.low:g}, {dist.high:g}]"
        if not ok:
            raise SearchSpaceError(f"parameter {self.param}={value!r} is not {allowed}")
        return value  # type: ignore[no-any-return]

    def values(self) -> tuple[Value, ...]:
        """Every choice, the two ends of a range, or the fixed value."""
        dist = self.distribution
        if dist is None:
            assert self.fixed is not None
            return (self.fixed,)
        if isinstance(dist, CategoricalDistribution):
            return tuple(dist.choices)  # type: ignore[arg-type]
        assert isinstance(dist, IntDistribution | FloatDistribution)
        high = dist.high
        if isinstance(dist, IntDistribution):  # the highest value on the step grid
            high = dist.low + (dist.high - dist.low) // dist.step * dist.step
        return (dist.low, high)


def _number_dim(raw: object, where: str, param: str, bounds: tuple[float, float], *,
                integer: bool, include_minimum: bool = True) -> _Dim:
    low, high = bounds
    spec = parse_value_spec(raw, where, minimum=low, maximum=high,
                            include_minimum=include_minimum)
    if integer:
        numbers = [v for v in (spec.fixed, spec.low, spec.high, spec.step) if v is not None]
        numbers += list(spec.choices or ())
        if any(not float(v).is_integer() for v in numbers):
            raise SearchSpaceError(f"{where}: expected integers in [{low:g}, {high:g}], got "
                                   f"{raw!r}")
    cast: Callable[[float], Value] = int if integer else float
    if spec.fixed is not None:
        return _Dim(param, fixed=cast(spec.fixed))
    if spec.choices is not None:
        if len(spec.choices) == 1:
            return _Dim(param, fixed=cast(spec.choices[0]))
        return _Dim(param, distribution=CategoricalDistribution(
            tuple(cast(c) for c in spec.choices)))
    assert spec.low is not None and spec.high is not None
    if integer:
        step = int(spec.step) if spec.step is not None else 1
        return _Dim(param, distribution=IntDistribution(int(spec.low), int(spec.high),
                                                        step=step))
    return _Dim(param, distribution=FloatDistribution(spec.low, spec.high, step=spec.step))


def _name_dim(raw: object, where: str, param: str, allowed: Sequence[str]) -> _Dim:
    """``name`` or ``{choices: [name, ...]}``, each one of ``allowed``."""
    names = _parse_choices(raw, where, allowed)
    if len(names) == 1:
        return _Dim(param, fixed=names[0])
    return _Dim(param, distribution=CategoricalDistribution(names))


# --- families ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FamilySpace:
    """The searchable values of one family; ``make`` turns their values (in order) into a
    spec."""

    family: str
    dims: tuple[_Dim, ...]
    make: Callable[[Sequence[Value]], StudentSpec] = field(compare=False)

    def spec(self, values: Sequence[Value]) -> StudentSpec:
        return self.make(values)


def _stage_dims(item: Mapping[str, Any], here: str, key: str, prefix: str,
                bounds: tuple[int, int]) -> tuple[_Dim, ...]:
    """``key`` (one spec sampled per stage) or ``key_by_stage`` (a list of 3 specs)."""
    by_stage = f"{key}_by_stage"
    if (key in item) == (by_stage in item):
        raise SearchSpaceError(
            f"{here}: give exactly one of {key!r} (one spec, sampled per stage) or "
            f"{by_stage!r} (a list of {_STAGES} specs)"
        )
    if key in item:
        raws = [item[key]] * _STAGES
        wheres = [f"{here}.{key}"] * _STAGES
    else:
        raws = item[by_stage]
        if not isinstance(raws, list) or len(raws) != _STAGES:
            raise SearchSpaceError(f"{here}.{by_stage}: expected a list of {_STAGES} specs, one "
                                   f"per stage, got {raws!r}")
        wheres = [f"{here}.{by_stage}[{i}]" for i in range(_STAGES)]
    return tuple(
        _number_dim(raw, where, f"{prefix}{i + 1}", bounds, integer=True)
        for i, (raw, where) in enumerate(zip(raws, wheres, strict=True))
    )


def _parse_cifar_resnet(item: Mapping[str, Any], here: str) -> _FamilySpace:
    _check_keys(item, {"family", "depths", "widths", "depths_by_stage", "widths_by_stage"}, here)
    prefix = f"{STUDENT_PARAM_PREFIX}cifar_resnet/"
    dims = (_stage_dims(item, here, "depths", prefix + "depth", CIFAR_RESNET_DEPTH_RANGE)
            + _stage_dims(item, here, "widths", prefix + "width", CIFAR_RESNET_WIDTH_RANGE))
    return _FamilySpace(CifarResNetStudent.family, dims, lambda v: CifarResNetStudent(
        depths=tuple(v[:_STAGES]), widths=tuple(v[_STAGES:])))  # type: ignore[arg-type]


def _parse_mobilenet_v2(item: Mapping[str, Any], here: str) -> _FamilySpace:
    _check_keys(item, {"family", "width_mult", "expand_ratio"}, here)
    if "width_mult" not in item:
        low, high = MOBILENET_V2_WIDTH_RANGE
        raise SearchSpaceError(f"{here}: missing 'width_mult' (in [{low:g}, {high:g}], e.g. "
                               "{choices: [0.25, 0.5]})")
    prefix = f"{STUDENT_PARAM_PREFIX}mobilenet_v2/"
    dims = (
        _number_dim(item["width_mult"], f"{here}.width_mult", prefix + "width_mult",
                    MOBILENET_V2_WIDTH_RANGE, integer=False),
        _number_dim(item.get("expand_ratio", 6), f"{here}.expand_ratio",
                    prefix + "expand_ratio", MOBILENET_V2_EXPAND_RANGE, integer=True),
    )
    return _FamilySpace(MobileNetV2Student.family, dims, lambda v: MobileNetV2Student(
        width_mult=v[0], expand_ratio=v[1]))  # type: ignore[arg-type]


def _parse_torchvision(item: Mapping[str, Any], here: str) -> _FamilySpace:
    _check_keys(item, {"family", "name"}, here)
    allowed = sorted(TORCHVISION_STUDENTS)
    if "name" not in item:
        raise SearchSpaceError(f"{here}: missing 'name'; choose from: {', '.join(allowed)}")
    dims = (_name_dim(item["name"], f"{here}.name", f"{STUDENT_PARAM_PREFIX}torchvision/name",
                      allowed),)
    return _FamilySpace(TorchvisionStudent.family, dims,
                        lambda v: TorchvisionStudent(name=v[0]))  # type: ignore[arg-type]


#: The families a ``students.families`` entry may name, with their parser.
_FAMILY_PARSERS: Mapping[str, Callable[[Mapping[str, Any], str], _FamilySpace]] = {
    CifarResNetStudent.family: _parse_cifar_resnet,
    MobileNetV2Student.family: _parse_mobilenet_v2,
    TorchvisionStudent.family: _parse_torchvision,
}


# --- the space -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _DistillDims:
    loss: _Dim
    temperature: _Dim
    alpha: _Dim
    hint_weight: _Dim

    def all(self) -> tuple[_Dim, ...]:
        return (self.loss, self.temperature, self.alpha, self.hint_weight)


@dataclass(frozen=True)
class StudentSpace:
    """Student architectures and distillation settings to search over.

    Sampled plans carry ``training`` and ``early_stopping`` unchanged: they are the study's
    budget, not searched (set them with :meth:`with_training`).
    """

    families: tuple[_FamilySpace, ...]
    distillation: _DistillDims
    training: TrainSettings = field(default_factory=TrainSettings)
    early_stopping: EarlyStopping | None = field(default_factory=EarlyStopping)
    #: the student's own compression: keep ratio of its channel groups, precision of its layers
    keep: _Dim = field(default_factory=lambda: _Dim(STUDENT_KEEP_PARAM, fixed=1.0))
    precision: _Dim = field(default_factory=lambda: _Dim(STUDENT_PRECISION_PARAM,
                                                         fixed="fp32"))

    @property
    def precisions(self) -> set[str]:
        """Every precision a student's layers may take."""
        return {str(v) for v in self.precision.values()}

    def sample_compression(self, trial: optuna.Trial) -> tuple[float, str]:
        """The sampled keep ratio of the student's channel groups and its layers' precision."""
        return float(self.keep.sample(trial)), str(self.precision.sample(trial))

    def compression_from_params(self, params: Mapping[str, Any]) -> tuple[float, str]:
        """What :meth:`sample_compression` gives for these parameter values."""
        missing = sorted(d.param for d in (self.keep, self.precision)
                         if d.distribution is not None and d.param not in params)
        if missing:
            raise SearchSpaceError(f"student parameters missing: {missing}")
        return float(self.keep.read(params)), str(self.precision.read(params))

    @property
    def family_names(self) -> tuple[str, ...]:
        return tuple(f.family for f in self.families)

    @property
    def _family_dim(self) -> _Dim:
        names = self.family_names
        if len(names) == 1:
            return _Dim(_FAMILY_PARAM, fixed=names[0])
        return _Dim(_FAMILY_PARAM, distribution=CategoricalDistribution(names))

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        """Every searched parameter (family-specific ones are sampled only for their
        family)."""
        dims = (self._family_dim, *(d for f in self.families for d in f.dims),
                *self.distillation.all(), self.keep, self.precision)
        return {d.param: d.distribution for d in dims if d.distribution is not None}

    def with_training(self, training: TrainSettings,
                      early_stopping: EarlyStopping | None) -> StudentSpace:
        """This space with plans that train for ``training`` and stop early as told
        (``None``: no holdout, every step on all the training data)."""
        return replace(self, training=training, early_stopping=early_stopping)

    def sample(self, trial: optuna.Trial) -> StudentPlan:
        family = self._family(str(self._family_dim.sample(trial)))
        values = [d.sample(trial) for d in family.dims]
        distill = [d.sample(trial) for d in self.distillation.all()]
        return self._plan(family, values, distill)

    def plan_from_params(self, params: Mapping[str, Any]) -> StudentPlan:
        """The plan that :meth:`sample` gives for these parameter values (other, non-student
        parameters are ignored).

        Raises:
            SearchSpaceError: a needed parameter is missing, or a value is not allowed.
        """
        family_dim = self._family_dim
        if family_dim.distribution is not None and family_dim.param not in params:
            raise SearchSpaceError(f"student parameters missing: [{family_dim.param!r}]")
        family = self._family(str(family_dim.read(params)))
        missing = sorted(d.param for d in (*family.dims, *self.distillation.all())
                         if d.distribution is not None and d.param not in params)
        if missing:
            raise SearchSpaceError(f"student parameters missing: {missing}")
        return self._plan(family, [d.read(params) for d in family.dims],
                          [d.read(params) for d in self.distillation.all()])

    def smallest(self) -> tuple[StudentPlan, ...]:
        """Per family, the plan with every architecture value at its lowest (torchvision: the
        allowed model with the fewest parameters); distillation values at their first."""
        return self._extremes("min")

    def largest(self) -> tuple[StudentPlan, ...]:
        """Per family, the plan with every architecture value at its highest (torchvision:
        the allowed model with the most parameters)."""
        return self._extremes("max")

    def _extremes(self, which: Literal["min", "max"]) -> tuple[StudentPlan, ...]:
        pick = min if which == "min" else max
        distill = [d.values()[0] for d in self.distillation.all()]
        plans = []
        for family in self.families:
            values = [pick(d.values(), key=_size_key) for d in family.dims]
            plans.append(self._plan(family, values, distill))
        return tuple(plans)

    def _family(self, name: str) -> _FamilySpace:
        for family in self.families:
            if family.family == name:
                return family
        raise SearchSpaceError(f"parameter {_FAMILY_PARAM}={name!r} is not one of "
                               f"{list(self.family_names)}")

    def _plan(self, family: _FamilySpace, values: Sequence[Value],
              distill: Sequence[Value]) -> StudentPlan:
        loss, temperature, alpha, hint_weight = distill
        settings = DistillSettings(
            loss=str(loss), temperature=float(temperature),  # type: ignore[arg-type]
            alpha=float(alpha), hint_weight=float(hint_weight),
            training=self.training, early_stopping=self.early_stopping)
        return StudentPlan(family.spec(values), settings)


def _size_key(value: Value) -> float:
    """Order values by the size of the network they give (torchvision names: parameters)."""
    if isinstance(value, str):
        return float(_torchvision_params(value))
    return float(value)


@functools.cache
def _torchvision_params(name: str) -> int:
    model = TorchvisionStudent(name).build(num_classes=10, in_channels=3)
    return sum(p.numel() for p in model.parameters())


def parse_students_section(raw: Any, where: str) -> StudentSpace:
    """Validate the ``students:`` section of a search-space file.

    ``where`` names the file and section for error messages (``"space.yaml: students"``).

    Raises:
        SearchSpaceError: unknown keys, families, torchvision names or losses, values out of
            a family's range; the message names the field and the allowed values.
    """
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{where}: must be a mapping with 'families' (and optionally "
                               "'distillation')")
    _check_keys(raw, _SECTION_KEYS, where)
    items = raw.get("families")
    known = ", ".join(sorted(_FAMILY_PARSERS))
    if not isinstance(items, list) or not items:
        raise SearchSpaceError(f"{where}.families: expected a non-empty list of entries such as "
                               f"{{family: cifar_resnet, depths: ..., widths: ...}}; families: "
                               f"{known}")
    families: list[_FamilySpace] = []
    for i, item in enumerate(items):
        here = f"{where}.families[{i}]"
        if not isinstance(item, dict) or "family" not in item:
            raise SearchSpaceError(f"{here}: expected a mapping with 'family' (one of {known})")
        parser = _FAMILY_PARSERS.get(item["family"]) if isinstance(item["family"], str) else None
        if parser is None:
            raise SearchSpaceError(f"{here}.family: unknown family {item['family']!r}; known "
                                   f"families: {known}")
        if item["family"] in (f.family for f in families):
            raise SearchSpaceError(f"{here}.family: {item['family']!r} is listed twice; merge the "
                                   "two entries (list several values with {choices: [...]})")
        families.append(parser(item, here))
    keep, precision = _parse_compress(raw.get("compress"), f"{where}.compress")
    return StudentSpace(tuple(families), _parse_distillation(raw.get("distillation"),
                                                             f"{where}.distillation"),
                        keep=keep, precision=precision)


def _parse_compress(raw: Any, where: str) -> tuple[_Dim, _Dim]:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{where}: must be a mapping with keys {sorted(_COMPRESS_KEYS)}")
    _check_keys(raw, _COMPRESS_KEYS, where)
    from autocompress.space._candidate import PRECISIONS

    keep = _number_dim(raw.get("keep_ratio", 1.0), f"{where}.keep_ratio", STUDENT_KEEP_PARAM,
                       (0.0, 1.0), integer=False, include_minimum=False)
    precision = _name_dim(raw.get("precision", "fp32"), f"{where}.precision",
                          STUDENT_PRECISION_PARAM, PRECISIONS)
    return keep, precision


def _parse_distillation(raw: Any, where: str) -> _DistillDims:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{where}: must be a mapping with keys {sorted(_DISTILL_KEYS)}")
    _check_keys(raw, _DISTILL_KEYS, where)
    default = DistillSettings()
    prefix = f"{STUDENT_PARAM_PREFIX}distill/"
    return _DistillDims(
        loss=_name_dim(raw.get("loss", default.loss), f"{where}.loss", prefix + "loss",
                       DISTILL_LOSSES),
        temperature=_number_dim(raw.get("temperature", default.temperature),
                                f"{where}.temperature", prefix + "temperature",
                                (0.0, MAX_TEMPERATURE), integer=False, include_minimum=False),
        alpha=_number_dim(raw.get("alpha", default.alpha), f"{where}.alpha", prefix + "alpha",
                          (0.0, 1.0), integer=False),
        hint_weight=_number_dim(raw.get("hint_weight", default.hint_weight),
                                f"{where}.hint_weight", prefix + "hint_weight",
                                (0.0, MAX_HINT_WEIGHT), integer=False),
    )

