"""Search-space files (YAML) -> validated :class:`SearchSpace` -> sampled :class:`Candidate`."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from autocompress.exceptions import SearchSpaceError
from autocompress.space._candidate import Candidate, Importance
from autocompress.space._distributions import ValueSpec, parse_value_spec

__all__ = ["DEFAULT_SPACE_PATH", "SPACE_FORMAT_VERSION", "BoundSpace", "Rule", "SearchSpace"]

_logger = logging.getLogger(__name__)

SPACE_FORMAT_VERSION = 1
DEFAULT_SPACE_PATH = Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml"

_TOP_KEYS = {"format_version", "description", "channels", "sparsity"}
_CHANNEL_KEYS = {"importance", "round_to", "min_channels", "rules"}
_SPARSITY_KEYS = {"rules"}


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
    round_to: int = 1
    min_channels: int = 1
    source: str = "<memory>"

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

        importance = channels.get("importance", "l2")
        if importance not in ("l1", "l2"):
            raise SearchSpaceError(
                f"{source}: channels.importance must be 'l1' or 'l2', got {importance!r}"
            )
        round_to = _positive_int(channels.get("round_to", 1), f"{source}: channels.round_to")
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
        if not channel_rules and not sparsity_rules:
            raise SearchSpaceError(
                f"{source}: no rules; add channels.rules or sparsity.rules to search over"
            )
        return cls(
            channel_rules=channel_rules, sparsity_rules=sparsity_rules, importance=importance,
            round_to=round_to, min_channels=min_channels, source=source,
        )

    def bind(self, groups: Sequence[str], layers: Sequence[str]) -> BoundSpace:
        """Tie the rules to a model's prunable ``groups`` and sparsifiable ``layers``."""
        return BoundSpace(
            space=self,
            channel_params=_assign(self.channel_rules, groups, "keep_ratio", self.source),
            sparsity_params=_assign(self.sparsity_rules, layers, "sparsity", self.source),
        )


@dataclass(frozen=True)
class _Param:
    target: str            # group or layer name
    param: str | None      # Optuna parameter name, None when fixed
    value: ValueSpec


@dataclass(frozen=True)
class BoundSpace:
    """A search space tied to one model: which Optuna parameter drives which group or layer."""

    space: SearchSpace
    channel_params: tuple[_Param, ...]
    sparsity_params: tuple[_Param, ...]

    @property
    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        out: dict[str, optuna.distributions.BaseDistribution] = {}
        for p in (*self.channel_params, *self.sparsity_params):
            if p.param is not None:
                out[p.param] = p.value.distribution()
        return out

    def sample(self, trial: optuna.Trial) -> Candidate:
        sampled: dict[str, float] = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                sampled[name] = float(trial.suggest_categorical(name, dist.choices))  # type: ignore[arg-type]
            else:
                assert isinstance(dist, optuna.distributions.FloatDistribution)
                sampled[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step)
        return self._candidate(sampled)

    def candidate_from_params(self, params: dict[str, float]) -> Candidate:
        missing = set(self.distributions) - set(params)
        if missing:
            raise SearchSpaceError(f"parameters missing for this space: {sorted(missing)}")
        return self._candidate(params)

    def extreme(self, which: str) -> Candidate:
        """The candidate with every value at its ``"min"`` or ``"max"``."""
        pick = min if which == "min" else max
        return self._candidate({
            p.param: pick(p.value.values())
            for p in (*self.channel_params, *self.sparsity_params) if p.param is not None
        })

    def uniform(self, keep_ratio: float) -> Candidate:
        """Every searched channel group at the same keep ratio; no sparsity."""
        return Candidate(
            channel_keep={p.target: keep_ratio for p in self.channel_params},
            importance=self.space.importance, round_to=self.space.round_to,
            min_channels=self.space.min_channels,
        )

    def _candidate(self, values: dict[str, float]) -> Candidate:
        def resolve(p: _Param) -> float:
            if p.param is None:
                assert p.value.fixed is not None
                return p.value.fixed
            return float(values[p.param])

        return Candidate(
            channel_keep={p.target: resolve(p) for p in self.channel_params},
            sparsity={p.target: resolve(p) for p in self.sparsity_params},
            importance=self.space.importance,
            round_to=self.space.round_to,
            min_channels=self.space.min_channels,
        )


def _assign(
    rules: Sequence[Rule], targets: Sequence[str], prefix: str, source: str
) -> tuple[_Param, ...]:
    params: list[_Param] = []
    used: set[int] = set()
    for target in targets:
        for index, rule in enumerate(rules):
            if fnmatch.fnmatchcase(target, rule.match):
                used.add(index)
                if rule.value.is_fixed:
                    name = None
                elif rule.shared:
                    name = f"{prefix}/{rule.name or f'rule{index}'}"
                else:
                    name = f"{prefix}/{target}"
                params.append(_Param(target=target, param=name, value=rule.value))
                break
    for index, rule in enumerate(rules):
        if index not in used:
            _logger.warning("%s: %s rule %r matches no layer of this model", source, prefix,
                            rule.match)
    return tuple(params)


def _check_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(map(str, section)) - allowed
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed keys: {sorted(allowed)}"
        )


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
        value = parse_value_spec(
            item[value_key], f"{here}.{value_key}", minimum=minimum, maximum=1.0,
            include_minimum=include_minimum,
        )
        rules.append(Rule(match=item["match"], value=value, shared=shared, name=name))
    return tuple(rules)
