"""The compression pipeline: ``compress -> train -> export``, one handler per transform config.

A :class:`~autocompress.space.Candidate` lists its transforms as typed configs
(:meth:`~autocompress.space.Candidate.transforms`: a student, channel pruning, low-rank
factorization, sparsity, quantization). Each config type is mapped to one
:class:`TransformHandler` by a registry (:func:`register_transform`, in the spirit of
torchao's ``transform_module``); a handler can change the network's structure
(:meth:`~TransformHandler.build`), take part in training
(:meth:`~TransformHandler.before_training` / :meth:`~TransformHandler.after_training`),
rewrite the exported graph (:meth:`~TransformHandler.deploy`), say at which precision each
node of the exported graph runs, for the latency estimate
(:meth:`~TransformHandler.node_precisions`), and follow layers an earlier transform replaced
(:meth:`~TransformHandler.rename_layers`). A new transform is a config type and a handler;
the search, ``pick --finetune-steps`` and ``autocompress estimate`` all go through
:func:`compress` and :class:`CompressedModel`.
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import onnx
import torch
from torch import nn

from autocompress.data import DataSplit
from autocompress.evaluation import (
    DistillationLoss,
    DistillSettings,
    TrainSettings,
    distill,
    evaluate_accuracy,
    train,
)
from autocompress.exceptions import SearchSpaceError
from autocompress.hardware import LatencyEstimate, LatencyModel
from autocompress.hardware.export import export_onnx
from autocompress.space import Candidate, Student, TransformConfig
from autocompress.transforms._importance import GradientStatistics

__all__ = ["CompressedModel", "Deployed", "TrainOutcome", "TrainingHooks", "TransformHandler",
           "compress", "handler_for", "register_transform"]

_logger = logging.getLogger(__name__)

#: Validation samples per ONNX Runtime accuracy run (read from the data source in chunks).
_ONNX_EVAL_CHUNK = 10_000

C = TypeVar("C")


@dataclass(frozen=True)
class TrainingHooks:
    """What a transform adds to the training phase: a factor on the learning rate, a
    function to call after every optimizer step (e.g. keep pruned weights at zero), and one
    told the training's progress, ``at_step(steps_done, total_steps)``: before the first
    step (``steps_done`` 0) and after every step, after ``after_step`` (a pruning schedule)."""

    lr_factor: float = 1.0
    after_step: Callable[[], None] | None = None
    at_step: Callable[[int, int], None] | None = None


@dataclass(frozen=True)
class TrainOutcome:
    steps: int
    stopped_early: bool = False


@dataclass(frozen=True)
class Deployed:
    """A trained candidate as it runs on the device, and its validation accuracy."""

    onnx: bytes
    accuracy: float
    float_accuracy: float
    accuracy_source: str          # "torch" (the float model) or "onnxruntime" (rewritten graph)


class TransformHandler(ABC, Generic[C]):
    """Applies one kind of transform config; every hook has a do-nothing default."""

    config_type: ClassVar[type]

    def build(self, model: CompressedModel, config: C) -> None:
        """Change ``model.module``'s structure (in place, or by replacing it)."""

    def before_training(self, model: CompressedModel, config: C, data: DataSplit
                        ) -> TrainingHooks | None:
        """Prepare ``model.module`` for training; may return hooks for the training loop."""
        return None

    def after_training(self, model: CompressedModel, config: C) -> None:
        """Undo what training needed (fake quantization, masks) so the module exports."""

    def deploy(self, onnx_bytes: bytes, config: C, calibration: Callable[[], np.ndarray]
               ) -> bytes:
        """The exported graph as it runs on the device (e.g. quantized)."""
        return onnx_bytes

    def node_precisions(self, structure: onnx.ModelProto, config: C) -> Mapping[str, str] | None:
        """Precision per node of the fp32 graph ``structure`` (``None``: all fp32)."""
        return None

    def rename_layers(self, config: C, renamed: Mapping[str, tuple[str, ...]]) -> C:
        """``config`` naming, instead of each layer in ``renamed`` that an earlier transform
        replaced (low-rank factorization), the layers now in its place. Handlers whose
        config names layers override this."""
        return config


