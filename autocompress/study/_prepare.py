"""What a search needs before its first trial: data, baseline, space, profile, and, on the
first run, the baseline's measured latency, the estimate's calibration and the budget."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocompress._io import write_bytes_atomic
from autocompress.data import DataSplit, load_data, spec_name
from autocompress.evaluation import EarlyStopping, TrainSettings, model_stats
from autocompress.exceptions import DataError, ProfileError, RunError
from autocompress.hardware import (
    HardwareProfile,
    LatencyMeasurement,
    LatencyModel,
    MeasureSettings,
    get_backend,
)
from autocompress.hardware._apart import apart
from autocompress.hardware._nnls import nnls
from autocompress.hardware.backends import Backend, backend_for, is_local
from autocompress.hardware.drift import DriftCheck, measure_beside
from autocompress.hardware.latency import fit_calibration
from autocompress.hardware.profile import describe_device
from autocompress.hardware.profiler import GRID_NAME, profile_backend, upgrade_profile
from autocompress.models import resolve_model
from autocompress.settings import NO_AUGMENTATION, STANDARD_AUGMENTATION, Augmentation
from autocompress.space import DEFAULT_SPACE_PATH, BoundSpace, Candidate, SearchSpace
from autocompress.space._candidate import DATA_IMPORTANCES
from autocompress.space._space import KIND_PARAM
from autocompress.study._baseline import BASELINE_TRAINING, Baseline
from autocompress.study._cache import cache_dir
from autocompress.study._config import SearchConfig, redact_url
from autocompress.study._records import (
    BaselineRecord,
    Budget,
    Calibration,
    CalibrationPoint,
    ProfileRef,
    RunIdentity,
    RunInfo,
)
from autocompress.transforms import (
    ChannelGroup,
    CompressedModel,
    GradientStatistics,
    compress,
)
from autocompress.transforms._importance import training_statistics

__all__ = ["MEASURED_HEADROOM", "NEAR_BUDGET_MARGIN", "SEED_MEASURE_MARGIN", "Measurer",
           "Prepared", "calibrated_precisions", "calibration_inputs", "device_calibration",
           "fastest_estimate_ms", "first_run_info", "for_device", "importance_statistics",
           "load_search_data", "load_space", "local_profile", "measure_and_calibrate",
           "near_budget", "run_data", "search_data", "seed_params"]

_logger = logging.getLogger("autocompress")

#: Candidates whose estimate lies within this fraction of the budget are measured, when the
#: profile is of this machine: there the estimate's error would decide.
NEAR_BUDGET_MARGIN = 0.1
#: The uniform seeds are what a search is judged against, and the few uniform prunings tried
#: for them cost a measurement each at most: where the device is this machine, every one
#: estimated within this share of the budget is measured. A run whose calibration was fitted
#: on copies measured while the VM's speed drifted (0.158 ms + 0.795 x estimate, where the
#: next run on the same machine fitted 0.016 ms + 0.871 x) estimated the keep-0.5 pruning of
#: resnet20 at 0.421 ms, 15% over its 0.366 ms budget, so it was not measured (it measures
#: 0.30) and the run seeded the keep-0.25 pruning instead (CIFAR-10 benchmark, 12,000 steps:
#: 0.811, where the next seed's keep-0.5 seed reached 0.855).
SEED_MEASURE_MARGIN = 0.3
#: Share of the budget a measured candidate must leave free to be finetuned from the
#: screening: it is measured again after its finetune and at the pick, and a candidate
#: measured just inside the budget was measured just over it there (a 0.530 ms candidate
#: of a 0.535 ms budget, the best of its search, was passed over at the pick).
MEASURED_HEADROOM = 0.03


def near_budget(latency_ms: float, budget_ms: float, margin: float = NEAR_BUDGET_MARGIN) -> bool:
    """Whether an estimate lies within ``margin`` of the budget, where its error decides
    which side of the budget a candidate falls on: there a local device is measured."""
    return abs(latency_ms - budget_ms) <= margin * budget_ms


#: A baseline measured slower than the local profile's estimate of it by more than this, at
#: the start of a run, is measured again after a pause (see :func:`measure_and_calibrate`).
#: The VM's slow spells added +17% to +40%; the estimate of a model the profile never saw
#: can be off by as much, and then costs the run a pause and a pass or two.
START_DRIFT = 0.1
_START_PAUSE_S = 30.0
_BASELINE_MEASURE = MeasureSettings(max_time_s=2.0, min_runs=100, round_runs=50)
_NEAR_BUDGET_MEASURE = MeasureSettings(max_time_s=1.0, min_runs=60, round_runs=30)
_CALIBRATION_RATIOS = (1.0, 0.75, 0.5, 0.25)
#: A calibration fit that misses one of the baseline's measured fp32 copies by more than
#: this share is measured again (:func:`_fitting`).
FIT_TOLERANCE = 0.05
_FIT_PASSES = 3
#: Keep ratios of the copies at another precision: a budget a precision helps to meet is
#: where a network at that precision keeps most of its channels.
_PRECISION_RATIOS = (1.0, 0.75, 0.5)
#: A precision's factor is held below this: beyond it the profile is of another device.
_PRECISION_FACTOR_MAX = 4.0


def calibration_inputs(data: DataSplit, samples: int) -> np.ndarray:
    """The training images that calibrate activation ranges for int8 (a fixed subset)."""
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.train), generator=generator)[:samples]
    return data.train.fetch(order)[0].numpy().astype(np.float32)


def importance_statistics(module: torch.nn.Module, data: DataSplit) -> GradientStatistics:
    """The statistics of ``module`` for the taylor, obd and activation channel criteria, on a
    fixed, seeded subset of the training samples (the same in the search and in ``pick``)."""
    return training_statistics(module, data.train)


@dataclass
class Prepared:
    """The data, the baseline, the space bound to it, the (calibrated) latency model and the
    baseline's channel groups (empty where the space prunes no channels)."""

    data: DataSplit
    baseline: Baseline
    bound: BoundSpace
    latency_model: LatencyModel
    groups: tuple[ChannelGroup, ...] = ()
    _gradients: GradientStatistics | None = field(default=None, init=False, repr=False)

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(self.data.input_shape)

    def gradients_for(self, candidate: Candidate) -> GradientStatistics | None:
        """The baseline's gradient statistics when ``candidate``'s criterion needs them
        (computed once)."""
        if (candidate.importance not in DATA_IMPORTANCES or not candidate.channel_keep
                or candidate.student is not None):
            return None
        if self._gradients is None:
            self._gradients = importance_statistics(self.baseline.module, self.data)
        return self._gradients

    def compress(self, candidate: Candidate) -> CompressedModel:
        return compress(self.baseline.module, candidate, self.example_input,
                        num_classes=self.data.num_classes,
                        gradients=self.gradients_for(candidate))

    def estimate_ms(self, candidate: Candidate) -> float:
        return self.compress(candidate).estimate(self.latency_model).latency_ms

    def calibration(self) -> np.ndarray:
        precision = self.bound.space.precision
        return calibration_inputs(self.data, precision.calibration_samples if precision else 128)

    def with_latency_model(self, latency_model: LatencyModel) -> Prepared:
        return dataclasses.replace(self, latency_model=latency_model)

    def fastest_estimate_ms(self) -> float:
        """The lowest estimate the space allows (:func:`fastest_estimate_ms`)."""
        return fastest_estimate_ms(self.bound, self.estimate_ms)


