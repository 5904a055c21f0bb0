"""What a layer costs inside a network, against its one-kernel measurement and the estimate.

A profile measures each kernel alone: a one-kernel graph, which ONNX Runtime runs as a
reorder into its blocked layout, the kernel and a reorder out of it. The estimate takes the
run overhead and the fitted reorders out of that measurement and adds the rest up, node by
node. Whether a kernel costs inside a network what it costs alone, and whether the fit
gives what it costs alone, are two questions this benchmark answers apart, for the layers
inverted-residual and plain networks run at 96x96.

For each case, chains of 1, 2, 4 and 6 equal units (a pointwise convolution, a depthwise
one, an expansion and projection pair, an inverted-residual block with and without its
residual addition) are measured in a fresh process (``measure_apart``: interleaved passes of
rounds) together with the one-kernel graph of each kernel of the unit. The chains' slope (a
least-squares line through the four) is what a unit costs inside a network, free of the run
overhead and the reorders at the chain's ends. Reported, as ratios measured in one run:

- ``inside / alone``: the slope over the unit's kernels measured alone, each less what the
  profile's fits say its one-kernel graph ran besides it (run overhead, reorders);
- ``estimate / inside``: the profile's estimate of one more unit (the estimates' slope) over
  the slope.

The second ratio compares the profile's moment with this run's; use a profile measured right
before (``autocompress profile --out P``, nothing else running).

    python benchmarks/layer_chains.py --profile P

Writes benchmarks/results/layer_chains.csv (one row per case) and layer_chains.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from autocompress.hardware import HardwareProfile, LatencyModel, MeasureSettings, get_backend
from autocompress.hardware._apart import measure_apart
from autocompress.hardware._graphs import kernel_graph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import commit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: chain lengths whose times give the slope
LENGTHS = (1, 2, 4, 6)
#: (unit, channels, expansion, window, map size): the first stages of MNASNet and
#: MobileNetV2 at 96x96 (48 and 24 px), their later ones, and wide pointwise layers
CASES = (("pointwise", 16, 1, 1, 48), ("depthwise", 48, 1, 3, 48), ("expand", 16, 3, 1, 48),
         ("block", 16, 3, 3, 48), ("residual", 16, 3, 3, 48),
         ("pointwise", 32, 1, 1, 24), ("depthwise", 72, 1, 3, 24), ("expand", 24, 3, 1, 24),
         ("block", 24, 3, 3, 24), ("residual", 24, 3, 3, 24), ("residual", 40, 3, 5, 12),
         ("residual", 80, 6, 5, 6), ("pointwise", 64, 1, 1, 48), ("pointwise", 128, 1, 1, 28),
         ("pointwise", 256, 1, 1, 14), ("pointwise", 512, 1, 1, 7), ("expand", 96, 6, 1, 14),
         ("expand", 160, 6, 1, 7))


class _Builder:
    """Nodes and weights of one chain, named in order."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)

    def conv(self, x: str, cin: int, cout: int, window: int, groups: int, relu: bool) -> str:
        i = len(self.nodes)
        w = self.rng.standard_normal((cout, cin // groups, window, window)) / np.sqrt(
            cin // groups * window * window)
        self.inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                       numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        y = f"t{i}"
        self.nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y],
                                           kernel_shape=[window] * 2, pads=[window // 2] * 4,
                                           group=groups))
        if relu:
            self.nodes.append(helper.make_node("Relu", [y], [y + "r"]))
            y += "r"
        return y

    def add(self, a: str, b: str) -> str:
        y = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node("Add", [a, b], [y]))
        return y


