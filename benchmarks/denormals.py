"""Subnormal floats: what they cost ONNX Runtime on this CPU, and which models produce them.

A profile measures its kernels on random normal inputs, which hold no subnormal floats
(magnitudes under 1.2e-38 in fp32). Some models make them at run time: Swin's shifted-window
attention adds a mask of -100 before its softmax, and exp(-100) = 3.7e-44 is subnormal, so
the softmax writes them and the product of the attention weights with the values reads them.
CPUs that handle subnormals in microcode take far longer per such operation; a profile
cannot see it, and the estimate of such a model is low by what the stalls cost.

This benchmark measures, in one run (ONNX Runtime, ``--threads``, medians of interleaved
rounds):

- a batched matrix product (192 products of 49x49 by 49x32, attention's shape in Swin-T's
  first stage) with 0%, 1%, 10% of its first operand subnormal;
- a softmax over the same shape, plain and with half of every row shifted by -100;
- torchvision's swin_t at 224x224 (random weights) and resnet18 at 96x96 as a control;

each in three settings (:data:`SETTINGS`): as ONNX Runtime runs it by default; with its
session option ``session.set_denormal_as_zero``, which it applies to the threads of its
thread pool; and with that option and flush-to-zero / denormals-are-zero set on the calling
thread as well (``torch.set_flush_denormal``), which runs the graph when there is one thread.

    python benchmarks/denormals.py                 # 1 thread
    python benchmarks/denormals.py --threads 2

Appends to benchmarks/results/denormals.csv (one row per case, setting and pass) and writes
denormals.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from onnx import TensorProto, helper

from autocompress.hardware import MeasureSettings
from autocompress.hardware.backends._base import time_callable
from autocompress.hardware.export import export_onnx
from autocompress.hardware.profile import describe_device
from autocompress.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEASURE = MeasureSettings(max_time_s=2.0, min_runs=20, round_runs=10)
#: Swin-T's first stage at 224x224: 64 windows x 3 heads of 49 tokens, 32 channels per head
BATCH, TOKENS, HEAD = 192, 49, 32
#: default; ONNX Runtime's session option; the option and the calling thread's FTZ/DAZ
SETTINGS = ("default", "session option", "flushed")


def _graph(node: onnx.NodeProto, inputs: dict[str, list[int]], out: list[int]) -> bytes:
    graph = helper.make_graph(
        [node], node.op_type,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                             ).SerializeToString()


def cases() -> list[tuple[str, bytes, dict[str, np.ndarray]]]:
    """(name, onnx, feeds) of every case."""
    rng = np.random.default_rng(0)
    attention = [BATCH, TOKENS, TOKENS]
    matmul = _graph(helper.make_node("MatMul", ["a", "b"], ["y"]),
                    {"a": attention, "b": [BATCH, TOKENS, HEAD]}, [BATCH, TOKENS, HEAD])
    values = rng.standard_normal((BATCH, TOKENS, HEAD)).astype(np.float32)
    out = []
    for share in (0.0, 0.01, 0.1):
        weights = rng.random(attention).astype(np.float32)
        weights[rng.random(attention) < share] = 1e-42  # subnormal in fp32
        out.append((f"batched MatMul, {share:.0%} of one operand subnormal", matmul,
                    {"a": weights, "b": values}))
    softmax = _graph(helper.make_node("Softmax", ["a"], ["y"], axis=-1), {"a": attention},
                     attention)
    for shift in (0.0, -100.0):
        logits = rng.standard_normal(attention).astype(np.float32)
        logits[..., : TOKENS // 2] += shift
        label = "plain" if shift == 0 else "half of every row shifted by -100 (a mask)"
        out.append((f"Softmax, {label}", softmax, {"a": logits}))
    for name, size in (("torchvision:swin_t", 224), ("torchvision:resnet18", 96)):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(name, num_classes=10, in_channels=3).eval()
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        out.append((f"{name.split(':')[1]} at {size}x{size}, random weights",
                    export_onnx(model, torch.zeros(1, 3, size, size)), {"x": x}))
    return out


def session(onnx_model: bytes, threads: int, option: bool) -> Callable[[dict], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if option:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    s = ort.InferenceSession(onnx_model, sess_options=options,
                             providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return lambda feeds: s.run(None, dict(zip(names, feeds.values(), strict=True)))


def measure(run: Callable[[dict], object], feeds: dict, threads: int, flush: bool) -> float:
    torch.set_flush_denormal(flush)  # the calling thread's FTZ/DAZ
    try:
        return time_callable(lambda: run(feeds), MEASURE, threads=threads).median_ms
    finally:
        torch.set_flush_denormal(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--passes", type=int, default=2, help="interleaved passes (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    if not torch.set_flush_denormal(True):
        raise SystemExit("this CPU has no flush-to-zero control that torch can set "
                         "(torch.set_flush_denormal needs x86 with SSE3): nothing to compare")
    torch.set_flush_denormal(False)
    built = cases()
    runs = {(name, setting): session(onnx_model, args.threads, setting != "default")
            for name, onnx_model, _ in built for setting in SETTINGS}
    rows = []
    for index in range(args.passes):
        for name, _, feeds in built:
            for setting in SETTINGS:
                ms = measure(runs[name, setting], feeds, args.threads, setting == "flushed")
                rows.append({"case": name, "setting": setting, "pass": index,
                             "median_ms": ms})
                print(f"pass {index}: {name}, {setting}: {ms:.3f} ms", flush=True)
    device = describe_device()
    frame = pd.DataFrame(rows).assign(
        threads=args.threads, machine=f"{device['cpu']}, {device['logical_cores']} cores",
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), commit=commit())
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "denormals.csv"
    if csv.exists():
        frame = pd.concat([pd.read_csv(csv), frame], ignore_index=True)
    frame.to_csv(csv, index=False)
    (args.out / "denormals.md").write_text(report(frame))
    print(report(frame))
    return 0


def report(frame: pd.DataFrame) -> str:
    lines = ["# Subnormal floats in ONNX Runtime", "",
             "Written by `python benchmarks/denormals.py` (its docstring says what is "
             "measured). Median of the passes of each invocation, in ms: by default, with "
             "ONNX Runtime's `session.set_denormal_as_zero`, and with that and "
             "flush-to-zero set on the calling thread as well (`flushed`).", ""]
    for (date, machine, threads), run in frame.groupby(["date", "machine", "threads"],
                                                       sort=False):
        table = (run.groupby(["case", "setting"], sort=False)["median_ms"].median()
                 .unstack("setting")[list(SETTINGS)])
        table["default / flushed"] = table["default"] / table["flushed"]
        lines += [f"## {machine}, {threads} thread(s), {date}", "",
                  table.reset_index().to_markdown(index=False, floatfmt=".3f"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
