"""The handlers of the built-in transforms, and the training phase that runs them.

Order of a candidate's transforms (:meth:`~autocompress.space.Candidate.transforms`): a
student replaces the network; residual branches are dropped; channels are pruned; layers are
factorized into two smaller ones (low rank, on the pruned shapes); sparsity zeroes the
smallest weights and keeps them zero while the network trains; quantization fake-quantizes
int8 layers during a quantization-aware finetune (``qat``) and rewrites the exported graph
with ONNX Runtime's tools (both ``ptq`` and ``qat``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from autocompress.data import DataSplit
from autocompress.space import ChannelPruning, Depth, LowRank, Quantization, Sparsity, Student
from autocompress.space._candidate import DATA_IMPORTANCES, EVERY
from autocompress.transforms._channels import find_channel_groups, prune_channels
from autocompress.transforms._depth import drop_blocks
from autocompress.transforms._importance import training_statistics
from autocompress.transforms._lowrank import factor_names, low_rank, rename_layers
from autocompress.transforms._pipeline import (
    CompressedModel,
    TrainingHooks,
    TransformHandler,
    register_transform,
)
from autocompress.transforms._schedule import ChannelSchedule, WeightSchedule
from autocompress.transforms._sparsity import (
    apply_sparsity,
    called_layers,
    make_sparsity_permanent,
    sparsifiable_layers,
    trained_tensor,
)

__all__ = ["QAT_LR_FACTOR"]

_logger = logging.getLogger(__name__)

#: A quantization-aware finetune runs at this fraction of the learning rate: with BatchNorm
#: folded into the int8 convolutions, resnet20 diverged at 5e-3 and not at 1e-3.
QAT_LR_FACTOR = 0.1
#: Training images that start the activation ranges of a quantization-aware finetune.
_QAT_EXAMPLES = 32


@register_transform(Student)
class StudentHandler(TransformHandler[Student]):
    """Replaces the network by a freshly initialised student (trained by distillation); a
    compression of "every" group or layer of the student is named for it once it is built."""

    def build(self, model: CompressedModel, config: Student) -> None:
        in_channels = int(model.example_input.shape[1])
        model.module = config.plan.student.build(model.num_classes, in_channels).eval()
        candidate = model.candidate
        if candidate.unresolved:
            groups = ([g.name for g in find_channel_groups(model.module, model.example_input)]
                      if EVERY in candidate.channel_keep else [])
            model.candidate = candidate.resolved(
                groups, sparsifiable_layers(model.module, model.example_input))


@register_transform(Depth)
class DepthHandler(TransformHandler[Depth]):
    """Drops the named residual branches (each module that added one becomes a
    ``torch.fx.GraphModule`` of itself without it; layers keep their names); what the
    candidate says of layers and channel groups that went with them is dropped too."""

    def build(self, model: CompressedModel, config: Depth) -> None:
        before = {name for name, _ in model.module.named_modules()}
        model.module = drop_blocks(model.module, config.drop, model.example_input).eval()
        gone = before - {name for name, _ in model.module.named_modules()}
        model.state["depth_removed"] = tuple(sorted(gone))
        candidate = model.candidate

        def kept(mapping: Mapping[str, Any]) -> dict[str, Any]:
            return {name: value for name, value in mapping.items() if name not in gone}

        model.candidate = replace(
            candidate, channel_keep=kept(candidate.channel_keep),
            sparsity=kept(candidate.sparsity), precision=kept(candidate.precision),
            rank=kept(candidate.rank))


@register_transform(ChannelPruning)
class ChannelPruningHandler(TransformHandler[ChannelPruning]):
    """Dependency-aware channel removal with Torch-Pruning. With a gradual schedule the
    built network is the pruned one (what estimates and screening see); training then starts
    from the unpruned network and masks channels step by step, removed when it ends."""

    def build(self, model: CompressedModel, config: ChannelPruning) -> None:
        candidate = model.candidate
        if config.schedule.gradual:
            model.state["unpruned"] = copy.deepcopy(model.module)
        if candidate.importance in DATA_IMPORTANCES and model.gradients is None and (
                config.schedule.gradual or candidate.student is not None):
            # the gradual schedule ranks channels on the network as it trains, and an untrained
            # student's channels are all alike: here only how many are kept matters
            candidate = replace(candidate, importance="l2")
        model.channels.update(prune_channels(model.module, candidate, model.example_input,
                                             model.gradients))

    def before_training(self, model: CompressedModel, config: ChannelPruning, data: DataSplit
                        ) -> TrainingHooks | None:
        unpruned = model.state.pop("unpruned", None)
        if unpruned is None:
            return None
        model.module = unpruned
        schedule = ChannelSchedule(unpruned, model.candidate, model.example_input,
                                   lambda module: training_statistics(module, data.train))
        model.state["channel_schedule"] = schedule
        return TrainingHooks(after_step=schedule.reapply, at_step=schedule.advance)

    def after_training(self, model: CompressedModel, config: ChannelPruning) -> None:
        schedule = model.state.pop("channel_schedule", None)
        if schedule is None:
            return
        schedule.finish()
        removed = schedule.remove()
        changed = {name: kept for name, kept in removed.items() if model.channels.get(name) != kept}
        if changed:  # not expected: the last step keeps the counts one-shot pruning keeps
            _logger.warning("the gradual schedule kept other channel counts than the built "
                            "network: %s", changed)
        model.channels.update(removed)


@register_transform(LowRank)
class LowRankHandler(TransformHandler[LowRank]):
    """Each named Conv2d/Linear becomes two smaller layers from the truncated SVD of its
    (pruned) weight; what was done per layer is in ``model.state["lowrank"]``
    (:class:`~autocompress.transforms.Factorization`: rank, full rank, parameters, why a
    layer was left whole) and the factorized layers in ``model.renamed``."""

    def build(self, model: CompressedModel, config: LowRank) -> None:
        called = (called_layers(model.module, model.example_input)
                  if any(r < 1.0 for r in config.ranks.values()) else None)
        done = low_rank(model.module, config.ranks, called)
        model.state["lowrank"] = done
        factors = factor_names(model.module)
        model.renamed.update({name: factors[name] for name, f in done.items() if f.factorized})


@register_transform(Sparsity)
class SparsityHandler(TransformHandler[Sparsity]):
    """Magnitude sparsity, fixed before training (or reached step by step by a gradual
    schedule): the zeroed weights stay zero after every optimizer step (also under fake
    quantization, which wraps the weight)."""

    def before_training(self, model: CompressedModel, config: Sparsity, data: DataSplit
                        ) -> TrainingHooks:
        if config.schedule.gradual:
            schedule = WeightSchedule(model.module, config.amounts, config.schedule)
            model.state["weight_schedule"] = schedule
            return TrainingHooks(after_step=schedule.reapply, at_step=schedule.advance)
        apply_sparsity(model.module, config.amounts, model.example_input)
        make_sparsity_permanent(model.module)
        masks = {name: m.weight.detach() != 0 for name, m in model.module.named_modules()
                 if config.amounts.get(name, 0.0) > 0}
        model.state["sparsity_masks"] = masks
        return TrainingHooks(after_step=lambda: _reapply(model.module, masks))

    def after_training(self, model: CompressedModel, config: Sparsity) -> None:
        schedule = model.state.pop("weight_schedule", None)
        if schedule is not None:
            schedule.finish()
        _reapply(model.module, model.state.get("sparsity_masks", {}))

    def rename_layers(self, config: Sparsity, renamed: Mapping[str, tuple[str, ...]]
                      ) -> Sparsity:
        return replace(config, amounts=rename_layers(config.amounts, renamed))


@register_transform(Quantization)
class QuantizationHandler(TransformHandler[Quantization]):
    """Per-layer int8/fp16 with ONNX Runtime's tools; ``qat`` finetunes with fake
    quantization of the int8 layers first."""

    def before_training(self, model: CompressedModel, config: Quantization, data: DataSplit
                        ) -> TrainingHooks | None:
        int8 = [name for name, p in config.precision.items() if p == "int8"]
        if config.method != "qat" or not int8:
            return None
        from autocompress.transforms._qat import prepare_qat

        model.state["qat"] = prepare_qat(model.module, int8, data.train.head(_QAT_EXAMPLES))
        return TrainingHooks(lr_factor=QAT_LR_FACTOR)

    def after_training(self, model: CompressedModel, config: Quantization) -> None:
        handle = model.state.pop("qat", None)
        if handle is not None:
            from autocompress.transforms._qat import finish_qat

            finish_qat(handle)

    def deploy(self, onnx_bytes: bytes, config: Quantization,
               calibration: Callable[[], np.ndarray]) -> bytes:
        from autocompress.transforms._quantize import quantize_onnx

        return quantize_onnx(onnx_bytes, config.precision, calibration())

    def node_precisions(self, structure: onnx.ModelProto, config: Quantization
                        ) -> Mapping[str, str]:
        from autocompress.transforms._quantize import node_precisions

        return node_precisions(structure, config.precision)

    def rename_layers(self, config: Quantization, renamed: Mapping[str, tuple[str, ...]]
                      ) -> Quantization:
        return replace(config, precision=rename_layers(config.precision, renamed))


def _reapply(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero again the weights sparsity removed (the trained tensor may sit behind a
    parametrization while fake quantization is attached)."""
    modules = dict(module.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            layer = modules.get(name)
            if layer is None:
                continue
            weight = trained_tensor(layer, "weight")
            if weight is not None and weight.shape == mask.shape:
                weight.mul_(mask)
