"""The Pareto front of a search (accuracy vs estimated latency) and picking from it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from autocompress._io import write_text_atomic
from autocompress.space import Candidate

__all__ = ["FrontMember", "ParetoFront"]

FRONT_COLUMNS = ["trial", "kind", "family", "precision", "accuracy", "accuracy_source",
                 "predicted_latency_ms", "predicted_latency_std_ms", "latency_source",
                 "size_bytes", "compressed_size_bytes", "params", "nonzero_params", "flops",
                 "sparsity", "artifact", "config"]


@dataclass(frozen=True)
class FrontMember:
    """A finetuned candidate within budget that no other candidate beats on both axes."""

    trial: int
    accuracy: float
    predicted_latency_ms: float
    predicted_latency_std_ms: float
    size_bytes: int
    compressed_size_bytes: int
    params: int
    nonzero_params: int
    flops: int
    sparsity: float
    candidate: Candidate
    artifact: str | None
    latency_source: str = "estimate"   # or "measured" (near the budget, on this machine)
    accuracy_source: str = "torch"     # or "onnxruntime" (a quantized model, as deployed)
    family: str = ""                   # a student's family and shape; empty when compressed

    @property
    def kind(self) -> str:
        """``compressed`` (the original model compressed) or ``student`` (distilled)."""
        return self.candidate.kind

    @property
    def precision(self) -> str:
        """``fp32``, ``int8``, ``fp16`` or ``mixed``."""
        return self.candidate.precision_summary

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> FrontMember:
        a = trial.user_attrs
        return cls(
            trial=trial.number,
            accuracy=float(a["accuracy"]),
            predicted_latency_ms=float(a["predicted_latency_ms"]),
            predicted_latency_std_ms=float(a.get("predicted_latency_std_ms", 0.0)),
            size_bytes=int(a["size_bytes"]),
            compressed_size_bytes=int(a.get("compressed_size_bytes", 0)),
            params=int(a["params"]),
            nonzero_params=int(a.get("nonzero_params", a["params"])),
            flops=int(a["flops"]),
            sparsity=float(a.get("sparsity", 0.0)),
            candidate=Candidate.from_dict(a["candidate"]),
            artifact=a.get("artifact"),
            latency_source=str(a.get("latency_source", "estimate")),
            accuracy_source=str(a.get("accuracy_source", "torch")),
            family=str(a.get("family", "")),
        )

    def row(self) -> dict[str, Any]:
        return {"trial": self.trial, "kind": self.kind, "family": self.family,
                "precision": self.precision, "accuracy": self.accuracy,
                "accuracy_source": self.accuracy_source,
                "predicted_latency_ms": self.predicted_latency_ms,
                "predicted_latency_std_ms": self.predicted_latency_std_ms,
                "latency_source": self.latency_source,
                "size_bytes": self.size_bytes, "compressed_size_bytes": self.compressed_size_bytes,
                "params": self.params, "nonzero_params": self.nonzero_params,
                "flops": self.flops, "sparsity": self.sparsity, "artifact": self.artifact,
                "config": self.candidate.to_json()}


def _dominates(a: FrontMember, b: FrontMember) -> bool:
    return (a.accuracy >= b.accuracy and a.predicted_latency_ms <= b.predicted_latency_ms
            and (a.accuracy > b.accuracy or a.predicted_latency_ms < b.predicted_latency_ms))


class ParetoFront:
    """Non-dominated finetuned trials within budget, sorted by estimated latency.

    The front is Optuna's own (``study.best_trials``, which holds feasible trials only),
    restricted to trials that produced a model.
    """

    def __init__(self, members: Sequence[FrontMember], *, budget_ms: float | None = None,
                 baseline: dict[str, Any] | None = None,
                 trials: Sequence[optuna.trial.FrozenTrial] = ()) -> None:
        members = [m for m in members if not any(_dominates(o, m) for o in members)]
        self.members = tuple(sorted(members, key=lambda m: (m.predicted_latency_ms, -m.accuracy)))
        self.budget_ms = budget_ms
        self.baseline = baseline or {}
        self.trials = tuple(trials)

    @classmethod
    def from_study(cls, study: optuna.Study, *, budget_ms: float | None = None,
                   baseline: dict[str, Any] | None = None) -> ParetoFront:
        best = [t for t in study.best_trials if t.user_attrs.get("artifact")]
        trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return cls([FrontMember.from_trial(t) for t in best], budget_ms=budget_ms,
                   baseline=baseline, trials=trials)

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

    def write_csv(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.to_frame().to_csv(index=False))

    def plot(self, path: str | Path, *, study: optuna.Study | None = None) -> Path:
        """Accuracy vs estimated latency: all trials, the front, budget and baseline."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        done = [t for t in self.trials if "predicted_latency_ms" in t.user_attrs]
        tuned = [t for t in done if t.user_attrs.get("finetuned")]
        skipped = [t for t in done if not t.user_attrs.get("finetuned")]
        if skipped:  # their accuracy (not finetuned) is not comparable: show latency only
            ax.scatter([t.user_attrs["predicted_latency_ms"] for t in skipped],
                       [0.02] * len(skipped), s=30, c="#999999", marker="|",
                       transform=ax.get_xaxis_transform(),
                       label="over budget (not finetuned)")
        if tuned:
            ax.scatter([t.user_attrs["predicted_latency_ms"] for t in tuned],
                       [t.user_attrs["accuracy"] for t in tuned], s=18, c="#6a8caf",
                       label="finetuned trial")
        if self.members:
            ax.plot([m.predicted_latency_ms for m in self.members],
                    [m.accuracy for m in self.members], "o-", c="#d1495b", ms=6,
                    label="Pareto front")
        if self.budget_ms is not None:
            ax.axvline(self.budget_ms, ls="--", c="k", lw=1,
                       label=f"budget {self.budget_ms:.3g} ms")
        base = self.baseline
        if base.get("accuracy") is not None and base.get("latency_ms") is not None:
            ax.scatter([base["latency_ms"]], [base["accuracy"]], marker="*", s=160, c="#edae49",
                       edgecolors="k", zorder=5,
                       label=f"baseline ({base.get('latency_source', 'estimate')})")
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
        if base:
            lines.append(f"  baseline: accuracy {base.get('accuracy', float('nan')):.4f}, "
                         f"latency {base.get('latency_ms', float('nan')):.3f} ms "
                         f"({base.get('latency_source', 'estimate')}), "
                         f"params {base.get('params', 0):,}")
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
        return "\n".join(lines)


def member_json(member: FrontMember, **extra: Any) -> str:
    return json.dumps({**member.row(), "config": member.candidate.to_dict(), **extra},
                      indent=2, sort_keys=True)
