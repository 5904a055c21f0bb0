"""Compression transforms: channel pruning and unstructured sparsity."""

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
from autocompress.transforms._sparsity import (
    apply_sparsity,
    make_sparsity_permanent,
    sparsifiable_layers,
    weight_sparsity,
)

__all__ = [
    "ChannelGroup",
    "CompressedModel",
    "apply_sparsity",
    "classifier_layer",
    "compress",
    "find_channel_groups",
    "kept_channels",
    "make_sparsity_permanent",
    "prune_channels",
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
