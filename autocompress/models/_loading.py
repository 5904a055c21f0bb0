"""Turn a model name into a model, and load weights into it.

A model name is one of:

- a builtin registry name (``resnet20``; see :func:`list_models`);
- a torchvision classification model, ``torchvision:resnet18`` or plainly ``resnet18`` when
  the name is not a builtin; always created with random weights (``weights=None``);
- a factory in a Python file, ``path/to/file.py:factory``.

Checkpoints are read with ``torch.load(..., weights_only=True)`` only, so a checkpoint can
never run code.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import logging
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
from torch import nn

from autocompress.exceptions import CheckpointError, ModelError
from autocompress.models._registry import get_registered, list_models

__all__ = ["ModelSource", "ModelSpec", "create_model", "load_checkpoint", "resolve_model"]

logger = logging.getLogger(__name__)

ModelSource = Literal["builtin", "torchvision", "file"]

_TORCHVISION_PREFIX = "torchvision:"
_FILE_MARKER = ".py:"
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MAX_KEYS_SHOWN = 5


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of autocompress needs to know about a model source.

    Attributes:
        name: the name as given, e.g. ``"resnet20"``, ``"torchvision:resnet18"`` or
            ``"path/file.py:factory"``.
        source: where the architecture comes from.
        fixed_in_channels: ``None`` when the model is built for the data's channel count;
            otherwise the only channel count the model accepts (3 for torchvision), and the
            data must be adapted to it (``DataSplit.with_channels``).
        fingerprint: stable identifier of the architecture code, for cache keys:
            ``builtin:resnet20:v1``, ``torchvision:0.29.1:resnet18`` or
            ``file:<sha256 of the file>:<factory>``.
    """

    name: str
    source: ModelSource
    fixed_in_channels: int | None
    fingerprint: str


@dataclass(frozen=True)
class _Resolved:
    spec: ModelSpec
    build: Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> fresh model


def resolve_model(name: str) -> ModelSpec:
    """Describe the model called ``name`` without building it.

    A file model is imported (its top-level code runs); when its factory does not take an
    ``in_channels`` parameter, it is built once to read the input channels of its first
    convolution.

    Raises:
        ModelError: the name is unknown (the message lists the valid names), or the file or
            factory cannot be loaded.
    """
    return _resolve(name).spec


def create_model(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """Build a fresh, randomly initialised model.

    Args:
        name: a model name, see :func:`resolve_model`.
        num_classes: size of the classifier's output.
        in_channels: channels of the input images. Models with a fixed channel count
            (``ModelSpec.fixed_in_channels``) accept only that count.

    Raises:
        ModelError: unknown name, invalid counts, a channel count the model cannot take, or
            a factory that fails or does not return an ``nn.Module``.
    """
    _check_count("num_classes", num_classes)
    _check_count("in_channels", in_channels)
    resolved = _resolve(name)
    fixed = resolved.spec.fixed_in_channels
    if fixed is not None and in_channels != fixed:
        raise ModelError(
            f"model {name!r} takes {fixed}-channel input, not {in_channels}; adapt the data "
            f"instead (DataSplit.with_channels({fixed})) or choose a builtin model, which "
            "adapts to any channel count"
        )
    model = resolved.build(num_classes, in_channels)
    logger.debug("created model %s (%s) with %d classes", name, resolved.spec.source, num_classes)
    return model


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load the weights in ``path`` into ``model``, in place.

    The file must hold a state_dict, or a dict holding one under ``"state_dict"`` or
    ``"model"`` (a ``"module."`` prefix left by ``DataParallel`` is removed). It is read with
    ``weights_only=True``: files with pickled Python objects are refused.

    Raises:
        CheckpointError: the file is missing, unreadable, carries pickled code, or its keys
            or shapes do not match the model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass the path of a file written with "
            "torch.save(model.state_dict(), path)"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is not None:
            raise CheckpointError(
                f"checkpoint {path} contains a pickled Python object ({refused.group(1)}), "
                "which would run code when loaded, so autocompress refuses it; save only the "
                "weights with torch.save(model.state_dict(), path) and pass that file"
            ) from error
        raise _unreadable(path, error) from error
    except Exception as error:  # torch.load raises OSError, EOFError, RuntimeError, ...
        raise _unreadable(path, error) from error
    state = _extract_state_dict(loaded, path)
    _check_state_dict_fits(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path} does not fit model {type(model).__name__}: {error}"
        ) from error
    logger.info("loaded %d tensors from %s into %s", len(state), path, type(model).__name__)


# --- name resolution ---------------------------------------------------------------------


def _resolve(name: str) -> _Resolved:
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"a model name must be a non-empty string, not {name!r}")
    registered = get_registered(name)
    if registered is not None:
        spec = ModelSpec(name, "builtin", None, registered.fingerprint)
        factory = registered.factory
        return _Resolved(
            spec, lambda classes, channels: factory(num_classes=classes, in_channels=channels)
        )
    if _FILE_MARKER in name:
        return _resolve_file(name)
    torchvision_name = name.removeprefix(_TORCHVISION_PREFIX)
    if torchvision_name in _torchvision_names():
        return _resolve_torchvision(name, torchvision_name)
    raise ModelError(_unknown_name_message(name, torchvision_name))


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _resolve_torchvision(name: str, torchvision_name: str) -> _Resolved:
    import torchvision

    version = torchvision.__version__.split("+", 1)[0]
    spec = ModelSpec(name, "torchvision", 3, f"torchvision:{version}:{torchvision_name}")

    def build(num_classes: int, in_channels: int) -> nn.Module:
        try:
            return torchvision.models.get_model(
                torchvision_name, weights=None, num_classes=num_classes
            )
        except Exception as error:
            raise ModelError(
                f"torchvision could not build {torchvision_name!r} with {num_classes} classes: "
                f"{error}"
            ) from error

    return _Resolved(spec, build)


