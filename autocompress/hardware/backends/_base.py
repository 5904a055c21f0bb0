"""The backend interface: something that runs an ONNX model on a device and times it."""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Backend", "LatencyMeasurement", "MeasureSettings", "time_callable", "time_rounds"]


@dataclass(frozen=True)
class MeasureSettings:
    """How hard to try for a stable median.

    After ``warmup_runs`` (and at least ``warmup_s``), runs are timed one by one in rounds of
    ``round_runs``; measuring stops once at least ``min_runs`` were timed and the median of
    the last round agrees with the median of everything so far within ``rel_tolerance``, or
    when ``max_time_s`` is spent (the result then says it is not stable).
    """

    warmup_runs: int = 5
    warmup_s: float = 0.05
    round_runs: int = 20
    min_runs: int = 40
    rel_tolerance: float = 0.02
    max_time_s: float = 1.0


@dataclass(frozen=True)
class LatencyMeasurement:
    """A real measurement: median and quartiles of single-run wall times, in milliseconds."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    runs: int
    stable: bool

    @property
    def rel_spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.p75_ms - self.p25_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyMeasurement:
        return cls(median_ms=float(data["median_ms"]), p25_ms=float(data["p25_ms"]),
                   p75_ms=float(data["p75_ms"]), runs=int(data["runs"]),
                   stable=bool(data["stable"]))


def time_rounds(run_round: Callable[[], list[float]],
                settings: MeasureSettings) -> LatencyMeasurement:
    """Call ``run_round()`` (it returns one round of single-run times in ms) until
    :class:`MeasureSettings` says the median is stable or the time cap is reached."""
    times: list[float] = []
    deadline = time.perf_counter() + settings.max_time_s
    stable = False
    while True:
        round_times = run_round()
        times.extend(round_times)
        if len(times) >= settings.min_runs:
            overall = statistics.median(times)
            recent = statistics.median(round_times)
            if abs(recent - overall) <= settings.rel_tolerance * overall:
                stable = True
                break
        if time.perf_counter() > deadline:
            break
    p25, median, p75 = np.percentile(np.asarray(times), [25, 50, 75])
    return LatencyMeasurement(median_ms=float(median), p25_ms=float(p25), p75_ms=float(p75),
                              runs=len(times), stable=stable)


def time_callable(run: Callable[[], object], settings: MeasureSettings) -> LatencyMeasurement:
    """Time ``run()`` as :class:`MeasureSettings` describes."""
    start = time.perf_counter()
    for _ in range(settings.warmup_runs):
        run()
    while time.perf_counter() - start < settings.warmup_s:
        run()

    def one_round() -> list[float]:
        round_times = []
        for _ in range(settings.round_runs):
            t0 = time.perf_counter_ns()
            run()
            round_times.append((time.perf_counter_ns() - t0) / 1e6)
        return round_times

    return time_rounds(one_round, settings)


class Backend(ABC):
    """Runs ONNX models on one device with fixed settings (threads, provider...)."""

    #: Short name used in profiles and on the command line, e.g. ``"onnxruntime"``.
    name: str = ""

    @abstractmethod
    def version(self) -> str:
        """Version of the runtime library."""

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this backend really executes, always ``fp32`` first: only these
        can be profiled. A precision it would run by converting back to fp32 is not one."""
        return ("fp32",)

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Settings that change latency (threads, provider, optimization level...)."""

    @abstractmethod
    def measure(
        self, onnx_model: bytes, settings: MeasureSettings | None = None
    ) -> LatencyMeasurement:
        """Run a serialized ONNX model on random inputs and return its measured latency."""

    def measure_many(
        self, onnx_models: list[bytes], settings: MeasureSettings | None = None, rounds: int = 1
    ) -> list[LatencyMeasurement]:
        """Measure several models interleaved (round robin), so that slow drifts of the
        machine hit them alike; with ``rounds > 1`` each model's median is the median of
        its per-round medians."""
        per_model: list[list[LatencyMeasurement]] = [[] for _ in onnx_models]
        for _ in range(rounds):
            for i, model in enumerate(onnx_models):
                per_model[i].append(self.measure(model, settings))
        out = []
        for results in per_model:
            if len(results) == 1:
                out.append(results[0])
                continue
            out.append(LatencyMeasurement(
                median_ms=statistics.median(r.median_ms for r in results),
                p25_ms=statistics.median(r.p25_ms for r in results),
                p75_ms=statistics.median(r.p75_ms for r in results),
                runs=sum(r.runs for r in results),
                stable=all(r.stable for r in results),
            ))
        return out
