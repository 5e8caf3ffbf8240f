"""Fine-tuning the converted network on CIFAR-10: two regimes, one explicit loop.

- ``freeze``: the pretrained backbone is fixed (``requires_grad=False``, eval mode) and runs
  under ``torch.no_grad``: no activations are kept for it and it has no gradients or optimizer
  state. Only the new 10-class head trains.
- ``full``: every pretrained convolution and the head train; every BatchNorm is frozen (eval
  mode whatever ``model.train()`` says, gamma/beta not trainable, running statistics never
  updated); the pretrained layers get a very low learning rate.

Runs on one device or, under ``torchrun``, on several with DistributedDataParallel: each rank
takes its shard of every global batch, metrics are summed across ranks, rank 0 writes.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import inspect
import io
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .convert import DEFAULT_STATE_DICT, atomic_write, load_state_dict, names_sidecar
from .data import CIFAR10, CifarSplit, DeviceBatches, load_cifar, split_train_val
from .errors import UserError
from .model import FEATURES, ResidualNetwork

DEFAULT_LR = {"freeze": 1e-3, "full": 1e-5}
HEAD_LR = 1e-3  # a new, randomly initialised head needs an ordinary rate even in the full regime


@dataclass
class TrainConfig:
    freeze: bool = False
    weights: str = str(DEFAULT_STATE_DICT)
    init_from: str | None = None  # a --freeze run's model.pt: start the full regime from it
    data_dir: str = "data"
    out: str | None = None  # default runs/<regime>
    epochs: int = 10
    batch_size: int = 256
    lr: float | None = None  # default DEFAULT_LR[regime]
    head_lr: float | None = None  # full regime; default HEAD_LR, or lr when the head is pretrained
    weight_decay: float = 5e-4
    val_size: int = 5000
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    augment: bool = True
    channels_last: bool | None = None  # default: on CUDA
    compile: bool = False
    resume: bool = False
    overwrite: bool = False
    download: bool = True
    log_every: int = 50  # steps between loss read-backs (each one is a device sync)

    @property
    def regime(self) -> str:
        return "freeze" if self.freeze else "full"


# ----------------------------------------------------------------------------- the model's parts

class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode: ``train()`` cannot switch it to batch statistics."""

    def train(self, mode: bool = True):
        return super().train(False)


def freeze_batchnorm(module: nn.Module) -> None:
    """Make every BatchNorm of ``module`` frozen: eval mode for good, gamma/beta not trainable.

    The class swap keeps parameters, buffers and state-dict keys exactly as they are.
    """
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.__class__ = FrozenBatchNorm2d
            m.requires_grad_(False)
            m.eval()


def prepare_model(cfg: TrainConfig, num_classes: int = 10, state: dict | None = None) -> ResidualNetwork:
    """Pretrained backbone + new seeded head (or a --freeze run's head), set up for the regime.
    The weights come from ``cfg.init_from`` / ``cfg.weights`` unless a ``state`` dict is given."""
    source = Path(cfg.init_from or cfg.weights)
    if state is None and source == DEFAULT_STATE_DICT and not source.is_file():
        raise UserError(f"no weights at {source}: convert the course pickle first "
                        f"(python convert/keras_pickle_to_pt.py) or pass --weights")
    state = state if state is not None else load_state_dict(source)
    model = ResidualNetwork(state["head.weight"].shape[0])
    model.load_state_dict(state, strict=True)
    if cfg.init_from is not None and model.num_classes != num_classes:
        raise UserError(f"--init-from {source}: a {model.num_classes}-class model; it takes a --freeze run's "
                        f"model.pt ({num_classes} classes); the converted network goes in --weights")
    if cfg.init_from is None:
        torch.manual_seed(cfg.seed)
        model.head = nn.Linear(FEATURES, num_classes)
    freeze_batchnorm(model.backbone)
    if cfg.freeze:
        model.backbone.requires_grad_(False)
    return model


def optimizer_for(model: ResidualNetwork, cfg: TrainConfig) -> torch.optim.Optimizer:
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.regime]
    if cfg.freeze:
        groups = [{"params": list(model.head.parameters()), "lr": lr}]
    else:
        head_lr = cfg.head_lr if cfg.head_lr is not None else (lr if cfg.init_from else HEAD_LR)
        convs = [p for p in model.backbone.parameters() if p.requires_grad]
        groups = [{"params": convs, "lr": lr}, {"params": list(model.head.parameters()), "lr": head_lr}]
    on_cuda = model.head.weight.is_cuda  # the fused kernel: one launch per step for all tensors
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=on_cuda or None)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- one step, one epoch