_HANDLERS: dict[type, TransformHandler[Any]] = {}

H = TypeVar("H", bound=type[TransformHandler[Any]])


def register_transform(config_type: type) -> Callable[[H], H]:
    """Register the decorated handler class for ``config_type`` (one handler per type)."""
    def decorator(handler: H) -> H:
        if config_type in _HANDLERS:
            raise SearchSpaceError(f"a handler for {config_type.__name__} is already registered")
        handler.config_type = config_type
        _HANDLERS[config_type] = handler()
        return handler
    return decorator


def handler_for(config: TransformConfig) -> TransformHandler[Any]:
    """The registered handler of ``config``'s type."""
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
        raise SearchSpaceError(f"no transform handler for {type(config).__name__}; "
                               f"registered: {known}") from None


@dataclass(eq=False)
class CompressedModel:
    """A candidate applied to a model: the network, and what its transforms recorded.

    ``channels`` maps each pruned group to (channels before, kept); ``renamed`` maps each
    layer a transform replaced (low rank: by two factors) to the layers now in its place;
    ``state`` is where handlers keep what they need between hooks (QAT handles, sparsity
    masks, low-rank factorizations).
    """

    module: nn.Module
    candidate: Candidate
    example_input: torch.Tensor
    num_classes: int
    teacher: nn.Module
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    renamed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    #: the unpruned model's gradient statistics, for the taylor and obd criteria
    gradients: GradientStatistics | None = None
    _structure: bytes | None = field(default=None, repr=False)

    def _steps(self) -> Iterator[tuple[TransformHandler[Any], TransformConfig]]:
        """Each transform with its handler, its config naming the layers as they are now.
        The candidate is read again at each step: building a student names the groups and
        layers its compression meant as "every" one."""
        done = 0
        while done < len(configs := self.candidate.transforms()):
            config = configs[done]
            done += 1
            handler = handler_for(config)
            yield handler, (handler.rename_layers(config, self.renamed) if self.renamed
                            else config)

    def structure_onnx(self) -> bytes:
        """The fp32 ONNX graph of the untrained structure (exported once, then cached)."""
        if self._structure is None:
            self._structure = export_onnx(self.module, self.example_input)
        return self._structure

    def node_precisions(self, structure: onnx.ModelProto) -> dict[str, str] | None:
        """Precision per node of the fp32 graph ``structure``, as the handlers say."""
        found: dict[str, str] = {}
        for handler, config in self._steps():
            found.update(handler.node_precisions(structure, config) or {})
        return found or None

    def estimate(self, latency_model: LatencyModel) -> LatencyEstimate:
        """The profile's estimate of the structure at the candidate's precisions."""
        structure = onnx.load_from_string(self.structure_onnx())
        return latency_model.estimate(structure, precisions=self.node_precisions(structure))

    def rewrite(self, onnx_bytes: bytes, calibration: Callable[[], np.ndarray]) -> bytes:
        """``onnx_bytes`` (the fp32 export) as the device runs it: every handler's deploy."""
        for handler, config in self._steps():
            onnx_bytes = handler.deploy(onnx_bytes, config, calibration)
        return onnx_bytes

    def train(self, data: DataSplit, settings: TrainSettings, *,
              teacher_logits: torch.Tensor | None = None,
              recovery: DistillSettings | None = None) -> TrainOutcome:
        """Train the module in place the way the search does: a finetune (with the hooks the
        transforms add), or a distillation from the teacher when the candidate is a student.
        ``teacher_logits`` (the teacher's outputs on ``data.train``) may be shared.

        ``recovery``: the finetune of a compressed (not student) candidate learns from the
        uncompressed model's outputs as well as from the labels, with these losses (their
        ``training`` and ``early_stopping`` are not used: ``settings`` train, every step)."""
        self._structure = None  # the weights change; the structure export is rebuilt
        return _run_training(self, data, settings, teacher_logits, recovery)

    def deploy(self, data: DataSplit, calibration: Callable[[], np.ndarray]) -> Deployed:
        """Export the trained module as the device runs it and measure its validation
        accuracy: in torch when the graph is the float one, else in ONNX Runtime."""
        float_accuracy = evaluate_accuracy(self.module, data.val)
        fp32 = export_onnx(self.module, self.example_input)
        deployed = self.rewrite(fp32, calibration)
        if deployed == fp32:
            return Deployed(fp32, float_accuracy, float_accuracy, "torch")
        from autocompress.transforms._quantize import onnx_accuracy

        correct = sum(round(onnx_accuracy(deployed, x.numpy(), y.numpy()) * len(y))
                      for x, y in data.val.batches(_ONNX_EVAL_CHUNK))
        return Deployed(deployed, correct / len(data.val), float_accuracy, "onnxruntime")


