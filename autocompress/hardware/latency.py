"""Latency model: a whole model's latency estimated from a measured hardware profile.

For each kernel kind the profile's measurements are fitted by a linear model with
non-negative weights on features that grow with channel counts (multiply-adds, input,
output and weight elements; the regressors and which nodes are fused are the profile's
backend's :class:`~autocompress.hardware.rules.CostRules`), minimising relative error, with
a numpy non-negative least squares (no scipy needed). A model's estimate is the per-run
overhead measured on the device plus the sum over its nodes of the fitted kernel time less
the overhead each one-kernel measurement carried. Nodes the backend fuses into the preceding
one (ONNX Runtime: an activation after a Conv) cost nothing; reshapes cost nothing.
Unstructured sparsity does not enter: dense kernels run zeros as fast as other numbers.

Where the backend's rules say how the runtime runs a kernel (:attr:`CostRules.as_run`: ONNX
Runtime's padded channels, its generic path off the blocked layout), the profile's kernels
are fitted as run and such kernels get fits of their own (:data:`SPLIT_KEYS`). Where the
profile measured weight-streaming chains, a model whose weights outgrow the cache also pays
for reading them (:class:`WeightStreaming`).

The error bar is the fit's relative residual spread per kind, added over nodes as if
independent; it does not cover effects between kernels (layout changes, cache reuse),
which is what calibrating against measured reference models (:meth:`calibrated`) is for.

Mixed precision (``estimate(model, precisions)``): every (kind, precision) the profile
measured gets its own fit. A one-kernel int8 graph runs QuantizeLinear on its input and
DequantizeLinear on its output around the kernel (fp16: a Cast at each end), so the int8 fit
is of the measurement less the run overhead and less those two conversions, as fitted from
the profile's ``quantize``/``dequantize`` kernels: it is the kernel's time inside a model.
Every edge where precision changes then costs one conversion over the tensor's elements
(:func:`~autocompress.hardware.kernels.boundaries_of`): its one-kernel fit less the overhead,
plus what the profile's convolution chains show a conversion costs between two convolutions
beyond that (layout changes, fusions lost; :func:`_context_fit`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from autocompress.exceptions import ProfileError
from autocompress.hardware._nnls import nnls
from autocompress.hardware._subnormal import subnormal_softmaxes
from autocompress.hardware.backends import rules_for
from autocompress.hardware.kernels import (
    BOUNDARY_KINDS,
    ELEMENTWISE_OPS,
    KINDS,
    LAYOUT_KINDS,
    STREAM_KINDS,
    WEIGHT_BYTES,
    Boundary,
    Kernel,
    NodeKernel,
    boundaries_of,
    boundary_kind,
    kernels_of,
)
from autocompress.hardware.profile import HardwareProfile
from autocompress.hardware.rules import NEUTRAL_RULES, CarriedFn, CostRules, FeatureFn

__all__ = ["SPLIT_KEYS", "KindFit", "LatencyEstimate", "LatencyModel", "WeightStreaming",
           "fit_calibration", "fit_key", "pays_whole_rate"]


@dataclass(frozen=True)
class KindFit:
    """Weights of one kind's linear model in one precision.

    ``inside``: the weights give the kernel's time inside a model (the one-kernel graph's
    overhead and conversions were taken out before fitting); otherwise they give the
    one-kernel measurement, and the run overhead is taken out when a node is costed.
    """

    kind: str
    weights: tuple[float, ...]
    rel_rmse: float
    samples: int
    precision: str = "fp32"
    inside: bool = False


@dataclass(frozen=True)
class LatencyEstimate:
    """An estimate, not a measurement: ``latency_ms`` +- ``std_ms`` from a profile."""

    latency_ms: float
    std_ms: float
    overhead_ms: float
    per_node_ms: tuple[tuple[str, str, float], ...] = field(repr=False, default=())
    unmodelled: tuple[str, ...] = ()
    scale: float = 1.0
    #: (tensor, conversion kind, ms) of each precision conversion, included in latency_ms.
    boundary_ms: tuple[tuple[str, str, float], ...] = field(repr=False, default=())
    #: What reading weights beyond the caches adds (:class:`WeightStreaming`), included in
    #: latency_ms and in each node's time.
    streaming_ms: float = 0.0
    #: Softmax nodes whose mask makes subnormal floats (Swin's -100): on CPUs that stall on
    #: subnormals the model runs slower than estimated unless they are flushed to zero
    #: (:mod:`autocompress.hardware._subnormal`); not included in latency_ms.
    subnormal_softmax: tuple[str, ...] = ()


#: Reading weights at a footprint is charged in full once it is this much slower per byte than
#: reading them from cache (and from none at the cached rate, linearly).
_STREAMING_RAMP = 0.25


@dataclass(frozen=True)
class WeightStreaming:
    """What reading a model's weights costs once they outgrow the device's caches.

    A one-kernel measurement runs its kernel over and over with the same weights, which stay
    in cache; inside a model whose weights do not fit there, every run reads them from
    memory again (45 MB for resnet18: its last convolutions measured 2.4x their one-kernel
    time inside it on a 2-core EPYC VM). The profile's weight-streaming chains
    (:data:`~autocompress.hardware.kernels.STREAM_KINDS`: matrix-vector products over 1 to
    64 MiB of weights) give the time per weight byte at each footprint: flat while the
    weights stay in cache, rising beyond. A model's footprint is :data:`_WORKING_SET` times
    the weight bytes of its body (its nodes but a classifier, :func:`is_classifier`; the
    bytes a node reads, where the backend's rules say it skips some:
    :attr:`~autocompress.hardware.rules.CostRules.weights_read`); each node with weights
    then adds its weight bytes times what the rate at that footprint exceeds the cached rate
    by (its one-kernel time already read them from cache; a windowed convolution: the whole
    rate, :func:`pays_whole_rate`), in full once that rate is :data:`_STREAMING_RAMP` above
    the cached one (from nothing at the cached rate, linearly).
    The addition never decreases with any node's weights or the footprint, so estimates stay
    monotone in channels.
    """

    #: footprints measured, in bytes, increasing
    footprint_bytes: tuple[float, ...]
    #: ms per byte at each footprint: the cached rate up to the cheapest footprint measured,
    #: then never decreasing (a running maximum: noise does not make more weights cheaper)
    ms_per_byte: tuple[float, ...]
    #: the cheapest rate measured: weights read from cache
    cached_ms_per_byte: float

    @classmethod
    def from_profile(cls, profile: HardwareProfile) -> WeightStreaming | None:
        """The profile's curve, or ``None`` where it measured fewer than three chains (or
        one no slower than the run overhead)."""
        rows = sorted((m.kernel.weight_bytes, m.latency.median_ms)
                      for m in profile.kernels
                      if m.kernel.kind in STREAM_KINDS and m.kernel.precision == "fp32")
        if len(rows) < 3:
            return None
        overhead = profile.overhead.median_ms
        rates = [max(ms - overhead, 0.0) / size for size, ms in rows]
        cheapest = int(np.argmin(rates))
        cached = rates[cheapest]
        if cached <= 0:  # a chain no slower than an empty run tells nothing
            return None
        curve = np.maximum.accumulate([cached] * (cheapest + 1) + rates[cheapest + 1:])
        return cls(tuple(float(size) for size, _ in rows), tuple(float(r) for r in curve),
                   float(cached))

    def rate(self, footprint_bytes: float) -> float:
        """ms per weight byte at ``footprint_bytes`` (the ends of the curve beyond it)."""
        x = np.log(max(footprint_bytes, 1.0))
        return float(np.interp(x, np.log(self.footprint_bytes), self.ms_per_byte))

    def share(self, footprint_bytes: float) -> float:
        """How much of reading its weights a node pays at ``footprint_bytes``, 0 to 1."""
        slower = self.rate(footprint_bytes) / self.cached_ms_per_byte - 1.0
        return min(max(slower / _STREAMING_RAMP, 0.0), 1.0)

    def node_ms(self, weight_bytes: float, footprint_bytes: float, *,
                whole: bool = False) -> float:
        """What reading ``weight_bytes`` adds to a node of a model of ``footprint_bytes``:
        what reading them costs over reading them from cache, which the node's one-kernel
        time already includes; ``whole``: the whole time of reading them at that footprint
        (a windowed convolution, :func:`pays_whole_rate`)."""
        if weight_bytes <= 0:
            return 0.0
        rate = self.rate(footprint_bytes)
        if not whole:
            rate = max(rate - self.cached_ms_per_byte, 0.0)
        return weight_bytes * rate * self.share(footprint_bytes)


#: A network's working set in the caches, as a multiple of the weight bytes of its body
#: (:func:`is_classifier` left out), where :class:`WeightStreaming`'s curve is read.
_WORKING_SET = 2.0


def is_classifier(kernel: Kernel | None) -> bool:
    """Whether ``kernel`` is a matrix-vector product (a gemm over one row): a classifier or
    its hidden layer, which reads its weights once per run, after the body."""
    return kernel is not None and kernel.kind == "gemm" and kernel.height == 1


def pays_whole_rate(kernel: Kernel | None) -> bool:
    """Whether a node pays the whole time of reading its weights at its model's footprint,
    not only what that exceeds the cached time: a windowed convolution (kind ``conv``, dense
    or grouped, outside the blocked layout or in it).

    Measured, not derived. Chains of equal layers with weights of their own
    (``benchmarks/weight_streaming.py``, AVX2 VM, 2026-12-01) paid per MiB of weights beyond a
    one-layer chain: a 3x3 convolution 0.079-0.081 ms (the matrix-vector chains' whole rate
    there, 0.081), a 7x7 one 0.104, a grouped one 0.086; a matrix-vector chain 0.057 (its rate
    over the cached one, by construction) and a pointwise convolution 0.024-0.026. ONNX
    Runtime's per-node profile of 16 zoo models agreed (dense and grouped convolutions took
    0.84-1.18 of the whole rate over their one-kernel estimates, pointwise ones 0.37-0.48,
    matrix products 0.61-0.67). Re-estimated on eleven fidelity runs of the AVX-512 EPYC VM
    (2026-12-07, each with its own profile), the whole rate for these and the excess for the
    rest put the raw estimate within ±10% for 73.0% of the families and 79.2% of the zoo on
    average (the best single factor on the zoo 89.1%), against 71.2% / 77.6% (87.9%) with the
    excess for every node, and 72.4% / 75.0% (84.3%) with the code before either change (the
    whole rate for every node but a classifier, and one fit for all pointwise convolutions):
    chosen on those runs, so in sample (``docs/latency.md``)."""
    return kernel is not None and kernel.kind == "conv"


def weight_bytes(kernel: Kernel | None, read: Callable[[Kernel], int] | None = None) -> int:
    """The bytes of weights ``kernel`` reads: its weight elements (those ``read`` says it
    reads, where given: :attr:`CostRules.weights_read`) in its precision."""
    if kernel is None or kernel.kind not in KINDS:
        return 0
    if read is None:
        return kernel.weight_bytes
    return read(kernel) * WEIGHT_BYTES.get(kernel.precision, 4)


def fit_calibration(raw_ms: Sequence[float], measured_ms: Sequence[float]
                    ) -> tuple[float, float]:
    """Least-squares ``measured = offset + scale * raw`` over reference models.

    With one point, or when the fit is not increasing, falls back to a pure ratio through
    the largest model (``offset = 0``).
    """
    raw = np.asarray(raw_ms, dtype=float)
    measured = np.asarray(measured_ms, dtype=float)
    if len(raw) >= 2 and np.ptp(raw) > 0:
        scale, offset = np.polyfit(raw, measured, 1)
        if scale > 0 and np.all(offset + scale * raw > 0):
            return float(scale), float(offset)
    i = int(np.argmax(raw))
    return float(measured[i] / raw[i]), 0.0


class LatencyModel:
    """Estimates latency on the profiled device; see the module docstring for the method."""

    def __init__(self, profile: HardwareProfile, scale: float = 1.0,
                 offset_ms: float = 0.0,
                 precision_scales: Mapping[str, float] | None = None,
                 precision_node_ms: Mapping[str, float] | None = None) -> None:
        self.profile = profile
        self.scale = scale
        self.offset_ms = offset_ms
        #: precision -> factor on the time of every node (and conversion into or out of it)
        #: in that precision, and a time added per costed node in it, before ``scale``: what
        #: measuring whole networks in that precision showed the profile's one-kernel
        #: measurements miss (see :meth:`calibrated`)
        self.precision_scales = dict(precision_scales or {})
        self.precision_node_ms = dict(precision_node_ms or {})
        #: the cost rules of the profile's backend
        self.rules: CostRules = rules_for(profile.backend)
        #: whether fp32 estimates cost the graph the runtime runs (:attr:`CostRules.lowering`)
        self.lowered = _lowers(profile, self.rules)
        #: precision -> kind -> fit, for every precision the profile measured
        self.precision_fits = self._fit(profile, self.rules.features,
                                        self.rules.carried_layout if self.lowered else None,
                                        self.rules.as_run if self.lowered else None,
                                        functools.partial(fit_key, rules=self.rules))
        #: the fp32 fits by kind
        self.fits = self.precision_fits.get("fp32", {})
        #: what reading weights beyond the caches costs, where the profile measured it
        self.streaming = WeightStreaming.from_profile(profile)

    @staticmethod
    def _fit(profile: HardwareProfile, features: FeatureFn,
             layout: CarriedFn | None = None,
             as_run: Callable[[Kernel], Kernel] | None = None,
             key: Callable[[Kernel], str] | None = None,
             ) -> dict[str, dict[str, KindFit]]:
        overhead_ms = profile.overhead.median_ms
        key = key or fit_key

        # each measured kernel as the runtime runs it (its padded channels, its path), which
        # is how the runtime's graph gives a model's nodes
        ran = {m.kernel: as_run(m.kernel) if as_run is not None and m.kernel.kind in KINDS
               and m.kernel.precision == "fp32" else m.kernel for m in profile.kernels}

        def fit(kind: str, precision: str, carried: Callable[[Kernel], float] | None
                ) -> KindFit | None:
            rows = [m for m in profile.kernels
                    if key(ran[m.kernel]) == kind and m.kernel.precision == precision]
            if not rows or (kind not in KINDS and len(rows) < _MIN_APART):
                return None
            x = np.stack([features(ran[m.kernel]) for m in rows])
            y = np.array([m.latency.median_ms for m in rows])
            # what the one-kernel graph ran besides the kernel, taken out of the target;
            # the error stays relative to the whole measurement
            extra = np.array([carried(m.kernel) for m in rows]) if carried else np.zeros(len(y))
            scale_cols = x.max(axis=0)
            scale_cols[scale_cols == 0] = 1.0
            weight_rows = 1.0 / np.maximum(y, 1e-6)  # relative error
            a = (x / scale_cols) * weight_rows[:, None]
            b = (y - extra) * weight_rows
            coef, _ = nnls(a, b)
            coef = coef / scale_cols
            pred = x @ coef + extra
            rel = (pred - y) / y
            return KindFit(kind, tuple(float(c) for c in coef),
                           float(np.sqrt(np.mean(rel**2))), len(rows), precision,
                           inside=carried is not None)

        # the fits apart the backend's rules add (:attr:`CostRules.fit_apart`): the keys
        # they give where the neutral ones differ
        backend_keys = sorted({key(k) for k in ran.values() if key(k) != fit_key(k)})
        fits: dict[str, dict[str, KindFit]] = {}
        for precision in profile.precisions:
            by_kind: dict[str, KindFit] = {}
            for kind in BOUNDARY_KINDS:
                found = fit(kind, precision, None)
                if found is not None:
                    by_kind[kind] = found
            carried = None
            if precision == "fp32" and layout is not None:
                for kind in LAYOUT_KINDS:
                    found = fit(kind, precision, None)
                    if found is not None:
                        by_kind[kind] = found
                carried = functools.partial(_carried_layout_ms, dict(by_kind), layout,
                                            overhead_ms, features)
            if precision != "fp32":
                carried = functools.partial(_carried_ms, dict(by_kind), precision, overhead_ms,
                                            features)
                context = _context_fit(profile, precision, dict(by_kind), features)
                if context is not None:
                    by_kind[context.kind] = context
            for kind in (*KINDS, *SPLIT_KEYS, *backend_keys):
                found = fit(kind, precision, carried)
                if found is not None:
                    by_kind[kind] = found
            fits[precision] = by_kind
        return fits

    def calibrated(self, scale: float, offset_ms: float = 0.0,
                   precision_scales: Mapping[str, float] | None = None,
                   precision_node_ms: Mapping[str, float] | None = None) -> LatencyModel:
        """The same model with every estimate mapped to ``offset_ms + scale * estimate``;
        before that, the time of each node in a precision named in ``precision_scales`` (and
        of each conversion into or out of it) is multiplied by its factor, and each costed
        node in a precision named in ``precision_node_ms`` costs that much more (a fixed cost
        per node the profile's one-kernel graphs did not show).

        The map comes from measuring reference models on the device (see
        :func:`fit_calibration`); ``scale > 0`` and non-negative factors keep estimates
        monotone in channels.
        """
        factors = dict(precision_scales or {})
        per_node = dict(precision_node_ms or {})
        if not math.isfinite(scale) or scale <= 0 or not math.isfinite(offset_ms) or any(
                not math.isfinite(v) or v < 0 for v in (*factors.values(),
                                                         *per_node.values())):
            raise ValueError(f"calibration needs a positive scale and non-negative precision "
                             f"terms, got {scale}, {offset_ms}, {factors}, {per_node}")
        return LatencyModel(self.profile, scale, offset_ms, factors, per_node)

    def _fit_for(self, kernel: Kernel, what: str) -> KindFit:
        precision = kernel.precision
        by_kind = self.precision_fits.get(precision)
        if by_kind is None:
            measured = ", ".join(self.profile.precisions)
            raise ProfileError(
                f"this profile has no {precision} kernels (it measured {measured}), needed "
                f"for {what}; re-profile with `autocompress profile --precisions "
                f"fp32,{precision}`")
        # a split fit where the profile measured such kernels, else the kind's
        fit = by_kind.get(fit_key(kernel, self.rules)) or by_kind.get(kernel.kind)
        if fit is None:
            if precision == "fp32":
                raise ProfileError(
                    f"the profile has no {kernel.kind!r} kernels, needed for {what}; "
                    "re-profile the device with the default grid")
            raise ProfileError(
                f"the profile has no {precision} {kernel.kind!r} kernels, needed for {what}; "
                f"re-profile with the default grid and `--precisions fp32,{precision}`")
        return fit

    def kernel_ms(self, node: NodeKernel) -> tuple[float, float]:
        """(time, standard deviation) of one node inside a model, in ms."""
        if node.kernel is None:
            return 0.0, 0.0
        fit = self._fit_for(node.kernel, f"node {node.node} ({node.op_type})")
        inside = _inside_ms(fit, self.profile.overhead.median_ms, node.kernel,
                            self.rules.features)
        return inside, inside * fit.rel_rmse

    def boundary_ms(self, boundary: Boundary) -> tuple[float, float]:
        """(time, standard deviation) of one precision conversion inside a model, in ms: its
        one-kernel cost plus, where the profile measured convolution chains, what a
        conversion between two convolutions costs beyond that."""
        fit = self._fit_for(boundary.kernel, f"the {boundary.source} -> {boundary.target} "
                                             f"conversion of tensor {boundary.tensor}")
        features = self.rules.features
        inside = _inside_ms(fit, self.profile.overhead.median_ms, boundary.kernel, features)
        context = self.precision_fits[boundary.kernel.precision].get("island")
        if context is not None:
            flat = replace(boundary.kernel, kind="island")
            inside += float(features(flat) @ np.array(context.weights))
        return inside, inside * max(fit.rel_rmse, context.rel_rmse if context else 0.0)

    def estimate_nodes(self, nodes: Sequence[NodeKernel],
                       boundaries: Sequence[Boundary] = ()) -> LatencyEstimate:
        total = self.profile.overhead.median_ms
        var = 0.0
        per_node = []
        read = self.rules.weights_read
        footprint = _WORKING_SET * sum(weight_bytes(node.kernel, read) for node in nodes
                                       if not is_classifier(node.kernel))
        streaming = 0.0
        factors, per_node_ms = self.precision_scales, self.precision_node_ms
        for node in nodes:
            ms, std = self.kernel_ms(node)
            if node.kernel is not None and (factors or per_node_ms):
                factor = factors.get(node.kernel.precision, 1.0)
                ms = ms * factor + per_node_ms.get(node.kernel.precision, 0.0)
                std = std * factor
            if self.streaming is not None:
                reading = self.streaming.node_ms(weight_bytes(node.kernel, read), footprint,
                                                 whole=pays_whole_rate(node.kernel))
                ms += reading
                streaming += reading
            total += ms
            var += std**2
            per_node.append((node.node, node.op_type, ms * self.scale))
        per_boundary = []
        for boundary in boundaries:
            ms, std = self.boundary_ms(boundary)
            if factors:
                factor = factors.get(boundary.target if boundary.target != "fp32"
                                     else boundary.source, 1.0)
                ms, std = ms * factor, std * factor
            total += ms
            var += std**2
            per_boundary.append((boundary.tensor, boundary.kernel.kind, ms * self.scale))
        unmodelled = tuple(sorted({n.op_type for n in nodes if n.note.startswith("unmodelled")}))
        return LatencyEstimate(
            latency_ms=max(self.offset_ms + total * self.scale, 0.0),
            std_ms=math.sqrt(var) * self.scale,
            overhead_ms=self.profile.overhead.median_ms * self.scale,
            per_node_ms=tuple(per_node),
            unmodelled=unmodelled,
            scale=self.scale,
            boundary_ms=tuple(per_boundary),
            streaming_ms=streaming * self.scale,
        )

    def estimate(self, model: onnx.ModelProto | bytes,
                 precisions: Mapping[str, str] | None = None) -> LatencyEstimate:
        """Estimate the latency of an ONNX model (batch size 1) on the profiled device.

        ``precisions`` maps node names of the fp32 ONNX graph (as
        :func:`~autocompress.hardware.export.export_onnx` names them) to ``fp32``, ``fp16``
        or ``int8``; nodes it does not name are fp32, except free and fused nodes, which
        follow their input. Each node is costed by its precision's fit, and each edge where
        precision changes by a conversion. Raises :class:`ProfileError` when the profile has
        no kernels in a precision asked for.
        """
        if isinstance(model, bytes):
            model = onnx.load_from_string(model)
        estimate = self._estimate(model, precisions)
        masked = subnormal_softmaxes(model)
        return replace(estimate, subnormal_softmax=masked) if masked else estimate

    def _estimate(self, model: onnx.ModelProto, precisions: Mapping[str, str] | None
                  ) -> LatencyEstimate:
        all_fp32 = precisions is None or set(precisions.values()) <= {"fp32"}
        if all_fp32 and self.lowered and self.rules.lowering is not None:
            lowered = self.rules.lowering(model)
            if lowered is not None:
                return self.estimate_nodes(lowered)
        if precisions is None:
            return self.estimate_nodes(self._with_layout(kernels_of(model, rules=self.rules)))
        nodes = kernels_of(model, precisions, rules=self.rules)
        return self.estimate_nodes(self._with_layout(nodes), boundaries_of(model, nodes))

    def _with_layout(self, nodes: list[NodeKernel]) -> list[NodeKernel]:
        """Nodes mapped by the rules, where the fp32 fits leave out the layout conversions
        of the profile's one-kernel graphs: each fp32 node followed by those conversions, so
        that it costs what its one-kernel measurement showed."""
        carried = self.rules.carried_layout
        if not self.lowered or carried is None:
            return nodes
        out: list[NodeKernel] = []
        for node in nodes:
            out.append(node)
            if node.kernel is None or node.precision != "fp32" or node.kernel.kind not in KINDS:
                continue
            out.extend(NodeKernel(f"{node.node} ({k.kind})", node.op_type, k, "layout")
                       for k in carried(node.kernel) or ())
        return out


#: A fit apart (:data:`SPLIT_KEYS`, :attr:`CostRules.fit_apart`) is made only from this many
#: of the profile's kernels or more; else the kind's fit costs them.
_MIN_APART = 4

#: Fits apart from the rest of their kind, where the profile measured such kernels (else the
#: kind's fit costs them): convolutions the runtime runs outside its blocked layout
#: (``Kernel.unblocked``: a generic path, up to 8x slower for a depthwise one on ONNX
#: Runtime), grouped ones (not depthwise) among them apart again, one GEMM per group; and
#: each class of elementwise operators that costs more per element than an addition
#: (``Kernel.op``, :data:`~autocompress.hardware.kernels.ELEMENTWISE_OPS`: GELU about 3x an
#: addition per element on ONNX Runtime, a permutation element by element 17x).
SPLIT_KEYS = ("conv:unblocked", "conv1x1:unblocked", "dwconv:unblocked", "conv:grouped",
              "conv1x1:grouped", *(f"elementwise:{op}" for op in ELEMENTWISE_OPS))


def fit_key(kernel: Kernel, rules: CostRules = NEUTRAL_RULES) -> str:
    """The fit that costs ``kernel``: its kind's, a split one (:data:`SPLIT_KEYS`), or one
    the backend's ``rules`` fit apart (:attr:`CostRules.fit_apart`)."""
    apart = rules.fit_apart(kernel) if rules.fit_apart is not None else None
    if apart:
        return apart
    if kernel.kind in ("conv", "conv1x1", "dwconv") and kernel.unblocked:
        grouped = kernel.kind != "dwconv" and kernel.groups > 1
        return f"{kernel.kind}:{'grouped' if grouped else 'unblocked'}"
    if kernel.kind == "elementwise" and kernel.op:
        return f"elementwise:{kernel.op}"
    return kernel.kind


def _inside_ms(fit: KindFit, overhead_ms: float, kernel: Kernel, features: FeatureFn
               ) -> float:
    raw = float(features(kernel) @ np.array(fit.weights))
    if fit.inside:
        return raw
    # a one-kernel measurement includes one run's overhead; inside a model it does not
    return max(raw - overhead_ms, 0.0)


def _lowers(profile: HardwareProfile, rules: CostRules) -> bool:
    """Whether estimates of ``profile`` cost the graph its runtime runs: the backend's rules
    know how to have it, the profile measured every layout conversion in fp32, and the
    runtime is here to rewrite graphs (else the rules decide, as without layout kernels)."""
    if rules.lowering is None or rules.carried_layout is None:
        return False
    measured = {m.kernel.kind for m in profile.kernels if m.kernel.precision == "fp32"}
    if not set(LAYOUT_KINDS) <= measured:
        return False
    probe = Kernel("conv", 16, 16, 8, 8, kernel=3)
    return rules.carried_layout(probe) is not None


def _carried_layout_ms(layouts: Mapping[str, KindFit], layout: CarriedFn, overhead_ms: float,
                       features: FeatureFn, kernel: Kernel) -> float:
    """What a one-kernel fp32 graph runs besides ``kernel``: the run overhead and the layout
    conversions the runtime puts around it."""
    total = overhead_ms
    for extra in layout(kernel) or ():
        if extra.kind in layouts:
            total += _inside_ms(layouts[extra.kind], overhead_ms, extra, features)
    return total


def _context_fit(profile: HardwareProfile, precision: str,
                 conversions: Mapping[str, KindFit], features: FeatureFn) -> KindFit | None:
    """What one conversion into or out of ``precision`` costs between two convolutions beyond
    its one-kernel cost (layout changes, fusions the fp32 neighbours lose), per tensor size,
    as ``a + b * elements`` with ``a, b >= 0`` (kind ``island``).

    From chains of three equal convolutions measured all fp32 (``3 f``), all in
    ``precision`` (``3 q`` and the conversions at the graph's ends) and with only the middle
    one in ``precision`` (``2 f + q`` and two conversions in context), each with the run
    overhead.
    """
    def measured(kind: str, p: str) -> dict[tuple[int, int, int], float]:
        return {(m.kernel.in_channels, m.kernel.height, m.kernel.width): m.latency.median_ms
                for m in profile.kernels if m.kernel.kind == kind and m.kernel.precision == p}

    fp32_chains = measured("chain", "fp32")
    chains = measured("chain", precision)
    islands = measured("island", precision)
    overhead_ms = profile.overhead.median_ms
    rows = []
    for key, island in islands.items():
        if key not in chains or key not in fp32_chains:
            continue
        elements = key[0] * key[1] * key[2]
        ends = _carried_ms(conversions, precision, overhead_ms, features,
                           Kernel("island", elements, elements, 1, 1)) - overhead_ms
        fp32_conv = (fp32_chains[key] - overhead_ms) / 3
        conv = (chains[key] - overhead_ms - ends) / 3
        pair = island - overhead_ms - 2 * fp32_conv - conv
        rows.append((elements, (pair - ends) / 2, island))
    if not rows:
        return None
    x = np.array([[1.0, n] for n, _, _ in rows])
    excess = np.array([e for _, e, _ in rows])
    weight = 1.0 / np.array([m for _, _, m in rows])  # relative to the measured chains
    scale_cols = x.max(axis=0)
    coef, _ = nnls((x / scale_cols) * weight[:, None], excess * weight)
    coef = coef / scale_cols
    rel = (x @ coef - excess) * weight
    return KindFit("island", tuple(float(c) for c in coef), float(np.sqrt(np.mean(rel**2))),
                   len(rows), precision, inside=True)


def _carried_ms(conversions: Mapping[str, KindFit], precision: str, overhead_ms: float,
                features: FeatureFn, kernel: Kernel) -> float:
    """What a one-kernel graph in ``precision`` runs besides ``kernel``: the run overhead,
    the conversion of its input into ``precision`` and of its output back to fp32 (where the
    profile measured those conversions)."""
    total = overhead_ms
    for kind, elements in ((boundary_kind("fp32", precision), kernel.in_elements),
                           (boundary_kind(precision, "fp32"), kernel.out_elements)):
        if kind in conversions:
            flat = Kernel(kind, elements, elements, 1, 1, precision=precision)
            total += _inside_ms(conversions[kind], overhead_ms, flat, features)
    return total
