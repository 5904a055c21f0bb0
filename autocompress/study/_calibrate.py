"""A device's correction of raw estimates, from a few reference models measured on it.

A profile's kernel model misses what a whole network does that isolated kernels do not
(caches warm from the previous layer, fusions, the runtime's scheduling), and it misses it
differently on each device. A search on this machine calibrates on the searched model
itself (uniformly pruned copies, measured); a device that is elsewhere (a phone, a board
without RPC) cannot be asked. :func:`calibrate_device` measures :data:`REFERENCE_MODELS`
(five torchvision classifiers with random weights, none of them a family the fidelity
benchmark evaluates) on the profile's backend, takes the geometric mean of their
measured / estimated ratios, applied as far as it stands out of their scatter
(:func:`device_scale`), as the device's ``scale`` (no offset) and stores it in the profile as
its
:class:`~autocompress.hardware.profile.DeviceCalibration`. A search whose profile is of
another device applies it to every estimate; one on this machine still calibrates on its
model.

Why a ratio and no offset: the references are whole networks of milliseconds, the models
searched may be far smaller, and an affine fit over five points extrapolates its offset to
them. Fitted on this project's development CPU it came to ``-0.297 ms + 0.942 x estimate``,
which put resnet20 (0.87 ms raw, 0.73 measured) at 0.52 ms.

Where the profile's backend cannot be reached from here, :func:`export_references` writes
the reference graphs to a folder; ``autocompress measure --onnx DIR --out results.json`` on
the device measures them, and ``calibrate --measurements results.json`` reads the results.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from autocompress.exceptions import ProfileError
from autocompress.hardware import HardwareProfile, MeasureSettings
from autocompress.hardware._apart import apart
from autocompress.hardware.latency import LatencyModel
from autocompress.hardware.profile import DeviceCalibration, ReferencePoint
from autocompress.hardware.profiler import ProfileCheck, measure_with_check
from autocompress.models import create_model
from autocompress.space import Candidate
from autocompress.transforms import compress

__all__ = ["REFERENCE_MODELS", "CalibrationResult", "calibrate_device", "device_scale",
           "export_references", "reference_graphs"]

_logger = logging.getLogger("autocompress")

#: (model, input shape) of the reference models: five architectures the fidelity benchmark
#: does not evaluate (depthwise and squeeze-excitation blocks, fire modules, grouped
#: convolutions), small enough to export and measure in seconds.
REFERENCE_MODELS: tuple[tuple[str, tuple[int, int, int, int]], ...] = (
    ("torchvision:mobilenet_v3_small", (1, 3, 96, 96)),
    ("torchvision:squeezenet1_1", (1, 3, 96, 96)),
    ("torchvision:regnet_x_400mf", (1, 3, 96, 96)),
    ("torchvision:mnasnet0_5", (1, 3, 96, 96)),
    ("torchvision:efficientnet_b0", (1, 3, 96, 96)),
)
_MEASURE = MeasureSettings(max_time_s=2.0, min_runs=50, round_runs=25)
#: Kernels of the profile measured in the same interleaved pass as the references, to tell
#: the profile's error from a spell of the machine (:func:`calibrate_device`), and how many
#: passes, how far apart, are taken while they run off their profiled time.
CHECK_KERNELS = 8
CHECK_PASSES = 3
CHECK_PAUSE_S = 30.0


@dataclass(frozen=True)
class CalibrationResult:
    """The stored calibration and how far the raw estimates were from the measurements."""

    profile: Path
    calibration: DeviceCalibration
    #: how the machine ran the profile's kernels beside the references, where they were
    #: measured here (None with ``measurements`` brought from the device)
    machine: ProfileCheck | None = None

    @property
    def spread(self) -> float:
        """The largest over the smallest measured / estimated ratio of the references: near 1
        when one factor fits the device; well above it when the profile's error depends on
        the architecture, which one factor cannot correct."""
        ratios = [p.measured_ms / p.estimate_ms for p in self.calibration.references]
        return max(ratios) / min(ratios)

    def errors(self) -> list[tuple[str, float, float]]:
        """(model, raw error, calibrated error), relative to the measurement."""
        c = self.calibration
        return [(p.model, p.estimate_ms / p.measured_ms - 1,
                 (c.offset_ms + c.scale * p.estimate_ms) / p.measured_ms - 1)
                for p in c.references]


def _label(name: str, shape: tuple[int, ...]) -> str:
    return f"{name.split(':')[-1]}-{shape[2]}px"


def reference_graphs() -> list[tuple[str, bytes]]:
    """(label, ONNX graph) of every reference model: random weights (seed 0), batch 1."""
    graphs = []
    for name, shape in REFERENCE_MODELS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = create_model(name, num_classes=1000, in_channels=shape[1]).eval()
        onnx_bytes = compress(model, Candidate(), torch.zeros(shape)).structure_onnx()
        graphs.append((_label(name, shape), onnx_bytes))
    return graphs


def export_references(folder: str | Path) -> list[Path]:
    """Write the reference graphs to ``folder`` as ``<label>.onnx`` (to measure them on a
    device this machine cannot reach)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, onnx_bytes in reference_graphs():
        path = folder / f"{label}.onnx"
        path.write_bytes(onnx_bytes)
        paths.append(path)
    return paths