class Stepper:
    """Forward/backward/update for one batch, in the regime's cheapest correct way."""

    def __init__(self, model: ResidualNetwork, optimizer, scheduler, cfg: TrainConfig, device: torch.device,
                 world: int = 1):
        self.model, self.optimizer, self.scheduler, self.freeze = model, optimizer, scheduler, cfg.freeze
        self.autocast_dtype = amp_dtype(cfg.amp, device)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        backbone, trained = model.backbone, (model.head if cfg.freeze else model)
        if world > 1:  # gradients are averaged across ranks; frozen BN buffers need no broadcast
            from torch.nn.parallel import DistributedDataParallel as DDP

            # newer torch renamed broadcast_buffers to forward_sync_buffers
            no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else "broadcast_buffers")
            trained = DDP(trained, **{no_sync: False})
        if cfg.compile:
            backbone, trained = torch.compile(backbone), torch.compile(trained)
        self.backbone, self.trained = backbone, trained

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def logits(self, x):
        if self.freeze and x.dim() == 4:  # images (not cached features): no activations kept for the backbone
            with torch.no_grad():
                x = self.backbone(x)
        return self.trained(x)

    def step(self, x, y):
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
    def evaluate(self, batches: DeviceBatches):
        self.model.eval()
        totals = torch.zeros(3, device=batches.device, dtype=torch.float64)  # loss sum, correct, count
        for x, y in batches.epoch(0):
            with self.autocast():
                logits = self.model(x).float()
            totals[0] += F.cross_entropy(logits, y, reduction="sum")
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)  # a Python number: no host-to-device copy (that would sync)
        loss_sum, correct, n = all_reduce(totals).tolist()
        return loss_sum / n, correct / n


@torch.no_grad()
def backbone_features(model: ResidualNetwork, split: CifarSplit, batch_size: int, channels_last: bool,
                      autocast_dtype) -> CifarSplit:
    """The frozen backbone's features of a whole split: for --freeze without augmentation, where
    every epoch would compute exactly these again."""
    model.eval()
    device = model.head.weight.device
    parts = []
    for x, _ in DeviceBatches(split, batch_size, device, shuffle=False, augment=False,
                              channels_last=channels_last).epoch(0):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            parts.append(model.backbone(x).float())
    return CifarSplit(torch.cat(parts), split.labels, split.class_names)


def amp_dtype(amp: str, device: torch.device):
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device (use bf16 or off on CPU)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def train_one_epoch(stepper: Stepper, batches: DeviceBatches, epoch: int, progress, log_every: int):
    stepper.model.train()  # frozen BatchNorms stay in eval mode
    totals = torch.zeros(3, device=batches.device, dtype=torch.float64)  # loss sum, correct, count
    for i, (x, y) in enumerate(batches.epoch(epoch)):
        loss, logits = stepper.step(x, y)
        totals[0] += loss * len(y)
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += len(y)  # a Python number: no host-to-device copy (that would sync)
        if (i + 1) % log_every == 0:  # one read-back every few steps, not a device sync per step
            mean_loss = all_reduce(loss.clone()).item() / world_size()  # every rank sees a NaN anywhere
            check_finite(mean_loss, epoch)
            progress.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        progress.update(1)
    loss_sum, correct, n = all_reduce(totals).tolist()
    check_finite(loss_sum, epoch)
    return loss_sum / n, correct / n


