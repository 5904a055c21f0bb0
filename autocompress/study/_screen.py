"""Cheap screening: many candidates scored without training, the best few finetuned.

Every screened candidate is compressed, its latency estimated, and, within the budget, scored
by adaptive BatchNorm (:func:`~autocompress.evaluation.screening_score`: BatchNorm statistics
re-estimated on a few training batches, then accuracy on part of the validation split; no
weight is trained). The screening study is an Optuna study of its own (``<study>-screening``,
in the same storage: maximise the score, minimise latency, the budget as a constraint), so
its sampler learns from hundreds of cheap trials. The candidates to finetune are then taken
one at a time, as trials finish: the first and every third among the best-scoring ones, the
others where they add the most to the front of those chosen (hypervolume up to the budget,
by the accuracy each score is expected to reach after finetuning: :class:`Recovery`, fitted
on the trials finetuned so far), so the finetuned front covers the latencies below the budget
where finetuning finds accuracy. A choice measured over the budget, in the screening or as a
trial, takes no turn: the next best score follows a best score that did not fit.

Where the device is this machine, the budget near its edge is judged as the search judges it,
by measurement: a candidate estimated up to :data:`NEAR_BUDGET_MARGIN` over the budget is
scored too, and measured if it is chosen. The latency-aware allocation, measured to fit when
it was made, was otherwise lost whenever the estimate put it just over (on one CPU, in two
seeds of three: estimated 5% over, measured 4-10% under).

"Best-scoring" allows for the score's own noise: it is an accuracy on a few hundred
validation samples, so scores within one standard error of the best are told apart by the
latency they spend, and the one that keeps the most of the budget (the most capacity to
recover in finetuning) goes first. Near an easy budget the scores of mild prunings sit at
the baseline's, and the score alone picked candidates far below the budget.

Different parameters can build one network: channel ratios that round to the same count
(where the device's channel block is 16, a 16-channel layer keeps 8 or 16 channels whatever
its ratio), or the ratio of a group inside a dropped residual block, change nothing. The
sampler proposes such copies again and again (in the CIFAR-10 screenings of the int8 space,
four proposals in five); each screened trial records the network it built
(:data:`NETWORK_ATTR`), and one network is chosen for finetuning once. A proposal whose channel
ratios round to the counts of one built before (:func:`plan_key`) is told that network's
estimate and score without being built again: building took 0.2 s a proposal, and the copies
took two thirds of a screening's time. The screening runs in an in-memory study, stored in the
search's storage when it ends or stops: in SQLite every parameter a trial is given is a write
of its own, and those writes took half of what was left. Together: 127 s -> 44 s for one
CIFAR-10 screening of 73 networks (500 proposals) in the int8 space, the same trials stored.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from autocompress.evaluation import ScreeningSettings, screening_score
from autocompress.space import Candidate
from autocompress.study._objective import CONSTRAINT
from autocompress.study._prepare import MEASURED_HEADROOM, Prepared, near_budget
from autocompress.study._storage import open_study
from autocompress.transforms import (
    ChannelGroup,
    CompressedModel,
    apply_sparsity,
    kept_channels,
    make_sparsity_permanent,
)

__all__ = ["NETWORK_ATTR", "PROPOSALS_PER_NETWORK", "SCORE_ATTR", "Recovery", "Screened",
           "Screening", "hypervolume_gain", "network_key", "plan_key"]

_logger = logging.getLogger("autocompress")

#: User attribute of a screening trial (and of the finetuned trial enqueued from it).
SCORE_ATTR = "screening_score"
#: User attribute of a screening trial: :func:`network_key` of the network it built.
NETWORK_ATTR = "network"

#: A screening of N networks stops after this many times N proposals: the sampler proposes
#: networks it has screened (in one CIFAR-10 screening of 100 trials, 47 networks, one of
#: them proposed 16 times), and a small space holds fewer than N.
PROPOSALS_PER_NETWORK = 5

#: A plan's settings that leave a layer as it was.
_NEUTRAL = {"sparsity": 0.0, "rank": 1.0, "precision": "fp32"}


def network_key(compressed: CompressedModel) -> str:
    """What identifies a built network: its weights (names, shapes and values: which blocks
    and channels it kept) and what its plan still does to them later (sparsity attached for
    training, precision at export...), the settings that change nothing left out. Channel
    ratios that round to the same count, or name a group inside a dropped block, build the
    same network and get the same key."""
    plan = compressed.candidate.to_dict()
    for name in ("channel_keep", "depth"):     # the weights say what they did
        plan.pop(name, None)
    for name, neutral in _NEUTRAL.items():
        if name in plan:
            plan[name] = {k: v for k, v in plan[name].items() if v != neutral}
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode())
    for name, tensor in compressed.module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def plan_key(candidate: Candidate, groups: Sequence[ChannelGroup]) -> str | None:
    """What identifies a plan before it is built: the candidate with each channel ratio
    replaced by the channel count it keeps (:func:`~autocompress.transforms.kept_channels`,
    as channel pruning rounds it). Equal keys build one network; different keys may still
    build one (a ratio inside a dropped block), which :func:`network_key` tells once built.
    ``None`` where the plan cannot be told from its parameters (a student, groups this model
    does not have). Channel pruning keeps each group's blocks whatever else it cuts (see
    :func:`~autocompress.transforms.kept_channels`), so the counts are those it keeps."""
    by_name = {g.name: g for g in groups}
    if candidate.student is not None or not set(candidate.channel_keep) <= set(by_name):
        return None
    plan = candidate.to_dict()
    plan["channel_keep"] = {
        name: kept_channels(g.channels, candidate.channel_keep.get(name, 1.0),
                            candidate.round_to, candidate.min_channels, g.blocks)
        for name, g in by_name.items()}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Screened:
    """A screened candidate: its Optuna parameters, score and estimated latency."""

    number: int
    params: Mapping[str, Any]
    score: float
    latency_ms: float
    #: :func:`network_key` of what it built (``None`` in a study screened before it was kept)
    network: str | None = None

    @property
    def identity(self) -> str | int:
        """What tells networks apart: the network's key, else the trial."""
        return self.network if self.network is not None else self.number


