"""Dependency-aware channel pruning with Torch-Pruning.

Torch-Pruning's :class:`DependencyGraph` groups layers whose channels are coupled (residual
adds, depthwise convolutions, concatenations, BatchNorm); pruning a group removes the same
channels from every member, so the model stays consistent. A group is named after its root
layer, the layer whose output channels start the coupling.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autocompress.exceptions import ModelError, SearchSpaceError
from autocompress.space import Candidate

__all__ = ["ChannelGroup", "classifier_layer", "find_channel_groups", "prune_channels"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelGroup:
    """One set of coupled channels that can be pruned together."""

    name: str                     # root layer, e.g. "layer1.0.conv1"
    channels: int                 # output channels of the root layer
    members: tuple[str, ...]      # every layer the group touches


def classifier_layer(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The layer whose outputs are the model's outputs: the last Linear or Conv2d to run in
    a forward pass (not the last one registered)."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    if not order:
        raise ModelError("the model has no Linear or Conv2d layer; nothing can be compressed")
    return order[-1]


def _graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    except Exception as exc:  # Torch-Pruning traces the model; any failure is the model's
        raise ModelError(
            f"cannot trace the model's channel dependencies with an input of shape "
            f"{tuple(example_input.shape)}: {exc}. Check --input-shape."
        ) from exc


def _root_groups(
    graph: tp.DependencyGraph, model: nn.Module, example_input: torch.Tensor
) -> list[tuple[str, nn.Module, object]]:
    ignored = [classifier_layer(model, example_input)]
    roots = []
    for group in graph.get_all_groups(ignored_layers=ignored,
                                      root_module_types=[nn.Conv2d, nn.Linear]):
        dep = group[0].dep
        roots.append((graph._module2name[dep.target.module], dep.target.module, dep.handler))
    return roots


def find_channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The model's prunable channel groups, in a stable order."""
    graph = _graph(model, example_input)
    out = []
    for name, module, handler in _root_groups(graph, model, example_input):
        channels = graph.get_out_channels(module)
        group = graph.get_pruning_group(module, handler, list(range(channels)))
        members = sorted({graph._module2name.get(item.dep.target.module, "")
                          for item in group} - {""})
        out.append(ChannelGroup(name=name, channels=channels, members=tuple(members)))
    return out


def kept_channels(channels: int, keep_ratio: float, round_to: int, min_channels: int) -> int:
    """How many of ``channels`` a keep ratio leaves, rounded to ``round_to``."""
    if keep_ratio >= 1.0:
        return channels
    step = round_to if channels >= 2 * round_to else 1
    keep = max(math.floor(channels * keep_ratio / step + 0.5), 1) * step  # half rounds up
    floor = math.ceil(min(min_channels, channels) / step) * step
    return int(min(channels, max(keep, floor)))


def prune_channels(
    model: nn.Module, candidate: Candidate, example_input: torch.Tensor
) -> dict[str, tuple[int, int]]:
    """Prune ``model`` in place as ``candidate`` says; returns group -> (before, after)."""
    graph = _graph(model, example_input)
    roots = {name: (module, handler)
             for name, module, handler in _root_groups(graph, model, example_input)}
    unknown = sorted(set(candidate.channel_keep) - set(roots))
    if unknown:
        raise SearchSpaceError(
            f"the candidate names channel groups this model does not have: {unknown[:5]}; "
            f"its groups are {sorted(roots)[:10]}{' ...' if len(roots) > 10 else ''}"
        )
    importance = tp.importance.GroupMagnitudeImportance(p=1 if candidate.importance == "l1" else 2)
    result: dict[str, tuple[int, int]] = {}
    for name, (module, handler) in roots.items():
        channels = graph.get_out_channels(module)
        ratio = candidate.channel_keep.get(name, 1.0)
        keep = kept_channels(channels, ratio, candidate.round_to, candidate.min_channels)
        result[name] = (channels, keep)
        if keep >= channels:
            continue
        group = graph.get_pruning_group(module, handler, list(range(channels)))
        scores = importance(group)
        if scores is None:
            _logger.warning("no importance for group %s; left unpruned", name)
            result[name] = (channels, channels)
            continue
        drop = torch.argsort(scores)[: channels - keep].tolist()
        group = graph.get_pruning_group(module, handler, sorted(drop))
        if not graph.check_pruning_group(group):
            _logger.warning("pruning group %s to %d channels is not allowed; left unpruned",
                            name, keep)
            result[name] = (channels, channels)
            continue
        group.prune()
    return result

