"""How well the search predicts what finetuning makes of a screening score
(:class:`~autocompress.study._screen.Recovery`), replayed on the trials of stored searches.

The search chooses its spread picks by the accuracy it expects each screened candidate to
reach after finetuning, fitted on the trials it finetuned before. This replays that
prediction: within each stored search, every finetuned trial after the first is predicted
from the trials before it, once by the product's rule and once by the rule it replaced (one
share of the loss for every score). Nothing is trained or measured; the pairs come from the
studies the CIFAR-10 benchmark left in its run folders.

    python benchmarks/recovery.py --collect ~/.cache/autocompress/benchmarks/cifar10-runs
    python benchmarks/recovery.py            # the report, from the collected pairs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import pandas as pd

from autocompress.study._records import TrialRecord
from autocompress.study._screen import Recovery

ROOT = Path(__file__).resolve().parent
PAIRS = ROOT / "results" / "recovery_pairs.csv"
REPORT = ROOT / "results" / "recovery.md"


def collect(runs: Path) -> pd.DataFrame:
    """(search, trial, screening score, accuracy after finetuning, finetune steps, latency,
    baseline accuracy) of every finetuned, screened trial within budget in ``runs``' studies."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    for db in sorted(runs.glob("*/study.db")):
        run = json.loads((db.parent / "run.json").read_text())
        study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{db}")
        for trial in study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.COMPLETE,)):
            record = TrialRecord.of(trial)
            if (record is None or not record.finetuned or record.screening_score is None
                    or any(v > 0.0 for v in trial.constraints.values())):
                continue
            rows.append({"search": db.parent.name, "trial": trial.number,
                         "score": record.screening_score, "accuracy": record.accuracy,
                         "finetune_steps": record.finetune_steps,
                         "latency_ms": trial.values[1],
                         "ceiling": run["baseline"]["accuracy"]})
    return pd.DataFrame(rows)


def _rate(pairs: Sequence[tuple[float, float]], ceiling: float, exponent: float
          ) -> float | None:
    """The least-squares rate, unbounded, of what ``pairs`` won back against the share
    (``ceiling`` - score) x (score / ``ceiling``) ** ``exponent``; None where no pair lost
    anything."""
    lost = [(_share(s, ceiling, exponent), a - s) for s, a in pairs]
    lost = [(x, y) for x, y in lost if x > 1e-9]
    if not lost:
        return None
    return sum(x * y for x, y in lost) / sum(x * x for x, _ in lost)


def _share(score: float, ceiling: float, exponent: float) -> float:
    return max(ceiling - score, 0.0) * (max(score, 0.0) / ceiling) ** exponent


def _shaped(exponent: float) -> Callable[[Sequence[tuple[float, float]], float],
                                         Callable[[float], float]]:
    """The product's rule with (score / ceiling) ** ``exponent`` in place of its square root
    (how the exponent was chosen); exponent 0 is the rule before 2026-12-06, one share of
    the loss whatever the score."""
    def rule(pairs: Sequence[tuple[float, float]], ceiling: float) -> Callable[[float], float]:
        rate = _rate(pairs, ceiling, exponent)
        if rate is None:
            return lambda s: s
        rate = min(max(rate, 0.0), 1.0)
        return lambda s: s + rate * _share(s, ceiling, exponent)
    return rule


def _product(pairs: Sequence[tuple[float, float]], ceiling: float) -> Callable[[float], float]:
    return Recovery.fit(pairs, ceiling).expected


def _over_one(pairs: pd.DataFrame, exponent: float) -> int:
    """In how many searches the rate fitted on all of its trials exceeds 1 (before the bound)."""
    rates = [_rate(list(zip(t.score, t.accuracy, strict=True)), t.ceiling.iloc[0], exponent)
             for _, t in pairs.groupby("search")]
    return sum(1 for r in rates if r is not None and r > 1.0)


