"""Feature maps inside a network: which module gives the last one, and capturing it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autocompress.exceptions import ModelError

__all__ = ["FeatureTap", "eval_mode", "find_feature_layer"]

_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, in the mode it had before afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def find_feature_layer(model: nn.Module, example_input: torch.Tensor) -> str:
    """Name of the module whose output is the model's last feature map before global
    pooling, found by running ``example_input`` through ``model`` with forward hooks.

    When the network pools with a module (``nn.AdaptiveAvgPool2d`` and the like, returning a
    1x1 map with no spatial map computed after it), the feature map is that module's input;
    otherwise (pooling by ``x.mean((2, 3))``) it is the last 4-D map any module returns.
    Where nested modules return the same map, the outermost is named (``layer3`` rather than
    ``layer3.2.relu``). Squeeze-and-excitation pools inside the network are followed by
    larger maps and so are not taken for the global pool.

    Raises:
        ModelError: the model produces no 4-D map (not a convolutional network).
    """
    events: list[_Event] = []  # in the order modules finish: children before parents

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                pixels = output.shape[2] * output.shape[3]
                pool_input = (inputs[0] if isinstance(module, _POOLS) and pixels == 1
                              and inputs and isinstance(inputs[0], torch.Tensor) else None)
                events.append(_Event(name, output, pixels, pool_input))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    if not events:
        raise ModelError(
            f"{type(model).__name__} returns no 4-D feature map before its global pooling, so "
            "it cannot take part in a hint loss; set hint_weight to 0"
        )
    for index in range(len(events) - 1, -1, -1):
        pool = events[index]
        if pool.pool_input is None or any(
                later.pixels > 1 and not pool.name.startswith(later.name + ".")
                for later in events[index + 1:]):
            continue  # not a pool, or a squeeze-and-excitation pool inside the network
        before = events[:index]
        same = [e.name for e in before if e.output is pool.pool_input]
        if same:
            return same[-1]
        if before:
            return before[-1].name
    return events[-1].name


@dataclass(frozen=True)
class _Event:
    name: str
    output: torch.Tensor
    pixels: int
    pool_input: torch.Tensor | None  # set for pooling modules returning a 1x1 map


class FeatureTap:
    """Keeps the latest output of one module (by name) while in a ``with`` block."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self.module = model.get_submodule(name)
        self.name = name
        self.value: torch.Tensor | None = None
        self._handle: Any = None

    def _record(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.value = output

    def __enter__(self) -> FeatureTap:
        self._handle = self.module.register_forward_hook(self._record)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._handle.remove()
        self.value = None

    def take(self) -> torch.Tensor:
        """The captured map (and forget it)."""
        if self.value is None:
            raise ModelError(f"module {self.name!r} did not run in the last forward pass "
                             "(is its FeatureTap entered?)")
        value, self.value = self.value, None
        return value
