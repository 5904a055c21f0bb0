"""Hardware profiles: measured kernel latencies of one backend on one device, as versioned
JSON. A profile holds measurements only; the latency model is fitted from it on load.

Profiles also hold a channel sweep (:mod:`autocompress.hardware.alignment`), from which the
device's channel block is read; files written before the sweep existed have none (the
field is an addition, like ``precisions``).

A profile measures kernels in one or more precisions (each kernel records its own); files
list them in ``precisions``. Files written before precisions existed hold fp32 kernels only
and read as such (the format version did not change: the field is an addition).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocompress._io import write_json_atomic
from autocompress._records import RecordError, from_jsonable, to_jsonable
from autocompress.exceptions import ProfileError
from autocompress.hardware._device import describe_device
from autocompress.hardware.backends import LatencyMeasurement
from autocompress.hardware.kernels import PRECISIONS, Kernel

__all__ = ["PROFILE_FORMAT", "PROFILE_FORMAT_VERSION", "DeviceCalibration", "HardwareProfile",
           "KernelMeasurement", "ReferencePoint", "describe_device"]

PROFILE_FORMAT = "autocompress-hardware-profile"
PROFILE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class KernelMeasurement:
    kernel: Kernel
    latency: LatencyMeasurement


@dataclass(frozen=True)
class ReferencePoint:
    """One reference model of a device calibration: its raw estimate and its measurement."""

    model: str
    estimate_ms: float
    measured_ms: float


@dataclass(frozen=True)
class DeviceCalibration:
    """``measured = offset_ms + scale * estimate`` for this device, from reference models
    measured on it (``autocompress calibrate``: the geometric mean of their measured /
    estimated ratios, applied as far as it stands out of their scatter, no offset; never a
    model being searched). A search whose profile is of
    another device applies it to every estimate."""

    scale: float
    offset_ms: float
    references: tuple[ReferencePoint, ...]
    created: str = ""

    def describe(self) -> str:
        return (f"{self.offset_ms:.3f} ms + {self.scale:.3f} x estimate, from "
                f"{len(self.references)} reference models measured on the device")


@dataclass(frozen=True)
class HardwareProfile:
    """Measurements of one backend (with its settings) on one device, at batch size 1."""

    backend: str
    backend_version: str
    backend_settings: Mapping[str, Any]
    device: Mapping[str, Any]
    overhead: LatencyMeasurement
    kernels: tuple[KernelMeasurement, ...]
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(
        timespec="seconds"))
    autocompress_version: str = ""
    batch_size: int = 1
    grid: str = ""
    measure_settings: Mapping[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    #: the channel sweep's convolutions (not in ``kernels``: the latency model is not fitted
    #: on them)
    channel_sweep: tuple[KernelMeasurement, ...] = ()
    #: the device's correction of raw estimates (``autocompress calibrate``), if any
    device_calibration: DeviceCalibration | None = None
    #: the channel block the runtime lays convolutions out in, as it said without timing
    #: (:attr:`~autocompress.hardware.Backend.layout_block`; 1: none known)
    layout_block: int = 1

    @property
    def threads(self) -> int:
        return int(self.backend_settings.get("threads", 1))

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this profile measured kernels in, in :data:`PRECISIONS` order."""
        found = {m.kernel.precision for m in self.kernels}
        return tuple(p for p in PRECISIONS if p in found)

    @property
    def sweep_block(self) -> int | None:
        """The block the channel sweep's timings show
        (:func:`~autocompress.hardware.alignment.channel_block`); ``None`` for a profile
        without a sweep."""
        if not self.channel_sweep:
            return None
        from autocompress.hardware.alignment import channel_block

        return channel_block({m.kernel.out_channels: m.latency.median_ms
                              for m in self.channel_sweep})

    @property
    def channel_block(self) -> int | None:
        """The multiple of channels this device runs convolutions fastest at: the channel
        sweep's block (:attr:`sweep_block`), never below the block the runtime lays
        convolutions out in (:attr:`layout_block`: counts between its multiples run padded
        to the next, so rounding to it costs nothing; a sweep timed while the machine's speed
        drifted can show no block at all); ``None`` for a profile without a sweep."""
        swept = self.sweep_block
        return None if swept is None else max(swept, self.layout_block)

    def describe(self) -> str:
        precisions = "" if self.precisions == ("fp32",) else f" ({'+'.join(self.precisions)})"
        settings = self.backend_settings
        how = (f"{self.threads} thread(s)" if "threads" in settings or not settings
               else ", ".join(f"{k} {v}" for k, v in settings.items()))
        if "tuned" in settings:  # a TVM profile: untuned code is not a deployment latency
            how += (f", tuned {settings.get('tuning_trials')} trials per task"
                    if settings["tuned"] else ", untuned")
        return (f"{self.backend} {self.backend_version} ({how}) on "
                f"{self.device.get('cpu', '?')}, {len(self.kernels)} kernels{precisions}, "
                f"{self.created}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "format_version": PROFILE_FORMAT_VERSION,
            "created": self.created,
            "autocompress_version": self.autocompress_version,
            "device": dict(self.device),
            "backend": {"name": self.backend, "version": self.backend_version,
                        "settings": dict(self.backend_settings)},
            "batch_size": self.batch_size,
            "grid": self.grid,
            "measure_settings": dict(self.measure_settings),
            "elapsed_s": self.elapsed_s,
            "precisions": list(self.precisions),
            "overhead": self.overhead.to_dict(),
            "kernels": [{**m.kernel.to_dict(), "latency": m.latency.to_dict()}
                        for m in self.kernels],
            "channel_block": self.channel_block,   # derived, for people
            "layout_block": self.layout_block,
            "channel_sweep": [{**m.kernel.to_dict(), "latency": m.latency.to_dict()}
                              for m in self.channel_sweep],
            "device_calibration": to_jsonable(self.device_calibration),
        }

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, *, backend: str | None = None) -> HardwareProfile:
        """Load and check a profile; with ``backend``, refuse a profile of another backend."""
        path = Path(path)
        if not path.is_file():
            raise ProfileError(
                f"profile {path} does not exist; create one with "
                f"'autocompress profile --backend {backend or 'onnxruntime'} --out {path}'"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProfileError(f"profile {path} is not readable JSON: {exc}") from exc
        return cls.from_dict(data, source=str(path), backend=backend)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<memory>",
                  backend: str | None = None) -> HardwareProfile:
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{source} is not an autocompress hardware profile")
        version = data.get("format_version")
        if version != PROFILE_FORMAT_VERSION:
            raise ProfileError(
                f"{source} has profile format_version {version!r}, this autocompress reads "
                f"version {PROFILE_FORMAT_VERSION}; re-run 'autocompress profile' to measure "
                "the device again"
            )
        try:
            info = data["backend"]
            profile = cls(
                backend=str(info["name"]),
                backend_version=str(info["version"]),
                backend_settings=dict(info.get("settings", {})),
                device=dict(data["device"]),
                overhead=LatencyMeasurement.from_dict(data["overhead"]),
                kernels=_measurements(data["kernels"]),
                channel_sweep=_measurements(data.get("channel_sweep", [])),
                device_calibration=(None if data.get("device_calibration") is None else
                                    from_jsonable(DeviceCalibration,
                                                  data["device_calibration"])),
                created=str(data.get("created", "")),
                autocompress_version=str(data.get("autocompress_version", "")),
                batch_size=int(data.get("batch_size", 1)),
                grid=str(data.get("grid", "")),
                measure_settings=dict(data.get("measure_settings", {})),
                elapsed_s=float(data.get("elapsed_s", 0.0)),
                layout_block=int(data.get("layout_block", 1)),
            )
        except (KeyError, TypeError, ValueError, RecordError) as exc:
            raise ProfileError(f"{source} is a malformed profile ({type(exc).__name__}: "
                               f"{exc}); re-run 'autocompress profile'") from exc
        if backend is not None and profile.backend != backend:
            raise ProfileError(
                f"{source} was measured with backend {profile.backend!r}, not {backend!r}; "
                f"profile the device with '--backend {backend}'"
            )
        if not profile.kernels:
            raise ProfileError(f"{source} holds no kernel measurements; re-run profiling")
        unknown = sorted({m.kernel.precision for m in profile.kernels} - set(PRECISIONS))
        listed = data.get("precisions", ["fp32"])
        if unknown or not isinstance(listed, list) or set(listed) != set(profile.precisions):
            raise ProfileError(
                f"{source} is a malformed profile: it lists precisions {listed!r} but holds "
                f"kernels in {sorted({m.kernel.precision for m in profile.kernels})} (known: "
                f"{', '.join(PRECISIONS)}); re-run 'autocompress profile'")
        return profile


def _measurements(items: Any) -> tuple[KernelMeasurement, ...]:
    return tuple(KernelMeasurement(Kernel.from_dict(k), LatencyMeasurement.from_dict(
        k["latency"])) for k in items)
