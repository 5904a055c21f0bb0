"""Re-targeting a finished search to another device (``autocompress retarget``).

A search is tied to the device its profile describes: its latencies, budget and calibration
are of that device. Its trials' accuracies are not: they are the trained models' own. A
retarget copies every finetuned trial of a run into a new run folder for another profile, its
latency estimated there the way the search estimates a candidate (the candidate's structure
rebuilt from the run's model, costed at the candidate's node precisions), and trains
nothing. The new folder holds an Optuna study with those trials (``study.add_trial``), so
``front`` and ``pick`` read it like any run and ``autocompress search --out NEW`` continues
the search on the new device from them.

What the latencies are. The run's calibration corrects the estimates of *its* device and is
not carried over. When the new profile is of this machine, the baseline and uniformly pruned
copies of it are measured on it and its estimates calibrated, as a search's first run does;
otherwise the figures are the new profile's raw estimates. On this machine, as in a search, a
trial whose estimate lies within :data:`~autocompress.study._prepare.NEAR_BUDGET_MARGIN` of
the new budget is measured (its model as copied, on the new profile's backend settings): near
the budget the estimate's error decides which side of it a trial falls on. Every other latency
is an estimate until ``pick`` measures it on the device.

The budget is the one given, else the same share of the baseline's latency as the run's
budget was (half, by default), the baseline's latency taken on the new profile as a search
takes it. Trials over the new budget stay in the study, infeasible (the search's
constraint), and out of the front.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from torch import nn

from autocompress._io import write_bytes_atomic, write_json_atomic
from autocompress._version import __version__
from autocompress.exceptions import BudgetError, ProfileError, RunError
from autocompress.hardware import HardwareProfile, LatencyEstimate, LatencyModel, is_local
from autocompress.hardware.drift import DriftCheck
from autocompress.models import create_model, resolve_model
from autocompress.space import BoundSpace, Candidate, SearchSpace
from autocompress.space._candidate import DATA_IMPORTANCES
from autocompress.study._config import RunFolder, sha256_file
from autocompress.study._front import ParetoFront
from autocompress.study._objective import CONSTRAINT
from autocompress.study._pick import load_study
from autocompress.study._prepare import (
    NEAR_BUDGET_MARGIN,
    calibrated_precisions,
    device_calibration,
    fastest_estimate_ms,
    for_device,
    measure_and_calibrate,
    measurer,
    near_budget,
)
from autocompress.study._records import (
    RECORD_ATTR,
    Budget,
    ProfileRef,
    RunInfo,
    TrialRecord,
)
from autocompress.study._search import RUN_ATTR
from autocompress.study._storage import open_storage, open_study
from autocompress.transforms import (
    CompressedModel,
    compress,
    find_channel_groups,
    find_residual_blocks,
    sparsifiable_layers,
)

__all__ = ["RETARGET_ATTR", "RetargetResult", "RetargetedTrial", "retarget"]

_logger = logging.getLogger("autocompress")

#: The trial user attribute saying where a retargeted trial comes from.
RETARGET_ATTR = "retargeted"
#: Random inputs setting the activation ranges of int8 copies measured for the calibration.
_RANDOM_INPUTS = 32


@dataclass(frozen=True)
class RetargetedTrial:
    """One finetuned trial of the run, on the new profile."""

    source_trial: int          # its number in the run retargeted
    trial: int                 # its number in the new run
    accuracy: float            # as searched: nothing is trained again
    previous_latency_ms: float
    previous_latency_source: str
    latency_ms: float          # the new profile's estimate (calibrated when measured here),
    #                            or, near the budget on this machine, the measurement
    within_budget: bool
    latency_source: str = "estimate"   # "measured" near the budget on this machine


@dataclass(frozen=True)
class RetargetResult:
    """The new run folder, its front, and how the front changed."""

    out: Path
    run: Path
    front: ParetoFront
    previous_front: ParetoFront
    trials: tuple[RetargetedTrial, ...]
    info: RunInfo

    def _by_source(self) -> dict[int, RetargetedTrial]:
        return {t.source_trial: t for t in self.trials}

    def _front_sources(self) -> set[int]:
        numbers = {t.trial: t.source_trial for t in self.trials}
        return {numbers[m.trial] for m in self.front.members}

    @property
    def kept(self) -> tuple[int, ...]:
        """Members of both fronts (the run's trial numbers)."""
        previous = {m.trial for m in self.previous_front.members}
        return tuple(sorted(previous & self._front_sources()))

    @property
    def joined(self) -> tuple[int, ...]:
        """Members of the new front only (the run's trial numbers)."""
        previous = {m.trial for m in self.previous_front.members}
        return tuple(sorted(self._front_sources() - previous))

    @property
    def over_budget(self) -> tuple[int, ...]:
        """Members of the run's front now over the budget (the run's trial numbers)."""
        left = {m.trial for m in self.previous_front.members} - self._front_sources()
        by_source = self._by_source()
        return tuple(sorted(n for n in left if not by_source[n].within_budget))

    @property
    def dominated(self) -> tuple[int, ...]:
        """Members of the run's front within the new budget but now beaten by another."""
        left = {m.trial for m in self.previous_front.members} - self._front_sources()
        return tuple(sorted(set(left) - set(self.over_budget)))

    def summary(self) -> str:
        info = self.info
        within = sum(1 for t in self.trials if t.within_budget)
        calibration = info.calibration
        if calibration.applied:
            how = (f"calibrated on {len(calibration.points)} models measured on this machine "
                   f"(measured = {calibration.offset_ms:+.4f} ms + {calibration.scale:.4f} x "
                   f"estimate{calibration.describe_precisions()})")
        elif info.profile.local:
            how = "not calibrated (the run was searched with --no-calibrate)"
        else:
            how = ("not calibrated: the profile is of another device, so nothing could be "
                   "measured; they are the profile's raw estimates")
        mapping = ", ".join(f"{t.trial}<-{t.source_trial}" for t in self.trials)
        measured = [t for t in self.trials if t.latency_source == "measured"]
        lines = [
            f"retargeted {len(self.trials)} finetuned trial(s) of {self.run} to {self.out} "
            f"for {info.profile.describe}",
            f"  latencies: estimates of the new profile, {how}; {self.run}'s calibration is "
            "of its own device and is not used. Accuracies are as searched: nothing was "
            "trained.",
            f"  budget {info.budget.latency_ms:.3f} ms ({info.budget.source}); baseline "
            f"{info.baseline.latency_ms:.3f} ms ({info.baseline.latency_source}); "
            f"{within} of {len(self.trials)} trials within it",
            f"  front: {len(self.front)} member(s); of the {len(self.previous_front)} on "
            f"{self.run}'s front, {len(self.kept)} kept{_listed(self.kept)}, "
            f"{len(self.over_budget)} now over budget{_listed(self.over_budget)}, "
            f"{len(self.dominated)} now dominated{_listed(self.dominated)}; "
            f"{len(self.joined)} new member(s){_listed(self.joined)} "
            f"(trial numbers of {self.run})",
            f"  trial numbers, new<-old: {mapping}",
            *([f"  measured here, estimated within {100 * NEAR_BUDGET_MARGIN:.0f}% of the "
               f"budget: {len(measured)} trial(s) (new numbers "
               f"{', '.join(str(t.trial) for t in measured)}); 'pick' measures its choice, "
               "every other latency here is an estimate."] if measured else
              ["  'pick' measures its choice when run on that device; until then every "
               "trial's latency here is an estimate."]),
            f"  continue the search there: autocompress search --out {self.out} --profile "
            f"{info.profile.source} with {self.run}'s other options (no --storage) and "
            f"--trials above {within} (the finetuned trials within budget it already holds)",
        ]
        return "\n".join(lines)


def _listed(numbers: tuple[int, ...]) -> str:
    return f" ({', '.join(str(n) for n in numbers)})" if numbers else ""


@dataclass
class _Structures:
    """The run's model and search space without its data or trained weights: all a latency
    estimate sees of a candidate. Which channels a criterion keeps depends on the weights;
    how many, and so the structure, does not (each rebuilt candidate's channel counts are
    checked against the trial's record)."""

    module: nn.Module
    example_input: torch.Tensor
    num_classes: int
    bound: BoundSpace

    @classmethod
    def of(cls, info: RunInfo, space: SearchSpace) -> _Structures:
        shape = tuple(info.input_shape)
        with torch.random.fork_rng(devices=[]):   # random weights, global state untouched
            module = create_model(resolve_model(info.model).name, num_classes=info.num_classes,
                                  in_channels=shape[1], input_size=(shape[2], shape[3])
                                  ).eval()
        example = torch.zeros(shape)
        groups = find_channel_groups(module, example) if space.channel_rules else []
        blocks = find_residual_blocks(module, example) if space.depth_rules else []
        bound = space.bind([g.name for g in groups], sparsifiable_layers(module, example),
                           sparsity="size" in info.identity.objectives,
                           blocks=[b.name for b in blocks])
        return cls(module, example, info.num_classes, bound)

    def random_inputs(self) -> np.ndarray:
        """Inputs that set int8 activation ranges where only latency matters (seeded)."""
        shape = (_RANDOM_INPUTS, *self.example_input.shape[1:])
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def compress(self, candidate: Candidate) -> CompressedModel:
        if candidate.importance in DATA_IMPORTANCES:
            # needs statistics of the trained model on data; counts do not
            candidate = dataclasses.replace(candidate, importance="l2")
        return compress(self.module, candidate, self.example_input,
                        num_classes=self.num_classes)


def retarget(run: str | Path, profile: str | Path, out: str | Path, *,
             latency_budget_ms: float | None = None, storage: str | None = None
             ) -> RetargetResult:
    """Re-estimate every finetuned trial of the run in ``run`` on ``profile`` and write a new
    run folder ``out`` for that device: its study holds those trials (accuracies as
    searched, latencies of the new profile), its front is written to ``front.csv`` and
    ``front.png``, and ``autocompress search --out OUT --profile PROFILE`` with the run's
    other settings resumes from them. Nothing is trained; see the module docstring for what
    the latencies and the budget are.

    ``storage`` is the storage URL of the run's study, when it used one; the new run's study
    is an SQLite file in ``out``.

    Raises:
        RunError: ``out`` exists and is not empty, or the run has no finetuned trial, or a
            trial's model is missing, or a trial cannot be rebuilt as it was searched.
        ProfileError: the profile lacks a precision the run's space offers.
        BudgetError: the budget is not positive, or below the fastest model the space
            allows on the new profile.
    """
    if latency_budget_ms is not None and not latency_budget_ms > 0:
        raise BudgetError(f"--latency-budget-ms must be positive, got {latency_budget_ms}")
    source = RunFolder.open(run)
    info = source.run
    out = Path(out)
    _check_out(out)
    study = load_study(source, storage)
    trials = _finetuned(study)
    if not trials:
        raise RunError(f"{source.path} has no finetuned trial to retarget (none completed "
                       "within its budget yet); resume its search first")
    for trial, record in trials:
        if not (source.path / str(record.artifact)).is_file():
            raise RunError(f"trial {trial.number}'s model {source.path / str(record.artifact)} "
                           f"is missing; retarget needs the whole run folder {source.path}")
    profile_path = Path(profile)
    new_profile = HardwareProfile.load(profile_path)
    space = SearchSpace.from_yaml(source.path / "space.yaml")
    _check_profile(new_profile, profile_path, space, trials, source.path)
    # as the follow-up search on the new device will round channels (the trials keep theirs)
    space = for_device(space, new_profile)

    structures = _Structures.of(info, space)
    new_info, model, baseline_onnx = _settle(info, structures, new_profile, profile_path,
                                             latency_budget_ms, source.path)
    estimates = [_estimate(structures, model, trial, record, source.path)
                 for trial, record in trials]
    _check_reachable(new_info, estimates, source.path, profile_path)
    measure = measurer(new_profile)
    if measure is not None and new_info.baseline.latency_source == "measured":
        # scaled to the machine's speed when the baseline was measured, as a search does
        measure.refer_to(DriftCheck(baseline_onnx, new_info.baseline.latency_ms,
                                    expected="when the retarget began"),
                         fastest=new_info.budget.source == "given")
    measured = _measure_near_budget(measure, source, trials, estimates,
                                    new_info.budget.latency_ms)
    previous = ParetoFront.from_study(study, budget_ms=info.budget.latency_ms,
                                      baseline=info.baseline)
    front, retargeted = _write_run(source, out, new_info, profile_path, baseline_onnx, trials,
                                   estimates, measured)
    _logger.info("retargeted %d trial(s) of %s to %s", len(retargeted), source.path, out)
    return RetargetResult(out, source.path, front, previous, retargeted, new_info)


def _settle(info: RunInfo, structures: _Structures, profile: HardwareProfile,
            profile_path: Path, given_budget_ms: float | None, run: Path
            ) -> tuple[RunInfo, LatencyModel, bytes]:
    """What a search's first run settles, on the new profile: the baseline's latency
    (measured when the profile is of this machine), the calibration, the budget; checked
    against the fastest model the space allows. Returns the new run's record, its (calibrated)
    latency model and the baseline's structure."""
    raw = LatencyModel(profile)
    baseline_onnx = structures.compress(Candidate()).structure_onnx()
    raw_ms = raw.estimate(baseline_onnx).latency_ms
    local = is_local(profile)
    measured, calibration = None, device_calibration(profile, raw_ms)
    if local:
        _logger.info("the profile is of this machine: measuring the baseline (and calibration "
                     "models) on it, as a search does")
        measured, calibration = measure_and_calibrate(
            profile, raw, structures.compress, structures.bound, baseline_onnx,
            calibrate=info.identity.calibrate,
            precisions=calibrated_precisions(structures.bound),
            calibration_data=structures.random_inputs)
    model = calibration.apply(raw)
    baseline_ms = (measured.median_ms if measured is not None else
                   calibration.offset_ms + calibration.scale * raw_ms)
    budget = _budget(info, baseline_ms, measured is not None, given_budget_ms, run)
    fastest = fastest_estimate_ms(structures.bound,
                                  lambda c: structures.compress(c).estimate(model).latency_ms)
    settled = dataclasses.replace(
        info, identity=dataclasses.replace(info.identity,
                                           profile_sha256=sha256_file(profile_path)),
        profile=ProfileRef(str(profile_path), profile.describe(), local),
        calibration=calibration, budget=budget, fastest_estimate_ms=fastest,
        baseline=dataclasses.replace(
            info.baseline, latency_ms=baseline_ms,
            latency_source="measured" if measured is not None else "estimate",
            predicted_latency_ms=calibration.offset_ms + calibration.scale * raw_ms,
            measured_latency=measured),
        # the allocation was fitted to the run's device; the new run's study has trials, so
        # a search there seeds none anyway
        allocation=None, storage=None, autocompress_version=__version__,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    return settled, model, baseline_onnx


def _check_reachable(info: RunInfo, estimates: list[LatencyEstimate], run: Path,
                     profile_path: Path) -> None:
    """Refuse a budget below both the fastest model the space allows on the new device and
    every trial of the run. The trials count too: the space's fastest model rounds channels
    to the new device's block, where the run's trials keep the channel counts they were
    searched with, and may be faster."""
    budget = info.budget
    fastest_trial = min(e.latency_ms for e in estimates)
    if min(info.fastest_estimate_ms, fastest_trial) > budget.latency_ms:
        raise BudgetError(
            f"the latency budget {budget.latency_ms:.3f} ms ({budget.source}) is below the "
            f"fastest model {run}'s search space can produce on {profile_path} "
            f"({info.fastest_estimate_ms:.3f} ms estimated) and below every trial of it "
            f"(the fastest estimated at {fastest_trial:.3f} ms); pass a larger "
            "--latency-budget-ms")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out} exists and is not empty; retarget writes a new run folder: "
                       "pass another --out")


