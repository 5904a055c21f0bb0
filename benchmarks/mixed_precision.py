"""Mixed precision on resnet20 (mnist or CIFAR-10): a search with
search_spaces/mixed_precision.yaml run the way a user runs it (the CLI), then what it found,
measured in the same run:

- the front, with each member's kind and precision (fp32, int8 or mixed);
- the most accurate all-int8 candidate the search finetuned: ONNX Runtime latency of its
  deployed int8 model against the fp32 export of the same pruned structure (measured
  interleaved), file size ratio, and its ORT-measured accuracy against the fp32 finetuned
  model it was quantized from (torch, before quantization);
- ``autocompress pick`` at the budget: the exported model's quantized operators and its
  measured latency.

The budget is a fraction of the baseline's latency measured here (default 0.7: int8 pays
off on this CPU for wide layers, so the budget leaves room for lightly pruned int8 models).
CIFAR-10 uses the baseline and data of benchmarks/cifar10.py (trained there once, cached).

    python benchmarks/mixed_precision.py --data cifar10     # about 10 min on 2 cores
    python benchmarks/mixed_precision.py --data mnist       # about 4 min

Writes benchmarks/results/mixed_precision_<data>.csv (the front) and .md.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import onnx
import optuna
import pandas as pd
import torch

from autocompress.cli import main as cli
from autocompress.data import load_data
from autocompress.hardware import MeasureSettings, get_backend
from autocompress.hardware.export import export_onnx
from autocompress.hardware.profile import describe_device
from autocompress.models import resolve_model
from autocompress.study import FrontMember, RunFolder, load_front
from autocompress.study._baseline import prepare_baseline
from autocompress.study._cache import cache_dir
from autocompress.transforms import compress

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "mixed_precision.yaml"
MEASURE = MeasureSettings(max_time_s=2.0, min_runs=100, round_runs=50)
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "QGemm")


def run_cli(*argv: str) -> None:
    print("$ autocompress " + " ".join(argv), file=sys.stderr)
    code = cli.main(list(argv))
    if code != 0:
        raise SystemExit(f"autocompress {argv[0]} exited with {code}")


def finetuned_trials(run: Path) -> list[tuple[FrontMember, str]]:
    """Every finetuned trial (as a front member would be), with how it was chosen."""
    folder = RunFolder.open(run)
    study = optuna.load_study(study_name=folder.run.study, storage=folder.storage_url())
    found = []
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        member = FrontMember.from_trial(t)
        if member is not None and member.record.finetuned:
            found.append((member, str(t.user_attrs.get("seeded", "sampled"))))
    return found


def op_counts(model_bytes: bytes) -> dict[str, int]:
    graph = onnx.load_from_string(model_bytes).graph
    return dict(collections.Counter(n.op_type for n in graph.node if n.op_type in QUANTIZED_OPS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("mnist", "cifar10"), default="cifar10")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--budget-fraction", type=float, default=0.7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    # the budget: a fraction of the baseline as it runs here (the baseline the search
    # itself trains and caches on first use)
    spec, checkpoint, extra = "mnist", None, []
    if args.data == "cifar10":
        import cifar10  # benchmarks/cifar10.py, beside this script

        spec = f"imagefolder:{cifar10.unpack(cifar10.ARCHIVE, None)}"
        checkpoint = cifar10.baseline_checkpoint(spec, cifar10.BASELINE_STEPS)[0]
        extra = ["--data", spec, "--checkpoint", str(checkpoint)]
    data = load_data(spec, seed=0)
    baseline = prepare_baseline(resolve_model("resnet20"), data, checkpoint=checkpoint)
    x = torch.zeros(data.input_shape)
    backend = get_backend("onnxruntime", threads=1)
    base_onnx = export_onnx(baseline.module, x)
    base_ms = backend.measure_many([base_onnx], MEASURE, rounds=3)[0].median_ms
    budget = args.budget_fraction * base_ms

    run = cache_dir("benchmarks") / f"mixed-precision-{args.data}"
    shutil.rmtree(run, ignore_errors=True)
    run_cli("search", "--space", str(SPACE), "--latency-budget-ms", f"{budget:.4f}",
            "--trials", str(args.trials), "--finetune-steps", str(args.finetune_steps),
            "--out", str(run), *extra)
    run_cli("pick", str(run), "--latency-budget-ms", f"{budget:.4f}",
            "--export", str(run / "export"))

    front = load_front(run)
    front_frame = pd.DataFrame([{**m.row(), "accuracy_source": m.accuracy_source}
                                for m in front.members])
    trials = finetuned_trials(run)
    kinds = collections.Counter(m.precision for m, _ in trials)

    # the most accurate all-int8 candidate against the fp32 export of its structure
    int8, seeded = max(((m, how) for m, how in trials if m.precision == "int8"),
                       key=lambda pair: pair[0].accuracy, default=(None, ""))
    int8_lines = ["- no all-int8 candidate was finetuned (none fit the budget)"]
    if int8 is not None:
        candidate = int8.candidate
        fp32_onnx = compress(baseline.module, candidate, x).structure_onnx()
        int8_onnx = (run / str(int8.artifact)).read_bytes()
        fp32_m, int8_m, base_m = backend.measure_many([fp32_onnx, int8_onnx, base_onnx],
                                                      MEASURE, rounds=5)
        on_front = any(m.trial == int8.trial for m in front.members)
        float_accuracy = int8.record.float_accuracy or float("nan")
        int8_lines = [
            f"- trial {int8.trial} ({'on the front' if on_front else 'not on the front'}; "
            f"{seeded}), method {candidate.quantization}, channel keep ratios "
            f"{sorted(set(candidate.channel_keep.values()))}",
            f"- ORT accuracy {int8.accuracy:.4f} vs the fp32 finetuned model "
            f"{float_accuracy:.4f} (difference "
            f"{100 * (int8.accuracy - float_accuracy):+.2f} points)",
            f"- measured latency, same structure: int8 {int8_m.median_ms:.3f} ms, fp32 "
            f"{fp32_m.median_ms:.3f} ms: ratio int8/fp32 "
            f"{int8_m.median_ms / fp32_m.median_ms:.2f} (unpruned fp32 baseline "
            f"{base_m.median_ms:.3f} ms in the same run)",
            f"- ONNX file size: int8 {len(int8_onnx):,} B, fp32 {len(fp32_onnx):,} B: ratio "
            f"{len(int8_onnx) / len(fp32_onnx):.2f}",
        ]

    picked = json.loads((run / "export" / "candidate.json").read_text())
    exported = (run / "export" / "model.onnx").read_bytes()
    ops = op_counts(exported)
    measured = picked.get("measured_latency_ms")
    pick_lines = [
        f"- picked trial {picked['trial']}: {picked['precision']}, accuracy "
        f"{picked['accuracy']:.4f} ({picked.get('accuracy_source', '?')}), measured "
        f"{measured:.3f} ms, budget {budget:.3f} ms: "
        f"{'within' if measured is not None and measured <= budget else 'OVER'} budget",
        f"- quantized operators in the exported model: {ops or 'none'}",
    ]

    args.out.mkdir(parents=True, exist_ok=True)
    name = f"mixed_precision_{args.data}"
    front_frame.to_csv(args.out / f"{name}.csv", index=False)
    columns = ["trial", "precision", "accuracy", "accuracy_source", "predicted_latency_ms",
               "latency_source", "size_bytes", "sparsity"]
    table = front_frame[[c for c in columns if c in front_frame.columns]]
    lines = [
        f"# Mixed precision: resnet20 on {args.data}, search_spaces/mixed_precision.yaml", "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {describe_device()}",
        f"- baseline: accuracy {baseline.accuracy:.4f}, {base_ms:.3f} ms measured on "
        f"{backend.name} {backend.version()} (1 thread); budget {args.budget_fraction:g} x "
        f"= {budget:.3f} ms",
        f"- {args.trials} finetuned trials x {args.finetune_steps} steps; finetuned trials by "
        f"precision: {dict(kinds)}",
        f"- total time {time.perf_counter() - start:.0f} s", "",
        "## Front", "",
        "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns),
        *("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row)
          + " |" for row in table.itertuples(index=False)),
        "", "## The most accurate all-int8 candidate", "", *int8_lines,
        "", "## Pick at the budget", "", *pick_lines,
    ]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
