"""The handlers of the built-in transforms, and the training phase that runs them.

Order of a candidate's transforms (:meth:`~autocompress.space.Candidate.transforms`): a
student replaces the network; channels are pruned; sparsity zeroes the smallest weights and
keeps them zero while the network trains; quantization fake-quantizes int8 layers during a
quantization-aware finetune (``qat``) and rewrites the exported graph with ONNX Runtime's
tools (both ``ptq`` and ``qat``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
import torch
from torch import nn

from autocompress.data import DataSplit
from autocompress.space import ChannelPruning, Quantization, Sparsity, Student
from autocompress.transforms._channels import prune_channels
from autocompress.transforms._pipeline import (
    CompressedModel,
    TrainingHooks,
    TransformHandler,
    register_transform,
)
from autocompress.transforms._sparsity import apply_sparsity, make_sparsity_permanent

__all__ = ["QAT_LR_FACTOR"]

#: A quantization-aware finetune runs at this fraction of the learning rate: with BatchNorm
#: folded into the int8 convolutions, resnet20 diverged at 5e-3 and not at 1e-3.
QAT_LR_FACTOR = 0.1
#: Training images that start the activation ranges of a quantization-aware finetune.
_QAT_EXAMPLES = 32


@register_transform(Student)
class StudentHandler(TransformHandler[Student]):
    """Replaces the network by a freshly initialised student (trained by distillation)."""

    def build(self, model: CompressedModel, config: Student) -> None:
        in_channels = int(model.example_input.shape[1])
        model.module = config.plan.student.build(model.num_classes, in_channels).eval()


@register_transform(ChannelPruning)
class ChannelPruningHandler(TransformHandler[ChannelPruning]):
    """Dependency-aware channel removal with Torch-Pruning."""

    def build(self, model: CompressedModel, config: ChannelPruning) -> None:
        model.channels.update(prune_channels(model.module, model.candidate,
                                             model.example_input, model.gradients))


@register_transform(Sparsity)
class SparsityHandler(TransformHandler[Sparsity]):
    """Magnitude sparsity, fixed before training: the zeroed weights stay zero after every
    optimizer step (also under fake quantization, which wraps the weight)."""

    def before_training(self, model: CompressedModel, config: Sparsity, data: DataSplit
                        ) -> TrainingHooks:
        apply_sparsity(model.module, config.amounts)
        make_sparsity_permanent(model.module)
        masks = {name: m.weight.detach() != 0 for name, m in model.module.named_modules()
                 if config.amounts.get(name, 0.0) > 0}
        model.state["sparsity_masks"] = masks
        return TrainingHooks(after_step=lambda: _reapply(model.module, masks))

    def after_training(self, model: CompressedModel, config: Sparsity) -> None:
        _reapply(model.module, model.state.get("sparsity_masks", {}))


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


def _reapply(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
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