def _read_measurements(path: Path, labels: list[str]) -> dict[str, float]:
    """``{label: median ms}`` from ``autocompress measure --out`` results."""
    try:
        rows = json.loads(path.read_text())["results"]
        found = {Path(r["onnx"]).stem: float(r["median_ms"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProfileError(f"{path} is not the output of `autocompress measure --out` "
                           f"({type(exc).__name__}: {exc})") from exc
    missing = [label for label in labels if label not in found]
    if missing:
        raise ProfileError(f"{path} has no measurement of {', '.join(missing)}; measure every "
                           f"file `autocompress calibrate --export-references DIR` wrote")
    return found


def device_scale(estimates: list[float], measured: list[float]) -> float:
    """The device's factor from the references' measured / estimated ratios: their geometric
    mean, applied only as far as it stands out of their own scatter.

    Each ratio is the device's factor times the profile's error on that architecture, and
    those errors do not average out over five architectures (on this project's CPU, with its
    own profile, all five references came out 1-19% overestimated in one run while the zoo's
    median was 2% underestimated). So a mean log ratio ``m`` within one standard deviation
    ``sd`` of the log ratios is not told apart from the profile's own error and is not
    applied; beyond, its share rises linearly to all of it at ``2 sd``
    (``m * clip(|m| / sd - 1, 0, 1)``). A device 2.5x slower than its profile (every ratio
    near 2.5, scattered by the same few percent) gets its factor in full; the profiled device
    itself gets none.
    """
    logs = [math.log(m / e) for m, e in zip(measured, estimates, strict=True)]
    mean = statistics.fmean(logs)
    sd = statistics.stdev(logs) if len(logs) >= 2 else 0.0
    if sd == 0.0:
        return math.exp(mean)
    return math.exp(mean * min(max(abs(mean) / sd - 1.0, 0.0), 1.0))


def calibrate_device(profile_path: str | Path, *, measurements: str | Path | None = None,
                     rounds: int = 3) -> CalibrationResult:
    """Measure the reference models on the profile's backend (or read ``measurements``),
    fit the device's correction and store it in the profile (rewritten in place).

    Measured here, the references share each interleaved pass with :data:`CHECK_KERNELS` of
    the profile's own kernels (:func:`~autocompress.hardware.profiler.measure_with_check`);
    while those run more than 10% off their profiled time the pass is taken again, and if
    none comes within, nothing is stored. A factor is the profile's error on whole networks;
    measured in a slow spell it is the spell's: on the 2-core development VM (2026-12-07
    01:07) the five references measured 1.6-3.1x their estimates minutes after the profile,
    and a factor of 2.09 was stored, which put every model of that run 2x off.

    Raises:
        ProfileError: the profile's backend cannot measure here and no ``measurements`` were
            given, or they miss a reference model; or the machine ran off the profile's
            speed in every pass.
    """
    from autocompress.hardware.backends import backend_for, is_local

    path = Path(profile_path)
    profile = HardwareProfile.load(path)
    model = LatencyModel(profile)
    graphs = reference_graphs()
    labels = [label for label, _ in graphs]
    estimates = [model.estimate(onnx_bytes).latency_ms for _, onnx_bytes in graphs]
    machine = None
    if measurements is not None:
        found = _read_measurements(Path(measurements), labels)
        measured = [found[label] for label in labels]
    else:
        if not is_local(profile) and not profile.backend_settings.get("rpc"):
            raise ProfileError(
                f"{path} is a profile of another device ({profile.describe()}): write the "
                f"reference models with `autocompress calibrate --profile {path} "
                f"--export-references DIR`, measure them there with `autocompress measure "
                f"--onnx DIR --out results.json`, then `autocompress calibrate --profile "
                f"{path} --measurements results.json`")
        backend = apart(backend_for(profile.backend, profile.backend_settings))
        _logger.info("measuring %d reference models on %s, beside %d of its profiled kernels",
                     len(graphs), profile.describe(), CHECK_KERNELS)
        checked = measure_with_check(profile, backend, [g for _, g in graphs], _MEASURE,
                                     rounds=rounds, sample=CHECK_KERNELS, passes=CHECK_PASSES,
                                     pause_s=CHECK_PAUSE_S)
        measured = [r.median_ms for r in checked.measurements]
        machine = checked.check
        if not checked.check.holds:
            found = ", ".join(f"{label} {ms:.3f} ms" for label, ms in zip(labels, measured,
                                                                          strict=True))
            raise ProfileError(
                f"{path}: beside the reference models this machine ran the profile's kernels "
                f"at {checked.check.median_ratio:.2f}x their profiled time (the closest of "
                f"{checked.passes} passes; {checked.check.describe()}), so a factor fitted "
                f"now would be this machine's passing speed, not the profile's error; nothing "
                f"was stored. Calibrate again when it runs as when profiled, or profile it "
                f"again (`autocompress profile --check --out {path}` tells). The references "
                f"measured {found}")
    scale = device_scale(estimates, measured)
    calibration = DeviceCalibration(
        scale=scale, offset_ms=0.0,
        references=tuple(ReferencePoint(label, e, m)
                         for label, e, m in zip(labels, estimates, measured, strict=True)),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    replace(profile, device_calibration=calibration).save(path)
    return CalibrationResult(path, calibration, machine)
