#!/usr/bin/env python
"""Throughput of both training regimes and of inference, ours against our peers, side by side.

    python bench/throughput.py --device cpu --regimes freeze full infer --peer keras --json FILE
    python bench/throughput.py --network ResNet50 --image-size 224 --head 1024,200 --regimes freeze full

Each measurement runs in a fresh process of its own (peak memory is each one's own, TensorFlow
never shares a process with PyTorch, nobody runs in another's warmed-up process):
  epoch     images/s of a whole epoch as our scripts run it, with the settings a default run
            (10 epochs of 45,000 images, 5,000 validated) gets (or --amp/--compile): for freeze
            and full, train/finetune.py's loop (device-resident uint8 data, batch augmentation,
            step, metrics); for infer, train/evaluate.py's forward pass (fp32 by default). One
            untimed warm-up epoch first;
  start-up  the one-time seconds before the first step that those settings cost (compiling the
            frozen backbone where train/finetune.py would), reported apart from the epoch;
  ceiling   images/s of the bare step (or forward) repeated on one pre-made device batch;
  keras     the peer we replace: the seed's network in Keras 3 / TensorFlow with a course
            student's loop (bench/keras_peer.py);
  baseline  the loop a typical PyTorch user writes: torchvision DataLoader with per-image PIL
            transforms, fp32, contiguous NCHW, loss.item() every step;
  memory    peak (CUDA max allocated, or the process's peak RSS on CPU) and, for training, the
            step-memory accounting of torch_resnet.training.memory.step_memory_bytes.
Data: CIFAR-10 python batches under --data-dir, else a learnable stand-in of --images images.
--network NAME (a keras.applications ResNet): the course's birds model on it (--head Dense widths
on the pooled features, BatchNorm frozen) at --image-size, on random images (speed does not
depend on the pixels), in batches of 32 by default; its peer is keras_peer.py's same model.
"""
import argparse
import importlib.util
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
from torch_resnet.applications import SPECS, build  # noqa: E402
from torch_resnet.training.config import AMP_MODES, COMPILE_MODES, TrainConfig  # noqa: E402
from torch_resnet.data.cifar import CIFAR10, CifarSplit, DeviceBatches, load_cifar  # noqa: E402
from torch_resnet.training.distributed import pick_device  # noqa: E402
from torch_resnet.errors import UserError, check_count  # noqa: E402
from torch_resnet.cli.shell import ArgumentParser, cli  # noqa: E402
from torch_resnet.training.evaluate import predict  # noqa: E402
from torch_resnet.formats.files import atomic_write  # noqa: E402
from torch_resnet.training.memory import peak_memory_bytes, step_memory_bytes  # noqa: E402
from torch_resnet.training.performance import amp_dtype, autocast, describe, keep_freed_memory  # noqa: E402
from torch_resnet.training.regimes import optimizer_for, prepare_model, trainable_parameters  # noqa: E402
from torch_resnet.data.synthetic import write_cifar  # noqa: E402
from torch_resnet.training.stepper import Stepper  # noqa: E402
from torch_resnet.training.train import train_one_epoch  # noqa: E402
from torch_resnet.training.frozen_backbone import frozen_backbone  # noqa: E402

REGIMES = ("freeze", "full", "infer")
PEERS = ("keras", "baseline")


def timed(device, fn) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


DEFAULT_RUN_IMAGES = 10 * (45_000 + 5_000)  # through a default run's frozen backbone: 10 epochs, trained and validated


def random_network(args):
    """A random network of --network: the course's (100 classes), or a keras.applications ResNet
    without its top (the trainer puts --head on it)."""
    torch.manual_seed(0)
    if args.network == "course":
        return ResidualNetwork(100)
    return build(args.network, include_top=False, pooling="avg")


def regime_stepper(cfg: TrainConfig, device, args) -> Stepper:
    """The trainer's step for ``cfg``'s regime and settings on a random network, at a constant rate,
    with the frozen backbone a default run gets (compiled where train/finetune.py would)."""
    classes = 10 if args.network == "course" else int(args.head.split(",")[-1])
    model = prepare_model(cfg, classes, random_network(args)).to(device, memory_format=torch.channels_last)
    optimizer = optimizer_for(model, cfg)
    backbone = frozen_backbone(model.backbone, cfg.compile, device, amp_dtype(cfg.amp, device), cfg.batch_size,
                               DEFAULT_RUN_IMAGES, measured=args.network == "course") if cfg.freeze else None
    return Stepper(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), cfg, device,
                   backbone=backbone)


