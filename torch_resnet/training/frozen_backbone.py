"""The freeze regime's backbone: a constant function, compiled where that was measured to pay.

In the freeze regime nothing in the backbone changes, so inductor can compile it with
``freezing``: the weights become constants, each BatchNorm folds into the convolution before it
and SiLU fuses into it. Whether that pays depends on the CPU (``performance.FROZEN_BACKBONE_RATES``);
the compiled graph is checked against the eager backbone on one batch before it is used, and
anything that goes wrong there (no C++ compiler, a failed compilation, a different result) leaves
the backbone eager, with the reason in the run's first line.
"""
from __future__ import annotations

import logging
import time

import torch
from torch import nn

from .config import TORCH_COMPILE_MODES
from .performance import autocast, compile_frozen_backbone

# How far the compiled backbone's features may be from the eager ones, relative to their largest
# magnitude: fp32 rounding (folding reorders the sums), or bf16's 8 bits of mantissa.
TOLERANCE = {None: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
QUIET = ("torch.utils.cpp_extension",  # "No CUDA runtime is found", on every CPU machine
         "torch._dynamo.convert_frame")  # the recompile limit's 12 lines: the note says it in one


class FrozenBackbone:
    """Calls the backbone, always in eval mode and without autograd; full batches of ``batch``
    images through ``compiled`` when there is one, a smaller last batch eagerly (no second
    compilation for its shape); every batch when ``batch`` is None (a --compile mode, whose
    CUDA graphs reuse their outputs: each call's are copied). ``note`` says what was chosen and
    why; ``startup_seconds`` what choosing it cost (the compilation and its check)."""

    def __init__(self, module: nn.Module, compiled=None, batch: int | None = 0, note: str = "",
                 startup_seconds: float = 0.0):
        self.module, self.compiled, self.batch = module, compiled, batch
        self.note, self.startup_seconds = note, startup_seconds

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.module.eval()  # frozen: the same function in every epoch (and one graph for inductor)
        if self.compiled is not None and self.batch is None:
            torch.compiler.cudagraph_mark_step_begin()
            return self.compiled(x).clone()
        if self.compiled is not None and x.shape[0] == self.batch:
            return self.compiled(x)
        return self.module(x)


def compile_with_freezing(module: nn.Module, x: torch.Tensor, dtype: torch.dtype | None):
    """``module`` (in eval mode) compiled by inductor with freezing, now, on ``x``: (the compiled
    module, its output for ``x``). Freezing is on while dynamo traces that first call, which is when
    the weights are made constants; passed only in ``torch.compile``'s options, it comes too late
    and the weights stay graph inputs (nothing folded). The weights must not change afterwards.
    Raises where dynamo would instead run it eagerly (after 8 compilations in one process, as a
    notebook making many runs reaches), so that the caller does not take it for compiled."""
    import torch._dynamo.config as dynamo_config  # here: only a compiling run pays for importing them
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module)
    with inductor_config.patch(freezing=True), dynamo_config.patch(fail_on_recompile_limit_hit=True), \
            torch.no_grad(), autocast(x.device.type, dtype):
        return compiled, compiled(x)


def frozen_backbone(module: nn.Module, compile_mode: str | None, device: torch.device, dtype: torch.dtype | None,
                    batch: int, images: int, channels_last: bool = True, measured: bool = True) -> FrozenBackbone:
    """The freeze regime's backbone for a run that puts ``images`` images through it in batches of
    ``batch``: compiled with inductor freezing when ``compile_mode`` is None (auto) and the measured
    rates say it pays on this device, else eager (``--compile off``, or not worth it here); with a
    torch.compile mode, compiled in that mode. ``measured``: whether the rates are this network's
    (they are the course network's; another is left eager by default)."""
    module.eval()
    if compile_mode == "off":
        return FrozenBackbone(module, note="frozen backbone eager (--compile off)")
    if compile_mode in TORCH_COMPILE_MODES:  # compiled on first use, as the trained part
        mode = None if compile_mode == "default" else compile_mode
        return FrozenBackbone(module, torch.compile(module, mode=mode), None,
                              note=f"frozen backbone --compile {compile_mode}")
    pays, why = compile_frozen_backbone(device, dtype, images) if measured else (False, "compiling measured for "
                                                                                  "the course network only")
    if not pays:
        return FrozenBackbone(module, note=f"frozen backbone eager ({why})")
    t0 = time.perf_counter()
    x = torch.rand(batch, 3, 32, 32, device=device, generator=torch.Generator(device).manual_seed(0)) * 2 - 1
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    quiet = {name: logging.getLogger(name).level for name in QUIET}
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)  # setLevel, not .level: it clears the logger's cache
    try:
        compiled, got = compile_with_freezing(module, x, dtype)
        with torch.no_grad(), autocast(device.type, dtype):
            want, got = module(x).float(), got.float()
    except Exception as e:  # no C++ compiler, an inductor bug: the eager backbone does the same job
        reason = " ".join(f"{type(e).__name__}: {e}".split()).split(" Set TORCHDYNAMO_VERBOSE")[0][:200]
        if type(e).__name__ == "FailOnRecompileLimitHit":
            limit = torch._dynamo.config.recompile_limit
            reason = f"dynamo's limit of {limit} compilations of one function is reached in this process"
        return FrozenBackbone(module, note=f"frozen backbone eager (torch.compile failed: {reason})")
    finally:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
    error = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
    if not error <= TOLERANCE[dtype]:  # also NaN
        return FrozenBackbone(module, note=f"frozen backbone eager (compiled features differ by {error:.1e})")
    seconds = time.perf_counter() - t0
    return FrozenBackbone(module, compiled, batch, startup_seconds=seconds,
                          note=f"frozen backbone compiled with inductor freezing in {seconds:.1f} s ({why})")