def chain(unit: str, channels: int, expansion: int, window: int, size: int, length: int
          ) -> bytes:
    """``length`` units in a row, fp32, batch 1, opset 17."""
    b, x = _Builder(), "x"
    wide = channels * expansion
    for _ in range(length):
        if unit == "pointwise":
            x = b.conv(x, channels, channels, 1, 1, True)
        elif unit == "depthwise":
            x = b.conv(x, channels, channels, window, channels, True)
        elif unit == "expand":
            x = b.conv(b.conv(x, channels, wide, 1, 1, True), wide, channels, 1, 1, True)
        else:  # an inverted-residual block, its projection without activation
            y = b.conv(b.conv(x, channels, wide, 1, 1, True), wide, wide, window, wide, True)
            y = b.conv(y, wide, channels, 1, 1, False)
            x = b.add(x, y) if unit == "residual" else y
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        b.nodes, unit, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _inside_alone(model: LatencyModel, kernel, measured_ms: float) -> float:
    """A kernel's one-kernel measurement less what the profile's fits say its graph ran
    besides it (the run overhead and the reorders around it)."""
    estimate = model.estimate(kernel_graph(kernel))
    kernel_ms = sum(ms for _, op, ms in estimate.per_node_ms
                    if op not in ("ReorderInput", "ReorderOutput"))
    return measured_ms - (estimate.latency_ms - kernel_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path,
                        default=ROOT / "hw_profiles" / "onnxruntime-cpu-t1.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    model = LatencyModel(HardwareProfile.load(args.profile))
    backend = get_backend("onnxruntime", threads=1)
    graphs: list[bytes] = []
    plan = []
    for case in CASES:
        chains = [len(graphs) + i for i in range(len(LENGTHS))]
        graphs += [chain(*case, n) for n in LENGTHS]
        kernels = [node.kernel for node in model.rules.lowering(onnx.load_from_string(
                   graphs[chains[0]])) if node.kernel is not None
                   and node.kernel.kind in ("conv", "conv1x1", "dwconv")]
        alone = [len(graphs) + i for i in range(len(kernels))]
        graphs += [kernel_graph(k) for k in kernels]
        plan.append((case, chains, kernels, alone))
    settings = MeasureSettings(max_time_s=1.0, min_runs=50, round_runs=25)
    passes = measure_apart(graphs, backend, settings, rounds=args.rounds, passes=2)
    best = [min(p[i].median_ms for p in passes) for i in range(len(graphs))]
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    rows = []
    for (unit, channels, expansion, window, size), chains, kernels, alone in plan:
        times = [best[i] for i in chains]
        inside, _ = np.polyfit(LENGTHS, times, 1)
        estimates = [model.estimate(graphs[i]).latency_ms for i in chains]
        estimate, _ = np.polyfit(LENGTHS, estimates, 1)
        alone_ms = sum(_inside_alone(model, k, best[i]) for k, i in zip(kernels, alone,
                                                                        strict=True))
        agree = [passes[1][i].median_ms / passes[0][i].median_ms for i in chains + alone]
        rows.append(dict(date=when, commit=commit(), unit=unit, channels=channels,
                         expansion=expansion, window=window, size=size,
                         inside_us=inside * 1e3, alone_us=alone_ms * 1e3,
                         estimate_us=estimate * 1e3, inside_over_alone=inside / alone_ms,
                         estimate_over_inside=estimate / inside,
                         passes_within_10pct=float(np.mean(np.abs(np.log(agree)) <= np.log(1.1)))))
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "layer_chains.csv", index=False)
    shown = frame[["unit", "channels", "expansion", "window", "size", "inside_us", "alone_us",
                   "estimate_us", "inside_over_alone", "estimate_over_inside",
                   "passes_within_10pct"]]
    lines = ["# A layer inside a network, alone, and as estimated", "",
             f"- date: {when}; product commit {commit()}",
             f"- machine: {machine()}",
             f"- backend: onnxruntime {backend.version()}, 1 thread; every graph measured in "
             f"two passes of {args.rounds} rounds in a fresh process, the faster pass kept",
             f"- profile: {args.profile.name} (measured {model.profile.created})",
             "- inside: the slope of chains of 1, 2, 4 and 6 units; alone: the unit's kernels "
             "measured alone, less what the profile's fits say their graphs ran besides them",
             "", shown.round(3).to_markdown(index=False), ""]
    (args.out / "layer_chains.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
