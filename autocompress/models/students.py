"""Student architectures: small networks trained by distillation from the user's model.

A student is described by a typed, frozen spec - one dataclass per *family* - that builds a
fresh, randomly initialised model for any class and channel count:

>>> spec = CifarResNetStudent(depths=(1, 1, 2), widths=(8, 16, 32))
>>> spec.describe()
'cifar_resnet d(1,1,2) w(8,16,32)'
>>> model = spec.build(num_classes=10, in_channels=1)
>>> student_from_dict(spec.to_dict()) == spec
True

Families (see :func:`list_student_families`):

- ``cifar_resnet``: the CIFAR ResNet of :mod:`autocompress.models.cifar_resnet` with its own
  block count and width per stage;
- ``mobilenet_v2``: the builtin MobileNetV2 with a width multiplier and expansion ratio;
- ``torchvision``: a small torchvision classifier from an allow-list, always with random
  weights (``weights=None``: nothing is ever downloaded), its stem adapted to the input's
  channel count and to 28-32 px images (see :data:`TORCHVISION_STUDENTS`).

Specs serialize to JSON (:meth:`StudentSpec.to_dict`) and load back only through the
allow-list of registered families (:func:`student_from_dict`).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from torch import nn

from autocompress.exceptions import ModelError
from autocompress.models.cifar_resnet import CifarResNet
from autocompress.models.mobilenet_v2 import MobileNetV2

__all__ = [
    "CIFAR_RESNET_DEPTH_RANGE",
    "CIFAR_RESNET_WIDTH_RANGE",
    "MOBILENET_V2_EXPAND_RANGE",
    "MOBILENET_V2_WIDTH_RANGE",
    "TORCHVISION_STUDENTS",
    "CifarResNetStudent",
    "MobileNetV2Student",
    "StudentSpec",
    "TorchvisionStudent",
    "get_student_family",
    "list_student_families",
    "register_student",
    "student_from_dict",
]

#: Blocks per stage of a ``cifar_resnet`` student, inclusive.
CIFAR_RESNET_DEPTH_RANGE = (1, 9)
#: Channels per stage of a ``cifar_resnet`` student, inclusive.
CIFAR_RESNET_WIDTH_RANGE = (8, 256)
#: ``width_mult`` of a ``mobilenet_v2`` student, inclusive.
MOBILENET_V2_WIDTH_RANGE = (0.1, 2.0)
#: ``expand_ratio`` of a ``mobilenet_v2`` student, inclusive.
MOBILENET_V2_EXPAND_RANGE = (1, 8)
_STAGES = 3
_FINGERPRINT_VERSION = 1


class StudentSpec(ABC):
    """One student architecture. Subclasses are frozen dataclasses registered with
    :func:`register_student` under their ``family`` name."""

    family: ClassVar[str]

    @abstractmethod
    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        """A fresh, randomly initialised model giving ``num_classes`` logits for
        ``in_channels``-channel images of 28-32 px."""

    @abstractmethod
    def describe(self) -> str:
        """A short human-readable summary, e.g. ``cifar_resnet d(1,1,2) w(8,16,32)``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"family": ..., <field>: <value>, ...}`` (tuples become lists)."""
        out: dict[str, Any] = {"family": self.family}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def fingerprint(self) -> str:
        """Stable identifier of the architecture, for cache keys; bump
        :data:`_FINGERPRINT_VERSION` when building the same spec gives another network."""
        return f"student:v{_FINGERPRINT_VERSION}:" + json.dumps(self.to_dict(), sort_keys=True)


_S = TypeVar("_S", bound=type[StudentSpec])
_FAMILIES: dict[str, type[StudentSpec]] = {}


def register_student(cls: _S) -> _S:
    """Class decorator: make ``cls`` loadable by :func:`student_from_dict`."""
    family = getattr(cls, "family", None)
    if not isinstance(family, str) or not family:
        raise ModelError(f"student class {cls.__name__} must set a non-empty `family` name")
    if family in _FAMILIES:
        raise ModelError(
            f"student family {family!r} is already registered by "
            f"{_FAMILIES[family].__qualname__}; choose another family name"
        )
    _FAMILIES[family] = cls
    return cls


def list_student_families() -> list[str]:
    """Names of the registered student families, sorted."""
    return sorted(_FAMILIES)


def get_student_family(family: str) -> type[StudentSpec]:
    """The spec class of ``family``.

    Raises:
        ModelError: unknown family (the message lists the known ones).
    """
    cls = _FAMILIES.get(family) if isinstance(family, str) else None
    if cls is None:
        raise ModelError(
            f"unknown student family {family!r}; known families: "
            f"{', '.join(list_student_families())}"
        )
    return cls


def student_from_dict(data: Mapping[str, Any]) -> StudentSpec:
    """Rebuild a spec written by :meth:`StudentSpec.to_dict`.

    Raises:
        ModelError: not a mapping, unknown family, unknown or missing fields, or values out
            of the family's range.
    """
    if not isinstance(data, Mapping):
        raise ModelError(f"a student spec must be a mapping with 'family', not {data!r}")
    cls = get_student_family(data.get("family"))  # type: ignore[arg-type]
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    given = {str(k) for k in data} - {"family"}
    unknown = sorted(given - set(names))
    missing = [n for n in names if n not in given]
    if unknown or missing:
        raise ModelError(
            f"student spec of family {cls.family!r} takes the fields {names}; "
            + "; ".join(
                part for part in (
                    f"unknown: {unknown}" if unknown else "",
                    f"missing: {missing}" if missing else "",
                ) if part
            )
        )
    values = {n: tuple(data[n]) if isinstance(data[n], list) else data[n] for n in names}
    return cls(**values)


# --- validation helpers -------------------------------------------------------------------


def _int_in(value: object, what: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelError(f"{what} must be an integer in [{low}, {high}], not {value!r}")
    return value


def _ints_per_stage(value: object, what: str, bounds: tuple[int, int]) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != _STAGES:
        raise ModelError(
            f"{what} must be {_STAGES} integers in [{bounds[0]}, {bounds[1]}], one per stage, "
            f"not {value!r}"
        )
    return tuple(_int_in(v, f"{what}[{i}]", bounds) for i, v in enumerate(value))


def _float_in(value: object, what: str, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not low <= value <= high):
        raise ModelError(f"{what} must be a number in [{low:g}, {high:g}], not {value!r}")
    return float(value)


# --- families -----------------------------------------------------------------------------


@register_student
@dataclass(frozen=True)
class CifarResNetStudent(StudentSpec):
    """A CIFAR ResNet with ``depths[i]`` BasicBlocks of ``widths[i]`` channels in stage i.

    ``depths=(3, 3, 3), widths=(16, 32, 64)`` is resnet20.
    """

    family: ClassVar[str] = "cifar_resnet"
    depths: tuple[int, ...]
    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", _ints_per_stage(
            self.depths, "cifar_resnet depths", CIFAR_RESNET_DEPTH_RANGE))
        object.__setattr__(self, "widths", _ints_per_stage(
            self.widths, "cifar_resnet widths", CIFAR_RESNET_WIDTH_RANGE))

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(self.depths, widths=self.widths, num_classes=num_classes,
                           in_channels=in_channels)

    def describe(self) -> str:
        return (f"cifar_resnet d({','.join(map(str, self.depths))}) "
                f"w({','.join(map(str, self.widths))})")


@register_student
@dataclass(frozen=True)
class MobileNetV2Student(StudentSpec):
    """The builtin MobileNetV2 (stride adapted to 28-32 px) at ``width_mult`` and
    ``expand_ratio``."""

    family: ClassVar[str] = "mobilenet_v2"
    width_mult: float
    expand_ratio: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "width_mult", _float_in(
            self.width_mult, "mobilenet_v2 width_mult", MOBILENET_V2_WIDTH_RANGE))
        _int_in(self.expand_ratio, "mobilenet_v2 expand_ratio", MOBILENET_V2_EXPAND_RANGE)

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        return MobileNetV2(num_classes=num_classes, in_channels=in_channels,
                           width_mult=self.width_mult, expand_ratio=self.expand_ratio)

    def describe(self) -> str:
        return f"mobilenet_v2 w{self.width_mult:g} e{self.expand_ratio}"


@dataclass(frozen=True)
class _SmallInputAdapter:
    """How a torchvision ImageNet classifier is adapted to small images: its stem
    convolution (module path ``stem``) becomes a stride-1 3x3 convolution taking the data's
    channels, and the modules in ``drop`` (early max-pools) become identities. The network
    then downsamples 8x or 16x instead of 32x."""

    stem: str
    drop: tuple[str, ...] = ()


#: The torchvision classifiers a ``torchvision`` student may be, with their adaptation.
#: Each builds, runs at 1x28x28 and 3x32x32 and exports to ONNX (checked by the tests).
TORCHVISION_STUDENTS: Mapping[str, _SmallInputAdapter] = MappingProxyType({
    "mnasnet0_5": _SmallInputAdapter("layers.0"),
    "mobilenet_v3_small": _SmallInputAdapter("features.0.0"),
    "resnet18": _SmallInputAdapter("conv1", drop=("maxpool",)),
    "shufflenet_v2_x0_5": _SmallInputAdapter("conv1.0", drop=("maxpool",)),
    "shufflenet_v2_x1_0": _SmallInputAdapter("conv1.0", drop=("maxpool",)),
    "squeezenet1_1": _SmallInputAdapter("features.0"),
})


def _replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


@register_student
@dataclass(frozen=True)
class TorchvisionStudent(StudentSpec):
    """A torchvision classifier from :data:`TORCHVISION_STUDENTS`, randomly initialised."""

    family: ClassVar[str] = "torchvision"
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in TORCHVISION_STUDENTS:
            raise ModelError(
                f"torchvision student {self.name!r} is not allowed; choose one of "
                f"{', '.join(sorted(TORCHVISION_STUDENTS))}"
            )

    @property
    def fingerprint(self) -> str:
        import torchvision

        # the architecture is torchvision's: its version is part of the identity
        return f"{super().fingerprint}:torchvision-{torchvision.__version__.split('+')[0]}"

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        import torchvision

        adapter = TORCHVISION_STUDENTS[self.name]
        model = torchvision.models.get_model(self.name, weights=None, num_classes=num_classes)
        old = model.get_submodule(adapter.stem)
        if not isinstance(old, nn.Conv2d):  # pragma: no cover - guards torchvision changes
            raise ModelError(
                f"torchvision {self.name}: expected a Conv2d stem at {adapter.stem!r}, found "
                f"{type(old).__name__}; this torchvision version is not supported for students"
            )
        stem = nn.Conv2d(in_channels, old.out_channels, 3, stride=1, padding=1,
                         bias=old.bias is not None)
        nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
        if stem.bias is not None:
            nn.init.zeros_(stem.bias)
        _replace_module(model, adapter.stem, stem)
        for path in adapter.drop:
            _replace_module(model, path, nn.Identity())
        return model

    def describe(self) -> str:
        return f"torchvision {self.name}"