def _unknown_name_message(name: str, torchvision_name: str) -> str:
    builtins = list_models()
    torchvision_names = _torchvision_names()
    close = difflib.get_close_matches(torchvision_name, builtins + torchvision_names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown model {name!r}.{hint} Valid names: a builtin ({', '.join(builtins)}); a "
        f"torchvision classification model, by name or as 'torchvision:NAME' "
        f"({len(torchvision_names)} available, e.g. resnet18, mobilenet_v3_small); or a "
        "factory in a Python file, 'path/to/file.py:factory'."
    )


# --- models from Python files --------------------------------------------------------------


def _resolve_file(name: str) -> _Resolved:
    path_text, _, factory_name = name.rpartition(":")
    path = Path(path_text).expanduser()
    if not factory_name.isidentifier():
        raise ModelError(
            f"model {name!r}: {factory_name!r} is not a Python name; write "
            "'path/to/file.py:factory' with the name of a function or class in that file"
        )
    if not path.is_file():
        raise ModelError(
            f"model file {path} does not exist; write 'path/to/file.py:factory' with the path "
            "of an existing Python file"
        )
    source = path.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    module = _import_file(path, source)
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        found = _callables_defined_in(module)
        raise ModelError(
            f"model file {path} has no callable {factory_name!r}; callables defined there: "
            f"{', '.join(found) if found else 'none'}"
        )
    accepted = _accepted_keywords(factory)

    def build(num_classes: int, in_channels: int) -> nn.Module:
        kwargs: dict[str, int] = {}
        if "num_classes" in accepted:
            kwargs["num_classes"] = num_classes
        if "in_channels" in accepted:
            kwargs["in_channels"] = in_channels
        try:
            model = factory(**kwargs)
        except Exception as error:
            raise ModelError(
                f"{factory_name}() in {path} raised {type(error).__name__}: {error}; fix the "
                "factory (it is called with num_classes= when it takes that parameter)"
            ) from error
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"{factory_name}() in {path} returned {type(model).__name__}, not a "
                "torch.nn.Module; make the factory return the model"
            )
        return model

    fixed_in_channels: int | None
    if "in_channels" in accepted:
        fixed_in_channels = None
    else:
        fixed_in_channels = _first_conv_in_channels(build(2, 3))
    spec = ModelSpec(name, "file", fixed_in_channels, f"file:{digest}:{factory_name}")
    return _Resolved(spec, build)


def _import_file(path: Path, source: bytes) -> ModuleType:
    """Import ``path`` under a module name unique to its location and contents.

    The module is kept in ``sys.modules`` (classes defined there must be importable by name
    for pickling and dataclasses); importing the same unchanged file again reuses it.
    """
    identity = hashlib.sha256(str(path.resolve()).encode() + b"\0" + source).hexdigest()
    module_name = f"_autocompress_model_{identity[:20]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {path} as Python code; pass a '.py' file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ModelError(
            f"importing model file {path} failed with {type(error).__name__}: {error}; fix the "
            "file so that it imports on its own"
        ) from error
    return module


def _callables_defined_in(module: ModuleType) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if callable(value)
        and not name.startswith("_")
        and getattr(value, "__module__", None) == module.__name__
    )


def _accepted_keywords(factory: Callable[..., object]) -> set[str]:
    """Which of ``num_classes`` / ``in_channels`` the factory can take by keyword.

    ``**kwargs`` counts for ``num_classes`` only: passing an unexpected ``in_channels``
    through ``**kwargs`` breaks common factories (torchvision's among them).
    """
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    by_name = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    accepted = by_name & {"num_classes", "in_channels"}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        accepted.add("num_classes")
    return accepted


def _first_conv_in_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, _CONV_TYPES):
            return int(module.in_channels)
    return None


def _check_count(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} must be a positive integer, not {value!r}")


# --- checkpoints ---------------------------------------------------------------------------


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointError(
        f"checkpoint {path} is not a readable PyTorch file ({reason}); it may be truncated or "
        "not written by torch.save: save it again with torch.save(model.state_dict(), path)"
    )


def _extract_state_dict(loaded: object, path: Path) -> dict[str, object]:
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if (
        not isinstance(loaded, Mapping)
        or not loaded
        or not all(isinstance(key, str) for key in loaded)
        or not any(isinstance(value, torch.Tensor) for value in loaded.values())
    ):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(loaded).__name__} that is not a state_dict (a "
            "mapping of parameter names to tensors), nor a dict with one under 'state_dict' "
            "or 'model'; save it with torch.save(model.state_dict(), path)"
        )
    state = dict(loaded)
    prefix = "module."
    if all(key.startswith(prefix) for key in state):
        state = {key.removeprefix(prefix): value for key, value in state.items()}
    return state


def _check_state_dict_fits(model: nn.Module, state: Mapping[str, object], path: Path) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(value.shape)} in the checkpoint vs {tuple(expected[key].shape)}"
        for key, value in state.items()
        if key in expected
        and isinstance(value, torch.Tensor)
        and value.shape != expected[key].shape
    ]
    problems = [
        f"{label} ({len(keys)}): {_first(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit model {type(model).__name__}: "
            + "; ".join(problems)
            + ". Create the model with the same name, num_classes and in_channels as the one "
            "that was saved"
        )


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    return shown + (", ..." if len(keys) > _MAX_KEYS_SHOWN else "")
