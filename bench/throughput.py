#!/usr/bin/env python
"""Training throughput of both regimes, measured side by side on one machine.

    python bench/throughput.py --device cpu --json FILE [--images N] [--batch-size B]

For each regime (freeze, full), our loop and the baseline each in a fresh process of its own
(so that peak RSS is each one's own and neither runs in the other's warmed-up process):
  epoch     images/s of a whole training epoch as train/finetune.py runs it: device-resident
            uint8 data, batch augmentation, step, metrics (one warm-up epoch first, untimed);
  ceiling   images/s of the bare step on one pre-made device batch, as many steps as an epoch;
  baseline  images/s of the loop a typical user writes: torchvision DataLoader with per-image
            PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
            Normalize), fp32, contiguous NCHW, loss.item() every step;
  peak memory: CUDA max allocated, or peak RSS of the process on CPU, for ours and the
            baseline, plus the step-memory accounting of torch_resnet.memory.step_memory_bytes.
Data: CIFAR-10 python batches under --data-dir, else a learnable stand-in of --images images
written in that format to a temporary folder.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch_resnet import ResidualNetwork  # noqa: E402
from torch_resnet.config import TrainConfig  # noqa: E402
from torch_resnet.data import CIFAR10, DeviceBatches, load_cifar  # noqa: E402
from torch_resnet.distributed import pick_device  # noqa: E402
from torch_resnet.errors import ArgumentParser, UserError, cli  # noqa: E402
from torch_resnet.files import atomic_write  # noqa: E402
from torch_resnet.memory import peak_memory_bytes, step_memory_bytes  # noqa: E402
from torch_resnet.regimes import optimizer_for, prepare_model  # noqa: E402
from torch_resnet.synthetic import write_cifar  # noqa: E402
from torch_resnet.train import Stepper, train_one_epoch  # noqa: E402

REGIMES = ("freeze", "full")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def ours(regime, data, args, device):
    cfg = TrainConfig(freeze=regime == "freeze", batch_size=args.batch_size, amp=args.amp, compile=args.compile)
    channels_last = device.type == "cuda"
    torch.manual_seed(0)
    model = prepare_model(cfg, pretrained=ResidualNetwork(100)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer_for(model, cfg)
    stepper = Stepper(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), cfg, device)
    batches = DeviceBatches(data, args.batch_size, device, shuffle=True, augment=True, channels_last=channels_last)
    train_one_epoch(stepper, batches, 0, log_every=10**9, progress=False)  # warm-up: cuDNN autotuning, torch.compile
    epoch_s = timed(device, lambda: train_one_epoch(stepper, batches, 1, log_every=cfg.log_every, progress=False))
    x, y = next(batches.epoch(2))
    x, y = x.clone(), y.clone()
    steps = len(batches)
    ceiling_s = timed(device, lambda: [stepper.step(x, y) for _ in range(steps)])
    peak = peak_memory_bytes(device)
    step_mem = step_memory_bytes(stepper, x, y)
    return {"epoch_ips": len(data.labels) / epoch_s, "ceiling_ips": steps * len(y) / ceiling_s,
            "epoch_s": epoch_s, "peak_mem_bytes": peak, "step_mem_bytes": step_mem,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "amp": str(stepper.autocast_dtype or "off").replace("torch.", ""), "channels_last": channels_last}


class PerImageCifar(torch.utils.data.Dataset):
    """What a typical user has: HWC uint8 images turned into PIL and transformed one by one."""

    def __init__(self, data):
        import torchvision.transforms as T

        self.images = data.images.permute(0, 2, 3, 1).numpy()
        self.labels = data.labels.numpy()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline(regime, data, args, device):
    torch.manual_seed(0)
    model = ResidualNetwork(10).to(device)
    if regime == "freeze":
        for p in model.backbone.parameters():
            p.requires_grad = False
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(PerImageCifar(data), batch_size=args.batch_size, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda")

    def epoch(limit=None):
        model.train()
        if regime == "freeze":
            model.backbone.eval()
        total = 0.0
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()

    epoch(limit=3)  # warm-up of the model; the loader's start-up stays in the timed epoch, as for a user
    seconds = timed(device, epoch)
    return {"baseline_ips": len(data.labels) / seconds}


def worker(args):
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = load_cifar(args.data_dir, CIFAR10, "train", download=False)
    if args.images and args.images < len(data.labels):
        data.images, data.labels = data.images[:args.images], data.labels[:args.images]
    if args.loop == "ours":
        result = ours(args.worker, data, args, device)
        result["images"] = len(data.labels)
        result["resident_data_bytes"] = data.images.numel() * data.images.element_size() + data.labels.numel() * 8
    else:
        result = baseline(args.worker, data, args, device)
        result["baseline_peak_mem_bytes"] = peak_memory_bytes(device)
    print(json.dumps(result))


def machine(device_name: str) -> str:
    if device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available()):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def table(results) -> str:
    lines = [f"{'regime':<8}{'epoch img/s':>13}{'ceiling img/s':>15}{'baseline img/s':>16}"
             f"{'epoch/ceiling':>15}{'ours/baseline':>15}{'peak MiB':>10}{'step MiB':>10}{'baseline MiB':>14}"]
    for regime in REGIMES:
        if regime not in results:
            continue
        r = results[regime]
        base = f"{r['baseline_ips']:.0f}" if "baseline_ips" in r else "-"
        speedup = f"{r['ours_over_baseline']:.1f}x" if "baseline_ips" in r else "-"
        base_mem = f"{r['baseline_peak_mem_bytes'] / 2**20:.0f}" if "baseline_peak_mem_bytes" in r else "-"
        lines.append(f"{regime:<8}{r['epoch_ips']:>13.0f}{r['ceiling_ips']:>15.0f}"
                     f"{base:>16}{r['epoch_over_ceiling']:>15.2f}{speedup:>15}"
                     f"{r['peak_mem_bytes'] / 2**20:>10.0f}{r['step_mem_bytes'] / 2**20:>10.0f}{base_mem:>14}")
    if "freeze" in results and "full" in results:
        f, g = results["freeze"], results["full"]
        line = (f"freeze/full peak memory {f['peak_mem_bytes'] / g['peak_mem_bytes']:.2f}, "
                f"step memory {f['step_mem_bytes'] / g['step_mem_bytes']:.2f}")
        if results.get("device", "").startswith("cuda"):  # the data set lives in GPU memory in both regimes
            data = f["resident_data_bytes"]
            line += (f"; without the resident data set ({data / 2**20:.0f} MiB): "
                     f"{(f['peak_mem_bytes'] - data) / (g['peak_mem_bytes'] - data):.2f}")
        lines.append(line)
    return "\n".join(lines)


@cli
def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--images", type=int, default=None, help="images per epoch (default: 512 on CPU, 50000 on CUDA)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--compile", action="store_true", help="torch.compile our model (not the baseline)")
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    p.add_argument("--data-dir", default=None, help="folder with cifar-10-batches-py (default: a generated stand-in)")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--worker", choices=REGIMES, help=argparse.SUPPRESS)
    p.add_argument("--loop", choices=["ours", "baseline"], default="ours", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    device = pick_device(args.device)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.images is not None and not 1 <= args.images <= 1_000_000:
        raise UserError(f"--images must be between 1 and 1,000,000, got {args.images}")
    if args.json and Path(args.json).is_dir():  # found out now, not after the measurements
        raise UserError(f"--json {args.json} is a folder")
    images = args.images or (50000 if device.type == "cuda" else 512)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = tmp
            write_cifar(tmp, CIFAR10, train_size=images, test_size=10)
        results = {"machine": machine(args.device), "device": str(device), "batch_size": args.batch_size,
                   "compile": args.compile}
        for regime in args.regimes:
            res = {}
            for loop in ("ours",) + ("baseline",) * (not args.skip_baseline):  # a fresh process each
                cmd = [sys.executable, __file__, "--worker", regime, "--loop", loop, "--device", args.device,
                       "--images", str(images), "--batch-size", str(args.batch_size), "--amp", args.amp,
                       "--data-dir", data_dir] + ["--compile"] * args.compile
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    last = (r.stderr.strip().splitlines() or ["?"])[-1]
                    raise UserError(f"the {regime} measurement ({loop}) failed: {last}")
                res.update(json.loads(r.stdout.strip().splitlines()[-1]))
            res["epoch_over_ceiling"] = res["epoch_ips"] / res["ceiling_ips"]
            if "baseline_ips" in res:
                res["ours_over_baseline"] = res["epoch_ips"] / res["baseline_ips"]
            results[regime] = res
    print(f"{results['machine']}; device {device}; batch {args.batch_size}; {images} images per epoch"
          f"{'; torch.compile' if args.compile else ''}")
    print(table(results))
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
