"""The recipe behind ``benchmarks/checkpoints/``: a CIFAR-10 baseline worth compressing.

Trains a builtin model (resnet20 by default) from random weights on the CIFAR-10 training
split shipped next to the checkout, split 45,000 / 5,000 exactly as the benchmarks and
``autocompress search --data imagefolder:PATH`` split it (seed 0), normalized the same way
(the training split's per-channel mean and std), with the standard augmentation (random crop
with 4 px padding, horizontal flip; ``--augment`` adds cutout, e.g. ``crop=4,flip,cutout=16``),
optionally label smoothing (``--label-smoothing``), and SGD with Nesterov momentum, linear
warm-up and cosine decay, all through :func:`autocompress.evaluation.train`.

Writes ``benchmarks/checkpoints/cifar10-<model>.pt`` (a ``state_dict``) and a JSON record
beside it: the recipe, the sha256 of the checkpoint, the training time, the machine and the
measured validation accuracy. Every later benchmark run starts from that file.

    python benchmarks/train_baseline.py                      # resnet20, 40 epochs (~1 h on 2 cores)
    python benchmarks/train_baseline.py --epochs 1 --limit 200 --out /tmp/x   # a smoke run
    python benchmarks/train_baseline.py --epochs 80 --augment crop=4,flip,cutout=16 \
        --out /tmp/cutout                            # regularized (see results/baseline_recipes.md)
    python benchmarks/train_baseline.py --epochs 150 --augment crop=4,flip,cutout=16 --bf16 \
        --out /tmp/cutout150         # bfloat16 forward passes: 48 s an epoch on the 2-core VM

Label smoothing is offered but left out of the benchmarks' baselines: every finetune there is
distilled from the baseline's outputs (``--finetune-distill kl``), and a teacher trained with
smoothed labels distils worse (Müller, Kornblith and Hinton, 2019: it erases how its classes
resemble one another from its outputs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from autocompress.data import load_data
from autocompress.data._augment import Augmentation
from autocompress.evaluation import CrossEntropy, TrainSettings, evaluate_accuracy, train
from autocompress.models import create_model

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "benchmarks" / "checkpoints"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--augment", type=Augmentation.parse, default="standard",
                        help="standard (crop with 4 px padding and flip; default) or a list "
                             "such as crop=4,flip,cutout=16")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="mass of the target spread evenly over the classes (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="images per class (smoke runs)")
    parser.add_argument("--out", type=Path, default=CHECKPOINTS)
    parser.add_argument("--folder", type=Path, default=None,
                        help="the unpacked CIFAR-10 train/ folder (default: unpack the archive "
                             "beside the checkout into the cache, checking its sha256)")
    parser.add_argument("--device", default="cpu",
                        help="where to train (cuda on a GPU machine: minutes instead of hours; "
                             "augmentation draws stay on the CPU, so the batches are the same)")
    parser.add_argument("--bf16", action="store_true",
                        help="train under bfloat16 autocast with channels-last weights (weights, "
                             "gradients and optimizer state stay fp32; about 2x faster per step "
                             "on CPUs with AVX512_BF16 or AMX; evaluation stays fp32)")
    parser.add_argument("--width", type=float, default=None,
                        help="width multiplier (mobilenet_v2 only; default 1.0)")
    args = parser.parse_args()

    if args.folder is None:
        from cifar10 import ARCHIVE, unpack  # benchmarks/ is on sys.path when run as a script
        folder = unpack(ARCHIVE, args.limit)
    else:
        folder = args.folder
    data = load_data(f"imagefolder:{folder}", seed=0)
    steps_per_epoch = len(data.train_y) // args.batch_size
    settings = TrainSettings(
        steps=args.epochs * steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=steps_per_epoch, seed=0,
        augmentation=args.augment, precision="bf16" if args.bf16 else "fp32")
    torch.manual_seed(0)
    if args.width is not None:
        if args.model != "mobilenet_v2":
            parser.error("--width applies to mobilenet_v2 only")
        from autocompress.models.mobilenet_v2 import mobilenet_v2
        model = mobilenet_v2(num_classes=data.num_classes, in_channels=3, width_mult=args.width)
    else:
        model = create_model(args.model, num_classes=data.num_classes, in_channels=3)
    model.to(args.device)
    if args.bf16:
        model.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()

    def progress(step: int, loss: float) -> None:
        if (step + 1) % steps_per_epoch == 0:
            epoch = (step + 1) // steps_per_epoch
            seconds = time.perf_counter() - start
            line = f"epoch {epoch}/{args.epochs} loss {loss:.3f} {seconds:.0f} s"
            if epoch % 5 == 0:
                line += f" val {evaluate_accuracy(model, data.val_x, data.val_y):.4f}"
                model.train()
            print(line, flush=True)

    train(model, data.train_x, data.train_y, settings,
          loss=CrossEntropy(label_smoothing=args.label_smoothing), on_step=progress)
    seconds = time.perf_counter() - start
    accuracy = evaluate_accuracy(model, data.val_x, data.val_y)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cifar10-{args.model}.pt"
    torch.save({k: v.cpu().contiguous() for k, v in model.state_dict().items()}, path)
    record = {
        "model": args.model, "checkpoint": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "data": "CIFAR-10 training split (../shared/data/cifar10), imagefolder seed 0",
        "train_images": len(data.train_y), "val_images": len(data.val_y),
        "data_fingerprint_note": "load_data('imagefolder:<unpacked train/>', seed=0)",
        "recipe": {"epochs": args.epochs, "steps": settings.steps,
                   "batch_size": args.batch_size, "lr": args.lr,
                   "weight_decay": args.weight_decay, "momentum": settings.momentum,
                   "nesterov": True, "warmup_steps": settings.warmup_steps,
                   "schedule": "linear warm-up, cosine to zero",
                   "augmentation": settings.augmentation.describe(),
                   "label_smoothing": args.label_smoothing, "seed": 0,
                   "precision": "bfloat16 autocast, channels-last" if args.bf16 else "fp32"},
        "val_accuracy": round(accuracy, 4), "train_seconds": round(seconds),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                   else "cpu"),
        "width_mult": args.width,
        "machine": describe_machine(),
        "trained": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def describe_machine() -> str:
    """The CPU model and core count, e.g. ``AMD EPYC 7B13, 2 cores``."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
