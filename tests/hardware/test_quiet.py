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


def test_a_tick_of_counter_skew_over_a_short_measurement_is_not_a_disturbance(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's and the process's tick counters are truncated apart: over a 50 ms
    measurement one stray tick would read as 20% of a core, and every measurement would be
    taken again. A tick or two is not evidence; a process busy all the while is (scripted
    readings of other processes' ticks; the measurement sleeps 50 ms)."""
    monkeypatch.setenv(_quiet.QUIET_ENV, "15")
    monkeypatch.setattr(_quiet, "wait_for_quiet", lambda *_a, **_k: 0.0)

    def measurements(readings: list[int]) -> int:
        ticks = iter(readings)
        monkeypatch.setattr(_quiet, "_others_ticks", lambda: next(ticks))
        calls: list[int] = []
        _quiet.measure_quietly(lambda: time.sleep(0.05) or calls.append(1))
        return len(calls)

    assert measurements([0, 1]) == 1
    assert measurements([0, 2]) == 1
    # a second of another process's CPU within the measurement: taken again
    second = _quiet.os.sysconf("SC_CLK_TCK")
    assert measurements([0, second, second, second]) == 2


def test_without_the_setting_a_measurement_is_taken_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_quiet.QUIET_ENV, raising=False)
    monkeypatch.setattr(_quiet, "_others_ticks", lambda: pytest.fail("must not read /proc"))
    calls = []
    assert _quiet.measure_quietly(lambda: calls.append(1) or len(calls)) == 1


def test_a_measurement_at_several_threads_waits_for_as_many_cores(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A virtual machine can lose a core to its host, which no process shows: the wait
    probes how many threads run side by side (scripted here: first 1.1 of 2, then 1.9)."""
    monkeypatch.setattr(_quiet, "_last_quiet", [-1e9])
    monkeypatch.setattr(_quiet, "other_cpu_percent", lambda *_a: 0.0)
    monkeypatch.setattr(_quiet, "_BACKOFF_S", 0.0)
    speedups = iter([1.1, 1.9])
    probed = []
    monkeypatch.setattr(_quiet, "parallel_speedup",
                        lambda threads: probed.append(threads) or next(speedups))
    with caplog.at_level("INFO", logger=_quiet.__name__):
        _quiet.wait_for_quiet(15, threads=2)
    assert probed == [2, 2]
    assert "2 threads run only 1.1x as fast as one" in caplog.text
    # a quiet reading for 2 threads stands for a while, for 1 thread too
    _quiet.wait_for_quiet(15, threads=1)
    _quiet.wait_for_quiet(15, threads=2)
    assert probed == [2, 2]


def test_more_threads_than_cores_probe_the_cores_there_are(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A measurement at 4 threads on 2 usable cores cannot find 4: it waits for 2."""
    monkeypatch.setattr(_quiet, "_last_quiet", [-1e9])
    monkeypatch.setattr(_quiet, "other_cpu_percent", lambda *_a: 0.0)
    monkeypatch.setattr(_quiet, "_usable_cores", lambda: 2)
    probed = []
    monkeypatch.setattr(_quiet, "parallel_speedup", lambda t: probed.append(t) or 1.9)
    _quiet.wait_for_quiet(15, threads=4)
    assert probed == [2]


def test_one_thread_needs_no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_quiet, "_last_quiet", [-1e9])
    monkeypatch.setattr(_quiet, "_last_quiet_threads", [1])
    monkeypatch.setattr(_quiet, "other_cpu_percent", lambda *_a: 0.0)
    monkeypatch.setattr(_quiet, "parallel_speedup", lambda _t: pytest.fail("probed"))
    assert _quiet.wait_for_quiet(15, threads=1) >= 0.0


def test_the_parallel_probe_measures_something() -> None:
    # behaviour, not speed: a positive ratio, about 1 for one thread
    assert _quiet.parallel_speedup(1) > 0
    assert _quiet.parallel_speedup(2) > 0


def test_a_backend_passes_its_threads_to_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from autocompress.hardware.backends import get_backend
    from autocompress.hardware.backends import onnxruntime as ort_backend

    seen = []
    monkeypatch.setattr(ort_backend, "time_callable",
                        lambda run, settings, threads=1: seen.append(threads) or run())
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    get_backend("onnxruntime", threads=2).measure(model.SerializeToString())
    assert seen == [2]
