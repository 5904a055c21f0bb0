"""``autocompress calibrate``: a device's correction of raw estimates from five reference
models measured on it, stored in its profile and applied by searches that cannot measure it.

The device is the synthetic backend 2.5 times slower than the profile says (its formula at
``scale`` 2.5, measured with ``autocompress measure --backend synthetic --scale 2.5``), under
a device name of its own, so this machine cannot measure it: the calibration must come from
the measurements file, and the fitted scale is 2.5 up to the estimate's own small error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autocompress.cli.main import main
from autocompress.exceptions import ProfileError
from autocompress.hardware import HardwareProfile
from autocompress.study import RunFolder, SearchConfig, calibrate_device, search
from autocompress.study._calibrate import REFERENCE_MODELS


@pytest.fixture(scope="module")
def remote_profile(synthetic_profile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic profile, as if measured on a board this machine cannot reach."""
    path = tmp_path_factory.mktemp("remote") / "board.json"
    data = json.loads(synthetic_profile.read_text())
    data["device"]["cpu"] = "a board elsewhere"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def calibrated(remote_profile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibrated")
    profile = folder / "board.json"
    shutil.copy(remote_profile, profile)
    references = folder / "references"
    assert main(["calibrate", "--profile", str(profile), "--export-references",
                 str(references)]) == 0
    assert len(list(references.glob("*.onnx"))) == len(REFERENCE_MODELS)
    results = folder / "results.json"
    assert main(["measure", "--onnx", str(references), "--backend", "synthetic", "--scale",
                 "2.5", "--rounds", "1", "--out", str(results)]) == 0
    assert main(["calibrate", "--profile", str(profile), "--measurements", str(results)]) == 0
    return profile   # the reference graphs stay beside it, in references/


def test_calibration_from_measurements_fits_the_devices_slowdown(calibrated: Path) -> None:
    device = HardwareProfile.load(calibrated).device_calibration
    assert device is not None and len(device.references) == len(REFERENCE_MODELS) <= 5
    # measured = 2.5 x the synthetic formula; the raw estimate is that formula within ~3%
    for point in device.references:
        assert point.measured_ms / point.estimate_ms == pytest.approx(2.5, rel=0.05)
        calibrated_ms = device.offset_ms + device.scale * point.estimate_ms
        assert calibrated_ms == pytest.approx(point.measured_ms, rel=0.03)


def test_a_device_this_machine_cannot_reach_needs_measurements(remote_profile: Path,
                                                               tmp_path: Path) -> None:
    shutil.copy(remote_profile, tmp_path / "board.json")
    with pytest.raises(ProfileError, match="export-references.*measure.*--measurements"):
        calibrate_device(tmp_path / "board.json")
    assert HardwareProfile.load(tmp_path / "board.json").device_calibration is None


def test_measurements_missing_a_reference_are_refused(calibrated: Path, tmp_path: Path) -> None:
    results = tmp_path / "partial.json"
    results.write_text(json.dumps({"results": [{"onnx": "x/squeezenet1_1-96px.onnx",
                                                "median_ms": 1.0}]}))
    with pytest.raises(ProfileError, match="no measurement of mobilenet_v3_small"):
        calibrate_device(calibrated, measurements=results)


def test_estimate_applies_the_device_calibration(calibrated: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    onnx = calibrated.parent / "references"
    assert main(["estimate", "--onnx", str(onnx / "squeezenet1_1-96px.onnx"), "--profile",
                 str(calibrated)]) == 0
    assert "device calibration" in capsys.readouterr().out


def test_a_search_on_a_calibrated_remote_profile_applies_its_calibration(
        calibrated: Path, remote_profile: Path, tmp_path: Path) -> None:
    """Nothing can be measured on the board: the budget (half the baseline) and every
    estimate come from the profile, corrected by the device calibration."""
    runs = {}
    for name, profile in (("raw", remote_profile), ("calibrated", calibrated)):
        config = SearchConfig(model="resnet20", data="digits", trials=1, finetune_steps=2,
                              screen=0, allocate=False, profile=profile, out=tmp_path / name)
        search(config)
        runs[name] = RunFolder.open(config.out).run
    raw, device = runs["raw"], runs["calibrated"]
    assert not raw.calibration.applied and raw.baseline.latency_source == "estimate"
    assert device.calibration.applied and device.calibration.source == "device"
    assert device.calibration.scale == pytest.approx(2.5, rel=0.05)
    assert device.baseline.latency_ms == pytest.approx(
        device.calibration.offset_ms + device.calibration.scale * raw.baseline.latency_ms)
    assert device.budget.latency_ms == pytest.approx(device.baseline.latency_ms / 2)


def test_a_cached_local_profile_is_brought_up_to_date(synthetic_profile, tmp_path,
                                                      monkeypatch) -> None:
    """The profile of this machine is measured once; a copy cached by an older autocompress
    gets what profiling records today (its layout block) the next time a search reads it."""
    from autocompress.study import _prepare

    monkeypatch.setenv("AUTOCOMPRESS_CACHE_DIR", str(tmp_path))
    profiled: list[Path] = []
    upgraded: list[Path] = []

    def profile_backend(backend, path, **_: object) -> None:
        profiled.append(Path(path))
        shutil.copy(synthetic_profile, path)

    def upgrade_profile(path):
        upgraded.append(Path(path))
        return HardwareProfile.load(path)

    monkeypatch.setattr(_prepare, "profile_backend", profile_backend)
    monkeypatch.setattr(_prepare, "upgrade_profile", upgrade_profile)
    first = _prepare.local_profile(1)
    assert profiled == [first] and upgraded == []
    assert _prepare.local_profile(1) == first
    assert profiled == [first] and upgraded == [first]


# Measured here: the references share each pass with kernels of the profile, so that a spell
# of the machine is not stored as the device's factor.

@pytest.fixture(scope="module")
def reference_onnx() -> list[tuple[str, bytes]]:
    from autocompress.study._calibrate import reference_graphs

    return reference_graphs()


class _Spells:
    """The profile's synthetic backend, ``slow[i]`` times slower in its ``i``-th pass (1 after
    the list): a machine in a spell, every graph of the pass alike."""

    def __init__(self, slow: list[float]) -> None:
        from autocompress.hardware.backends.synthetic import SyntheticBackend

        self.backend, self.slow, self.passes = SyntheticBackend(scale=1.0), slow, 0

    def measure_many(self, models, settings=None, rounds=1):
        from dataclasses import replace

        factor = self.slow[self.passes] if self.passes < len(self.slow) else 1.0
        self.passes += 1
        return [replace(m, median_ms=factor * m.median_ms, p25_ms=factor * m.p25_ms,
                        p75_ms=factor * m.p75_ms)
                for m in self.backend.measure_many(models, settings, rounds)]


@pytest.fixture
def local_profile(synthetic_profile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  reference_onnx) -> Path:
    from autocompress.study import _calibrate

    monkeypatch.setattr(_calibrate, "reference_graphs", lambda: reference_onnx)
    monkeypatch.setattr(_calibrate, "CHECK_PAUSE_S", 0.0)
    path = tmp_path / "here.json"
    shutil.copy(synthetic_profile, path)
    return path


def _on(monkeypatch: pytest.MonkeyPatch, device: _Spells) -> _Spells:
    import autocompress.hardware.backends as backends

    monkeypatch.setattr(backends, "backend_for", lambda name, settings: device)
    return device


def test_a_slow_spell_beside_the_references_is_measured_again(local_profile, monkeypatch):
    steady = calibrate_device(local_profile, rounds=1).calibration
    assert steady.scale == pytest.approx(1.0, rel=0.05)
    device = _on(monkeypatch, _Spells([2.0]))
    result = calibrate_device(local_profile, rounds=1)
    spell = result.calibration
    assert device.passes == 2   # the first pass (twice as slow) was taken again
    assert result.machine is not None and result.machine.median_ratio == pytest.approx(1.0)
    assert len(result.machine.measured) == 8
    assert [p.measured_ms for p in spell.references] == pytest.approx(
        [p.measured_ms for p in steady.references])
    assert spell.scale == pytest.approx(steady.scale)


def test_a_machine_off_its_profile_in_every_pass_stores_nothing(local_profile, monkeypatch):
    from autocompress.study._calibrate import CHECK_PASSES

    before = local_profile.read_text()
    device = _on(monkeypatch, _Spells([2.1, 2.0, 1.8]))
    with pytest.raises(ProfileError, match=r"kernels at 1\.80x.*nothing was stored.*"
                                           r"profile --check.*mobilenet_v3_small-96px"):
        calibrate_device(local_profile, rounds=1)
    assert device.passes == CHECK_PASSES == 3
    assert local_profile.read_text() == before
