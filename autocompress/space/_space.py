"""Search-space files (YAML) -> validated :class:`SearchSpace` -> sampled :class:`Candidate`."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from autocompress.exceptions import SearchSpaceError
from autocompress.space._candidate import (
    EVERY,
    IMPORTANCES,
    PRECISIONS,
    SCHEDULES,
    Candidate,
    Importance,
    Schedule,
)
from autocompress.space._distributions import ValueSpec, parse_value_spec
from autocompress.space._distributions import check_keys as _check_keys
from autocompress.space._distributions import parse_choices as _parse_choices

__all__ = ["DEFAULT_SPACE_PATH", "KIND_PARAM", "SPACE_FORMAT_VERSION", "BoundSpace",
           "ChoiceRule", "PrecisionSpace", "Rule", "SearchSpace"]

_logger = logging.getLogger(__name__)

SPACE_FORMAT_VERSION = 1
DEFAULT_SPACE_PATH = Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml"

_TOP_KEYS = {"format_version", "description", "channels", "sparsity", "precision",
             "students", "lowrank", "schedule", "depth"}
_CHANNEL_KEYS = {"importance", "round_to", "min_channels", "rules"}
_SPARSITY_KEYS = {"rules"}
_LOWRANK_KEYS = {"rules"}
_DEPTH_KEYS = {"rules"}
_PRECISION_KEYS = {"method", "calibration_samples", "rules"}
_METHODS = ("ptq", "qat")
_SCHEDULE_KEYS = {"kind", "stages", "power", "begin", "end", "initial_sparsity"}


@dataclass(frozen=True)
class ChoiceRule:
    """Layers whose name matches ``match`` take one of ``choices`` (strings)."""

    match: str
    choices: tuple[str, ...]
    shared: bool = False
    name: str = ""


@dataclass(frozen=True)
class PrecisionSpace:
    """Per-layer precisions (``rules``), how quantized layers regain accuracy (``methods``:
    ``ptq`` calibrates after the finetune; ``qat`` finetunes with fake quantization first)
    and how many training samples calibrate activation ranges."""

    rules: tuple[ChoiceRule, ...]
    methods: tuple[str, ...] = ("ptq",)
    calibration_samples: int = 128

    @property
    def offered(self) -> set[str]:
        return {c for r in self.rules for c in r.choices}


@dataclass(frozen=True)
class Rule:
    """Layers (or groups) whose name matches ``match`` take a value from ``value``.

    With ``shared`` every matched name takes the same sampled value (uniform pruning of the
    matched part); otherwise each matched name gets its own parameter.
    """

    match: str
    value: ValueSpec
    shared: bool = False
    name: str = ""


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; :meth:`bind` ties it to one model's groups and layers."""

    channel_rules: tuple[Rule, ...]
    sparsity_rules: tuple[Rule, ...]
    importance: Importance = "l2"
    #: kept channel counts are multiples of this; ``None`` (a YAML space without
    #: ``channels.round_to``, or ``round_to: device``): the target device's channel block,
    #: set by :meth:`for_device` (a search does it with its profile; :meth:`bind` without
    #: it does not round)
    round_to: int | None = 1
    min_channels: int = 1
    source: str = "<memory>"
    precision: PrecisionSpace | None = None
    students: Any = None   # autocompress.space._students.StudentSpace (imports torch)
    #: the importance criteria searched (``importance`` is the first: uniform seeds use it)
    importance_choices: tuple[str, ...] = ()
    #: rank ratios of low-rank factorization, matched against Conv2d/Linear layer names
    lowrank_rules: tuple[Rule, ...] = ()
    #: how pruning reaches its targets (its kind is the first of ``schedule_choices``)
    schedule: Schedule = Schedule()
    schedule_choices: tuple[str, ...] = ()
    #: whether residual blocks are kept (1) or their branch dropped (0), matched against the
    #: names of the model's residual blocks
    depth_rules: tuple[Rule, ...] = ()

    @classmethod
    def default(cls) -> SearchSpace:
        return cls.from_yaml(DEFAULT_SPACE_PATH)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise SearchSpaceError(
                f"search space {path} does not exist; pass a YAML file such as "
                f"{DEFAULT_SPACE_PATH}"
            )
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SearchSpaceError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "<memory>") -> SearchSpace:
        if not isinstance(raw, dict):
            raise SearchSpaceError(f"{source}: the top level must be a mapping of keys")
        _check_keys(raw, _TOP_KEYS, source)
        version = raw.get("format_version")
        if version != SPACE_FORMAT_VERSION:
            raise SearchSpaceError(
                f"{source}: format_version must be {SPACE_FORMAT_VERSION}, got {version!r}"
            )
        channels = raw.get("channels") or {}
        sparsity = raw.get("sparsity") or {}
        for key, section in (("channels", channels), ("sparsity", sparsity)):
            if not isinstance(section, dict):
                raise SearchSpaceError(f"{source}: {key} must be a mapping")
        _check_keys(channels, _CHANNEL_KEYS, f"{source}: channels")
        _check_keys(sparsity, _SPARSITY_KEYS, f"{source}: sparsity")

        importances = _parse_choices(channels.get("importance", "l2"),
                                     f"{source}: channels.importance", IMPORTANCES)
        round_to = channels.get("round_to", "device")
        round_to = (None if round_to == "device" else
                    _positive_int(round_to, f"{source}: channels.round_to (a number, or "
                                            f"'device': the profile's channel block)"))
        min_channels = _positive_int(
            channels.get("min_channels", 1), f"{source}: channels.min_channels"
        )
        channel_rules = _parse_rules(
            channels.get("rules", []), f"{source}: channels.rules", "keep_ratio",
            minimum=0.0, include_minimum=False,
        )
        sparsity_rules = _parse_rules(
            sparsity.get("rules", []), f"{source}: sparsity.rules", "amount",
            minimum=0.0, include_minimum=True,
        )
        for rule in sparsity_rules:
            if max(rule.value.values()) >= 1.0:
                raise SearchSpaceError(
                    f"{source}: sparsity.rules ({rule.match!r}): amount must stay below 1.0 "
                    "(1.0 would zero the whole layer)"
                )
        lowrank = raw.get("lowrank") or {}
        if not isinstance(lowrank, dict):
            raise SearchSpaceError(f"{source}: lowrank must be a mapping with 'rules'")
        _check_keys(lowrank, _LOWRANK_KEYS, f"{source}: lowrank")
        lowrank_rules = _parse_rules(
            lowrank.get("rules", []), f"{source}: lowrank.rules", "rank_ratio",
            minimum=0.0, include_minimum=False,
        )
        depth_rules = _parse_depth(raw.get("depth"), f"{source}: depth")
        precision = _parse_precision(raw.get("precision"), f"{source}: precision")
        schedule, schedules = _parse_schedule(raw.get("schedule"), f"{source}: schedule")
        if "polynomial" in schedules and (lowrank_rules or (
                precision is not None and "qat" in precision.methods)):
            raise SearchSpaceError(
                f"{source}: schedule offers 'polynomial', which cannot be combined with "
                f"lowrank.rules or precision.method qat yet; offer only 'oneshot' with them")
        students = None
        if raw.get("students") is not None:
            from autocompress.space._students import parse_students_section

            students = parse_students_section(raw["students"], f"{source}: students")
        if (not channel_rules and not sparsity_rules and not lowrank_rules
                and not depth_rules and precision is None and students is None):
            raise SearchSpaceError(
                f"{source}: no rules; add channels.rules, depth.rules, sparsity.rules, "
                "lowrank.rules, precision.rules or students to search over"
            )
        return cls(
            channel_rules=channel_rules, sparsity_rules=sparsity_rules,
            importance=importances[0], importance_choices=importances,  # type: ignore[arg-type]
            round_to=round_to, min_channels=min_channels, source=source,
            precision=precision, students=students, lowrank_rules=lowrank_rules,
            schedule=schedule, schedule_choices=schedules, depth_rules=depth_rules,
        )

    @property
    def precisions(self) -> set[str]:
        """Every precision this space may give a layer (fp32 included)."""
        students = self.students.precisions if self.students is not None else set()
        return {"fp32"} | (self.precision.offered if self.precision else set()) | students

    def for_device(self, channel_block: int | None, device: str) -> SearchSpace:
        """This space with ``round_to`` set from the target's ``channel_block`` (its
        profile's :attr:`~autocompress.hardware.HardwareProfile.channel_block`) where the
        space leaves it to the device; 1 where the profile has no channel sweep. A
        ``round_to`` the space sets is kept."""
        if self.round_to is not None:
            return self
        if channel_block is None:
            _logger.warning("%s leaves channels.round_to to the device, but the profile of "
                            "%s has no channel sweep (it was measured by an older "
                            "autocompress): channel counts are not rounded; add the sweep "
                            "(`autocompress profile --upgrade --out PROFILE`, seconds) or "
                            "set channels.round_to", self.source, device)
            return replace(self, round_to=1)
        if self.channel_rules:
            _logger.info("kept channel counts are multiples of %d: %s runs convolutions "
                         "fastest at multiples of %d channels (its profile's channel sweep; "
                         "set channels.round_to in the space to choose)", channel_block,
                         device, channel_block)
        return replace(self, round_to=channel_block)

    def check_precisions(self, runs: Sequence[str], device: str) -> None:
        """Refuse precisions the target does not run (``runs``: what its backend executes
        and its profile measured)."""
        missing = sorted(self.precisions - set(runs))
        if missing:
            raise SearchSpaceError(
                f"{self.source}: precision.rules offer {', '.join(missing)}, but {device} runs "
                f"only {', '.join(sorted(runs))}; remove {', '.join(missing)} from the rules, "
                "or use a profile whose backend runs it (re-profile with "
                "`autocompress profile --precisions fp32,int8` for int8 on ONNX Runtime)"
            )

    def bind(self, groups: Sequence[str], layers: Sequence[str], *,
             sparsity: bool = True, blocks: Sequence[str] = ()) -> BoundSpace:
        """Tie the rules to a model's prunable ``groups`` and sparsifiable ``layers``
        (precision and low-rank rules also match ``layers``, its Conv2d/Linear layers) and
        its residual ``blocks`` (depth rules;
        :func:`~autocompress.transforms.find_residual_blocks`). With
        ``sparsity=False`` the sparsity rules are left out (no layer is made sparse): for
        searches whose objectives sparsity cannot move, as latency on dense kernels. A space
        that leaves ``round_to`` to the device and was not given one (:meth:`for_device`)
        does not round channel counts."""
        if self.round_to is None:   # no device given: channel counts are not rounded
            return replace(self, round_to=1).bind(groups, layers, sparsity=sparsity,
                                                  blocks=blocks)
        precision_params: tuple[_ChoiceParam, ...] = ()
        method: _ChoiceParam | None = None
        if self.precision is not None:
            precision_params = _assign_choices(self.precision.rules, layers, self.source)
            methods = self.precision.methods
            method = _ChoiceParam("*", "quantization" if len(methods) > 1 else None, methods)
        channel_params = _assign(self.channel_rules, groups, "keep_ratio", self.source)
        importance: _ChoiceParam | None = None
        choices = self.importance_choices or (self.importance,)
        if len(choices) > 1 and any(p.param is not None for p in channel_params):
            importance = _ChoiceParam("*", IMPORTANCE_PARAM, choices)
        sparsity_params = (_assign(self.sparsity_rules, layers, "sparsity", self.source)
                           if sparsity else ())
        schedule: _ChoiceParam | None = None
        if len(self.schedule_choices) > 1 and (channel_params or sparsity_params):
            schedule = _ChoiceParam("*", SCHEDULE_PARAM, self.schedule_choices)
        return BoundSpace(
            space=self,
            channel_params=channel_params,
            sparsity_params=sparsity_params,
            precision_params=precision_params,
            method_param=method,
            importance_param=importance,
            schedule_param=schedule,
            lowrank_params=_assign(self.lowrank_rules, layers, "lowrank", self.source),
            depth_params=_assign(self.depth_rules, blocks, "depth", self.source),
        )


