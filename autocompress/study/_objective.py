"""The Optuna objective: sample a candidate, estimate, train, evaluate the deployed model,
record."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import optuna
import torch
from torch import nn

from autocompress._io import write_bytes_atomic, write_json_atomic
from autocompress.data import DataSplit
from autocompress.evaluation import TrainSettings, evaluate_accuracy, model_stats, train
from autocompress.exceptions import ExportError, FinetuneDivergedError
from autocompress.hardware import LatencyModel
from autocompress.hardware.export import export_onnx
from autocompress.space import BoundSpace, Candidate
from autocompress.transforms import (
    apply_sparsity,
    make_sparsity_permanent,
    prune_channels,
    weight_sparsity,
)

__all__ = ["CONSTRAINT", "NEAR_BUDGET_MARGIN", "TRIAL_ERRORS", "Deployed", "Objective",
           "TrainOutcome", "TrialReport", "build_structure", "deploy_candidate",
           "deployable_onnx", "estimate_candidate", "train_candidate"]

_logger = logging.getLogger(__name__)

CONSTRAINT = "latency_budget"
#: Candidates whose estimate lies within this fraction of the budget are measured, when the
#: profile is of this machine: there the estimate's error would decide.
NEAR_BUDGET_MARGIN = 0.1
#: A quantization-aware finetune runs at this fraction of the finetune learning rate: with
#: BatchNorm folded into the int8 convolutions, resnet20 diverged at 5e-3 and not at 1e-3.
QAT_LR_FACTOR = 0.1
#: Errors that end one trial (recorded as its fail_reason) but not the search.
TRIAL_ERRORS = (FinetuneDivergedError, ExportError)


@dataclass(frozen=True)
class TrialReport:
    number: int
    accuracy: float
    predicted_latency_ms: float
    within_budget: bool
    seconds: float
    latency_source: str = "estimate"
    kind: str = "compressed"


def build_structure(baseline: nn.Module, candidate: Candidate, data: DataSplit
                    ) -> tuple[nn.Module, dict[str, tuple[int, int]]]:
    """The untrained model of ``candidate``: a pruned copy of ``baseline``, or a freshly
    initialised student. Returns it with the kept channels per pruned group."""
    if candidate.student is not None:
        from autocompress.space._students import StudentPlan

        plan = StudentPlan.from_dict(candidate.student)
        module = plan.student.build(data.num_classes, data.input_shape[1])
        return module.eval(), {}
    module = copy.deepcopy(baseline).eval()
    channels = prune_channels(module, candidate, torch.zeros(data.input_shape))
    return module, channels


def calibration_inputs(data: DataSplit, samples: int) -> np.ndarray:
    """The training images that calibrate activation ranges for int8 (a fixed subset)."""
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.train_x), generator=generator)[:samples]
    return data.train_x[order].numpy().astype(np.float32)


def deployable_onnx(fp32_onnx: bytes, candidate: Candidate, calibration: np.ndarray) -> bytes:
    """What runs on the device: ``fp32_onnx`` quantized by ONNX Runtime's tools to the
    candidate's per-layer precisions (unchanged when every layer is fp32)."""
    if not candidate.quantized_layers:
        return fp32_onnx
    from autocompress.transforms import quantize_onnx

    return quantize_onnx(fp32_onnx, candidate.precision, calibration)


def estimate_candidate(latency_model: LatencyModel, structure: bytes, candidate: Candidate
                       ) -> tuple[float, float]:
    """(estimate, std) in ms of ``structure`` (the fp32 ONNX of the candidate) at the
    candidate's precisions, Quantize/Dequantize boundaries included."""
    if not candidate.quantized_layers:
        estimate = latency_model.estimate(structure)
    else:
        from autocompress.transforms import node_precisions

        proto = onnx.load_from_string(structure)
        estimate = latency_model.estimate(
            proto, precisions=node_precisions(proto, candidate.precision))
    return estimate.latency_ms, estimate.std_ms


