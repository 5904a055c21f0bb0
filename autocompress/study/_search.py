"""Running (or resuming, or joining) a search."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from autocompress._io import write_bytes_atomic
from autocompress.evaluation import TrainSettings
from autocompress.exceptions import BudgetError, CheckpointError, RunError
from autocompress.hardware import HardwareProfile, LatencyModel
from autocompress.models import resolve_model
from autocompress.settings import Augmentation
from autocompress.space import Candidate
from autocompress.study._allocation import (
    allocation_params,
    compute_allocation,
    uniform_grid_params,
)
from autocompress.study._baseline import BASELINE_TRAINING, prepare_baseline
from autocompress.study._config import (
    RunFolder,
    SearchConfig,
    check_same_identity,
    finetune_recovery,
    identity,
    sha256_file,
)
from autocompress.study._front import ParetoFront
from autocompress.study._objective import SEEDED_ATTR, TRIAL_ERRORS, Objective
from autocompress.study._pick import load_front, run_reference
from autocompress.study._prepare import (
    Measurer,
    Prepared,
    fastest_candidates,
    first_run_info,
    for_device,
    load_profile,
    load_space,
    local_profile,
    measurer,
    resolve_augmentation,
    search_data,
    seed_params,
)
from autocompress.study._records import Calibration, RunIdentity, RunInfo, TrialRecord
from autocompress.study._screen import Recovery, Screening, picks_best
from autocompress.study._storage import GRACE_S, fail_stale_trials, open_storage, open_study
from autocompress.transforms import find_channel_groups, find_residual_blocks, sparsifiable_layers

__all__ = ["search"]

_logger = logging.getLogger("autocompress")

#: The study user attribute holding the run's :class:`RunInfo`, shared by all its workers.
RUN_ATTR = "autocompress_run"


@dataclass
class _Setup:
    """A search's inputs, resolved: the run folder, the study, and everything prepared."""

    folder: RunFolder
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    ident: RunIdentity
    prepared: Prepared
    profile: HardwareProfile
    profile_src: Path
    space_src: Path
    augmentation: Augmentation


def search(config: SearchConfig) -> ParetoFront:
    """Run (or resume) the search ``config`` describes and return its Pareto front.

    Everything is kept in ``config.out``; running the same search again resumes it and
    keeps every completed trial.
    """
    setup = _setup(config)
    measure = measurer(setup.profile)
    info = _shared_info(config, setup, measure)
    prepared = setup.prepared.with_latency_model(
        _at_run_speed(info, measure).apply(setup.prepared.latency_model))
    budget_ms = info.budget.latency_ms
    screening = None
    if config.screen_count and prepared.bound.compresses:
        screening = Screening(prepared, budget_ms,
                              open_storage(setup.folder.storage_url(config.storage),
                                           heartbeat=False),
                              f"{config.study}-screening", config.seed, config.sampler,
                              measure=_measure_params(prepared, measure))
    fresh = not setup.study.trials
    seeds = uniform_seeds(prepared, budget_ms, measure) if fresh else []
    if screening is None:
        if info.allocation is not None and fresh:
            seeds.append(("latency-aware allocation",
                          allocation_params(prepared.bound, info.allocation)))
        _enqueue(setup.study, seeds)
    else:
        # with screening, the allocation is screened like any candidate and finetuned only
        # if it ranks among the best: every finetuned step counts against the pick's
        _screen_and_seed(setup.study, screening, prepared, config, info, seeds)
    objective = Objective(
        prepared=prepared, budget_ms=budget_ms,
        finetune=TrainSettings(steps=config.finetune_steps, batch_size=config.batch_size,
                               lr=config.finetune_lr, augmentation=setup.augmentation,
                               precision=config.train_precision,
                               seed=config.seed),   # the run's; each trial's: trial_seed
        trial_dir=setup.folder.trial_dir, measure=measure, objectives=config.objectives,
        screen=screening.score if screening is not None else None,
        recovery=finetune_recovery(config.finetune_distill),
        on_record=_Progress(setup.study, config.trials, budget_ms))
    refill = None
    if screening is not None:
        ceiling = info.baseline.accuracy
        refill = functools.partial(_queue_screened, setup.study, screening, ceiling)
    _optimize(setup.study, objective, config.trials, refill)
    return load_front(setup.folder.path, storage=config.storage)