@dataclass(frozen=True)
class _Param:
    target: str            # group or layer name
    param: str | None      # Optuna parameter name, None when fixed
    value: ValueSpec


@dataclass(frozen=True)
class _ChoiceParam:
    target: str                 # layer name
    param: str | None           # Optuna parameter name, None when fixed
    choices: tuple[str, ...]


KIND_PARAM = "kind"
#: The Optuna parameter of the channel importance criterion, when the space offers several.
IMPORTANCE_PARAM = "importance"
#: The Optuna parameter of the pruning schedule's kind, when the space offers several.
SCHEDULE_PARAM = "schedule"


@dataclass(frozen=True)
class BoundSpace:
    """A search space tied to one model: which Optuna parameter drives which group or layer.

    With students in the space, the parameter ``kind`` chooses between compressing the model
    (``compressed``) and distilling it into a student (``student``); the student's own
    parameters are prefixed ``student/``.
    """

    space: SearchSpace
    channel_params: tuple[_Param, ...]
    sparsity_params: tuple[_Param, ...]
    precision_params: tuple[_ChoiceParam, ...] = ()
    method_param: _ChoiceParam | None = None
    importance_param: _ChoiceParam | None = None
    lowrank_params: tuple[_Param, ...] = ()
    schedule_param: _ChoiceParam | None = None
    depth_params: tuple[_Param, ...] = ()

    @property
    def _numeric_params(self) -> tuple[_Param, ...]:
        return (*self.channel_params, *self.sparsity_params, *self.lowrank_params,
                *self.depth_params)

    @property
    def compresses(self) -> bool:
        """Whether the space searches over compressions of the model (not only students)."""
        return any(p.param is not None for p in self._choice_params) or any(
            p.param is not None for p in self._numeric_params)

    @property
    def _choice_params(self) -> tuple[_ChoiceParam, ...]:
        extra = tuple(c for c in (self.method_param, self.importance_param,
                                  self.schedule_param) if c is not None)
        return (*self.precision_params, *extra)

    @property
    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Distributions of the compression parameters (students: ``student_space``)."""
        out: dict[str, optuna.distributions.BaseDistribution] = {}
        for p in self._numeric_params:
            if p.param is not None:
                out[p.param] = p.value.distribution()
        for c in self._choice_params:
            if c.param is not None:
                out[c.param] = optuna.distributions.CategoricalDistribution(c.choices)
        return out

    @property
    def student_space(self) -> Any:
        return self.space.students

    def sample(self, trial: optuna.Trial) -> Candidate:
        if self.space.students is not None:
            kind = "student"
            if self.compresses:
                kind = str(trial.suggest_categorical(KIND_PARAM, ["compressed", "student"]))
            if kind == "student":
                plan = self.space.students.sample(trial)
                keep, precision = self.space.students.sample_compression(trial)
                schedule = self.space.schedule
                if self.schedule_param is not None and keep < 1.0:
                    schedule = replace(schedule, kind=str(trial.suggest_categorical(  # type: ignore[arg-type]
                        SCHEDULE_PARAM, self.schedule_param.choices)))
                return self._student(plan, keep, precision, schedule)
        sampled: dict[str, Any] = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                value = trial.suggest_categorical(name, dist.choices)  # type: ignore[arg-type]
                sampled[name] = value if isinstance(value, str) else float(value)  # type: ignore[arg-type]
            else:
                assert isinstance(dist, optuna.distributions.FloatDistribution)
                sampled[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step)
        return self._candidate(sampled)

    def candidate_from_params(self, params: dict[str, Any]) -> Candidate:
        if self.space.students is not None and (
                params.get(KIND_PARAM) == "student" or not self.compresses):
            students = self.space.students
            keep, precision = students.compression_from_params(params)
            schedule = self.space.schedule
            if self.schedule_param is not None and SCHEDULE_PARAM in params:
                schedule = replace(schedule, kind=str(params[SCHEDULE_PARAM]))  # type: ignore[arg-type]
            return self._student(students.plan_from_params(params), keep, precision, schedule)
        missing = set(self.distributions) - set(params)
        if missing:
            raise SearchSpaceError(f"parameters missing for this space: {sorted(missing)}")
        return self._candidate(params)

    def extreme(self, which: str, precision: str | None = None) -> Candidate:
        """The candidate with every numeric value at its ``"min"`` or ``"max"``, and every
        searched layer at ``precision`` (when it is allowed there; else fp32)."""
        pick = min if which == "min" else max
        values: dict[str, Any] = {
            p.param: pick(p.value.values())
            for p in self._numeric_params if p.param is not None
        }
        for c in self._choice_params:
            if c.param is not None:
                values[c.param] = precision if precision in c.choices else c.choices[0]
        return self._candidate(values)

    def uniform(self, keep_ratio: float, precision: str = "fp32") -> Candidate:
        """Every searched channel group at the same keep ratio; no sparsity and no low-rank
        factorization; every layer with a precision rule at ``precision``; every residual
        block kept unless a depth rule fixes it."""
        return Candidate(
            channel_keep={p.target: keep_ratio for p in self.channel_params},
            importance=self.space.importance, round_to=self.space.round_to,
            min_channels=self.space.min_channels, schedule=self.space.schedule,
            precision={c.target: precision for c in self.precision_params
                       if precision in c.choices or precision == "fp32"},
            depth={p.target: p.value.fixed for p in self.depth_params
                   if p.value.fixed is not None},
        )

    def _student(self, plan: Any, keep: float, precision: str, schedule: Schedule
                 ) -> Candidate:
        """A student candidate, compressed as its sampled keep ratio (every channel group of
        the student) and precision (every layer) say."""
        return Candidate(
            student=plan, channel_keep={EVERY: keep} if keep < 1.0 else {},
            precision={EVERY: precision} if precision != "fp32" else {},
            importance=self.space.importance, round_to=self.space.round_to,
            min_channels=self.space.min_channels,
            schedule=schedule if keep < 1.0 else Schedule())

    def _candidate(self, values: dict[str, Any]) -> Candidate:
        def resolve(p: _Param) -> float:
            if p.param is None:
                assert p.value.fixed is not None
                return p.value.fixed
            return float(values[p.param])

        def choose(c: _ChoiceParam) -> str:
            return c.choices[0] if c.param is None else str(values[c.param])

        method = choose(self.method_param) if self.method_param is not None else "ptq"
        importance = (choose(self.importance_param) if self.importance_param is not None
                      else self.space.importance)
        schedule = self.space.schedule
        if self.schedule_param is not None:
            schedule = replace(schedule, kind=choose(self.schedule_param))  # type: ignore[arg-type]
        return Candidate(
            channel_keep={p.target: resolve(p) for p in self.channel_params},
            sparsity={p.target: resolve(p) for p in self.sparsity_params},
            importance=importance,  # type: ignore[arg-type]
            round_to=self.space.round_to,
            min_channels=self.space.min_channels,
            precision={c.target: choose(c) for c in self.precision_params},
            quantization=method,  # type: ignore[arg-type]
            rank={p.target: resolve(p) for p in self.lowrank_params},
            schedule=schedule,
            depth={p.target: resolve(p) for p in self.depth_params},
        )


def _match(rules: Sequence[Rule] | Sequence[ChoiceRule], targets: Sequence[str],
           prefix: str, source: str) -> list[tuple[str, str | None, Any]]:
    """(target, Optuna parameter name or None when fixed, rule) for every target the first
    matching rule takes; rules matching nothing are logged."""
    out: list[tuple[str, str | None, Any]] = []
    used: set[int] = set()
    for target in targets:
        for index, rule in enumerate(rules):
            if fnmatch.fnmatchcase(target, rule.match):
                used.add(index)
                fixed = (rule.value.is_fixed if isinstance(rule, Rule)
                         else len(rule.choices) == 1)
                if fixed:
                    name = None
                elif rule.shared:
                    name = f"{prefix}/{rule.name or f'rule{index}'}"
                else:
                    name = f"{prefix}/{target}"
                out.append((target, name, rule))
                break
    for index, rule in enumerate(rules):
        if index not in used:
            _logger.warning("%s: %s rule %r matches no layer of this model", source, prefix,
                            rule.match)
    return out


def _assign(
    rules: Sequence[Rule], targets: Sequence[str], prefix: str, source: str
) -> tuple[_Param, ...]:
    return tuple(_Param(target=target, param=name, value=rule.value)
                 for target, name, rule in _match(rules, targets, prefix, source))


def _assign_choices(rules: Sequence[ChoiceRule], targets: Sequence[str], source: str
                    ) -> tuple[_ChoiceParam, ...]:
    return tuple(_ChoiceParam(target=target, param=name, choices=rule.choices)
                 for target, name, rule in _match(rules, targets, "precision", source))


def _parse_schedule(raw: Any, where: str) -> tuple[Schedule, tuple[str, ...]]:
    """``schedule: {kind: polynomial | {choices: [oneshot, polynomial]}, stages, power,
    begin, end, initial_sparsity}``: the schedule (of the first kind) and the kinds offered."""
    if raw is None:
        return Schedule(), ("oneshot",)
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{where}: must be a mapping such as {{kind: polynomial}}")
    _check_keys(raw, _SCHEDULE_KEYS, where)
    kinds = _parse_choices(raw.get("kind", "oneshot"), f"{where}.kind", SCHEDULES)
    numbers: dict[str, Any] = {}
    for key, kind in (("stages", int), ("power", float), ("begin", float), ("end", float),
                      ("initial_sparsity", float)):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or (
                    kind is int and not isinstance(value, int)):
                raise SearchSpaceError(f"{where}.{key}: expected a number, got {value!r}")
            numbers[key] = kind(value)
    try:
        schedule = Schedule(kind=kinds[0], **numbers)  # type: ignore[arg-type]
    except SearchSpaceError as exc:
        raise SearchSpaceError(f"{where}: {exc}") from None
    return schedule, kinds


def _parse_depth(raw: Any, where: str) -> tuple[Rule, ...]:
    """``depth: {rules: [{match: "layer*", keep: {choices: [0, 1]}}]}``: 1 keeps a matched
    residual block, 0 drops its branch."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{where}: must be a mapping with 'rules'")
    _check_keys(raw, _DEPTH_KEYS, where)
    rules = _parse_rules(raw.get("rules", []), f"{where}.rules", "keep", minimum=0.0,
                         include_minimum=True)
    for rule in rules:
        ranged = rule.value.low is not None
        if not set(rule.value.values()) <= {0.0, 1.0} or ranged and rule.value.step != 1.0:
            raise SearchSpaceError(
                f"{where}.rules ({rule.match!r}): keep is 1 (the block stays) or 0 (its "
                "residual branch is dropped); write keep: {choices: [0, 1]} to search it")
    return rules


