"""The Pareto front of a search (accuracy vs estimated latency) and picking from it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from autocompress._io import write_text_atomic
from autocompress.space import Candidate
from autocompress.study._records import BaselineRecord, TrialRecord

__all__ = ["FrontMember", "ParetoFront"]

FRONT_COLUMNS = ["trial", "kind", "combines", "family", "precision", "accuracy", "accuracy_source",
                 "predicted_latency_ms", "predicted_latency_std_ms", "latency_source",
                 "size_bytes", "compressed_size_bytes", "params", "nonzero_params", "flops",
                 "sparsity", "artifact", "config"]


@dataclass(frozen=True)
class FrontMember:
    """A finetuned candidate within budget that no other candidate beats on both axes."""

    trial: int
    record: TrialRecord

    @property
    def accuracy(self) -> float:
        return self.record.accuracy

    @property
    def predicted_latency_ms(self) -> float:
        """The latency the budget was checked against (estimate, or measured near it)."""
        return self.record.latency_ms

    @property
    def predicted_latency_std_ms(self) -> float:
        return self.record.latency_std_ms

    @property
    def latency_source(self) -> str:
        return self.record.latency_source

    @property
    def accuracy_source(self) -> str:
        return self.record.accuracy_source

    @property
    def candidate(self) -> Candidate:
        return self.record.candidate

    @property
    def artifact(self) -> str | None:
        return self.record.artifact

    @property
    def kind(self) -> str:
        """``compressed`` (the original model compressed) or ``student`` (distilled)."""
        return self.record.kind

    @property
    def family(self) -> str:
        """A student's family and shape; empty when compressed."""
        return self.record.family

    @property
    def precision(self) -> str:
        """``fp32``, ``int8``, ``fp16`` or ``mixed``."""
        return self.record.precision

    @property
    def params(self) -> int:
        return self.record.params

    @property
    def flops(self) -> int:
        return self.record.flops

    @property
    def size_bytes(self) -> int:
        return self.record.size_bytes

    @property
    def sparsity(self) -> float:
        return self.record.sparsity

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> FrontMember | None:
        record = TrialRecord.of(trial)
        return cls(trial.number, record) if record is not None else None

    def row(self) -> dict[str, Any]:
        r = self.record
        return {"trial": self.trial, "kind": self.kind,
                "combines": self.candidate.combines, "family": self.family,
                "precision": self.precision, "accuracy": r.accuracy,
                "accuracy_source": r.accuracy_source,
                "predicted_latency_ms": r.latency_ms,
                "predicted_latency_std_ms": r.latency_std_ms,
                "latency_source": r.latency_source,
                "size_bytes": r.size_bytes, "compressed_size_bytes": r.compressed_size_bytes,
                "params": r.params, "nonzero_params": r.nonzero_params,
                "flops": r.flops, "sparsity": r.sparsity, "artifact": r.artifact,
                "config": self.candidate.to_json()}