def warn_if_bf16_is_emulated(device: Mapping[str, Any] | None = None) -> bool:
    """Warn (and return True) when this CPU (``device``: :func:`describe_device`'s record)
    lists its features and none gives it bfloat16 arithmetic: bf16 training is then slower
    than fp32. Silent where the features are unknown."""
    from autocompress.hardware._device import BF16_FEATURES, describe_device

    features = (describe_device() if device is None else device).get("features")
    if features is None or BF16_FEATURES.intersection(features):
        return False
    _logger.warning("--train-precision bf16: this CPU has no bfloat16 arithmetic (none of %s "
                    "in its features), so training will be slower than in fp32; use fp32 "
                    "here", ", ".join(sorted(BF16_FEATURES)))
    return True


def _setup(config: SearchConfig) -> _Setup:
    folder = RunFolder(Path(config.out))
    resuming = folder.exists()
    if resuming:
        folder = RunFolder.open(config.out)
    folder.path.mkdir(parents=True, exist_ok=True)
    augmentation = resolve_augmentation(config.augment, config.data)
    space, space_src = load_space(config.space, config, augmentation)
    data = search_data(config, resumed=folder.info)
    if augmentation.enabled and len(data.input_shape) == 4:
        augmentation.check_fits(*data.input_shape[2:])  # before anything is trained
    if config.train_precision == "bf16":
        warn_if_bf16_is_emulated()
    profile_copy = folder.path / "profile.json"
    if config.profile is not None:
        profile_src = Path(config.profile)
    elif resuming and profile_copy.is_file():
        profile_src = profile_copy
    else:
        profile_src = local_profile(config.threads, tuple(sorted(space.precisions)))
    profile = load_profile(profile_src, space)
    space = for_device(space, profile)
    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        raise CheckpointError(f"checkpoint {config.checkpoint} does not exist")
    ident = identity(config, space_sha=hashlib.sha256(space_src.read_bytes()).hexdigest(),
                     profile_sha=sha256_file(profile_src),
                     checkpoint_sha=sha256_file(Path(config.checkpoint))
                     if config.checkpoint else None, augmentation=augmentation.spec())
    storage = open_storage(folder.storage_url(config.storage))  # fail fast on a bad URL
    # Workers sharing a study must not draw the same random candidates: with an explicit
    # storage each worker's sampler seed also depends on its process id.
    worker_seed = config.seed + (os.getpid() if config.storage else 0)
    study = open_study(storage, config.study, worker_seed, config.trials, config.sampler,
                       len(config.objectives))
    shared = _stored_info(study) or folder.info
    if shared is not None:
        _check_joinable(shared, ident, config, folder.path)
    baseline = prepare_baseline(resolve_model(config.model), data, checkpoint=config.checkpoint,
                                seed=config.seed, training=dataclasses.replace(
                                    BASELINE_TRAINING, augmentation=augmentation,
                                    precision=config.train_precision))
    # a space without channel rules needs no dependency tracing (which some models refuse)
    example = torch.zeros(data.input_shape)
    groups = find_channel_groups(baseline.module, example) if space.channel_rules else []
    # sparsity makes nothing faster on dense kernels: searched only when size is an objective
    search_sparsity = "size" in config.objectives
    if space.sparsity_rules and not search_sparsity:
        _logger.info("the space's sparsity rules are not searched: sparsity does not change "
                     "latency on %s; add size to --objectives to search it", profile.backend)
    blocks = find_residual_blocks(baseline.module, example) if space.depth_rules else []
    bound = space.bind([g.name for g in groups], sparsifiable_layers(baseline.module, example),
                       sparsity=search_sparsity, blocks=[b.name for b in blocks])
    if not bound.distributions and bound.student_space is None:
        raise RunError(f"the search space {space_src} leaves nothing to search for this model")
    prepared = Prepared(data, baseline, bound, LatencyModel(profile), tuple(groups))
    return _Setup(folder, study, storage, ident, prepared, profile, profile_src, space_src,
                  augmentation)


