"""Finetunes in bf16 against fp32: accuracy at equal steps and the time a step takes.

Prunes the committed CIFAR-10 baseline uniformly (every channel group kept at ``--keep``,
L2 importance, channels rounded to 8, as the search's uniform seed is) and finetunes the
pruned network for ``--steps`` mini-batches the way the CIFAR-10 benchmark's searches do
(batch 64, learning rate 0.01, crop-and-flip augmentation, distilled from the baseline's
outputs: ``--finetune-distill kl``), once with ``TrainSettings(precision="fp32")`` and once
with ``"bf16"`` (the forward passes under bfloat16 autocast), for each seed. The two
precisions of a seed run one after the other, so their time ratio is measured in one run on
one machine; the accuracies are on the 5,000 validation images, in fp32.

    python benchmarks/train_precision.py                 # seeds 0-2, 600 steps (~20 min)
    python benchmarks/train_precision.py --smoke         # 100 images per class, 10 steps

Rows are appended to ``results/train_precision.csv``; ``results/train_precision.md`` is
rewritten from it: mean and standard deviation per precision, and bf16's time per step over
fp32's per seed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import commit, machine  # noqa: E402
from cifar10 import ARCHIVE, CHECKPOINTS, RESULTS, load_baseline  # noqa: E402

from autocompress.evaluation import TrainSettings, evaluate_accuracy  # noqa: E402
from autocompress.settings import STANDARD_AUGMENTATION  # noqa: E402
from autocompress.space import Candidate  # noqa: E402
from autocompress.study._config import finetune_recovery  # noqa: E402
from autocompress.transforms import compress, find_channel_groups  # noqa: E402

_logger = logging.getLogger("train_precision")


def finetune(args: argparse.Namespace, seed: int, precision: str) -> dict[str, Any]:
    """One pruned copy of the baseline finetuned in ``precision``: its accuracy and time."""
    data, baseline, record = load_baseline(args.archive, args.smoke, args.model, args.checkpoints)
    x = torch.zeros(data.input_shape)
    groups = [g.name for g in find_channel_groups(baseline, x)]
    candidate = Candidate(channel_keep={g: args.keep for g in groups}, round_to=8,
                          min_channels=8)
    compressed = compress(baseline, candidate, x, num_classes=data.num_classes)
    settings = TrainSettings(steps=args.steps, batch_size=64, lr=0.01, seed=seed,
                             augmentation=STANDARD_AUGMENTATION, precision=precision)
    start = time.perf_counter()
    compressed.train(data, settings, recovery=finetune_recovery("kl"))
    seconds = time.perf_counter() - start
    return {"model": args.model, "keep": args.keep, "seed": seed, "precision": precision,
            "steps": args.steps, "accuracy": evaluate_accuracy(compressed.module, data.val),
            "seconds": round(seconds, 1), "seconds_per_step": seconds / args.steps,
            "baseline": record["sha256"][:12], "baseline_accuracy": record["val_accuracy"],
            "threads": torch.get_num_threads(), "smoke": args.smoke,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": commit(), "machine": machine()}


def report(csv: Path, md: Path) -> str:
    frame = pd.read_csv(csv)
    frame = frame[~frame["smoke"].astype(bool)]
    keys = ["model", "keep", "steps", "baseline", "machine"]
    stats = (frame.groupby([*keys, "precision"])
             .agg(seeds=("seed", "nunique"), accuracy_mean=("accuracy", "mean"),
                  accuracy_std=("accuracy", "std"),
                  seconds_per_step=("seconds_per_step", "mean"))
             .reset_index())
    lines = ["# Finetunes in bf16 against fp32", "",
             f"Rows: {csv.name} (one per seed and precision). Regenerate with "
             "`python benchmarks/train_precision.py --report`.", "",
             stats.to_markdown(index=False, floatfmt=".4f"), "", "## bf16 against fp32", ""]
    for cell_keys, cell in frame.groupby(keys):
        wide = cell.pivot_table(index="seed", columns="precision",
                                values=["accuracy", "seconds_per_step"])
        if "bf16" not in wide["accuracy"] or "fp32" not in wide["accuracy"]:
            continue
        gap = wide["accuracy"]["bf16"] - wide["accuracy"]["fp32"]
        ratio = wide["seconds_per_step"]["bf16"] / wide["seconds_per_step"]["fp32"]
        model, keep, steps, base, where = cell_keys
        lines.append(f"- {model} kept at {keep:g}, {steps} steps, baseline {base}, {where}: "
                     f"bf16 - fp32 accuracy per seed {', '.join(f'{g:+.4f}' for g in gap)} "
                     f"(mean {gap.mean():+.4f}); bf16 / fp32 seconds per step "
                     f"{', '.join(f'{r:.2f}' for r in ratio)}")
    text = "\n".join(lines) + "\n"
    md.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--checkpoints", type=Path, default=CHECKPOINTS)
    parser.add_argument("--report", action="store_true", help="only write the .md")
    parser.add_argument("--smoke", action="store_true",
                        help="100 images per class, 10 steps: checks that it runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    csv, md = args.out / "train_precision.csv", args.out / "train_precision.md"
    if args.report:
        print(report(csv, md))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.smoke:
        args.steps, csv = 10, args.out / "train_precision_smoke.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in args.seeds.split(",") if s):
        for precision in ("fp32", "bf16"):
            row = finetune(args, seed, precision)
            _logger.info("seed %d %s: accuracy %.4f, %.3f s a step", seed, precision,
                         row["accuracy"], row["seconds_per_step"])
            frame = pd.DataFrame([row])
            if csv.is_file():       # appended row by row: a killed run keeps what it did
                frame = pd.concat([pd.read_csv(csv), frame], ignore_index=True)
            frame.to_csv(csv, index=False)
    if not args.smoke:
        print(report(csv, md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
