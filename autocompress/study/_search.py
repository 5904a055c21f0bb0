"""Running a search, reading its front, and picking a model off it."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch

from autocompress._io import write_bytes_atomic, write_text_atomic
from autocompress._version import __version__
from autocompress.data import DataSplit, load_data
from autocompress.evaluation import EarlyStopping, TrainSettings, model_stats
from autocompress.exceptions import (
    BudgetError,
    CheckpointError,
    DataError,
    ProfileError,
    RunError,
)
from autocompress.hardware import HardwareProfile, LatencyModel, MeasureSettings, get_backend
from autocompress.hardware.backends import backend_for
from autocompress.hardware.export import export_onnx
from autocompress.hardware.latency import fit_calibration
from autocompress.hardware.profile import describe_device
from autocompress.hardware.profiler import GRID_NAME, profile_backend
from autocompress.models import resolve_model
from autocompress.space import DEFAULT_SPACE_PATH, BoundSpace, Candidate, SearchSpace
from autocompress.space._space import KIND_PARAM
from autocompress.study._baseline import BASELINE_TRAINING, prepare_baseline
from autocompress.study._cache import cache_dir
from autocompress.study._config import (
    RUN_FORMAT_VERSION,
    RunFolder,
    SearchConfig,
    check_same_identity,
    identity,
    redact_url,
    sha256_file,
)
from autocompress.study._front import FrontMember, ParetoFront, member_json
from autocompress.study._objective import (
    NEAR_BUDGET_MARGIN,
    TRIAL_ERRORS,
    Objective,
    TrialReport,
    build_structure,
    calibration_inputs,
    deployable_onnx,
    estimate_candidate,
)
from autocompress.transforms import find_channel_groups, sparsifiable_layers

if TYPE_CHECKING:
    from autocompress.study._refine import Refined

__all__ = ["PickResult", "load_front", "pick", "search"]

_logger = logging.getLogger("autocompress")

_PICK_MEASURE = MeasureSettings(max_time_s=3.0, min_runs=100, round_runs=50)
_BASELINE_MEASURE = MeasureSettings(max_time_s=2.0, min_runs=100, round_runs=50)
_NEAR_BUDGET_MEASURE = MeasureSettings(max_time_s=1.0, min_runs=60, round_runs=30)


# ------------------------------------------------------------------------------ profiles

def _is_local(profile: HardwareProfile) -> bool:
    """Whether ``profile`` was measured on this machine with the installed backend."""
    if profile.backend_settings.get("rpc"):
        return False   # measured on a remote device
    try:
        backend = backend_for(profile.backend, profile.backend_settings)
        version = backend.version()
    except Exception:  # backend not installed here, or settings it cannot take
        return False
    return dict(profile.device) == describe_device() and profile.backend_version == version


def _measurer(profile: HardwareProfile) -> Any:
    backend = backend_for(profile.backend, profile.backend_settings)

    def measure(onnx_bytes: bytes) -> float:
        return backend.measure_many([onnx_bytes], _NEAR_BUDGET_MEASURE, rounds=2)[0].median_ms

    return measure


def local_profile(threads: int, precisions: tuple[str, ...] = ("fp32",)) -> Path:
    """This CPU's ONNX Runtime profile (kernels at ``precisions``), measured once and
    cached."""
    backend = get_backend("onnxruntime", threads=threads)
    precisions = tuple(sorted(set(precisions) | {"fp32"}))
    material: tuple[Any, ...] = (describe_device(), backend.version(), backend.settings(),
                                 GRID_NAME)
    if precisions != ("fp32",):
        material += (precisions,)
    key = hashlib.sha256(repr(material).encode()).hexdigest()[:12]
    path = cache_dir("profiles") / f"onnxruntime-t{threads}-{key}.json"
    if path.is_file():
        return path
    _logger.info("profiling this CPU with ONNX Runtime (%d thread(s), %s); done once, cached "
                 "at %s", threads, "+".join(precisions), path)
    start = time.perf_counter()
    profile_backend(backend, path, precisions=precisions)
    _logger.info("profiled in %.0f s", time.perf_counter() - start)
    return path


# ------------------------------------------------------------------------------ search

@dataclass
class _Prepared:
    data: DataSplit
    baseline: torch.nn.Module
    bound: BoundSpace
    latency_model: LatencyModel


def _input_shape_check(data: DataSplit, shape: tuple[int, int, int, int] | None) -> DataSplit:
    if shape is None:
        return data
    if shape[0] != 1 or len(shape) != 4:
        raise DataError(f"--input-shape must be 1,C,H,W with batch 1, got {shape}")
    if shape[1] != data.input_shape[1]:
        raise DataError(f"--input-shape has {shape[1]} channels but the data ({data.name}) "
                        f"has {data.input_shape[1]} for this model")
    return data.resized(shape[2], shape[3])


def _uniform_params(bound: BoundSpace, ratio: float, precision: str = "fp32"
                    ) -> dict[str, Any]:
    """Parameters putting every channel group at the allowed value nearest below ``ratio``,
    every sparsity at its smallest allowed value and every layer at ``precision`` where
    allowed (post-training quantization)."""
    params: dict[str, Any] = {}
    if bound.student_space is not None:
        params[KIND_PARAM] = "compressed"
    for c in bound.precision_params:
        if c.param is not None:
            params[c.param] = precision if precision in c.choices else c.choices[0]
    if bound.method_param is not None and bound.method_param.param is not None:
        params[bound.method_param.param] = "ptq"
    for p in bound.channel_params:
        if p.param is None:
            continue
        values = sorted(p.value.grid())
        below = [v for v in values if v <= ratio + 1e-9]
        params[p.param] = below[-1] if below else values[0]
    for p in bound.sparsity_params:
        if p.param is not None:
            params[p.param] = min(p.value.grid())
    return params


def _structure(prepared: _Prepared, candidate: Candidate) -> bytes:
    """The fp32 ONNX structure of ``candidate`` (sparsity does not change the dense
    structure; precisions are applied by the estimate or by quantization)."""
    module, _ = build_structure(prepared.baseline, candidate, prepared.data)
    return export_onnx(module, torch.zeros(prepared.data.input_shape))


def _estimate(prepared: _Prepared, candidate: Candidate) -> float:
    return estimate_candidate(prepared.latency_model, _structure(prepared, candidate),
                              candidate)[0]


def _fastest_estimate(prepared: _Prepared) -> float:
    """The lowest estimate the space allows: smallest keep ratios at each offered precision,
    and the smallest student."""
    estimates = []
    if prepared.bound.compresses or prepared.bound.student_space is None:
        estimates += [_estimate(prepared, prepared.bound.extreme("min", precision))
                      for precision in sorted(prepared.bound.space.precisions)]
    if prepared.bound.student_space is not None:
        estimates += [_estimate(prepared, Candidate(student=plan.to_dict()))
                      for plan in prepared.bound.student_space.smallest()]
    return min(estimates)


_HEARTBEAT_S = 5
_GRACE_S = 15


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage for ``url`` with heartbeats: a worker killed mid-trial stops its
    heartbeat; after the grace period its trial is marked failed and retried once."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=_HEARTBEAT_S, grace_period=_GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=1),
            )
    except ImportError as exc:
        raise RunError(f"cannot open the study storage {redact_url(url)}: its database driver "
                       "is not installed (PostgreSQL: pip install 'autocompress[postgres]')"
                       ) from exc
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunError(f"cannot open the study storage {redact_url(url)}: "
                       f"{type(exc).__name__}: {_redact_text(reason, url)}; check the URL, that "
                       "the database server runs and that the folder exists") from exc


def _redact_text(text: str, url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text


def _make_sampler(kind: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """Optuna's own samplers; TPE (multivariate) is the default. All honour the budget
    constraint set with ``trial.set_constraint``."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials)))
    # group=True: with students in the space, parameters are conditional on the kind
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(3, min(10, trials // 3)), multivariate=True,
        group=True)


def _open_study(storage: optuna.storages.BaseStorage, name: str, seed: int,
                trials: int, sampler: str = "tpe") -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        existing = 0
        try:
            existing = len(optuna.load_study(study_name=name, storage=storage).trials)
        except KeyError:
            pass
        return optuna.create_study(study_name=name, storage=storage,
                                   sampler=_make_sampler(sampler, seed + existing, trials),
                                   directions=["maximize", "minimize"], load_if_exists=True)


def _finetuned(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("finetuned")]


_RUN_ATTR = "autocompress_run"


def _check_joinable(shared: dict[str, Any], ident: dict[str, Any], config: SearchConfig,
                    where: Path) -> None:
    check_same_identity(shared.get("identity", {}), ident, where)
    saved_budget = shared.get("budget", {})
    if (config.latency_budget_ms is not None and saved_budget.get("source") == "given"
            and abs(saved_budget["latency_ms"] - config.latency_budget_ms) > 1e-9):
        raise RunError(f"{where} was searched with --latency-budget-ms "
                       f"{saved_budget['latency_ms']}; use it again to resume, or a new "
                       "--out folder (or --study) for another budget")


def search(config: SearchConfig) -> ParetoFront:
    """Run (or resume) the search ``config`` describes and return its Pareto front.

    Everything is kept in ``config.out``; running the same search again resumes it and
    keeps every completed trial.
    """
    folder = RunFolder(Path(config.out))
    resuming = folder.exists()
    if resuming:
        folder = RunFolder.open(config.out)
    folder.path.mkdir(parents=True, exist_ok=True)

    # What the search uses is copied into the run folder, so a resumed run uses the same.
    space_copy = folder.path / "space.yaml"
    profile_copy = folder.path / "profile.json"
    space_src = Path(config.space) if config.space else DEFAULT_SPACE_PATH
    space = SearchSpace.from_yaml(space_src)
    if space.students is not None:
        # students train from scratch: the finetune's steps and batch, the baseline's
        # learning rate with a warm-up, early stopping on a holdout of the training data
        space = dataclasses.replace(space, students=space.students.with_training(
            TrainSettings(steps=config.finetune_steps, batch_size=config.batch_size,
                          lr=BASELINE_TRAINING.lr, warmup_steps=config.finetune_steps // 10,
                          weight_decay=BASELINE_TRAINING.weight_decay),
            EarlyStopping()))
    spec = resolve_model(config.model)
    data = load_data(config.data, seed=config.seed)
    if spec.fixed_in_channels is not None:
        data = data.with_channels(spec.fixed_in_channels)
    data = _input_shape_check(data, config.input_shape)
    if config.profile is not None:
        profile_src = Path(config.profile)
    elif resuming and profile_copy.is_file():
        profile_src = profile_copy
    else:
        profile_src = local_profile(config.threads, tuple(sorted(space.precisions)))
    profile = HardwareProfile.load(profile_src)
    if profile.batch_size != 1:
        raise ProfileError(f"{profile_src} was measured at batch size {profile.batch_size}; "
                           "searches estimate batch size 1")
    space.check_precisions(profile.precisions, f"the profile {profile_src} "
                           f"({profile.describe()})")

    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        raise CheckpointError(f"checkpoint {config.checkpoint} does not exist")
    checkpoint_sha = sha256_file(Path(config.checkpoint)) if config.checkpoint else None

    ident = identity(config, space_sha=hashlib.sha256(space_src.read_bytes()).hexdigest(),
                     profile_sha=sha256_file(profile_src), checkpoint_sha=checkpoint_sha)
    storage = open_storage(folder.storage_url(config.storage))  # fail fast on a bad URL
    # Workers sharing a study must not draw the same random candidates: with an explicit
    # storage each worker's sampler seed also depends on its process id.
    worker_seed = config.seed + (os.getpid() if config.storage else 0)
    study = _open_study(storage, config.study, worker_seed, config.trials, config.sampler)
    # The run's settings, baseline, budget and calibration live in the study, so every
    # worker of a shared study (and every rerun) uses the same; run.json is a copy.
    shared = study.user_attrs.get(_RUN_ATTR) or (folder.info if resuming else None)
    if shared is not None:
        _check_joinable(shared, ident, config, folder.path)

    baseline = prepare_baseline(spec, data, checkpoint=config.checkpoint, seed=config.seed)
    x = torch.zeros(data.input_shape)
    groups = find_channel_groups(baseline.module, x)
    bound = space.bind([g.name for g in groups], sparsifiable_layers(baseline.module))
    if not bound.distributions and bound.student_space is None:
        raise RunError(f"the search space {space_src} leaves nothing to search for this model")

    raw = _Prepared(data, baseline.module, bound, LatencyModel(profile))
    if shared is None:
        info = _first_run_info(config, folder, profile, profile_src, raw, baseline.accuracy,
                               baseline.source, ident, space_src)
        calibrated = raw.latency_model.calibrated(info["calibration"]["scale"],
                                                  info["calibration"]["offset_ms"])
        fastest = _fastest_estimate(_Prepared(data, baseline.module, bound, calibrated))
        info["fastest_estimate_ms"] = fastest
        if fastest > info["budget"]["latency_ms"]:
            raise BudgetError(
                f"the latency budget {info['budget']['latency_ms']:.3f} ms is below the fastest "
                f"model this search space can produce ({fastest:.3f} ms estimated); raise "
                f"--latency-budget-ms or allow smaller keep ratios in {space_src}")
        if _RUN_ATTR not in optuna.load_study(study_name=config.study,
                                              storage=storage).user_attrs:
            study.set_user_attr(_RUN_ATTR, info)
        # another worker may have been first: everyone uses what the study holds
        shared = optuna.load_study(study_name=config.study, storage=storage).user_attrs[_RUN_ATTR]
    if not folder.exists() or folder.info != shared:
        # other workers may write the same files at the same time: atomic copies
        if profile_src.resolve() != profile_copy.resolve():
            write_bytes_atomic(profile_copy, profile_src.read_bytes())
        if space_src.resolve() != space_copy.resolve():
            write_bytes_atomic(space_copy, space_src.read_bytes())
        folder.info = dict(shared)
        folder.save()
    calibration = shared["calibration"]
    budget_ms = float(shared["budget"]["latency_ms"])
    latency_model = raw.latency_model.calibrated(calibration["scale"],
                                                 calibration["offset_ms"])
    prepared = _Prepared(data, baseline.module, bound, latency_model)

    measurer = _measurer(profile) if _is_local(profile) else None
    if not study.trials:
        # what a user would do by hand: uniform pruning (and, where the space quantizes,
        # uniform pruning quantized all-int8) that fits the budget
        for precision in ("fp32", "int8"):
            if precision not in space.precisions:
                continue
            seed_params = _seed_trial(prepared, budget_ms, measurer, precision)
            if seed_params:  # skip_if_exists: workers starting together enqueue it once
                study.enqueue_trial(seed_params, user_attrs={
                    "seeded": f"uniform keep ratio, {precision}"}, skip_if_exists=True)

    started = time.perf_counter()
    done_at_start = len(_finetuned(study))

    def report(r: TrialReport) -> None:
        finetuned = _finetuned(study)
        done = len(finetuned) + (1 if r.within_budget else 0)
        if r.within_budget:
            best = max([t.user_attrs["accuracy"] for t in finetuned] + [r.accuracy])
            rate = (time.perf_counter() - started) / max(done - done_at_start, 1)
            left = max(config.trials - done, 0) * rate
            _logger.info("trial %d: accuracy %.4f, latency %.3f ms (%s, budget %.3f) "
                         "[%d/%d done, best %.4f, ~%.0f min left]", r.number, r.accuracy,
                         r.predicted_latency_ms, r.latency_source, budget_ms, done,
                         config.trials, best, left / 60)
        else:
            _logger.info("trial %d: over budget (%.3f ms %s > %.3f), not finetuned",
                         r.number, r.predicted_latency_ms, r.latency_source, budget_ms)

    objective = Objective(
        baseline=baseline.module, data=data, space=bound, latency_model=latency_model,
        budget_ms=budget_ms,
        finetune=TrainSettings(steps=config.finetune_steps, batch_size=config.batch_size,
                               lr=config.finetune_lr),
        trial_dir=folder.trial_dir, on_report=report,
        measure=measurer,
    )
    max_over_budget = max(30, 3 * config.trials)
    waiting = False
    while True:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        finetuned = sum(1 for t in complete if t.user_attrs.get("finetuned"))
        over = len(complete) - finetuned
        if finetuned >= config.trials:
            break
        if over >= max_over_budget:
            _logger.warning("stopping: %d candidates were over budget; the budget leaves "
                            "little room in this space", over)
            break
        failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if len(failed) >= max(10, config.trials):
            reason = failed[-1].user_attrs.get("fail_reason", "see the study's failed trials")
            raise RunError(f"{len(failed)} trials failed, the last because: {reason}; "
                           "stopping the search (completed trials are kept)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Trials running in other workers may complete the count: wait for them rather
            # than overshoot. A killed worker's trial stops its heartbeat and is failed (and
            # retried) after the grace period.
            optuna.storages.fail_stale_trials(study)
            running = len(study.get_trials(deepcopy=False,
                                           states=(optuna.trial.TrialState.RUNNING,)))
            if running and finetuned + running >= config.trials:
                if not waiting:
                    _logger.info("waiting for %d trial(s) running elsewhere (a dead worker's "
                                 "trial is failed after %d s without heartbeat)", running,
                                 _GRACE_S)
                waiting = True
                time.sleep(2.0)
                continue
            waiting = False
            study.optimize(objective, n_trials=1, catch=TRIAL_ERRORS)
    return load_front(folder.path, storage=config.storage)


_CALIBRATION_RATIOS = (1.0, 0.75, 0.5, 0.25)


def _first_run_info(config: SearchConfig, folder: RunFolder, profile: HardwareProfile,
                    profile_src: Path, raw: _Prepared, accuracy: float, source: str,
                    ident: dict[str, Any], space_src: Path) -> dict[str, Any]:
    """Measure the baseline, calibrate the estimate, settle the budget (first run only).

    When the profile is of this machine, the baseline and uniformly pruned copies of it
    (keep ratios 1, 0.75, 0.5, 0.25) are exported and measured, interleaved, on the
    profile's backend; ``measured = offset + scale * estimate`` fitted over them corrects
    what the kernel-level estimate misses for this model family.
    """
    x = torch.zeros(raw.data.input_shape)
    onnx_bytes = export_onnx(raw.baseline, x)
    write_bytes_atomic(folder.path / "baseline" / "model.onnx", onnx_bytes)
    raw_baseline = raw.latency_model.estimate(onnx_bytes).latency_ms
    local = _is_local(profile)
    measured = None
    calibration: dict[str, Any] = {"scale": 1.0, "offset_ms": 0.0, "applied": False,
                                   "points": []}
    if local:
        backend = backend_for(profile.backend, profile.backend_settings)
        models = [onnx_bytes]
        keeps = [1.0]
        if config.calibrate:
            for ratio in _CALIBRATION_RATIOS[1:]:
                models.append(_structure(raw, raw.bound.uniform(ratio)))
                keeps.append(ratio)
        results = backend.measure_many(models, _BASELINE_MEASURE, rounds=3)
        measured = results[0]
        if config.calibrate:
            raws = [raw.latency_model.estimate(m).latency_ms for m in models]
            meas = [r.median_ms for r in results]
            scale, offset = fit_calibration(raws, meas)
            calibration = {"scale": scale, "offset_ms": offset, "applied": True,
                           "points": [{"keep_ratio": k, "estimate_ms": e, "measured_ms": m}
                                      for k, e, m in zip(keeps, raws, meas, strict=True)]}
        _logger.info("baseline: accuracy %.4f, measured %.3f ms on %s; profile estimate "
                     "%.3f ms, calibrated as %.3f ms + %.3f x estimate", accuracy,
                     measured.median_ms, profile.backend, raw_baseline,
                     calibration["offset_ms"], calibration["scale"])
    else:
        _logger.info("baseline: accuracy %.4f, profile estimate %.3f ms (the profile is of "
                     "another device, so nothing is measured here)", accuracy, raw_baseline)
    latency_ms = measured.median_ms if measured else raw_baseline
    if config.latency_budget_ms is not None:
        budget = {"latency_ms": config.latency_budget_ms, "source": "given"}
    else:
        budget = {"latency_ms": latency_ms / 2,
                  "source": "half the baseline's " + ("measured" if measured else "estimated")
                  + " latency"}
    stats = model_stats(raw.baseline, x, onnx_bytes)
    return {
        "format_version": RUN_FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "autocompress_version": __version__,
        "identity": ident,
        "model": config.model,
        "data": config.data,
        "checkpoint": str(Path(config.checkpoint).resolve()) if config.checkpoint else None,
        "input_shape": list(raw.data.input_shape),
        "num_classes": raw.data.num_classes,
        "storage": redact_url(config.storage) if config.storage else None,
        "study": config.study,
        "trials": config.trials,
        "space": str(space_src),
        "profile": {"source": str(profile_src), "describe": profile.describe(),
                    "local": local},
        "calibration": {**calibration, "raw_estimate_ms": raw_baseline},
        "budget": budget,
        "baseline": {
            "accuracy": accuracy, "source": source,
            "latency_ms": latency_ms,
            "latency_source": "measured" if measured else "estimate",
            "measured_latency": measured.to_dict() if measured else None,
            "predicted_latency_ms": calibration["offset_ms"]
            + calibration["scale"] * raw_baseline,
            **stats.to_dict(),
        },
    }


def _seed_trial(prepared: _Prepared, budget_ms: float, measure: Any = None,
                precision: str = "fp32") -> dict[str, Any] | None:
    """Parameters of the uniform pruning (same keep ratio everywhere, every layer at
    ``precision``) that fits closest below the budget: what a user would try by hand, as a
    first trial. As in the objective, a candidate whose estimate is within 10% of the budget
    is measured when ``measure`` is given (the profile is of this machine)."""
    channel = [p for p in prepared.bound.channel_params if p.param is not None]
    if not channel:
        return None
    ratios = sorted({v for p in channel for v in p.value.grid()}, reverse=True)
    calibration = None
    for ratio in ratios:
        params = _uniform_params(prepared.bound, ratio, precision)
        candidate = prepared.bound.candidate_from_params(params)
        structure = _structure(prepared, candidate)
        latency = estimate_candidate(prepared.latency_model, structure, candidate)[0]
        if measure is not None and abs(latency - budget_ms) <= NEAR_BUDGET_MARGIN * budget_ms:
            if calibration is None:
                calibration = calibration_inputs(prepared.data, 32)
            latency = measure(deployable_onnx(structure, candidate, calibration))
        if latency <= budget_ms:
            return params
    return None


# ------------------------------------------------------------------------------ front, pick

def load_front(run: str | Path, *, storage: str | None = None) -> ParetoFront:
    """The Pareto front of the search in run folder ``run``."""
    folder = RunFolder.open(run)
    url = folder.storage_url(storage)
    name = folder.info.get("study", "autocompress")
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError as exc:
        raise RunError(f"no study {name!r} in {redact_url(url)}; has the search started?"
                       ) from exc
    baseline = dict(folder.info.get("baseline", {}))
    return ParetoFront.from_study(study, budget_ms=folder.info.get("budget", {}).get(
        "latency_ms"), baseline=baseline)


@dataclass(frozen=True)
class PickResult:
    member: FrontMember | None
    measured_latency_ms: float | None
    tried: tuple[tuple[int, float, float], ...]   # (trial, predicted, measured)
    export_dir: Path | None
    message: str
    #: the picked member after ``pick(..., finetune_steps=N)``'s longer finetune
    refined: Refined | None = None


def pick(run: str | Path, latency_budget_ms: float, export_dir: str | Path, *,
         storage: str | None = None, finetune_steps: int = 0,
         checkpoint: str | Path | None = None) -> PickResult:
    """Export the most accurate front member whose latency, re-measured on the real runtime,
    fits ``latency_budget_ms``.

    Members are tried most accurate first among those whose estimate fits; each is measured
    on the profile's backend. If the profile is of another device, the estimate is all
    there is: the pick is exported and the result says it was not measured.

    With ``finetune_steps``, the picked member is rebuilt from the run's baseline (its
    ``checkpoint``, when run.json does not name it) and trained that many steps the way the
    search trained it; that model is exported, with its deployed accuracy, measured again.
    """
    if not latency_budget_ms > 0:
        raise BudgetError(f"--latency-budget-ms must be positive, got {latency_budget_ms}")
    if finetune_steps < 0:
        raise RunError(f"--finetune-steps must not be negative, got {finetune_steps}")
    folder = RunFolder.open(run)
    front = load_front(run, storage=storage)
    if not front.members:
        raise RunError(f"{run} has no front yet: no finetuned trial within budget")
    profile = HardwareProfile.load(folder.path / "profile.json")
    local = _is_local(profile)
    backend = backend_for(profile.backend, profile.backend_settings) if local else None
    tried: list[tuple[int, float, float]] = []
    for member in front.within(latency_budget_ms):
        if member.artifact is None:
            continue
        onnx_bytes = (folder.path / member.artifact).read_bytes()
        measured = None
        if backend is not None:
            measured = backend.measure_many([onnx_bytes], _PICK_MEASURE, rounds=3)[0].median_ms
            tried.append((member.trial, member.predicted_latency_ms, measured))
            if measured > latency_budget_ms:
                _logger.info("trial %d: estimated %.3f ms but measured %.3f ms > budget; "
                             "trying the next", member.trial, member.predicted_latency_ms,
                             measured)
                continue
        out = Path(export_dir)
        extra: dict[str, Any] = {}
        refined = None
        if finetune_steps:
            from autocompress.study._refine import finetune_member

            refined = finetune_member(folder, member, finetune_steps, checkpoint=checkpoint)
            onnx_bytes = refined.deployed.onnx
            if backend is not None:   # the same graph: measured again, as exported
                measured = backend.measure_many([onnx_bytes], _PICK_MEASURE,
                                                rounds=3)[0].median_ms
            extra.update(refined.stats)
            extra.update(accuracy=refined.deployed.accuracy,
                         accuracy_source=refined.deployed.accuracy_source,
                         search_accuracy=member.accuracy,
                         finetune_steps=refined.steps)
        if member.candidate.quantized_layers:
            from autocompress.transforms import exported_precisions

            # what the exported graph really runs, read back from it
            extra["exported_precisions"] = exported_precisions(onnx_bytes)
        write_bytes_atomic(out / "model.onnx", onnx_bytes)
        write_text_atomic(out / "candidate.json", member_json(
            member, measured_latency_ms=measured,
            latency_measured_on=profile.describe() if measured is not None else None,
            latency_budget_ms=latency_budget_ms, run=str(folder.path),
            model=folder.info.get("model"), input_shape=folder.info.get("input_shape"),
            num_classes=folder.info.get("num_classes"), **extra) + "\n")
        note = (f"measured {measured:.3f} ms" if measured is not None
                else "not measured: the profile is of another device")
        if refined is not None and measured is not None and measured > latency_budget_ms:
            note += " (over the budget on this re-measurement of the same graph)"
        what = member.kind + (f" {member.family}" if member.family else "")
        accuracy = (f"accuracy {member.accuracy:.4f}" if refined is None else
                    f"accuracy {refined.deployed.accuracy:.4f} after a {refined.steps}-step "
                    f"finetune at pick ({member.accuracy:.4f} in the search)")
        return PickResult(member, measured, tuple(tried), out,
                          f"picked trial {member.trial} ({what}, {member.precision}): "
                          f"{accuracy}, predicted {member.predicted_latency_ms:.3f} ms, "
                          f"{note} (budget {latency_budget_ms:.3f} ms)", refined)
    fastest = front.fastest()
    assert fastest is not None
    if tried:
        why = "every front member whose estimate fits measured over the budget"
    else:
        why = "no front member's estimate fits the budget"
    return PickResult(None, None, tuple(tried), None,
                      f"no model within {latency_budget_ms:.3f} ms: {why}; the fastest front "
                      f"member is trial {fastest.trial} at {fastest.predicted_latency_ms:.3f} "
                      f"ms estimated (accuracy {fastest.accuracy:.4f})")
