"""Latency-aware allocation of channels: prune where latency is expensive and accuracy cheap.

In the spirit of NetAdapt (Yang et al., 2018) and HALP (Shen et al., 2022), with the profile's
latency estimate in place of their lookup tables and the adaptive-BatchNorm score in place of
a finetune:

1. *Sensitivity*: each channel group is pruned alone to a few keep ratios; the network is
   scored without training (:func:`~autocompress.evaluation.screening_score`) and its latency
   estimated. The table says how much latency each group's channels cost.
2. *Allocation*: starting from the unpruned network, in rounds (NetAdapt's iterations), every
   group proposes the smallest cut (in grid steps) that saves a round's share of the latency
   still over the budget (as the table predicts); each proposal is scored *in context* (the
   network as pruned so far, with that one cut added), and the cut with the most latency
   saved per score lost is taken; the whole network is estimated after each round, until it
   fits the budget. Then steps are given back (most score regained per latency spent first,
   by the table) while the budget still holds.

Scoring in context matters because pruning losses do not add up. On resnet20 (CIFAR-10,
adaptive-BN scores on 500 images, half the baseline's latency) each group pruned alone lost
at most 12 points, and the allocation chosen from that table (a wide first stage, a narrow
last) scored 0.14, where uniform pruning scored 0.23; chosen in context, 0.30.

Where the device is this machine, the whole network is *measured* near the budget (as
NetAdapt measures), so that the allocation fits the device and not only its estimate.

Where the space searches depth, every residual block is one more item with two ratios: 1.0
(kept) and 0.0 (its branch dropped), scored and estimated like a channel group, so a cut may
remove a whole block when that saves more latency per score lost than thinning layers.

Where the space lets every layer run int8, the allocation is made twice: from the unpruned
network in fp32 and from it quantized all-int8 (post-training), each to the same budget. An
int8 network runs faster where the device has int8 kernels worth having (0.52x fp32 on an
AVX-512 VNNI CPU for resnet20, 0.63x on AVX2), so it needs fewer cuts; the one that loses
the least score is kept, fp32 where the two lose within :data:`SCORE_NOISE` of each other.
The score does not see quantization (adaptive BatchNorm on the float network: what int8
costs is measured only once the trial is finetuned and quantized, in ONNX Runtime), so a
model that quantizes badly shows it in its trial, not here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autocompress.evaluation import screening_score
from autocompress.space import BoundSpace, Candidate
from autocompress.study._prepare import (
    MEASURED_HEADROOM,
    Prepared,
    evenly,
    near_budget,
    uniform_params,
)
from autocompress.study._records import AllocationRecord

__all__ = ["ALLOCATION_PRECISIONS", "Allocation", "GroupSensitivity", "allocate",
           "allocate_precisions", "allocation_params", "allocation_precisions",
           "compute_allocation", "measure_sensitivity", "uniform_grid_params"]

_logger = logging.getLogger(__name__)

#: Keep ratios at which every group's sensitivity is scored (others are interpolated).
SENSITIVITY_RATIOS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class GroupSensitivity:
    """One channel group (or residual block, ``kind`` ``depth``: ratios 0.0, dropped, and
    1.0): its Optuna parameter, the keep ratios it may take, and the score and estimated
    latency of the network with only this group pruned, at a few ratios and 1.0 (other
    ratios are interpolated)."""

    group: str
    param: str
    ratios: tuple[float, ...]                  # ascending, 1.0 last
    score: Mapping[float, float]
    latency_ms: Mapping[float, float]
    kind: str = "channels"

    def score_at(self, ratio: float) -> float:
        return _interpolate(self.score, ratio)

    def latency_at(self, ratio: float) -> float:
        return _interpolate(self.latency_ms, ratio)


def _interpolate(values: Mapping[float, float], at: float) -> float:
    known = sorted(values)
    return float(np.interp(at, known, [values[r] for r in known]))


@dataclass(frozen=True)
class Allocation:
    """A keep ratio per group, its latency and the score it loses against the unpruned
    network (scored in context at its last cut; without a score, the sum of the table's
    losses of each group pruned alone)."""

    keep: Mapping[str, float]
    params: Mapping[str, float]
    latency_ms: float
    predicted_loss: float


Evaluate = Callable[[Candidate], tuple[float, float]]


def measure_sensitivity(bound: BoundSpace, evaluate: Evaluate,
                        base: Candidate | None = None) -> list[GroupSensitivity]:
    """Score and estimate every searched channel group pruned alone (see the module doc);
    ``evaluate`` returns a candidate's (score, estimated latency). ``base``: the unpruned
    network the groups are pruned from (default: fp32)."""
    base = bound.uniform(1.0) if base is None else base
    base_score, base_ms = evaluate(base)
    found = []
    items = [(p, "channels") for p in bound.channel_params] + [
        (p, "depth") for p in bound.depth_params]
    for p, kind in items:
        if p.param is None:
            continue
        ratios = tuple(sorted(set(p.value.grid()) | {1.0}))
        probe = sorted({r for r in SENSITIVITY_RATIOS if ratios[0] <= r < 1.0}
                       | ({ratios[0]} if ratios[0] < 1.0 else set()))
        if kind == "depth":       # a block is kept or dropped: nothing in between
            probe = [r for r in ratios if r < 1.0]
        scores, latencies = {1.0: base_score}, {1.0: base_ms}
        for ratio in probe:
            scores[ratio], latencies[ratio] = evaluate(
                _with_keep(base, {p.target: ratio},
                           blocks=frozenset({p.target}) if kind == "depth" else frozenset()))
        found.append(GroupSensitivity(p.target, p.param, ratios, scores, latencies, kind))
        _logger.debug("sensitivity of %s: %s", p.target,
                      ", ".join(f"{r:g}: {s:.3f}" for r, s in sorted(scores.items())))
    return found


def _with_keep(base: Candidate, keep: Mapping[str, float], *,
               blocks: frozenset[str] = frozenset()) -> Candidate:
    """``base`` with the keep ratios of ``keep``: the residual ``blocks`` kept (1.0) or
    dropped (0.0), the other names channel groups pruned to their ratio."""
    from dataclasses import replace

    dropped = {k: v for k, v in keep.items() if k in blocks}
    channels = {k: v for k, v in keep.items() if k not in blocks}
    return replace(base, channel_keep={**base.channel_keep, **channels},
                   depth={**base.depth, **dropped})


#: Whole-network estimates a give-back pass may spend.
_GIVE_BACK_CHECKS = 8
#: Rounds the allocation takes to bring the unpruned network down to the budget (each round
#: cuts one group by a share of what is left over; the last may need more rounds).
ROUNDS = 6
#: Score differences of this size are not told apart from noise (about half the standard
#: error of an accuracy on 500 images): a cut's loss counts at least this much.
SCORE_NOISE = 0.01

Score = Callable[[Candidate], float]


def allocate(groups: Sequence[GroupSensitivity], base: Candidate, budget_ms: float,
             latency_ms: Callable[[Candidate], float], score: Score | None = None
             ) -> Allocation | None:
    """The allocation of the module doc for ``budget_ms``; ``None`` when even every group at
    its smallest ratio does not fit.

    ``latency_ms`` gives a candidate's whole-network latency (estimated, or measured near the
    budget), taken once a round and for each step given back; each round's cuts are chosen
    on the sensitivity table's latencies. ``score`` scores a candidate in context; without
    it a cut's loss is read off the table (each group pruned alone)."""
    if not groups:
        return None
    index = {g.group: len(g.ratios) - 1 for g in groups}   # every group at its largest ratio
    by_name = {g.group: g for g in groups}
    blocks = frozenset(g.group for g in groups if g.kind == "depth")

    def with_keep(base: Candidate, keep: Mapping[str, float]) -> Candidate:
        return _with_keep(base, keep, blocks=blocks)

    def keep(**change: float) -> dict[str, float]:
        return {**{g: by_name[g].ratios[i] for g, i in index.items()}, **change}

    def predicted() -> float:
        base_ms = groups[0].latency_at(1.0)
        return base_ms - sum(by_name[g].latency_at(1.0) - by_name[g].latency_at(r)
                             for g, r in keep().items())

    def exact() -> float:
        return latency_ms(with_keep(base, keep()))

    def loss(group: GroupSensitivity, j: int) -> tuple[float, float | None]:
        """The score lost by cutting ``group`` to its ratio ``j``, and the score after."""
        i, lo = index[group.group], group.ratios[j]
        if score is None:
            return group.score_at(group.ratios[i]) - group.score_at(lo), None
        after = score(with_keep(base, keep(**{group.group: lo})))
        return current - after, after

    latency = exact()
    stride = (latency - budget_ms) / ROUNDS
    current = score(with_keep(base, keep())) if score is not None else 0.0
    while latency > budget_ms:
        cut = _best_cut(groups, index, min(stride, latency - budget_ms), loss)
        if cut is None:
            return None
        group, j, after = cut
        index[group] = j
        current = after if after is not None else current
        latency = exact()
    latency = _give_back(groups, index, budget_ms, latency, predicted, exact)
    kept = keep()
    if score is not None:
        lost = groups[0].score_at(1.0) - current   # as scored in context at the last cut
    else:
        lost = sum(by_name[g].score_at(1.0) - by_name[g].score_at(r) for g, r in kept.items())
    return Allocation(kept, {by_name[g].param: r for g, r in kept.items()}, latency, lost)


