"""Streamed image folders: peak memory of a search on 100,000 images, and training speed of
the in-memory and the streamed path on a CIFAR-sized folder.

(a) **Memory.** Generates ``--n`` (default 100,000) 64 x 64 RGB PNGs of 10 classes outside the
    repository (``~/.cache/autocompress/data/`` or ``--dir``; kept for later runs), then runs a
    short ``autocompress search`` on them in a child process with ``--data-cache stream``
    (resnet20 from a randomly initialised checkpoint, so no baseline is trained; latencies
    from the synthetic backend, so nothing is timed; few trials, short finetunes, small
    screening). While it runs, the memory of the child and of every process it starts (the
    decoding workers) is read from ``/proc`` every 0.2 s: the peak of their summed PSS
    (proportional set size: shared pages counted once) and the largest single RSS
    (``ru_maxrss`` of the child, from ``wait4``). Acceptance: under 4 GB. Beside it, what the
    in-memory loaders need for the same images: the uint8 pixels (``--data-cache memory``)
    and the float32 tensors the loader before streaming held (N x 3 x 64 x 64 x 4 bytes).
    ``--also-memory`` runs the same search with ``--data-cache memory`` for comparison.

(b) **Speed.** On a CIFAR-sized folder (``--speed-n`` 32 x 32 PNGs, default 50,000, or
    ``--speed-dir`` such as the unpacked CIFAR-10 JPEG folder), resnet20 is trained in one
    process on both paths, interleaved: ``--rounds`` rounds of one ``train()`` call of
    ``--block-steps`` steps per path (a search's finetune is one such call), batch 64, random
    crop and flip, as the search finetunes. Reported: training steps per second per path
    (median over rounds) and their ratio.

Results are printed and written to ``benchmarks/results/streamed_data.md``.

    python benchmarks/streamed_data.py                         # the acceptance run (long)
    python benchmarks/streamed_data.py --n 2000 --speed-n 2000 --rounds 2 --block-steps 10 \\
        --also-memory                                          # smoke: a few minutes
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LIMIT_BYTES = 4 * 10**9
_MARKER = "autocompress-synthetic.json"


# ------------------------------------------------------------------------------ the images

def _write_chunk(args: tuple[str, int, int, int, int, int]) -> None:
    """Images ``start .. stop - 1`` of a synthetic folder (each class a hue of its own, a
    random colour shift and pixel noise per image, seeded by the image's index)."""
    from PIL import Image

    root, start, stop, size, classes, seed = args
    angles = [2 * math.pi * k / classes for k in range(classes)]
    centers = np.array([[128 + 45 * math.cos(a - shift) for shift in (0, 2.1, 4.2)]
                        for a in angles])
    for index in range(start, stop):
        rng = np.random.default_rng([seed, index])
        k = index % classes
        color = centers[k] + rng.normal(0.0, 22.0, size=3)
        pixels = color + rng.normal(0.0, 30.0, size=(size, size, 3))
        image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(Path(root) / f"class{k}" / f"{index:07d}.png")


def image_folder(root: Path, n: int, size: int, classes: int, seed: int, jobs: int) -> Path:
    """``root`` holding ``n`` synthetic ``size`` x ``size`` PNGs, written unless a complete
    folder of the same settings is there."""
    settings = {"n": n, "size": size, "classes": classes, "seed": seed}
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f"using {root} ({n:,} images of {size}x{size})", flush=True)
        return root
    for k in range(classes):
        (root / f"class{k}").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    step = 2000
    chunks = [(str(root), s, min(s + step, n), size, classes, seed) for s in range(0, n, step)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for done, _ in enumerate(pool.map(_write_chunk, chunks), 1):
            print(f"\r  writing {root}: {min(done * step, n):,} / {n:,} images", end="",
                  flush=True)
    marker.write_text(json.dumps(settings))
    print(f"\n  {n:,} images in {time.perf_counter() - started:.0f} s", flush=True)
    return root


# ------------------------------------------------------------------------------ (a) memory

def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                frontier.append(child)
    return found


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class SearchMemory:
    cache: str
    seconds: float
    peak_tree_pss_bytes: int
    peak_max_rss_bytes: int
    processes: int


def run_search(folder: Path, cache: str, args: argparse.Namespace, work: Path) -> SearchMemory:
    """The search on ``folder`` in a child process, its memory watched from here."""
    import torch

    from autocompress.hardware import get_backend
    from autocompress.hardware.profiler import profile_backend
    from autocompress.models import create_model

    profile = work / "synthetic.json"
    if not profile.exists():
        profile_backend(get_backend("synthetic"), profile, rounds=1, precisions=("fp32",))
    checkpoint = work / "resnet20-random.pt"
    if not checkpoint.exists():
        torch.manual_seed(0)
        torch.save(create_model("resnet20", num_classes=args.classes,
                                in_channels=3).state_dict(), checkpoint)
    out = work / f"run-{cache}"
    command = [sys.executable, "-m", "autocompress.cli.main", "search",
               "--data", f"imagefolder:{folder}", "--data-cache", cache,
               "--data-workers", str(args.workers), "--model", "resnet20",
               "--checkpoint", str(checkpoint), "--profile", str(profile),
               "--trials", str(args.trials), "--finetune-steps", str(args.finetune_steps),
               "--screen", str(args.screen), "--no-allocation", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(f"  search, --data-cache {cache}: {' '.join(command[3:])}", flush=True)
    log = work / f"search-{cache}.log"
    started = time.perf_counter()
    with log.open("w") as sink:
        child = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    peak, seen = 0, set()
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        pids = _tree(child.pid)
        seen.update(pids)
        peak = max(peak, sum(_pss_bytes(p) for p in pids))
        time.sleep(0.2)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-30:]))
        raise SystemExit(f"the search exited with {child.returncode} (log: {log})")
    # wait4's ru_maxrss: the largest RSS of the child or of any process it waited for (kB)
    return SearchMemory(cache, seconds, peak, usage.ru_maxrss * 1024, len(seen))


