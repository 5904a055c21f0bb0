"""Channel pruning where Torch-Pruning cannot follow a model: local groups only.

Torch-Pruning traces every tensor operation to couple channels across a model. Some models
defeat it: the channel shuffle of ShuffleNetV2 and the window partitions of Swin break its
index mapping, and its tracing of Swin's and MaxViT's attention runs for many minutes (and
would cut their relative-position tables by channel). Such a model still has channels whose
coupling is plain to see: inside an ``nn.Sequential`` (not a subclass with its own
``forward``), a Conv2d or Linear layer whose outputs pass only through element-wise layers
(activations, dropout), BatchNorm and depthwise convolutions to the next Conv2d or Linear of
the same sequence. Its output channels can be removed together with that consumer's inputs,
whatever the rest of the model does: the hidden width of a Swin or MaxViT MLP, the
bottleneck of a ShuffleNetV2 branch. Those *local groups* are pruned here (by weight
magnitude), and every other layer keeps all its channels; the log names them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["SLOW_ATTENTION", "LocalGroup", "local_groups", "prune_local", "slow_attention"]

_logger = logging.getLogger(__name__)

#: Attention layers whose dependency tracing takes Torch-Pruning many minutes (torchvision's
#: Swin and MaxViT): models holding them go straight to local groups.
SLOW_ATTENTION = ("ShiftedWindowAttention", "ShiftedWindowAttentionV2",
                  "RelativePositionalMultiHeadAttention")

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
                nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class LocalGroup:
    """A producer layer, the BatchNorm and depthwise layers its channels pass through, and
    the layer that consumes them, all in one sequence."""

    name: str
    producer: nn.Conv2d | nn.Linear
    passes: tuple[tuple[str, nn.Module], ...]
    consumer_name: str
    consumer: nn.Conv2d | nn.Linear

    @property
    def channels(self) -> int:
        return int(self.producer.weight.shape[0])

    @property
    def members(self) -> tuple[str, ...]:
        return (self.name, *(n for n, _ in self.passes), self.consumer_name)


def slow_attention(model: nn.Module) -> str | None:
    """The name of the first attention layer type Torch-Pruning traces for minutes."""
    return next((type(m).__name__ for m in model.modules()
                 if type(m).__name__ in SLOW_ATTENTION), None)


def _plain(layer: nn.Module) -> bool:
    return type(layer) in (nn.Conv2d, nn.Linear) and getattr(layer, "groups", 1) == 1


def _depthwise(layer: nn.Module, channels: int) -> bool:
    return (type(layer) is nn.Conv2d and layer.groups == layer.in_channels == layer.out_channels
            == channels)


def _inputs(layer: nn.Conv2d | nn.Linear) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def local_groups(model: nn.Module, classifier: nn.Module) -> list[LocalGroup]:
    """Every local group of ``model`` (``classifier``'s outputs are never pruned)."""
    names = {module: name for name, module in model.named_modules()}
    found = []
    for container in model.modules():
        if not isinstance(container, nn.Sequential) or (
                type(container).forward is not nn.Sequential.forward):
            continue
        children = list(container)
        for i, producer in enumerate(children):
            if not isinstance(producer, nn.Conv2d | nn.Linear) or not _plain(producer) or (
                    producer is classifier):
                continue
            channels = int(producer.weight.shape[0])
            passes: list[tuple[str, nn.Module]] = []
            for layer in children[i + 1:]:
                if isinstance(layer, _ELEMENTWISE):
                    continue
                if ((isinstance(layer, nn.BatchNorm2d | nn.BatchNorm1d)
                     and layer.num_features == channels) or _depthwise(layer, channels)):
                    passes.append((names[layer], layer))
                    continue
                if (isinstance(layer, nn.Conv2d | nn.Linear) and _plain(layer)
                        and _inputs(layer) == channels):
                    found.append(LocalGroup(names[producer], producer, tuple(passes),
                                            names[layer], layer))
                break
    return found


def prune_local(group: LocalGroup, keep: int, p: int) -> None:
    """Keep the ``keep`` output channels of ``group``'s producer with the largest weight
    norm (``p`` 1 or 2) and remove the others from every member."""
    weight = group.producer.weight.detach().flatten(1)
    scores = weight.abs().pow(p).sum(dim=1)
    drop = sorted(torch.argsort(scores)[: group.channels - keep].tolist())
    if not drop:
        return
    if isinstance(group.producer, nn.Conv2d):
        tp.prune_conv_out_channels(group.producer, drop)
    else:
        tp.prune_linear_out_channels(group.producer, drop)
    for _name, layer in group.passes:
        if isinstance(layer, nn.Conv2d):
            tp.prune_depthwise_conv_out_channels(layer, drop)
        else:
            tp.prune_batchnorm_out_channels(layer, drop)
    if isinstance(group.consumer, nn.Conv2d):
        tp.prune_conv_in_channels(group.consumer, drop)
    else:
        tp.prune_linear_in_channels(group.consumer, drop)


def describe_unpruned(model: nn.Module, groups: list[LocalGroup]) -> str:
    """Which Conv2d/Linear layers no local group prunes (for the log)."""
    pruned = {g.name for g in groups}
    left = [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and name not in pruned]
    shown = ", ".join(left[:12]) + (f" and {len(left) - 12} more" if len(left) > 12 else "")
    return f"{len(left)} Conv2d/Linear layers keep all their output channels: {shown}"