def _parse_precision(raw: Any, where: str) -> PrecisionSpace | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{where}: must be a mapping with 'rules'")
    _check_keys(raw, _PRECISION_KEYS, where)
    methods = _parse_choices(raw.get("method", "ptq"), f"{where}.method", _METHODS)
    samples = _positive_int(raw.get("calibration_samples", 128),
                            f"{where}.calibration_samples")
    items = raw.get("rules")
    if not isinstance(items, list) or not items:
        raise SearchSpaceError(f"{where}.rules: expected a non-empty list of rules such as "
                               "{match: '*', precision: {choices: [fp32, int8]}}")
    rules = []
    for i, item in enumerate(items):
        here = f"{where}.rules[{i}]"
        shared, name = _rule_header(item, here, "precision")
        choices = _parse_choices(item["precision"], f"{here}.precision", PRECISIONS)
        rules.append(ChoiceRule(item["match"], choices, shared, name))
    return PrecisionSpace(tuple(rules), methods, samples)


def _rule_header(item: Any, here: str, value_key: str) -> tuple[bool, str]:
    """Check one rule's ``match``, ``shared`` and ``name`` (and that ``value_key`` is there);
    returns (shared, name)."""
    if not isinstance(item, dict):
        raise SearchSpaceError(f"{here}: expected a mapping with 'match' and '{value_key}'")
    _check_keys(item, {"match", value_key, "shared", "name"}, here)
    if not isinstance(item.get("match"), str) or not item["match"]:
        raise SearchSpaceError(f"{here}.match: expected a layer-name pattern such as '*'")
    if value_key not in item:
        raise SearchSpaceError(f"{here}: missing '{value_key}'")
    shared = item.get("shared", False)
    if not isinstance(shared, bool):
        raise SearchSpaceError(f"{here}.shared: expected true or false, got {shared!r}")
    name = item.get("name", "")
    if not isinstance(name, str):
        raise SearchSpaceError(f"{here}.name: expected a string")
    return shared, name


def _positive_int(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise SearchSpaceError(f"{where}: expected a positive integer, got {raw!r}")
    return raw


def _parse_rules(
    raw: Any, where: str, value_key: str, *, minimum: float, include_minimum: bool
) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise SearchSpaceError(f"{where}: expected a list of rules")
    rules = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        shared, name = _rule_header(item, here, value_key)
        value = parse_value_spec(
            item[value_key], f"{here}.{value_key}", minimum=minimum, maximum=1.0,
            include_minimum=include_minimum,
        )
        rules.append(Rule(match=item["match"], value=value, shared=shared, name=name))
    return tuple(rules)
