"""Unstructured magnitude sparsity with :mod:`torch.nn.utils.prune`.

Masks stay attached during the finetune (pruned weights stay zero while the rest learn),
then :func:`make_sparsity_permanent` folds them into the weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from autocompress.exceptions import SearchSpaceError
from autocompress.transforms._lowrank import factor_names, rename_layers

__all__ = ["apply_sparsity", "make_sparsity_permanent", "sparsifiable_layers", "trained_tensor",
           "weight_sparsity"]

_KINDS = (nn.Conv2d, nn.Linear)


def sparsifiable_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _KINDS)]


def apply_sparsity(model: nn.Module, amounts: Mapping[str, float]) -> None:
    """Zero the smallest-magnitude fraction ``amounts[name]`` of each named layer's weight
    (a layer factorized into two by low rank: of both factors' weights)."""
    amounts = rename_layers(amounts, factor_names(model))
    modules = dict(model.named_modules())
    unknown = sorted(n for n in amounts if not isinstance(modules.get(n), _KINDS))
    if unknown:
        raise SearchSpaceError(
            f"the candidate sets sparsity for layers this model does not have: {unknown[:5]}"
        )
    for name, amount in amounts.items():
        if amount > 0.0:
            prune.l1_unstructured(modules[name], "weight", amount=float(amount))


def make_sparsity_permanent(model: nn.Module) -> None:
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_orig"):
            prune.remove(module, "weight")


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros among all Conv/Linear weights."""
    total = zeros = 0
    for module in model.modules():
        if isinstance(module, _KINDS):
            weight = module.weight
            total += weight.numel()
            zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0


def trained_tensor(layer: nn.Module, name: str) -> torch.Tensor | None:
    """``layer``'s parameter ``name`` as the optimizer sees it (behind a parametrization when
    one is attached)."""
    params = getattr(layer, "parametrizations", None)
    if params is not None and hasattr(params, name):
        return getattr(params, name).original
    value = getattr(layer, name, None)
    return value if isinstance(value, torch.Tensor) else None
