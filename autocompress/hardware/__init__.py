"""Hardware: profiles measured on a device, the latency model built from them, backends."""

from __future__ import annotations

from autocompress.hardware.backends import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    get_backend,
)
from autocompress.hardware.latency import LatencyEstimate, LatencyModel
from autocompress.hardware.profile import HardwareProfile

__all__ = ["Backend", "HardwareProfile", "LatencyEstimate", "LatencyMeasurement",
           "LatencyModel", "MeasureSettings", "get_backend"]
