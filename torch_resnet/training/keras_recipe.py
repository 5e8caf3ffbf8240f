"""The pieces of a Keras notebook's training loop that PyTorch does differently (``--recipe keras``).

- ``KerasAdam``: ``keras.optimizers.Adam`` of Keras 3 (``keras/src/optimizers/adam.py``), op for op
  in float32. Keras adds epsilon to sqrt(v) and folds both bias corrections into the step size:

      m += (g - m) * (1 - beta_1);  v += (g*g - v) * (1 - beta_2)
      alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t);  w -= (m * alpha) / (sqrt(v) + epsilon)

  ``torch.optim.Adam`` divides by sqrt(v / (1 - beta_2**t)) + eps instead: Keras' epsilon acts as
  epsilon / sqrt(1 - beta_2**t) there (3.2e-6 at step 1 for 1e-7), so the two differ wherever a
  gradient is small, whatever eps PyTorch is given. No weight decay, no schedule.
- ``keras_dense``: a new head initialised as ``keras.layers.Dense`` is (glorot uniform kernel,
  zero bias), where ``nn.Linear`` draws U(+-1/sqrt(fan_in)) for both.
- The loss is the mean sparse categorical cross-entropy from logits, ``F.cross_entropy``'s default.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class KerasAdam(torch.optim.Optimizer):
    """Keras 3's Adam update, the same float32 operations in the same order, so identical
    gradients give bit-identical weights. One step counter per tensor (as Keras' single counter,
    since every tensor steps every time)."""

    def __init__(self, params, lr: float = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7):
        super().__init__(params, dict(lr=lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        f32 = np.float32
        for group in self.param_groups:
            b1, b2 = f32(group["beta_1"]), f32(group["beta_2"])
            one_minus_b1, one_minus_b2 = float(f32(1 - group["beta_1"])), float(f32(1 - group["beta_2"]))
            eps = float(f32(group["epsilon"]))
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = f32(state["step"])
                with np.errstate(all="ignore"):  # as TF computes it: float32 scalars throughout
                    alpha = f32(group["lr"]) * np.sqrt(f32(1) - b2 ** t) / (f32(1) - b1 ** t)
                g, m, v = p.grad, state["m"], state["v"]
                m.add_(g.sub(m).mul_(one_minus_b1))
                v.add_(g.square().sub_(v).mul_(one_minus_b2))
                p.sub_(m.mul(float(alpha)).div_(ieee_sqrt(v).add_(eps)))
        return loss


def ieee_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt rounded as IEEE 754 (and TensorFlow) round it. torch's vectorised float32 sqrt on
    CPUs is not: it is one ulp off for about one value in five on AVX-512. The float64 sqrt,
    rounded back to float32, is exact (53 bits are enough for a correctly rounded float32 sqrt)."""
    return x.double().sqrt_().to(x.dtype) if x.device.type == "cpu" else x.sqrt()


def keras_dense(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """An ``nn.Linear`` initialised as a new ``keras.layers.Dense``: kernel U(+-sqrt(6 / (fan_in +
    fan_out))) (glorot uniform), bias zero; drawn from its own generator seeded by ``seed``."""
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        nn.init.xavier_uniform_(layer.weight, generator=torch.Generator().manual_seed(seed))
        layer.bias.zero_()
    return layer


def keras_optimizer(model: nn.Module, lr: float, head_lr: float | None = None) -> KerasAdam:
    """KerasAdam over every trainable tensor at ``lr``; the head at ``head_lr`` when given."""
    head = {id(p) for p in model.head.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    heads = [p for p in model.head.parameters() if p.requires_grad]
    groups = [{"params": rest, "lr": lr}] if rest else []
    groups.append({"params": heads, "lr": lr if head_lr is None else head_lr})
    return KerasAdam(groups)