def _stored_info(study: optuna.Study) -> RunInfo | None:
    stored = study.user_attrs.get(RUN_ATTR)
    return RunInfo.from_dict(stored, "the study's run record") if stored is not None else None


def _check_joinable(shared: RunInfo, ident: RunIdentity, config: SearchConfig,
                    where: Path) -> None:
    check_same_identity(shared.identity, ident, where)
    budget = shared.budget
    if (config.latency_budget_ms is not None and budget.source == "given"
            and abs(budget.latency_ms - config.latency_budget_ms) > 1e-9):
        raise RunError(f"{where} was searched with --latency-budget-ms {budget.latency_ms}; "
                       "use it again to resume, or a new --out folder (or --study) for another "
                       "budget")


def _shared_info(config: SearchConfig, setup: _Setup, measure: Measurer | None = None
                 ) -> RunInfo:
    """The run's record: settled on the first run (baseline measured, estimate calibrated,
    budget checked against the fastest model the space allows) and kept in the study, so
    every worker and every rerun uses the same; ``run.json`` is its copy. ``measure`` gets
    the run's baseline as its reference once it is known."""
    baseline_onnx = setup.folder.path / "baseline" / "model.onnx"
    info = _stored_info(setup.study) or setup.folder.info
    if info is None:
        info = first_run_info(config, setup.prepared, setup.profile, setup.profile_src,
                              setup.ident, setup.space_src, baseline_onnx)
        if measure is not None:
            measure.refer_to(run_reference(info.baseline, baseline_onnx),
                             fastest=info.budget.source == "given")
            if measure.fastest and measure.reference is not None:
                measure(measure.reference.onnx)   # the baseline again: a slow spell shows here
        calibrated = setup.prepared.with_latency_model(
            _at_run_speed(info, measure).apply(setup.prepared.latency_model))
        if info.fastest_estimate_ms > info.budget.latency_ms:
            _check_fastest_fits(info, calibrated, measure, setup.space_src)
        if config.allocate and setup.prepared.bound.compresses:
            info = dataclasses.replace(info, allocation=compute_allocation(
                calibrated, info.budget.latency_ms, _measure_candidate(calibrated, measure)))
        if _stored_info(setup.study) is None:
            setup.study.set_user_attr(RUN_ATTR, info.to_dict())
        # another worker may have been first: everyone uses what the study holds
        info = _stored_info(optuna.load_study(study_name=config.study,
                                              storage=setup.storage)) or info
    if setup.folder.info != info:
        # other workers may write the same files at the same time: atomic copies
        for source, copy in ((setup.profile_src, setup.folder.path / "profile.json"),
                             (setup.space_src, setup.folder.path / "space.yaml")):
            if source.resolve() != copy.resolve():
                write_bytes_atomic(copy, source.read_bytes())
        setup.folder.save(info)
    if measure is not None:
        measure.refer_to(run_reference(info.baseline, baseline_onnx),
                         fastest=info.budget.source == "given")
    return info


def _at_run_speed(info: RunInfo, measure: Measurer | None) -> Calibration:
    """The run's calibration at the speed its measurements are scaled to.

    With a budget given in milliseconds, a measurement is scaled to the fastest the baseline
    has run in this run (:class:`~autocompress.study._prepare.Measurer`); the calibration
    was fitted at the speed of its own pass. Where the baseline has since run faster, that
    pass was in a slow spell, and its estimates are scaled down alike. In one CIFAR-10
    search at 30% the pass measured the baseline at 0.839 ms (0.72-0.74 in the minutes
    around it); its estimates stayed at that speed, 16% over the measurements, which were
    scaled to the 0.726 ms the baseline ran at two minutes later, and every candidate
    finetuned lay at 0.14-0.16 ms against a 0.216 ms budget."""
    calibration = info.calibration
    reference = measure.reference if measure is not None else None
    if (reference is None or not measure.fastest or not calibration.applied
            or info.baseline.latency_source != "measured"):
        return calibration
    ratio = reference.latency_ms / info.baseline.latency_ms
    if ratio >= 1.0:
        return calibration
    if ratio < 1.0 - SPEED_NOTED:
        _logger.info("the baseline has run at %.3f ms, %.0f%% faster than in the calibration's "
                     "pass (%.3f ms): estimates are scaled to that speed", reference.latency_ms,
                     100 * (1.0 - ratio), info.baseline.latency_ms)
    return calibration.at_speed(ratio)