def _best_cut(groups: Sequence[GroupSensitivity], index: Mapping[str, int], want_ms: float,
              loss: Callable[[GroupSensitivity, int], tuple[float, float | None]]
              ) -> tuple[str, int, float | None] | None:
    """Of each group's smallest cut that saves ``want_ms`` by the table (or its largest,
    when none does), the one with the most latency saved per score lost: (group, its new
    ratio index, the score after the cut)."""
    best, best_value = None, -math.inf
    for g in groups:
        i = index[g.group]
        at = g.latency_at(g.ratios[i])
        cuts = [j for j in range(i - 1, -1, -1) if at - g.latency_at(g.ratios[j]) > 0]
        if not cuts:
            continue
        j = next((j for j in cuts if at - g.latency_at(g.ratios[j]) >= want_ms), cuts[-1])
        lost, after = loss(g, j)
        value = (at - g.latency_at(g.ratios[j])) / (max(lost, 0.0) + SCORE_NOISE)
        if value > best_value:
            best, best_value = (g.group, j, after), value
    return best


def _give_back(groups: Sequence[GroupSensitivity], index: dict[str, int], budget_ms: float,
               latency: float, predicted: Callable[[], float],
               exact: Callable[[], float]) -> float:
    """Raise groups again, most score regained per latency spent first, while the whole
    network still fits; returns the final estimate."""
    blocked: set[str] = set()
    for _ in range(_GIVE_BACK_CHECKS):
        offset = latency - predicted()       # what the additive prediction misses here
        step = _best_step([g for g in groups if g.group not in blocked], index)
        if step is None:
            break
        index[step] += 1
        if predicted() + offset > budget_ms or (trial := exact()) > budget_ms:
            index[step] -= 1
            blocked.add(step)
            continue
        latency = trial
    return latency


