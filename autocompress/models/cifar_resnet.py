"""CIFAR-style ResNets (He et al., 2016, section 4.2): resnet20, resnet32 and resnet56.

The network is a 3x3 convolution stem with 16 channels, three stages of ``n`` BasicBlocks
with 16, 32 and 64 channels (the second and third stage start with stride 2), a global
average pool and a linear classifier; depth ``6n + 2``.

Where a block changes the shape, the shortcut is a projection (1x1 convolution with stride 2
followed by BatchNorm, "option B" of the paper) instead of the parameter-free zero-padding
shortcut ("option A") of the original CIFAR experiments: the channel pruner (Torch-Pruning)
traces dependencies through real modules, and a lambda layer hides the coupling between a
block's output channels and its input. resnet20 therefore has about 0.27M parameters
(option A: 0.27M as well; the projections add 2.8k).

:class:`CifarResNet` also takes one block count and one width per stage: the student
family ``cifar_resnet`` (:mod:`autocompress.models.students`) searches over both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autocompress.exceptions import ModelError
from autocompress.models._registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56"]

_STAGE_CHANNELS = (16, 32, 64)
_STAGES = 3


def _per_stage(value: int | Sequence[int], what: str) -> tuple[int, ...]:
    """One int for every stage, or a sequence of one int per stage."""
    values = (value,) * _STAGES if isinstance(value, int) else tuple(value)
    if len(values) != _STAGES or any(
        isinstance(v, bool) or not isinstance(v, int) for v in values
    ):
        raise ModelError(
            f"a CIFAR ResNet takes {what} as one integer or {_STAGES} integers (one per "
            f"stage), not {value!r}"
        )
    return values


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or projection shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small (28-32 px) images: a stem, three stages of BasicBlocks, a classifier.

    With an ``int`` for ``blocks_per_stage`` and the default ``widths`` this is the paper's
    network of depth ``6 * blocks_per_stage + 2``; a sequence of three block counts and other
    widths give the student architectures of :mod:`autocompress.models.students`.

    Args:
        blocks_per_stage: the number of BasicBlocks in each of the three stages: one count
            for all (``n``), or one per stage.
        num_classes: size of the classifier's output.
        in_channels: channels of the input images (1 for MNIST, 3 for CIFAR).
        widths: output channels of the three stages; the stem has as many as the first.
    """

    def __init__(
        self,
        blocks_per_stage: int | Sequence[int],
        *,
        num_classes: int,
        in_channels: int,
        widths: Sequence[int] = _STAGE_CHANNELS,
    ) -> None:
        super().__init__()
        depths = _per_stage(blocks_per_stage, "blocks_per_stage")
        channels = _per_stage(widths, "widths")
        if min(depths) < 1:
            raise ModelError(
                f"a CIFAR ResNet needs at least 1 block per stage, not {blocks_per_stage}"
            )
        if min(channels) < 1:
            raise ModelError(f"a CIFAR ResNet needs at least 1 channel per stage, not {widths}")
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        width = channels[0]
        stages: list[nn.Sequential] = []
        for stage_index, (blocks_in_stage, out_channels) in enumerate(
            zip(depths, channels, strict=True)
        ):
            blocks: list[nn.Module] = []
            for block_index in range(blocks_in_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(width, out_channels, stride))
                width = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnet20")
def resnet20(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (n=3), about 0.27M parameters."""
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet32")
def resnet32(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 (n=5), about 0.47M parameters."""
    return CifarResNet(5, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet56")
def resnet56(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 (n=9), about 0.86M parameters."""
    return CifarResNet(9, num_classes=num_classes, in_channels=in_channels)
