"""The torchvision classifier zoo, as the zoo test and benchmark go over it.

Sizes come from torchvision's weight metadata: nothing is downloaded or built.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ZOO_MAX_PARAMS", "ZOO_MIN_INPUT_PX", "ZooModel", "torchvision_zoo"]

#: The zoo's size bound: classifiers with fewer parameters (at 1,000 classes).
ZOO_MAX_PARAMS = 60_000_000
#: The smallest input side the zoo runs a model at; larger where the model needs more.
ZOO_MIN_INPUT_PX = 96


@dataclass(frozen=True)
class ZooModel:
    """One torchvision classifier of the zoo."""

    name: str          # torchvision's name, e.g. "resnet18"
    num_params: int    # with 1,000 classes, as torchvision's weight metadata says
    input_px: int      # side of the square input it is run at


def torchvision_zoo(max_params: int = ZOO_MAX_PARAMS,
                    min_input_px: int = ZOO_MIN_INPUT_PX) -> list[ZooModel]:
    """torchvision's classifiers with fewer than ``max_params`` parameters, in name order,
    each with its input side: ``min_input_px``, or the model's minimum where larger (224 or
    256 for the transformers)."""
    import torchvision
    from torchvision.models import get_model_weights, list_models

    out = []
    for name in list_models(module=torchvision.models):
        meta = get_model_weights(name).DEFAULT.meta  # metadata only: nothing is downloaded
        if meta["num_params"] < max_params:
            side = max(min_input_px, meta.get("min_size", (1, 1))[0])
            out.append(ZooModel(name, int(meta["num_params"]), int(side)))
    return out
