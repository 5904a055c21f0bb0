"""Quantization-aware finetune for the int8 layers of a mixed-precision candidate.

The int8 layers' BatchNorms are folded into them first (so the weights trained are the ones
ONNX Runtime quantizes after export), their weights fake-quantized per output channel
(symmetric, ORT's grid) and their inputs per tensor (asymmetric uint8, running min/max, as
ORT's MinMax calibration); ``torch.fake_quantize_*`` pass gradients straight through.
:func:`finish_qat` bakes the fake-quantized weights in, so the module exports as plain float
ONNX that :func:`autocompress.transforms.quantize_onnx` then quantizes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.hooks import RemovableHandle

from autocompress.exceptions import (
    FinetuneDivergedError,
    ModelError,
    SearchSpaceError,
)
from autocompress.transforms._quantize import _WEIGHT_QMAX

__all__ = ["QatHandle", "finish_qat", "fold_batchnorms", "prepare_qat"]

_logger = logging.getLogger(__name__)


class _WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8, as ORT quantizes weights (scale = absmax / qmax)."""

    def __init__(self, qmax: int) -> None:
        super().__init__()
        self.qmax = qmax

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())))
        scale = (absmax / self.qmax).clamp_min(torch.finfo(torch.float32).tiny).float()
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0,
                                                      -self.qmax, self.qmax)


class _ActivationFakeQuant:
    """Per-tensor asymmetric uint8 with a running min/max, as ORT's MinMax calibration."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.low = float("inf")
        self.high = float("-inf")
        self.starting = True  # observe in eval mode too, on the first forward

    def hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Forward pre-hook: ranges follow the data only in training mode."""
        return (self(args[0], observe=module.training or self.starting), *args[1:])

    def __call__(self, x: torch.Tensor, observe: bool) -> torch.Tensor:
        if observe:
            low, high = float(x.detach().min()), float(x.detach().max())
            if not (math.isfinite(low) and math.isfinite(high)):
                # Fake quantization would hide it: the loss stays finite, the model dies.
                raise FinetuneDivergedError(
                    f"the input of {self.layer} became {low}..{high} in the quantization-aware "
                    "finetune; BatchNorm is folded, so lower the learning rate (about 1e-3)")
            self.low, self.high = min(self.low, low), max(self.high, high)
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        if not high > low:
            return x
        scale = (high - low) / 255.0
        zero_point = int(min(max(round(-low / scale), 0), 255))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