@dataclass
class Objective:
    """Scores one candidate: (deployed accuracy after training, latency), budget as a
    constraint. Over-budget candidates are not trained: their accuracy is the untrained
    float model's and they cannot enter the front.

    Compressed candidates are pruned, finetuned (with fake quantization for ``qat``), made
    sparse, then quantized by ONNX Runtime's tools; students are trained by distillation
    from ``baseline`` (the teacher) for the same number of steps. The accuracy recorded is
    that of the exported model: for quantized candidates it is measured running the
    quantized ONNX model in ONNX Runtime.
    """

    baseline: nn.Module
    data: DataSplit
    space: BoundSpace
    latency_model: LatencyModel
    budget_ms: float
    finetune: TrainSettings
    trial_dir: Callable[[int], object]
    on_report: Callable[[TrialReport], None] | None = None
    #: Measures a serialized model on the profiled device, when that device is this machine.
    measure: Callable[[bytes], float] | None = None
    #: Candidates whose estimate lies within this fraction of the budget are measured.
    remeasure_margin: float = NEAR_BUDGET_MARGIN
    _calibration: np.ndarray | None = field(default=None, repr=False)
    _teacher_logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(self.data.input_shape)

    @property
    def calibration(self) -> np.ndarray:
        if self._calibration is None:
            precision = self.space.space.precision
            self._calibration = calibration_inputs(
                self.data, precision.calibration_samples if precision else 128)
        return self._calibration

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        try:
            return self._run(trial)
        except TRIAL_ERRORS as exc:
            trial.set_user_attr("fail_reason", str(exc))
            _logger.warning("trial %d failed: %s", trial.number, exc)
            raise

    def _run(self, trial: optuna.Trial) -> tuple[float, float]:
        start = time.perf_counter()
        candidate = self.space.sample(trial)
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr("kind", candidate.kind)
        trial.set_user_attr("precision", candidate.precision_summary)
        x = self.example_input
        module, channels = build_structure(self.baseline, candidate, self.data)
        if candidate.student is not None:
            from autocompress.space._students import StudentPlan

            trial.set_user_attr("family", StudentPlan.from_dict(candidate.student).describe())
        trial.set_user_attr("channels", {k: list(v) for k, v in channels.items()})

        t_build = time.perf_counter()
        structure = export_onnx(module, x)
        predicted, std = estimate_candidate(self.latency_model, structure, candidate)
        trial.set_user_attr("estimated_latency_ms", predicted)
        trial.set_user_attr("predicted_latency_std_ms", std)
        source = "estimate"
        near = abs(predicted - self.budget_ms) <= self.remeasure_margin * self.budget_ms
        if self.measure is not None and near:
            # near the budget the estimate's error decides: measure what would be deployed
            predicted = self.measure(deployable_onnx(structure, candidate, self.calibration))
            source = "measured"
            trial.set_user_attr("predicted_latency_std_ms", 0.0)
        t_estimate = time.perf_counter()
        trial.set_user_attr("predicted_latency_ms", predicted)
        trial.set_user_attr("latency_source", source)
        trial.set_constraint(CONSTRAINT, predicted - self.budget_ms)
        within = predicted <= self.budget_ms

        steps = 0
        if within:
            steps = self._train(trial, module, candidate)
        t_train = time.perf_counter()
        if within:
            result = deploy_candidate(module, candidate, self.data, lambda: self.calibration)
            deployed, accuracy = result.onnx, result.accuracy
            if result.accuracy_source == "onnxruntime":
                trial.set_user_attr("float_accuracy", result.float_accuracy)
            trial.set_user_attr("accuracy_source", result.accuracy_source)
        else:   # not trained: the untrained float model's accuracy, as a record only
            deployed = export_onnx(module, x)
            accuracy = evaluate_accuracy(module, self.data.val_x, self.data.val_y)
            trial.set_user_attr("accuracy_source", "torch")
        stats = model_stats(module, x, deployed)
        trial.set_user_attr("accuracy", accuracy)
        trial.set_user_attr("finetuned", within)
        trial.set_user_attr("finetune_steps", steps)
        trial.set_user_attr("sparsity", weight_sparsity(module))
        for key, value in stats.to_dict().items():
            trial.set_user_attr(key, value)
        if within:
            folder = self.trial_dir(trial.number)
            write_json_atomic(f"{folder}/candidate.json", candidate.to_dict())
            write_bytes_atomic(f"{folder}/model.onnx", deployed)
            trial.set_user_attr("artifact", f"trials/{trial.number:05d}/model.onnx")
        seconds = time.perf_counter() - start
        _logger.debug("trial %d: build %.1f s, estimate %.1f s, train %.1f s, rest %.1f s",
                      trial.number, t_build - start, t_estimate - t_build,
                      t_train - t_estimate, time.perf_counter() - t_train)
        trial.set_user_attr("seconds", seconds)
        if self.on_report:
            self.on_report(TrialReport(trial.number, accuracy, predicted, within, seconds,
                                       source, candidate.kind))
        return accuracy, predicted

    def _train(self, trial: optuna.Trial, module: nn.Module, candidate: Candidate) -> int:
        """Train ``module`` in place (finetune or distillation); returns the steps run."""
        settings = TrainSettings(**{**self.finetune.__dict__, "seed": trial.number})
        if candidate.student is not None and self._teacher_logits is None:
            self._teacher_logits = teacher_logits_once(self.baseline, self.data, candidate)
        outcome = train_candidate(module, candidate, self.data, settings,
                                  teacher=self.baseline, teacher_logits=self._teacher_logits)
        if candidate.student is not None:
            trial.set_user_attr("stopped_early", outcome.stopped_early)
        return outcome.steps


