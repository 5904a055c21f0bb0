"""Low-rank factorization: a Conv2d or Linear replaced by two smaller layers (truncated SVD).

A layer's weight seen as a matrix ``W`` (``out x in*kh*kw``) is replaced by its best rank-``r``
approximation (Eckart-Young: the error is the norm of the dropped singular values),
``U_r S_r V_r^T``, split as ``(U_r S_r^1/2)(S_r^1/2 V_r^T)`` so both factors have the same
scale (which suits training and int8 weights):

- Conv2d ``k x k``, ``C_in -> C_out``: a ``k x k`` conv ``C_in -> r`` (no bias, the original
  stride, padding, dilation and padding mode), then a ``1 x 1`` conv ``r -> C_out`` with the
  original bias;
- Linear ``in -> out``: Linear ``in -> r`` (no bias), then Linear ``r -> out`` with the bias.

That is ``r * (in*kh*kw + out)`` weights instead of ``in*kh*kw * out``: at full rank
(``min(out, in*kh*kw)``) the two layers compute the layer's function exactly, and a rank is
worth taking only while it saves parameters. A ratio ``rho`` of a search space means
``r = max(1, round(rho * min(out, in*kh*kw)))``.

The two layers sit in a :class:`FactorizedLayer` (an ``nn.Sequential``) under the layer's own
name, as ``<name>.0`` and ``<name>.1``: the exported graph holds two ordinary Conv (or Gemm)
nodes that the latency model costs like any other. Later transforms that name the original
layer (sparsity, precision) apply to both factors (:func:`rename_layers`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
from torch import nn

from autocompress.exceptions import ModelError, SearchSpaceError

__all__ = ["Factorization", "FactorizedLayer", "factor_names", "factorize_layer", "full_rank",
           "low_rank", "rank_for", "rename_layers"]

_logger = logging.getLogger(__name__)

V = TypeVar("V")


class FactorizedLayer(nn.Sequential):
    """A Conv2d or Linear factorized into two layers: ``[0]`` projects the input to the rank,
    ``[1]`` maps the rank to the original outputs (and carries the original bias)."""

    @property
    def rank(self) -> int:
        first = self[0]
        assert isinstance(first, nn.Conv2d | nn.Linear)
        return int(first.weight.shape[0])


@dataclass(frozen=True)
class Factorization:
    """What :func:`low_rank` did to one layer: the rank kept (its full rank when left whole),
    the parameters before and after, and why it was left whole (``""`` when factorized)."""

    rank: int
    full_rank: int
    params_before: int
    params_after: int
    skipped: str = ""

    @property
    def factorized(self) -> bool:
        return not self.skipped


def _matrix_shape(layer: nn.Conv2d | nn.Linear) -> tuple[int, int]:
    """(outputs, inputs) of the layer's weight as a matrix (a conv's inputs: in*kh*kw)."""
    weight = layer.weight
    return int(weight.shape[0]), int(weight[0].numel())


def full_rank(layer: nn.Conv2d | nn.Linear) -> int:
    """The largest rank of ``layer``'s weight matrix: ``min(out, in*kh*kw)``."""
    out, inputs = _matrix_shape(layer)
    return min(out, inputs)


def rank_for(layer: nn.Conv2d | nn.Linear, ratio: float) -> int:
    """The rank a ratio in (0, 1] gives ``layer``: ``max(1, round(ratio * full_rank))``."""
    if not 0.0 < ratio <= 1.0:
        raise SearchSpaceError(f"a rank ratio must lie in (0, 1], got {ratio!r}")
    return max(1, round(ratio * full_rank(layer)))


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _why_not(layer: nn.Module) -> str:
    """Why ``layer`` cannot be factorized (``""``: it can)."""
    if type(layer) not in (nn.Conv2d, nn.Linear):
        # subclasses (e.g. attention's out_proj) are read by their owner: keep them whole
        return f"not a plain Conv2d or Linear ({type(layer).__name__})"
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return f"grouped convolution (groups={layer.groups})"
    return ""


