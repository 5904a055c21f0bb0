"""Turn a model name into a model, and load weights into it.

A model name is one of:

- a builtin registry name (``resnet20``; see :func:`list_models`);
- a torchvision classification model, ``torchvision:resnet18`` or plainly ``resnet18`` when
  the name is not a builtin; always created with random weights (``weights=None``);
- a timm model, ``timm:resnet18`` (an architecture name as ``timm.list_models()`` gives it);
  always created with random weights (``pretrained=False``) for the data's class and channel
  counts; nothing is downloaded;
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

from autocompress.exceptions import CheckpointError, MissingDependencyError, ModelError
from autocompress.models._registry import get_registered, list_models

__all__ = ["ModelSource", "ModelSpec", "create_model", "load_checkpoint", "resolve_model"]

logger = logging.getLogger(__name__)

ModelSource = Literal["builtin", "torchvision", "timm", "file"]

_TORCHVISION_PREFIX = "torchvision:"
_TIMM_PREFIX = "timm:"
_FILE_MARKER = ".py:"
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MAX_KEYS_SHOWN = 5
_MAX_CLOSE_MATCHES = 5


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of autocompress needs to know about a model source.

    Attributes:
        name: the name as given, e.g. ``"resnet20"``, ``"torchvision:resnet18"``,
            ``"timm:resnet18"`` or ``"path/file.py:factory"``.
        source: where the architecture comes from.
        fixed_in_channels: ``None`` when the model is built for the data's channel count;
            otherwise the only channel count the model accepts (3 for torchvision), and the
            data must be adapted to it (``DataSplit.with_channels``).
        fingerprint: stable identifier of the architecture code, for cache keys:
            ``builtin:resnet20:v1``, ``torchvision:0.29.1:resnet18``,
            ``timm:1.0.31:resnet18`` or ``file:<sha256 of the file>:<factory>``.
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
        MissingDependencyError: a ``timm:NAME`` model without timm installed.
    """
    return _resolve(name).spec


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int] | None = None,
) -> nn.Module:
    """Build a fresh, randomly initialised model.

    Args:
        name: a model name, see :func:`resolve_model`.
        num_classes: size of the classifier's output.
        in_channels: channels of the input images. Models with a fixed channel count
            (``ModelSpec.fixed_in_channels``) accept only that count.
        input_size: (height, width) of the inputs the model will get. When given, the model
            is run once on one input of that size (in eval mode, without gradients), so that
            a model that cannot take it (too small for its downsampling, or a transformer
            built for one size) is refused here with a clear error rather than inside
            training.

    Raises:
        ModelError: unknown name, invalid counts, a channel count the model cannot take, a
            factory that fails or does not return an ``nn.Module``, or a model that fails on
            an input of ``input_size``.
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
    if input_size is not None:
        _check_runs_on(model, name, (1, in_channels, *input_size))
    logger.debug("created model %s (%s) with %d classes", name, resolved.spec.source, num_classes)
    return model


def _check_runs_on(model: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(shape))
    except Exception as error:  # a model may raise anything on a shape it cannot take
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        side = max(64, 2 * max(shape[2:]))
        raise ModelError(
            f"model {name!r} fails on an input of shape {'x'.join(map(str, shape))} "
            f"({type(error).__name__}: {reason}). If the images are too small for it (its "
            f"downsampling, or a transformer built for one input size), give larger inputs "
            f"(--input-shape 1,{shape[1]},{side},{side}, or --resize N for an image folder; "
            "a ViT needs the size it was built for, usually 224) or choose a model made for "
            "small images (resnet20, mobilenet_v2)"
        ) from error
    finally:
        model.train(was_training)


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
    if name.startswith(_TIMM_PREFIX):
        return _resolve_timm(name, name.removeprefix(_TIMM_PREFIX))
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
        f"({len(torchvision_names)} available, e.g. resnet18, mobilenet_v3_small); a timm "
        "model as 'timm:NAME' (e.g. timm:resnet10t); or a factory in a Python file, "
        "'path/to/file.py:factory'."
    )


# --- timm -----------------------------------------------------------------------------------


def _import_timm() -> ModuleType:
    try:
        import timm
    except ImportError as error:
        raise MissingDependencyError(
            "'timm:NAME' models need timm, which is not installed: pip install "
            "'autocompress[search]' (or pip install timm)"
        ) from error
    return timm


def _resolve_timm(name: str, timm_name: str) -> _Resolved:
    timm = _import_timm()
    if not timm_name.strip():
        raise ModelError(
            f"model {name!r} names no timm model; write 'timm:NAME' with an architecture "
            "from timm.list_models(), e.g. 'timm:resnet10t'"
        )
    if not timm.is_model(timm_name):
        raise ModelError(_unknown_timm_message(timm, name, timm_name))
    if "." in timm_name:
        architecture, _, tag = timm_name.partition(".")
        raise ModelError(
            f"model {name!r} carries a pretrained-weights tag ({tag!r}), but autocompress "
            f"never downloads weights; write 'timm:{architecture}' (random weights) and pass "
            "trained weights with --checkpoint"
        )
    version = timm.__version__.split("+", 1)[0]
    spec = ModelSpec(name, "timm", None, f"timm:{version}:{timm_name}")

    def build(num_classes: int, in_channels: int) -> nn.Module:
        try:
            return timm.create_model(
                timm_name, pretrained=False, num_classes=num_classes, in_chans=in_channels
            )
        except Exception as error:
            raise ModelError(
                f"timm could not build {timm_name!r} with {num_classes} classes and "
                f"{in_channels} input channels: {error}"
            ) from error

    return _Resolved(spec, build)


def _unknown_timm_message(timm: ModuleType, name: str, timm_name: str) -> str:
    available = timm.list_models()
    close = difflib.get_close_matches(timm_name, available, n=_MAX_CLOSE_MATCHES, cutoff=0.7)
    containing = timm.list_models(f"*{timm_name}*") if timm_name.isidentifier() else []
    suggestions = list(dict.fromkeys(close + containing))[:_MAX_CLOSE_MATCHES]
    hint = f" Close matches: {', '.join('timm:' + c for c in suggestions)}." if suggestions else ""
    remote = (
        " Hugging Face Hub and local-directory names are refused: autocompress never downloads "
        "a model; pass trained weights with --checkpoint."
        if ":" in timm_name or "/" in timm_name
        else ""
    )
    return (
        f"unknown timm model {name!r}.{hint}{remote} timm {timm.__version__} has "
        f"{len(available)} architectures; list them with python -c \"import timm; "
        "print(timm.list_models('resnet*'))\" (a pattern narrows the list)."
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