def _run_training(model: CompressedModel, data: DataSplit, settings: TrainSettings,
                  teacher_logits: torch.Tensor | None,
                  recovery: DistillSettings | None) -> TrainOutcome:
    """Train ``model.module`` in place: every handler's ``before_training``, then a finetune
    (from ``model.teacher``'s outputs too with ``recovery``; or, for a student, a
    distillation from it with the plan's settings and ``settings``' steps and seed), then
    every ``after_training``."""
    steps = [(config, handler) for handler, config in model._steps()]
    hooks = [h for config, handler in steps
             if (h := handler.before_training(model, config, data)) is not None]
    lr_factor = math.prod(h.lr_factor for h in hooks)
    after = [h.after_step for h in hooks if h.after_step is not None]
    progress = [h.at_step for h in hooks if h.at_step is not None]
    total = settings.steps
    for report in progress:
        report(0, total)

    def on_step(step: int, _loss: float) -> None:
        for call in after:
            call()
        for report in progress:
            report(step + 1, total)

    student = next((c for c, _ in steps if isinstance(c, Student)), None)
    if student is None:
        settings = replace(settings, lr=settings.lr * lr_factor)
        loss = None
        if recovery is not None:
            recovery = replace(recovery, training=settings, early_stopping=None)
            loss = DistillationLoss(model.teacher, recovery, teacher_logits=teacher_logits)
        train(model.module, data.train, None, settings, loss=loss, on_step=on_step)
        outcome = TrainOutcome(settings.steps)
    else:
        plan = student.plan
        distill_settings = replace(plan.distill, training=replace(
            plan.distill.training, steps=settings.steps, seed=settings.seed,
            lr=plan.distill.training.lr * lr_factor))
        logits = None
        if not distill_settings.needs_teacher_per_batch:
            logits = teacher_logits  # None: distill computes them when they fit in memory
        result = distill(model.module, model.teacher, data.train, None,
                         distill_settings, teacher_logits=logits, on_step=on_step)
        outcome = TrainOutcome(int(result.steps), bool(result.stopped_early))
    for config, handler in reversed(steps):   # the last prepared is undone first
        handler.after_training(model, config)
    model.module.eval()
    return outcome


def compress(model: nn.Module, candidate: Candidate, example_input: torch.Tensor, *,
             num_classes: int | None = None,
             gradients: GradientStatistics | None = None) -> CompressedModel:
    """Build ``candidate``'s untrained network from ``model`` (left untouched): a pruned copy,
    or a fresh student. ``num_classes`` (for students) defaults to ``model``'s outputs;
    ``gradients`` (:func:`gradient_statistics` of ``model``) serve the ``taylor``, ``obd``
    and ``activation`` channel criteria."""
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model.eval()(example_input).shape[-1])
    # a student replaces the network first: the model is not copied for it
    start = model if candidate.student is not None else copy.deepcopy(model)
    # the model's statistics say nothing about a student's channels
    result = CompressedModel(start.eval(), candidate, example_input, num_classes, teacher=model,
                             gradients=gradients if candidate.student is None else None)
    for handler, config in result._steps():
        handler.build(result, config)
    result.module.eval()
    return result
