"""What trains in each fine-tuning regime, and how fast.

- ``freeze``: the pretrained backbone is fixed (``requires_grad=False``, eval mode); only the
  new 10-class head trains.
- ``full``: every pretrained convolution and the head train; every BatchNorm is frozen
  (``frozen_batchnorm.py``: eval-mode arithmetic whatever ``model.train()`` says, gamma/beta not
  trainable, running statistics never updated); the pretrained layers get a very low learning rate.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .config import DEFAULT_LR, HEAD_LR, TrainConfig
from ..errors import UserError
from ..formats.files import load_model, missing_weights
from .frozen_batchnorm import freeze_batchnorm
from .keras_recipe import keras_dense, keras_optimizer
from ..applications.resnet import KerasResNet
from ..applications.specs import Dense
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
    if cfg.head is not None and not isinstance(model, KerasResNet):
        raise UserError(f"`head` makes Dense layers on a keras.applications ResNet; {source} is the course network, "
                        f"whose head is one Dense layer of the data's classes")
    if cfg.init_from is None and isinstance(model, KerasResNet):
        torch.manual_seed(cfg.seed)
        model.replace_head(new_head(model, cfg, num_classes))
        if cfg.recipe == "keras":
            keras_init(model.head, cfg.seed)
    elif cfg.init_from is None and cfg.recipe == "keras":  # glorot uniform kernel, zero bias
        model.head = keras_dense(FEATURES, num_classes, cfg.seed)
    elif cfg.init_from is None:
        torch.manual_seed(cfg.seed)
        model.head = nn.Linear(FEATURES, num_classes)
    freeze_batchnorm(model.backbone)
    if cfg.freeze:
        model.backbone.requires_grad_(False)
    return model


def new_head(model: KerasResNet, cfg: TrainConfig, num_classes: int) -> tuple[Dense, ...]:
    """The Dense layers of ``cfg.head`` (ReLU between them, a Dropout of ``cfg.head_dropout`` before
    each after the first), else those of the network's own head (activations and Dropout kept) with
    the data's classes last."""
    if cfg.head is None and model.head_layers:
        *hidden, last = model.head_layers
        return (*hidden, Dense(num_classes, "linear", last.dropout, last.name))
    widths = cfg.head_widths() if cfg.head is not None else [num_classes]
    if widths[-1] != num_classes:
        raise UserError(f"`head` {cfg.head!r} ends with {widths[-1]} units; the data has {num_classes} classes")
    names = ["dense"] + [f"dense_{i}" for i in range(1, len(widths))]
    return tuple(Dense(w, "relu" if i < len(widths) - 1 else "linear", cfg.head_dropout if i else 0.0, names[i])
                 for i, w in enumerate(widths))


def keras_init(head: nn.Module, seed: int) -> None:
    """Each Linear of ``head`` initialised as a new Keras Dense (glorot uniform kernel, zero bias)."""
    for i, layer in enumerate(m for m in head.modules() if isinstance(m, nn.Linear)):
        fresh = keras_dense(layer.in_features, layer.out_features, seed + i)
        layer.load_state_dict(fresh.state_dict())


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
    on_cuda = next(model.parameters()).is_cuda  # the fused kernel: one launch per step for all tensors
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=on_cuda or None)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def learning_rates(optimizer, model: nn.Module) -> dict:
    """The peak rates of the backbone (None: frozen) and of the head."""
    head = {id(p) for p in model.head.parameters()}
    rates = {"backbone": None, "head": None}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        lr = group.get("initial_lr", group["lr"])
        rates.update({**({"head": lr} if ids & head else {}), **({"backbone": lr} if ids - head else {})})
    return rates


def schedule(optimizer, cfg: TrainConfig, total_steps: int):
    """Cosine decay over the whole run, per step; the Keras recipe keeps a constant rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1.0 if cfg.recipe == "keras" else
        0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
