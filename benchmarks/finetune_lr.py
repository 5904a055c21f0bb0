"""The final finetune of a benchmark run's pick, again, at other learning rates.

The CIFAR-10 benchmark (``cifar10.py``) trains the search's pick the search's way, with the
product's finetune learning rate. This script takes one of its run folders and a front
member, rebuilds the member from the committed baseline and trains it ``STEPS`` steps at
each learning rate given, everything else as the run trained it (schedule, augmentation,
distillation, seed). It measures no latency, but it takes the CPU: run it when nothing
measures. One row per learning rate is appended to ``benchmarks/results/finetune_lr.csv``::

    python benchmarks/finetune_lr.py RUN_FOLDER 1 2100 0.005 0.03

(``RUN_FOLDER``: under ``~/.cache/autocompress/benchmarks/cifar10-runs/``.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from autocompress.study import RunFolder, load_front
from autocompress.study._refine import finetune_member

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import commit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "benchmarks" / "checkpoints" / "cifar10-resnet20.pt"
RESULTS = ROOT / "benchmarks" / "results" / "finetune_lr.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of benchmarks/cifar10.py")
    parser.add_argument("trial", type=int, help="the front member (trial number) to train")
    parser.add_argument("steps", type=int)
    parser.add_argument("lr", type=float, nargs="+")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    folder = RunFolder.open(args.run)
    member = next((m for m in load_front(args.run).members if m.trial == args.trial), None)
    if member is None:
        raise SystemExit(f"trial {args.trial} is not on the front of {args.run}")
    info = folder.run
    for lr in args.lr:
        start = time.perf_counter()
        at_lr = RunFolder(folder.path, info=replace(
            info, identity=replace(info.identity, finetune_lr=lr)))
        refined = finetune_member(at_lr, member, args.steps, checkpoint=args.checkpoint)
        row = {"run": args.run.name, "trial": args.trial, "steps": refined.steps, "lr": lr,
               "run_lr": info.identity.finetune_lr,
               "finetune_distill": info.identity.finetune_distill,
               "accuracy": refined.deployed.accuracy,
               "seconds": round(time.perf_counter() - start),
               "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "commit": commit(), "machine": machine()}
        print(row, flush=True)
        frame = pd.DataFrame([row])
        if args.out.is_file():
            frame = pd.concat([pd.read_csv(args.out), frame], ignore_index=True)
        frame.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