def check_finite(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise UserError(f"the training loss became non-finite in epoch {epoch + 1}; lower --lr "
                        f"(the last good checkpoint is kept)")


class Progress:
    """A tqdm bar per epoch on a terminal; nothing per step otherwise (plain lines per epoch)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n):
        if self.bar:
            self.bar.update(n)

    def set_postfix(self, **kw):
        if self.bar:
            self.bar.set_postfix(**kw)

    def close(self):
        if self.bar:
            self.bar.close()


# ----------------------------------------------------------------------------- the whole run

@dataclass
class RunContext:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def print(self, *args):
        if self.main:
            print(*args, flush=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here (use --device cpu)")
    return device


def setup_distributed(cfg: TrainConfig) -> RunContext:
    """Single process, or one rank of a torchrun launch (WORLD_SIZE > 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return RunContext(pick_device(cfg.device))
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers set together (use torchrun)") from None
    use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return RunContext(device, rank, world)


def validate(cfg: TrainConfig, world: int) -> None:
    for name in ("epochs", "batch_size", "val_size", "log_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("lr", "head_lr"):
        v = getattr(cfg, name)
        if v is not None and not 0 < v <= 1:  # also refuses NaN; above 1 AdamW only diverges
            raise UserError(f"--{name.replace('_', '-')} must be a number in (0, 1], got {v}")
    if not 0 <= cfg.seed < 2**32:
        raise UserError(f"--seed must be between 0 and 2**32 - 1, got {cfg.seed}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UserError(f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise UserError(f"--amp must be auto, bf16, fp16 or off, got {cfg.amp!r}")
    if cfg.freeze and cfg.init_from:
        raise UserError("--init-from starts the full regime from a --freeze run; it cannot be used with --freeze")
    if cfg.out == "":
        raise UserError("--out must name a folder")
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch; it must divide by the {world} processes")


def step_memory_bytes(stepper: Stepper, x: torch.Tensor, y: torch.Tensor) -> int:
    """Memory of one training step.

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


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max allocated since the start of training. CPU: the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# Options that do not change the numbers a run produces, so a resumed run may set them anew.
RESUME_MAY_CHANGE = {"resume", "overwrite", "log_every", "download", "data_dir", "device", "out", "compile"}
EPOCH_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_sec"]


def run(cfg: TrainConfig) -> dict:
    """Train, validate each epoch, test at the end; write outputs into ``cfg.out``. Returns the metrics."""
    ctx = setup_distributed(cfg)
    try:
        metrics = train_and_test(cfg, ctx)
        if ctx.world > 1:
            dist.barrier()  # a rank that leaves while another still talks to it aborts (gloo)
        return metrics
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def load_checkpoint(path: Path, cfg: TrainConfig, stepper: Stepper) -> tuple[list, int]:
    """Restore model, optimizer, schedule and loss scale from ``path``; returns (history, next epoch)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        for key, value in asdict(cfg).items():  # everything that decides the result must be as before
            if key not in RESUME_MAY_CHANGE and ckpt["config"].get(key) != value:
                raise UserError(f"--resume: the run in {path.parent} used {key}={ckpt['config'].get(key)}, "
                                f"not {value}")
        stepper.model.load_state_dict(ckpt["model"])
        stepper.optimizer.load_state_dict(ckpt["optimizer"])
        stepper.scheduler.load_state_dict(ckpt["scheduler"])
        stepper.scaler.load_state_dict(ckpt["scaler"])
        return list(ckpt["history"]), int(ckpt["epoch"]) + 1
    except UserError:
        raise
    except Exception as e:  # truncated, not a checkpoint, or one of another model: all mean the same
        raise UserError(f"--resume: {path} is not a readable checkpoint of this trainer "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def train_and_test(cfg: TrainConfig, ctx: RunContext) -> dict:
    validate(cfg, ctx.world)
    out = Path(cfg.out or f"runs/{cfg.regime}")
    ckpt_path = out / "checkpoint.pt"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    earlier = [n for n in ("checkpoint.pt", "model.pt", "metrics.json") if (out / n).exists()]
    if earlier and not (cfg.resume or cfg.overwrite):
        raise UserError(f"{out} already holds a run ({earlier[0]}); pass --resume to continue it, --overwrite "
                        f"to start again, or another --out")
    if cfg.resume and not ckpt_path.exists():
        raise UserError(f"nothing to resume: {ckpt_path} does not exist")

    torch.manual_seed(cfg.seed)
    device = ctx.device
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    model = prepare_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    if not ctx.main:
        dist.barrier()  # rank 0 downloads the data set (if it must) before the others read it
    full_train = load_cifar(cfg.data_dir, CIFAR10, "train", cfg.download)
    test = load_cifar(cfg.data_dir, CIFAR10, "test", cfg.download)
    if ctx.main and ctx.world > 1:
        dist.barrier()
    train, val = split_train_val(full_train, cfg.val_size, cfg.seed)
    per_rank = cfg.batch_size // ctx.world
    shard = (ctx.rank, ctx.world)
    eval_kw = dict(shuffle=False, augment=False, channels_last=channels_last, shard=shard)
    val_batches = DeviceBatches(val, per_rank, device, **eval_kw)
    test_batches = DeviceBatches(test, per_rank, device, **eval_kw)

    if cfg.freeze and not cfg.augment:
        train = backbone_features(model, train, per_rank, channels_last, amp_dtype(cfg.amp, device))
    train_batches = DeviceBatches(train, per_rank, device, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                                  channels_last=channels_last, shard=shard)
    optimizer = optimizer_for(model, cfg)
    total_steps = cfg.epochs * len(train_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # cosine decay over the whole run, per step
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    stepper = Stepper(model, optimizer, scheduler, cfg, device, ctx.world)

    history, start_epoch = [], 0
    if cfg.resume:
        history, start_epoch = load_checkpoint(ckpt_path, cfg, stepper)
        ctx.print(f"resuming {out} after epoch {start_epoch}")

    x0, y0 = next(train_batches.epoch(0))
    step_memory = step_memory_bytes(stepper, x0, y0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ctx.print(f"{cfg.regime}: {len(train.labels)} train / {len(val.labels)} val / {len(test.labels)} test images, "
              f"device {device}{f' x{ctx.world}' if ctx.world > 1 else ''}, batch {cfg.batch_size}, "
              f"amp {stepper.autocast_dtype or 'off'}, trainable parameters {trainable_parameters(model):,}")

    for epoch in range(start_epoch, cfg.epochs):
        lr = optimizer.param_groups[0]["lr"]
        progress = Progress(len(train_batches), f"epoch {epoch + 1}/{cfg.epochs}", ctx.main)
        t0 = time.perf_counter()
        try:
            train_loss, train_acc = train_one_epoch(stepper, train_batches, epoch, progress, cfg.log_every)
        finally:
            progress.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        val_loss, val_acc = stepper.evaluate(val_batches)
        row = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                   lr=lr, seconds=seconds, images_per_sec=train_batches.per_rank() * ctx.world / seconds)
        history.append(row)
        ctx.print(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                  f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {lr:.2e}  {seconds:.1f}s "
                  f"{row['images_per_sec']:.0f} img/s")
        if ctx.main:
            ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": stepper.scaler.state_dict(),
                    "epoch": epoch, "history": history, "config": asdict(cfg)}
            atomic_write(ckpt_path, lambda tmp: torch.save(ckpt, tmp))

    test_loss, test_acc = stepper.evaluate(test_batches)
    metrics = {
        "regime": cfg.regime, "test_accuracy": test_acc, "test_loss": test_loss, "epochs": history,
        "trainable_parameters": trainable_parameters(model), "peak_memory_bytes": peak_memory_bytes(device),
        "step_memory_bytes": step_memory, "device": str(device), "world_size": ctx.world,
        "amp": str(stepper.autocast_dtype or "off").replace("torch.", ""), "channels_last": channels_last,
        "train_images": len(train.labels), "val_images": len(val.labels), "test_images": len(test.labels),
        "config": asdict(cfg),
    }
    ctx.print(f"test loss {test_loss:.4f}  test accuracy {test_acc:.4f}  "
              f"(peak memory {metrics['peak_memory_bytes'] / 2**20:.0f} MiB, step memory {step_memory / 2**20:.0f} MiB)")
    if ctx.main:
        write_outputs(out, model, metrics, cfg)
        ctx.print(f"wrote {out}/model.pt, metrics.json, metrics.csv, curves.png")
    return metrics


def write_outputs(out: Path, model: ResidualNetwork, metrics: dict, cfg: TrainConfig) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.pt", lambda tmp: torch.save(state, tmp))
    source_names, names = names_sidecar(cfg.init_from or cfg.weights), names_sidecar(out / "model.pt")
    if source_names.is_file():  # keep the Keras names for the way back (convert/pt_to_keras_pickle.py)
        atomic_write(names, lambda tmp: shutil.copyfile(source_names, tmp))
    else:  # an earlier run's names would be taken for this model's
        names.unlink(missing_ok=True)
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, EPOCH_FIELDS)
    writer.writeheader()
    writer.writerows(metrics["epochs"])
    atomic_write(out / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    atomic_write(out / "curves.png", lambda tmp: plot_curves(metrics, tmp))


def plot_curves(metrics: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = metrics["epochs"]
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, what, label in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{what}"] for r in rows], "o-", label="train")
        ax.plot(epochs, [r[f"val_{what}"] for r in rows], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{label.capitalize()} per epoch ({metrics['regime']} regime)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
