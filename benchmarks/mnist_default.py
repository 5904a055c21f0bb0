"""The README's first command, ``autocompress search`` on its built-in defaults (resnet20 on
mnist, budget half the baseline's measured latency), once per seed: is the most accurate
front member something the search found, or the uniform pruning it seeds itself with?

Each seed runs in its own run folder through the command line, as a user would run it, and
appends a row to ``benchmarks/results/mnist_default.csv``; ``--report`` writes the .md.

    python benchmarks/mnist_default.py --seed 0
    python benchmarks/mnist_default.py --report
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

from autocompress.cli import main as cli
from autocompress.study import RunFolder, load_front
from autocompress.study._cache import cache_dir
from autocompress.study._pick import load_study

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import commit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_seed(seed: int) -> dict[str, object]:
    # a run folder per product commit: a folder of another commit's search would be resumed,
    # its front reported as this commit's
    out = cache_dir("benchmarks", "mnist-default", commit()) / f"seed{seed}"
    start = time.perf_counter()
    code = cli.main(["search", "--seed", str(seed), "--out", str(out)])
    if code != 0:
        raise SystemExit(f"autocompress search exited with {code}")
    seconds = time.perf_counter() - start
    folder = RunFolder.open(out)
    front = load_front(out)
    trials = {t.number: t for t in load_study(folder).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))}
    best = max(front.members, key=lambda m: (m.accuracy, -m.predicted_latency_ms))
    seeded = {n: str(t.user_attrs.get("seeded", "sampled")) for n, t in trials.items()}
    uniform = next((n for n, how in seeded.items() if how.startswith("uniform")), None)
    uniform_record = front.records.get(uniform) if uniform is not None else None
    return {
        "seed": seed, "best_trial": best.trial, "best_origin": seeded.get(best.trial, "?"),
        "best_is_uniform_seed": best.trial == uniform, "best_accuracy": best.accuracy,
        "best_latency_ms": best.predicted_latency_ms,
        "uniform_accuracy": uniform_record.accuracy if uniform_record else float("nan"),
        "budget_ms": folder.run.budget.latency_ms, "front_size": len(front),
        "baseline_accuracy": folder.run.baseline.accuracy, "seconds": round(seconds),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": commit(),
        "machine": machine()}


def report(csv: Path, md: Path) -> str:
    frame = pd.read_csv(csv)
    lines = []
    for version, rows in frame.groupby("commit", sort=False):
        wins = int((~rows["best_is_uniform_seed"].astype(bool)).sum())
        lines.append(f"- code at {version}: the best front member is not the uniform seed in "
                     f"{wins} of {len(rows)} seeds.")
    text = "\n".join([
        "# The default search on mnist: is its best member the uniform seed?", "",
        "`autocompress search --seed S --out ...` on built-in defaults (resnet20, mnist, half "
        "the baseline's measured latency, 12 finetuned trials of 150 steps).", "",
        frame.to_markdown(index=False, floatfmt=".4f"), "", *lines, ""])
    md.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    csv, md = RESULTS / "mnist_default.csv", RESULTS / "mnist_default.md"
    if args.report:
        print(report(csv, md))
        return 0
    os.environ.setdefault("AUTOCOMPRESS_WAIT_FOR_QUIET", "15")
    row = run_seed(args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.is_file(), index=False)
    print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
