"""Latency model: a whole model's latency estimated from a measured hardware profile.

For each kernel kind the profile's measurements are fitted by a linear model with
non-negative weights on features that grow with channel counts (multiply-adds, input,
output and weight elements), minimising relative error. A model's estimate is the per-run
overhead measured on the device plus the sum over its nodes of the fitted kernel time less
the overhead each one-kernel measurement carried. Activations that ONNX Runtime fuses into
the preceding convolution cost nothing; reshapes cost nothing. Unstructured sparsity does
not enter: dense kernels run zeros as fast as other numbers.

The error bar is the fit's relative residual spread per kind, added over nodes as if
independent; it does not cover effects between kernels (layout changes, cache reuse),
which is what calibrating against measured reference models (:meth:`calibrated`) is for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from autocompress.exceptions import MissingDependencyError, ProfileError
from autocompress.hardware.kernels import KINDS, NodeKernel, features, kernels_of
from autocompress.hardware.profile import HardwareProfile

__all__ = ["KindFit", "LatencyEstimate", "LatencyModel", "fit_calibration"]


@dataclass(frozen=True)
class KindFit:
    kind: str
    weights: tuple[float, ...]
    rel_rmse: float
    samples: int


@dataclass(frozen=True)
class LatencyEstimate:
    """An estimate, not a measurement: ``latency_ms`` +- ``std_ms`` from a profile."""

    latency_ms: float
    std_ms: float
    overhead_ms: float
    per_node_ms: tuple[tuple[str, str, float], ...] = field(repr=False, default=())
    unmodelled: tuple[str, ...] = ()
    scale: float = 1.0


def fit_calibration(raw_ms: Sequence[float], measured_ms: Sequence[float]
                    ) -> tuple[float, float]:
    """Least-squares ``measured = offset + scale * raw`` over reference models.

    With one point, or when the fit is not increasing, falls back to a pure ratio through
    the largest model (``offset = 0``).
    """
    raw = np.asarray(raw_ms, dtype=float)
    measured = np.asarray(measured_ms, dtype=float)
    if len(raw) >= 2 and np.ptp(raw) > 0:
        scale, offset = np.polyfit(raw, measured, 1)
        if scale > 0 and np.all(offset + scale * raw > 0):
            return float(scale), float(offset)
    i = int(np.argmax(raw))
    return float(measured[i] / raw[i]), 0.0


class LatencyModel:
    """Estimates latency on the profiled device; see the module docstring for the method."""

    def __init__(self, profile: HardwareProfile, scale: float = 1.0,
                 offset_ms: float = 0.0) -> None:
        self.profile = profile
        self.scale = scale
        self.offset_ms = offset_ms
        self.fits = self._fit(profile)

    @staticmethod
    def _fit(profile: HardwareProfile) -> dict[str, KindFit]:
        try:
            from scipy.optimize import nnls
        except ImportError as exc:
            raise MissingDependencyError(
                "estimating latency needs scipy: pip install 'autocompress[search]'") from exc

        fits: dict[str, KindFit] = {}
        for kind in KINDS:
            rows = [m for m in profile.kernels if m.kernel.kind == kind]
            if not rows:
                continue
            x = np.stack([features(m.kernel) for m in rows])
            y = np.array([m.latency.median_ms for m in rows])
            scale_cols = x.max(axis=0)
            scale_cols[scale_cols == 0] = 1.0
            weight_rows = 1.0 / np.maximum(y, 1e-6)  # relative error
            a = (x / scale_cols) * weight_rows[:, None]
            b = y * weight_rows
            coef, _ = nnls(a, b)
            coef = coef / scale_cols
            pred = x @ coef
            rel = (pred - y) / y
            fits[kind] = KindFit(kind, tuple(float(c) for c in coef),
                                 float(np.sqrt(np.mean(rel**2))), len(rows))
        return fits

    def calibrated(self, scale: float, offset_ms: float = 0.0) -> LatencyModel:
        """The same model with every estimate mapped to ``offset_ms + scale * estimate``.

        The map comes from measuring reference models on the device (see
        :func:`fit_calibration`); ``scale > 0`` keeps estimates monotone in channels.
        """
        if not math.isfinite(scale) or scale <= 0 or not math.isfinite(offset_ms):
            raise ValueError(f"calibration needs a positive scale, got {scale}, {offset_ms}")
        return LatencyModel(self.profile, scale, offset_ms)

    def kernel_ms(self, node: NodeKernel) -> tuple[float, float]:
        """(time, standard deviation) of one node inside a model, in ms."""
        if node.kernel is None:
            return 0.0, 0.0
        fit = self.fits.get(node.kernel.kind)
        if fit is None:
            raise ProfileError(
                f"the profile has no {node.kernel.kind!r} kernels, needed for node "
                f"{node.node} ({node.op_type}); re-profile the device with the default grid"
            )
        raw = float(features(node.kernel) @ np.array(fit.weights))
        # a one-kernel measurement includes one run's overhead; inside a model it does not
        inside = max(raw - self.profile.overhead.median_ms, 0.0)
        return inside, inside * fit.rel_rmse

    def estimate_nodes(self, nodes: Sequence[NodeKernel]) -> LatencyEstimate:
        total = self.profile.overhead.median_ms
        var = 0.0
        per_node = []
        for node in nodes:
            ms, std = self.kernel_ms(node)
            total += ms
            var += std**2
            per_node.append((node.node, node.op_type, ms * self.scale))
        unmodelled = tuple(sorted({n.op_type for n in nodes if n.note.startswith("unmodelled")}))
        return LatencyEstimate(
            latency_ms=max(self.offset_ms + total * self.scale, 0.0),
            std_ms=math.sqrt(var) * self.scale,
            overhead_ms=self.profile.overhead.median_ms * self.scale,
            per_node_ms=tuple(per_node),
            unmodelled=unmodelled,
            scale=self.scale,
        )

    def estimate(self, model: onnx.ModelProto | bytes) -> LatencyEstimate:
        """Estimate the latency of an ONNX model (batch size 1) on the profiled device."""
        if isinstance(model, bytes):
            model = onnx.load_from_string(model)
        return self.estimate_nodes(kernels_of(model))
