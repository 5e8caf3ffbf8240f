"""Where a run computes: the device, and under ``torchrun`` this process's rank among several."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; anything else is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"`device={name!r}` is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"`device={name!r}`: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"`device={name!r}`: CUDA is not available here (use `device='cpu'`)")
    return device


@dataclass
class RunContext:
    device: torch.device
    rank: int = 0
    world: int = 1
    quiet: bool = False  # the Python API's runs: the first line and a line per epoch only

    @property
    def main(self) -> bool:
        return self.rank == 0

    def print(self, *args, first_line: bool = False, progress: bool = False):
        """Rank 0 prints; a quiet run only its first line and its progress (a line per epoch: tqdm's
        bar shows only on a terminal, and a script's log or a notebook needs to see the run go on)."""
        if self.main and (first_line or progress or not self.quiet):
            print(*args, flush=True)


@contextlib.contextmanager
def distributed(device_name: str):
    """A RunContext for one process, or for one rank of a ``torchrun`` launch (WORLD_SIZE > 1):
    then each rank takes ``cuda:LOCAL_RANK`` (or the CPU with ``cpu``) and the process group is
    torn down at the end, after every rank has finished."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = (int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else (0, 0)
    except (KeyError, ValueError):
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers set together (use torchrun)") from None
    device = pick_device(device_name)
    if world == 1:
        yield RunContext(device)
        return
    if device.index is not None:
        raise UserError(f"`device={device_name!r}`: under torchrun each rank takes cuda:LOCAL_RANK; "
                        f"use `device='auto'`, `device='cuda'` or `device='cpu'`")
    if device.type == "cuda":
        device = torch.device(f"cuda:{local}")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield RunContext(device, rank, world)
        dist.barrier()  # a rank that leaves while another still talks to it aborts (gloo)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Summed over the ranks (in place), or ``t`` itself in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


@contextlib.contextmanager
def rank_zero_first(ctx: RunContext):
    """The block runs on rank 0 before the other ranks (a download they then read)."""
    if not ctx.main:
        dist.barrier()
    yield
    if ctx.main and ctx.world > 1:
        dist.barrier()