#: How much faster than in the calibration's pass the baseline must have run for the search
#: to say so (:func:`_at_run_speed`; smaller changes are applied silently).
SPEED_NOTED = 0.03


def _check_fastest_fits(info: RunInfo, calibrated: Prepared, measure: Measurer | None,
                        space_src: Path) -> None:
    """Refuse a budget below the fastest model the space allows, the estimate being over
    it: measured first where the device is this machine, since a calibration fitted while
    the machine's speed drifted can put that model over a budget it meets (one default
    search on mnist: 0.372 ms estimated against 0.330)."""
    budget_ms = info.budget.latency_ms
    measured = None
    if measure is not None:
        measure_candidate = _measure_candidate(calibrated, measure)
        assert measure_candidate is not None
        measured = min(measure_candidate(c) for c in fastest_candidates(calibrated.bound))
        if measured <= budget_ms:
            _logger.warning(
                "the fastest model this search space can produce is estimated at %.3f ms, over "
                "the %.3f ms budget, but measures %.3f ms: the search goes on; candidates "
                "estimated near the budget are measured", info.fastest_estimate_ms, budget_ms,
                measured)
            return
    raise BudgetError(
        f"the latency budget {budget_ms:.3f} ms is below the fastest model this search space "
        f"can produce ({info.fastest_estimate_ms:.3f} ms estimated"
        + (f", {measured:.3f} ms measured" if measured is not None else "")
        + f"); raise --latency-budget-ms or allow smaller keep ratios in {space_src}")


def uniform_seeds(prepared: Prepared, budget_ms: float,
                  measure: Callable[[bytes], float] | None) -> list[tuple[str, dict[str, Any]]]:
    """What a user would do by hand: uniform pruning that fits the budget (and, where the
    space quantizes, uniform pruning quantized all-int8), each with its ``seeded`` label."""
    seeds = []
    for precision in ("fp32", "int8"):
        if precision not in prepared.bound.space.precisions:
            continue
        params = seed_params(prepared, budget_ms, measure, precision)
        if params:
            seeds.append((f"uniform keep ratio, {precision}", params))
    return seeds


def _enqueue(study: optuna.Study, seeds: list[tuple[str, dict[str, Any]]]) -> None:
    """Queue ``seeds`` (label, parameters) as the study's next trials, in order."""
    for label, params in seeds:  # skip_if_exists: workers starting together enqueue it once
        study.enqueue_trial(params, user_attrs={SEEDED_ATTR: label}, skip_if_exists=True)


def _measure_candidate(prepared: Prepared, measure: Callable[[bytes], float] | None
                       ) -> Callable[[Candidate], float] | None:
    """A candidate -> its measured latency, as the objective measures it (``None`` where the
    device is not this machine)."""
    if measure is None:
        return None

    def measure_candidate(candidate: Candidate) -> float:
        compressed = prepared.compress(candidate)
        return measure(compressed.rewrite(compressed.structure_onnx(), prepared.calibration))

    return measure_candidate


def _measure_params(prepared: Prepared, measure: Callable[[bytes], float] | None
                    ) -> Callable[[Mapping[str, Any]], float] | None:
    """Parameters -> the measured latency of the candidate they make (see
    :func:`_measure_candidate`)."""
    by_candidate = _measure_candidate(prepared, measure)
    if by_candidate is None:
        return None
    return lambda params: by_candidate(prepared.bound.candidate_from_params(dict(params)))


