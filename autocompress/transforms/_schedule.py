"""Gradual pruning during training: channel groups and weights reach their targets in steps.

A :class:`~autocompress.space.Schedule` of kind ``polynomial`` prunes at a few training steps,
each time a larger share (TF Model Optimization's polynomial decay), so the network adapts
between cuts. Until training ends nothing is removed from the network: pruned channels are
masked, every member of their dependency group zeroed at its output (weights and bias of the
convolutions and Linear layers that produce them, scale and shift of their normalization),
and kept at zero after every optimizer step, so one optimizer and one learning-rate schedule
run through. A masked channel then contributes exactly nothing, and :meth:`ChannelSchedule.remove`
takes it out with Torch-Pruning at the end without changing what the network computes.

The channels cut at each step are the least important of those left, by the candidate's
criterion on the network as it is then (the data criteria on statistics recomputed then).
Counts are rounded as one-shot pruning rounds them, and the last step keeps exactly the
channels one-shot pruning would: the structure, and so the latency, is the candidate's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
import torch_pruning as tp
from torch import nn

from autocompress.exceptions import ModelError, SearchSpaceError
from autocompress.space import Candidate, Schedule
from autocompress.space._candidate import DATA_IMPORTANCES
from autocompress.transforms._channels import (
    _blocks,
    _bounded,
    _drop_indices,
    _graph,
    _importance,
    _regrouped,
    _root_groups,
    kept_channels,
)
from autocompress.transforms._importance import GradientStatistics
from autocompress.transforms._local import slow_attention
from autocompress.transforms._sparsity import trained_tensor

__all__ = ["ChannelSchedule", "WeightSchedule"]

_logger = logging.getLogger(__name__)


class ChannelSchedule:
    """Masks ``candidate``'s channel groups of ``module`` (unpruned) step by step; then
    removes the masked channels. ``statistics`` recomputes the data statistics of the module
    as it is (for the ``taylor``, ``obd`` and ``activation`` criteria)."""

    def __init__(self, module: nn.Module, candidate: Candidate, example_input: torch.Tensor,
                 statistics: Callable[[nn.Module], GradientStatistics] | None) -> None:
        self.module = module
        self.candidate = candidate
        self.example_input = example_input
        self.statistics = statistics
        self.masked: dict[str, list[int]] = {}
        self._zeroed: list[tuple[torch.Tensor, list[int]]] = []
        layer = slow_attention(module)
        try:
            if layer is not None:
                raise ModelError(f"Torch-Pruning traces its {layer} layers for many minutes")
            with _bounded():
                self.graph = _graph(module, example_input)
                # per group: its root layer, handler, channels and equal blocks (fixed: the
                # network keeps its structure until remove())
                roots = {name: (mod, handler) for name, mod, handler
                         in _root_groups(self.graph, module, example_input)}
                # the ratios by the groups as they are here (as one-shot pruning reads them)
                self.keep = _regrouped(self.graph, roots, candidate.channel_keep)
                self.roots = {name: self._group(mod, handler)
                              for name, (mod, handler) in roots.items()
                              if self.keep.get(name, 1.0) < 1.0}
        except ModelError as exc:
            raise ModelError(f"a gradual pruning schedule needs the model's whole dependency "
                             f"graph, which Torch-Pruning cannot build here ({exc}); use "
                             f"schedule kind 'oneshot' for this model") from exc

    @property
    def schedule(self) -> Schedule:
        return self.candidate.schedule

    def _group(self, module: nn.Module, handler: object) -> tuple[nn.Module, object, int, int]:
        channels = self.graph.get_out_channels(module)
        group = self.graph.get_pruning_group(module, handler, list(range(channels)))
        return module, handler, channels, _blocks(self.graph, group)

    def advance(self, step: int, total: int) -> None:
        """Mask every group to its pruned share at ``step`` of ``total`` training steps (the
        share changes at the schedule's pruning steps only)."""
        if step in self.schedule.pruning_steps(total):
            self._mask_to(lambda final: self.schedule.sparsity(final, step, total))

    def finish(self) -> None:
        """Mask every group to its target (training may have stopped before the end step)."""
        self._mask_to(lambda final: final)

    def _mask_to(self, share: Callable[[float], float]) -> None:
        targets: dict[str, int] = {}
        for name, (_module, _handler, channels, blocks) in self.roots.items():
            ratio = 1.0 - share(1.0 - self.keep[name])
            keep = kept_channels(channels, ratio, self.candidate.round_to,
                                 self.candidate.min_channels, blocks)
            if channels - keep > len(self.masked.get(name, [])):
                targets[name] = keep
        if not targets:
            return
        importance = self._importance()
        try:
            for name, keep in targets.items():
                self._mask_group(name, keep, importance)
        finally:
            self.module.zero_grad(set_to_none=True)
        self.reapply()

    def _importance(self) -> tp.importance.Importance:
        statistics = None
        if self.candidate.importance in DATA_IMPORTANCES and self.statistics is not None:
            statistics = self.statistics(self.module)
        return _importance(self.candidate, self.module, self.graph, statistics)

    def _mask_group(self, name: str, keep: int, importance: tp.importance.Importance) -> None:
        module, handler, channels, blocks = self.roots[name]
        scores = importance(self.graph.get_pruning_group(module, handler, list(range(channels))))
        if scores is None:
            _logger.warning("no importance for group %s; left unpruned", name)
            return
        scores = scores.clone().float()
        scores[self.masked.get(name, [])] = -float("inf")   # what is cut stays cut
        drop = _drop_indices(scores, channels, keep, blocks)
        self.masked[name] = drop
        for item in self.graph.get_pruning_group(module, handler, drop):
            if not self.graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            layer = item.dep.target.module
            for param in ("weight", "bias"):
                tensor = trained_tensor(layer, param)
                if tensor is not None and tensor.dim() >= 1 and tensor.shape[0] > max(item.idxs):
                    self._zeroed.append((tensor, list(item.idxs)))

    def reapply(self) -> None:
        """Zero the masked channels again (after an optimizer step)."""
        with torch.no_grad():
            for tensor, idxs in self._zeroed:
                tensor[idxs] = 0.0

    def remove(self) -> dict[str, tuple[int, int]]:
        """Remove the masked channels; returns group -> (before, after)."""
        self.reapply()
        result: dict[str, tuple[int, int]] = {}
        with _bounded():
            graph = _graph(self.module, self.example_input)
            roots = {name: (mod, handler)
                     for name, mod, handler in _root_groups(graph, self.module,
                                                            self.example_input)}
            for name, drop in self.masked.items():
                module, handler = roots[name]
                channels = graph.get_out_channels(module)
                group = graph.get_pruning_group(module, handler, drop)
                if not graph.check_pruning_group(group):
                    _logger.warning("removing %d channels of group %s is not allowed; they "
                                    "stay masked", len(drop), name)
                    continue
                group.prune()
                result[name] = (channels, channels - len(drop))
        self._zeroed = []
        return result


class WeightSchedule:
    """Unstructured magnitude sparsity reached step by step: at each pruning step a layer's
    smallest weights (by magnitude, those already zero first) are zeroed up to its share."""

    def __init__(self, module: nn.Module, amounts: Mapping[str, float],
                 schedule: Schedule) -> None:
        layers = dict(module.named_modules())
        unknown = sorted(n for n in amounts if not isinstance(layers.get(n), nn.Conv2d | nn.Linear))
        if unknown:
            raise SearchSpaceError(
                f"the candidate sets sparsity for layers this model does not have: {unknown[:5]}")
        self.layers = {name: layers[name] for name, amount in amounts.items() if amount > 0.0}
        self.amounts = dict(amounts)
        self.schedule = schedule
        self.masks: dict[str, torch.Tensor] = {}

    def advance(self, step: int, total: int) -> None:
        """Raise every layer to its share at ``step`` (changed at pruning steps only)."""
        if step in self.schedule.pruning_steps(total):
            self._mask_to(lambda final: self.schedule.sparsity(final, step, total))

    def finish(self) -> None:
        self._mask_to(lambda final: final)

    def _mask_to(self, share: Callable[[float], float]) -> None:
        with torch.no_grad():
            for name, layer in self.layers.items():
                weight = trained_tensor(layer, "weight")
                assert weight is not None
                count = round(share(self.amounts[name]) * weight.numel())
                if count <= 0:
                    continue
                mask = torch.ones(weight.numel(), dtype=torch.bool)
                mask[torch.argsort(weight.detach().abs().flatten())[:count]] = False
                self.masks[name] = mask.view_as(weight)
        self.reapply()

    def reapply(self) -> None:
        with torch.no_grad():
            for name, mask in self.masks.items():
                weight = trained_tensor(self.layers[name], "weight")
                assert weight is not None
                weight.mul_(mask)

    def sparsity(self) -> dict[str, float]:
        """The share of zeros in each scheduled layer's weight now."""
        out = {}
        for name, layer in self.layers.items():
            weight = trained_tensor(layer, "weight")
            assert weight is not None
            out[name] = float((weight == 0).float().mean())
        return out
