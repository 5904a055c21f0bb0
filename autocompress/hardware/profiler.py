"""Profiling a device: measure a grid of kernels on a backend and save a profile."""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from autocompress._io import write_json_atomic
from autocompress._version import __version__
from autocompress.exceptions import ProfileError
from autocompress.hardware.alignment import sweep_kernels
from autocompress.hardware.backends import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    median_of_rounds,
)
from autocompress.hardware.kernels import (
    CONTEXT_KINDS,
    KINDS,
    PRECISIONS,
    STREAM_KINDS,
    Kernel,
    kernel_graph,
    overhead_graph,
)
from autocompress.hardware.profile import HardwareProfile, KernelMeasurement
from autocompress.hardware.rules import NEUTRAL_RULES, CostRules

__all__ = ["GRID_NAME", "TOKEN_GEMMS", "CheckedMeasurements", "ProfileCheck", "adaptive_kernels",
           "check_precisions", "check_profile", "check_sample", "default_grid",
           "measure_with_check", "precision_grid", "profile_backend", "upgrade_profile"]

_logger = logging.getLogger(__name__)

GRID_NAME = "standard-v1+adaptive+sweep"
#: The run overhead is measured again after every this many kernels of a profile
#: (:func:`profile_backend`).
OVERHEAD_EVERY = 50
_MAX_MACS = 120_000_000  # keeps every kernel well under ~50 ms on a small CPU

ProgressFn = Callable[[int, int], None]