def _screen_and_seed(study: optuna.Study, screening: Screening, prepared: Prepared,
                     config: SearchConfig, info: RunInfo,
                     seeds: list[tuple[str, dict[str, Any]]]) -> None:
    """Screen ``config.screen_count`` candidates (the uniform ``seeds``, the uniform grid
    with its shallower networks, :func:`uniform_grid_params`, and the allocation first),
    then queue the uniform seed that screens best (:meth:`Screening.best`; where the space
    quantizes there is one per precision, at the same latency: one hand-made reference is
    finetuned, not two). The screening's choices are queued one at a time as trials finish
    (:func:`_queue_screened`)."""
    bound = prepared.bound
    grid = [params for _, params in seeds] + uniform_grid_params(bound)
    if info.allocation is not None:
        grid.append(allocation_params(bound, info.allocation))
    screening.run(config.screen_count, grid)
    if len(seeds) > 1:
        seeds = _best_seed(screening, seeds)
    _enqueue(study, seeds)


#: How a trial queued from the screening is labelled (:data:`SEEDED_ATTR`).
_SCREENED = "screened"


def _queue_screened(study: optuna.Study, screening: Screening, ceiling: float) -> None:
    """Queue the screening's next choice (:meth:`Screening.choose`) where no trial waits:
    its hypervolume picks weigh each score by what finetuning is expected to make of it,
    fitted on the trials finetuned so far (:class:`Recovery`, ``ceiling`` the uncompressed
    model's accuracy). Chosen one at a time, each choice learns from every finetune before
    it; a trial measured over the budget takes no turn (:func:`_measured_over`). Nothing is
    queued once the screening has nothing left to offer: the study's sampler proposes the
    trials left."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
        return
    over = {t.number for t in trials if _measured_over(t)}
    for trial in trials:
        if trial.number in over:
            screening.pass_over(trial.params)
    # an enqueued trial's parameters wait in its system attributes until it runs
    queued = [t.system_attrs.get("fixed_params", t.params)
              for t in trials if t.number not in over]
    earlier = sum(1 for t in trials if t.number not in over
                  and str(t.user_attrs.get(SEEDED_ATTR, "")).startswith(_SCREENED))
    recovery = Recovery.fit([(r.screening_score, r.accuracy) for r in _finetuned(study)
                             if r.screening_score is not None], ceiling)
    for chosen in screening.choose(1, exclude=queued, start=earlier, recovery=recovery):
        if not picks_best(earlier) and recovery.trials:
            _logger.info("finetuning won back %.0f%% x sqrt(score / %.3f) of the accuracy "
                         "the screening scores lost (%d trials): screening trial %d, score "
                         "%.3f at %.3f ms, is expected at %.3f", 100 * recovery.rate,
                         recovery.ceiling, recovery.trials,
                         chosen.number, chosen.score, chosen.latency_ms,
                         recovery.expected(chosen.score))
        study.enqueue_trial(dict(chosen.params), user_attrs={
            SEEDED_ATTR: f"{_SCREENED} (trial {chosen.number} of the screening study)"},
            skip_if_exists=True)


def _measured_over(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` ran and was over the budget, not finetuned. The screening treats its
    network as one it measured over the budget itself (:meth:`Screening.pass_over`): out of
    the front its spread picks add to, and no turn taken (:func:`picks_best`), so a
    best-score choice measured over the budget as a trial gives its turn to the next best.
    In a CIFAR-10 search at 30% of the baseline the best score's turn went to the
    allocation, estimated 11% under the budget and measured 12% over; the two choices after
    it spread the front, and the search's best trial was a network at half the budget."""
    if trial.state != optuna.trial.TrialState.COMPLETE:
        return False
    record = TrialRecord.of(trial)
    return record is not None and not record.finetuned