RULES = {"one share for every score": _shaped(0.0),
         "share x sqrt(score / ceiling) (the product's)": _product}
EXPONENTS = (0.25, 0.5, 0.75, 1.0)


def replay(pairs: pd.DataFrame, rules: dict[str, Callable] = RULES) -> pd.DataFrame:
    """Every trial after a search's first, predicted by each of ``rules`` from the trials
    before it: the error (predicted - reached) per rule."""
    rows = []
    for search, trials in pairs.groupby("search"):
        trials = trials.sort_values("trial")
        seen = list(zip(trials.score, trials.accuracy, strict=True))
        for k in range(1, len(trials)):
            row = trials.iloc[k]
            errors = {name: rule(seen[:k], row.ceiling)(row.score) - row.accuracy
                      for name, rule in rules.items()}
            rows.append({"search": search, "trial": row.trial, "score": row.score,
                         "accuracy": row.accuracy, **errors})
    return pd.DataFrame(rows)


def report(pairs: pd.DataFrame) -> str:
    errors = replay(pairs)
    table = pd.DataFrame([{
        "rule": name,
        "mean absolute error": errors[name].abs().mean(),
        "mean error (+ over-promises)": errors[name].mean(),
        "worst over-promise": errors[name].max(),
        "worst under-promise": errors[name].min(),
    } for name in RULES])
    low = errors[errors.score < 0.3]
    low_table = pd.DataFrame([{"rule": name, "mean error, scores under 0.3": low[name].mean()}
                              for name in RULES])
    shapes = replay(pairs, {q: _shaped(q) for q in EXPONENTS})
    shape_table = pd.DataFrame([{"exponent": q, "mean absolute error": shapes[q].abs().mean(),
                                 "mean error": shapes[q].mean(),
                                 "worst over-promise": shapes[q].max()} for q in EXPONENTS])
    counts = [_over_one(pairs, q) for q in EXPONENTS]
    bounds = (f"{counts[0]} of {pairs.search.nunique()} searches at exponent {EXPONENTS[0]}, "
              + ", ".join(f"{n} at {q}" for n, q in zip(counts[1:], EXPONENTS[1:], strict=True)))
    steps = ", ".join(str(int(s)) for s in sorted(pairs.finetune_steps.unique()))
    return "\n".join([
        "# What finetuning makes of a screening score: the search's prediction, replayed",
        "",
        f"{len(pairs)} finetuned, screened trials within budget from {pairs.search.nunique()} "
        "stored CIFAR-10 resnet20 searches (`benchmarks/results/recovery_pairs.csv`; "
        f"{steps} finetune steps a trial). Within each search "
        f"every trial after the first ({len(errors)} trials) is predicted from the trials "
        "before it, as the search predicts its spread picks. Many searches share their first "
        "trials (front runs continued from one folder), so the trials are not independent.",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"{len(low)} of the predicted trials scored under 0.3 (networks near a guess):",
        "",
        low_table.to_markdown(index=False, floatfmt=".3f"),
        "",
        "The exponent of (score / ceiling) was chosen on these same trials, so the product's "
        "row is in-sample for the shape (the rate is fitted per search, as the search fits "
        f"it). Fitted on all of a search's trials, the rate exceeds 1 in {bounds}. "
        "The rate is held to at most 1, which keeps the prediction monotone in the score; "
        "0.75 predicts these trials best, but at its bound the rate cannot follow a search "
        "whose finetunes win back more (longer trials, an easier task), so the product takes 0.5:",
        "",
        shape_table.to_markdown(index=False, floatfmt=".3f"),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collect", type=Path, metavar="RUNS",
                        help="read the pairs from the run folders under RUNS first")
    args = parser.parse_args(argv)
    if args.collect is not None:
        collect(args.collect.expanduser()).to_csv(PAIRS, index=False)
    pairs = pd.read_csv(PAIRS)
    REPORT.write_text(report(pairs))
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
