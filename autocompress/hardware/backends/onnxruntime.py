"""ONNX Runtime backend (CPU, or CUDA where a GPU and onnxruntime-gpu are present).

Cost rules (:data:`ONNXRUNTIME_RULES`): with full graph optimization ONNX Runtime fuses an
activation (ReLU, Clip, LeakyRelu, HardSigmoid, Sigmoid, Tanh) into the Conv it directly
follows (FusedConv, NCHWc Conv); its QDQ quantizer removes a ReLU/Clip after a quantized
producer. Its int8 (and fp16) kernels get two more regressors than the neutral ones: a cost
per output pixel of convolutions and gemm whatever the channel count, which dominates narrow
layers (CPU QLinearConv: ~30 ns per output pixel of an 8-channel 3x3 convolution, 6x the
fp32 cost), and separate work terms for global average and windowed max pooling (uint8
MaxPool costs 10x more per element than QLinearGlobalAveragePool).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

from autocompress.exceptions import ExportError, MissingDependencyError, ProfileError
from autocompress.hardware._kernel import ELEMENTWISE_OPS, LAYOUT_KINDS, Kernel
from autocompress.hardware.backends._base import (
    Backend,
    LatencyMeasurement,
    MeasureSettings,
    run_in_batches,
    time_callable,
)
from autocompress.hardware.backends._ort_lowering import (
    FILTER_SET_BLOCKS,
    as_run,
    carried_layout,
    nchwc_block,
    probed_block,
    runtime_kernels,
)
from autocompress.hardware.backends._registry import register_backend
from autocompress.hardware.rules import CostRules, neutral_features

__all__ = ["ONNXRUNTIME_RULES", "OnnxRuntimeBackend"]

_logger = logging.getLogger(__name__)

_ELEM_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def _features(kernel: Kernel) -> np.ndarray:
    """The neutral regressors; also ONNX Runtime's per-output-pixel term of convolutions (in
    every precision) and, in int8 (and fp16), of gemm, with separate global and windowed
    work terms of pooling; and of fp32 convolutions, the passes over the input their filter
    sets make (:func:`_filter_set_passes`).

    The per-pixel term of fp32 convolutions: on an AVX2 VM, the 3x3 convolutions of 8
    channels at 32x32 of a pruned resnet20 ran 34 µs each (ONNX Runtime's own per-node
    profile) where the fit on multiply-adds and tensor sizes said 22 µs, and 32 µs with the
    term; a narrow convolution's loop over output pixels costs more than its few channels
    say. Where a device's profile shows no such cost, its non-negative weight comes out 0
    (the shipped AVX-512 profile's did, fitted on that AVX2 VM).

    Of grouped fp32 convolutions outside the blocked layout, the rows their input is unfolded
    into (:func:`_unfolded_rows`). And of fp32 convolutions, the output elements beyond
    :data:`SPILL_BYTES` (:func:`_spilled_outputs`): an output that outgrows a core's cache
    costs more per element than the linear terms say.

    A blocked fp32 convolution's multiply-adds and weights count only the taps of its window
    inside the map (:func:`_window_taps`, :func:`_weights_read`): ONNX Runtime skips those in
    the padding, which on maps of a few pixels are most of them."""
    convolution = kernel.kind in ("conv", "conv1x1", "dwconv")
    if (kernel.kind not in ("conv", "conv1x1", "dwconv", "gemm", "pool")
            or (kernel.precision == "fp32" and not convolution)):
        return neutral_features(kernel)
    if kernel.kind == "pool":
        windowed = kernel.kernel > 0
        window_work = kernel.out_elements * kernel.kernel**2 if windowed else 0
        return np.array([1.0, 0 if windowed else kernel.in_elements, window_work],
                        dtype=float)
    features = np.append(neutral_features(kernel), float(kernel.out_height * kernel.out_width))
    if kernel.precision == "fp32" and not kernel.unblocked:  # the taps it runs
        features[1] = _window_taps(kernel) * kernel.out_channels * (kernel.in_channels
                                                                   // kernel.groups)
        features[4] = _weights_read(kernel)
    if kernel.precision == "fp32":
        features = np.append(features, [_filter_set_passes(kernel), _unfolded_rows(kernel),
                                         _spilled_outputs(kernel)])
    return features


def _unfolded_rows(kernel: Kernel) -> float:
    """Rows of the matrix a grouped fp32 convolution outside the blocked layout unfolds its
    input into (``in_channels * kernel * window_w``: one per input channel and window tap,
    each as long as the output map); 0 for every other kernel.

    ONNX Runtime runs such a convolution as one unfolding and one matrix product per group,
    and each row costs a fixed time besides its elements. On the AVX-512 EPYC VM
    (2026-12-07) 3x3 convolutions of 8-wide groups on 3x3 maps ran 20-64 µs, about 13 ns a
    row, where the ``conv:grouped`` fit, whose grid then had no map under 6 px, said 1.4-2.2x
    that: it made up for the rows with a constant of 31-41 µs per convolution. With this term
    and the grid's small maps (:data:`GROUPED_CONVS`) the fit's relative error on those
    kernels fell from 0.16 to 0.08. Non-decreasing in channels, as the other terms."""
    if kernel.kind not in ("conv", "conv1x1") or not kernel.unblocked or kernel.groups == 1:
        return 0.0
    return float(kernel.in_channels * kernel.kernel * kernel.window_w)


#: Output bytes of a convolution beyond which each more costs extra (:func:`_spilled_outputs`):
#: 1 MiB, the L2 cache of one core of the AMD EPYC VM it was chosen on; what the bytes beyond
#: cost is the fit's to say (0 on a device where they cost no more).
SPILL_BYTES = 2**20


def _spilled_outputs(kernel: Kernel) -> float:
    """Output elements of an fp32 convolution beyond :data:`SPILL_BYTES`, 0 below.

    A linear fit has one price per output element. On the AVX-512 EPYC VM (2026-12-06) the
    profile's 1x1 convolutions from 8 to 1,272-1,288 channels at 56x56 (15 MiB of output)
    measured 1.4-1.5x what the fit said, and the fit raised its price per output element to
    make up for them, so that narrow pointwise convolutions on large maps with small
    outputs (16 to 96 channels at 48x48, 0.8 MiB) were estimated at 1.3-1.7x their
    one-kernel measurements. With this term the three convolutions pay for their outputs
    apart. Re-estimated on the stored measurements of the six fidelity runs it was chosen on,
    the families' raw estimates within ±10% went up by 0-17 points (mobilenet_v2 from 35% to
    75-85% in two), the zoo's by -1 to 3; on three fresh runs, the families by 2-6 and the
    zoo by -5 to 1 (``docs/latency.md``). Non-decreasing in channels, as the other terms."""
    return max(kernel.out_elements - SPILL_BYTES / 4, 0.0)


def _filter_set_passes(kernel: Kernel) -> float:
    """Input reads of a blocked fp32 convolution: per group, per filter set (up to
    :data:`FILTER_SET_BLOCKS` channel blocks of outputs computed together), one read of every
    input channel under the window at every output pixel; 0 for depthwise convolutions and
    those outside the blocked layout.

    A convolution of fewer output channels than a set costs a whole set's reads. On an AVX2
    VM (8-channel blocks, 32-channel sets) a 3x3 convolution from 192 to 8 channels at 16x16
    ran 0.23 ms where a fit on multiply-adds said 0.12 (0.235 with this term); in the
    channel sweep (3x3, 16x16, as many inputs as outputs) 32 channels took 1.32x 24's time
    (multiply-adds 1.78x, reads 1.33x) and 40 took 1.88x 32's (1.56x, 2.5x), where the
    second set starts. With this term the dense fit's relative error on its own profile fell
    from 17.8% to 4.3% there."""
    if kernel.kind not in ("conv", "conv1x1") or kernel.unblocked:
        return 0.0
    out_per_group = kernel.out_channels // kernel.groups
    sets = -(-out_per_group // (FILTER_SET_BLOCKS * nchwc_block()))
    return float(kernel.groups * sets * (kernel.in_channels // kernel.groups)
                 * _window_taps(kernel))


def _taps(size: int, window: int, stride: int, pad: int) -> int:
    """Window taps inside the input, summed over the output positions of one axis padded by
    ``pad`` each side."""
    out = (size + 2 * pad - window) // stride + 1
    return sum(max(min(window, size + pad - o * stride) - max(0, pad - o * stride), 0)
               for o in range(out))


def _used_taps(size: int, window: int, stride: int, pad: int) -> int:
    """Window taps of one axis that fall inside the input at some output position."""
    last = (size + 2 * pad - window) // stride  # the last output position
    return max(min(window, size + pad) - max(0, pad - last * stride), 0)


def _weights_read(kernel: Kernel) -> int:
    """The weight elements a kernel reads per run: for a blocked fp32 convolution, not
    those of taps that fall in the padding at every output pixel (a 3x3 window on a 1x1
    map reads its centre tap's; Inception's last blocks at 96x96); else all of them."""
    if (kernel.kind not in ("conv", "conv1x1", "dwconv") or kernel.precision != "fp32"
            or kernel.unblocked):
        return kernel.weight_elements
    return (kernel.out_channels * (kernel.in_channels // kernel.groups)
            * _used_taps(kernel.height, kernel.kernel, kernel.stride, kernel.pads[0])
            * _used_taps(kernel.width, kernel.window_w, kernel.stride, kernel.pads[1]))


def _window_taps(kernel: Kernel) -> int:
    """Taps of a convolution's window that fall inside its input, over all output pixels:
    ``kernel * window_w * out_height * out_width`` less the taps in the padding. On maps of a
    few pixels that is most of them (a 3x3 window on a 1x1 map: one tap in nine).

    ONNX Runtime's blocked fp32 convolutions skip the rows of a window that fall in the
    padding, but the outputs whose window crosses the map's left or right edge run a slower
    path (``benchmarks/padded_windows.py``, AMD EPYC VM, 2026-12-08: against an unpadded
    convolution of the same output, a 3x3 one of 512 channels costs 0.18x on a 1x1 map,
    0.86x on 2x2 and 0.97x on 3x3, where 0.11, 0.44 and 0.60 of its taps are inside). The
    fit prices what the edges cost into these taps; a term of its own for them halved the
    dense fit's error on its own kernels but did not improve the models' estimates
    (``docs/latency.md``, "Taps in the padding: MLAS runs more of them than the estimate
    counts")."""
    return (_taps(kernel.height, kernel.kernel, kernel.stride, kernel.pads[0])
            * _taps(kernel.width, kernel.window_w, kernel.stride, kernel.pads[1]))


#: Grouped convolutions (not depthwise) measured besides the default grid, group widths 4 to
#: 64 (ResNeXt, RegNet) on 3 to 56 px: ONNX Runtime runs those whose groups are not a
#: multiple of its channel block wide (4, 8, 24, 56 on an AVX-512 CPU; on an AVX2 one only
#: 4) outside its blocked layout, at about half the speed per multiply-add, and estimates
#: fit those apart (``conv:grouped``); the others run blocked and join the dense fit. The
#: widths 12 to 60 are off the block with AVX2's 8 channels and AVX-512's 16 alike (a RegNet
#: pruned to half its width has them). Without them an AVX2 profile fitted ``conv:grouped``
#: on four convolutions of 4-wide groups, and regnet_x_8gf pruned to 60-wide groups was
#: estimated at 1.58x its measurement (AVX2 VM, 18:03); with them, at 1.05x (18:24).
GROUPED_CONVS = tuple(
    Kernel("conv", c, c, s, s, kernel=3, stride=stride, groups=c // width)
    for c, width, s, stride in (
        (32, 4, 56, 1), (64, 4, 28, 1), (128, 4, 28, 2), (128, 4, 14, 1),
        (48, 8, 56, 2), (48, 8, 28, 1), (64, 8, 28, 1), (104, 8, 14, 1), (208, 8, 7, 1),
        (96, 16, 28, 1), (64, 16, 28, 2), (128, 16, 14, 1), (256, 16, 7, 1),
        (72, 24, 28, 1), (168, 24, 14, 2), (408, 24, 7, 1),
        (128, 32, 28, 1), (256, 32, 14, 1), (512, 32, 7, 1), (1024, 32, 7, 2),
        (128, 64, 28, 1), (448, 56, 14, 1), (256, 64, 14, 1), (512, 64, 7, 1),
        (96, 12, 28, 1), (192, 12, 14, 1), (120, 20, 28, 2), (240, 20, 14, 1),
        (168, 28, 14, 1), (360, 36, 7, 1), (120, 60, 12, 1), (360, 60, 6, 1),
        # small maps, where a RegNet at 96x96 ends (:func:`_unfolded_rows`)
        (96, 8, 3, 1), (320, 8, 3, 1), (240, 8, 6, 1), (64, 8, 12, 1), (48, 8, 12, 2),
        (256, 4, 3, 1), (64, 4, 6, 1), (192, 12, 3, 1), (360, 20, 3, 1), (120, 24, 3, 1),
        (144, 24, 6, 2), (480, 60, 3, 1)))
#: Convolutions on channel counts off a multiple of 4, which ONNX Runtime runs outside its
#: blocked layout (what a model pruned without rounding has): depthwise, 3x3 and 1x1.
UNBLOCKED_CONVS = (
    *(Kernel("dwconv", c, c, s, s, kernel=3, stride=stride, groups=c)
      for c, s, stride in ((58, 12, 1), (58, 24, 2), (30, 28, 1), (90, 14, 1), (174, 7, 1),
                           (33, 56, 2), (234, 14, 1), (18, 56, 1))),
    *(Kernel("conv", cin, cout, s, s, kernel=3, stride=stride)
      for cin, cout, s, stride in ((58, 58, 12, 1), (58, 116, 24, 2), (30, 64, 28, 1),
                                   (90, 90, 14, 1), (174, 160, 7, 1), (18, 32, 56, 1))),
    *(Kernel("conv1x1", cin, cout, s, s)
      for cin, cout, s in ((58, 58, 24), (58, 116, 12), (174, 174, 7), (30, 120, 28),
                           (90, 360, 14), (350, 96, 7))),
)

#: Pointwise convolutions of few channels on large maps: the expansions and projections of
#: inverted-residual blocks in their first stages (8 to 48 channels in, 16 to 96 out, on 24 to
#: 48 px). The rest of the grid's pointwise convolutions have either many channels or small
#: maps, and its fit, pulled by those, put such convolutions at 1.2-1.7x their one-kernel
#: measurements (mnasnet at 96x96: 16 -> 48 channels on 24x24, 17.6 us measured alone, 26.8
#: fitted; AMD EPYC VM, 2026-12-07). In three fresh runs, each estimated with its profile and
#: with the same profile less these ten, mobilenet_v2's candidates at 32x32 went from 40%,
#: 95% and 30% to 90%, 100% and 80% within +-10% of their measurements, the zoo by +1, +3
#: and -3 points (``docs/latency.md``, "Narrow pointwise convolutions").
NARROW_POINTWISE = tuple(
    Kernel("conv1x1", cin, cout, s, s)
    for cin, cout, s in ((8, 16, 48), (16, 16, 48), (16, 48, 48), (32, 16, 48), (48, 96, 48),
                         (8, 48, 24), (16, 48, 24), (32, 96, 24), (48, 16, 24), (16, 96, 32)))

#: Elementwise operators that cost more per element than an addition, by class
#: (:data:`~autocompress.hardware._kernel.ELEMENTWISE_OPS`: GELU, SiLU, softmax, LayerNorm,
#: two kinds of transposes), over 1k to 1.2M elements, normalized over the last axis of 32 to
#: 384 (a transformer's channels, a 7x7 window's 49 tokens): what attention blocks, ConvNeXt
#: and EfficientNet run besides their convolutions and matrix products.
ELEMENTWISE_KERNELS = tuple(
    Kernel("elementwise", c, c, h, w, op=op)
    for op in ELEMENTWISE_OPS
    for c, h, w in ((2, 8, 64), (4, 49, 49), (8, 49, 32), (4, 49, 192), (16, 49, 49),
                    (8, 98, 96), (64, 49, 49), (32, 98, 96), (8, 98, 384), (32, 98, 384)))

#: (channels, size) of the tensors the reorders into and out of the blocked layout are
#: measured on: 256 to 200k elements, channels multiples of 16.
_LAYOUT_TENSORS = ((16, 4), (16, 14), (16, 32), (16, 56), (32, 8), (32, 28), (48, 16),
                   (64, 7), (64, 16), (64, 56), (96, 28), (128, 14), (256, 7), (256, 14),
                   (512, 4), (512, 7))
#: Layers (1 MiB of fp32 weights each) of the weight-streaming chains: 1 to 64 MiB, from
#: weights that stay in a CPU's caches between runs to weights read from memory every run.
_STREAM_LAYERS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def _fit_apart(kernel: Kernel) -> str | None:
    """``conv1x1:nchw`` for a pointwise fp32 convolution in the blocked layout over fewer
    input channels than a block (8 or 12 with AVX-512's 16), else ``None``.

    MLAS reads such an input as it is (NCHW) and runs another kernel than for a blocked
    input: on the AVX-512 EPYC VM (2026-12-07) the profile's sixteen of them cost about 0.9
    ns per output element, and one fit with the rest put them at 0.58-0.85x their
    measurements while raising every blocked pointwise convolution's price per output
    element from 0.05 to 0.23 ns (16 -> 96 channels at 48x48: 105 us fitted, 68 measured
    alone). Fitted apart, the rest's relative error on its own kernels fell from 0.16 to
    0.09 (``docs/latency.md``, "The weights' charge over the cached rate, and pointwise
    convolutions of NCHW input apart")."""
    if (kernel.kind == "conv1x1" and kernel.precision == "fp32" and not kernel.unblocked
            and kernel.groups == 1 and kernel.in_channels < nchwc_block()):
        return "conv1x1:nchw"
    return None


#: What ONNX Runtime does to a graph that decides what its nodes cost (module docstring).
#: Where the profile measured the reorders (a CPU profile since they exist), fp32 estimates
#: cost the graph ONNX Runtime really runs (:mod:`._ort_lowering`), and the rules above
#: only serve estimates in other precisions and where onnxruntime is not installed.
ONNXRUNTIME_RULES = CostRules(
    fused_ops=frozenset({"Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "Tanh"}),
    fusing_ops=frozenset({"Conv"}),
    fuse_chains=False,
    int8_removed_ops=frozenset({"Relu", "Clip"}),
    features=_features,
    lowering=runtime_kernels,
    carried_layout=carried_layout,
    as_run=as_run,
    layout_kernels=tuple(Kernel(kind, c, c, s, s) for kind in LAYOUT_KINDS  # type: ignore[arg-type]
                         for c, s in _LAYOUT_TENSORS),
    stream_kernels=tuple(Kernel("weights", 512, 512, n, 1) for n in _STREAM_LAYERS),
    weights_read=_weights_read,
    fit_apart=_fit_apart,
    grid_kernels=GROUPED_CONVS + UNBLOCKED_CONVS + NARROW_POINTWISE + ELEMENTWISE_KERNELS,
)


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise MissingDependencyError(
            "onnxruntime is not installed; pip install autocompress (or onnxruntime)"
        ) from exc
    return onnxruntime


@register_backend("onnxruntime")
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with ``threads`` intra-op threads and full graph optimization, on this
    machine's CPU or (``device="cuda"``) its NVIDIA GPU."""

    cost_rules = ONNXRUNTIME_RULES
    summary = "measures on this machine"

    def __init__(self, threads: int = 1, device: Literal["cpu", "cuda"] = "cpu") -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads!r}")
        if device not in ("cpu", "cuda"):
            raise ProfileError(f"unknown device {device!r} for onnxruntime; use cpu or cuda")
        self.threads = threads
        self.device = device
        ort = _ort()
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingDependencyError(
                "ONNX Runtime has no CUDAExecutionProvider here: install onnxruntime-gpu on a "
                "machine with an NVIDIA GPU, or use device 'cpu'"
            )

    def version(self) -> str:
        return str(_ort().__version__)

    @property
    def precisions(self) -> tuple[str, ...]:
        """CPU: fp32 and int8 (QDQ graphs run as QLinearConv, QGemm, QLinearAdd... with
        uint8 activations). fp16 is not offered on CPU: ONNX Runtime's x86 CPU provider
        inserts casts and runs fp16 graphs in fp32, so there is no fp16 kernel to measure.
        CUDA: fp32, fp16 and int8."""
        if self.device == "cuda":
            return ("fp32", "fp16", "int8")
        return ("fp32", "int8")

    @property
    def layout_kernels(self) -> tuple[Kernel, ...]:
        """The reorders into and out of the blocked layout of its CPU provider (none on CUDA,
        which has no such layout)."""
        return self.cost_rules.layout_kernels if self.device == "cpu" else ()

    @property
    def layout_block(self) -> int:
        """The NCHWc block of ONNX Runtime's CPU convolutions here (8 with AVX2, 16 with
        AVX-512), read from how it lays out a convolution of 4 channels; 1 on CUDA or where
        it does not block convolutions."""
        return (probed_block() or 1) if self.device == "cpu" else 1

    @property
    def stream_kernels(self) -> tuple[Kernel, ...]:
        """The weight-streaming chains on a CPU (not measured on CUDA yet)."""
        return self.cost_rules.stream_kernels if self.device == "cpu" else ()

    @property
    def providers(self) -> list[str]:
        if self.device == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def settings(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "device": self.device,
            "providers": self.providers,
            "graph_optimization": "ORT_ENABLE_ALL",
            "execution_mode": "sequential",
        }

    def session(self, onnx_model: bytes) -> Any:
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(onnx_model, sess_options=options,
                                        providers=self.providers)
        except Exception as exc:
            raise ExportError(f"ONNX Runtime cannot load the model: {exc}") from exc

    def random_inputs(self, session: Any, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        feeds = {}
        for arg in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
            dtype = _ELEM_TYPES.get(arg.type, np.float32)
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        return feeds

    def measure(
        self, onnx_model: bytes, settings: MeasureSettings | None = None
    ) -> LatencyMeasurement:
        session = self.session(onnx_model)
        feeds = self.random_inputs(session)
        return time_callable(lambda: session.run(None, feeds), settings or MeasureSettings(),
                             threads=self.threads if self.device == "cpu" else 1)

    def run(self, onnx_model: bytes, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        session = self.session(onnx_model)
        first, *others = session.get_inputs()
        fixed = first.shape[0] if first.shape else None
        static = isinstance(fixed, int) and fixed > 0
        step = int(fixed) if static else batch_size
        dtype = _ELEM_TYPES.get(first.type, np.float32)
        rest = {arg.name: np.zeros([d if isinstance(d, int) and d > 0 else 1
                                    for d in arg.shape], _ELEM_TYPES.get(arg.type, np.float32))
                for arg in others}

        def run_batch(chunk: np.ndarray) -> np.ndarray:
            return session.run(None, {first.name: chunk, **rest})[0]

        return run_in_batches(run_batch, np.asarray(inputs, dtype=dtype), step, pad=static)
