"""The backend interface: something that runs an ONNX model on a device and times it."""

from __future__ import annotations

import inspect
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from autocompress.hardware._device import describe_device
from autocompress.hardware._kernel import Kernel
from autocompress.hardware.rules import NEUTRAL_RULES, CostRules

__all__ = ["Backend", "LatencyMeasurement", "MeasureSettings", "median_of_rounds",
           "run_in_batches", "time_callable", "time_rounds"]


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


def median_of_rounds(results: Sequence[LatencyMeasurement]) -> LatencyMeasurement:
    """One measurement from several rounds of the same model: the median of the rounds'
    medians, the lowest first quartile and the highest third quartile (so the spread covers
    drift between rounds), all runs, and stable only if every round was."""
    if not results:
        raise ValueError("median_of_rounds needs at least one measurement")
    if len(results) == 1:
        return results[0]
    return LatencyMeasurement(
        median_ms=float(statistics.median(m.median_ms for m in results)),
        p25_ms=min(m.p25_ms for m in results),
        p75_ms=max(m.p75_ms for m in results),
        runs=sum(m.runs for m in results),
        stable=all(m.stable for m in results),
    )


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


def time_callable(run: Callable[[], object], settings: MeasureSettings,
                  threads: int = 1) -> LatencyMeasurement:
    """Time ``run()`` as :class:`MeasureSettings` describes (on this machine: with
    ``AUTOCOMPRESS_WAIT_FOR_QUIET`` set, only while no other process uses the CPU and, for
    a run on ``threads`` threads, that many cores run side by side: waited for before,
    checked after, measured again when disturbed)."""
    from autocompress.hardware._quiet import measure_quietly

    def one_round() -> list[float]:
        round_times = []
        for _ in range(settings.round_runs):
            t0 = time.perf_counter_ns()
            run()
            round_times.append((time.perf_counter_ns() - t0) / 1e6)
        return round_times

    def measure() -> LatencyMeasurement:
        start = time.perf_counter()
        for _ in range(settings.warmup_runs):
            run()
        while time.perf_counter() - start < settings.warmup_s:
            run()
        return time_rounds(one_round, settings)

    return measure_quietly(measure, threads=threads)


def run_in_batches(run_batch: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
                   step: int, *, pad: bool = True) -> np.ndarray:
    """``run_batch`` over ``inputs`` in batches of ``step`` rows, concatenated. With
    ``pad``, a short last batch is padded with zeros to ``step`` rows (a graph with a fixed
    batch size takes no other) and its padding dropped from the output."""
    if step < 1:
        raise ValueError(f"batch size must be at least 1, not {step}")
    outs = []
    for start in range(0, len(inputs), step):
        chunk = np.asarray(inputs[start:start + step])
        rows = len(chunk)
        if pad and rows < step:
            padding = np.zeros((step - rows, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, padding])
        outs.append(np.asarray(run_batch(chunk))[:rows])
    return np.concatenate(outs)


class Backend(ABC):
    """Runs ONNX models on one device with fixed settings (threads, provider...).

    A backend is registered under its name with
    :func:`~autocompress.hardware.backends.register_backend`; its options are the keyword
    arguments of its constructor, which validates them. Importing its module must not import
    its runtime library (do that in methods), so that the registry, and the
    :attr:`cost_rules` a latency model needs, are available on any machine.
    """

    #: Short name used in profiles and on the command line, e.g. ``"onnxruntime"``; set by
    #: :func:`~autocompress.hardware.backends.register_backend`.
    name: ClassVar[str] = ""
    #: What the backend does to a graph that decides what its nodes cost.
    cost_rules: ClassVar[CostRules] = NEUTRAL_RULES
    #: One phrase for messages: what and where the backend measures.
    summary: ClassVar[str] = ""

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The options the backend takes: its constructor's keyword arguments."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in parameters if p.name != "self"
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Backend:
        """The backend configured as recorded by :meth:`settings` (keys that are not
        options, such as derived values, are ignored)."""
        names = cls.options()
        return cls(**{k: v for k, v in settings.items() if k in names})

    @abstractmethod
    def version(self) -> str:
        """Version of the runtime library."""

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this backend really executes, always ``fp32`` first: only these
        can be profiled. A precision it would run by converting back to fp32 is not one."""
        return ("fp32",)

    @property
    def layout_kernels(self) -> tuple[Kernel, ...]:
        """The layout conversions a profile of this backend, as configured, measures (its
        rules' :attr:`~autocompress.hardware.rules.CostRules.layout_kernels`)."""
        return self.cost_rules.layout_kernels

    @property
    def stream_kernels(self) -> tuple[Kernel, ...]:
        """The weight-streaming chains a profile of this backend, as configured, measures
        (its rules' :attr:`~autocompress.hardware.rules.CostRules.stream_kernels`)."""
        return self.cost_rules.stream_kernels

    @property
    def layout_block(self) -> int:
        """The channel block the runtime lays convolutions out in here, as it says without
        timing anything (1: none known). A channel count between two multiples of it runs
        padded to the next or on a slower path, so a profile's channel block is never
        smaller (:attr:`~autocompress.hardware.HardwareProfile.channel_block`)."""
        return 1

    @property
    def runs_here(self) -> bool:
        """Whether it measures on this machine (not on a device behind RPC)."""
        return True

    def describe_device(self) -> dict[str, Any]:
        """What identifies the device it measures, as a profile records it (default: this
        machine's CPU, :func:`autocompress.hardware.profile.describe_device`)."""
        return describe_device()

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Settings that change latency (threads, provider, optimization level...), JSON
        serializable; :meth:`from_settings` rebuilds the backend from them."""

    @abstractmethod
    def measure(
        self, onnx_model: bytes, settings: MeasureSettings | None = None
    ) -> LatencyMeasurement:
        """Run a serialized ONNX model on random inputs and return its measured latency."""

    @abstractmethod
    def run(self, onnx_model: bytes, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's first output for ``inputs`` fed to its first input (other inputs, if
        any, get zeros), run ``batch_size`` rows at a time, or at the graph's fixed batch
        size, the last batch padded (see :func:`run_in_batches`). For accuracy checks."""

    def measure_many(
        self, onnx_models: list[bytes], settings: MeasureSettings | None = None, rounds: int = 1
    ) -> list[LatencyMeasurement]:
        """Measure several models interleaved (round robin), so that slow drifts of the
        machine hit them alike; with ``rounds > 1`` each model's result is
        :func:`median_of_rounds` of its rounds."""
        per_model: list[list[LatencyMeasurement]] = [[] for _ in onnx_models]
        for _ in range(rounds):
            for i, model in enumerate(onnx_models):
                per_model[i].append(self.measure(model, settings))
        return [median_of_rounds(results) for results in per_model]