@dataclass(frozen=True)
class TrainOutcome:
    steps: int
    stopped_early: bool = False


def teacher_logits_once(teacher: nn.Module, data: DataSplit, candidate: Candidate
                        ) -> torch.Tensor | None:
    """The teacher's logits on the training split, when the student's distillation can use
    them cached (no hint on intermediate features); else None."""
    from autocompress.evaluation import teacher_logits_for
    from autocompress.space._students import StudentPlan

    if StudentPlan.from_dict(candidate.student or {}).distill.needs_teacher_per_batch:
        return None
    return teacher_logits_for(teacher, data.train_x, batch_size=500)


def train_candidate(module: nn.Module, candidate: Candidate, data: DataSplit,
                    settings: TrainSettings, *, teacher: nn.Module,
                    teacher_logits: torch.Tensor | None = None) -> TrainOutcome:
    """Train ``module`` (built by :func:`build_structure`) in place the way the search does.

    Compressed candidates: sparsity masks applied, finetune (quantization-aware, at
    ``QAT_LR_FACTOR`` of the learning rate, when int8 layers use ``qat``), masks made
    permanent. Students: distillation from ``teacher`` with the plan's settings, for
    ``settings.steps`` steps seeded by ``settings.seed``.
    """
    if candidate.student is not None:
        from autocompress.evaluation import distill
        from autocompress.space._students import StudentPlan

        plan = StudentPlan.from_dict(candidate.student)
        distill_settings = replace(plan.distill, training=replace(
            plan.distill.training, steps=settings.steps, seed=settings.seed))
        result = distill(module, teacher, data.train_x, data.train_y, distill_settings,
                         teacher_logits=None if distill_settings.needs_teacher_per_batch
                         else teacher_logits)
        return TrainOutcome(int(result.steps), bool(result.stopped_early))
    apply_sparsity(module, candidate.sparsity)
    int8 = [name for name, p in candidate.precision.items() if p == "int8"]
    if candidate.quantization == "qat" and int8:
        from autocompress.transforms import finish_qat, prepare_qat

        # the zeros are fixed first, then kept zero while fake quantization trains
        make_sparsity_permanent(module)
        masks = {name: m.weight.detach() != 0 for name, m in module.named_modules()
                 if name in candidate.sparsity and candidate.sparsity[name] > 0}
        handle = prepare_qat(module, int8, torch.zeros(data.input_shape))
        settings = TrainSettings(**{**settings.__dict__, "lr": settings.lr * QAT_LR_FACTOR})
        train(module, data.train_x, data.train_y, settings,
              on_step=lambda _step, _loss: _reapply(module, masks))
        finish_qat(handle)
        _reapply(module, masks)
    else:
        train(module, data.train_x, data.train_y, settings)
        make_sparsity_permanent(module)
    return TrainOutcome(settings.steps)


@dataclass(frozen=True)
class Deployed:
    """A trained candidate as it runs on the device, and its validation accuracy."""

    onnx: bytes
    accuracy: float
    float_accuracy: float
    accuracy_source: str          # "torch" (fp32) or "onnxruntime" (the quantized model)


def deploy_candidate(module: nn.Module, candidate: Candidate, data: DataSplit,
                     calibration: Callable[[], np.ndarray]) -> Deployed:
    """Export the trained ``module`` at the candidate's precisions and measure its accuracy
    on the validation split: in torch for fp32, in ONNX Runtime for a quantized model.
    ``calibration`` gives the int8 calibration samples (called only when needed)."""
    float_accuracy = evaluate_accuracy(module, data.val_x, data.val_y)
    fp32_onnx = export_onnx(module, torch.zeros(data.input_shape))
    if not candidate.quantized_layers:
        return Deployed(fp32_onnx, float_accuracy, float_accuracy, "torch")
    from autocompress.transforms import onnx_accuracy

    deployed = deployable_onnx(fp32_onnx, candidate, calibration())
    return Deployed(deployed, onnx_accuracy(deployed, data.val_x.numpy(), data.val_y.numpy()),
                    float_accuracy, "onnxruntime")


def _reapply(module: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero again the weights sparsity removed (the trained tensor may sit behind a
    parametrization while fake quantization is attached)."""
    modules = dict(module.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            layer = modules.get(name)
            if layer is None:
                continue
            params = getattr(layer, "parametrizations", None)
            weight = params.weight.original if params is not None and hasattr(
                params, "weight") else layer.weight
            if weight.shape == mask.shape:
                weight.mul_(mask)