class Screening:
    """The screening study of a search and the screening of one candidate.

    ``measure`` (parameters -> measured ms) is given where the profiled device is this
    machine: candidates near the budget are then judged by measurement, as the search's
    trials are."""

    def __init__(self, prepared: Prepared, budget_ms: float, storage: optuna.storages.BaseStorage,
                 name: str, seed: int, sampler: str,
                 settings: ScreeningSettings | None = None,
                 measure: Callable[[Mapping[str, Any]], float] | None = None) -> None:
        self.prepared, self.budget_ms, self.measure = prepared, budget_ms, measure
        self.settings = settings or ScreeningSettings()
        self.study = open_study(storage, name, seed, trials=100, sampler=sampler)
        #: plan key -> (network key, estimated ms) of what this screening built
        self._built: dict[str, tuple[str, float]] = {}
        #: the networks chosen and measured over the budget
        self._over: set[str | int] = set()

    def score(self, module: Any) -> float:
        """The adaptive-BatchNorm score of ``module`` (a copy is recalibrated)."""
        data = self.prepared.data
        return screening_score(copy.deepcopy(module), data.train, data.val,
                               settings=self.settings)

    def run(self, total: int, seeds: Sequence[Mapping[str, Any]] = ()) -> None:
        """Screen until the study holds ``total`` distinct networks (``seeds`` first), or
        :data:`PROPOSALS_PER_NETWORK` times as many trials (a small space holds fewer). A
        proposal of a network already screened is told its score again, not scored, and
        does not count. The screening runs in memory and is stored when it ends: workers
        screening at the same time see each other's candidates only then."""
        done = self._complete()
        scores = {_identity(t): float(t.values[0]) for t in done}
        limit = PROPOSALS_PER_NETWORK * total
        if len(scores) >= total or len(done) >= limit:
            return
        # screened in memory, stored when done (or stopped): in a database every parameter
        # of a trial is a write of its own, half of a screening's time on SQLite
        work = optuna.create_study(directions=self.study.directions, sampler=self.study.sampler)
        work.add_trials(done)
        for params in seeds:
            work.enqueue_trial(dict(params), skip_if_exists=True)
        start, count, known = time.perf_counter(), 0, len(scores)
        try:
            while len(scores) < total and len(done) + count < limit:
                self._screen_one(scores, work)
                count += 1
        finally:
            self.study.add_trials(work.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))[len(done):])
        seconds = time.perf_counter() - start
        new = len(scores) - known
        _logger.info("screened %d networks without training in %.0f s (%.0f per minute); %d "
                     "more proposals built a network already screened", new, seconds,
                     60 * new / max(seconds, 1e-9), count - new)

    def _screen_one(self, scores: dict[str | int, float] | None = None,
                    study: optuna.Study | None = None) -> None:
        """Ask, build, estimate and (where it may fit the budget) score one candidate in
        ``study`` (default: the screening study); ``scores`` (network -> score) gives the
        score of a network screened before, and gets this one's."""
        study = self.study if study is None else study
        trial = study.ask()
        candidate = self.prepared.bound.sample(trial)
        plan = plan_key(candidate, self.prepared.groups)
        compressed = None
        if plan is not None and plan in self._built:
            network, latency = self._built[plan]
        else:
            compressed = self.prepared.compress(candidate)
            latency = compressed.estimate(self.prepared.latency_model).latency_ms
            network = network_key(compressed)
            if plan is not None:
                self._built[plan] = (network, latency)
        trial.set_constraint(CONSTRAINT, latency - self.budget_ms)
        if scores is not None and network in scores:
            score = scores[network]
        else:
            if compressed is None:
                compressed = self.prepared.compress(candidate)
            score = 0.0
            if self._may_fit(latency):
                module = compressed.module
                if any(compressed.candidate.sparsity.values()):
                    apply_sparsity(module, compressed.candidate.sparsity)
                    make_sparsity_permanent(module)
                score = self.score(module)
            if scores is not None:
                scores[network] = score
        trial.set_user_attr(SCORE_ATTR, score)
        trial.set_user_attr(NETWORK_ATTR, network)
        study.tell(trial, [score, latency])

    def _complete(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False,
                                     states=(optuna.trial.TrialState.COMPLETE,))

    def _may_fit(self, latency_ms: float) -> bool:
        """Whether a candidate estimated at ``latency_ms`` may fit the budget: by the
        estimate, or, where the device can be measured, by a measurement near the budget."""
        return latency_ms <= self.budget_ms or (self.measure is not None
                                                and near_budget(latency_ms, self.budget_ms))

    def feasible(self) -> list[Screened]:
        """Every screened candidate that may fit the budget (:meth:`_may_fit`)."""
        return [Screened(t.number, t.params, float(t.values[0]), float(t.values[1]),
                         t.user_attrs.get(NETWORK_ATTR))
                for t in self._complete() if self._may_fit(t.values[1])]

    def choose(self, count: int, exclude: Sequence[Mapping[str, Any]] = (), start: int = 0,
               recovery: Recovery | None = None) -> list[Screened]:
        """``count`` candidates to finetune, skipping parameters in ``exclude`` (the trials
        already queued) and the networks they build: the best-scoring one left
        (:meth:`best`) first and every :data:`BEST_EVERY` choices after it, the one that adds
        the most to the front of those chosen and queued in between (:func:`hypervolume_gain`,
        by the accuracy ``recovery`` expects of each score after finetuning, default the score
        itself, and the estimate up to the budget). ``start`` is how many the screening chose
        before (:func:`picks_best`). Each network is chosen once, whatever parameters built it.

        The second rule spreads the finetuned trials over the latencies below the budget
        where finetuning is expected to find accuracy: a network expected to keep a fair
        accuracy far below the budget adds a large area, one expected near a guess adds
        little however fast. The search chooses one candidate at a time, with ``recovery``
        fitted on every trial finetuned before it (``_queue_screened``): by raw scores, the
        CIFAR-10 fp32 depth cell's spread picks stayed at 0.22 ms and more while random
        search's 0.08-0.15 ms networks (scored near 0.15, finetuned to 0.4) held the front's
        fast end.

        Where the device can be measured (``measure``), a candidate estimated within
        :data:`NEAR_BUDGET_MARGIN` of the budget, on either side, is measured before it is
        chosen, as the search would measure it, and passed over when it measures over the
        budget less :data:`MEASURED_HEADROOM`: the finetuning goes to candidates that will be
        finetuned, and will still fit when measured again at the pick.
        """
        measure = self.measure
        expect = recovery.expected if recovery is not None else (lambda s: s)
        skip = [dict(p) for p in exclude]
        pool = self.feasible()
        queued = [s for s in pool if dict(s.params) in skip]
        taken = {s.identity for s in queued} | self._over
        chosen: list[Screened] = []
        while len(chosen) < count:
            pool = [s for s in pool if s.identity not in taken]
            if not pool:
                break
            if picks_best(start + len(chosen)):
                pick = self.best(pool)
            else:
                front = [_expected(s, expect) for s in (*queued, *chosen)]
                pick = max(pool, key=lambda s: (
                    hypervolume_gain(front, _expected(s, expect), self.budget_ms), s.score))
            # its copies build the same network: chosen with it, or over the budget with it
            taken.add(pick.identity)
            if measure is None or self._fits_measured(pick, measure):
                chosen.append(pick)
            else:
                self._over.add(pick.identity)   # not measured again at the next choice
        return chosen

    def pass_over(self, params: Mapping[str, Any]) -> None:
        """Choose the network ``params`` build no more, and leave it out of the front the
        spread picks add to: its trial measured over the budget."""
        self._over |= {s.identity for s in self.feasible() if dict(s.params) == dict(params)}

    def best(self, pool: Sequence[Screened]) -> Screened:
        """Of the candidates whose score is within one standard error of the best score (an
        accuracy on :attr:`samples` images), the slowest: it keeps the most of the budget."""
        top = max(s.score for s in pool)
        error = math.sqrt(top * (1 - top) / self.samples)
        return max((s for s in pool if s.score >= top - error),
                   key=lambda s: (s.latency_ms, s.score))

    @property
    def samples(self) -> int:
        """How many validation samples a score is the accuracy on."""
        if self.prepared is None:
            return self.settings.val_samples
        return min(self.settings.val_samples, len(self.prepared.data.val))

    def _fits_measured(self, screened: Screened,
                       measure: Callable[[Mapping[str, Any]], float]) -> bool:
        if not near_budget(screened.latency_ms, self.budget_ms):
            return True
        measured = measure(screened.params)
        limit = self.budget_ms * (1.0 - MEASURED_HEADROOM)
        if measured <= limit:
            return True
        _logger.info("screening trial %d (score %.3f) measures %.3f ms, over %.3f (the budget "
                     "%.3f less %.0f%% headroom; estimated %.3f): not finetuned",
                     screened.number, screened.score, measured, limit, self.budget_ms,
                     100 * MEASURED_HEADROOM, screened.latency_ms)
        return False