def ours_training(regime, data, args, device):
    cfg = TrainConfig(freeze=regime == "freeze", batch_size=args.batch_size, amp=args.amp, compile=args.compile,
                      head=None if args.network == "course" else args.head,
                      head_dropout=0.0 if args.network == "course" else 0.4)
    stepper = regime_stepper(cfg, device, args)
    startup_s = stepper.backbone.startup_seconds if cfg.freeze else 0.0
    batches = DeviceBatches(data, args.batch_size, device, shuffle=True, augment=True, channels_last=True,
                            mode=stepper.model.preprocess)
    compile_s = timed(device, lambda: train_one_epoch(stepper, batches, 0, log_every=10**9, progress=False))
    epoch_s = timed(device, lambda: train_one_epoch(stepper, batches, 1, log_every=cfg.log_every, progress=False))
    x, y = (t.clone() for t in next(batches.epoch(2)))
    steps = len(batches)
    ceiling_s = timed(device, lambda: [stepper.step(x, y) for _ in range(steps)])
    peak = peak_memory_bytes(device)
    settings = describe(device, stepper.autocast_dtype, True, args.compile)
    return {"epoch_ips": len(data.labels) / epoch_s, "ceiling_ips": steps * len(y) / ceiling_s,
            "epoch_s": epoch_s, "warmup_epoch_s": compile_s, "startup_s": startup_s, "peak_mem_bytes": peak,
            "step_mem_bytes": step_memory_bytes(stepper, x, y),
            "trainable_params": trainable_parameters(stepper.model),
            "settings": f"{settings}; {stepper.backbone.note}" if cfg.freeze else settings}


