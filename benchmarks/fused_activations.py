"""What an activation fused into a convolution costs ONNX Runtime on this CPU.

ONNX Runtime fuses the activation that follows a convolution into it (its optimized graph's
``Conv`` carries an ``activation`` attribute: Relu, Clip, HardSigmoid, HardSwish, LeakyRelu,
Sigmoid, Tanh). A profile's convolution kernels are measured with a ReLU after them
(``autocompress.hardware._graphs``), and an estimate costs a convolution the same whatever
activation the runtime fused into it. This benchmark measures, for convolutions of the
shapes inverted-residual networks run at 96x96 (pointwise, depthwise and dense), one
one-convolution graph per activation and none, in a fresh process (``measure_apart``:
interleaved passes of rounds), and reports each activation's time over the ReLU graph's per
output element.

    python benchmarks/fused_activations.py

Writes benchmarks/results/fused_activations.csv (one row per shape, activation and pass)
and fused_activations.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from autocompress.hardware import MeasureSettings, get_backend
from autocompress.hardware._apart import measure_apart
from autocompress.hardware.backends._ort_lowering import optimized_graph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import commit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: (input channels, output channels, map size, window, groups, stride)
SHAPES = ((16, 96, 48, 1, 1, 1), (32, 32, 48, 3, 32, 1), (96, 96, 48, 3, 96, 2),
          (64, 64, 24, 3, 1, 1), (24, 72, 24, 1, 1, 1), (72, 72, 24, 5, 72, 1),
          (32, 192, 12, 1, 1, 1), (144, 144, 12, 5, 144, 1))
#: the activations ONNX Runtime fuses into a convolution, and none
ACTIVATIONS = ("none", "Relu", "Clip", "HardSigmoid", "HardSwish", "LeakyRelu", "Sigmoid",
               "Tanh")


def conv_graph(shape: tuple[int, ...], activation: str) -> bytes:
    """One convolution of ``shape`` followed by ``activation`` (fp32, batch 1, opset 17)."""
    cin, cout, size, window, groups, stride = shape
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(
                 (cout, cin // groups, window, window)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")]
    conv_out = "y" if activation == "none" else "c"
    nodes = [helper.make_node("Conv", ["x", "w", "b"], [conv_out], kernel_shape=[window] * 2,
                              pads=[window // 2] * 4, group=groups, strides=[stride] * 2)]
    if activation == "Clip":  # ReLU6
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    elif activation != "none":
        nodes.append(helper.make_node(activation, ["c"], ["y"]))
    out = size // stride
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out, out])
    graph = helper.make_graph(nodes, "conv", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def fused(graph: bytes) -> str:
    """The activation ONNX Runtime's optimized graph fused into the convolution ("-": none,
    "separate": the activation stayed a node of its own)."""
    optimized = optimized_graph(graph)
    if optimized is None:
        return "?"
    ops = [n.op_type for n in optimized.graph.node]
    for node in optimized.graph.node:
        for attr in node.attribute:
            if attr.name == "activation":
                return attr.s.decode()
    return "separate" if len([o for o in ops if o not in ("ReorderInput", "ReorderOutput")]) > 1 \
        else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    cases = [(shape, act, conv_graph(shape, act)) for shape in SHAPES for act in ACTIVATIONS]
    backend = get_backend("onnxruntime", threads=1)
    settings = MeasureSettings(max_time_s=1.0, min_runs=50, round_runs=25)
    passes = measure_apart([g for *_, g in cases], backend, settings, rounds=args.rounds,
                           passes=2)
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    rows = []
    for i, (shape, act, graph) in enumerate(cases):
        cin, cout, size, window, groups, stride = shape
        for p, measured in enumerate(passes):
            rows.append(dict(date=when, commit=commit(), shape=f"{cin}->{cout} {window}x{window}"
                             f"{' dw' if groups > 1 else ''} s{stride} @{size}",
                             out_elements=cout * (size // stride) ** 2, activation=act,
                             fused=fused(graph), ms=measured[i].median_ms, run_pass=p))
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "fused_activations.csv", index=False)
    # each case at its faster pass; each activation over ReLU, per output element
    best = frame.groupby(["shape", "activation"], sort=False).agg(
        ms=("ms", "min"), out_elements=("out_elements", "first"), fused=("fused", "first"))
    relu = best.xs("Relu", level="activation")["ms"]
    best["ns_per_element"] = [(ms - relu[shape]) * 1e6 / n for (shape, _), ms, n
                              in zip(best.index, best["ms"], best["out_elements"], strict=True)]
    table = best["ns_per_element"].unstack("activation")[list(ACTIVATIONS)]
    time_us = (best["ms"] * 1000).unstack("activation")[list(ACTIVATIONS)]
    lines = ["# An activation fused into a convolution: its cost over ReLU", "",
             f"- date: {when}; product commit {commit()}",
             f"- machine: {machine()}",
             f"- backend: onnxruntime {backend.version()}, 1 thread; each graph measured in "
             f"two passes of {args.rounds} rounds in a fresh process, the faster pass kept",
             "- fused by ONNX Runtime: " + ", ".join(
                 f"{a}: {best.xs(a, level='activation')['fused'].iloc[0]}"
                 for a in ACTIVATIONS if a != "none"), "",
             "Time over the ReLU graph per output element (ns):", "",
             table.round(3).to_markdown(), "",
             "Time of the one-convolution graph (us, with the run overhead):", "",
             time_us.round(1).to_markdown(), ""]
    (args.out / "fused_activations.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
