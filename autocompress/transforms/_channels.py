"""Dependency-aware channel pruning with Torch-Pruning.

Torch-Pruning's :class:`DependencyGraph` groups layers whose channels are coupled (residual
adds, depthwise convolutions, concatenations, BatchNorm); pruning a group removes the same
channels from every member, so the model stays consistent. A group is named after its root
layer, the layer whose output channels start the coupling.

Grouped convolutions (ResNeXt, RegNet) and GroupNorm split a group's channels into equal
blocks that must stay equal: such a group keeps a multiple of its block count and loses the
same positions in every block (ranked by importance averaged over the blocks), as
Torch-Pruning's own pruners do.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autocompress.exceptions import ModelError, SearchSpaceError
from autocompress.space import Candidate
from autocompress.space._candidate import DATA_IMPORTANCES
from autocompress.transforms._importance import ActivationImportance, GradientStatistics
from autocompress.transforms._local import (
    LocalGroup,
    describe_unpruned,
    local_groups,
    prune_local,
    slow_attention,
)

__all__ = ["ChannelGroup", "classifier_layer", "find_channel_groups", "prune_channels"]

_logger = logging.getLogger(__name__)

#: Seconds the dependency tracing of one model may take (``AUTOCOMPRESS_TRACE_TIMEOUT_S``);
#: Torch-Pruning's tracing of some attention models (Swin, MaxViT) runs for many minutes.
TRACE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ChannelGroup:
    """One set of coupled channels that can be pruned together."""

    name: str                     # root layer, e.g. "layer1.0.conv1"
    channels: int                 # output channels of the root layer
    members: tuple[str, ...]      # every layer the group touches
    blocks: int = 1               # equal blocks the channels fall into (grouped convolutions)


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


class _Untraceable(ModelError):
    """Torch-Pruning cannot follow the model (``reason`` says why, in a few words); local
    channel groups may still be pruned (:mod:`autocompress.transforms._local`)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _TraceTimeout(BaseException):
    """Not an Exception: no ``except Exception`` inside Torch-Pruning may swallow it."""


