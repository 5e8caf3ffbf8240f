"""What trains in each fine-tuning regime, and how fast.

- ``freeze``: the pretrained backbone is fixed (``requires_grad=False``, eval mode); only the
  new 10-class head trains.
- ``full``: every pretrained convolution and the head train; every BatchNorm is frozen
  (``frozen_batchnorm.py``: eval-mode arithmetic whatever ``model.train()`` says, gamma/beta not
  trainable, running statistics never updated); the pretrained layers get a very low learning rate.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import DEFAULT_LR, HEAD_LR, TrainConfig
from ..errors import UserError
from ..formats.files import load_model, missing_weights
from .frozen_batchnorm import freeze_batchnorm
from .keras_recipe import keras_dense, keras_optimizer
from ..model import FEATURES, ResidualNetwork


def check_weights_exist(cfg: TrainConfig) -> None:
    """The weights a run starts from are there (said first, before anything about the run's folder)."""
    source = Path(cfg.init_from or cfg.weights)
    if not (source.is_file() or cfg.resume):  # a resumed run takes every weight from its checkpoint
        raise missing_weights(source)


def prepare_model(cfg: TrainConfig, num_classes: int = 10, pretrained: ResidualNetwork | None = None
                  ) -> ResidualNetwork:
    """Pretrained backbone + new seeded head (or a --freeze run's head), set up for the regime.
    The network comes from ``cfg.init_from`` / ``cfg.weights`` unless ``pretrained`` is given."""
    source = Path(cfg.init_from or cfg.weights)
    if pretrained is None:
        check_weights_exist(cfg)
    model = pretrained if pretrained is not None else load_model(source)
    if cfg.init_from is not None and model.num_classes != num_classes:
        raise UserError(f"`init_from` {source}: a {model.num_classes}-class model; it takes a `freeze=True` run's "
                        f"model.pt ({num_classes} classes); the converted network goes in `weights`")
    if cfg.init_from is None and cfg.recipe == "keras":  # glorot uniform kernel, zero bias
        model.head = keras_dense(FEATURES, num_classes, cfg.seed)
    elif cfg.init_from is None:
        torch.manual_seed(cfg.seed)
        model.head = nn.Linear(FEATURES, num_classes)
    freeze_batchnorm(model.backbone)
    if cfg.freeze:
        model.backbone.requires_grad_(False)
    return model


def optimizer_for(model: ResidualNetwork, cfg: TrainConfig) -> torch.optim.Optimizer:
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.regime]
    if cfg.recipe == "keras":  # one rate for every trainable tensor unless --head-lr is given
        return keras_optimizer(model, lr, None if cfg.freeze else cfg.head_lr)
    if cfg.freeze:
        groups = [{"params": list(model.head.parameters()), "lr": lr}]
    else:
        head_lr = cfg.head_lr if cfg.head_lr is not None else (lr if cfg.init_from else HEAD_LR)
        convs = [p for p in model.backbone.parameters() if p.requires_grad]
        groups = [{"params": convs, "lr": lr}, {"params": list(model.head.parameters()), "lr": head_lr}]
    on_cuda = model.head.weight.is_cuda  # the fused kernel: one launch per step for all tensors
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=on_cuda or None)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
