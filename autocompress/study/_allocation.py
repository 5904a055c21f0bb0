"""Latency-aware allocation of channels: prune where latency is expensive and accuracy cheap.

In the spirit of NetAdapt (Yang et al., 2018) and HALP (Shen et al., 2022), with the profile's
latency estimate in place of their lookup tables and the adaptive-BatchNorm score in place of
a finetune:

1. *Sensitivity*: each channel group is pruned alone to a few keep ratios; the network is
   scored without training (:func:`~autocompress.evaluation.screening_score`) and its latency
   estimated. A group whose pruning costs little score and saves much latency is cheap.
2. *Allocation*: starting from the unpruned network, a greedy solver of the knapsack lowers
   one group by one grid step at a time, always the step with the most latency saved per
   score lost (interpolated between the ratios measured), re-estimating the whole network
   after each step, until the estimate fits the budget; then it gives back steps (most score
   regained per latency spent first) while the budget still holds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autocompress.evaluation import screening_score
from autocompress.space import BoundSpace, Candidate
from autocompress.study._prepare import Prepared, uniform_params
from autocompress.study._records import AllocationRecord

__all__ = ["Allocation", "GroupSensitivity", "allocate", "allocation_params",
           "compute_allocation", "measure_sensitivity", "uniform_grid_params"]

_logger = logging.getLogger(__name__)

#: Keep ratios at which every group's sensitivity is scored (others are interpolated).
SENSITIVITY_RATIOS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class GroupSensitivity:
    """One channel group: its Optuna parameter, the keep ratios it may take, and the score and
    estimated latency of the network with only this group pruned, at a few ratios and 1.0
    (other ratios are interpolated)."""

    group: str
    param: str
    ratios: tuple[float, ...]                  # ascending, 1.0 last
    score: Mapping[float, float]
    latency_ms: Mapping[float, float]

    def score_at(self, ratio: float) -> float:
        return _interpolate(self.score, ratio)

    def latency_at(self, ratio: float) -> float:
        return _interpolate(self.latency_ms, ratio)


def _interpolate(values: Mapping[float, float], at: float) -> float:
    known = sorted(values)
    return float(np.interp(at, known, [values[r] for r in known]))


@dataclass(frozen=True)
class Allocation:
    """A keep ratio per group, its estimated latency and the sum of score losses it
    predicts (relative to the unpruned network)."""

    keep: Mapping[str, float]
    params: Mapping[str, float]
    latency_ms: float
    predicted_loss: float


Evaluate = Callable[[Candidate], tuple[float, float]]


def measure_sensitivity(bound: BoundSpace, evaluate: Evaluate) -> list[GroupSensitivity]:
    """Score and estimate every searched channel group pruned alone (see the module doc);
    ``evaluate`` returns a candidate's (score, estimated latency)."""
    base = bound.uniform(1.0)
    base_score, base_ms = evaluate(base)
    found = []
    for p in bound.channel_params:
        if p.param is None:
            continue
        ratios = tuple(sorted(set(p.value.grid()) | {1.0}))
        probe = sorted({r for r in SENSITIVITY_RATIOS if ratios[0] <= r < 1.0}
                       | ({ratios[0]} if ratios[0] < 1.0 else set()))
        scores, latencies = {1.0: base_score}, {1.0: base_ms}
        for ratio in probe:
            scores[ratio], latencies[ratio] = evaluate(_with_keep(base, {p.target: ratio}))
        found.append(GroupSensitivity(p.target, p.param, ratios, scores, latencies))
        _logger.debug("sensitivity of %s: %s", p.target,
                      ", ".join(f"{r:g}: {s:.3f}" for r, s in sorted(scores.items())))
    return found


def _with_keep(base: Candidate, keep: Mapping[str, float]) -> Candidate:
    from dataclasses import replace

    return replace(base, channel_keep={**base.channel_keep, **keep})


#: Whole-network estimates a give-back pass may spend.
_GIVE_BACK_CHECKS = 8


def allocate(groups: Sequence[GroupSensitivity], base: Candidate, budget_ms: float,
             estimate_ms: Callable[[Candidate], float]) -> Allocation | None:
    """The greedy allocation of the module doc for ``budget_ms``; ``None`` when even every
    group at its smallest ratio does not fit.

    Steps are chosen on the sensitivity table, with the network's latency predicted as the
    unpruned latency less each group's own saving; the whole network is estimated
    (``estimate_ms``) once the prediction fits, and again for each step given back."""
    if not groups:
        return None
    index = {g.group: len(g.ratios) - 1 for g in groups}   # every group at its largest ratio
    by_name = {g.group: g for g in groups}
    base_ms = groups[0].latency_at(1.0)

    def keep() -> dict[str, float]:
        return {g: by_name[g].ratios[i] for g, i in index.items()}

    def predicted() -> float:
        return base_ms - sum(by_name[g].latency_at(1.0) - by_name[g].latency_at(r)
                             for g, r in keep().items())

    def exact() -> float:
        return estimate_ms(_with_keep(base, keep()))

    while True:
        while predicted() > budget_ms:          # steps down chosen on the table alone
            if not _step_down(groups, index):
                return None
        latency = exact()
        if latency <= budget_ms:
            break
        if not _step_down(groups, index):       # the prediction was optimistic: go on
            return None
    latency = _give_back(groups, index, budget_ms, latency, predicted, exact)
    kept = keep()
    loss = sum(by_name[g].score_at(1.0) - by_name[g].score_at(r) for g, r in kept.items())
    return Allocation(kept, {by_name[g].param: r for g, r in kept.items()}, latency, loss)


