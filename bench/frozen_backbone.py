#!/usr/bin/env python
"""The measurement behind torch_resnet/training/frozen_backbone_rates.json, for this CPU:
the frozen backbone (inference, channels_last, the trainer's allocator setting) eager and compiled
by inductor with freezing, and the seconds the compilation takes with an empty cache.

    python bench/frozen_backbone.py [--amp auto] [--batch-size 256] [--batches 4] [--rounds 3]

The two are timed in alternating rounds and each rate is the median of its rounds: on a small
shared machine one pass of each differs by 10 % from the next, as much as the gain measured.
Prints the rates and the entry for the data file; a CPU kind not yet there is worth adding (with the
machine named in its "measured"), since the trainer compiles only where an entry says it pays.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from torch_resnet import ResidualNetwork  # noqa: E402
from torch_resnet.training.config import AMP_MODES  # noqa: E402
from torch_resnet.training.performance import (MEASURED_THREADS, amp_dtype, autocast, cpu_kind,  # noqa: E402
                                                keep_freed_memory)
from torch_resnet.training.frozen_backbone import compile_with_freezing  # noqa: E402
from torch_resnet.training.frozen_batchnorm import freeze_batchnorm  # noqa: E402


def rate(backbone, x, batches: int, dtype) -> float:
    with torch.no_grad(), autocast("cpu", dtype):
        backbone(x)  # warm-up (oneDNN primitives; for the compiled one, already compiled)
        t0 = time.perf_counter()
        for _ in range(batches):
            backbone(x)
    return batches * len(x) / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--amp", default="auto", choices=AMP_MODES, help="training precision, as train/finetune.py's")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch")
    p.add_argument("--batches", type=int, default=4, help="timed batches of each, per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of eager and compiled")
    args = p.parse_args(argv)
    keep_freed_memory()
    dtype = amp_dtype(args.amp, torch.device("cpu"))
    torch.manual_seed(0)
    model = ResidualNetwork(10)
    freeze_batchnorm(model.backbone)
    backbone = model.backbone.to(memory_format=torch.channels_last).eval()
    x = (torch.rand(args.batch_size, 3, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # an empty cache: what a first run pays
        t0 = time.perf_counter()
        compiled, _ = compile_with_freezing(backbone, x, dtype)  # what the trainer compiles
        compile_s = time.perf_counter() - t0
        rounds = [(rate(backbone, x, args.batches, dtype), rate(compiled, x, args.batches, dtype))
                  for _ in range(args.rounds)]
    eager, fast = (statistics.median(r) for r in zip(*rounds))
    print("rounds (eager, compiled img/s): " + ", ".join(f"({e:,.0f}, {c:,.0f})" for e, c in rounds))
    threads = torch.get_num_threads()
    print(f"{cpu_kind()} CPU, {threads} threads, {dtype or 'fp32'}, batch {args.batch_size}, torch {torch.__version__}: "
          f"eager {eager:,.0f} img/s, compiled with freezing {fast:,.0f} img/s ({fast / eager:.2f}x), "
          f"compiled in {compile_s:.1f} s")
    scale = MEASURED_THREADS / threads  # the data file holds rates on its "threads"
    entry = {"cpu": cpu_kind(), "precision": "bf16" if dtype else "fp32", "eager": round(eager * scale, 1),
             "compiled": round(fast * scale, 1), "compile_seconds": round(compile_s, 1),
             "measured": f"<the machine>, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}: "
                         f"bench/frozen_backbone.py, median of {args.rounds} alternating rounds"}
    print(f"entry for torch_resnet/training/frozen_backbone_rates.json: {json.dumps(entry)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
