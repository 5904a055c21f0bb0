"""The linear fits corrected where the profile's own kernels near a kernel measured off them.

Profiles here are built by hand from known laws, so every figure asserted is exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from autocompress.hardware import HardwareProfile, LatencyModel
from autocompress.hardware.backends import LatencyMeasurement
from autocompress.hardware.kernels import Kernel, NodeKernel
from autocompress.hardware.latency import KindFit, shape_point
from autocompress.hardware.profile import KernelMeasurement

OVERHEAD_MS = 0.005


def _law_ms(k: Kernel) -> float:
    """A device linear in the fit's features."""
    return OVERHEAD_MS + 0.001 + 1e-8 * k.macs + 1e-7 * k.out_elements


def _profile(slow: float = 1.0) -> HardwareProfile:
    """3x3 convolutions on the law, those of 8 input channels ``slow`` times their time
    (a device whose narrow convolutions a linear fit cannot follow)."""
    kernels = []
    for c in (8, 16, 32, 64, 128):
        for c2 in (16, 64):
            for s in (8, 16, 32):
                k = Kernel("conv", c, c2, s, s, kernel=3)
                inside = _law_ms(k) - OVERHEAD_MS
                ms = OVERHEAD_MS + inside * (slow if c == 8 else 1.0)
                kernels.append(KernelMeasurement(k, LatencyMeasurement(ms, ms, ms, 10, True)))
    overhead = LatencyMeasurement(OVERHEAD_MS, OVERHEAD_MS, OVERHEAD_MS, 10, True)
    return HardwareProfile("synthetic", "x", {"threads": 1}, {}, overhead, tuple(kernels))


def test_a_fit_without_residuals_is_left_as_it_is() -> None:
    fit = KindFit("conv", (1.0,), 0.0, 1)
    assert fit.local_ratio(Kernel("conv", 8, 8, 8, 8, kernel=3)) == 1.0


def test_the_ratio_is_the_neighbours_near_them_and_fades_with_distance() -> None:
    at = Kernel("conv", 16, 32, 8, 8, kernel=3)
    fit = KindFit("conv", (1.0,), 0.1, 1, points=(tuple(shape_point(at)),),
                  log_ratios=(math.log(1.3),))
    assert fit.local_ratio(at) == pytest.approx(1.3)
    # twice the input channels: one unit away, weight exp(-(1 / 1.5)^2)
    twice = Kernel("conv", 32, 32, 8, 8, kernel=3)
    assert fit.local_ratio(twice) == pytest.approx(1.3 ** math.exp(-(1 / 1.5) ** 2))
    # a lone neighbour far away barely moves a kernel: shrunk towards 1
    far = Kernel("conv", 512, 512, 56, 56, kernel=3)
    assert 1.0 <= fit.local_ratio(far) < 1.0001


def test_a_device_on_the_law_gets_the_linear_fit() -> None:
    model = LatencyModel(_profile())
    fit = model.fits["conv"]
    assert fit.rel_rmse < 1e-9
    assert np.allclose(fit.log_ratios, 0.0, atol=1e-9)
    node = NodeKernel("c", "Conv", Kernel("conv", 24, 48, 12, 12, kernel=3))
    assert model.kernel_ms(node)[0] == pytest.approx(_law_ms(node.kernel) - OVERHEAD_MS)


def test_where_the_linear_fit_misses_the_neighbours_correct_it() -> None:
    model = LatencyModel(_profile(slow=1.6))
    fit = model.fits["conv"]
    for c in (8, 64):
        kernel = Kernel("conv", c, 64, 16, 16, kernel=3)
        truth = (_law_ms(kernel) - OVERHEAD_MS) * (1.6 if c == 8 else 1.0)
        linear = float(model.rules.features(kernel) @ np.array(fit.weights)) - OVERHEAD_MS
        corrected = model.kernel_ms(NodeKernel("c", "Conv", kernel))[0]
        # the linear fit is off by more than 10% for the narrow ones; the neighbours
        # bring every kernel measured closer to its measurement
        assert abs(corrected / truth - 1) < abs(linear / truth - 1), c
    narrow = Kernel("conv", 8, 64, 16, 16, kernel=3)
    linear = float(model.rules.features(narrow) @ np.array(fit.weights)) - OVERHEAD_MS
    assert abs(linear / ((_law_ms(narrow) - OVERHEAD_MS) * 1.6) - 1) > 0.1
