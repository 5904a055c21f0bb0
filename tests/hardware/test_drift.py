"""Measuring beside a reference graph on a machine whose speed drifts (scripted speeds:
nothing here depends on this host)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from autocompress.hardware.drift import DriftCheck, measure_beside


class _Scripted:
    """Each pass returns the next scripted medians (the reference's first)."""

    def __init__(self, passes: list[tuple[float, ...]]) -> None:
        self.passes, self.seen = iter(passes), []

    def measure_many(self, models, settings=None, rounds=1):
        self.seen.append(list(models))
        return [SimpleNamespace(median_ms=ms) for ms in next(self.passes)]


def test_the_pass_whose_reference_comes_back_to_its_speed_is_kept() -> None:
    backend = _Scripted([(1.3, 0.6, 0.7), (1.02, 0.45, 0.52)])
    found = measure_beside(backend, [b"a", b"b"], DriftCheck(b"ref", 1.0, pause_s=0.0))
    assert found.latencies_ms == (0.45, 0.52) and found.reference_ms == 1.02
    assert found.passes == 2 and found.steady
    assert found.drift == pytest.approx(0.02)
    assert backend.seen == [[b"ref", b"a", b"b"]] * 2   # the reference in every pass, first


def test_a_machine_that_stays_off_gives_the_closest_pass_and_a_warning(caplog) -> None:
    backend = _Scripted([(0.7, 0.3), (1.25, 0.5), (1.15, 0.46)])
    with caplog.at_level("WARNING", logger="autocompress"):
        found = measure_beside(backend, [b"m"], DriftCheck(b"ref", 1.0, passes=3, pause_s=0.0))
    assert found.latencies_ms == (0.46,) and found.passes == 3 and not found.steady
    assert "+15% off its speed" in caplog.text


@pytest.mark.parametrize("bad", [dict(latency_ms=0.0), dict(passes=0), dict(tolerance=-0.1)])
def test_a_check_that_cannot_work_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="drift check"):
        DriftCheck(b"ref", **{"latency_ms": 1.0, **bad})


def test_against_an_estimate_only_a_slower_reference_is_measured_again() -> None:
    """``slower_only``: a reference faster than its estimate is the estimate's error and is
    kept at once; a slower one is measured again, and the fastest pass is kept."""
    check = DriftCheck(b"ref", 1.0, tolerance=0.1, passes=3, pause_s=0.0, slower_only=True)
    backend = _Scripted([(0.75, 0.3)])
    found = measure_beside(backend, [b"m"], check)
    assert found.passes == 1 and found.steady and found.latencies_ms == (0.3,)
    backend = _Scripted([(1.17, 0.5), (1.12, 0.48), (1.3, 0.55)])
    found = measure_beside(backend, [b"m"], check)
    assert found.passes == 3 and not found.steady
    assert found.reference_ms == 1.12 and found.latencies_ms == (0.48,)
    # measured symmetrically, 0.75 against 1.0 is 25% off: measured again
    backend = _Scripted([(0.75, 0.3), (0.98, 0.4)])
    found = measure_beside(backend, [b"m"], DriftCheck(b"ref", 1.0, passes=2, pause_s=0.0))
    assert found.passes == 2 and found.latencies_ms == (0.4,)
