"""Waiting for a quiet machine before a measurement (Linux).

A latency measured while other processes run is a measurement of the contention. With
``AUTOCOMPRESS_WAIT_FOR_QUIET=P`` in the environment, every local measurement first waits
until the other processes of the machine used less than ``P`` percent of one core over a
second (read from ``/proc/stat`` and ``/proc/self/stat``: the CPU time of the whole machine
less this process's and its threads'), and is taken again when they used more than that
while it ran (a process that started after the wait). Benchmarks that train in the background while
something else may run set it; interactive searches do not need it. Elsewhere than Linux it
does nothing.

A measurement at several threads also needs as many cores. A virtual machine can lose one to
its host for a while, which no process of the machine shows: on the 2-core development VM, 2
ONNX Runtime threads intermittently ran a model in 0.34 ms where 1 thread took 0.20 and 2
threads 0.16 a minute before, the second core idle. So with the setting, a measurement at
``threads > 1`` also waits until ``threads`` busy threads run side by side at least
:data:`MIN_PARALLEL_SHARE` as fast as one alone (:func:`parallel_speedup`, about 75 ms), or
as many threads as the process may use, where the measurement asks for more.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["MIN_PARALLEL_SHARE", "QUIET_ENV", "measure_quietly", "other_cpu_percent",
           "parallel_speedup", "wait_for_quiet"]

_logger = logging.getLogger(__name__)

QUIET_ENV = "AUTOCOMPRESS_WAIT_FOR_QUIET"
_POLL_S = 0.5
_BACKOFF_S = 5.0
#: a quiet reading stands for this long (profiling measures hundreds of kernels in a row)
_TRUST_S = 3.0
_last_quiet = [-1e9]
#: the threads the last quiet reading found cores for
_last_quiet_threads = [1]
#: a measurement disturbed by other processes is taken again at most this many times
_RETRIES = 5
#: the share of ``threads`` a parallel probe must reach for the cores to count as there
MIN_PARALLEL_SHARE = 0.65
_PROBE_BYTES = 1 << 24

T = TypeVar("T")


def _machine_busy_ticks() -> int | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    values = [int(v) for v in fields]
    return sum(values) - values[3] - (values[4] if len(values) > 4 else 0)


def _own_ticks() -> int | None:
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])   # utime, stime of all this process's threads


def _others_ticks() -> int | None:
    """CPU ticks used so far by every process of the machine but this one."""
    busy, own = _machine_busy_ticks(), _own_ticks()
    return None if busy is None or own is None else busy - own


#: The machine's and this process's tick counters are each truncated to a clock tick, so
#: over any window their difference is off by up to this many ticks with nothing else
#: running: over a 50 ms measurement one such tick read as 20% of a core (seen on a 2-core VM,
#: where every kernel of a profile was then measured six times). Fewer are no evidence.
_TICK_SLACK = 2


def _percent(ticks: int, seconds: float) -> float:
    """Percent of one core that ``ticks`` of other processes' CPU over ``seconds`` are, less
    the counters' own disagreement (:data:`_TICK_SLACK`)."""
    ticks = max(ticks - _TICK_SLACK, 0)
    return 100.0 * ticks / os.sysconf("SC_CLK_TCK") / max(seconds, 1e-9)


def other_cpu_percent(interval_s: float = _POLL_S) -> float | None:
    """Percent of one core the machine's other processes used over ``interval_s``
    (``None`` where ``/proc`` cannot tell)."""
    before = _others_ticks()
    if before is None:
        return None
    time.sleep(interval_s)
    after = _others_ticks()
    return None if after is None else _percent(after - before, interval_s)


def parallel_speedup(threads: int) -> float:
    """How many of ``threads`` busy threads run at once now: ``threads`` times the time one
    thread takes to hash a buffer, over the time ``threads`` threads take to hash one each
    (hashing releases the GIL). About ``threads`` when the machine gives this process that
    many cores, about 1 when it gives one."""
    data = bytes(_PROBE_BYTES)

    def work() -> None:
        hashlib.sha256(data).digest()

    def timed(count: int) -> float:
        workers = [threading.Thread(target=work) for _ in range(count)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - start

    timed(1)   # warm-up
    one = min(timed(1) for _ in range(3))
    many = min(timed(threads) for _ in range(3))
    return threads * one / max(many, 1e-9)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cores_ready(threads: int) -> tuple[bool, float]:
    """Whether ``threads`` threads (at most as many as this process may use: more could
    never be found) run side by side now, and the probe's speed-up."""
    threads = min(threads, _usable_cores())
    if threads <= 1:
        return True, 1.0
    speedup = parallel_speedup(threads)
    return speedup >= MIN_PARALLEL_SHARE * threads, speedup


def _threshold() -> float | None:
    setting = os.environ.get(QUIET_ENV)
    return float(setting) if setting else None


def measure_quietly(measure: Callable[[], T], threads: int = 1) -> T:
    """``measure()`` on a quiet machine: with ``$AUTOCOMPRESS_WAIT_FOR_QUIET`` set, after
    :func:`wait_for_quiet` (with ``threads`` cores free, for a measurement at that many
    threads), and taken again (up to :data:`_RETRIES` times) when other processes used more
    than the threshold while it ran; without it, at once. A wait before a measurement cannot
    see a process that starts during it: the check after can."""
    threshold = _threshold()
    if threshold is None:
        return measure()
    for attempt in range(_RETRIES + 1):
        wait_for_quiet(threshold, threads=threads)
        before, start = _others_ticks(), time.perf_counter()
        result = measure()
        after, seconds = _others_ticks(), time.perf_counter() - start
        if before is None or after is None:
            return result
        used = _percent(after - before, seconds)
        if used < threshold:
            return result
        _last_quiet[0] = -1e9   # the next wait really waits
        if attempt < _RETRIES:
            _logger.info("other processes used %.0f%% of a core during the measurement; "
                         "measuring again once they leave", used)
    _logger.warning("measured while other processes used %.0f%% of a core (%d tries)", used,
                    _RETRIES + 1)
    return result


def wait_for_quiet(threshold_percent: float | None = None, max_wait_s: float = 6 * 3600,
                   threads: int = 1) -> float:
    """Block until other processes use less than ``threshold_percent`` of a core (default:
    ``$AUTOCOMPRESS_WAIT_FOR_QUIET``; without it, return at once) and, for ``threads > 1``,
    until that many threads run side by side (:func:`parallel_speedup`). Returns the seconds
    waited; gives up (with a warning) after ``max_wait_s``."""
    if threshold_percent is None:
        threshold_percent = _threshold()
        if threshold_percent is None:
            return 0.0
    start = time.perf_counter()
    if start - _last_quiet[0] < _TRUST_S and _last_quiet_threads[0] >= threads:
        return 0.0
    warned = False
    while True:
        used = other_cpu_percent()
        quiet = used is None or used < threshold_percent
        cores, speedup = _cores_ready(threads) if quiet else (False, float("nan"))
        if quiet and cores:
            _last_quiet[0] = time.perf_counter()
            _last_quiet_threads[0] = threads
            return _last_quiet[0] - start
        waited = time.perf_counter() - start
        why = (f"other processes use {used:.0f}% of a core" if not quiet else
               f"{threads} threads run only {speedup:.1f}x as fast as one (the machine "
               f"gives fewer than {threads} cores now)")
        if waited > max_wait_s:
            _logger.warning("measuring although %s (waited %.0f s)", why, waited)
            return waited
        if not warned:
            _logger.info("waiting before measuring: %s", why)
            warned = True
        time.sleep(_BACKOFF_S)