def default_grid(seed: int = 0) -> list[Kernel]:
    """Kernels covering small-input CNNs (8-56 px, 8-1280 channels) and classifiers.

    A fixed-seed sample of a grid: convolutions (3x3, 5x5, 7x7, 1x1 and depthwise) at strides
    1 and 2, fully-connected layers, pooling and elementwise ops; then matrix products over
    many rows (:data:`TOKEN_GEMMS`).
    """
    rng = random.Random(seed)
    sizes = [4, 7, 8, 14, 16, 28, 32, 56]
    channels = [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
    grid: list[Kernel] = []

    def pick(kind: str, count: int, make: Callable[[], Kernel]) -> None:
        seen: set[Kernel] = set()
        tries = 0
        while len(seen) < count and tries < count * 50:
            tries += 1
            k = make()
            if k.macs <= _MAX_MACS and k.out_height >= 1 and k not in seen:
                seen.add(k)
        grid.extend(sorted(seen, key=lambda k: (k.macs, k.in_elements)))

    pick("conv", 60, lambda: Kernel(
        "conv", rng.choice(channels), rng.choice(channels), *(2 * [rng.choice(sizes)]),
        kernel=rng.choice([3, 3, 3, 3, 5, 7]), stride=rng.choice([1, 1, 2])))
    pick("conv1x1", 45, lambda: Kernel(
        "conv1x1", rng.choice(channels + [576, 960]), rng.choice(channels + [1280]),
        *(2 * [rng.choice(sizes)]), kernel=1, stride=rng.choice([1, 1, 1, 2])))
    dw_channels = [16, 32, 48, 64, 96, 144, 192, 240, 384, 576, 960]

    def dw() -> Kernel:
        c = rng.choice(dw_channels)
        return Kernel("dwconv", c, c, *(2 * [rng.choice(sizes)]), kernel=rng.choice([3, 3, 5]),
                      stride=rng.choice([1, 2]), groups=c)

    pick("dwconv", 30, dw)
    pick("gemm", 15, lambda: Kernel(
        "gemm", rng.choice([16, 32, 64, 128, 256, 512, 1024, 1280, 2048]),
        rng.choice([10, 100, 256, 1000]), 1, 1))

    def pool() -> Kernel:
        c, s = rng.choice(channels), rng.choice(sizes)
        if rng.random() < 0.5:
            return Kernel("pool", c, c, s, s, kernel=0, stride=1)
        return Kernel("pool", c, c, s, s, kernel=3 if s >= 3 else 1, stride=2)

    pick("pool", 15, pool)
    pick("elementwise", 25, lambda: Kernel(
        "elementwise", *(2 * [rng.choice(channels)]), *(2 * [rng.choice(sizes)])))
    grid.extend(TOKEN_GEMMS)
    return grid


#: Matrix products over many rows, (rows, in, out): the linear layers of transformers and of
#: ConvNeXt blocks over every token or pixel (3136 tokens of 96 channels at 224 px, down to
#: 49 of 768), and attention's products of queries and keys; the grid's other gemm kernels
#: are classifiers (one row), from which a product over thousands of rows cannot be told.
TOKEN_GEMMS = tuple(Kernel("gemm", k, n, m, 1) for m, k, n in (
    (3136, 96, 384), (3136, 384, 96), (3136, 32, 32), (1024, 128, 128), (784, 192, 576),
    (784, 768, 192), (784, 64, 64), (256, 64, 256), (196, 384, 1152), (196, 1536, 384),
    (196, 128, 512), (49, 768, 2304), (49, 3072, 768), (49, 32, 49), (49, 49, 32),
    (16, 256, 256)))


# Every how-many-th grid kernel of each kind is measured again in another precision, to keep
# int8 profiling to about half the fp32 time (QDQ graphs take longer to load and run).
_PRECISION_EVERY = {"conv": 4, "conv1x1": 4, "dwconv": 3, "gemm": 2, "pool": 2,
                    "elementwise": 3}
# Narrow convolutions on large maps, where int8 kernels pay a per-pixel cost that the grid
# (channels picked at random) samples too rarely: what pruning to a few channels produces.
_NARROW = tuple(
    Kernel(kind, c, c, s, s, kernel=3 if kind != "conv1x1" else 1,  # type: ignore[arg-type]
           groups=c if kind == "dwconv" else 1)
    for kind in ("conv", "conv1x1", "dwconv") for c in (8, 16) for s in (14, 28))
# (channels, size) of the tensors precision conversions are measured on: 128 to 300k elements.
_BOUNDARY_TENSORS = ((8, 4), (16, 8), (64, 8), (16, 32), (256, 14), (128, 28), (256, 24),
                     (96, 56))
# (channels, size) of the convolution chains that show conversions in context: 3k to 50k.
_CONTEXT_TENSORS = ((64, 7), (8, 28), (16, 28), (32, 28), (16, 56))
_BOUNDARY_KINDS_OF = {"int8": ("quantize", "dequantize"), "fp16": ("to_fp16", "from_fp16")}


def check_precisions(backend: Backend, precisions: Sequence[str]) -> tuple[str, ...]:
    """``precisions`` in :data:`PRECISIONS` order, checked against what ``backend`` runs."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ProfileError(f"unknown precision(s) {unknown}; known: {', '.join(PRECISIONS)}")
    device = backend.settings().get("device", "")
    runs = ", ".join(backend.precisions)
    unsupported = [p for p in precisions if p not in backend.precisions]
    if unsupported:
        raise ProfileError(
            f"backend {backend.name} ({device}) does not run {', '.join(unsupported)}: it runs "
            f"{runs}; profile with --precisions {','.join(backend.precisions)} or fewer")
    if "fp32" not in precisions:
        raise ProfileError(
            f"a profile always measures fp32 (the other precisions' boundaries convert from "
            f"it): use --precisions fp32,{','.join(precisions)}")
    return tuple(p for p in PRECISIONS if p in precisions)


def precision_grid(grid: Sequence[Kernel], precision: str) -> list[Kernel]:
    """The kernels measured in ``precision`` besides fp32.

    A part of each kind of ``grid``'s fp32 kernels (every fourth convolution, every third
    depthwise and elementwise kernel, every second gemm and pooling kernel; at least two per
    kind) and narrow convolutions on large maps, in ``precision``; the conversions into and
    out of ``precision`` over tensors of 128 to 300k elements; and, to see what conversions
    cost between convolutions (layout changes, lost fusions), chains of three 1x1
    convolutions all in fp32, all in ``precision``, and with only the middle one in
    ``precision`` (:data:`CONTEXT_KINDS`; the fp32 chains are the only fp32 kernels here).
    """
    if precision == "fp32":
        return [k for k in grid if k.precision == "fp32"]
    if precision not in _BOUNDARY_KINDS_OF:
        raise ProfileError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    picked: list[Kernel] = []
    for kind in KINDS:
        # additions stand for every elementwise operator in other precisions
        of_kind = [k for k in grid if k.kind == kind and k.precision == "fp32" and not k.op]
        chosen = of_kind[::_PRECISION_EVERY[kind]]
        chosen += [k for k in of_kind if k not in chosen][:max(0, 2 - len(chosen))]
        if of_kind:
            chosen += [k for k in _NARROW if k.kind == kind and k not in chosen]
        picked.extend(replace(k, precision=precision) for k in chosen)
    for kind in _BOUNDARY_KINDS_OF[precision]:
        picked.extend(Kernel(kind, c, c, s, s, precision=precision)
                      for c, s in _BOUNDARY_TENSORS)
    for c, s in _CONTEXT_TENSORS:
        picked.extend([Kernel("chain", c, c, s, s, precision="fp32"),
                       Kernel("chain", c, c, s, s, precision=precision),
                       Kernel("island", c, c, s, s, precision=precision)])
    return picked


def _key(kernel: Kernel) -> str:
    return json.dumps(kernel.to_dict(), sort_keys=True)


def adaptive_kernels(measured: list[tuple[Kernel, float]], count: int,
                     rules: CostRules = NEUTRAL_RULES) -> list[Kernel]:
    """Neighbours of the kernels a linear fit explains worst, to sample where latency is not
    linear in the features (``rules.features``, the backend's): for each fit an estimate
    makes (:func:`~autocompress.hardware.latency.fit_key` of the kernel as the runtime runs
    it, ``rules.as_run``), an unconstrained least-squares fit on the relative scale; the
    worst-fitted kernels get neighbours with 8 channels more and fewer."""
    from autocompress.hardware.latency import fit_key

    if count <= 0:
        return []
    ran = rules.as_run or (lambda k: k)
    key = {k: fit_key(ran(k), rules) if k.precision == "fp32" else k.kind for k, _ in measured}
    scored: list[tuple[float, Kernel]] = []
    for fit in sorted(set(key.values())):
        rows = [(k, t) for k, t in measured if key[k] == fit]
        if len(rows) < 4:
            continue
        x = np.stack([rules.features(k) for k, _ in rows])
        y = np.array([t for _, t in rows])
        w = 1.0 / np.maximum(y, 1e-9)
        coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
        residual = np.abs(x @ coef - y) * w
        scored.extend((float(r), k) for r, (k, _) in zip(residual, rows, strict=True))
    scored.sort(key=lambda item: -item[0])
    seen = {k for k, _ in measured}
    extra: list[Kernel] = []
    for _, k in scored:
        for delta in (8, -8):
            if k.kind in ("pool", "elementwise"):
                c = max(k.in_channels + delta, 1)
                neighbour = replace(k, in_channels=c, out_channels=c)
            elif k.kind == "dwconv":
                c = max(k.in_channels + delta, 8)
                neighbour = replace(k, in_channels=c, out_channels=c, groups=c)
            elif k.groups > 1:  # one output channel more or fewer per group
                step = k.groups if delta > 0 else -k.groups
                neighbour = replace(k, out_channels=max(k.out_channels + step, k.groups))
            else:
                neighbour = replace(k, out_channels=max(k.out_channels + delta, 8))
            if neighbour not in seen and neighbour.macs <= _MAX_MACS:
                seen.add(neighbour)
                extra.append(neighbour)
        if len(extra) >= count:
            break
    return extra[:count]


def _split_grid(given: Sequence[Kernel], precisions: tuple[str, ...]
                ) -> tuple[list[Kernel], list[Kernel]]:
    """(the fp32 grid of model kinds, everything else to measure) of a given grid."""
    stray = sorted({k.precision for k in given} - set(precisions))
    if stray:
        raise ProfileError(f"the grid holds {', '.join(stray)} kernels but precisions are "
                           f"{', '.join(precisions)}: add them to precisions")
    grid = [k for k in given if k.precision == "fp32" and k.kind not in CONTEXT_KINDS]
    others = [k for k in given if k.precision == "fp32" and k.kind in CONTEXT_KINDS]
    for precision in precisions[1:]:
        explicit = [k for k in given if k.precision == precision]
        others.extend(explicit or precision_grid(grid, precision))
    return grid, list(dict.fromkeys(others))  # the fp32 chains serve every precision


def _load_partial(path: Path, backend: Backend) -> dict[str, list[dict[str, float]]]:
    """Measurements of an interrupted run of the same backend settings and grid, if any."""
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
        if state.get("backend") == backend.settings() and state.get("grid") == GRID_NAME:
            _logger.info("resuming profiling: %d kernels already measured", len(state["done"]))
            return dict(state["done"])
    except (OSError, json.JSONDecodeError, KeyError):
        _logger.warning("ignoring unreadable partial profile %s", path)
    return {}


class _Rounds:
    """Measures kernels in shuffled rounds, keeping finished measurements in a partial file
    and reporting progress; converted graphs (int8, fp16: ~30 ms to build) are built once."""

    def __init__(self, backend: Backend, settings: MeasureSettings, rounds: int, seed: int,
                 partial_path: Path, progress: ProgressFn | None, total: int) -> None:
        self.backend, self.settings, self.rounds, self.seed = backend, settings, rounds, seed
        self.partial_path, self.progress, self.total = partial_path, progress, total
        self.done = _load_partial(partial_path, backend)
        self.count = 0
        self._rng = random.Random(seed + 1)
        self._converted: dict[str, bytes] = {}

    def tick(self) -> None:
        self.count += 1
        if self.progress:
            self.progress(self.count, self.total)

    def _graph(self, kernel: Kernel, key: str) -> bytes:
        if kernel.precision == "fp32":
            return kernel_graph(kernel, seed=self.seed)
        if key not in self._converted:
            self._converted[key] = kernel_graph(kernel, seed=self.seed)
        return self._converted[key]

    def measure_all(self, kernels: list[Kernel], beside: Callable[[], None] | None = None,
                    every: int = OVERHEAD_EVERY) -> None:
        """Measure ``kernels`` in every round not yet done; ``beside()`` is called whenever
        the session's count of measurements (:meth:`tick`) reaches a multiple of ``every``,
        and after each round."""
        for r in range(self.rounds):
            order = list(kernels)
            self._rng.shuffle(order)
            for kernel in order:
                key = _key(kernel)
                if len(self.done.get(key, [])) > r:
                    self.count += 1
                    continue
                m = self.backend.measure(self._graph(kernel, key), self.settings)
                self.done.setdefault(key, []).append(asdict(m))
                if (self.count + 1) % 10 == 0:
                    write_json_atomic(self.partial_path, {
                        "backend": self.backend.settings(), "grid": GRID_NAME,
                        "done": self.done})
                self.tick()
                if beside is not None and self.count % every == 0:
                    beside()
            if beside is not None:
                beside()

    def result(self, kernel: Kernel) -> LatencyMeasurement:
        return median_of_rounds([LatencyMeasurement.from_dict(d)
                                 for d in self.done[_key(kernel)][:self.rounds]])

    def fastest(self, kernel: Kernel, more: Sequence[LatencyMeasurement] = ()
                ) -> LatencyMeasurement:
        """The fastest of ``kernel``'s rounds and ``more`` measurements of it."""
        found = [LatencyMeasurement.from_dict(d) for d in self.done[_key(kernel)][:self.rounds]]
        return min([*found, *more], key=lambda m: m.median_ms)


class _Chains:
    """Weight-streaming chains measured again at chosen moments (:meth:`sample`) beside
    their rounds, each keeping its fastest measurement: what reading weights from memory
    costs moves with the host's other tenants, which only ever slow it (docs/latency.md,
    "Memory that drifts")."""

    def __init__(self, backend: Backend, kernels: Sequence[Kernel], settings: MeasureSettings,
                 seed: int) -> None:
        self.backend, self.settings = backend, settings
        self.graphs = {k: kernel_graph(k, seed=seed) for k in kernels}
        self.samples: dict[Kernel, list[LatencyMeasurement]] = {k: [] for k in kernels}

    def sample(self) -> None:
        for kernel, graph in self.graphs.items():
            self.samples[kernel].append(self.backend.measure(graph, self.settings))

    def result(self, session: _Rounds, kernel: Kernel) -> LatencyMeasurement:
        """``kernel``'s measurement for the profile: the fastest of its rounds and samples
        for a chain, the median of its rounds for any other kernel."""
        if kernel in self.graphs:
            return session.fastest(kernel, self.samples[kernel])
        return session.result(kernel)


def profile_backend(
    backend: Backend,
    out: str | Path,
    *,
    grid: list[Kernel] | None = None,
    settings: MeasureSettings | None = None,
    rounds: int = 2,
    adaptive: int = 24,
    seed: int = 0,
    progress: ProgressFn | None = None,
    precisions: Sequence[str] = ("fp32",),
    sweep: bool = True,
    layout: bool = True,
    streaming: bool = True,
) -> HardwareProfile:
    """Measure ``grid`` (default: :func:`default_grid` and the backend's own
    :attr:`~autocompress.hardware.rules.CostRules.grid_kernels`) on ``backend`` and save to
    ``out``.

    Each kernel is measured ``rounds`` times, in a freshly shuffled order each round, so
    slow drifts of a shared machine spread over all kernels; the recorded result is
    :func:`~autocompress.hardware.backends.median_of_rounds` of the rounds. The run overhead
    (the smallest graph's latency, which every kernel's fit takes out of its one-kernel
    measurement) is measured first, then among the kernels (after every
    :data:`OVERHEAD_EVERY` and after each round), and the median of all kept: on the AMD VM
    (2026-12-07) it switched between about 5.4 and 8-10 us with the machine's state, for
    seconds at a time, and one measurement at the start said which state the start was in,
    not the one the kernels met (docs/latency.md, "The run overhead"). Then
    ``adaptive`` more kernels are sampled around the kernels the grid's linear fit explains
    worst (:func:`adaptive_kernels`). The channel sweep of
    :mod:`~autocompress.hardware.alignment` is measured with the grid (shuffled in with it)
    and kept apart, for the device's channel block, which is never below the block the
    backend lays convolutions out in (:attr:`Backend.layout_block`, recorded too;
    ``sweep=False`` leaves the sweep out: the profile then has no block, and spaces that
    leave ``round_to`` to the device do not round). The backend's layout conversions
    (:attr:`Backend.layout_kernels`: ONNX Runtime's reorders into and out of its blocked
    layout on a CPU) are measured with the grid too
    (``layout=False`` leaves them out: estimates then follow the backend's hand-written
    rules), and so are its weight-streaming chains (:attr:`Backend.stream_kernels`), from
    which estimates charge a model whose weights outgrow the caches for reading them
    (``streaming=False`` leaves them out, and estimates without them). The chains are also
    measured each time the run overhead is, and each keeps its fastest measurement: on the
    AMD VM (2026-12-07) the memory its host shares with other tenants read a 16-64 MiB chain
    10-40% slower from one minute to the next, and two profiles whose chains met a slow
    moment estimated the zoo 4-6% high (docs/latency.md, "Memory that drifts").
    Finished measurements are kept in ``out`` +
    ``.partial`` so an interrupted run resumes where it stopped. The profile records the
    backend's :meth:`~autocompress.hardware.backends.Backend.describe_device`.

    ``precisions`` besides ``fp32`` (which is always measured) add the kernels of
    :func:`precision_grid` in each (or, where ``grid`` holds kernels in that precision,
    those), shuffled in with the fp32 grid so that both see the same machine; they must be
    among ``backend.precisions`` (else :class:`ProfileError`).
    """
    out = Path(out)
    precisions = check_precisions(backend, precisions)
    if grid is None:
        grid = default_grid(seed)
        grid += [k for k in backend.cost_rules.grid_kernels if k not in grid]
    grid, others = _split_grid(list(grid), precisions)
    if layout:
        others += [k for k in backend.layout_kernels if k not in others]
    if streaming:
        others += [k for k in backend.stream_kernels if k not in others]
    settings = settings or MeasureSettings(max_time_s=0.4, min_runs=30)
    partial_path = out.with_name(out.name + ".partial")
    start = time.perf_counter()
    sweep = sweep_kernels() if sweep else []
    total = 1 + rounds * (len(grid) + len(others) + len(sweep) + adaptive)
    session = _Rounds(backend, settings, rounds, seed, partial_path, progress, total)
    # the run overhead, subtracted from every kernel: measured first, then among the kernels
    # (every OVERHEAD_EVERY of them and after each round), the median kept
    overheads = [backend.measure(overhead_graph(), settings)]
    # the weight-streaming chains again at the same moments
    chains = _Chains(backend, [k for k in backend.stream_kernels if k in others], settings,
                     seed)

    def beside() -> None:
        overheads.append(backend.measure(overhead_graph(), settings))
        chains.sample()

    session.tick()
    session.measure_all(grid + others + sweep, beside=beside)
    overhead = median_of_rounds(overheads)
    extra = adaptive_kernels([(k, session.result(k).median_ms) for k in grid], adaptive,
                             backend.cost_rules)
    session.measure_all(extra)
    profile = HardwareProfile(
        backend=backend.name,
        backend_version=backend.version(),
        backend_settings=backend.settings(),
        device=backend.describe_device(),
        overhead=overhead,
        kernels=tuple(KernelMeasurement(k, chains.result(session, k))
                      for k in (*grid, *extra, *others)),
        autocompress_version=__version__,
        grid=GRID_NAME,
        measure_settings={**asdict(settings), "rounds": rounds, "adaptive": len(extra),
                          "precisions": list(precisions)},
        elapsed_s=time.perf_counter() - start,
        channel_sweep=tuple(KernelMeasurement(k, session.result(k)) for k in sweep),
        layout_block=backend.layout_block,
    )
    profile.save(out)
    partial_path.unlink(missing_ok=True)
    if profile.sweep_block is not None and profile.sweep_block < profile.layout_block:
        _logger.warning(
            "the channel sweep's timings showed a block of %d channels, below the %d that %s "
            "lays convolutions out in (the profile uses %d): the machine's speed probably "
            "drifted while it measured, and its other kernels may be off too; profiling "
            "again on a quiet machine gives a truer profile", profile.sweep_block,
            profile.layout_block, backend.name, profile.channel_block)
    if progress:
        progress(total, total)
    return profile


def _on_its_backend(path: Path, refusal: str
                    ) -> tuple[HardwareProfile, Backend, MeasureSettings]:
    """The profile at ``path``, its backend rebuilt from the recorded settings and the
    measurement settings it was measured with; :class:`ProfileError` (``refusal`` after the
    reason) where that backend does not run on this machine."""
    from autocompress.hardware.backends import backend_for, is_local

    profile = HardwareProfile.load(path)
    if not is_local(profile):
        raise ProfileError(f"{path} was not measured on this machine ({profile.describe()}): "
                           f"{refusal}")
    known = set(asdict(MeasureSettings()))
    settings = MeasureSettings(**{k: v for k, v in profile.measure_settings.items()
                                  if k in known})
    return profile, backend_for(profile.backend, profile.backend_settings), settings


def upgrade_profile(path: str | Path, *, rounds: int = 2, seed: int = 0) -> HardwareProfile:
    """Measure what the profile at ``path`` lacks that profiling measures today (the channel
    sweep; the matrix products over many rows, :data:`TOKEN_GEMMS`; the backend's own grid
    kernels, :attr:`~autocompress.hardware.rules.CostRules.grid_kernels`; the layout conversions
    of its backend, :attr:`Backend.layout_kernels`; its weight-streaming chains,
    :attr:`Backend.stream_kernels`, each also measured after every round and kept at its
    fastest, as :func:`profile_backend` keeps them) and add it, with the backend's layout
    block (:attr:`Backend.layout_block`), on the profile's own backend, which must run here.
    The grid's kernels stay as they are.

    Raises:
        ProfileError: the profile's backend does not run on this machine.
    """
    path = Path(path)
    profile, backend, settings = _on_its_backend(
        path, "what it lacks can only be measured on its device")
    sweep = [] if profile.channel_sweep else sweep_kernels()
    have = {m.kernel for m in profile.kernels}
    missing = [k for k in (*TOKEN_GEMMS, *backend.cost_rules.grid_kernels,
                           *backend.layout_kernels, *backend.stream_kernels) if k not in have]
    if not sweep and not missing and profile.layout_block == backend.layout_block:
        return profile
    partial = path.with_name(path.name + ".upgrade.partial")
    session = _Rounds(backend, settings, rounds, seed, partial, None,
                      rounds * (len(sweep) + len(missing)))
    chains = _Chains(backend, [k for k in backend.stream_kernels if k in missing], settings,
                     seed)
    session.measure_all(sweep + missing, beside=chains.sample)
    upgraded = replace(
        profile,
        layout_block=backend.layout_block,
        kernels=profile.kernels + tuple(KernelMeasurement(k, chains.result(session, k))
                                        for k in missing),
        channel_sweep=profile.channel_sweep or tuple(KernelMeasurement(k, session.result(k))
                                                     for k in sweep))
    upgraded.save(path)
    partial.unlink(missing_ok=True)
    return upgraded


#: a profile still describes the machine while the median of its re-measured kernels is
#: within this share of their profiled times
CHECK_TOLERANCE = 0.1
#: ``profile --check`` also measures the profile's weight-streaming chains of at least this
#: many bytes of weights: beyond the caches, where the host's other tenants share the memory
CHECK_CHAIN_BYTES = 16 * 2**20


def _mib(kernel: Kernel) -> int:
    return round(kernel.weight_bytes / 2**20)


@dataclass(frozen=True)
class ProfileCheck:
    """Kernels of a profile measured again on its machine: ``(kernel, profiled ms, now ms)``
    each, and when the profile was measured."""

    measured: tuple[tuple[Kernel, float, float], ...]
    profiled_at: str
    #: the profile's weight-streaming chains of :data:`CHECK_CHAIN_BYTES` or more, measured
    #: again the same way (``profile --check`` only): what reading weights from memory costs
    #: now. Apart from :attr:`measured`: the machine's memory can slow while its cores do not
    chains: tuple[tuple[Kernel, float, float], ...] = ()

    @property
    def ratios(self) -> np.ndarray:
        """Each kernel's time now over its profiled time."""
        return np.array([now / then for _, then, now in self.measured])

    @property
    def median_ratio(self) -> float:
        return float(np.median(self.ratios))

    def within(self, tolerance: float = CHECK_TOLERANCE) -> float:
        """The share of kernels measured within ``tolerance`` of their profiled time."""
        return float(np.mean(np.abs(self.ratios - 1.0) <= tolerance))

    @property
    def holds(self) -> bool:
        """Whether the machine still runs the profile's kernels as fast as when profiled
        (median within :data:`CHECK_TOLERANCE`)."""
        return abs(self.median_ratio - 1.0) <= CHECK_TOLERANCE

    @property
    def chain_ratio(self) -> float | None:
        """The median of the :attr:`chains`' times now over their profiled times (``None``
        where none were measured)."""
        if not self.chains:
            return None
        return float(np.median([now / then for _, then, now in self.chains]))

    def describe(self) -> str:
        q25, q75 = np.percentile(self.ratios, [25, 75])
        chains = self.chain_ratio
        return (f"{len(self.measured)} of its kernels measured again: median "
                f"{self.median_ratio:.2f}x their profiled time (quartiles {q25:.2f}-"
                f"{q75:.2f}x), {100 * self.within():.0f}% within ±"
                f"{100 * CHECK_TOLERANCE:.0f}%"
                + ("" if chains is None else
                   f"; its {len(self.chains)} weight-streaming chains of "
                   f"{_mib(self.chains[0][0])}-{_mib(self.chains[-1][0])} MiB at {chains:.2f}x"))


def check_sample(profile: HardwareProfile, sample: int = 40, seed: int = 0
                 ) -> list[KernelMeasurement]:
    """``sample`` of the fp32 model kernels of ``profile`` with their profiled measurements:
    a fixed-seed draw, one of each kind in turn until the sample is drawn or the kinds run
    out (what :func:`check_profile` measures again).

    Raises:
        ProfileError: the profile has no fp32 model kernels.
    """
    if sample < 1:
        raise ValueError(f"a check measures at least one kernel, got sample={sample}")
    rng = random.Random(seed)
    by_kind: dict[str, list[KernelMeasurement]] = {}
    for m in profile.kernels:
        if m.kernel.precision == "fp32" and m.kernel.kind in KINDS:
            by_kind.setdefault(m.kernel.kind, []).append(m)
    if not by_kind:
        raise ProfileError(f"{profile.describe()} has no fp32 model kernels to measure again")
    for group in by_kind.values():
        rng.shuffle(group)
    return [m for turn in itertools.zip_longest(*by_kind.values()) for m in turn
            if m is not None][:sample]


def check_profile(path: str | Path, *, sample: int = 40, rounds: int = 2, seed: int = 0
                  ) -> ProfileCheck:
    """Measure again ``sample`` of the fp32 model kernels of the profile at ``path``
    (:func:`check_sample`) on its own backend, which must run here, to tell whether the
    machine still runs as when it was profiled. A virtual machine's speed can drift for
    hours: on a 2-core Xeon VM (2026-12-02) the default grid's compute-bound convolutions
    took 1.15-1.25x their morning time three hours later and the smallest 0.85-1.05x (see
    docs/latency.md). Nothing is written to the profile.

    Raises:
        ProfileError: the profile's backend does not run on this machine, or it has no fp32
            model kernels.
    """
    path = Path(path)
    profile, backend, settings = _on_its_backend(path, "only its device can check it")
    chosen = check_sample(profile, sample, seed)
    chains = sorted((m for m in profile.kernels if m.kernel.kind in STREAM_KINDS
                     and m.kernel.precision == "fp32"
                     and m.kernel.weight_bytes >= CHECK_CHAIN_BYTES),
                    key=lambda m: m.kernel.weight_elements)
    partial = path.with_name(path.name + ".check.partial")
    partial.unlink(missing_ok=True)  # an earlier check's timings are not this one's
    session = _Rounds(backend, settings, rounds, seed, partial, None,
                      rounds * (len(chosen) + len(chains)))
    session.measure_all([m.kernel for m in chosen + chains])
    partial.unlink(missing_ok=True)

    def again(kept: list[KernelMeasurement]) -> tuple[tuple[Kernel, float, float], ...]:
        return tuple((m.kernel, m.latency.median_ms, session.result(m.kernel).median_ms)
                     for m in kept)

    return ProfileCheck(again(chosen), profile.created, chains=again(chains))


@dataclass(frozen=True)
class CheckedMeasurements:
    """Models measured in one interleaved pass with kernels of a profile (the pass kept),
    how the machine ran those kernels in it, and how many passes were taken."""

    measurements: tuple[LatencyMeasurement, ...]
    check: ProfileCheck
    passes: int


def measure_with_check(profile: HardwareProfile, backend: Backend, models: Sequence[bytes],
                       settings: MeasureSettings | None = None, rounds: int = 3, *,
                       sample: int = 8, passes: int = 3, pause_s: float = 30.0
                       ) -> CheckedMeasurements:
    """``models`` measured on ``backend``, the profile's own, in one interleaved pass
    (:meth:`Backend.measure_many`) with ``sample`` of the profile's kernels
    (:func:`check_sample`); while the median of those kernels is off their profiled time by
    more than :data:`CHECK_TOLERANCE` (the machine runs in a slow or fast spell, or no
    longer as when profiled) the pass is taken again after ``pause_s``, up to ``passes``
    passes, and the pass whose kernels came closest is kept. The caller decides what a pass
    that never held means (:attr:`ProfileCheck.holds`)."""
    if passes < 1 or pause_s < 0:
        raise ValueError(f"a checked measurement takes at least one pass and a pause of 0 s or "
                         f"more (got {passes} passes, {pause_s} s)")
    chosen = check_sample(profile, sample)
    graphs = [kernel_graph(m.kernel) for m in chosen]
    best: CheckedMeasurements | None = None
    for taken in range(1, passes + 1):
        found = backend.measure_many([*graphs, *models], settings, rounds=rounds)
        check = ProfileCheck(tuple((m.kernel, m.latency.median_ms, now.median_ms)
                                   for m, now in zip(chosen, found[:len(graphs)],
                                                     strict=True)),
                             profile.created)
        if best is None or abs(check.median_ratio - 1) < abs(best.check.median_ratio - 1):
            best = CheckedMeasurements(tuple(found[len(graphs):]), check, taken)
        if check.holds:
            break
        if taken < passes:
            _logger.info("the profile's kernels measure %.2fx their profiled time beside the "
                         "models: this machine runs off the profile's speed; measuring again "
                         "in %.0f s", check.median_ratio, pause_s)
            time.sleep(pause_s)
    assert best is not None
    return replace(best, passes=taken)