def _best_step(groups: Sequence[GroupSensitivity], index: Mapping[str, int]) -> str | None:
    """The group whose next step up (one ratio higher) regains the most score per latency
    spent, by the table."""
    best, best_value = None, -math.inf
    for g in groups:
        i = index[g.group]
        if i + 1 >= len(g.ratios):
            continue
        spent = g.latency_at(g.ratios[i + 1]) - g.latency_at(g.ratios[i])
        regained = g.score_at(g.ratios[i + 1]) - g.score_at(g.ratios[i])
        value = max(regained, 0.0) / max(spent, 1e-6)
        if value > best_value:
            best, best_value = g.group, value
    return best


# ------------------------------------------------------------------------------ in a search

#: Whole-network precisions the allocation starts from, where the space offers them: fp32
#: always; int8 where layers may run it (fp16 runs only on GPUs, whose profiles this
#: allocation has not been tried on).
ALLOCATION_PRECISIONS = ("fp32", "int8")


def allocation_precisions(bound: BoundSpace) -> tuple[str, ...]:
    """The precisions of :data:`ALLOCATION_PRECISIONS` the space offers its layers."""
    offered = bound.space.precisions if bound.precision_params else {"fp32"}
    return tuple(p for p in ALLOCATION_PRECISIONS if p in offered)


def allocate_precisions(bound: BoundSpace, evaluate: Evaluate, budget_ms: float,
                        latency_ms: Callable[[Candidate], float], score: Score
                        ) -> tuple[str, list[GroupSensitivity], Allocation] | None:
    """The allocation of the module doc from the unpruned network at each precision of
    :func:`allocation_precisions`: (precision, its sensitivity table, allocation) of the one
    that loses the least score (the first, fp32, unless another loses at least
    :data:`SCORE_NOISE` less); ``None`` when none fits."""
    best: tuple[str, list[GroupSensitivity], Allocation] | None = None
    for precision in allocation_precisions(bound):
        base = bound.uniform(1.0, precision)
        groups = measure_sensitivity(bound, evaluate, base)
        if not groups:
            return None
        found = allocate(groups, base, budget_ms, latency_ms, score)
        if found is None:
            _logger.info("latency-aware allocation from %s: nothing fits %.3f ms", precision,
                         budget_ms)
            continue
        _logger.info("latency-aware allocation from %s: %.3f ms, score lost %.3f", precision,
                     found.latency_ms, found.predicted_loss)
        if best is None or found.predicted_loss < best[2].predicted_loss - SCORE_NOISE:
            best = (precision, groups, found)
    return best