def fastest_candidates(bound: BoundSpace) -> list[Candidate]:
    """The candidates among which the fastest ``bound`` allows is: smallest keep ratios at
    each offered precision, and the smallest student of each family."""
    candidates = []
    if bound.compresses or bound.student_space is None:
        candidates += [bound.extreme("min", precision)
                       for precision in sorted(bound.space.precisions)]
    if bound.student_space is not None:
        candidates += [Candidate(student=plan) for plan in bound.student_space.smallest()]
    return candidates


def fastest_estimate_ms(bound: BoundSpace, estimate_ms: Callable[[Candidate], float]) -> float:
    """The lowest estimate ``bound`` allows (among :func:`fastest_candidates`)."""
    return min(estimate_ms(c) for c in fastest_candidates(bound))


# ------------------------------------------------------------------------------ inputs

def resolve_augmentation(setting: str, data: str | Any) -> Augmentation:
    """``auto``: random crop (4 px) and flip for image folders (and Datasets), none for the
    built-in digit sets (a flipped digit is another digit); anything else as
    :meth:`Augmentation.parse`."""
    if setting == "auto":
        images = not isinstance(data, str) or data.startswith("imagefolder:")
        return STANDARD_AUGMENTATION if images else NO_AUGMENTATION
    return Augmentation.parse(setting)


