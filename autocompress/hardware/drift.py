"""Measuring on a machine whose speed drifts: a reference graph measured beside the models.

A VM's slow spells slow every model alike and no process shows them (on the 2-core
development VM the resnet20 baseline once measured 1.46 ms against 1.07 ms minutes before,
and every model of that pass measured over its budget). A graph whose latency is known from
earlier (a run's baseline, measured when the run began; at the start of a run, the estimate
of a profile measured on this machine) is measured in the same interleaved pass as the
models; while it is off that latency by more than a tolerance, the pass is taken again after
a pause, and the pass whose reference came closest is kept. Where the expected latency is an
estimate (``slower_only``), a reference faster than it is the estimate's error, not the
machine's: only a slower one is measured again, and the fastest pass is kept, since a slow
spell only ever adds time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from autocompress.hardware.backends import Backend, LatencyMeasurement, MeasureSettings

__all__ = ["DriftCheck", "MeasuredBeside", "measure_beside"]

_logger = logging.getLogger("autocompress")


@dataclass(frozen=True)
class DriftCheck:
    """A reference graph and the latency expected of it (``expected``: where that figure
    comes from, for the log); a pass whose reference is more than ``tolerance`` off it
    (with ``slower_only``: slower than it by more) is taken again after ``pause_s``, up to
    ``passes`` passes in all."""

    onnx: bytes
    latency_ms: float
    tolerance: float = 0.1
    passes: int = 4
    pause_s: float = 30.0
    expected: str = "when first measured"
    slower_only: bool = False

    def __post_init__(self) -> None:
        if self.latency_ms <= 0 or self.passes < 1 or self.tolerance < 0 or self.pause_s < 0:
            raise ValueError(f"a drift check needs a positive reference latency and at least "
                             f"one pass (got {self.latency_ms} ms, {self.passes} passes, "
                             f"tolerance {self.tolerance}, pause {self.pause_s} s)")

    def drift(self, measured_ms: float) -> float:
        """How far ``measured_ms`` is off the reference's expected latency (0.1: 10% slower)."""
        return measured_ms / self.latency_ms - 1.0

    def off(self, measured_ms: float) -> float:
        """How far off a pass whose reference measured ``measured_ms`` counts: its drift's
        size, or with ``slower_only`` only its slowness (a faster reference counts 0)."""
        drift = self.drift(measured_ms)
        return max(drift, 0.0) if self.slower_only else abs(drift)

    def better(self, measured_ms: float, than_ms: float) -> bool:
        """Whether a pass whose reference measured ``measured_ms`` is kept over one that
        measured ``than_ms``: the closer to the expected latency, or with ``slower_only``
        the faster."""
        if self.slower_only:
            return measured_ms < than_ms
        return abs(self.drift(measured_ms)) < abs(self.drift(than_ms))


@dataclass(frozen=True)
class MeasuredBeside:
    """The models' measurements of the pass kept, its reference's, and how many passes were
    taken."""

    measurements: tuple[LatencyMeasurement, ...]
    reference: LatencyMeasurement
    passes: int
    check: DriftCheck

    @property
    def latencies_ms(self) -> tuple[float, ...]:
        return tuple(m.median_ms for m in self.measurements)

    @property
    def reference_ms(self) -> float:
        return self.reference.median_ms

    @property
    def drift(self) -> float:
        return self.check.drift(self.reference_ms)

    @property
    def steady(self) -> bool:
        return self.check.off(self.reference_ms) <= self.check.tolerance


def measure_beside(backend: Backend, models: Sequence[bytes], check: DriftCheck,
                   settings: MeasureSettings | None = None, rounds: int = 3) -> MeasuredBeside:
    """``models`` measured on ``backend`` with ``check``'s reference in one interleaved pass
    (:meth:`Backend.measure_many`), taken again while the reference has drifted (see the
    module doc); logs each retry, and warns when no pass came within the tolerance."""
    closest: list[LatencyMeasurement] | None = None   # the reference first
    passes = 0
    while passes < check.passes:
        passes += 1
        found = backend.measure_many([check.onnx, *models], settings, rounds=rounds)
        drift = check.drift(found[0].median_ms)
        if closest is None or check.better(found[0].median_ms, closest[0].median_ms):
            closest = list(found)
        if check.off(found[0].median_ms) <= check.tolerance:
            break
        if passes < check.passes:
            _logger.info("the reference measures %.3f ms beside the models, %.3f ms %s: this "
                         "machine's speed drifted (%+.0f%%); measuring again in %.0f s",
                         found[0].median_ms, check.latency_ms, check.expected, 100 * drift,
                         check.pause_s)
            time.sleep(check.pause_s)
    assert closest is not None
    result = MeasuredBeside(tuple(closest[1:]), closest[0], passes, check)
    if not result.steady:
        _logger.warning("measured while this machine ran %+.0f%% off its speed (the "
                        "reference against its latency %s; %d passes)",
                        100 * result.drift, check.expected, passes)
    return result