def _finetuned(study: optuna.Study) -> list[tuple[optuna.trial.FrozenTrial, TrialRecord]]:
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [(t, r) for t in trials
            if (r := TrialRecord.of(t)) is not None and r.finetuned and r.artifact]


def _check_profile(profile: HardwareProfile, path: Path, space: SearchSpace,
                   trials: list[tuple[optuna.trial.FrozenTrial, TrialRecord]], run: Path
                   ) -> None:
    """The checks a search makes of its profile, said for a retarget."""
    if profile.batch_size != 1:
        raise ProfileError(f"{path} was measured at batch size {profile.batch_size}; "
                           "searches estimate batch size 1")
    missing = sorted(space.precisions - set(profile.precisions))
    if not missing:
        return
    needing = [t.number for t, r in trials
               if set(r.candidate.quantized_layers.values()) & set(missing)]
    used = (f"; {len(needing)} of its finetuned trials run layers in "
            f"{'/'.join(missing)} (trials {', '.join(map(str, needing[:8]))}"
            f"{', ...' if len(needing) > 8 else ''})" if needing else "")
    raise ProfileError(
        f"{path} ({profile.describe()}) measured {', '.join(profile.precisions)} kernels only, "
        f"but the search space of {run} offers {', '.join(missing)}{used}; profile the device "
        f"with `autocompress profile --precisions {','.join(['fp32', *missing])}` (where its "
        "backend runs them) and retarget with that profile. Nothing was written")


