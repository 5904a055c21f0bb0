"""Size and cost of a model: parameters, FLOPs, bytes on disk."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ModelStats", "count_flops", "count_params", "model_stats"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass, counted by ``torch.utils.flop_counter`` (2 FLOPs per
    multiply-add; convolutions, linear layers and matrix products only)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example_input)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class ModelStats:
    params: int
    nonzero_params: int
    flops: int
    size_bytes: int             # the exported ONNX file
    compressed_size_bytes: int  # that file deflated (zlib level 9): what sparsity buys

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "nonzero_params": self.nonzero_params,
                "flops": self.flops, "size_bytes": self.size_bytes,
                "compressed_size_bytes": self.compressed_size_bytes}


def model_stats(model: nn.Module, example_input: torch.Tensor, onnx_bytes: bytes) -> ModelStats:
    return ModelStats(
        params=count_params(model),
        nonzero_params=sum(int((p != 0).sum()) for p in model.parameters()),
        flops=count_flops(model, example_input),
        size_bytes=len(onnx_bytes),
        compressed_size_bytes=len(zlib.compress(onnx_bytes, 9)),
    )
