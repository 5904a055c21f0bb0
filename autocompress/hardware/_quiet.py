"""Waiting for a quiet machine before a measurement (Linux).

A latency measured while other processes run is a measurement of the contention. With
``AUTOCOMPRESS_WAIT_FOR_QUIET=P`` in the environment, every local measurement first waits
until the other processes of the machine used less than ``P`` percent of one core over a
second (read from ``/proc/stat`` and ``/proc/self/stat``: the CPU time of the whole machine
less this process's and its threads'). Benchmarks that train in the background while
something else may run set it; interactive searches do not need it. Elsewhere than Linux it
does nothing.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

__all__ = ["QUIET_ENV", "other_cpu_percent", "wait_for_quiet"]

_logger = logging.getLogger(__name__)

QUIET_ENV = "AUTOCOMPRESS_WAIT_FOR_QUIET"
_POLL_S = 0.5
_BACKOFF_S = 5.0
#: a quiet reading stands for this long (profiling measures hundreds of kernels in a row)
_TRUST_S = 3.0
_last_quiet = [-1e9]


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


def other_cpu_percent(interval_s: float = _POLL_S) -> float | None:
    """Percent of one core the machine's other processes used over ``interval_s``
    (``None`` where ``/proc`` cannot tell)."""
    busy0, own0 = _machine_busy_ticks(), _own_ticks()
    if busy0 is None or own0 is None:
        return None
    time.sleep(interval_s)
    busy1, own1 = _machine_busy_ticks(), _own_ticks()
    if busy1 is None or own1 is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return max(0.0, 100.0 * ((busy1 - busy0) - (own1 - own0)) / ticks / interval_s)


def wait_for_quiet(threshold_percent: float | None = None, max_wait_s: float = 6 * 3600
                   ) -> float:
    """Block until other processes use less than ``threshold_percent`` of a core (default:
    ``$AUTOCOMPRESS_WAIT_FOR_QUIET``; without it, return at once). Returns the seconds
    waited; gives up (with a warning) after ``max_wait_s``."""
    if threshold_percent is None:
        setting = os.environ.get(QUIET_ENV)
        if not setting:
            return 0.0
        threshold_percent = float(setting)
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