def _budget(info: RunInfo, baseline_ms: float, measured: bool, given: float | None,
            run: Path) -> Budget:
    if given is not None:
        return Budget(given, "given")
    old = info.budget
    share = old.latency_ms / info.baseline.latency_ms
    said = "half" if math.isclose(share, 0.5) else f"{share:.4g} x"
    kind = "measured" if measured else "estimated"
    return Budget(share * baseline_ms,
                  f"{said} the baseline's {kind} latency: the share of its baseline's that "
                  f"{run}'s budget of {old.latency_ms:.4g} ms was")


def _estimate(structures: _Structures, model: LatencyModel, trial: optuna.trial.FrozenTrial,
              record: TrialRecord, run: Path) -> LatencyEstimate:
    """The trial's candidate rebuilt and estimated as the search estimates candidates."""
    compressed = structures.compress(record.candidate)
    rebuilt = {k: tuple(v) for k, v in compressed.channels.items()}
    recorded = {k: tuple(v) for k, v in record.channels.items()}
    if rebuilt != recorded:
        differ = sorted(k for k in set(rebuilt) | set(recorded)
                        if rebuilt.get(k) != recorded.get(k))
        raise RunError(
            f"trial {trial.number} of {run} rebuilt here keeps other channel counts than the "
            f"search recorded (groups {', '.join(differ[:4])}); the run was searched with "
            "another autocompress version: retarget it with that version")
    try:
        return compressed.estimate(model)
    except ProfileError as exc:
        raise ProfileError(f"trial {trial.number} of {run}: {exc}") from exc


