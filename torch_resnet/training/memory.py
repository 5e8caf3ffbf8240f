"""Memory a training run takes: the peak of the whole process, and what one training step needs."""
from __future__ import annotations

import copy
import sys

import torch


def peak_memory_bytes(device: torch.device) -> int | None:
    """CUDA: max allocated since the last reset. CPU: the process's peak RSS (None where the OS
    does not say: Windows has no ``resource`` module)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS counts bytes, Linux KiB


def step_memory_bytes(stepper, x: torch.Tensor, y: torch.Tensor) -> int:
    """Memory of one training step of ``stepper`` (a ``stepper.Stepper``) on the batch ``x, y``.

    CUDA: the allocator's peak during the step (everything resident: data set, weights,
    activations, gradients, optimizer state, workspaces). CPU, which keeps no allocator
    statistics: weights + activations kept for backward + gradients + optimizer state, counted
    from tensor sizes (the data set not included). The step is undone afterwards: weights,
    optimizer, schedule and loss scale are as before, so measuring does not change the run.
    """
    model, opt, sched = stepper.model, stepper.optimizer, stepper.scheduler
    saved = ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()), sched.state_dict(),
             stepper.scaler.state_dict())
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(x.device)
        stepper.step(x, y)
        torch.cuda.synchronize()
        result = torch.cuda.max_memory_allocated(x.device)
    else:
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            stepper.step(x, y)
        storages.pop(x.untyped_storage().data_ptr(), None)
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
        opt_state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                        if torch.is_tensor(t))
        result = weights + sum(storages.values()) + grads + opt_state
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    sched.load_state_dict(saved[2])
    if saved[3]:  # an enabled GradScaler (fp16) counted the step too
        stepper.scaler.load_state_dict(saved[3])
    opt.zero_grad(set_to_none=True)
    return int(result)
