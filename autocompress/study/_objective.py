"""The Optuna objective: sample a candidate, estimate, finetune, evaluate, record."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch
from torch import nn

from autocompress._io import write_bytes_atomic, write_json_atomic
from autocompress.data import DataSplit
from autocompress.evaluation import TrainSettings, evaluate_accuracy, model_stats, train
from autocompress.exceptions import ExportError, FinetuneDivergedError
from autocompress.hardware import LatencyModel
from autocompress.hardware.export import export_onnx
from autocompress.space import BoundSpace
from autocompress.transforms import (
    apply_sparsity,
    make_sparsity_permanent,
    prune_channels,
    weight_sparsity,
)

__all__ = ["CONSTRAINT", "NEAR_BUDGET_MARGIN", "TRIAL_ERRORS", "Objective", "TrialReport"]

_logger = logging.getLogger(__name__)

CONSTRAINT = "latency_budget"
#: Candidates whose estimate lies within this fraction of the budget are measured, when the
#: profile is of this machine: there the estimate's error would decide.
NEAR_BUDGET_MARGIN = 0.1
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


@dataclass
class Objective:
    """Scores one candidate: (accuracy after finetune, estimated latency), budget as a
    constraint. Over-budget candidates are not finetuned: their accuracy is measured
    right after compression and they cannot enter the front."""

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

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(self.data.input_shape)

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
        x = self.example_input
        module = copy.deepcopy(self.baseline).eval()
        channels = prune_channels(module, candidate, x)
        trial.set_user_attr("channels", {k: list(v) for k, v in channels.items()})

        t_prune = time.perf_counter()
        structure = export_onnx(module, x)
        estimate = self.latency_model.estimate(structure)
        predicted = estimate.latency_ms
        trial.set_user_attr("estimated_latency_ms", predicted)
        trial.set_user_attr("predicted_latency_std_ms", estimate.std_ms)
        source = "estimate"
        near = abs(predicted - self.budget_ms) <= self.remeasure_margin * self.budget_ms
        if self.measure is not None and near:
            # near the budget the estimate's error decides; measure for real instead
            predicted = self.measure(structure)
            source = "measured"
            trial.set_user_attr("predicted_latency_std_ms", 0.0)
        t_estimate = time.perf_counter()
        trial.set_user_attr("predicted_latency_ms", predicted)
        trial.set_user_attr("latency_source", source)
        trial.set_constraint(CONSTRAINT, predicted - self.budget_ms)
        within = predicted <= self.budget_ms

        if within:
            apply_sparsity(module, candidate.sparsity)
            settings = TrainSettings(**{**self.finetune.__dict__, "seed": trial.number})
            train(module, self.data.train_x, self.data.train_y, settings)
            make_sparsity_permanent(module)
        t_train = time.perf_counter()
        accuracy = evaluate_accuracy(module, self.data.val_x, self.data.val_y)
        onnx_bytes = export_onnx(module, x)
        stats = model_stats(module, x, onnx_bytes)
        trial.set_user_attr("accuracy", accuracy)
        trial.set_user_attr("finetuned", within)
        trial.set_user_attr("finetune_steps", self.finetune.steps if within else 0)
        trial.set_user_attr("sparsity", weight_sparsity(module))
        for key, value in stats.to_dict().items():
            trial.set_user_attr(key, value)
        if within:
            folder = self.trial_dir(trial.number)
            write_json_atomic(f"{folder}/candidate.json", candidate.to_dict())
            write_bytes_atomic(f"{folder}/model.onnx", onnx_bytes)
            trial.set_user_attr("artifact", f"trials/{trial.number:05d}/model.onnx")
        seconds = time.perf_counter() - start
        _logger.debug("trial %d: prune %.1f s, estimate %.1f s, finetune %.1f s, rest %.1f s",
                      trial.number, t_prune - start, t_estimate - t_prune,
                      t_train - t_estimate, time.perf_counter() - t_train)
        trial.set_user_attr("seconds", seconds)
        if self.on_report:
            self.on_report(TrialReport(trial.number, accuracy, predicted, within, seconds,
                                       source))
        return accuracy, predicted

