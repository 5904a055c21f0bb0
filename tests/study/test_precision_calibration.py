"""A run's calibration at another precision: int8 copies of the baseline measured beside the
fp32 ones give the factor on int8 node times that brings their estimates to the device.
The device is scripted (a fixed function of the graph): nothing here depends on this host."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from autocompress._records import fields_to_jsonable, from_jsonable
from autocompress.hardware import HardwareProfile, LatencyMeasurement, LatencyModel
from autocompress.hardware._qdq import is_qdq, split_qdq
from autocompress.models import create_model
from autocompress.space import DEFAULT_SPACE_PATH, SearchSpace
from autocompress.study import _prepare
from autocompress.study._records import Calibration, CalibrationPoint
from autocompress.transforms import compress, find_channel_groups, sparsifiable_layers

SHAPE = (1, 1, 8, 8)


class _Device:
    """Measures every graph at ``target``'s estimate of it (QDQ graphs as their int8 nodes):
    a device the profile misses by a known scale, and by a known factor on int8."""

    def __init__(self, target: LatencyModel) -> None:
        self.target = target
        self.measured: list[bytes] = []

    def measure_many(self, models, _settings, rounds):
        assert rounds >= 1
        self.measured += list(models)
        out = []
        for onnx_bytes in models:
            model = onnx.load_from_string(onnx_bytes)
            ms = self.target.estimate(*split_qdq(model)).latency_ms if is_qdq(model) else \
                self.target.estimate(model).latency_ms
            out.append(LatencyMeasurement(ms, ms, ms, 10, True))
        return out


@pytest.fixture(scope="module")
def setup(synthetic_int8_profile: Path):
    """resnet20 on 8x8 inputs bound to the mixed-precision space, and the raw latency model
    of the synthetic fp32+int8 profile."""
    torch.manual_seed(0)
    module = create_model("resnet20", num_classes=10, in_channels=1, input_size=SHAPE[2:]).eval()
    example = torch.zeros(SHAPE)
    space = SearchSpace.from_yaml(DEFAULT_SPACE_PATH.parent / "mixed_precision.yaml")
    bound = space.bind([g.name for g in find_channel_groups(module, example)],
                       sparsifiable_layers(module), sparsity=False)
    raw = LatencyModel(HardwareProfile.load(synthetic_int8_profile))

    def compress_(candidate):
        return compress(module, candidate, example, num_classes=10)

    return raw, bound, compress_


def _qdq(onnx_bytes: bytes) -> bool:
    return is_qdq(onnx.load_from_string(onnx_bytes))


def _inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, *SHAPE[1:])).astype(np.float32)


def _calibrate(setup, monkeypatch, target: LatencyModel, precisions=("int8",)):
    raw, bound, compress_ = setup
    device = _Device(target)
    monkeypatch.setattr(_prepare, "backend_for", lambda *a, **k: device)
    profile = raw.profile
    baseline = compress_(bound.uniform(1.0)).structure_onnx()
    _, calibration = _prepare.measure_and_calibrate(
        profile, raw, compress_, bound, baseline, calibrate=True, precisions=precisions,
        calibration_data=_inputs)
    return calibration, device


@pytest.mark.parametrize(("factor", "per_node_ms"), [(0.6, 0.0), (0.3, 0.002), (0.0, 0.004)])
def test_int8_copies_give_the_terms_the_device_runs_int8_at(setup, monkeypatch, factor: float,
                                                            per_node_ms: float) -> None:
    """The device runs int8 nodes at ``factor`` times the profile's one-kernel time plus a
    fixed ``per_node_ms`` each (on an AVX-512 VNNI VM int8 resnet20 measured nearly the
    same at every width and less with fewer blocks: a cost per node, not per channel)."""
    raw, bound, compress_ = setup
    calibration, device = _calibrate(setup, monkeypatch, raw.calibrated(
        1.05, 0.0, {"int8": factor}, {"int8": per_node_ms}))
    assert calibration.scale == pytest.approx(1.05, rel=1e-6)
    assert calibration.offset_ms == pytest.approx(0.0, abs=1e-9)
    assert calibration.precision_scales["int8"] == pytest.approx(factor, abs=1e-6)
    assert calibration.precision_node_ms["int8"] == pytest.approx(per_node_ms, abs=1e-7)
    # the copies were measured as the device runs them (QDQ) and recorded at their precision
    assert sum(_qdq(m) for m in device.measured) == len(_prepare._PRECISION_RATIOS)
    int8_points = [p for p in calibration.points if p.precision == "int8"]
    assert sorted(p.keep_ratio for p in int8_points) == sorted(_prepare._PRECISION_RATIOS)
    assert {p.precision for p in calibration.points} == {"fp32", "int8"}
    assert "int8 nodes x" in calibration.describe_precisions()
    # the calibrated model estimates an int8 pruning it never measured as the device runs it
    model = calibration.apply(raw)
    other = compress_(bound.uniform(0.625, "int8"))
    truth = device.measure_many([other.rewrite(other.structure_onnx(), _inputs)], None, 1)[0]
    assert other.estimate(model).latency_ms == pytest.approx(truth.median_ms, rel=1e-5)
    fp32_only = other.estimate(raw.calibrated(calibration.scale, calibration.offset_ms))
    assert fp32_only.latency_ms != pytest.approx(truth.median_ms, rel=0.05)


def test_a_factor_beyond_reason_is_held_and_said(setup, monkeypatch, caplog) -> None:
    raw = setup[0]
    with caplog.at_level("WARNING", logger="autocompress"):
        calibration, _ = _calibrate(setup, monkeypatch, raw.calibrated(1.0, 0.0, {"int8": 9.0}))
    assert calibration.precision_scales["int8"] == _prepare._PRECISION_FACTOR_MAX
    assert "re-profile" in caplog.text


def test_without_other_precisions_nothing_else_is_measured(setup, monkeypatch) -> None:
    raw = setup[0]
    calibration, device = _calibrate(setup, monkeypatch, raw.calibrated(1.05), precisions=())
    assert calibration.precision_scales == {} and calibration.precision_node_ms == {}
    assert not any(_qdq(m) for m in device.measured)
    assert len(device.measured) == len(_prepare._CALIBRATION_RATIOS)


def test_the_space_says_which_precisions_are_calibrated(setup) -> None:
    _, bound, _ = setup
    assert _prepare.calibrated_precisions(bound) == ("int8",)
    groups = [p.target for p in bound.channel_params]
    plain = SearchSpace.from_yaml(DEFAULT_SPACE_PATH).bind(groups, [], sparsity=False)
    assert _prepare.calibrated_precisions(plain) == ()


def test_a_calibration_recorded_before_precision_factors_reads_without_them() -> None:
    recorded = fields_to_jsonable(Calibration(
        scale=0.9, points=(CalibrationPoint(0.5, 1.0, 0.9, "int8"),),
        precision_scales={"int8": 0.7}, precision_node_ms={"int8": 0.003}))
    read = from_jsonable(Calibration, json.loads(json.dumps(recorded)))
    assert read.precision_scales == {"int8": 0.7} and read.precision_node_ms == {"int8": 0.003}
    recorded.pop("precision_scales")
    recorded.pop("precision_node_ms")
    for point in recorded["points"]:
        point.pop("precision")
    old = from_jsonable(Calibration, recorded)
    assert old.precision_scales == {} and old.precision_node_ms == {} and old.scale == 0.9
    assert old.points[0].precision == "fp32" and old.describe_precisions() == ""
