"""Weight streaming by kernel: does every kernel pay what the profile charges for reading its
weights from memory?

A profile measures what reading weights costs with chains of matrix-vector products (kind
``weights``), and an estimate charges a node's weight bytes at that rate once the model's
weights outgrow the cache (:class:`~autocompress.hardware.latency.WeightStreaming`): a
windowed convolution the whole rate, every other node the rate over the cached one (until
2026-12-07 every node the whole rate, which the results files of before then show as the
charge). This
benchmark asks whether other kernels pay the same. For each of three kernels it measures
chains of n equal layers, each with weights of its own, from one layer (whose weights stay in
cache between runs, like a one-kernel measurement) to about 48 MiB of weights:

  matvec     MatMul of a 1 x 512 row by 512 x 512 weights (1 MiB a layer): the profile's own
             chains
  pointwise  1x1 convolution 704 -> 704 on a 4x4 map (1.9 MiB a layer)
  conv3x3    3x3 convolution 224 -> 224 on a 4x4 map (1.7 MiB a layer)

and reports, per layer, what a chain adds over a chain of one layer (the run overhead of an
empty model taken off both), per MiB of weights (the
cost of reading weights beyond the cache), beside what the profile's curve charges a node at
that footprint. The chains are measured in two interleaved passes; the second says how far
this machine's noise goes.

    python benchmarks/weight_streaming.py --profile my_cpu.json

Writes benchmarks/results/weight_streaming.csv and .md. Run it on a quiet machine: nothing
else may use the CPU while it measures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from autocompress.hardware import HardwareProfile, LatencyModel, MeasureSettings, get_backend
from autocompress.hardware.kernels import Kernel, kernel_graph, overhead_graph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
#: kernel -> (channels, map side, window); matvec's map side is unused
KERNELS = {"matvec": (512, 1, 0), "pointwise": (704, 4, 1), "conv3x3": (224, 4, 3)}
#: footprints the chains are built to reach, MiB (the layer counts are rounded)
FOOTPRINTS_MIB = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48)
#: footprints from which the per-MiB costs are summarised as the kernel's plateau
PLATEAU_MIB = 24.0


def layer_bytes(kernel: str) -> int:
    c, _, window = KERNELS[kernel]
    return c * c * max(window, 1) ** 2 * 4


def chain(kernel: str, layers: int, seed: int = 0) -> bytes:
    """ONNX bytes of ``layers`` equal layers of ``kernel`` in a row, each with its weights."""
    c, side, window = KERNELS[kernel]
    if kernel == "matvec":
        return kernel_graph(Kernel("weights", c, c, layers, 1), seed=seed)
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((c, c, window, window)) / np.sqrt(c * window * window)
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        y = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [y], pads=[window // 2] * 4,
                                      name=f"conv{i}"))
        x = y
    shape = [1, c, side, side]
    graph = helper.make_graph(nodes, f"{kernel}_{layers}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def layer_counts(kernel: str) -> list[int]:
    per_layer = layer_bytes(kernel) / MIB
    return sorted({max(1, round(f / per_layer)) for f in FOOTPRINTS_MIB} | {1})


def measure(args: argparse.Namespace) -> pd.DataFrame:
    backend = get_backend("onnxruntime", threads=args.threads)
    settings = MeasureSettings(min_runs=60, max_time_s=3.0)
    plan = [(k, n) for k in KERNELS for n in layer_counts(k)]
    models = {(k, n): chain(k, n) for k, n in plan}
    models[("overhead", 0)] = overhead_graph()
    passes: list[dict[tuple[str, int], float]] = [{}, {}]
    for p in passes:
        for key in [("overhead", 0), *plan]:
            p[key] = backend.measure(models[key], settings).median_ms
            print(f"  {key[0]:9s} {key[1]:3d} layers: {p[key]:.3f} ms", flush=True)
    streaming = None
    if args.profile is not None:
        streaming = LatencyModel(HardwareProfile.load(args.profile)).streaming
        if streaming is None:
            print(f"{args.profile} has no weight-streaming chains: no charge to compare with")
    date = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    rows = []
    for kernel, layers in plan:
        size = layer_bytes(kernel)
        # the run overhead (an empty run) taken off, as the profile does
        one = [p[(kernel, 1)] - p[("overhead", 0)] for p in passes]
        per_layer = [(p[(kernel, layers)] - p[("overhead", 0)]) / layers for p in passes]
        extra = [(pl - o) / (size / MIB) for pl, o in zip(per_layer, one, strict=True)]
        windowed = KERNELS[kernel][2] > 1  # a convolution that pays the whole rate
        charge = (streaming.node_ms(size, size * layers, whole=windowed) / (size / MIB)
                  if streaming is not None else float("nan"))
        rows.append({
            "kernel": kernel, "layers": layers, "layer_mib": size / MIB,
            "footprint_mib": size * layers / MIB,
            "ms": passes[0][(kernel, layers)], "ms_second_pass": passes[1][(kernel, layers)],
            "ms_per_layer": float(np.mean(per_layer)),
            "extra_ms_per_mib": float(np.mean(extra)),
            "extra_ms_per_mib_passes": "/".join(f"{e:.4f}" for e in extra),
            "charge_ms_per_mib": charge, "date": date, "machine": machine(),
        })
    return pd.DataFrame(rows)


def report(df: pd.DataFrame, args: argparse.Namespace) -> str:
    table = df[["kernel", "layers", "footprint_mib", "ms_per_layer", "extra_ms_per_mib",
                "extra_ms_per_mib_passes", "charge_ms_per_mib"]]
    plateau = (df[df.footprint_mib >= PLATEAU_MIB].groupby("kernel")
               [["extra_ms_per_mib", "charge_ms_per_mib"]].median())
    lines = [
        "# Weight streaming by kernel",
        "",
        f"- measured: {df['date'].iloc[0]}; machine: "
        f"{df['machine'].iloc[0] if 'machine' in df else machine()}; "
        f"Python {platform.python_version()}; ONNX Runtime, {args.threads} thread(s)",
        f"- profile (the charge): {args.profile.name if args.profile else 'none given'}"
        + (f", measured {HardwareProfile.load(args.profile).created}" if args.profile else ""),
        "- extra_ms_per_mib: what a chain of n layers costs per layer over a chain of one, "
        "per MiB of a layer's weights (mean of two interleaved passes; each pass after the "
        "slash); charge_ms_per_mib: what the profile's weight-streaming curve charges a node "
        "per MiB at that footprint",
        "",
        table.to_markdown(index=False, floatfmt=".4f"),
        "",
        f"From {PLATEAU_MIB:.0f} MiB on (medians):",
        "",
    ]
    for kernel, row in plateau.iterrows():
        ratio = row.extra_ms_per_mib / row.charge_ms_per_mib if row.charge_ms_per_mib else np.nan
        lines.append(f"- {kernel}: {row.extra_ms_per_mib:.4f} ms per MiB read beyond the "
                     f"cache; the profile charges {row.charge_ms_per_mib:.4f} "
                     f"({ratio:.2f}x of it is paid)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, default=None,
                        help="profile whose weight-streaming charge is reported beside")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    df = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "weight_streaming.csv", index=False)
    text = report(df, args)
    (args.out / "weight_streaming.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
