"""Waiting for a quiet machine before measuring: it sees other processes' CPU use."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from autocompress.hardware import _quiet

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_without_the_setting_it_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_quiet.QUIET_ENV, raising=False)
    assert _quiet.wait_for_quiet() == 0.0


def test_a_busy_process_is_seen_and_a_generous_threshold_passes() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        used = _quiet.other_cpu_percent(1.0)
        assert used is not None and used > 20
        # a threshold above anything two cores can use returns after one reading
        assert _quiet.wait_for_quiet(threshold_percent=1e6) >= 0.0
    finally:
        busy.kill()
        busy.wait()


def test_a_measurement_disturbed_while_it_ran_is_taken_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait before a measurement cannot see a process that starts during it; the check
    after does. Other processes' CPU ticks are scripted: 500 ticks during the first
    measurement (disturbed), none during the second."""
    monkeypatch.setenv(_quiet.QUIET_ENV, "15")
    monkeypatch.setattr(_quiet, "wait_for_quiet", lambda *_a, **_k: 0.0)
    readings = iter([0, 500, 500, 500])
    monkeypatch.setattr(_quiet, "_others_ticks", lambda: next(readings))
    results = iter(["disturbed", "quiet"])
    assert _quiet.measure_quietly(lambda: next(results)) == "quiet"


def test_without_the_setting_a_measurement_is_taken_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_quiet.QUIET_ENV, raising=False)
    monkeypatch.setattr(_quiet, "_others_ticks", lambda: pytest.fail("must not read /proc"))
    calls = []
    assert _quiet.measure_quietly(lambda: calls.append(1) or len(calls)) == 1
