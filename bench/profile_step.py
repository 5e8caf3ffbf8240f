#!/usr/bin/env python
"""Where a training step's time goes: torch.profiler over a few steps of each regime, as
train/finetune.py runs them (default settings), on CPU or CUDA.

    python bench/profile_step.py --device cuda [--batch-size 256] [--steps 10]

Each regime gets what a default run gets (the frozen backbone compiled where train/finetune.py
would). Prints per regime: wall time per step, device-busy time per step (CUDA: the sum of kernel
times; wall minus busy is launch and host overhead) and the top operators by device time.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from throughput import regime_stepper  # noqa: E402  (bench/throughput.py, beside this script)
from torch_resnet.training.config import TrainConfig  # noqa: E402
from torch_resnet.training.distributed import pick_device  # noqa: E402
from torch_resnet.training.performance import describe, keep_freed_memory  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto",
                   help="auto (cuda if available, else cpu), cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (default %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="profiled steps per regime, after 5 untimed ones "
                                                        "(default %(default)s)")
    p.add_argument("--rows", type=int, default=12, help="operators listed per regime (default %(default)s)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_memory()
    for regime in ("freeze", "full"):
        stepper = regime_stepper(TrainConfig(freeze=regime == "freeze"), device)
        x = (torch.rand(args.batch_size, 3, 32, 32, device=device) * 2 - 1).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch_size,), device=device)
        stepper.model.train()
        for _ in range(5):
            stepper.step(x, y)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                stepper.step(x, y)
            if cuda:
                torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / args.steps
        events = prof.key_averages()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        busy = sum(getattr(e, key) for e in events) / 1e6 / args.steps
        note = f"; {stepper.backbone.note}" if regime == "freeze" else ""
        print(f"== {regime}: {describe(device, stepper.autocast_dtype, True)}{note}; batch {args.batch_size}: "
              f"{wall * 1e3:.2f} ms per step (under the profiler), {'kernels' if cuda else 'operators'} "
              f"{busy * 1e3:.2f} ms per step ({busy / wall:.0%} busy), {args.batch_size / wall:,.0f} img/s")
        print(events.table(sort_by=key, row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
