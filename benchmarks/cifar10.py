"""CIFAR-10: autocompress against what a user would do instead, at 50% and 30% budgets.

On the CIFAR-10 training split shipped next to the checkout (../shared/data/cifar10, split
45,000 / 5,000 with seed 0; unpacked under ~/.cache/autocompress/data, never into the repo),
a resnet20 baseline is trained once (cached), its ONNX Runtime latency is measured, and at
each budget (a fraction of that latency) these approaches are compared:

  (a) autocompress search (multivariate TPE, trials x finetune-steps), then
      `pick --finetune-steps final-steps`: the picked model is trained again for the final
      finetune before export;
  (b) uniform channel pruning with Torch-Pruning at the largest keep ratio whose measured
      latency meets the budget (what a user would do by hand), finetuned for final-steps
      (the same final finetune as the picks) and, separately, for final-steps + trials x
      finetune-steps (the same total finetune steps as a search and its final finetune);
  (c) the same search as (a) with Optuna's RandomSampler and the same trial count.

Reported per approach: validation accuracy and measured latency of the exported model, the
accuracy the pick had in the search, and the hypervolume of the search's front (accuracy vs
latency, reference point: accuracy 0 at the budget; Optuna's own hypervolume). Results with
date and machine go to benchmarks/results/cifar10.*.

    python benchmarks/cifar10.py                 # the full run: 49 min on 2 cores from an
                                                 # empty cache, 31 min with the baseline cached
    python benchmarks/cifar10.py --smoke         # a few minutes, to check it works
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import logging
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
from optuna._hypervolume import compute_hypervolume

from autocompress.data import load_data
from autocompress.evaluation import TrainSettings, evaluate_accuracy, train
from autocompress.hardware import MeasureSettings, get_backend
from autocompress.hardware.backends import Backend
from autocompress.hardware.export import export_onnx
from autocompress.hardware.profile import describe_device
from autocompress.models import create_model
from autocompress.space import SearchSpace
from autocompress.study import SearchConfig, load_front, pick, search
from autocompress.study._cache import cache_dir
from autocompress.transforms import find_channel_groups, prune_channels, sparsifiable_layers

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10" / "train-jpeg.tar.gz"
SHA256 = "539a2defbe73f0e301e27c4ad6d0e5710c50a675f4bba542b3bc662ae55ed329"
PROFILE = ROOT / "hw_profiles" / "onnxruntime-cpu-t1.json"
MEASURE = MeasureSettings(max_time_s=2.0, min_runs=100, round_runs=50)
BASELINE_STEPS = 3000


def unpack(archive: Path, limit: int | None) -> Path:
    """The image folder (unpacked once into the cache); with ``limit``, a folder of links to
    the first ``limit`` images of each class."""
    target = cache_dir("data", "cifar10")
    train = target / "train"
    if not train.is_dir():
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SHA256:
            raise SystemExit(f"{archive}: sha256 {digest} is not the expected {SHA256}")
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    if limit is None:
        return train
    subset = target / f"train-first{limit}"
    if not subset.is_dir():
        for folder in sorted(p for p in train.iterdir() if p.is_dir()):
            (subset / folder.name).mkdir(parents=True, exist_ok=True)
            for image in sorted(folder.iterdir())[:limit]:
                (subset / folder.name / image.name).symlink_to(image)
    return subset


def baseline_checkpoint(spec: str, steps: int) -> tuple[Path, float, dict[str, object]]:
    """The trained baseline (cached), its validation accuracy, and how long training took
    when it was trained (kept beside the checkpoint, since a cached run does not train)."""
    data = load_data(spec, seed=0)
    settings = TrainSettings(steps=steps, batch_size=128, lr=0.1, warmup_steps=steps // 20)
    key = hashlib.sha256(json.dumps([spec, steps, data.fingerprint]).encode()).hexdigest()[:16]
    path = cache_dir("benchmarks") / f"cifar10-resnet20-{key}.pt"
    record = path.with_suffix(".json")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=data.num_classes, in_channels=3)
        cached = path.is_file()
        if cached:
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            start = time.perf_counter()
            train(model, data.train_x, data.train_y, settings)
            torch.save(model.state_dict(), path)
            seconds = time.perf_counter() - start
            record.write_text(json.dumps({
                "train_seconds": round(seconds), "steps": steps,
                "trained": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}))
            print(f"baseline trained in {seconds:.0f} s", file=sys.stderr)
    info = {**(json.loads(record.read_text()) if record.is_file() else {}), "cached": cached}
    return path, evaluate_accuracy(model, data.val_x, data.val_y), info


def baseline_note(trained: dict[str, object]) -> str:
    """How the baseline's training time enters the total: trained in this run, or cached
    (its training time was recorded when it was trained)."""
    if not isinstance(trained.get("train_seconds"), int | float):
        return ""
    seconds = float(trained["train_seconds"])  # type: ignore[arg-type]
    if not trained.get("cached"):
        return f", of which training the baseline {seconds:.0f} s"
    note = f"; {trained['note']}" if trained.get("note") else ""
    return (f" with the baseline cached; training it took {seconds:.0f} s when it was trained "
            f"({trained.get('trained', '?')}{note})")


def hypervolume(points: list[tuple[float, float]], budget_ms: float) -> float:
    """Area dominated by (accuracy, latency) points within budget, up to accuracy 0 and the
    budget: Optuna's hypervolume of (-accuracy, latency) with reference (0, budget)."""
    inside = [(-a, lat) for a, lat in points if lat <= budget_ms]
    if not inside:
        return 0.0
    return float(compute_hypervolume(np.array(inside), np.array([0.0, budget_ms])))