def ours_inference(data, args, device):
    """The evaluation path (torch_resnet.training.evaluate.predict) at its default precision, fp32."""
    dtype = amp_dtype(args.amp, device, training=False)
    model = random_network(args)
    warm_s = timed(device, lambda: predict(model, data, args.batch_size, device, dtype=dtype))
    epoch_s = timed(device, lambda: predict(model, data, args.batch_size, device, dtype=dtype))
    x = next(DeviceBatches(data, args.batch_size, device, shuffle=False, augment=False, channels_last=True,
                           mode=model.preprocess).epoch(0))[0]
    steps = -(-len(data.labels) // args.batch_size)

    def bare():
        with torch.inference_mode(), autocast(device.type, dtype):
            for _ in range(steps):
                model(x)

    ceiling_s = timed(device, bare)
    return {"epoch_ips": len(data.labels) / epoch_s, "ceiling_ips": steps * len(x) / ceiling_s,
            "epoch_s": epoch_s, "warmup_epoch_s": warm_s, "startup_s": 0.0, "peak_mem_bytes": peak_memory_bytes(device),
            "settings": describe(device, dtype, True)}


class PerImageCifar(torch.utils.data.Dataset):
    """What a typical user has: HWC uint8 images turned into PIL and transformed one by one."""

    def __init__(self, data, augment: bool):
        import torchvision.transforms as T

        self.images = data.images.permute(0, 2, 3, 1).numpy()
        self.labels = data.labels.numpy()
        steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
        self.transform = T.Compose(steps + [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline(regime, data, args, device):
    torch.manual_seed(0)
    model = ResidualNetwork(10).to(device)
    if regime != "full":
        model.backbone.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(PerImageCifar(data, augment=regime != "infer"), batch_size=args.batch_size,
                                         shuffle=regime != "infer", num_workers=workers,
                                         pin_memory=device.type == "cuda")

    def epoch(limit=None):
        model.train(regime == "full")  # the frozen backbone in eval mode
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device), y.to(device)
            if regime == "infer":
                with torch.no_grad():
                    model(x).argmax(1).tolist()
                continue
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()

    epoch(limit=3)  # warm-up of the model; the loader's start-up stays in the timed epoch, as for a user
    return {"baseline_ips": len(data.labels) / timed(device, epoch), "baseline_peak_mem_bytes": peak_memory_bytes(device)}


def worker(args):
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.network == "course":
        data = load_cifar(args.data_dir, CIFAR10, "train", download=False)
        data.images, data.labels = data.images[:args.images], data.labels[:args.images]
    else:  # random images: the speed of a keras.applications ResNet does not depend on the pixels
        g = torch.Generator().manual_seed(0)
        size, classes = args.image_size, int(args.head.split(",")[-1])
        data = CifarSplit(torch.randint(0, 256, (args.images, 3, size, size), dtype=torch.uint8, generator=g),
                          torch.randint(0, classes, (args.images,), generator=g), [str(c) for c in range(classes)])
    if args.loop == "baseline":
        result = baseline(args.worker, data, args, device)  # PyTorch as a user has it: no allocator setting
    else:
        if device.type == "cpu":
            keep_freed_memory()  # as our scripts do
        result = ours_inference(data, args, device) if args.worker == "infer" else ours_training(
            args.worker, data, args, device)
        result["images"] = len(data.labels)
        result["resident_data_bytes"] = data.images.numel() + data.labels.numel() * 8
    print(json.dumps(result))


def measure(cmd: list[str], what: str) -> dict:
    r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"the {what} measurement failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def table(results: dict, regimes) -> str:
    def cell(r, key, fmt):
        return format(r[key], fmt) if r.get(key) is not None else "-"

    cols = [("regime", None, "", 8), ("epoch img/s", "epoch_ips", ",.0f", 13), ("start-up s", "startup_s", ".1f", 12),
            ("ceiling", "ceiling_ips", ",.0f", 10),
            ("epoch/ceiling", "epoch_over_ceiling", ".2f", 15), ("keras img/s", "keras_ips", ",.0f", 13),
            ("ours/keras", "ours_over_keras", ".2f", 12), ("baseline img/s", "baseline_ips", ",.0f", 16),
            ("ours/baseline", "ours_over_baseline", ".2f", 15), ("peak MiB", "peak_mib", ",.0f", 10),
            ("step MiB", "step_mib", ",.0f", 10)]
    lines = ["".join(f"{name:>{w}}" if key else f"{name:<{w}}" for name, key, _, w in cols)]
    for regime in regimes:
        r = results[regime]
        lines.append("".join(f"{regime:<{w}}" if key is None else f"{cell(r, key, fmt):>{w}}" for _, key, fmt, w in cols))
    lines += [f"{regime}: {results[regime]['settings']}" for regime in regimes]
    return "\n".join(lines)


@cli
def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--images", type=int, default=None, help="images per epoch (default 512 on CPU, 50000 on CUDA)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"batch size of every loop (default {TrainConfig.batch_size}; 32 with --network)")
    p.add_argument("--network", default="course", choices=["course", *SPECS],
                   help="the course's network or a keras.applications ResNet")
    p.add_argument("--image-size", type=int, default=224, help="with --network: the images' side")
    p.add_argument("--head", default="1024,200", help="with --network: the Dense widths of the head")
    p.add_argument("--amp", default="auto", choices=AMP_MODES, help="precision, as in train/finetune.py and "
                   "train/evaluate.py")
    p.add_argument("--compile", default=None, choices=COMPILE_MODES,
                   help="as train/finetune.py's --compile (default: its default, the frozen backbone compiled "
                        "where measured to pay for a default run)")
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES,
                   help=f"what to measure (default {' '.join(REGIMES)})")
    p.add_argument("--peer", nargs="*", default=None, choices=PEERS,
                   help="peers to run (default keras on CPU, baseline on CUDA; none: --peer alone)")
    p.add_argument("--data-dir", default=None, help="folder with cifar-10-batches-py (default: a generated stand-in)")
    p.add_argument("--worker", choices=REGIMES, help=argparse.SUPPRESS)
    p.add_argument("--loop", choices=["ours", "baseline"], default="ours", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    family = args.network != "course"
    args.batch_size = args.batch_size or (32 if family else TrainConfig.batch_size)
    check_count("--batch-size", args.batch_size)
    if args.images is not None and not 1 <= args.images <= 1_000_000:
        raise UserError(f"--images must be between 1 and 1,000,000, got {args.images}")
    if args.worker:
        worker(args)
        return 0
    if args.json and Path(args.json).is_dir():  # found out now, not after the measurements
        raise UserError(f"--json {args.json} is a folder")
    peers = args.peer if args.peer is not None else (["baseline"] if device.type == "cuda" else ["keras"])
    if "keras" in peers and importlib.util.find_spec("tensorflow") is None:  # found, not imported: seconds
        raise UserError("--peer keras needs TensorFlow: pip install tensorflow-cpu (or pip install -e '.[keras]')")
    if family and "baseline" in peers:
        raise UserError("--peer baseline is the course network's; with --network the peer is keras")
    images = args.images or (50000 if device.type == "cuda" else 64 if family else 512)
    results = {"machine": machine(device), "device": str(device), "network": args.network,
               "image_size": args.image_size if family else 32, "batch_size": args.batch_size, "images": images,
               "amp": args.amp, "compile": args.compile, "peers": peers}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        if args.data_dir is None and not family:
            write_cifar(tmp, CIFAR10, train_size=images, test_size=10)
        common = ["--images", str(images), "--batch-size", str(args.batch_size), "--data-dir", data_dir,
                  "--network", args.network, "--image-size", str(args.image_size), "--head", args.head]
        for regime in args.regimes:
            cmd = [__file__, "--worker", regime, "--device", args.device, *common]
            res = measure(cmd + ["--amp", args.amp] + (["--compile", args.compile] if args.compile else []),
                          f"{regime} (ours)")
            if "baseline" in peers:
                res.update(measure(cmd + ["--loop", "baseline"], f"{regime} (baseline)"))
                res["ours_over_baseline"] = res["epoch_ips"] / res["baseline_ips"]
            if "keras" in peers:
                keras_cmd = [str(Path(__file__).with_name("keras_peer.py")), "--regime", regime, *common]
                res.update(measure(keras_cmd, f"{regime} (keras)"))
                res["ours_over_keras"] = res["epoch_ips"] / res["keras_ips"]
            res["epoch_over_ceiling"] = res["epoch_ips"] / res["ceiling_ips"]
            res["peak_mib"] = res["peak_mem_bytes"] / 2**20 if res.get("peak_mem_bytes") else None
            res["step_mib"] = res["step_mem_bytes"] / 2**20 if res.get("step_mem_bytes") else None
            results[regime] = res
    # --data-dir may hold fewer images than asked for: the figures are for the images used
    results["images"] = min([results[r]["images"] for r in args.regimes if "images" in results[r]] or [images])
    network = "the course network" if not family else f"{args.network} at {args.image_size}x{args.image_size}"
    print(f"{results['machine']}; {network}; device {device}; batch {args.batch_size}; "
          f"{results['images']:,} images per epoch")
    print(table(results, args.regimes))
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
