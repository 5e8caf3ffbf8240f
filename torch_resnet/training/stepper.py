"""One training step, in the regime's cheapest correct way (``Stepper``), and the frozen backbone's
features computed once (``backbone_features``)."""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from .config import TORCH_COMPILE_MODES, TrainConfig
from ..data.cifar import CifarSplit, DeviceBatches
from .frozen_backbone import FrozenBackbone
from ..model import ResidualNetwork
from .performance import amp_dtype, autocast


class Stepper:
    """Forward/backward/update for one batch, in the regime's cheapest correct way."""

    def __init__(self, model: ResidualNetwork, optimizer, scheduler, cfg: TrainConfig, device: torch.device,
                 world: int = 1, backbone: FrozenBackbone | None = None):
        self.model, self.optimizer, self.scheduler, self.freeze = model, optimizer, scheduler, cfg.freeze
        self.autocast_dtype = amp_dtype(cfg.amp, device)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        # --freeze: the backbone is a constant function (frozen_backbone.py), only the head trains
        self.backbone = backbone or FrozenBackbone(model.backbone)
        trained = model.head if cfg.freeze else model
        if world > 1:  # gradients are averaged across ranks; frozen BN buffers need no broadcast
            from torch.nn.parallel import DistributedDataParallel as DDP

            # newer torch renamed broadcast_buffers to forward_sync_buffers
            no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else "broadcast_buffers")
            trained = DDP(trained, **{no_sync: False})
        if cfg.compile in TORCH_COMPILE_MODES:
            trained = torch.compile(trained, mode=None if cfg.compile == "default" else cfg.compile)
        # CUDA-graph modes reuse their output buffers: each step must say the last one's are done
        self.cudagraphs = cfg.compile in ("reduce-overhead", "max-autotune")
        self.trained = trained

    def autocast(self):
        return autocast(self.device_type, self.autocast_dtype)

    def logits(self, x):
        if self.freeze and x.dim() == 4:  # images (not cached features): no activations kept for the backbone
            x = self.backbone(x)
        return self.trained(x)

    def eval_logits(self, x):
        """Validation's logits (no autograd, eval mode): the frozen backbone as in training."""
        return self.model.head(self.backbone(x)) if self.freeze else self.model(x)

    def step(self, x, y):
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            logits = self.logits(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), logits.detach()


@torch.no_grad()
def backbone_features(backbone: FrozenBackbone, split: CifarSplit, batch_size: int, device: torch.device,
                      channels_last: bool, autocast_dtype, mode: str = "tf") -> CifarSplit:
    """The frozen backbone's features of a whole split: for --freeze without augmentation, where
    every epoch would compute exactly these again (``mode``: the network's preprocessing)."""
    parts = []
    for x, _ in DeviceBatches(split, batch_size, device, shuffle=False, augment=False,
                              channels_last=channels_last, mode=mode).epoch(0):
        with autocast(device.type, autocast_dtype):
            parts.append(backbone(x).float())
    return CifarSplit(torch.cat(parts), split.labels, split.class_names)
