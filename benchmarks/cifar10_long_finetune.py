"""CIFAR-10: how much of the picks' gap to the baseline is training length?

``benchmarks/cifar10.py`` gives every approach 2,400 training steps (3.4 epochs), which a
2-core CPU can afford for 4 approaches x 3 seeds x 2 cells. This script takes the model each
row of ``cifar10_search.csv`` exported (the search's and random search's picks, the uniform
pruning, the allocation), prunes the committed baseline to it again (the same candidate on the
same weights gives the same network), and trains every one of them for the same, much longer
schedule: ``--epochs`` epochs on a GPU, every approach and seed alike. The unpruned baseline
gets the same schedule too, so that what the schedule itself adds to a network is measured
beside what it gives back to a pruned one. Latencies are not measured again: the architecture
is the one the row measured on this CPU; training changes weights, not shapes.

Training here is a plain loop that keeps the data and the augmentation (random crop with 4 px
padding, horizontal flip) on the GPU: SGD with Nesterov momentum, weight decay 5e-4, one
epoch of linear warm-up, then cosine decay to zero. It is not the product's
:func:`autocompress.evaluation.train` (whose augmentation runs on the CPU so that a seed
gives the same batches on any device), and it needs nothing of the product but its models and
data loading, which is all a GPU machine without the search's dependencies has.

    python benchmarks/cifar10_long_finetune.py prepare --dir .gpu/long      # here (a minute)
    python benchmarks/cifar10_long_finetune.py train --dir .gpu/long \\
        --archive .gpu/train-jpeg.tar.gz --device cuda --out OUT            # on the GPU
    python benchmarks/cifar10_long_finetune.py report --rows OUT/rows.jsonl

The committed rows (``benchmarks/results/cifar10_long_finetune_rows.jsonl``) were trained on
one H200 with CUDA MPS on (``nvidia-cuda-mps-control -d``), ``--jobs 12 --epochs 30
--deadline-s 420`` (24 of 25 jobs in 7 minutes), then ``--epochs 50 --select
'baseline|0\\.5-seed\\d-(search|uniform)'`` (7 jobs in 3.5 minutes).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import datetime as dt
import json
import math
import multiprocessing
import os
import re
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SOURCE = RESULTS / "cifar10_search.csv"
#: the order jobs start in: what the acceptance asks about first
PRIORITY = [(0.5, "search"), (0.5, "uniform"), (None, "baseline"), (0.7, "search"),
            (0.7, "uniform"), (0.5, "random"), (0.7, "random"), (0.5, "allocation"),
            (0.7, "allocation")]


# ---------------------------------------------------------------------------------------
# prepare (on the machine that ran cifar10.py: needs its run folders and the search's stack)


def _pick_candidate(run_dir: Path, approach: str, picked_trial: float) -> Any:
    from autocompress.study import RunFolder, load_front
    from autocompress.study._pick import load_study

    front = load_front(run_dir)
    if approach in ("search", "random"):
        return front.records[int(picked_trial)].candidate
    seeded = "latency-aware allocation" if approach == "allocation" else "uniform keep ratio"
    study = load_study(RunFolder.open(run_dir))
    number = next(t.number for t in study.get_trials()
                  if str(t.user_attrs.get("seeded", "")).startswith(seeded))
    return front.records[number].candidate


def layer_shapes(module: nn.Module) -> dict[str, list[int]]:
    """What a pruned network's layers became: enough to build it again from the unpruned
    architecture (see :func:`rebuild`)."""
    shapes: dict[str, list[int]] = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv2d):
            shapes[name] = [layer.in_channels, layer.out_channels, layer.groups]
        elif isinstance(layer, nn.BatchNorm2d):
            shapes[name] = [layer.num_features]
        elif isinstance(layer, nn.Linear):
            shapes[name] = [layer.in_features, layer.out_features]
    return shapes


def rebuild(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """``model`` (the unpruned architecture) with each convolution, BatchNorm and linear
    layer replaced by one of the recorded shape; load the pruned ``state_dict`` after."""
    for name, shape in shapes.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, leaf)
        if isinstance(old, nn.Conv2d):
            new: nn.Module = nn.Conv2d(shape[0], shape[1], old.kernel_size, old.stride,
                                       old.padding, old.dilation, shape[2],
                                       old.bias is not None)
        elif isinstance(old, nn.BatchNorm2d):
            new = nn.BatchNorm2d(shape[0], old.eps, old.momentum)
        else:
            new = nn.Linear(shape[0], shape[1], old.bias is not None)
        setattr(parent, leaf, new)
    return model


def prepare(folder: Path, source: Path) -> None:
    import pandas as pd
    from cifar10 import ARCHIVE, checkpoint_of, unpack

    from autocompress.data import load_data
    from autocompress.evaluation import evaluate_accuracy
    from autocompress.models import create_model
    from autocompress.study._cache import cache_dir
    from autocompress.transforms import compress

    rows = pd.read_csv(source)
    rows = rows[~rows["smoke"].astype(bool)]
    folder.mkdir(parents=True, exist_ok=True)
    data = load_data(f"imagefolder:{unpack(ARCHIVE, None)}", seed=0)
    x = torch.zeros(data.input_shape)
    jobs = []
    for model_name in sorted(set(rows["model"])):
        checkpoint, record = checkpoint_of(model_name)
        baseline = create_model(model_name, num_classes=data.num_classes, in_channels=3)
        baseline.load_state_dict(torch.load(checkpoint, weights_only=True))
        entries = [(f"{model_name}-baseline", baseline, {
            "model": model_name, "budget_fraction": float("nan"), "approach": "baseline",
            "seed": 0, "short_accuracy": record["val_accuracy"],
            "measured_latency_ms": float("nan"), "budget_ms": float("nan")})]
        for row in rows[rows["model"] == model_name].itertuples():
            run_dir = cache_dir("benchmarks", "cifar10-runs",
                                f"{model_name}-{row.budget_fraction:g}-seed{row.seed}-"
                                f"{row.approach}")
            candidate = _pick_candidate(run_dir, row.approach, row.picked_trial)
            pruned = compress(baseline, candidate, x).module
            entries.append((f"{model_name}-{row.budget_fraction:g}-seed{row.seed}-"
                            f"{row.approach}", pruned, {
                                "model": model_name, "budget_fraction": row.budget_fraction,
                                "approach": row.approach, "seed": int(row.seed),
                                "short_accuracy": row.accuracy,
                                "measured_latency_ms": row.measured_latency_ms,
                                "budget_ms": row.budget_ms}))
        for key, module, info in entries:
            module.eval()
            info["pruned_accuracy"] = evaluate_accuracy(module, data.val_x, data.val_y)
            info["parameters"] = sum(p.numel() for p in module.parameters())
            torch.save(module.state_dict(), folder / f"{key}.pt")
            jobs.append({"key": key, "shapes": layer_shapes(module), **info})
            print(f"{key}: {info['parameters']} parameters, "
                  f"{info['pruned_accuracy']:.4f} right after pruning", flush=True)
    (folder / "jobs.json").write_text(json.dumps(jobs, indent=1))


# ---------------------------------------------------------------------------------------
# train (on a GPU machine: torch, the product's models and data loading)


def _augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of the original size from the zero-padded batch, random horizontal flip;
    drawn on the batch's device."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
                  for i in range(0, len(x), 1000))
    return correct / len(x)


def finetune(job: dict[str, Any], folder: str, data_file: str, settings: dict[str, Any],
             deadline: float) -> dict[str, Any]:
    """Train one job's network for the settings' epochs; a row for the results."""
    if time.time() > deadline:
        return {**_row(job, settings), "epochs_run": 0, "status": "not started: deadline"}
    torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    sys.path.insert(0, str(ROOT))
    from autocompress.models import create_model

    device = torch.device(settings["device"])
    data = torch.load(data_file, mmap=True)
    train_x, train_y = data["train_x"].to(device), data["train_y"].to(device)
    val_x, val_y = data["val_x"].to(device), data["val_y"].to(device)
    model = rebuild(create_model(job["model"], num_classes=10, in_channels=3), job["shapes"])
    model.load_state_dict(torch.load(Path(folder) / f"{job['key']}.pt", weights_only=True))
    model.to(device)
    start_accuracy = _accuracy(model, val_x, val_y)
    batch, epochs = settings["batch_size"], settings["epochs"]
    per_epoch = settings.get("steps_per_epoch") or len(train_x) // batch
    total = per_epoch * epochs
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9,
                                nesterov=True, weight_decay=settings["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (
        (s + 1) / per_epoch if s < per_epoch else
        0.5 * (1 + math.cos(math.pi * (s - per_epoch) / max(total - per_epoch, 1)))))
    generator = torch.Generator(device=device).manual_seed(1000 + job["seed"])
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train_x), generator=generator, device=device)
        losses = torch.zeros((), device=device)
        for i in range(per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(model(_augment(train_x[idx], generator)), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses += loss.detach()
        mean_loss = float(losses) / per_epoch
        if not math.isfinite(mean_loss):
            raise RuntimeError(f"{job['key']}: loss {mean_loss} in epoch {epoch + 1}")
        if time.time() > deadline:
            return {**_row(job, settings), "epochs_run": epoch + 1, "status": "deadline",
                    "accuracy": _accuracy(model, val_x, val_y),
                    "start_accuracy": start_accuracy,
                    "train_seconds": round(time.perf_counter() - start, 1)}
    return {**_row(job, settings), "epochs_run": epochs, "status": "done",
            "accuracy": _accuracy(model, val_x, val_y), "start_accuracy": start_accuracy,
            "final_loss": mean_loss, "train_seconds": round(time.perf_counter() - start, 1)}


def _row(job: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    keep = ("key", "model", "budget_fraction", "approach", "seed", "short_accuracy",
            "pruned_accuracy", "measured_latency_ms", "budget_ms", "parameters")
    return {**{k: job[k] for k in keep}, **{k: settings[k] for k in
                                             ("epochs", "batch_size", "lr", "weight_decay")}}


def _order(job: dict[str, Any]) -> tuple[int, int]:
    for rank, (fraction, approach) in enumerate(PRIORITY):
        if job["approach"] == approach and (
                fraction is None or math.isclose(job["budget_fraction"], fraction)):
            return rank, job["seed"]
    return len(PRIORITY), job["seed"]


def train_all(args: argparse.Namespace) -> None:
    from autocompress.data import load_data

    began = time.time()
    deadline = began + args.deadline_s
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    if not (work / "train").is_dir():
        with tarfile.open(args.archive) as tar:
            tar.extractall(work, filter="data")
    data = load_data(f"imagefolder:{work / 'train'}", seed=0)
    data_file = work / "cifar10-split0.pt"
    torch.save({"train_x": data.train_x, "train_y": data.train_y, "val_x": data.val_x,
                "val_y": data.val_y}, data_file)
    jobs = sorted(json.loads((args.dir / "jobs.json").read_text()), key=_order)
    if args.select:
        jobs = [job for job in jobs if re.search(args.select, job["key"])]
    if args.smoke:
        jobs = jobs[:2]
    settings = {"device": args.device, "epochs": args.epochs, "batch_size": args.batch_size,
                "lr": args.lr, "weight_decay": args.weight_decay,
                "steps_per_epoch": 3 if args.smoke else None,
                "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                "torch": torch.__version__}
    print(f"data ready in {time.time() - began:.0f} s: {len(data.train_x)} / "
          f"{len(data.val_x)}; {len(jobs)} jobs, {args.jobs} at a time", flush=True)
    rows_file = args.out / "rows.jsonl"
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        running = {pool.submit(finetune, job, str(args.dir), str(data_file), settings,
                               deadline): job for job in jobs}
        for done in futures.as_completed(running):
            job = running[done]
            try:
                row = done.result()
            except Exception as error:  # one job's failure must not lose the others'
                row = {**_row(job, settings), "status": f"failed: {error}"}
            row.update(gpu=settings["gpu"], torch=settings["torch"],
                       date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
            with rows_file.open("a") as out:
                out.write(json.dumps(row) + "\n")
            print(f"{time.time() - began:5.0f} s {row['key']}: {row.get('status')} "
                  f"{row.get('accuracy', float('nan')):.4f} "
                  f"({row.get('train_seconds', '?')} s)", flush=True)


# ---------------------------------------------------------------------------------------
# report


def report(rows_file: Path, csv: Path, md: Path) -> str:
    """Mean and standard deviation per schedule, cell and approach; the search against the
    uniform pruning and the baseline trained the same way."""
    import pandas as pd

    frame = pd.DataFrame([json.loads(line) for line in rows_file.read_text().splitlines()
                          if line.strip()])
    unfinished = frame[frame["status"] != "done"]
    frame = frame[frame["status"] == "done"].copy()
    frame["within_budget"] = ((frame["measured_latency_ms"] <= frame["budget_ms"])
                              .astype(float).where(frame["budget_ms"].notna()))
    frame.drop(columns=["key"]).to_csv(csv, index=False)
    keys = ["epochs", "model", "budget_fraction", "approach"]
    stats = (frame.groupby(keys, dropna=False)
             .agg(seeds=("seed", "nunique"), accuracy_mean=("accuracy", "mean"),
                  accuracy_std=("accuracy", "std"),
                  short_accuracy_mean=("short_accuracy", "mean"),
                  latency_ms=("measured_latency_ms", "mean"),
                  within_budget=("within_budget", "mean"))
             .reset_index())
    first = frame.iloc[0]
    lines = [
        "# CIFAR-10: the benchmark's picks with a long finetune", "",
        "Every model of `cifar10_search.csv` (each approach's exported model, per cell and "
        "seed) pruned again from the committed baseline and trained `epochs` epochs (batch "
        f"{first['batch_size']}, learning rate {first['lr']:g}, weight decay "
        f"{first['weight_decay']:g}, one epoch of warm-up then cosine decay, crop and flip) "
        f"on {first['gpu']} (torch {first['torch']}), every approach alike; the unpruned "
        "baseline trained the same way. `short_accuracy_mean` is the rows' accuracy after the "
        "benchmark's 2,400 steps of batch 64 (3.4 epochs). Latencies are the rows' own "
        "measurements on this CPU (ONNX Runtime, 1 thread): the architectures are theirs. "
        f"Rows: {csv.name}; regenerate with `python benchmarks/cifar10_long_finetune.py "
        "report --rows benchmarks/results/cifar10_long_finetune_rows.jsonl`.", "",
        stats.to_markdown(index=False, floatfmt=".4f"), ""]
    if len(unfinished):
        lines += ["Not finished (stopped at the run's deadline, left out above): "
                  + ", ".join(f"{r.key} ({r.epochs} epochs)" for r in unfinished.itertuples()),
                  ""]
    verdicts = []
    for (epochs, model, fraction), cell in stats.dropna(subset=["budget_fraction"]).groupby(
            ["epochs", "model", "budget_fraction"]):
        by = cell.set_index("approach")
        if {"search", "uniform"} <= set(by.index):
            gap = by.loc["search", "accuracy_mean"] - by.loc["uniform", "accuracy_mean"]
            noise = max(by.loc["search", "accuracy_std"], by.loc["uniform", "accuracy_std"])
            verdicts.append(f"- {epochs} epochs, {model} at {fraction:.0%}: search - uniform = "
                            f"{gap:+.4f} (larger std {noise:.4f}): " +
                            ("beyond the noise" if gap > noise else "not beyond the noise"
                             if gap > 0 else "uniform is ahead"))
            rows = frame[(frame["epochs"] == epochs) & (frame["model"] == model)
                         & (frame["budget_fraction"] == fraction)].sort_values("seed")
            budgets = "; ".join(
                f"{approach} " + "/".join(f"{b:.3f}" for b in
                                          rows.loc[rows["approach"] == approach, "budget_ms"])
                for approach in ("search", "uniform"))
            verdicts.append(f"  - budgets by seed (each benchmark run measured its baseline "
                            f"at its start), ms: {budgets}")
        base = frame[(frame["approach"] == "baseline") & (frame["model"] == model)
                     & (frame["epochs"] == epochs)]
        if "search" in by.index and len(base):
            pick = by.loc["search", "accuracy_mean"]
            committed = float(base["short_accuracy"].iloc[0])
            again = float(base["accuracy"].mean())
            verdicts.append(f"  - the search's pick {pick:.4f}: "
                            f"{100 * (committed - pick):.1f} points below the committed "
                            f"baseline ({committed:.4f}), {100 * (again - pick):.1f} below the "
                            f"baseline trained the same way ({again:.4f})")
    lines += ["## What it says", "", *verdicts, ""]
    text = "\n".join(lines)
    md.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="prune the rows' models from the baseline (here)")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--source", type=Path, default=SOURCE)
    t = sub.add_parser("train", help="train every prepared model the same way (GPU)")
    t.add_argument("--dir", type=Path, required=True)
    t.add_argument("--archive", type=Path, required=True)
    t.add_argument("--work", default="/tmp/cifar10-long")
    t.add_argument("--device", default="cuda")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--jobs", type=int, default=4, help="networks trained at once")
    t.add_argument("--deadline-s", type=float, default=1e9,
                   help="jobs still training after this many seconds stop after their epoch")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--smoke", action="store_true", help="2 jobs, epochs of 3 steps")
    t.add_argument("--select", help="only the jobs whose key this regular expression finds")
    r = sub.add_parser("report", help="write the .csv and .md from the rows")
    r.add_argument("--rows", type=Path, required=True)
    r.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    if args.command == "prepare":
        prepare(args.dir, args.source)
    elif args.command == "train":
        train_all(args)
    else:
        print(report(args.rows, args.out / "cifar10_long_finetune.csv",
                     args.out / "cifar10_long_finetune.md"))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
