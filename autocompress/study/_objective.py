"""The Optuna objective: sample a candidate, compress, estimate, train, deploy, record."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
import torch

from autocompress._io import write_bytes_atomic, write_json_atomic
from autocompress.evaluation import TrainSettings, evaluate_accuracy, model_stats
from autocompress.exceptions import ExportError, FinetuneDivergedError
from autocompress.hardware.export import export_onnx
from autocompress.settings import DistillSettings
from autocompress.study._config import trial_seed
from autocompress.study._prepare import NEAR_BUDGET_MARGIN, Prepared, near_budget
from autocompress.study._records import TrialRecord
from autocompress.transforms import (
    CompressedModel,
    Deployed,
    apply_sparsity,
    make_sparsity_permanent,
    weight_sparsity,
)

__all__ = ["CONSTRAINT", "SEEDED_ATTR", "TRIAL_ERRORS", "Objective"]

_logger = logging.getLogger(__name__)

CONSTRAINT = "latency_budget"
#: The user attribute of trials the search queued itself (its value says why).
SEEDED_ATTR = "seeded"
#: Errors that end one trial (recorded as its fail_reason) but not the search.
TRIAL_ERRORS = (FinetuneDivergedError, ExportError)


@dataclass
class Objective:
    """Scores one candidate: (deployed accuracy after training, latency), the budget as a
    constraint. Over-budget candidates are not trained: their accuracy is the untrained
    network's and they cannot enter the front.

    Every candidate goes through the one pipeline (:class:`~autocompress.transforms.
    CompressedModel`): built, estimated (measured instead, where the profile is of this
    machine, when the estimate is near the budget or the search queued the trial), trained
    (finetune, quantization-aware finetune or distillation), exported as deployed
    (quantized by ONNX Runtime's tools), and its accuracy measured on that: in ONNX Runtime
    for a rewritten graph.
    """

    prepared: Prepared
    budget_ms: float
    finetune: TrainSettings
    trial_dir: Callable[[int], Path]
    on_record: Callable[[int, TrialRecord], None] | None = None
    #: Measures a serialized model on the profiled device, when that device is this machine.
    measure: Callable[[bytes], float] | None = None
    remeasure_margin: float = NEAR_BUDGET_MARGIN
    #: what the trial returns: accuracy, latency, and the compressed size when asked
    objectives: tuple[str, ...] = ("accuracy", "latency")
    #: scores an untrained network without training it (recorded before the finetune)
    screen: Callable[[torch.nn.Module], float] | None = None
    #: finetunes learn from the uncompressed model's outputs too, with these losses
    recovery: DistillSettings | None = None
    _teacher_logits: torch.Tensor | None = field(default=None, repr=False)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            return self._run(trial)
        except TRIAL_ERRORS as exc:
            trial.set_user_attr("fail_reason", str(exc))
            _logger.warning("trial %d failed: %s", trial.number, exc)
            raise

    def _run(self, trial: optuna.Trial) -> tuple[float, ...]:
        start = time.perf_counter()
        prepared = self.prepared
        compressed = prepared.compress(prepared.bound.sample(trial))
        estimate = compressed.estimate(prepared.latency_model)
        latency, std, source = estimate.latency_ms, estimate.std_ms, "estimate"
        # near the budget the estimate's error decides: measure what would be deployed. A
        # trial the search queued (a uniform seed, the allocation, a screened network) was
        # chosen to fit the budget, often on a measurement: it is measured wherever it lies,
        # lest an estimate overrule that (on an AVX-512 VM a uniform int8 seed the seeding
        # measured inside its CIFAR-10 budget was estimated 15% over it, and not finetuned)
        queued = SEEDED_ATTR in trial.user_attrs
        if self.measure is not None and (queued or near_budget(latency, self.budget_ms,
                                                               self.remeasure_margin)):
            latency = self.measure(compressed.rewrite(compressed.structure_onnx(),
                                                      prepared.calibration))
            std, source = 0.0, "measured"
        trial.set_constraint(CONSTRAINT, latency - self.budget_ms)
        within = latency <= self.budget_ms
        steps, stopped_early, score = 0, None, None
        if within:
            score = self._score(compressed)
            outcome = compressed.train(prepared.data, replace(
                                           self.finetune,
                                           seed=trial_seed(self.finetune.seed, trial.number)),
                                       teacher_logits=self._shared_teacher_logits(compressed),
                                       recovery=self.recovery)
            steps = outcome.steps
            stopped_early = outcome.stopped_early if compressed.candidate.student else None
            deployed = compressed.deploy(prepared.data, prepared.calibration)
        else:   # not trained: the untrained float network's accuracy, as a record only
            deployed = self._untrained(compressed)
        stats = model_stats(compressed.module, prepared.example_input, deployed.onnx)
        artifact = self._save(trial.number, compressed, deployed.onnx) if within else None
        record = TrialRecord(
            candidate=compressed.candidate, channels=dict(compressed.channels),
            estimated_latency_ms=estimate.latency_ms, latency_ms=latency,
            latency_std_ms=std, latency_source=source, finetuned=within,  # type: ignore[arg-type]
            accuracy=deployed.accuracy, accuracy_source=deployed.accuracy_source,  # type: ignore[arg-type]
            float_accuracy=deployed.float_accuracy if within else None,
            finetune_steps=steps, stopped_early=stopped_early, screening_score=score,
            sparsity=weight_sparsity(compressed.module), artifact=artifact,
            seconds=time.perf_counter() - start, **stats.to_dict())
        record.save(trial)
        if self.on_record is not None:
            self.on_record(trial.number, record)
        if "size" in self.objectives:
            return record.accuracy, record.latency_ms, float(record.compressed_size_bytes)
        return record.accuracy, record.latency_ms

    def _score(self, compressed: CompressedModel) -> float | None:
        """The untrained network's screening score (with its sparsity applied)."""
        if self.screen is None:
            return None
        module = compressed.module
        if compressed.candidate.sparsity and any(compressed.candidate.sparsity.values()):
            module = copy.deepcopy(module)
            apply_sparsity(module, compressed.candidate.sparsity)
            make_sparsity_permanent(module)
        return self.screen(module)

    def _shared_teacher_logits(self, compressed: CompressedModel) -> torch.Tensor | None:
        """The teacher's outputs on the training split, computed once per search for the
        students and finetunes that can use them (no hints, no augmentation: the teacher
        must see each augmented batch)."""
        student = compressed.candidate.student
        distills = (student.distill if student is not None else
                    self.recovery and replace(self.recovery, training=self.finetune))
        if distills is None or distills.needs_teacher_per_batch:
            return None
        from autocompress.evaluation._distill import caches_teacher_logits, teacher_logits_for

        train = self.prepared.data.train
        if not caches_teacher_logits(train, self.prepared.data.num_classes):
            return None   # streamed data: the teacher runs on every batch
        if self._teacher_logits is None:
            self._teacher_logits = teacher_logits_for(compressed.teacher, train)
        return self._teacher_logits

    def _untrained(self, compressed: CompressedModel) -> Deployed:
        data = self.prepared.data
        accuracy = evaluate_accuracy(compressed.module, data.val)
        onnx_bytes = export_onnx(compressed.module, self.prepared.example_input)
        return Deployed(onnx_bytes, accuracy, accuracy, "torch")

    def _save(self, number: int, compressed: CompressedModel, onnx_bytes: bytes) -> str:
        folder = self.trial_dir(number)
        write_json_atomic(folder / "candidate.json", compressed.candidate.to_dict())
        write_bytes_atomic(folder / "model.onnx", onnx_bytes)
        return f"trials/{number:05d}/model.onnx"
