"""Parsing of one searchable value of a search-space file into an Optuna distribution."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from autocompress.exceptions import SearchSpaceError

__all__ = ["ValueSpec", "check_keys", "parse_choices", "parse_value_spec"]


@dataclass(frozen=True)
class ValueSpec:
    """A fixed value, a float range, or a list of choices, bounded to ``[minimum, maximum]``."""

    fixed: float | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[float, ...] | None = None

    @property
    def is_fixed(self) -> bool:
        return self.fixed is not None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.low is None or self.high is None:
            raise ValueError("a fixed value has no distribution")
        return optuna.distributions.FloatDistribution(self.low, self.high, step=self.step)

    def grid(self) -> list[float]:
        """Values to try in order: the choices, the steps of a range (17 points without a
        step), or the fixed value."""
        if self.fixed is not None:
            return [self.fixed]
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.step:
            count = int(round((self.high - self.low) / self.step))
            return [round(self.low + i * self.step, 10) for i in range(count + 1)]
        return [self.low + (self.high - self.low) * i / 16 for i in range(17)]

    def values(self) -> tuple[float, ...]:
        """The smallest and largest value this spec can take (all choices for a list)."""
        if self.fixed is not None:
            return (self.fixed,)
        if self.choices is not None:
            return self.choices
        assert self.low is not None and self.high is not None
        return (self.low, self.high)


def _number(raw: object, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise SearchSpaceError(f"{where}: expected a number, got {raw!r}")
    return float(raw)


def parse_value_spec(
    raw: object, where: str, *, minimum: float, maximum: float, include_minimum: bool
) -> ValueSpec:
    """Parse ``0.5``, ``{low: .., high: .., step: ..}`` or ``{choices: [..]}``.

    ``where`` names the file and key for error messages; values must lie in
    ``[minimum, maximum]`` (``(minimum, maximum]`` unless ``include_minimum``).
    """
    lower = "[" if include_minimum else "("
    allowed = f"{lower}{minimum:g}, {maximum:g}]"

    def check(value: float, key: str) -> float:
        too_low = value < minimum if include_minimum else value <= minimum
        if too_low or value > maximum:
            raise SearchSpaceError(f"{where}{key}: {value:g} is out of range; allowed {allowed}")
        return value

    if isinstance(raw, dict):
        keys = set(raw)
        if keys == {"choices"}:
            choices = raw["choices"]
            if not isinstance(choices, list) or not choices:
                raise SearchSpaceError(f"{where}.choices: expected a non-empty list of numbers")
            values = tuple(check(_number(c, f"{where}.choices"), ".choices") for c in choices)
            if len(set(values)) != len(values):
                raise SearchSpaceError(f"{where}.choices: values must be distinct, got {choices}")
            return ValueSpec(choices=values)
        if keys in ({"low", "high"}, {"low", "high", "step"}):
            low = check(_number(raw["low"], f"{where}.low"), ".low")
            high = check(_number(raw["high"], f"{where}.high"), ".high")
            if low >= high:
                raise SearchSpaceError(f"{where}: low ({low:g}) must be below high ({high:g})")
            step = None
            if "step" in raw:
                step = _number(raw["step"], f"{where}.step")
                if step <= 0 or step > high - low:
                    raise SearchSpaceError(
                        f"{where}.step: {step:g} must be positive and at most high - low"
                    )
            return ValueSpec(low=low, high=high, step=step)
        raise SearchSpaceError(
            f"{where}: unknown keys {sorted(map(str, keys))}; use a number, "
            "{low, high[, step]} or {choices: [...]}"
        )
    return ValueSpec(fixed=check(_number(raw, where), ""))


def check_keys(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Refuse a YAML mapping with keys other than ``allowed``, naming them and the allowed."""
    unknown = set(map(str, section)) - allowed
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed keys: {sorted(allowed)}"
        )


def parse_choices(raw: object, where: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """``name`` or ``{choices: [name, ...]}``, each one of ``allowed`` and none twice."""
    listed = ", ".join(allowed)
    if isinstance(raw, dict):
        check_keys(raw, {"choices"}, where)
        values = raw.get("choices")
        if not isinstance(values, list) or not values:
            raise SearchSpaceError(f"{where}.choices: expected a non-empty list of names from: "
                                   f"{listed}")
    else:
        values = [raw]
    names: list[str] = []
    for value in values:
        if not isinstance(value, str) or value not in allowed:
            raise SearchSpaceError(f"{where}: {value!r} is not allowed; choose from: {listed}")
        if value in names:
            raise SearchSpaceError(f"{where}: {value!r} is listed twice")
        names.append(value)
    return tuple(names)