#: After its first firing, the timer fires again this often until the block ends: Python
#: ignores an exception raised inside a garbage-collection callback (a weakref's, a
#: ``__del__``), so a first firing that lands there would otherwise be lost.
_REFIRE_S = 0.05


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_TraceTimeout` in the block after ``seconds``, and again every
    :data:`_REFIRE_S` until it leaves the block (a SIGALRM timer: only in the main thread of
    a POSIX process; elsewhere the block runs unbounded). A timer already running
    (pytest-timeout's, say) is left alone when it fires first, and re-armed with its
    remaining time afterwards otherwise."""
    if (seconds <= 0 or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if 0 < outer_delay <= seconds:
        yield
        return
    armed = True

    def expire(_signum: int, _frame: object) -> None:
        if armed:
            raise _TraceTimeout

    def disarm() -> None:
        nonlocal armed
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    previous = signal.signal(signal.SIGALRM, expire)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds, _REFIRE_S)
    try:
        yield
    finally:
        try:
            disarm()
        except _TraceTimeout:   # it fired on the way out, before ``armed`` was cleared
            disarm()
        if outer_delay > 0:
            left = max(outer_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def _trace_timeout() -> float:
    text = os.environ.get("AUTOCOMPRESS_TRACE_TIMEOUT_S")
    try:
        return float(text) if text else TRACE_TIMEOUT_S
    except ValueError:
        raise ModelError(f"AUTOCOMPRESS_TRACE_TIMEOUT_S must be a number of seconds, got "
                         f"{text!r}") from None


@contextlib.contextmanager
def _bounded() -> Iterator[None]:
    """Bounds the dependency analysis of a model (tracing and grouping) in time."""
    limit = _trace_timeout()
    try:
        with _time_limit(limit):
            yield
    except _TraceTimeout:
        raise _Untraceable(
            f"tracing the model's channel dependencies took more than {limit:g} s and was "
            f"stopped (Torch-Pruning follows every tensor operation; for some attention "
            f"models, such as Swin and MaxViT, it takes many minutes). Channel pruning is not "
            f"available for this model: search a space without channel rules (bit widths, "
            f"students), or raise AUTOCOMPRESS_TRACE_TIMEOUT_S",
            f"its dependency tracing ran past {limit:g} s") from None


def _cannot_follow(exc: Exception) -> _Untraceable:
    """The refusal for a failure inside Torch-Pruning's own index mapping: it cannot follow
    how the model regroups channels."""
    where = traceback.extract_tb(exc.__traceback__)[-1].name
    return _Untraceable(
        f"cannot trace the model's channel dependencies: Torch-Pruning cannot follow how a "
        f"reshape, concatenation or split regroups channels here (for example the channel "
        f"shuffle of ShuffleNet, the window partitions of Swin) ({type(exc).__name__} in "
        f"{where}: {exc}). Channel pruning is not available for this model: search a space "
        f"without channel rules (bit widths, students)",
        f"it cannot follow how a reshape, concatenation or split regroups channels "
        f"({type(exc).__name__} in {where})")


def _graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    shape = tuple(example_input.shape)
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    except Exception as exc:  # Torch-Pruning traces the model; any failure is the model's
        frames = traceback.extract_tb(exc.__traceback__)
        if any(f.filename.endswith("index_mapping.py") for f in frames):
            raise _cannot_follow(exc) from exc
        raise ModelError(
            f"cannot trace the model's channel dependencies with an input of shape "
            f"{shape}: {exc}. Check --input-shape."
        ) from exc


def _root_groups(
    graph: tp.DependencyGraph, model: nn.Module, example_input: torch.Tensor
) -> list[tuple[str, nn.Module, object]]:
    ignored = [classifier_layer(model, example_input)]
    roots = []
    try:
        for group in graph.get_all_groups(ignored_layers=ignored,
                                          root_module_types=[nn.Conv2d, nn.Linear]):
            dep = group[0].dep
            roots.append((graph._module2name[dep.target.module], dep.target.module,
                          dep.handler))
    except Exception as exc:  # the model traced: this is Torch-Pruning's index mapping
        # (timm's sebotnet33ts_256: a ZeroDivisionError mapping a repeat's head width)
        raise _cannot_follow(exc) from exc
    return roots


def find_channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The model's prunable channel groups, in a stable order.

    Where Torch-Pruning cannot follow the model (a channel shuffle, window partitions,
    tracing longer than ``AUTOCOMPRESS_TRACE_TIMEOUT_S``, default :data:`TRACE_TIMEOUT_S`; or
    attention layers it is known to trace for minutes), only its local groups are offered
    (:mod:`autocompress.transforms._local`), and a warning names the layers left whole.

    Raises:
        ModelError: the model cannot be traced and has no local group either.
    """
    reason = _known_untraceable(model)
    if reason is None:
        try:
            with _bounded():
                return _find_channel_groups(model, example_input)
        except _Untraceable as exc:
            reason = exc.reason
            refusal = str(exc)
    else:
        refusal = _refusal(reason)
    groups = _local_groups(model, example_input, refusal)
    _logger.warning(
        "Torch-Pruning cannot prune this model as a whole (%s): only the %d channel groups "
        "local to one layer sequence are pruned (a layer's outputs through BatchNorm, "
        "activations and depthwise convolutions to the next layer: MLP widths, bottlenecks); "
        "%s", reason, len(groups), describe_unpruned(model, groups))
    return [ChannelGroup(g.name, g.channels, g.members) for g in groups]


def _known_untraceable(model: nn.Module) -> str | None:
    layer = slow_attention(model)
    return (None if layer is None else
            f"its tracing of {layer} layers runs for many minutes and misses their weights")


def _refusal(reason: str) -> str:
    return (f"Torch-Pruning cannot follow this model's channel dependencies: {reason}. "
            f"Channel pruning is not available for this model: search a space without "
            f"channel rules (bit widths, students)")


def _local_groups(model: nn.Module, example_input: torch.Tensor, refusal: str
                  ) -> list[LocalGroup]:
    groups = local_groups(model, classifier_layer(model, example_input))
    if not groups:
        raise ModelError(f"{refusal}; it has no local channel group either (a layer whose "
                         f"outputs reach only the next layer of the same sequence)")
    return groups


def _find_channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    graph = _graph(model, example_input)
    out = []
    for name, module, handler in _root_groups(graph, model, example_input):
        channels = graph.get_out_channels(module)
        group = graph.get_pruning_group(module, handler, list(range(channels)))
        members = sorted({graph._module2name.get(item.dep.target.module, "")
                          for item in group} - {""})
        out.append(ChannelGroup(name=name, channels=channels, members=tuple(members),
                                blocks=_blocks(graph, group)))
    return _prunable(model, example_input, out)


def _breaks(model: nn.Module, example_input: torch.Tensor, names: list[str]) -> str | None:
    """Why a copy of ``model`` with the groups ``names`` pruned to half their channels
    fails, in pruning or in a forward pass; ``None`` when it runs."""
    trial = copy.deepcopy(model)
    try:
        _prune_channels(trial, Candidate(channel_keep=dict.fromkeys(names, 0.5)), example_input,
                        None)
        with torch.no_grad():
            trial.eval()(example_input)
    except Exception as exc:  # whatever the model's own code raises on the pruned layers
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return None


def _prunable(model: nn.Module, example_input: torch.Tensor, groups: list[ChannelGroup]
              ) -> list[ChannelGroup]:
    """``groups`` without those whose pruning leaves a model that does not run, with a
    warning naming them. Torch-Pruning shrinks layers and the parameters it traced, not what
    a model's own code reads besides them: a split size or head width kept as an attribute
    (timm's CSP stages, its ViT attention), a scale reshaped to a stored shape (PoolFormer),
    a concatenation it maps wrongly. Each such group fails a pruned copy; found by halving
    the failing set (a few copies where the rest run)."""
    names = [g.name for g in groups]
    why = _breaks(model, example_input, names) if names else None
    if why is None:
        return groups
    failing: dict[str, str] = {}

    def halve(subset: list[str], why: str) -> None:   # subset fails pruned together
        if len(subset) == 1:
            failing[subset[0]] = why
            return
        found = False
        for part in (subset[:len(subset) // 2], subset[len(subset) // 2:]):
            reason = _breaks(model, example_input, part)
            if reason is not None:
                halve(part, reason)
                found = True
        if not found:   # each half runs alone: the groups fail together
            failing.update(dict.fromkeys(subset, why))

    while why is not None:
        halve(names, why)
        names = [n for n in names if n not in failing]
        why = _breaks(model, example_input, names) if names else None
    reasons = sorted(set(failing.values()))
    _logger.warning(
        "%d of the model's %d channel groups are left whole: pruned, the model does not run "
        "(Torch-Pruning shrinks its layers, not what its own code reads besides them, such as "
        "a split size or head width kept as an attribute): %s (%s%s)", len(failing),
        len(groups), ", ".join(sorted(failing)[:8]) + (" ..." if len(failing) > 8 else ""),
        reasons[0], f"; {len(reasons) - 1} other errors" if len(reasons) > 1 else "")
    return [g for g in groups if g.name not in failing]


def _blocks(graph: tp.DependencyGraph, group: Any) -> int:
    """How many equal blocks a pruning group's channels fall into: the largest channel-group
    count of a grouped convolution or GroupNorm in it (a depthwise convolution follows its
    input channel by channel and imposes none), or the head count of a MultiheadAttention
    (Torch-Pruning shrinks its embedding and keeps the heads: every head must lose the same
    positions, or the re-split heads would mix channels of different heads); 1 when there
    is none.

    Depthwise as the graph traced it, not as the module is now: a grouped convolution whose
    outputs were cut to one per group (a ResNeXt 3x3, 32 groups of 4) looks depthwise
    afterwards, yet its inputs still fall into its groups; taken for depthwise, the group
    feeding it was cut to counts its groups do not divide, and the network did not run."""
    counts = [1]
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.MultiheadAttention):
            counts.append(module.num_heads)
            continue
        node = graph.module2node.get(module)
        depthwise = (node.type == tp.ops.OPTYPE.DEPTHWISE_CONV if node is not None
                     else isinstance(module, nn.Conv2d) and module.groups == module.out_channels)
        if isinstance(module, nn.Conv2d) and depthwise:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        if graph.is_out_channel_pruning_fn(item.dep.handler):
            counts.append(int(pruner.get_out_channel_groups(module)))
        else:
            counts.append(int(pruner.get_in_channel_groups(module)))
    return max(counts)


def kept_channels(channels: int, keep_ratio: float, round_to: int, min_channels: int,
                  blocks: int = 1) -> int:
    """How many of ``channels`` a keep ratio leaves, rounded to ``round_to`` (for a layer of
    fewer than twice ``round_to`` channels, to the largest power-of-two part of ``round_to``
    it holds twice: 16 channels with ``round_to`` 16 keep 8 or 16); with ``blocks`` equal
    blocks (a grouped convolution's groups), a multiple of ``blocks`` too."""
    if keep_ratio >= 1.0:
        return channels
    if blocks > 1:
        if channels % blocks:
            raise ModelError(f"{channels} channels do not split into {blocks} equal groups")
        unit = math.lcm(round_to, blocks)
        step = unit if channels >= 2 * unit and channels % unit == 0 else blocks
    else:
        step = round_to
        while step > 1 and channels < 2 * step:
            step = step // 2 if step % 2 == 0 else 1
    keep = max(math.floor(channels * keep_ratio / step + 0.5), 1) * step  # half rounds up
    floor = math.ceil(min(min_channels, channels) / step) * step
    return int(min(channels, max(keep, floor)))


def _drop_indices(scores: torch.Tensor, channels: int, keep: int, blocks: int) -> list[int]:
    """The ``channels - keep`` least important channels; with ``blocks`` equal blocks, the
    same positions in every block, ranked by importance averaged over the blocks."""
    if blocks == 1:
        return sorted(torch.argsort(scores)[: channels - keep].tolist())
    size = channels // blocks
    local = torch.argsort(scores.reshape(blocks, size).mean(dim=0))[: size - keep // blocks]
    return sorted(int(b * size + j) for b in range(blocks) for j in local.tolist())


def _importance(candidate: Candidate, model: nn.Module, graph: tp.DependencyGraph,
                gradients: GradientStatistics | None) -> tp.importance.Importance:
    """Torch-Pruning's importance for the candidate's criterion (gradients installed)."""
    criterion = candidate.importance
    if criterion in DATA_IMPORTANCES:
        if gradients is None:
            raise SearchSpaceError(
                f"channel importance {criterion!r} needs statistics of the model on "
                f"training samples (autocompress.transforms.gradient_statistics), and none "
                f"were given; use l1 or l2 where no data is at hand")
        if criterion == "activation":
            return ActivationImportance(gradients.activation, graph._module2name)
        gradients.install(model, criterion)
        if criterion == "taylor":
            return tp.importance.GroupTaylorImportance()
        return tp.importance.GroupHessianImportance()  # reads the Fisher from .grad
    return tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2)


def prune_channels(
    model: nn.Module, candidate: Candidate, example_input: torch.Tensor,
    gradients: GradientStatistics | None = None,
) -> dict[str, tuple[int, int]]:
    """Prune ``model`` in place as ``candidate`` says; returns group -> (before, after).
    ``gradients`` (statistics of the unpruned ``model``) serve the ``taylor``, ``obd`` and
    ``activation`` criteria.

    Raises:
        ModelError: as :func:`find_channel_groups`.
        SearchSpaceError: a gradient criterion without ``gradients``.
    """
    reason = _known_untraceable(model)
    if reason is None:
        try:
            with _bounded():
                return _prune_channels(model, candidate, example_input, gradients)
        except _Untraceable as exc:
            refusal = str(exc)
        finally:
            model.zero_grad(set_to_none=True)   # installed statistics are no training state
    else:
        refusal = _refusal(reason)
    return _prune_local_groups(model, candidate, _local_groups(model, example_input, refusal))


def _prune_local_groups(model: nn.Module, candidate: Candidate, groups: list[LocalGroup]
                        ) -> dict[str, tuple[int, int]]:
    """Prune local groups by weight magnitude (the data criteria need Torch-Pruning's groups:
    ``l2`` stands in for them here)."""
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(candidate.channel_keep) - set(by_name))
    if unknown:
        raise SearchSpaceError(
            f"the candidate names channel groups this model does not have: {unknown[:5]}; "
            f"its (local) groups are {sorted(by_name)[:10]}")
    p = 1 if candidate.importance == "l1" else 2
    result: dict[str, tuple[int, int]] = {}
    for name, group in by_name.items():
        channels = group.channels
        keep = kept_channels(channels, candidate.channel_keep.get(name, 1.0),
                             candidate.round_to, candidate.min_channels)
        prune_local(group, keep, p)
        result[name] = (channels, keep)
    return result


def _prune_channels(
    model: nn.Module, candidate: Candidate, example_input: torch.Tensor,
    gradients: GradientStatistics | None,
) -> dict[str, tuple[int, int]]:
    graph = _graph(model, example_input)
    roots = {name: (module, handler)
             for name, module, handler in _root_groups(graph, model, example_input)}
    ratios = _regrouped(graph, roots, candidate.channel_keep)
    importance = _importance(candidate, model, graph, gradients)
    result: dict[str, tuple[int, int]] = {}
    for name, (module, handler) in roots.items():
        channels = graph.get_out_channels(module)
        ratio = ratios.get(name, 1.0)
        if ratio >= 1.0:
            result[name] = (channels, channels)
            continue
        group = graph.get_pruning_group(module, handler, list(range(channels)))
        blocks = _blocks(graph, group)
        keep = kept_channels(channels, ratio, candidate.round_to, candidate.min_channels, blocks)
        result[name] = (channels, keep)
        if keep >= channels:
            continue
        scores = importance(group)
        if scores is None:
            _logger.warning("no importance for group %s; left unpruned", name)
            result[name] = (channels, channels)
            continue
        group = graph.get_pruning_group(module, handler,
                                        _drop_indices(scores, channels, keep, blocks))
        if not graph.check_pruning_group(group):
            _logger.warning("pruning group %s to %d channels is not allowed; left unpruned",
                            name, keep)
            result[name] = (channels, channels)
            continue
        group.prune()
    _sync_hidden_dims(model)
    return result


def _regrouped(graph: tp.DependencyGraph, roots: dict[str, tuple[nn.Module, Any]],
               channel_keep: Mapping[str, float]) -> dict[str, float]:
    """``channel_keep`` by the groups the model has now. A name that is no longer a group's
    root but whose outputs are in a group now gives that group its ratio (unless the group
    has one of its own; among several, the first by name): dropping a residual block
    couples the channels around it anew, and the group of the stream it added to can take
    another root (timm's EdgeNeXt: ``stages.3.blocks.1.mlp.fc2``'s group, once the block
    before it went)."""
    unknown = sorted(set(channel_keep) - set(roots))
    if not unknown:
        return dict(channel_keep)
    owner: dict[str, str] = {}
    for root, (module, handler) in roots.items():
        group = graph.get_pruning_group(module, handler,
                                        list(range(graph.get_out_channels(module))))
        for item in group:
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                owner.setdefault(graph._module2name.get(item.dep.target.module, ""), root)
    missing = [name for name in unknown if name not in owner]
    if missing:
        raise SearchSpaceError(
            f"the candidate names channel groups this model does not have: {missing[:5]}; "
            f"its groups are {sorted(roots)[:10]}{' ...' if len(roots) > 10 else ''}")
    keep = {name: ratio for name, ratio in channel_keep.items() if name in roots}
    for name in unknown:
        keep.setdefault(owner[name], channel_keep[name])
    return keep


def _sync_hidden_dims(model: nn.Module) -> None:
    """torchvision's VisionTransformer reshapes its patches by its ``hidden_dim`` attribute,
    which pruning leaves as it was; its class token has the pruned width (Torch-Pruning's
    torchvision example sets it the same way)."""
    for module in model.modules():
        token = getattr(module, "class_token", None)
        if isinstance(token, torch.Tensor) and isinstance(getattr(module, "hidden_dim", None),
                                                          int):
            setattr(module, "hidden_dim", int(token.shape[-1]))  # noqa: B010  (for mypy)