def factorize_layer(layer: nn.Conv2d | nn.Linear, rank: int) -> FactorizedLayer:
    """``layer`` as two layers from the truncated SVD of its weight at ``rank`` (1 to
    :func:`full_rank`); ``layer`` itself is left unchanged. Raises :class:`ModelError` for a
    layer that cannot be factorized (grouped convolutions, other layer types)."""
    reason = _why_not(layer)
    if reason:
        raise ModelError(f"cannot factorize {type(layer).__name__}: {reason}")
    full = full_rank(layer)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise SearchSpaceError(f"rank must be an integer from 1 to {full} (the layer's full "
                               f"rank), got {rank!r}")
    weight = layer.weight.detach()
    out, _ = _matrix_shape(layer)
    # float64: at full rank the product reproduces the weight to float32 precision
    u, s, vh = torch.linalg.svd(weight.reshape(out, -1).double(), full_matrices=False)
    root = s[:rank].sqrt()
    down = (root[:, None] * vh[:rank]).to(weight.dtype)       # rank x in*kh*kw
    up = (u[:, :rank] * root[None, :]).to(weight.dtype)       # out x rank
    bias = layer.bias is not None
    first: nn.Conv2d | nn.Linear
    second: nn.Conv2d | nn.Linear
    if isinstance(layer, nn.Conv2d):
        pair = tuple[int, int]
        first = nn.Conv2d(layer.in_channels, rank, cast(pair, layer.kernel_size),
                          stride=cast(pair, layer.stride),
                          padding=cast(str | pair, layer.padding),
                          dilation=cast(pair, layer.dilation), bias=False,
                          padding_mode=layer.padding_mode)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
    else:
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=bias)
    result = FactorizedLayer(first, second).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        first.weight.copy_(down.reshape(first.weight.shape))
        second.weight.copy_(up.reshape(second.weight.shape))
        if bias:
            assert layer.bias is not None and second.bias is not None
            second.bias.copy_(layer.bias)
    result.train(layer.training)
    for p in result.parameters():
        p.requires_grad_(layer.weight.requires_grad)
    return result


def low_rank(model: nn.Module, ranks: Mapping[str, float],
             called: Collection[str] | None = None) -> dict[str, Factorization]:
    """Factorize, in place, each layer named in ``ranks`` (layer -> rank ratio in (0, 1]) at
    :func:`rank_for` its ratio. A ratio of 1.0 leaves the layer alone (not reported); a layer
    that cannot be factorized (grouped convolution, a Conv2d/Linear subclass, a layer not
    in ``called`` when given: its owner reads its weight instead of calling it) or whose
    factorization would not save parameters is left whole and reported with ``skipped``.
    Raises :class:`SearchSpaceError` for names that are not Conv2d/Linear layers of ``model``.
    """
    modules = dict(model.named_modules())
    unknown = sorted(n for n in ranks if not isinstance(modules.get(n), nn.Conv2d | nn.Linear))
    if unknown:
        raise SearchSpaceError(
            f"the candidate sets a rank for layers this model does not have (or that are not "
            f"Conv2d/Linear): {unknown[:5]}")
    done: dict[str, Factorization] = {}
    left_whole: list[str] = []
    for name, ratio in ranks.items():
        layer = modules[name]
        assert isinstance(layer, nn.Conv2d | nn.Linear)
        rank, full = rank_for(layer, float(ratio)), full_rank(layer)
        if ratio >= 1.0:
            continue
        before = _parameters(layer)
        out, inputs = _matrix_shape(layer)
        reason = _why_not(layer)
        if not reason and called is not None and name not in called:
            reason = "its owner reads its weight directly instead of calling it"
        if not reason and rank * (inputs + out) >= out * inputs:
            reason = (f"rank {rank} of {full} saves no parameters (only a rank below "
                      f"{out * inputs / (inputs + out):.1f} does)")
        if reason:
            left_whole.append(f"{name} ({reason})")
            done[name] = Factorization(full, full, before, before, reason)
            continue
        factors = factorize_layer(layer, rank)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, factors)
        done[name] = Factorization(rank, full, before, _parameters(factors))
    if left_whole:
        _logger.info("low-rank factorization leaves whole: %s", ", ".join(left_whole))
    return done


def factor_names(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Factorized layer -> the names of the layers now in its place (``<name>.0``,
    ``<name>.1``)."""
    return {name: (f"{name}.0", f"{name}.1") for name, m in model.named_modules()
            if isinstance(m, FactorizedLayer)}


def rename_layers(mapping: Mapping[str, V], renamed: Mapping[str, Sequence[str]]
                  ) -> dict[str, V]:
    """``mapping`` (layer -> value) with each layer in ``renamed`` replaced by the layers
    that took its place, each with the layer's value."""
    out: dict[str, V] = {}
    for layer, value in mapping.items():
        for name in renamed.get(layer, (layer,)):
            out[name] = value
    return out
