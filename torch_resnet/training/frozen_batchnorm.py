"""Frozen BatchNorm for the full regime, as explicit modules put in place by one function.

``freeze_batchnorm`` replaces every ``nn.BatchNorm2d`` by a ``FrozenBatchNorm2d`` (statistics and
affine as buffers: nothing to train, nothing updated, eval-mode arithmetic whatever ``train()``
says; torchvision's ``FrozenBatchNorm2d`` and timm's ``freeze_batch_norm_2d`` do the same) and every
``ResidualBlock`` by a ``FoldedResidualBlock`` on the same tensors (a keras.applications ResNet's
blocks by those of ``folded_applications.py``). State-dict keys and values stay exactly as they were.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model import ResidualBlock


class FrozenBatchNorm2d(nn.Module):
    """``nn.BatchNorm2d`` in eval mode for good: the same four tensors (and the counter, for the
    state dict's keys) as buffers, the same arithmetic (``F.batch_norm`` without batch statistics)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.eps = bn.eps
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def scale_and_shift(bn) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm in eval mode as the per-channel affine it is: ``scale * z + shift``."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class FoldedResidualBlock(ResidualBlock):
    """A residual block on the layers of ``block``, its BatchNorms frozen; while training, ``bn2`` is
    folded into ``conv1``.

    A frozen BatchNorm after a convolution is the same convolution with its weight times ``scale``
    and ``shift`` as a bias. So the step makes one pass over memory less in forward and in backward,
    and keeps one activation less, per block; autograd still trains ``conv1.weight`` (through the
    product). The numbers differ from the unfolded block by float rounding only (tested). In eval
    mode (validation, test, export) the block is the model's own, exact path.
    """

    def __init__(self, block: ResidualBlock):
        nn.Module.__init__(self)  # not ResidualBlock's: it would make new layers; these are the block's own,
        self.bn1 = FrozenBatchNorm2d(block.bn1)  # registered in its order (the state dict's key order)
        self.conv1 = block.conv1
        self.bn2 = FrozenBatchNorm2d(block.bn2)
        self.conv2 = block.conv2
        self.shortcut = block.shortcut
        self.shortcut_from_raw = block.shortcut_from_raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        inplace = not torch.is_grad_enabled()
        y = F.silu(self.bn1(x), inplace=inplace)
        s = x if self.shortcut is None else self.shortcut(x if self.shortcut_from_raw else y)
        scale, shift = scale_and_shift(self.bn2)
        y = self.conv1.same_conv(y, self.conv1.weight * scale.view(-1, 1, 1, 1), shift)
        return self.conv2(F.silu(y, inplace=inplace)) + s


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of ``module`` frozen, every residual block folded (in place; returns ``module``);
    the keras.applications ResNets' blocks and stem too (``folded_applications.py``)."""
    from .folded_applications import FOLDED  # it builds on this module's FrozenBatchNorm2d

    for name, child in module.named_children():
        if type(child) is ResidualBlock:
            setattr(module, name, FoldedResidualBlock(child))
        elif type(child) in FOLDED:
            setattr(module, name, FOLDED[type(child)](child))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child))
        else:
            freeze_batchnorm(child)
    return module
