"""Registry of the built-in model architectures, in the spirit of timm's ``_registry.py``.

A builtin is a factory function decorated with :func:`register_model`; it takes the keyword
arguments ``num_classes`` and ``in_channels`` and returns a fresh, randomly initialised
:class:`torch.nn.Module`. The registry is filled once, when the modules that define the
builtins are imported by :mod:`autocompress.models`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from autocompress.exceptions import ModelError

__all__ = ["RegisteredModel", "get_registered", "list_models", "register_model"]


@dataclass(frozen=True)
class RegisteredModel:
    """One builtin: its registry name, factory and architecture version.

    ``version`` is part of the cache fingerprint (``builtin:<name>:v<version>``): bump it
    whenever a change to the factory changes the architecture or its initialisation.
    """

    name: str
    factory: Callable[..., nn.Module]
    version: int

    @property
    def fingerprint(self) -> str:
        return f"builtin:{self.name}:v{self.version}"


_REGISTRY: dict[str, RegisteredModel] = {}

_F = TypeVar("_F", bound=Callable[..., nn.Module])


def register_model(name: str, *, version: int = 1) -> Callable[[_F], _F]:
    """Register the decorated factory as the builtin model ``name``.

    Raises:
        ModelError: ``name`` is already registered, or is not a plain identifier-like name
            (it must not contain ``:`` which is reserved for ``torchvision:NAME``,
            ``timm:NAME`` and ``file.py:factory`` model names).
    """
    if not name or ":" in name or name != name.strip():
        raise ModelError(
            f"cannot register model name {name!r}: use a non-empty name without ':' or "
            "surrounding spaces"
        )
    if version < 1:
        raise ModelError(f"cannot register model {name!r} with version {version}: use 1 or more")

    def decorator(factory: _F) -> _F:
        if name in _REGISTRY:
            raise ModelError(
                f"model name {name!r} is already registered by "
                f"{_REGISTRY[name].factory.__module__}; choose another name"
            )
        _REGISTRY[name] = RegisteredModel(name=name, factory=factory, version=version)
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of the builtin models, sorted."""
    return sorted(_REGISTRY)


def get_registered(name: str) -> RegisteredModel | None:
    """The builtin registered as ``name``, or ``None``."""
    return _REGISTRY.get(name)
