"""Frozen dataclasses to and from JSON-ready values, for the project's versioned records.

:func:`to_jsonable` turns a dataclass (nested dataclasses, mappings, tuples, enums of plain
values) into dicts and lists; :func:`from_jsonable` rebuilds it from the field types, checking
each value and naming the field at fault. Only the types the records use are supported: bool,
int, float, str, ``None`` unions, ``tuple[X, ...]``, fixed tuples, ``Mapping[str, X]``,
``Literal[...]`` and nested dataclasses. Classes may define ``to_dict``/``from_dict`` to take
over their own (de)serialisation (as :class:`~autocompress.space.Candidate` does).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["RecordError", "fields_to_jsonable", "from_jsonable", "to_jsonable"]

T = TypeVar("T")


class RecordError(ValueError):
    """A value does not fit the record's field; the message names the field."""


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON-ready dicts, lists and scalars."""
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [to_jsonable(v) for v in value]
    return value


def fields_to_jsonable(record: Any) -> dict[str, Any]:
    """The dataclass ``record``'s fields as JSON-ready values (for a class's own
    ``to_dict``, which :func:`to_jsonable` would call)."""
    return {f.name: to_jsonable(getattr(record, f.name)) for f in dataclasses.fields(record)}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_jsonable(cls: type[T], data: Any, where: str = "") -> T:
    """Rebuild the dataclass ``cls`` from what :func:`to_jsonable` wrote.

    Keys missing from ``data`` take the field's default; unknown keys are refused.

    Raises:
        RecordError: a missing required field, an unknown key, or a value of the wrong type;
            the message names the field (``where`` prefixes it).
    """
    return _dataclass(cls, data, where or cls.__name__)


def _convert(tp: Any, value: Any, where: str) -> Any:  # noqa: C901 - one branch per type form
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except RecordError as exc:
                errors.append(str(exc))
        raise RecordError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none "
                          f"of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise RecordError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if isinstance(tp, type) and hasattr(tp, "from_dict"):
        return tp.from_dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where)
    if origin is tuple:
        return _tuple(tp, value, where)
    if origin in (Mapping, dict, typing.Mapping):
        if not isinstance(value, Mapping):
            raise RecordError(f"{where}: expected a mapping, got {value!r}")
        _, item = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(tp, value, where)


def _dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise RecordError(f"{where}: expected a mapping, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise RecordError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = _hints(cls)
    values = {}
    for name, field in fields.items():
        if name in value:
            values[name] = _convert(hints[name], value[name], f"{where}.{name}")
        elif (field.default is dataclasses.MISSING
              and field.default_factory is dataclasses.MISSING):
            raise RecordError(f"{where}: missing {name!r}")
    return cls(**values)


def _tuple(tp: Any, value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise RecordError(f"{where}: expected a list, got {value!r}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise RecordError(f"{where}: expected {len(args)} items, got {len(value)}")
    return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value,
                                                                                 strict=True)))


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    elif tp is type(None):
        if value is None:
            return None
    else:
        raise RecordError(f"{where}: unsupported field type {tp!r}")
    raise RecordError(f"{where}: expected {tp.__name__}, got {value!r}")