# ------------------------------------------------------------------------------ (b) speed

@dataclass
class Speed:
    path: str
    steps_per_s: list[float]
    load_s: float

    @property
    def median(self) -> float:
        return statistics.median(self.steps_per_s)


def compare_speed(folder: Path, args: argparse.Namespace) -> list[Speed]:
    """Training steps per second on both paths, interleaved, in this process."""
    import torch

    from autocompress.data import load_data
    from autocompress.evaluation import STANDARD_AUGMENTATION, TrainSettings, train
    from autocompress.models import create_model

    torch.set_num_threads(args.threads)
    spec = f"imagefolder:{folder}"
    data, speeds = {}, {}
    for cache in ("memory", "stream"):
        started = time.perf_counter()
        data[cache] = load_data(spec, seed=0, cache=cache, workers=args.workers)
        speeds[cache] = Speed(cache, [], time.perf_counter() - started)
    if data["memory"].record != data["stream"].record:
        raise SystemExit("the two paths prepared the data differently")
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=data["memory"].num_classes, in_channels=3)
    for round_ in range(args.rounds):
        order = ("memory", "stream") if round_ % 2 == 0 else ("stream", "memory")
        for cache in order:
            settings = TrainSettings(steps=args.block_steps, batch_size=64, lr=0.01,
                                     seed=round_, augmentation=STANDARD_AUGMENTATION)
            started = time.perf_counter()
            train(model, data[cache].train, None, settings)
            speeds[cache].steps_per_s.append(args.block_steps / (time.perf_counter() - started))
        print(f"  round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{c} {speeds[c].steps_per_s[-1]:.2f} steps/s" for c in ("memory", "stream")),
            flush=True)
    return [speeds["memory"], speeds["stream"]]


# ------------------------------------------------------------------------------ report