def uniform_pruning(spec: str, checkpoint: Path, budget_ms: float, backend: Backend
                    ) -> tuple[float, torch.nn.Module | None, float]:
    """The baseline pruned uniformly at the largest keep ratio (steps of 1/8) whose measured
    latency meets the budget: (ratio, untrained pruned model, measured ms)."""
    data = load_data(spec, seed=0)
    model = create_model("resnet20", num_classes=data.num_classes, in_channels=3)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    x = torch.zeros(data.input_shape)
    bound = SearchSpace.default().bind([g.name for g in find_channel_groups(model, x)],
                                       sparsifiable_layers(model))
    for ratio in np.arange(1.0, 0.0, -0.125):
        pruned = copy.deepcopy(model).eval()
        prune_channels(pruned, bound.uniform(float(ratio)), x)
        measured = backend.measure_many([export_onnx(pruned, x)], MEASURE, rounds=3)[0]
        if measured.median_ms <= budget_ms:
            return float(ratio), pruned, measured.median_ms
    return float("nan"), None, float("nan")


def finetuned_accuracy(spec: str, model: torch.nn.Module, steps: int) -> float:
    """Accuracy of a copy of ``model`` after ``steps`` finetune steps at the search's
    settings (batch 64, learning rate 0.01, cosine decay)."""
    data = load_data(spec, seed=0)
    model = copy.deepcopy(model)
    train(model, data.train_x, data.train_y, TrainSettings(steps=steps, batch_size=64, lr=0.01))
    return evaluate_accuracy(model, data.val_x, data.val_y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--final-steps", type=int, default=1500,
                        help="finetune of the exported model (pick --finetune-steps)")
    parser.add_argument("--baseline-steps", type=int, default=BASELINE_STEPS)
    parser.add_argument("--budgets", default="0.5,0.3", help="fractions of the baseline")
    parser.add_argument("--smoke", action="store_true",
                        help="200 images per class, 2 trials, 10 steps: checks it runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    limit = None
    if args.smoke:
        limit, args.trials, args.finetune_steps, args.baseline_steps = 200, 2, 10, 100
        args.final_steps = 20
    start = time.perf_counter()
    spec = f"imagefolder:{unpack(args.archive, limit)}"
    checkpoint, base_accuracy, trained = baseline_checkpoint(spec, args.baseline_steps)
    backend = get_backend("onnxruntime", threads=1)
    data = load_data(spec, seed=0)
    base_model = create_model("resnet20", num_classes=data.num_classes, in_channels=3)
    base_model.load_state_dict(torch.load(checkpoint, weights_only=True))
    base_ms = backend.measure_many([export_onnx(base_model, torch.zeros(data.input_shape))],
                                   MEASURE, rounds=3)[0].median_ms
    runs = cache_dir("benchmarks", "cifar10-runs" + ("-smoke" if args.smoke else ""))
    rows = []
    search_steps = args.trials * args.finetune_steps
    for fraction in (float(f) for f in args.budgets.split(",")):
        budget = fraction * base_ms
        for approach, sampler in (("autocompress (TPE)", "tpe"), ("random search", "random")):
            out = runs / f"{sampler}-{fraction}"
            search(SearchConfig(model="resnet20", data=spec, checkpoint=checkpoint,
                                latency_budget_ms=budget, trials=args.trials,
                                finetune_steps=args.finetune_steps, profile=PROFILE,
                                out=out, sampler=sampler))  # type: ignore[arg-type]
            front = load_front(out)
            result = pick(out, budget, out / "export", finetune_steps=args.final_steps,
                          checkpoint=checkpoint)
            refined = result.refined
            rows.append({
                "budget_fraction": fraction, "budget_ms": budget, "approach": approach,
                "finetune_steps": f"{args.trials}x{args.finetune_steps} + {args.final_steps}",
                "search_accuracy": result.member.accuracy if result.member else float("nan"),
                "accuracy": refined.deployed.accuracy if refined else float("nan"),
                "measured_latency_ms": result.measured_latency_ms,
                "hypervolume": hypervolume([(m.accuracy, m.predicted_latency_ms)
                                            for m in front], budget),
                "front_size": len(front)})
        ratio, pruned, measured = uniform_pruning(spec, checkpoint, budget, backend)
        for steps, what in ((args.final_steps, "same final finetune"),
                            (args.final_steps + search_steps, "same total steps")):
            accuracy = (finetuned_accuracy(spec, pruned, steps) if pruned is not None
                        else float("nan"))
            rows.append({"budget_fraction": fraction, "budget_ms": budget,
                         "approach": f"uniform pruning (keep {ratio:.3g}), {what}",
                         "finetune_steps": str(steps), "search_accuracy": float("nan"),
                         "accuracy": accuracy, "measured_latency_ms": measured,
                         "hypervolume": hypervolume([(accuracy, measured)], budget),
                         "front_size": 1})
    frame = pd.DataFrame(rows)
    name = "cifar10-smoke" if args.smoke else "cifar10"
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / f"{name}.csv", index=False)
    lines = ["# CIFAR-10 resnet20: autocompress vs uniform pruning vs random search", "",
             f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
             f"- machine: {describe_device()}",
             f"- baseline: accuracy {base_accuracy:.4f}, {base_ms:.3f} ms measured on "
             f"{backend.name} {backend.version()} (1 thread), {args.baseline_steps} steps",
             f"- searches: {args.trials} finetuned trials x {args.finetune_steps} steps, then "
             f"the pick finetuned {args.final_steps} steps from the baseline's weights "
             "(`pick --finetune-steps`); uniform pruning: the same final finetune, and the "
             "same total steps",
             f"- total time {time.perf_counter() - start:.0f} s{baseline_note(trained)}",
             "- accuracy and latency: the exported model, latency measured in this run; "
             "search_accuracy: the pick's accuracy after the search's short finetune; "
             "hypervolume: over each search front's accuracy and latency figures (the search's "
             "estimates, measured near the budget; uniform pruning: its one measured point)",
             "",
             "| " + " | ".join(frame.columns) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                for v in row) + " |" for row in frame.itertuples(index=False)]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
