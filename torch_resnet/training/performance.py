"""The fastest correct settings for the device at hand, chosen once and said in one line.

Measured on a 2-core AMD EPYC (Zen 4, avx512_bf16) and an H100 (see docs/performance.md):
- channels_last everywhere: oneDNN (CPU) and cuDNN (GPU) convolutions are fastest in NHWC;
- training precision (``--amp auto``) by hardware: on CUDA by compute capability, bf16 from 8.0
  (Ampere on), fp16 with the gradient scaler on 7.x (V100, T4: fp16 tensor cores, no bf16
  hardware; PyTorch emulates bf16 there, slower than fp32), fp32 below 7.0; bf16 on CPUs that
  compute it natively (avx512_bf16 or amx_bf16), about twice the fp32 rate on the CPU above, fp32
  on other CPUs. Evaluation stays fp32 unless asked (its job is an exact number);
- on Linux/glibc CPUs, freed memory stays with the process (see ``keep_freed_memory``).
"""
from __future__ import annotations

import ctypes
import functools
import json
import platform
import sys
from pathlib import Path

import torch

from .config import AMP_MODES
from ..errors import UserError

@functools.cache
def cpu_flags() -> frozenset:
    """The x86 CPU's feature flags from /proc/cpuinfo; empty elsewhere (other systems, Arm)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()  # Arm bf16 (e.g. Graviton3) is not measured here yet
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (x86 avx512_bf16/amx_bf16); False where
    that is not known: fp32 is the safe default."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_kind() -> str:
    """What decides the CPU's speed here: "amx" (AMX tiles with bf16), "avx512_bf16", else
    PyTorch's own name for the vector instructions it uses ("avx512", "avx2", "default", ...)."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return torch.backends.cpu.get_cpu_capability().lower()


# Compiling the frozen backbone with inductor freezing makes the weights constants: each BatchNorm
# folds into the convolution before it, SiLU and the residual add fuse into the convolutions,
# oneDNN's weights are packed once. Whether that pays is measured, per CPU kind and precision, by
# bench/frozen_backbone.py; the measurements are data beside this module.
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def measured_rates(path: Path = Path(__file__).with_name("frozen_backbone_rates.json")) -> tuple[dict, int]:
    """({(cpu kind, autocast dtype): (eager img/s, compiled img/s, compile seconds)}, the threads they were
    measured on)."""
    data = json.loads(path.read_text())
    rates = {(r["cpu"], PRECISIONS[r["precision"]]): (r["eager"], r["compiled"], r["compile_seconds"])
             for r in data["rates"]}
    return rates, data["threads"]


FROZEN_BACKBONE_RATES, MEASURED_THREADS = measured_rates()
# A smaller gain is inside what one machine's passes differ by (10 % on the 2-core EPYC): no gain.
MIN_GAIN = 0.05


def compile_frozen_backbone(device: torch.device, dtype: torch.dtype | None, images: int) -> tuple[bool, str]:
    """Whether compiling the frozen backbone with inductor freezing pays back its compilation over
    ``images`` images through it on this device, and why, in a few words. From the measured rates
    above, taken to scale with the number of threads."""
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    if device.type != "cpu":
        return False, f"compiling not measured to pay on {device.type}"
    where = f"this CPU ({cpu_kind()}) in {precision}"
    rates = FROZEN_BACKBONE_RATES.get((cpu_kind(), dtype))
    if rates is None:
        return False, f"compiling not measured to pay on {where}"
    eager, compiled, compile_s = rates
    gain = compiled / eager - 1
    if gain < MIN_GAIN:
        return False, f"compiled measured {gain:+.0%} on {where}, under the {MIN_GAIN:.0%} that counts as a gain"
    saved = images * (1 / eager - 1 / compiled) * MEASURED_THREADS / torch.get_num_threads()
    pays = saved > compile_s
    return pays, (f"{gain:+.0%} measured on {where}: {images:,} images save about {saved:.0f} s "
                  f"{'for' if pays else 'against'} {compile_s:.0f} s of compilation")


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The GPU's compute capability, (major, minor): (7, 5) for a T4, (8, 0) for an A100."""
    return tuple(torch.cuda.get_device_capability(device))