def _measure_near_budget(measure: Callable[[bytes], float] | None, source: RunFolder,
                         trials: list[tuple[optuna.trial.FrozenTrial, TrialRecord]],
                         estimates: list[LatencyEstimate], budget_ms: float
                         ) -> dict[int, float]:
    """Measurements (ms) of the trials whose estimate lies within :data:`NEAR_BUDGET_MARGIN`
    of the budget, by their index in ``trials``; none when ``measure`` is ``None`` (the
    profile is of another device)."""
    if measure is None:
        return {}
    near = [i for i, e in enumerate(estimates)
            if near_budget(e.latency_ms, budget_ms)]
    if near:
        _logger.info("measuring the %d trial(s) estimated within %.0f%% of the budget",
                     len(near), 100 * NEAR_BUDGET_MARGIN)
    return {i: measure((source.path / str(trials[i][1].artifact)).read_bytes()) for i in near}


def _write_run(source: RunFolder, out: Path, info: RunInfo, profile_path: Path,
               baseline_onnx: bytes, trials: list[tuple[optuna.trial.FrozenTrial, TrialRecord]],
               estimates: list[LatencyEstimate], measured: Mapping[int, float]
               ) -> tuple[ParetoFront, tuple[RetargetedTrial, ...]]:
    """Write the new run into a hidden folder beside ``out``, then move it into place: an
    interrupted retarget leaves no half-written run behind at ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.retarget-{os.getpid()}-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        folder = RunFolder(partial)
        write_bytes_atomic(partial / "space.yaml", (source.path / "space.yaml").read_bytes())
        write_bytes_atomic(partial / "profile.json", profile_path.read_bytes())
        baseline = source.path / "baseline" / "model.onnx"
        write_bytes_atomic(partial / "baseline" / "model.onnx",
                           baseline.read_bytes() if baseline.is_file() else baseline_onnx)
        storage = open_storage(folder.default_storage, heartbeat=False)
        try:
            front, retargeted = _fill_study(storage, source, folder, info, trials, estimates,
                                            measured)
        finally:
            engine = getattr(storage, "engine", None)
            if engine is not None:   # the SQLite file moves with the folder
                engine.dispose()
        folder.save(info)   # run.json last: a folder with it is a run
        if out.is_dir():
            out.rmdir()     # empty (checked): replaced
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return front, retargeted


def _fill_study(storage: optuna.storages.BaseStorage, source: RunFolder, folder: RunFolder,
                info: RunInfo, trials: list[tuple[optuna.trial.FrozenTrial, TrialRecord]],
                estimates: list[LatencyEstimate], measured: Mapping[int, float]
                ) -> tuple[ParetoFront, tuple[RetargetedTrial, ...]]:
    ident = info.identity
    objectives = ident.objectives
    study = open_study(storage, info.study, ident.seed, info.trials, ident.sampler,
                       len(objectives))
    study.set_user_attr(RUN_ATTR, info.to_dict())
    budget_ms = info.budget.latency_ms
    retargeted = []
    for number, ((trial, old), estimate) in enumerate(zip(trials, estimates, strict=True)):
        artifact = _copy_trial(source, folder, old, number)
        record = dataclasses.replace(
            old, estimated_latency_ms=estimate.latency_ms, latency_ms=estimate.latency_ms,
            latency_std_ms=estimate.std_ms, latency_source="estimate", artifact=artifact)
        if number in measured:
            record = dataclasses.replace(record, latency_ms=measured[number],
                                         latency_std_ms=0.0, latency_source="measured")
        values = [record.accuracy, record.latency_ms]
        if "size" in objectives:
            values.append(float(record.compressed_size_bytes))
        attrs = {**trial.user_attrs, RECORD_ATTR: record.to_dict(), RETARGET_ATTR: {
            "run": str(source.path.resolve()), "trial": trial.number, "latency_ms": old.latency_ms,
            "latency_source": old.latency_source, "profile": source.run.profile.describe}}
        study.add_trial(optuna.trial.create_trial(
            params=trial.params, distributions=trial.distributions, values=values,
            user_attrs=attrs, constraints={CONSTRAINT: record.latency_ms - budget_ms}))
        retargeted.append(RetargetedTrial(
            trial.number, number, record.accuracy, old.latency_ms, old.latency_source,
            record.latency_ms, record.latency_ms <= budget_ms, record.latency_source))
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    assert numbers == list(range(len(trials))), numbers   # a new study numbers from 0
    data = info.data_record
    front = ParetoFront.from_study(study, budget_ms=budget_ms, baseline=info.baseline,
                                   validation_note=data.validation_note() if data else None)
    front.write_csv(folder.path / "front.csv")
    front.plot(folder.path / "front.png")
    return front, tuple(retargeted)


def _copy_trial(source: RunFolder, folder: RunFolder, record: TrialRecord, number: int) -> str:
    """Copy the trial's model (and candidate.json) under its number in the new run."""
    model = source.path / str(record.artifact)
    target = folder.trial_dir(number)
    write_bytes_atomic(target / "model.onnx", model.read_bytes())
    candidate = model.parent / "candidate.json"
    if candidate.is_file():
        write_bytes_atomic(target / "candidate.json", candidate.read_bytes())
    else:
        write_json_atomic(target / "candidate.json", record.candidate.to_dict())
    return f"trials/{number:05d}/model.onnx"
