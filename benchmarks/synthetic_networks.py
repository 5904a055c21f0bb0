"""Synthetic networks: the profile's estimate on random architectures no one designed.

The families and the torchvision zoo of ``latency_fidelity.py`` are networks people built;
this benchmark builds its own, with ``onnx`` alone, from a seed: a strided stem, two to four
stages of one to three blocks each and a strided 3x3 convolution between stages (doubling the
channels), global pooling and a linear classifier. A network mostly repeats one block style
(80% of its blocks), drawn from:

  res         two 3x3 convolutions and an identity shortcut (ResNet's basic block)
  bottleneck  1x1 down to a quarter, 3x3 (dense or grouped), 1x1 up, identity shortcut
  mbv2        1x1 expansion (x3 or x6), depthwise 3x3, 1x1 projection, identity shortcut
  se          depthwise 3x3, squeeze-and-excitation (global pooling, two 1x1 convolutions,
              sigmoid, channel-wise multiply), 1x1 convolution, identity shortcut

with 16 to 96 stem channels and 24 to 64 pixel inputs. Every network is measured twice, in two
interleaved passes; the second pass tells how often a re-measurement agrees with the first
within +-10% (this machine's noise floor).

    python benchmarks/synthetic_networks.py --profile my_cpu.json --networks 80

Writes benchmarks/results/synthetic_networks.csv and .md. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import spearmanr

from autocompress.hardware import HardwareProfile, LatencyModel, MeasureSettings, get_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("res", "bottleneck", "mbv2", "se")


class _Builder:
    """Nodes and initializers of one network, with fresh tensor names."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.fresh()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
             act: str | None = "Relu") -> str:
        fan_in = cin // groups * k * k
        w = self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in)
        b = self.rng.standard_normal(cout) * 0.1
        wn, bn = self.fresh(), self.fresh()
        self.inits += [numpy_helper.from_array(w.astype(np.float32), wn),
                       numpy_helper.from_array(b.astype(np.float32), bn)]
        y = self.op("Conv", [x, wn, bn], pads=[k // 2] * 4, strides=[stride] * 2, group=groups)
        return self.op(act, [y]) if act else y


def _block(b: _Builder, style: str, x: str, c: int) -> str:
    if style == "res":
        y = b.conv(b.conv(x, c, c, 3), c, c, 3, act=None)
        return b.op("Relu", [b.op("Add", [x, y])])
    if style == "bottleneck":
        m = max(8, c // 4)
        groups = int(b.rng.choice([1, m // 8])) if m >= 16 else 1
        y = b.conv(b.conv(b.conv(x, c, m), m, m, 3, groups=groups), m, c, act=None)
        return b.op("Relu", [b.op("Add", [x, y])])
    if style == "mbv2":
        e = c * int(b.rng.choice([3, 6]))
        y = b.conv(b.conv(b.conv(x, c, e), e, e, 3, groups=e), e, c, act=None)
        return b.op("Add", [x, y])
    if style == "se":
        y = b.conv(x, c, c, 3, groups=c)
        r = max(8, c // 4)
        s = b.conv(b.conv(b.op("GlobalAveragePool", [y]), c, r), r, c, act="Sigmoid")
        y = b.conv(b.op("Mul", [y, s]), c, c, act=None)
        return b.op("Add", [x, y])
    raise ValueError(f"unknown block style {style!r}; known: {', '.join(STYLES)}")


def network(seed: int) -> tuple[bytes, str, int]:
    """ONNX bytes of network ``seed``, its main block style and its input side."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    style = str(rng.choice(STYLES))
    c = int(rng.choice([16, 24, 32, 48, 64, 96]))
    side = int(rng.choice([24, 32, 48, 64]))
    x = b.conv("x", 3, c, 3, stride=2)
    h = (side + 1) // 2
    for _ in range(int(rng.integers(2, 5))):
        for _ in range(int(rng.integers(1, 4))):
            x = _block(b, style if rng.random() < 0.8 else str(rng.choice(STYLES)), x, c)
        if h > 2:
            x = b.conv(x, c, min(2 * c, 1024), 3, stride=2)
            c, h = min(2 * c, 1024), (h + 1) // 2
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    fc = numpy_helper.from_array((rng.standard_normal((c, 10)) / np.sqrt(c)).astype(np.float32),
                                 "fc")
    b.inits.append(fc)
    y = b.op("MatMul", [x, "fc"])
    graph = helper.make_graph(
        b.nodes, f"synthetic{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 10])], initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString(), style, side


def _within(estimate: pd.Series, measured: pd.Series) -> float:
    return float((abs(estimate / measured - 1) <= 0.1).mean())


def report(df: pd.DataFrame, args: argparse.Namespace) -> str:
    def row(name: str, d: pd.DataFrame) -> dict:
        return {"networks": name, "n": len(d),
                "within_10pct": _within(d.estimate_ms, d.measured_ms),
                "mape": float((abs(d.estimate_ms / d.measured_ms - 1)).mean()),
                "spearman": float(spearmanr(d.estimate_ms, d.measured_ms).statistic)
                if len(d) > 2 else float("nan"),
                "remeasured_within_10pct": _within(d.remeasured_ms, d.measured_ms),
                "median_estimate_over_measured": float((d.estimate_ms / d.measured_ms).median())}
    rows = [row("all", df)]
    rows += [row(f"style {s}", df[df["style"] == s]) for s in STYLES if (df["style"] == s).any()]
    rows += [row("measured under 1 ms", df[df.measured_ms < 1]),
             row("measured 1 ms or more", df[df.measured_ms >= 1])]
    table = pd.DataFrame(rows)
    return "\n".join([
        "# Synthetic networks: raw profile estimate against measurement",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {machine()}; "
        f"Python {platform.python_version()}; ONNX Runtime, {args.threads} thread(s)",
        f"- profile: {args.profile.name}, measured {HardwareProfile.load(args.profile).created}; "
        f"networks: seeds {args.first_seed} to "
        f"{args.first_seed + args.networks - 1}; two interleaved passes (the second is the "
        "noise floor)",
        "- rows: synthetic_networks.csv",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--networks", type=int, default=80)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    model = LatencyModel(HardwareProfile.load(args.profile))
    backend = get_backend("onnxruntime", threads=args.threads)
    nets = [(seed, *network(seed)) for seed in
            range(args.first_seed, args.first_seed + args.networks)]
    estimates = {seed: model.estimate(data) for seed, data, _, _ in nets}
    settings = MeasureSettings()
    passes: list[dict[int, float]] = [{}, {}]
    for p in passes:
        for seed, data, _, _ in nets:
            p[seed] = backend.measure(data, settings).median_ms
    df = pd.DataFrame([{
        "seed": seed, "style": style, "input_px": side,
        "nodes": len(estimates[seed].per_node_ms),
        "estimate_ms": estimates[seed].latency_ms,
        "streaming_ms": estimates[seed].streaming_ms,
        "measured_ms": passes[0][seed], "remeasured_ms": passes[1][seed],
    } for seed, _, style, side in nets])
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "synthetic_networks.csv", index=False)
    text = report(df, args)
    (args.out / "synthetic_networks.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