def amp_dtype(amp: str, device: torch.device, training: bool = True) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device``; None means fp32. ``auto``, for training: on
    CUDA by compute capability (bf16 from 8.0, fp16 on 7.x, fp32 below), bf16 on CPUs with native
    bf16, else fp32; for evaluation always fp32."""
    if amp not in AMP_MODES:
        raise UserError(f"`amp` must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "auto":
        if not training:
            return None
        if device.type == "cuda":
            major = cuda_capability(device)[0]
            return torch.bfloat16 if major >= 8 else torch.float16 if major >= 7 else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise UserError("`amp='fp16'` needs a CUDA device (use `amp='bf16'` or `amp='off'` on CPU)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def why(device: torch.device, dtype: torch.dtype | None) -> str:
    """What the hardware does with ``dtype``: the reason for the choice of ``--amp auto``, or a
    warning when another choice is slow there. Empty where there is nothing to say."""
    if device.type == "cuda":
        major, minor = cuda_capability(device)
        cc = f"compute capability {major}.{minor}"
        if dtype == torch.bfloat16:
            return f"{cc}: native bf16" if major >= 8 else f"{cc}: bf16 is emulated here, slower than fp32"
        if dtype == torch.float16:
            return f"{cc}: fp16 tensor cores{', no bf16' if major < 8 else ''}; gradient scaler when training"
        return f"{cc}: no tensor cores" if major < 7 else cc
    if device.type == "cpu":
        native = cpu_has_native_bf16()
        if dtype == torch.bfloat16:
            return "native bf16" if native else "bf16 is emulated on this CPU, slower than fp32"
        return "" if native else "no native bf16 on this CPU"
    return ""


def autocast(device_type: str, dtype: torch.dtype | None):
    """Autocast to ``dtype`` (from ``amp_dtype``) on that device type; fp32 (no autocast) for None."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


_kept = False


def keep_freed_memory() -> bool:
    """On glibc, keep freed memory in the process instead of handing it back to the OS.

    glibc serves each large block (a 256-image activation is 67 MB) with a fresh mmap and unmaps
    it when freed, so every step page-faults and zeroes hundreds of MB anew: 14-25 % of a CPU
    step measured here. With mmap off for large blocks (M_MMAP_MAX 0; threads other than the
    main one still fall back to mmap) and no trimming, the blocks are reused. The process's
    resident memory then stays at its peak until it exits, which a training or evaluation run
    does anyway. Returns whether the setting is active; a no-op off glibc."""
    global _kept
    if _kept:
        return True
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from malloc.h
    _kept = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    return _kept


def describe(device: torch.device, dtype: torch.dtype | None, channels_last: bool, compile_mode: str | None = None
             ) -> str:
    """The settings in a few words, for a run's first line: the precision and why."""
    precision = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(dtype, "fp32")
    reason = why(device, dtype)
    parts = [str(device), f"{precision} ({reason})" if reason else precision,
             "channels_last" if channels_last else "NCHW"]
    if device.type == "cpu":
        parts.append(f"{torch.get_num_threads()} threads")
        if _kept:
            parts.append("malloc keeps freed memory")
    if compile_mode and compile_mode != "off":
        parts.append(f"torch.compile ({compile_mode})")
    return ", ".join(parts)


def describe_training(device: str = "cpu", amp: str = "auto") -> str:
    """What a training run on ``device`` ("cpu", "cuda", "cuda:1") computes in with ``--amp amp``,
    and why: the settings its first line prints, e.g. "cuda, fp16 autocast (compute capability
    7.5: fp16 tensor cores, no bf16; gradient scaler when training), channels_last"."""
    dev = torch.device(device)
    return describe(dev, amp_dtype(amp, dev), True)
