"""MobileNetV2 (Sandler et al., 2018) adapted to small (28-32 px) inputs.

The ImageNet network downsamples 32x before the classifier; on a 32x32 image that leaves a
1x1 map. As in common CIFAR implementations, the first two downsampling steps - the stem
convolution and the first 24-channel stage - use stride 1 instead of 2, so the network
downsamples 8x (32x32 -> 4x4, 28x28 -> 4x4). Everything else follows the paper: inverted
residual blocks (1x1 expansion, 3x3 depthwise, linear 1x1 projection), ReLU6, a 1x1
convolution to 1280 channels, global average pool, dropout and a linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.exceptions import ModelError
from autocompress.models._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# (expansion, output channels, blocks, stride of the first block) per stage; an expansion of
# None means "the network's expand_ratio". The strides of the 24-channel stage and the stem
# are 1 instead of the paper's 2 (see the module docstring).
_STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, losing at most 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1), filter (3x3 depthwise), project (1x1, linear); residual if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 for 28-32 px inputs.

    Args:
        num_classes: size of the classifier's output.
        in_channels: channels of the input images.
        width_mult: multiplies every layer's channel count (rounded to a multiple of 8);
            the last 1x1 convolution keeps 1280 channels unless ``width_mult > 1``.
        expand_ratio: expansion factor of the inverted residual blocks (the first block
            always uses 1, as in the paper).
        dropout: dropout probability before the classifier.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        width_mult: float = 1.0,
        expand_ratio: int = 6,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ModelError(f"MobileNetV2 width_mult must be > 0, not {width_mult}")
        if expand_ratio < 1:
            raise ModelError(f"MobileNetV2 expand_ratio must be >= 1, not {expand_ratio}")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"MobileNetV2 dropout must be in [0, 1), not {dropout}")
        width = _make_divisible(_STEM_CHANNELS * width_mult)
        last_channels = _make_divisible(_LAST_CHANNELS * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_relu6(in_channels, width, 3, stride=1)]
        for expansion, channels, blocks, first_stride in _STAGES:
            out_channels = _make_divisible(channels * width_mult)
            for block_index in range(blocks):
                stride = first_stride if block_index == 0 else 1
                ratio = expand_ratio if expansion is None else expansion
                features.append(InvertedResidual(width, out_channels, stride, ratio))
                width = out_channels
        features.append(_conv_bn_relu6(width, last_channels, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenet_v2")
def mobilenet_v2(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_mult: float = 1.0,
    expand_ratio: int = 6,
) -> MobileNetV2:
    """MobileNetV2 for 28-32 px inputs, about 2.2M parameters at ``width_mult=1``."""
    return MobileNetV2(
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        expand_ratio=expand_ratio,
    )
