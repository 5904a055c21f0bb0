"""Waiting for a quiet machine before a measurement (Linux).

A latency measured while other processes run is a measurement of the contention. With
``AUTOCOMPRESS_WAIT_FOR_QUIET=P`` in the environment, every local measurement first waits
until the other processes of the machine used less than ``P`` percent of one core over a
second (read from ``/proc/stat`` and ``/proc/self/stat``: the CPU time of the whole machine
less this process's and its threads'), and is taken again when they used more than that
while it ran (a process that started after the wait). Benchmarks that train in the background while
something else may run set it; interactive searches do not need it. Elsewhere than Linux it
does nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["QUIET_ENV", "measure_quietly", "other_cpu_percent", "wait_for_quiet"]

_logger = logging.getLogger(__name__)

QUIET_ENV = "AUTOCOMPRESS_WAIT_FOR_QUIET"
_POLL_S = 0.5
_BACKOFF_S = 5.0
#: a quiet reading stands for this long (profiling measures hundreds of kernels in a row)
_TRUST_S = 3.0
_last_quiet = [-1e9]
#: a measurement disturbed by other processes is taken again at most this many times
_RETRIES = 5

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


def _percent(ticks: int, seconds: float) -> float:
    return max(0.0, 100.0 * ticks / os.sysconf("SC_CLK_TCK") / max(seconds, 1e-9))


def other_cpu_percent(interval_s: float = _POLL_S) -> float | None:
    """Percent of one core the machine's other processes used over ``interval_s``
    (``None`` where ``/proc`` cannot tell)."""
    before = _others_ticks()
    if before is None:
        return None
    time.sleep(interval_s)
    after = _others_ticks()
    return None if after is None else _percent(after - before, interval_s)


def _threshold() -> float | None:
    setting = os.environ.get(QUIET_ENV)
    return float(setting) if setting else None


def measure_quietly(measure: Callable[[], T]) -> T:
    """``measure()`` on a quiet machine: with ``$AUTOCOMPRESS_WAIT_FOR_QUIET`` set, after
    :func:`wait_for_quiet`, and taken again (up to :data:`_RETRIES` times) when other
    processes used more than the threshold while it ran; without it, at once. A wait before
    a measurement cannot see a process that starts during it: the check after can."""
    threshold = _threshold()
    if threshold is None:
        return measure()
    for attempt in range(_RETRIES + 1):
        wait_for_quiet(threshold)
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


def wait_for_quiet(threshold_percent: float | None = None, max_wait_s: float = 6 * 3600
                   ) -> float:
    """Block until other processes use less than ``threshold_percent`` of a core (default:
    ``$AUTOCOMPRESS_WAIT_FOR_QUIET``; without it, return at once). Returns the seconds
    waited; gives up (with a warning) after ``max_wait_s``."""
    if threshold_percent is None:
        threshold_percent = _threshold()
        if threshold_percent is None:
            return 0.0
    start = time.perf_counter()
    if start - _last_quiet[0] < _TRUST_S:
        return 0.0
    warned = False
    while True:
        used = other_cpu_percent()
        if used is None or used < threshold_percent:
            _last_quiet[0] = time.perf_counter()
            return _last_quiet[0] - start
        waited = time.perf_counter() - start
        if waited > max_wait_s:
            _logger.warning("measuring although other processes use %.0f%% of a core (waited "
                            "%.0f s)", used, waited)
            return waited
        if not warned:
            _logger.info("waiting for other processes to leave the CPU (%.0f%% of a core "
                         "busy) before measuring", used)
            warned = True
        time.sleep(_BACKOFF_S)
