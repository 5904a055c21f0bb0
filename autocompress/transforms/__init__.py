"""Compression transforms: channel pruning, unstructured sparsity and mixed precision."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from autocompress.space import Candidate
from autocompress.transforms._channels import (
    ChannelGroup,
    classifier_layer,
    find_channel_groups,
    kept_channels,
    prune_channels,
)
from autocompress.transforms._qat import QatHandle, finish_qat, fold_batchnorms, prepare_qat
from autocompress.transforms._quantize import (
    PRECISIONS,
    Precision,
    exported_precisions,
    node_precisions,
    onnx_accuracy,
    onnx_layer_nodes,
    quantize_onnx,
)
from autocompress.transforms._sparsity import (
    apply_sparsity,
    make_sparsity_permanent,
    sparsifiable_layers,
    weight_sparsity,
)

__all__ = [
    "PRECISIONS",
    "ChannelGroup",
    "CompressedModel",
    "Precision",
    "QatHandle",
    "apply_sparsity",
    "classifier_layer",
    "compress",
    "exported_precisions",
    "find_channel_groups",
    "finish_qat",
    "fold_batchnorms",
    "kept_channels",
    "make_sparsity_permanent",
    "node_precisions",
    "onnx_accuracy",
    "onnx_layer_nodes",
    "prepare_qat",
    "prune_channels",
    "quantize_onnx",
    "sparsifiable_layers",
    "weight_sparsity",
]


@dataclass
class CompressedModel:
    """A compressed copy of a model; sparsity masks stay attached until :meth:`finalize`."""

    module: nn.Module
    candidate: Candidate
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)

    def finalize(self) -> nn.Module:
        make_sparsity_permanent(self.module)
        return self.module


def compress(
    model: nn.Module, candidate: Candidate, example_input: torch.Tensor
) -> CompressedModel:
    """Apply ``candidate`` to a deep copy of ``model``: prune channels, then attach sparsity."""
    module = copy.deepcopy(model).eval()
    channels = prune_channels(module, candidate, example_input)
    apply_sparsity(module, candidate.sparsity)
    return CompressedModel(module=module, candidate=candidate, channels=channels)