def _best_seed(screening: Screening, seeds: list[tuple[str, dict[str, Any]]]
               ) -> list[tuple[str, dict[str, Any]]]:
    """Of the uniform ``seeds``, the one the screening ranks best; all of them where one was
    not scored (estimated over the budget, say: nothing to rank it by)."""
    feasible = screening.feasible()
    found = [next((s for s in feasible if dict(s.params) == params), None) for _, params in seeds]
    if any(s is None for s in found):
        return seeds
    best = screening.best([s for s in found if s is not None])
    kept = [seed for seed, s in zip(seeds, found, strict=True) if s is best]
    _logger.info("uniform seeds screened: %s; finetuning %s",
                 ", ".join(f"{label} {s.score:.3f} at {s.latency_ms:.3f} ms"
                           for (label, _), s in zip(seeds, found, strict=True) if s),
                 kept[0][0])
    return kept


class _Progress:
    """Logs each trial: accuracy, latency, and the search's progress and time left."""

    def __init__(self, study: optuna.Study, trials: int, budget_ms: float) -> None:
        self.study, self.trials, self.budget_ms = study, trials, budget_ms
        self.started = time.perf_counter()
        self.done_at_start = len(_finetuned(study))

    def __call__(self, number: int, record: TrialRecord) -> None:
        finetuned = _finetuned(self.study)
        if not record.finetuned:
            _logger.info("trial %d: over budget (%.3f ms %s > %.3f), not finetuned", number,
                         record.latency_ms, record.latency_source, self.budget_ms)
            return
        done = len(finetuned) + 1
        best = max([r.accuracy for r in finetuned] + [record.accuracy])
        rate = (time.perf_counter() - self.started) / max(done - self.done_at_start, 1)
        left = max(self.trials - done, 0) * rate
        _logger.info("trial %d: accuracy %.4f, latency %.3f ms (%s, budget %.3f) "
                     "[%d/%d done, best %.4f, ~%.0f min left]", number, record.accuracy,
                     record.latency_ms, record.latency_source, self.budget_ms, done,
                     self.trials, best, left / 60)


def _finetuned(study: optuna.Study) -> list[TrialRecord]:
    """The records of the finetuned trials within budget."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [r for t in trials if (r := TrialRecord.of(t)) is not None and _within(t, r)]


def _within(trial: optuna.trial.FrozenTrial, record: TrialRecord) -> bool:
    """Finetuned and within budget. A trial this search ran is finetuned exactly when it is
    within budget; one retargeted from another device's search is finetuned and may be over
    this budget (its constraint says so)."""
    return record.finetuned and all(v <= 0.0 for v in trial.constraints.values())


def _optimize(study: optuna.Study, objective: Objective, trials: int,
              refill: Callable[[], None] | None = None) -> None:
    """Run trials one at a time until ``trials`` finetuned trials within budget exist;
    ``refill`` (if given) may queue the next trial before each.

    Trials running in other workers may complete the count: wait for them rather than
    overshoot. A dead worker's trial is failed (and retried once) after the grace period.
    Stops early when the budget rejects too many candidates or too many trials fail.
    """
    max_over_budget = max(30, 3 * trials)
    waiting = False
    while True:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        records = [(t, r) for t in complete if (r := TrialRecord.of(t)) is not None]
        finetuned = sum(1 for t, r in records if _within(t, r))
        if finetuned >= trials:
            return
        skipped = sum(1 for _, r in records if not r.finetuned)   # over budget, not trained
        if skipped >= max_over_budget:
            _logger.warning("stopping: %d candidates were over budget; the budget leaves "
                            "little room in this space", skipped)
            return
        failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if len(failed) >= max(10, trials):
            reason = failed[-1].user_attrs.get("fail_reason", "see the study's failed trials")
            raise RunError(f"{len(failed)} trials failed, the last because: {reason}; "
                           "stopping the search (completed trials are kept)")
        fail_stale_trials(study)
        running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        if running and finetuned + running >= trials:
            if not waiting:
                _logger.info("waiting for %d trial(s) running elsewhere (a dead worker's "
                             "trial is failed after %d s)", running, GRACE_S)
            waiting = True
            time.sleep(2.0)
            continue
        waiting = False
        if refill is not None:
            refill()
        study.optimize(objective, n_trials=1, catch=TRIAL_ERRORS)