#: How often the screening's choice goes to the best score (:meth:`Screening.choose`): the
#: first choice and every ``BEST_EVERY``-th after it; the others spread the front.
BEST_EVERY = 3


def picks_best(index: int) -> bool:
    """Whether the screening's choice number ``index`` (from 0) goes to the best score rather
    than to the largest gain in hypervolume (:meth:`Screening.choose`)."""
    return index % BEST_EVERY == 0


def _identity(trial: optuna.trial.FrozenTrial) -> str | int:
    """A screening trial's network (:data:`NETWORK_ATTR`), or, in a study screened before
    networks were recorded, the trial itself."""
    return trial.user_attrs.get(NETWORK_ATTR, trial.number)


@dataclass(frozen=True)
class Recovery:
    """What finetuning makes of a screening score: of what the score lost against
    ``ceiling`` (the uncompressed model's accuracy), it wins back ``rate`` x
    sqrt(score / ceiling), ``rate`` fitted on the trials finetuned so far (:meth:`fit`).

    Adaptive-BatchNorm scores rank candidates, but they compress on finetuning: in the
    CIFAR-10 resnet20 screenings, scores of 0.14-0.34 finetuned (100 steps) to 0.41-0.74,
    scores of 0.64-0.69 to 0.81-0.82. Taken as they are, they make a fast, damaged network
    look worth nothing, and the screening's spread pick stayed near the budget while random
    search's fast trials held the front's fast end.

    The share won back falls as the score falls: over 99 finetuned CIFAR-10 trials of the
    stored benchmark searches, about 90% of a loss of 0.05, 70% of a loss of 0.3, 30% of a
    loss of 0.7 (scores near a guess; ``benchmarks/recovery.py``). One share for every
    score, fitted on the near-lossless trials a search finetunes first, expected a network
    that scored 0.16 at 0.85 where it reached 0.36-0.39; each trial predicted from the
    trials of its search before it, the mean error was 0.121 and the worst over-promise
    0.48. With the share scaled by sqrt(score / ceiling): 0.053 and 0.13. For ``rate`` at
    most 1 the map is monotone in the score: the ranking by score stays as it was."""

    ceiling: float
    rate: float = 0.0
    #: how many finetuned trials it was fitted on
    trials: int = 0

    def expected(self, score: float) -> float:
        """The accuracy expected after finetuning a candidate that scored ``score``."""
        return score + self.rate * self._share(score)

    def _share(self, score: float) -> float:
        """What ``rate`` 1 wins back of the loss of ``score``: the loss x sqrt(score /
        ceiling)."""
        if self.ceiling <= 0.0:
            return 0.0
        return max(self.ceiling - score, 0.0) * math.sqrt(max(score, 0.0) / self.ceiling)

    @classmethod
    def fit(cls, pairs: Sequence[tuple[float, float]], ceiling: float) -> Recovery:
        """The rate (in [0, 1]) that best explains ``pairs`` of (screening score, accuracy
        after finetuning): least squares on what each trial won back against what rate 1
        would have (:meth:`_share`). Trials that lost nothing (or scored nothing) say nothing
        of the rate; none: rate 0."""
        unit = cls(ceiling, 1.0)
        lost = [(unit._share(score), accuracy - score) for score, accuracy in pairs]
        lost = [(x, y) for x, y in lost if x > 1e-9]
        if not lost:
            return cls(ceiling)
        rate = sum(x * y for x, y in lost) / sum(x * x for x, _ in lost)
        return cls(ceiling, min(max(rate, 0.0), 1.0), len(lost))


def _expected(screened: Screened, expect: Callable[[float], float]) -> Screened:
    return dataclasses.replace(screened, score=expect(screened.score))


def hypervolume_gain(front: Sequence[Screened], candidate: Screened, budget_ms: float) -> float:
    """How much ``candidate`` adds to the area (score x milliseconds below ``budget_ms``) that
    ``front`` dominates: the front's hypervolume from the reference point score 0 at the
    budget, with the candidate and without."""
    return _hypervolume([*front, candidate], budget_ms) - _hypervolume(front, budget_ms)


def _hypervolume(points: Sequence[Screened], budget_ms: float) -> float:
    """The area of score x milliseconds below ``budget_ms`` that ``points`` dominate
    (moocore, as :meth:`~autocompress.study.ParetoFront.hypervolume` computes a front's)."""
    inside = [(-p.score, p.latency_ms) for p in points if p.latency_ms < budget_ms]
    if not inside:
        return 0.0
    import moocore

    return float(moocore.hypervolume(inside, ref=[0.0, budget_ms]))