def load_space(path: Path | None, config: SearchConfig,
               augmentation: Augmentation = NO_AUGMENTATION) -> tuple[SearchSpace, Path]:
    """The search space (default: the shipped one); students train from scratch with the
    finetune's steps, batch and augmentation, the baseline's learning rate with a warm-up,
    and early stopping on a holdout of the training data."""
    source = Path(path) if path else DEFAULT_SPACE_PATH
    space = SearchSpace.from_yaml(source)
    if space.students is not None:
        space = dataclasses.replace(space, students=space.students.with_training(
            TrainSettings(steps=config.finetune_steps, batch_size=config.batch_size,
                          lr=BASELINE_TRAINING.lr, warmup_steps=config.finetune_steps // 10,
                          weight_decay=BASELINE_TRAINING.weight_decay,
                          augmentation=augmentation, precision=config.train_precision),
            EarlyStopping()))
    return space, source


def search_data(config: SearchConfig, resumed: RunInfo | None = None) -> DataSplit:
    """The data of the search ``config`` (a resumed run's ``dataset`` statistics are reused:
    the trials so far saw inputs normalized with them)."""
    return load_search_data(
        config.model, config.data,
        seed=config.data_seed,
        input_shape=config.input_shape,
        val=config.val_data, normalize=config.normalize, resize=config.resize,
        center_crop=config.center_crop, cache=config.data_cache, workers=config.data_workers,
        stats=recorded_stats(resumed))


def run_data(info: RunInfo) -> DataSplit:
    """The data the run ``info`` searched on, prepared as it was (for ``pick``)."""
    ident = info.identity
    for spec in (info.data, ident.val_data):
        if spec is not None and spec.startswith("dataset:"):
            raise RunError(f"{spec} was given to the search as a Python object, which "
                           "autocompress cannot load again; a finetune at pick needs data "
                           "given as a spec (mnist, digits, imagefolder:PATH): export without "
                           "--finetune-steps")
    return load_search_data(
        info.model, info.data, seed=ident.data_seed, input_shape=ident.input_shape,
        val=ident.val_data,
        normalize=ident.normalize, resize=ident.resize, center_crop=ident.center_crop,
        stats=recorded_stats(info))


