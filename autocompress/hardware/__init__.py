"""Hardware: profiles measured on a device, the latency model built from them, backends.

Importing it imports no runtime library (ONNX Runtime's, TVM) and no torch or scipy.
"""

from __future__ import annotations

from autocompress.hardware.backends import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    backend_for,
    get_backend,
    is_local,
    register_backend,
    rules_for,
)
from autocompress.hardware.latency import LatencyEstimate, LatencyModel
from autocompress.hardware.profile import HardwareProfile
from autocompress.hardware.quantization import quantize_static_int8
from autocompress.hardware.rules import CostRules

__all__ = ["Backend", "CostRules", "HardwareProfile", "LatencyEstimate", "LatencyMeasurement",
           "LatencyModel", "MeasureSettings", "backend_for", "get_backend", "is_local",
           "quantize_static_int8", "register_backend", "rules_for"]