def compute_allocation(prepared: Prepared, budget_ms: float,
                       measure: Callable[[Candidate], float] | None = None
                       ) -> AllocationRecord | None:
    """Sensitivity of every searched group (scored by adaptive BatchNorm, estimated with
    ``prepared``'s calibrated latency model), and the allocation that fits ``budget_ms``,
    scored in context, from the unpruned network at each precision the space offers
    (:func:`allocate_precisions`); ``None`` when no allocation fits.

    With ``measure`` (a candidate's latency measured on the device: this machine), a
    whole network estimated near the budget is measured instead, and must leave
    :data:`MEASURED_HEADROOM` of the budget free, as the screening asks of what it
    finetunes."""
    start = time.perf_counter()
    data = prepared.data
    scores: dict[str, float] = {}

    def score_of(candidate: Candidate, module: Callable[[], Any]) -> float:
        # the score is of the float network: the same network at another precision is not
        # built or scored again
        key = json.dumps({**candidate.to_dict(), "precision": {}}, sort_keys=True)
        if key not in scores:
            scores[key] = screening_score(module(), data.train, data.val)
        return scores[key]

    def score(candidate: Candidate) -> float:
        return score_of(candidate, lambda: prepared.compress(candidate).module)

    def evaluate(candidate: Candidate) -> tuple[float, float]:
        compressed = prepared.compress(candidate)
        latency = compressed.estimate(prepared.latency_model).latency_ms
        return score_of(candidate, lambda: compressed.module), latency

    def latency(candidate: Candidate) -> float:
        estimate = prepared.estimate_ms(candidate)
        if measure is None or not near_budget(estimate, budget_ms):
            return estimate
        return measure(candidate)

    target_ms = budget_ms if measure is None else budget_ms * (1.0 - MEASURED_HEADROOM)
    chosen = allocate_precisions(prepared.bound, evaluate, target_ms, latency, score)
    seconds = time.perf_counter() - start
    if chosen is None:
        _logger.info("latency-aware allocation: nothing fits %.3f ms", budget_ms)
        return None
    precision, groups, found = chosen
    _logger.info("latency-aware allocation in %.0f s: %.3f ms (budget %.3f), %s, keep "
                 "ratios %s", seconds, found.latency_ms, budget_ms, precision,
                 ", ".join(f"{g} {r:g}" for g, r in found.keep.items()))
    table = {g.group: {f"{r:g}": (g.latency_at(r), g.score.get(r)) for r in g.ratios}
             for g in groups}
    return AllocationRecord(dict(found.keep), dict(found.params), found.latency_ms,
                            found.predicted_loss, table, seconds, precision)


def allocation_params(bound: BoundSpace, allocation: AllocationRecord) -> dict[str, Any]:
    """The Optuna parameters of ``allocation`` (every other parameter as in the unpruned
    candidate at the allocation's precision)."""
    return {**uniform_params(bound, 1.0, allocation.precision), **allocation.params}


#: At most this many depths of the shallower networks :func:`uniform_grid_params` seeds.
GRID_DEPTHS = 8


def uniform_grid_params(bound: BoundSpace) -> list[dict[str, Any]]:
    """The parameters of uniform pruning at every keep ratio of the space's grid, at each
    whole-network precision the allocation weighs (:func:`allocation_precisions`); where the
    space drops residual blocks, also shallower networks (1, 2... of them dropped, evenly
    through the network: :func:`evenly`; up to :data:`GRID_DEPTHS` depths) at full width and
    at the grid's middle ratio.

    The shallow ones are the fast end of the space. A screening sampler that learns from
    scores rarely goes there (adaptive BatchNorm scores them near a guess), yet finetuning
    recovers much of them: in three CIFAR-10 screenings of resnet20 at half its latency,
    nothing faster than 0.18-0.23 ms was screened, while random search finetuned networks
    of 0.08-0.15 ms (six of seven blocks dropped) to 0.37-0.41."""
    ratios = sorted({v for p in bound.channel_params if p.param is not None
                     for v in p.value.grid()}, reverse=True)
    blocks = [p.target for p in bound.depth_params
              if p.param is not None and min(p.value.grid()) == 0.0]
    depths = min(GRID_DEPTHS, len(blocks))
    counts = sorted({math.ceil(i * len(blocks) / depths) for i in range(1, depths + 1)})
    widths = sorted({ratios[0], ratios[len(ratios) // 2]}, reverse=True) if ratios else [1.0]
    grid = []
    for precision in allocation_precisions(bound):
        grid += [uniform_params(bound, r, precision) for r in ratios]
        grid += [uniform_params(bound, r, precision, drop=evenly(blocks, k))
                 for r in widths for k in counts]
    return grid
