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

__all__ = ["apply_sparsity", "called_layers", "make_sparsity_permanent", "sparsifiable_layers",
           "trained_tensor", "weight_sparsity"]

_KINDS = (nn.Conv2d, nn.Linear)


def called_layers(model: nn.Module, example_input: torch.Tensor) -> set[str]:
    """The Conv2d and Linear layers of ``model`` whose ``forward`` runs in a forward pass on
    ``example_input`` (in eval mode, without gradients; the model is left as it was). The
    others are read by their owner: Swin's and MaxViT's attention pass ``qkv.weight`` to a
    function, ``nn.MultiheadAttention`` its ``out_proj.weight``."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, _KINDS)}
    called: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda layer, _: called.add(names[layer]))
             for m in names]
    training = model.training
    weight = next(model.parameters(), None)
    try:
        with torch.no_grad():
            model.eval()(example_input if weight is None else example_input.to(weight.device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    return called


def sparsifiable_layers(model: nn.Module, example_input: torch.Tensor | None = None
                        ) -> list[str]:
    """The Conv2d and Linear layers per-layer rules (sparsity, precision, low rank) may name.
    With ``example_input``, only those :func:`called_layers` finds: a mask (which
    :mod:`torch.nn.utils.prune` recomputes in the layer's forward) or a factorization (which
    replaces the layer) cannot reach a weight its owner reads directly."""
    layers = [name for name, m in model.named_modules() if isinstance(m, _KINDS)]
    if example_input is None:
        return layers
    called = called_layers(model, example_input)
    return [name for name in layers if name in called]


def apply_sparsity(model: nn.Module, amounts: Mapping[str, float],
                   example_input: torch.Tensor | None = None) -> None:
    """Zero the smallest-magnitude fraction ``amounts[name]`` of each named layer's weight
    (a layer factorized into two by low rank: of both factors' weights). With
    ``example_input``, a layer whose owner reads its weight directly (:func:`called_layers`)
    is refused: its mask would not follow training."""
    amounts = rename_layers(amounts, factor_names(model))
    modules = dict(model.named_modules())
    unknown = sorted(n for n in amounts if not isinstance(modules.get(n), _KINDS))
    if unknown:
        raise SearchSpaceError(
            f"the candidate sets sparsity for layers this model does not have: {unknown[:5]}"
        )
    masked = {n for n, amount in amounts.items() if amount > 0.0}
    if masked and example_input is not None:
        bypassed = sorted(masked - called_layers(model, example_input))
        if bypassed:
            raise SearchSpaceError(
                f"the candidate sets sparsity for layers whose weights their owner reads "
                f"directly, not by calling them: {bypassed[:5]}; a mask cannot follow them "
                "(leave them out of the sparsity rules; searches bind only called layers)")
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