def _dominates(a: FrontMember, b: FrontMember, size: bool = False) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective (accuracy, latency and,
    with ``size``, the compressed size) and better in one."""
    better = [a.accuracy - b.accuracy, b.predicted_latency_ms - a.predicted_latency_ms]
    if size:
        better.append(b.record.compressed_size_bytes - a.record.compressed_size_bytes)
    return all(d >= 0 for d in better) and any(d > 0 for d in better)


class ParetoFront:
    """Non-dominated finetuned trials within budget, sorted by estimated latency.

    The front is Optuna's own (``study.best_trials``, which holds feasible trials only),
    restricted to trials that produced a model.
    """

    def __init__(self, members: Sequence[FrontMember], *, budget_ms: float | None = None,
                 baseline: BaselineRecord | None = None,
                 records: Mapping[int, TrialRecord] | None = None,
                 objectives: Sequence[str] = ("accuracy", "latency"),
                 validation_note: str | None = None) -> None:
        size = "size" in objectives
        members = [m for m in members if not any(_dominates(o, m, size) for o in members)]
        self.objectives = tuple(objectives)
        self.members = tuple(sorted(members, key=lambda m: (m.predicted_latency_ms, -m.accuracy)))
        self.budget_ms = budget_ms
        self.baseline = baseline
        #: every completed trial's record, by trial number
        self.records: Mapping[int, TrialRecord] = dict(records or {})
        #: where the validation accuracies come from (e.g. the same folder as training)
        self.validation_note = validation_note

    @classmethod
    def from_study(cls, study: optuna.Study, *, budget_ms: float | None = None,
                   baseline: BaselineRecord | None = None,
                   validation_note: str | None = None) -> ParetoFront:
        """Optuna's front (feasible trials only), restricted to trials that produced a
        model."""
        trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        records = {t.number: r for t in trials if (r := TrialRecord.of(t)) is not None}
        best = [FrontMember(t.number, records[t.number]) for t in study.best_trials
                if t.number in records and records[t.number].artifact]
        objectives = ("accuracy", "latency", "size")[:len(study.directions)]
        return cls(best, budget_ms=budget_ms, baseline=baseline, records=records,
                   objectives=objectives, validation_note=validation_note)

    def with_measured(self, latencies: Mapping[int, float]) -> ParetoFront:
        """The front again, with the latency of the trials in ``latencies`` replaced by a
        measurement: a member measured slower than its estimate stops dominating the
        members it beat only through that estimate, and they come back.

        Candidates are every finetuned trial with an exported model (within the search's
        budget, when it is known)."""
        members = []
        for number, record in self.records.items():
            if not record.finetuned or not record.artifact:
                continue
            if number in latencies:
                record = dataclasses.replace(record, latency_ms=float(latencies[number]),
                                             latency_std_ms=0.0, latency_source="measured")
            if self.budget_ms is not None and record.latency_ms > self.budget_ms:
                continue
            members.append(FrontMember(number, record))
        return ParetoFront(members, budget_ms=self.budget_ms, baseline=self.baseline,
                           records=self.records, objectives=self.objectives,
                           validation_note=self.validation_note)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.members)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([m.row() for m in self.members], columns=FRONT_COLUMNS)

    def fastest(self) -> FrontMember | None:
        return self.members[0] if self.members else None

    def within(self, latency_budget_ms: float) -> list[FrontMember]:
        """Members whose estimate fits the budget, most accurate first."""
        fitting = [m for m in self.members if m.predicted_latency_ms <= latency_budget_ms]
        return sorted(fitting, key=lambda m: (-m.accuracy, m.predicted_latency_ms))

    def pick(self, latency_budget_ms: float) -> FrontMember | None:
        """The most accurate member whose estimated latency fits the budget (ties: faster)."""
        fitting = self.within(latency_budget_ms)
        return fitting[0] if fitting else None

    def hypervolume(self, budget_ms: float | None = None) -> float:
        """The area (accuracy x milliseconds) the front dominates, from the reference point
        accuracy 0 at ``budget_ms`` (default: the search's budget), computed by moocore;
        0.0 for an empty front. Compare fronts only at the same reference point."""
        reference = budget_ms if budget_ms is not None else self.budget_ms
        if reference is None:
            raise ValueError("hypervolume needs a reference latency: pass budget_ms")
        points = [(-m.accuracy, m.predicted_latency_ms) for m in self.members
                  if m.predicted_latency_ms < reference]
        if not points:
            return 0.0
        import moocore

        return float(moocore.hypervolume(np.asarray(points), ref=[0.0, reference]))

    def write_csv(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.to_frame().to_csv(index=False))

    def plot(self, path: str | Path, *, study: optuna.Study | None = None) -> Path:
        """Accuracy vs estimated latency: all trials, the front, budget and baseline."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        tuned = [r for r in self.records.values() if r.finetuned]
        skipped = [r for r in self.records.values() if not r.finetuned]
        if skipped:  # their accuracy (not finetuned) is not comparable: show latency only
            ax.scatter([r.latency_ms for r in skipped],
                       [0.02] * len(skipped), s=30, c="#999999", marker="|",
                       transform=ax.get_xaxis_transform(),
                       label="over budget (not finetuned)")
        if tuned:
            ax.scatter([r.latency_ms for r in tuned],
                       [r.accuracy for r in tuned], s=18, c="#6a8caf",
                       label="finetuned trial")
        if self.members:
            ax.plot([m.predicted_latency_ms for m in self.members],
                    [m.accuracy for m in self.members], "o-", c="#d1495b", ms=6,
                    label="Pareto front")
        if self.budget_ms is not None:
            ax.axvline(self.budget_ms, ls="--", c="k", lw=1,
                       label=f"budget {self.budget_ms:.3g} ms")
        base = self.baseline
        if base is not None:
            ax.scatter([base.latency_ms], [base.accuracy], marker="*", s=160, c="#edae49",
                       edgecolors="k", zorder=5, label=f"baseline ({base.latency_source})")
        ax.set_xlabel("latency (ms): profile estimate, measured near the budget")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp)
        plt.close(fig)
        tmp.replace(path)
        return path

    def summary(self) -> str:
        lines = [f"Pareto front: {len(self.members)} member(s)"
                 + (f", budget {self.budget_ms:.3f} ms" if self.budget_ms else "")]
        base = self.baseline
        if base is not None:
            lines.append(f"  baseline: accuracy {base.accuracy:.4f}, latency "
                         f"{base.latency_ms:.3f} ms ({base.latency_source}), "
                         f"params {base.params:,}")
        lines.append(f"  {'trial':>5} {'kind':>10} {'prec':>5} {'accuracy':>8} {'latency_ms':>10} "
                     f"{'±':>6} {'source':>8} {'params':>9} {'MFLOPs':>8} {'size_kB':>8} "
                     f"{'sparsity':>8}")
        for m in self.members:
            lines.append(f"  {m.trial:>5} {m.kind:>10} {m.precision:>5} {m.accuracy:>8.4f} "
                         f"{m.predicted_latency_ms:>10.3f} {m.predicted_latency_std_ms:>6.3f} "
                         f"{m.latency_source:>8} {m.params:>9,} {m.flops / 1e6:>8.2f} "
                         f"{m.size_bytes / 1e3:>8.1f} {m.sparsity:>8.2f}"
                         + (f"  {m.family}" if m.family else ""))
        lines.append("  (latency: estimate from the hardware profile, measured for candidates near "
                     "the budget when the profile is of this machine; 'pick' re-measures)")
        if self.validation_note:
            lines.append(f"  ({self.validation_note})")
        return "\n".join(lines)


def member_json(member: FrontMember, **extra: Any) -> str:
    return json.dumps({**member.row(), "config": member.candidate.to_dict(), **extra},
                      indent=2, sort_keys=True)
