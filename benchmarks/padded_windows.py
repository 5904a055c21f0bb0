"""What the taps of a convolution's window that fall in the padding cost ONNX Runtime.

A convolution padded to keep its size (``window // 2`` each side) on a map of a few pixels
has most of its window's taps in the padding. This benchmark measures, per shape, the padded
convolution against an unpadded one with the same output (its input larger by the padding,
so that every tap falls inside), both as one-convolution graphs followed by a ReLU, in a
fresh process (``measure_apart``: interleaved passes of rounds), and reports the padded
one's time over the unpadded one's, each less the run overhead (a 1x1 convolution of 16
channels on one pixel). Beside it, the share of the window's taps inside the input, and the
share of those at output columns whose window crosses the map's left or right edge.

    python benchmarks/padded_windows.py

Writes benchmarks/results/padded_windows.csv (one row per graph and pass) and
padded_windows.md.
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
from autocompress.hardware.backends.onnxruntime import _window_taps
from autocompress.hardware.kernels import Kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import commit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: (input channels, output channels, window height, window width, map size, groups): dense
#: windows of 3 to 7 taps on maps of 1 to 14 px, one-sided windows (Inception's 1x7 and
#: 7x1), and depthwise ones
SHAPES = ((512, 512, 3, 3, 1, 1), (512, 512, 3, 3, 2, 1), (256, 256, 3, 3, 3, 1),
          (256, 256, 3, 3, 6, 1), (64, 64, 3, 3, 12, 1), (64, 256, 5, 5, 4, 1),
          (64, 256, 5, 5, 7, 1), (64, 256, 7, 7, 7, 1), (64, 256, 7, 7, 14, 1),
          (128, 128, 1, 7, 4, 1), (128, 128, 7, 1, 4, 1), (64, 256, 1, 7, 7, 1),
          (64, 256, 7, 1, 7, 1), (576, 576, 5, 5, 3, 576), (240, 240, 5, 5, 6, 240),
          (64, 64, 3, 3, 24, 64))


def _inside(size: int, window: int) -> list[int]:
    """Per output position of one axis (stride 1, padded by ``window // 2``), the window's
    taps inside the input."""
    pad = window // 2
    return [min(window, size + pad - o) - max(0, pad - o) for o in range(size)]


def edge_taps(kh: int, kw: int, size: int) -> int:
    """Taps inside the input at output columns whose window crosses the left or right edge,
    over all output pixels."""
    return sum(_inside(size, kh)) * sum(c for c in _inside(size, kw) if c < kw)


def conv_graph(cin: int, cout: int, kh: int, kw: int, size: int, groups: int,
               padded: bool) -> bytes:
    """One convolution and a ReLU (fp32, batch 1, opset 17): padded by ``window // 2`` on a
    ``size`` map, or unpadded on a map larger by that padding (the same output)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(
                 (cout, cin // groups, kh, kw)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")]
    pads = [kh // 2, kw // 2] * 2 if padded else [0] * 4
    height, width = (size, size) if padded else (size + 2 * (kh // 2), size + 2 * (kw // 2))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[kh, kw],
                              pads=pads, group=groups),
             helper.make_node("Relu", ["c"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, height, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, size, size])
    graph = helper.make_graph(nodes, "conv", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    cases = [("overhead", conv_graph(16, 16, 1, 1, 1, 1, True))]
    for shape in SHAPES:
        cases += [(f"{shape} padded", conv_graph(*shape, padded=True)),
                  (f"{shape} unpadded", conv_graph(*shape, padded=False))]
    backend = get_backend("onnxruntime", threads=1)
    settings = MeasureSettings(max_time_s=1.0, min_runs=50, round_runs=25)
    passes = measure_apart([g for _, g in cases], backend, settings, rounds=args.rounds,
                           passes=2)
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    frame = pd.DataFrame([dict(date=when, commit=commit(), graph=name, run_pass=p,
                               ms=measured[i].median_ms)
                          for i, (name, _) in enumerate(cases)
                          for p, measured in enumerate(passes)])
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "padded_windows.csv", index=False)
    best = frame.groupby("graph", sort=False)["ms"].min()  # each graph at its faster pass
    overhead = best["overhead"]
    rows = []
    for shape in SHAPES:
        cin, cout, kh, kw, size, groups = shape
        kind = "dwconv" if groups > 1 else "conv"
        kernel = Kernel(kind, cin, cout, size, size, kernel=kh, groups=groups,  # type: ignore[arg-type]
                        kernel_w=kw if kw != kh else 0)
        taps = kh * kw * size * size
        padded, unpadded = best[f"{shape} padded"], best[f"{shape} unpadded"]
        rows.append({"convolution": f"{cin}->{cout} {kh}x{kw}{' dw' if groups > 1 else ''} "
                                    f"@{size}",
                     "padded (us)": padded * 1000, "unpadded (us)": unpadded * 1000,
                     "padded / unpadded": (padded - overhead) / (unpadded - overhead),
                     "taps inside": _window_taps(kernel) / taps,
                     "of which at edge columns": edge_taps(kh, kw, size) / _window_taps(kernel)})
    table = pd.DataFrame(rows).set_index("convolution")
    lines = ["# Taps in the padding: a padded convolution against an unpadded one of the same "
             "output", "",
             f"- date: {when}; product commit {commit()}",
             f"- machine: {machine()}",
             f"- backend: onnxruntime {backend.version()}, 1 thread; each graph measured in "
             f"two passes of {args.rounds} rounds in a fresh process, the faster pass kept; "
             f"run overhead {overhead * 1000:.1f} us (taken out of both before the ratio)", "",
             "If the runtime skipped the taps in the padding, `padded / unpadded` would read "
             "`taps inside`; if it ran them all, 1.", "",
             table.round(2).to_markdown(), ""]
    (args.out / "padded_windows.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