def _step_down(groups: Sequence[GroupSensitivity], index: dict[str, int]) -> bool:
    step = _best_step(groups, index, down=True)
    if step is None:
        return False
    index[step] -= 1
    return True


def _give_back(groups: Sequence[GroupSensitivity], index: dict[str, int], budget_ms: float,
               latency: float, predicted: Callable[[], float],
               exact: Callable[[], float]) -> float:
    """Raise groups again, most score regained per latency spent first, while the whole
    network still fits; returns the final estimate."""
    blocked: set[str] = set()
    for _ in range(_GIVE_BACK_CHECKS):
        offset = latency - predicted()       # what the additive prediction misses here
        step = _best_step([g for g in groups if g.group not in blocked], index, down=False)
        if step is None:
            break
        index[step] += 1
        if predicted() + offset > budget_ms or (trial := exact()) > budget_ms:
            index[step] -= 1
            blocked.add(step)
            continue
        latency = trial
    return latency


def _best_step(groups: Sequence[GroupSensitivity], index: Mapping[str, int], *,
               down: bool) -> str | None:
    """The group whose next step (down: one ratio lower; up: one higher) has the best
    latency saved per score lost (down) or score regained per latency spent (up)."""
    best, best_value = None, -math.inf
    for g in groups:
        i = index[g.group]
        j = i - 1 if down else i + 1
        if not 0 <= j < len(g.ratios):
            continue
        hi, lo = (i, j) if down else (j, i)
        saved = g.latency_at(g.ratios[hi]) - g.latency_at(g.ratios[lo])
        lost = g.score_at(g.ratios[hi]) - g.score_at(g.ratios[lo])
        if down:
            value = max(saved, 0.0) / max(lost, 1e-4)
        else:
            value = max(lost, 0.0) / max(saved, 1e-6)
        if value > best_value:
            best, best_value = g.group, value
    return best


# ------------------------------------------------------------------------------ in a search

def compute_allocation(prepared: Prepared, budget_ms: float) -> AllocationRecord | None:
    """Sensitivity of every searched group (scored by adaptive BatchNorm, estimated with
    ``prepared``'s calibrated latency model), and the allocation that fits ``budget_ms``;
    ``None`` when no allocation fits."""
    start = time.perf_counter()
    data = prepared.data

    def evaluate(candidate: Candidate) -> tuple[float, float]:
        compressed = prepared.compress(candidate)
        latency = compressed.estimate(prepared.latency_model).latency_ms
        return screening_score(compressed.module, data.train, data.val), latency

    groups = measure_sensitivity(prepared.bound, evaluate)
    if not groups:
        return None
    found = allocate(groups, prepared.bound.uniform(1.0), budget_ms, prepared.estimate_ms)
    seconds = time.perf_counter() - start
    if found is None:
        _logger.info("latency-aware allocation: nothing fits %.3f ms", budget_ms)
        return None
    _logger.info("latency-aware allocation in %.0f s: estimated %.3f ms (budget %.3f), keep "
                 "ratios %s", seconds, found.latency_ms, budget_ms,
                 ", ".join(f"{g} {r:g}" for g, r in found.keep.items()))
    table = {g.group: {f"{r:g}": (g.latency_at(r), g.score.get(r)) for r in g.ratios}
             for g in groups}
    return AllocationRecord(dict(found.keep), dict(found.params), found.latency_ms,
                            found.predicted_loss, table, seconds)


def allocation_params(bound: BoundSpace, allocation: AllocationRecord) -> dict[str, Any]:
    """The Optuna parameters of ``allocation`` (every other parameter as in the unpruned
    fp32 candidate)."""
    return {**uniform_params(bound, 1.0), **allocation.params}


def uniform_grid_params(bound: BoundSpace) -> list[dict[str, Any]]:
    """The parameters of uniform pruning at every keep ratio of the space's grid."""
    ratios = sorted({v for p in bound.channel_params if p.param is not None
                     for v in p.value.grid()}, reverse=True)
    return [uniform_params(bound, r) for r in ratios]