def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def report(args: argparse.Namespace, folder: Path, searches: list[SearchMemory],
           speed_folder: Path | None, speeds: list[Speed]) -> str:
    n, size = args.n, args.size
    uint8 = n * 3 * size * size
    lines = [
        "# Streamed image folders: memory and speed",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/streamed_data.py` "
        f"on {os.cpu_count()} CPU(s); torch threads {args.threads}, decoding workers "
        f"{args.workers}." + ("" if n >= 100_000 else
                              f" **Smoke run ({n:,} images): not the acceptance run "
                              "(100,000 images).**"),
        "",
    ]
    if searches:
        lines += [
            f"## (a) Peak memory of a search on {n:,} generated {size}x{size} images",
            "",
            f"`autocompress search --data imagefolder:{folder.name} --trials {args.trials} "
            f"--finetune-steps {args.finetune_steps} --screen {args.screen} "
            "--no-allocation` (resnet20 from a random checkpoint, synthetic-backend profile), "
            "its memory and its workers' read from /proc every 0.2 s. Limit: 4 GB.",
            "",
            "| --data-cache | peak memory (PSS, all processes) | largest process (RSS) | "
            "processes seen | wall time | under 4 GB |",
            "|---|---|---|---|---|---|",
        ]
        for s in searches:
            ok = "yes" if max(s.peak_tree_pss_bytes, s.peak_max_rss_bytes) < LIMIT_BYTES \
                else "**no**"
            lines.append(f"| {s.cache} | {_gb(s.peak_tree_pss_bytes)} | "
                         f"{_gb(s.peak_max_rss_bytes)} | {s.processes} | {s.seconds:.0f} s | "
                         f"{ok} |")
        lines += [
            "",
            "What holding the same images in memory takes (the pixels alone):",
            "",
            "| held in memory | bytes |",
            "|---|---|",
            f"| uint8 pixels (`--data-cache memory`), N x 3 x {size} x {size} | {_gb(uint8)} |",
            f"| float32 tensors (the loader before streaming), N x 3 x {size} x {size} x 4 | "
            f"{_gb(uint8 * 4)} |",
            "",
        ]
    if speeds:
        mem, stream = speeds
        lines += [
            f"## (b) Training speed on a CIFAR-sized folder ({speed_folder})",
            "",
            f"resnet20, batch 64, random crop and flip, {args.rounds} interleaved rounds of "
            f"{args.block_steps} steps per path in one process (median steps/s).",
            "",
            "| path | steps/s (median) | per round | loading |",
            "|---|---|---|---|",
        ]
        for s in speeds:
            rounds = ", ".join(f"{v:.2f}" for v in s.steps_per_s)
            lines.append(f"| {s.path} | {s.median:.2f} | {rounds} | {s.load_s:.1f} s |")
        lines += ["", f"Streamed / in memory: {stream.median / mem.median:.2f}x "
                      "(acceptance: no more than 10% slower where the data fits in memory, "
                      "which `--data-cache auto` keeps in memory anyway).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="images of the memory run")
    parser.add_argument("--size", type=int, default=64, help="their side in pixels")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dir", type=Path, help="where the images go (default: the cache)")
    parser.add_argument("--speed-n", type=int, default=50_000,
                        help="32x32 images of the speed comparison (0: skip it)")
    parser.add_argument("--speed-dir", type=Path,
                        help="an existing folder for the speed comparison instead")
    parser.add_argument("--skip-memory", action="store_true", help="only the speed comparison")
    parser.add_argument("--also-memory", action="store_true",
                        help="also run the search with --data-cache memory")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--finetune-steps", type=int, default=30)
    parser.add_argument("--screen", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="decoding worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block-steps", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes writing images")
    parser.add_argument("--out", type=Path, default=RESULTS / "streamed_data.md")
    args = parser.parse_args(argv)

    from autocompress.study._cache import cache_dir

    searches: list[SearchMemory] = []
    folder = args.dir or cache_dir("data", f"synthetic-{args.n}x{args.size}px-{args.classes}c")
    if not args.skip_memory:
        print(f"(a) memory: {args.n:,} images of {args.size}x{args.size}", flush=True)
        image_folder(folder, args.n, args.size, args.classes, seed=0, jobs=args.jobs)
        with tempfile.TemporaryDirectory(prefix="streamed-data-") as tmp:
            caches = ["stream", "memory"] if args.also_memory else ["stream"]
            for cache in caches:
                result = run_search(folder, cache, args, Path(tmp))
                searches.append(result)
                print(f"  --data-cache {cache}: peak {_gb(result.peak_tree_pss_bytes)} (PSS of "
                      f"{result.processes} processes), largest process "
                      f"{_gb(result.peak_max_rss_bytes)} RSS, {result.seconds:.0f} s",
                      flush=True)
        print(f"  in memory: uint8 {_gb(args.n * 3 * args.size ** 2)}, float32 "
              f"{_gb(args.n * 3 * args.size ** 2 * 4)}", flush=True)
    speeds: list[Speed] = []
    speed_folder = args.speed_dir
    if args.speed_n or args.speed_dir:
        if speed_folder is None:
            speed_folder = cache_dir("data", f"synthetic-{args.speed_n}x32px-{args.classes}c")
            image_folder(speed_folder, args.speed_n, 32, args.classes, seed=1, jobs=args.jobs)
        print(f"(b) speed on {speed_folder}", flush=True)
        speeds = compare_speed(speed_folder, args)
    text = report(args, folder, searches, speed_folder, speeds)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
