"""The full regime's frozen BatchNorm folded into the convolutions before it, for the
``keras.applications`` ResNets (``frozen_batchnorm.py`` does the same for the course network).

A frozen BatchNorm after a convolution is that convolution with its weight times the BN's scale
and its bias times the scale plus the BN's shift: one pass over memory less forward and backward
and one activation less per pair, while autograd still trains the convolution's own weight and
bias (through the product). Every BN of a v1 block and of the v1 stem follows a convolution; in a
V2 block, ``bn1`` and ``bn2`` do (the pre-activation and ``post_bn`` follow an addition and stay
frozen BatchNorms). In eval mode (validation, test, export) each block is the model's own, exact
path; the state dict's keys, order and values do not change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..applications.resnet import BottleneckV1, BottleneckV2, Stem
from .frozen_batchnorm import FrozenBatchNorm2d, scale_and_shift


def folded_conv(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))`` as one convolution."""
    scale, shift = scale_and_shift(bn)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), bias, conv.stride, conv.padding)


def take_layers(folded: nn.Module, block: nn.Module) -> None:
    """``block``'s own layers on ``folded``, in their order (the state dict's), BatchNorms frozen."""
    for name, child in block.named_children():
        setattr(folded, name, FrozenBatchNorm2d(child) if isinstance(child, nn.BatchNorm2d) else child)
    for name, value in vars(block).items():  # plain attributes: stride, a missing shortcut (None)
        if not name.startswith("_") and name not in folded._modules:
            setattr(folded, name, value)


class FoldedBottleneckV1(BottleneckV1):
    def __init__(self, block: BottleneckV1):
        nn.Module.__init__(self)  # not BottleneckV1's: it would make new layers
        take_layers(self, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        y = F.relu(folded_conv(self.conv1, self.bn1, x), inplace=True)
        y = F.relu(folded_conv(self.conv2, self.bn2, y), inplace=True)
        y = folded_conv(self.conv3, self.bn3, y)
        shortcut = x if self.shortcut_conv is None else folded_conv(self.shortcut_conv, self.shortcut_bn, x)
        return F.relu(y + shortcut, inplace=True)


class FoldedBottleneckV2(BottleneckV2):
    def __init__(self, block: BottleneckV2):
        nn.Module.__init__(self)
        take_layers(self, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        pre = F.relu(self.preact_bn(x))
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_conv(pre)
        else:
            shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        y = F.relu(folded_conv(self.conv1, self.bn1, pre), inplace=True)
        y = F.relu(folded_conv(self.conv2, self.bn2, y), inplace=True)
        return self.conv3(y) + shortcut


class FoldedStem(Stem):
    def __init__(self, stem: Stem):
        nn.Module.__init__(self)
        take_layers(self, stem)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.bn is None:
            return super().forward(x)
        return self.pool(F.relu(folded_conv(self.conv, self.bn, x), inplace=True))


FOLDED = {BottleneckV1: FoldedBottleneckV1, BottleneckV2: FoldedBottleneckV2, Stem: FoldedStem}
