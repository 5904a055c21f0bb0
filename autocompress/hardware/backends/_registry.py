"""The backend registry: names -> backend classes, and the factories built on it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from autocompress.exceptions import AutocompressError, ProfileError
from autocompress.hardware._device import same_device
from autocompress.hardware.backends._base import Backend
from autocompress.hardware.rules import NEUTRAL_RULES, CostRules

if TYPE_CHECKING:
    from autocompress.hardware.profile import HardwareProfile

__all__ = ["available_backends", "backend_class", "backend_for", "get_backend", "is_local",
           "register_backend", "rules_for"]

_logger = logging.getLogger(__name__)

_B = TypeVar("_B", bound=type[Backend])
# name -> class, in registration order; filled by @register_backend as modules are imported
_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(name: str) -> Callable[[_B], _B]:
    """Class decorator: register a :class:`Backend` subclass under ``name`` (and set its
    ``name``), so that :func:`get_backend`, the command line and the shared backend tests
    know it. The module defining it must not import its runtime library at import time."""
    if not name or not name.replace("-", "_").isidentifier():
        raise ValueError(f"a backend name is a short identifier such as 'onnxruntime', "
                         f"not {name!r}")

    def register(cls: _B) -> _B:
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"backend {name!r} is registered already, by {known.__module__}."
                             f"{known.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def available_backends() -> tuple[str, ...]:
    """Names of the registered backends, in registration order."""
    return tuple(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name``; :class:`ProfileError` names the others."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ProfileError(f"unknown backend {name!r}; available: "
                           f"{', '.join(available_backends())}") from None


def _foreign_options(name: str, cls: type[Backend], unknown: list[str]) -> ProfileError:
    owners = [other for other, c in _REGISTRY.items()
              if other != name and set(unknown) <= set(c.options())]
    listed = " and ".join(unknown)
    own = ", ".join(cls.options()) or "none"
    what = f"{cls.summary} (options: {own})" if cls.summary else f"takes options: {own}"
    them = "it" if len(unknown) == 1 else "them"
    if not owners:
        return ProfileError(f"backend {name} has no option {listed}; {name} {what}")
    noun = "an option" if len(unknown) == 1 else "options"
    plural = "s" if len(owners) > 1 else ""
    return ProfileError(
        f"{listed} {'is' if len(unknown) == 1 else 'are'} {noun} of the "
        f"{' and '.join(owners)} backend{plural}; {name} {what}: drop {them}, or use backend "
        f"{' or '.join(repr(o) for o in owners)}")


def get_backend(name: str, **options: Any) -> Backend:
    """The backend called ``name`` configured with ``options`` (e.g. ``threads=2``;
    ``None`` means not given, so the backend's default applies). Each backend validates its
    own options; one that belongs to another backend is refused with a message saying so."""
    cls = backend_class(name)
    given = {key: value for key, value in options.items() if value is not None}
    unknown = [key for key in given if key not in cls.options()]
    if unknown:
        raise _foreign_options(name, cls, unknown)
    return cls(**given)


def backend_for(name: str, settings: Mapping[str, Any]) -> Backend:
    """The backend a profile was measured with, rebuilt from its recorded settings."""
    return backend_class(name).from_settings(settings)


def rules_for(name: str) -> CostRules:
    """The cost rules of the backend called ``name``, without importing its runtime; the
    neutral rules (with a warning) for a backend not registered in this process."""
    cls = _REGISTRY.get(name)
    if cls is None:
        _logger.warning("backend %r is not registered here (known: %s): its latency model "
                        "uses the neutral cost rules", name, ", ".join(_REGISTRY))
        return NEUTRAL_RULES
    return cls.cost_rules


def is_local(profile: HardwareProfile) -> bool:
    """Whether ``profile`` was measured on this machine with the installed backend, not over
    RPC: its backend rebuilt from the recorded settings runs here, describes the same device
    and has the same version (so new measurements compare with the profile's)."""
    try:
        backend = backend_for(profile.backend, profile.backend_settings)
        if not backend.runs_here:
            return False
        return (same_device(profile.device, backend.describe_device())
                and backend.version() == profile.backend_version)
    except (AutocompressError, ImportError, TypeError, ValueError) as exc:
        _logger.debug("profile backend %s is not usable here: %s", profile.backend, exc)
        return False