def recorded_stats(info: RunInfo | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std a run's ``dataset`` normalization came to, if recorded."""
    if info is None or info.data_record is None:
        return None
    preprocessing = info.data_record.preprocessing
    if preprocessing.normalize != "dataset" or not preprocessing.mean:
        return None
    return preprocessing.mean, preprocessing.std


def load_search_data(model: str, data: str | Any, *, seed: int,
                     input_shape: tuple[int, ...] | None, val: str | Any | None = None,
                     normalize: str = "dataset", resize: int | None = None,
                     center_crop: tuple[int, int] | None = None, cache: str = "auto",
                     workers: int | None = None,
                     stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
                     ) -> DataSplit:
    """The data a search of ``model`` trains and validates on, in the input shape it uses
    (the options as :func:`~autocompress.data.load_data` takes them)."""
    spec = resolve_model(model)
    split = load_data(data, seed=seed, val=val, normalize=normalize, resize=resize,
                      center_crop=center_crop, cache=cache, workers=workers,  # type: ignore[arg-type]
                      stats=stats)
    if spec.fixed_in_channels is not None:
        split = split.with_channels(spec.fixed_in_channels)
    if input_shape is None:
        return split
    if input_shape[0] != 1 or len(input_shape) != 4:
        raise DataError(f"--input-shape must be 1,C,H,W with batch 1, got {input_shape}")
    if input_shape[1] != split.input_shape[1]:
        raise DataError(f"--input-shape has {input_shape[1]} channels but the data "
                        f"({split.name}) has {split.input_shape[1]} for this model")
    return split.resized(input_shape[2], input_shape[3])


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
        # a profile cached by an older autocompress gets what profiling records today (the
        # layout block read from ONNX Runtime's graph: a sweep taken in a slow spell may read
        # none); nothing is measured again that it holds
        before = HardwareProfile.load(path)
        after = upgrade_profile(path)
        if (after.layout_block, len(after.kernels), len(after.channel_sweep)) != (
                before.layout_block, len(before.kernels), len(before.channel_sweep)):
            _logger.info("cached profile %s: recorded what profiling adds today (layout "
                         "block %d, %d kernels more)", path, after.layout_block,
                         len(after.kernels) - len(before.kernels))
        return path
    _logger.info("profiling this CPU with ONNX Runtime (%d thread(s), %s); done once, cached "
                 "at %s", threads, "+".join(precisions), path)
    start = time.perf_counter()
    profile_backend(backend, path, precisions=precisions)
    _logger.info("profiled in %.0f s", time.perf_counter() - start)
    return path


def for_device(space: SearchSpace, profile: HardwareProfile) -> SearchSpace:
    """``space`` with the channel rounding the profiled device asks for, where the space
    leaves it to the device (:meth:`SearchSpace.for_device`)."""
    device = f"{profile.backend} on {profile.device.get('cpu', '?')}"
    return space.for_device(profile.channel_block, device)


def load_profile(source: Path, space: SearchSpace) -> HardwareProfile:
    profile = HardwareProfile.load(source)
    if profile.batch_size != 1:
        raise ProfileError(f"{source} was measured at batch size {profile.batch_size}; "
                           "searches estimate batch size 1")
    space.check_precisions(profile.precisions, f"the profile {source} ({profile.describe()})")
    return profile


class Measurer:
    """Measures a serialized model on the profiled device, this machine. A graph is
    measured once: the screening's choice and the trial that finetunes the candidate see the
    same figure, not two draws of the noise.

    Given the run's ``reference`` (its baseline's graph and the latency it measured when the
    run began), each graph is measured beside it, interleaved, and scaled by how far the
    reference ran from that latency: the figure at the machine's speed when the budget was
    settled. The VM's slow spells slow every model alike; unscaled, one CIFAR-10 screening
    measured its 22 candidates near the budget while the baseline ran 14-16% slow, found
    every one over the budget (estimated 0.349-0.368 ms, measured 0.388-0.457 against
    0.373), and finetuned none of them.

    With ``fastest`` (a budget given in milliseconds, not derived from the baseline's
    measurement), the reference's latency follows the fastest the baseline has measured
    in this run: slow spells only add time, so that is the machine's own speed, which the
    user's budget is about. One CIFAR-10 run whose baseline read 0.853 ms at its start (in a
    slow spell; 0.731 a minute before) scaled its allocation's 0.277 ms up to 0.319 against
    a budget of 0.365, and stopped thinning it well inside the budget. A budget derived from
    the baseline's own measurement keeps that measurement as the reference, whatever its
    speed: the budget is a fraction of it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.reference: DriftCheck | None = None
        self.fastest = False
        self._measured: dict[str, float] = {}

    def refer_to(self, reference: DriftCheck | None, *, fastest: bool) -> None:
        """Measure beside ``reference`` from now on (see the class); with ``fastest``, a
        faster latency already seen of the same graph is kept."""
        current = self.reference
        if (fastest and reference is not None and current is not None
                and current.onnx == reference.onnx
                and current.latency_ms < reference.latency_ms):
            reference = current
        self.reference, self.fastest = reference, fastest

    def __call__(self, onnx_bytes: bytes) -> float:
        key = hashlib.sha256(onnx_bytes).hexdigest()
        if key not in self._measured:
            self._measured[key] = self._measure(onnx_bytes)
        return self._measured[key]

    def _measure(self, onnx_bytes: bytes) -> float:
        reference = self.reference
        if reference is None:
            return self.backend.measure_many([onnx_bytes], _NEAR_BUDGET_MEASURE,
                                             rounds=2)[0].median_ms
        beside, model = self.backend.measure_many([reference.onnx, onnx_bytes],
                                                  _NEAR_BUDGET_MEASURE, rounds=2)
        if self.fastest and beside.median_ms < reference.latency_ms:
            _logger.info("the baseline measured %.3f ms, faster than its %.3f ms %s: this "
                         "run's figures are at this speed from now on", beside.median_ms,
                         reference.latency_ms, reference.expected)
            reference = self.reference = dataclasses.replace(
                reference, latency_ms=beside.median_ms,
                expected="at the fastest this run has measured it")
        drift = reference.drift(beside.median_ms)
        scaled = model.median_ms / (1.0 + drift)
        if abs(drift) > reference.tolerance:
            _logger.info("measured %.3f ms while the baseline ran %+.0f%% off its latency %s: "
                         "%.3f ms at that speed", model.median_ms, 100 * drift,
                         reference.expected, scaled)
        return scaled


def measurer(profile: HardwareProfile) -> Measurer | None:
    """A :class:`Measurer` of ``profile``'s device when that device is this machine
    (``None`` otherwise)."""
    if not is_local(profile):
        return None
    return Measurer(apart(backend_for(profile.backend, profile.backend_settings)))


# ------------------------------------------------------------------------------ first run

def first_run_info(config: SearchConfig, prepared: Prepared, profile: HardwareProfile,
                   profile_src: Path, ident: RunIdentity, space_src: Path,
                   baseline_onnx: Path) -> RunInfo:
    """Measure the baseline, calibrate the estimate, settle the budget (first run only).

    When the profile is of this machine, the baseline and uniformly pruned copies of it
    (keep ratios 1, 0.75, 0.5, 0.25) are exported and measured, interleaved, on the
    profile's backend; ``measured = offset + scale * estimate`` fitted over them corrects
    what the kernel-level estimate misses for this model family.
    """
    baseline = prepared.baseline
    onnx_bytes = prepared.compress(Candidate()).structure_onnx()
    write_bytes_atomic(baseline_onnx, onnx_bytes)
    raw_ms = prepared.latency_model.estimate(onnx_bytes).latency_ms
    local = is_local(profile)
    measured = None
    calibration = device_calibration(profile, raw_ms)
    if local:
        measured, calibration = measure_and_calibrate(
            profile, prepared.latency_model, prepared.compress, prepared.bound, onnx_bytes,
            calibrate=config.calibrate, precisions=calibrated_precisions(prepared.bound),
            calibration_data=prepared.calibration)
        _logger.info("baseline: accuracy %.4f, measured %.3f ms on %s; profile estimate "
                     "%.3f ms, calibrated as %.3f ms + %.3f x estimate%s", baseline.accuracy,
                     measured.median_ms, profile.backend, raw_ms, calibration.offset_ms,
                     calibration.scale, calibration.describe_precisions())
    else:
        _logger.info("baseline: accuracy %.4f, profile estimate %.3f ms (the profile is of "
                     "another device, so nothing is measured here)%s", baseline.accuracy,
                     calibration.offset_ms + calibration.scale * raw_ms,
                     f"; {profile.device_calibration.describe()}"
                     if profile.device_calibration else "; no device calibration: "
                     "`autocompress calibrate` corrects raw estimates")
    latency_ms = (measured.median_ms if measured else
                  calibration.offset_ms + calibration.scale * raw_ms)
    if config.latency_budget_ms is not None:
        budget = Budget(config.latency_budget_ms, "given")
    else:
        budget = Budget(latency_ms / 2, "half the baseline's "
                        + ("measured" if measured else "estimated") + " latency")
    stats = model_stats(baseline.module, prepared.example_input, onnx_bytes)
    record = BaselineRecord(
        accuracy=baseline.accuracy, source=baseline.source, latency_ms=latency_ms,
        latency_source="measured" if measured else "estimate",
        predicted_latency_ms=calibration.offset_ms + calibration.scale * raw_ms,
        measured_latency=measured, **stats.to_dict())
    calibrated = prepared.with_latency_model(calibration.apply(prepared.latency_model))
    data = prepared.data
    data_record = dataclasses.replace(data.record, preprocessing=dataclasses.replace(
        data.record.preprocessing, embedded=config.embed_preprocessing))
    return RunInfo(
        identity=ident, model=config.model, data=spec_name(config.data), data_record=data_record,
        checkpoint=str(Path(config.checkpoint).resolve()) if config.checkpoint else None,
        input_shape=tuple(prepared.data.input_shape), num_classes=prepared.data.num_classes,
        storage=redact_url(config.storage) if config.storage else None, study=config.study,
        trials=config.trials, space=str(space_src),
        profile=ProfileRef(str(profile_src), profile.describe(), local),
        calibration=calibration, budget=budget, baseline=record,
        fastest_estimate_ms=calibrated.fastest_estimate_ms())


def device_calibration(profile: HardwareProfile, raw_ms: float) -> Calibration:
    """The profile's device calibration (``autocompress calibrate``) as a run's
    calibration, or none: what a search applies when it cannot measure the device."""
    device = profile.device_calibration
    if device is None:
        return Calibration(raw_estimate_ms=raw_ms)
    return Calibration(scale=device.scale, offset_ms=device.offset_ms, applied=True,
                       raw_estimate_ms=raw_ms, source="device")


def calibrated_precisions(bound: BoundSpace) -> tuple[str, ...]:
    """The precisions besides fp32 that the space's layers may run, each calibrated on copies
    of the baseline measured at it (:func:`measure_and_calibrate`)."""
    if not bound.precision_params:
        return ()
    return tuple(sorted(bound.space.precisions - {"fp32"}))


def measure_and_calibrate(profile: HardwareProfile, latency_model: LatencyModel,
                          compress: Callable[[Candidate], CompressedModel], bound: BoundSpace,
                          onnx_bytes: bytes, *, calibrate: bool,
                          precisions: Sequence[str] = (),
                          calibration_data: Callable[[], np.ndarray] | None = None
                          ) -> tuple[Any, Calibration]:
    """Measure the baseline's graph ``onnx_bytes`` on ``profile``'s backend (this machine)
    and, with ``calibrate``, uniformly pruned copies of it (built by ``compress`` from
    ``bound``), interleaved; fit ``measured = offset + scale * estimate`` over them, the
    estimate being ``latency_model``'s (uncalibrated). Returns the baseline's measurement
    and the calibration (without ``calibrate``: the profile's device calibration, if any).

    For each of ``precisions`` (int8, where the space lets its layers run it), copies with
    every layer at that precision (keep ratios :data:`_PRECISION_RATIOS`, quantized with
    ``calibration_data`` as the search deploys them) are measured in the same pass, and a
    factor on that precision's node times and a fixed time per node are fitted to bring
    their calibrated estimates to their measurements (:func:`precision_terms`): the fp32
    copies do not tell how far the profile's one-kernel int8 measurements are from int8
    inside a network (on an AVX-512 VNNI VM, all-int8 resnet20 measured nearly the same at
    every width, and less with fewer blocks; in the steadiest of three interleaved passes,
    the fp32 calibration put int8 networks with two or four blocks dropped at 1.5x their
    measurement, the int8 terms five of six int8 networks they were not fitted on within 6%).

    A pass whose baseline measures slower than the profile's estimate of it by more than
    :data:`START_DRIFT` is taken again, after a pause, up to three passes, and the fastest
    kept (:func:`~autocompress.hardware.drift.measure_beside`, ``slower_only``): one run
    that began in a slow spell of the VM measured the baseline at 1.35 ms against 1.05 a
    minute before, scaled every estimate of the run by 1.17, and stopped after 30
    candidates over budget; another measured 1.32 ms against 1.06 (+17% over the estimate),
    scaled its estimates by 1.24, took its latency-aware allocation for over budget and
    exported the uniform pruning."""
    backend = apart(backend_for(profile.backend, profile.backend_settings))
    raw_ms = latency_model.estimate(onnx_bytes).latency_ms
    models, keeps = [onnx_bytes], [1.0]
    copies: list[tuple[str, float, CompressedModel]] = []
    if calibrate:
        for ratio in _CALIBRATION_RATIOS[1:]:
            models.append(compress(bound.uniform(ratio)).structure_onnx())
            keeps.append(ratio)
        if precisions and calibration_data is None:
            raise ValueError("calibrating other precisions needs calibration_data")
        for precision in precisions:
            for ratio in _PRECISION_RATIOS:
                copy = compress(bound.uniform(ratio, precision))
                copies.append((precision, ratio, copy))
                models.append(copy.rewrite(copy.structure_onnx(), calibration_data))
    # the profile was measured on this machine: its estimate of the baseline tells a slow
    # spell at the start of the run, which would scale every estimate of the run
    check = DriftCheck(onnx_bytes, raw_ms, START_DRIFT, passes=3, pause_s=_START_PAUSE_S,
                       expected="estimated by the profile of this machine", slower_only=True)
    kept = measure_beside(backend, models[1:], check, _BASELINE_MEASURE, rounds=3)
    results = [kept.reference, *kept.measurements]
    calibration = device_calibration(profile, raw_ms)
    if calibrate:
        floats = len(keeps)
        raws = [latency_model.estimate(m).latency_ms for m in models[:floats]]
        results = _fitting(backend, models, results, raws)
        measured = [r.median_ms for r in results[:floats]]
        scale, offset = fit_calibration(raws, measured)
        points = [CalibrationPoint(k, e, m) for k, e, m in zip(keeps, raws, measured, strict=True)]
        factors: dict[str, float] = {}
        per_node: dict[str, float] = {}
        for precision in precisions:
            mine = [(ratio, copy, result) for (p, ratio, copy), result
                    in zip(copies, results[floats:], strict=True) if p == precision]
            ms = [result.median_ms for _, _, result in mine]
            factors[precision], per_node[precision] = precision_terms(
                latency_model, scale, offset, precision, [copy for _, copy, _ in mine], ms)
            points += [CalibrationPoint(ratio, copy.estimate(latency_model).latency_ms, m,
                                        precision)
                       for (ratio, copy, _), m in zip(mine, ms, strict=True)]
        calibration = Calibration(
            scale=scale, offset_ms=offset, applied=True, raw_estimate_ms=raw_ms, source="model",
            points=tuple(points), precision_scales=factors, precision_node_ms=per_node)
    return results[0], calibration


def fit_misses(raw_ms: Sequence[float], measured_ms: Sequence[float]) -> float:
    """The largest share by which the calibration fitted over these points
    (:func:`fit_calibration`) misses one of their measurements."""
    scale, offset = fit_calibration(raw_ms, measured_ms)
    return max(abs(offset + scale * r - m) / m for r, m in zip(raw_ms, measured_ms, strict=True))


def _fitting(backend: Backend, models: Sequence[bytes], results: list[LatencyMeasurement],
             raws: Sequence[float]) -> list[LatencyMeasurement]:
    """``results`` (of ``models``, the first ``len(raws)`` the fp32 copies estimated at
    ``raws``), measured again while the calibration fitted over them misses one by more than
    :data:`FIT_TOLERANCE`, each model keeping its fastest pass (a slow spell only adds
    time), up to :data:`_FIT_PASSES` passes in all.

    The pass's baseline check (:data:`START_DRIFT`) does not see a spell that slows some
    copies and not others: one default search on mnist measured its copies at such
    different speeds that the calibration came to 0.212 ms + 0.609 x estimate (the next run
    on the same machine: 0.033 + 0.946 x), estimated the fastest model the space allows at
    0.372 ms, and refused its 0.330 ms budget. On a steady machine the fit misses
    resnet20's copies by 3% at most."""
    floats = len(raws)
    misses = fit_misses(raws, [r.median_ms for r in results[:floats]])
    passes = 1
    while misses > FIT_TOLERANCE and passes < _FIT_PASSES:
        _logger.info("the calibration misses a measured copy of the baseline by %.0f%%: this "
                     "machine's speed changed within the pass; measuring the copies again",
                     100 * misses)
        again = backend.measure_many(list(models), _BASELINE_MEASURE, rounds=3)
        results = [min(one, other, key=lambda m: m.median_ms)
                   for one, other in zip(results, again, strict=True)]
        passes += 1
        misses = fit_misses(raws, [r.median_ms for r in results[:floats]])
    if misses > FIT_TOLERANCE:
        _logger.warning("the calibration misses a measured copy of the baseline by %.0f%% "
                        "after %d passes: this model's latency is not linear in the profile's "
                        "estimate, or this machine is unsteady", 100 * misses, passes)
    return results


def precision_terms(latency_model: LatencyModel, scale: float, offset_ms: float,
                    precision: str, copies: Sequence[CompressedModel],
                    measured_ms: Sequence[float]) -> tuple[float, float]:
    """(factor, ms per node) on ``precision``'s nodes that bring the estimates of ``copies``,
    calibrated by ``scale`` and ``offset_ms``, closest to ``measured_ms``: a non-negative
    least-squares fit, relative to each measurement (each copy's estimate is linear in both
    terms). ``(1, 0)`` where the copies leave the terms undetermined."""
    plain = latency_model.calibrated(scale, offset_ms)
    doubled = latency_model.calibrated(scale, offset_ms, {precision: 2.0})
    counted = latency_model.calibrated(scale, offset_ms, None, {precision: 1.0})
    rows, targets = [], []
    for copy, ms in zip(copies, measured_ms, strict=True):
        at_one = copy.estimate(plain).latency_ms
        part = copy.estimate(doubled).latency_ms - at_one      # its nodes' time, calibrated
        nodes = copy.estimate(counted).latency_ms - at_one     # scale x their count
        rows.append((part / ms, nodes / ms))
        targets.append((ms - (at_one - part)) / ms)
    a, b = np.array(rows), np.array(targets)
    columns = a.max(axis=0) if len(rows) >= 2 and np.all(np.isfinite(a)) else None
    if columns is None or np.any(columns <= 0):
        return 1.0, 0.0
    (factor, per_node), _ = nnls(a / columns, b)
    factor, per_node = factor / columns[0], per_node / columns[1]
    if factor == 0.0 and per_node == 0.0:
        return 1.0, 0.0
    if factor > _PRECISION_FACTOR_MAX:
        _logger.warning("the %s copies of the baseline measured %.1fx the profile's %s kernels "
                        "(held at %.1fx): the profile may be of another device; re-profile "
                        "with `autocompress profile --precisions fp32,%s`", precision, factor,
                        precision, _PRECISION_FACTOR_MAX, precision)
        factor = _PRECISION_FACTOR_MAX
    return float(factor), float(per_node)


# ------------------------------------------------------------------------------ seeding

def uniform_params(bound: BoundSpace, ratio: float, precision: str = "fp32",
                   drop: Sequence[str] = ()) -> dict[str, Any]:
    """Parameters putting every channel group at the allowed value nearest below ``ratio``,
    every sparsity at its smallest allowed value, every layer at ``precision`` where allowed
    (post-training quantization), no low-rank factorization (the largest rank ratio allowed),
    every residual block kept but those in ``drop`` (where the space lets them go), and
    one-shot pruning where the schedule is searched: what a user does by hand."""
    params: dict[str, Any] = {}
    if bound.student_space is not None:
        params[KIND_PARAM] = "compressed"
    for c in bound.precision_params:
        if c.param is not None:
            params[c.param] = precision if precision in c.choices else c.choices[0]
    if bound.method_param is not None and bound.method_param.param is not None:
        params[bound.method_param.param] = "ptq"
    if bound.importance_param is not None and bound.importance_param.param is not None:
        params[bound.importance_param.param] = bound.space.importance  # the first choice
    for p in bound.channel_params:
        if p.param is None:
            continue
        values = sorted(p.value.grid())
        below = [v for v in values if v <= ratio + 1e-9]
        params[p.param] = below[-1] if below else values[0]
    for p in bound.sparsity_params:
        if p.param is not None:
            params[p.param] = min(p.value.grid())
    for p in bound.lowrank_params:
        if p.param is not None:
            params[p.param] = max(p.value.grid())
    for p in bound.depth_params:
        if p.param is not None:
            params[p.param] = min(p.value.grid()) if p.target in drop else max(p.value.grid())
    schedule = bound.schedule_param
    if schedule is not None and schedule.param is not None:
        params[schedule.param] = "oneshot" if "oneshot" in schedule.choices else \
            schedule.choices[0]
    return params


def seed_params(prepared: Prepared, budget_ms: float,
                measure: Callable[[bytes], float] | None = None,
                precision: str = "fp32") -> dict[str, Any] | None:
    """Parameters of the uniform pruning (same keep ratio everywhere, every layer at
    ``precision``) that fits closest below the budget: what a user would try by hand, as a
    first trial. Where the space searches depth and no keep ratio fits with every residual
    block, blocks are dropped evenly through the network (:func:`evenly`), as few as fit: a
    shallower network of the same family, thinned uniformly. When ``measure`` is given, a
    candidate whose estimate is within :data:`SEED_MEASURE_MARGIN` of the budget is measured
    (wider than the objective's :data:`NEAR_BUDGET_MARGIN`: a seed is worth a measurement),
    and a measured one must leave :data:`MEASURED_HEADROOM` of the budget free, as the
    screening asks: a uniform seed measured once 2% inside its budget measured 26% over it
    in the closing pass of a CIFAR-10 cell."""
    bound = prepared.bound
    channel = [p for p in bound.channel_params if p.param is not None]
    if not channel:
        return None
    ratios = sorted({v for p in channel for v in p.value.grid()}, reverse=True)
    blocks = [p.target for p in bound.depth_params
              if p.param is not None and min(p.value.grid()) == 0.0]
    passed_over: list[str] = []   # measured near the budget and left: what the choice hung on
    for count in range(len(blocks) + 1):
        for ratio in ratios:
            drop = evenly(blocks, count)
            params = uniform_params(bound, ratio, precision, drop=drop)
            compressed = prepared.compress(bound.candidate_from_params(params))
            latency = compressed.estimate(prepared.latency_model).latency_ms
            limit = budget_ms
            measured = False
            if measure is not None and near_budget(latency, budget_ms, SEED_MEASURE_MARGIN):
                latency = measure(compressed.rewrite(compressed.structure_onnx(),
                                                     prepared.calibration))
                # measured once here, again at the pick: leave the screening's headroom
                limit = budget_ms * (1.0 - MEASURED_HEADROOM)
                measured = True
            described = f"keep {ratio:g}" + (f", {' '.join(drop)} dropped" if drop else "")
            if latency <= limit:
                _logger.info(
                    "uniform seed, %s: %s, %s %.3f ms of the %.3f ms budget%s", precision,
                    described, "measured" if measured else "estimated", latency, budget_ms,
                    f" (passed over, measured above {limit:.3f} ms: {'; '.join(passed_over)})"
                    if passed_over else "")
                return params
            if measured:
                passed_over.append(f"{described} at {latency:.3f} ms")
    return None


def evenly(blocks: Sequence[str], count: int) -> tuple[str, ...]:
    """``count`` of ``blocks`` (in the order they run) spread evenly through them: the middle
    of each of ``count`` equal stretches (resnet20's 7 blocks, 3 dropped: one per stage)."""
    if count <= 0:
        return ()
    return tuple(blocks[min(int((i + 0.5) * len(blocks) / count), len(blocks) - 1)]
                 for i in range(count))