@dataclass
class QatHandle:
    """The state of a quantization-aware finetune: the module (changed in place), its int8
    layers, the layers whose BatchNorm was folded in, and the hooks to remove."""

    module: nn.Module
    layers: tuple[str, ...]
    folded: tuple[str, ...]
    observers: dict[str, _ActivationFakeQuant] = field(default_factory=dict, repr=False)
    hooks: list[RemovableHandle] = field(default_factory=list, repr=False)
    finished: bool = False


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _conv_bn_pairs(module: nn.Module, convs: Iterable[str],
                   example_input: torch.Tensor) -> dict[str, str]:
    """conv -> the BatchNorm2d that reads exactly its output tensor, both called once."""
    names = {m: n for n, m in module.named_modules()}
    calls: dict[str, int] = {}
    made_by: dict[int, str] = {}
    read: dict[str, str] = {}
    alive: list[torch.Tensor] = []  # ids stay unique while the tensors live

    def record(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(mod, nn.BatchNorm2d):
            if args and id(args[0]) in made_by:
                read[name] = made_by[id(args[0])]
        else:
            made_by[id(out)] = name
            alive.append(out)

    watched = [module.get_submodule(c) for c in convs]
    watched += [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [m.register_forward_hook(record) for m in watched]
    try:
        with torch.no_grad():
            module(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    return {conv: bn for bn, conv in read.items() if calls[bn] == 1 and calls[conv] == 1}


def _check_layers(module: nn.Module, layers: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(layers))
    modules = dict(module.named_modules())
    quantizable = sorted(n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear))
    for name in names:
        layer = modules.get(name)
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise SearchSpaceError(f"cannot quantize layer {name!r}: not a Conv2d or Linear of "
                                   f"the model; its layers are: {', '.join(quantizable[:8])}, ...")
        if prune.is_pruned(layer) or parametrize.is_parametrized(layer, "weight"):
            raise ModelError(f"layer {name!r} already has a weight mask or parametrization; "
                             "call make_sparsity_permanent (or finish_qat) first")
    return names


def fold_batchnorms(module: nn.Module, layers: Iterable[str],
                    example_input: torch.Tensor) -> list[str]:
    """Fold into each Conv2d of ``layers`` the BatchNorm2d that reads its output, in place,
    with the running statistics (as the exporter folds it); the BatchNorm becomes Identity.
    A fold that changes the model's output for ``example_input`` is undone and logged.
    Returns the convolutions folded."""
    names = _check_layers(module, layers)
    convs = [n for n in names if isinstance(module.get_submodule(n), nn.Conv2d)]
    was_training = module.training
    module.eval()
    folded: list[str] = []
    try:
        pairs = _conv_bn_pairs(module, convs, example_input)
        with torch.no_grad():
            reference = module(example_input)
            tolerance = 1e-4 * max(1.0, float(reference.abs().max()))
            for conv_name in convs:
                bn_name = pairs.get(conv_name)
                if bn_name is None:
                    _logger.info("no BatchNorm to fold into %s", conv_name)
                    continue
                conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
                _set_submodule(module, conv_name, fuse_conv_bn_eval(conv, bn))
                _set_submodule(module, bn_name, nn.Identity())
                if torch.allclose(module(example_input), reference, rtol=1e-3, atol=tolerance):
                    folded.append(conv_name)
                    continue
                _set_submodule(module, conv_name, conv)
                _set_submodule(module, bn_name, bn)
                _logger.warning("folding %s into %s changes the model's output (the conv's "
                                "output has another use); %s stays unfolded", bn_name,
                                conv_name, conv_name)
    finally:
        module.train(was_training)
    return folded


def prepare_qat(module: nn.Module, layers: Iterable[str], example_input: torch.Tensor, *,
                reduce_range: bool = True) -> QatHandle:
    """Prepare ``module`` (in place) for a quantization-aware finetune of its int8 ``layers``.

    Each Conv2d's following BatchNorm is folded in (:func:`fold_batchnorms`: the exporter
    folds it too, so the weights trained are those ORT quantizes); weights are fake-quantized
    per output channel, symmetric int8 (7 bits with ``reduce_range``, as in
    :func:`quantize_onnx`), through :mod:`torch.nn.utils.parametrize`; inputs per tensor,
    asymmetric uint8, with running min/max ranges started on ``example_input`` (pass a batch
    of real inputs) and widened in training mode. Gradients pass straight through. Without
    BatchNorm the finetune needs a low learning rate (resnet20: 5e-3 diverged, 1e-3 did not);
    infinite activations raise :class:`FinetuneDivergedError`. Build the optimizer after this
    call; call :func:`finish_qat` before exporting.
    """
    names = _check_layers(module, layers)
    folded = fold_batchnorms(module, names, example_input)
    handle = QatHandle(module=module, layers=tuple(names), folded=tuple(folded))
    for name in names:
        layer = module.get_submodule(name)
        parametrize.register_parametrization(layer, "weight",
                                             _WeightFakeQuant(_WEIGHT_QMAX[reduce_range]))
        observer = handle.observers[name] = _ActivationFakeQuant(name)
        handle.hooks.append(layer.register_forward_pre_hook(observer.hook))
    was_training = module.training
    with torch.no_grad():
        module.eval()(example_input)
    module.train(was_training)
    for observer in handle.observers.values():
        observer.starting = False
    return handle


def finish_qat(handle: QatHandle) -> nn.Module:
    """Bake the fake-quantized weights in and remove the hooks: the module is plain float
    again and exports as usual. Returns the module."""
    if handle.finished:
        return handle.module
    for hook in handle.hooks:
        hook.remove()
    handle.hooks.clear()
    for name in handle.layers:
        parametrize.remove_parametrizations(handle.module.get_submodule(name), "weight",
                                            leave_parametrized=True)
    handle.finished = True
    return handle.module
