"""Fine-tuning the converted network on CIFAR-10: one explicit loop, laid out as torchvision's
``references/classification/train.py``: ``train_one_epoch``, ``evaluate``, ``main``.

The regimes (what trains) are in ``regimes.py``, the options in ``config.py``; under
``torchrun`` each rank takes its shard of every global batch, metrics are summed across ranks
and rank 0 writes (``distributed.py``); checkpoints in ``checkpoint.py``, outputs in
``outputs.py``.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm  # widget bars in a notebook, text bars in a terminal

from .checkpoint import (checkpoint_model, hold_run_folder, load_checkpoint, read_checkpoint, resume_command,
                         save_checkpoint)
from .config import TORCH_COMPILE_MODES, TrainConfig
from ..data.cifar import CIFAR10, CifarSplit, DeviceBatches, load_cifar, split_train_val
from .distributed import RunContext, all_reduce, distributed, rank_zero_first, world_size
from ..errors import UserError
from .evaluate import metrics as test_metrics
from .evaluate import predict
from .frozen_backbone import FrozenBackbone, frozen_backbone
from ..formats.files import keras_names_text
from .memory import peak_memory_bytes, step_memory_bytes
from ..model import ResidualNetwork
from .outputs import write_run
from .performance import amp_dtype, autocast, describe, keep_freed_memory
from .regimes import optimizer_for, prepare_model, trainable_parameters


class Stepper:
    """Forward/backward/update for one batch, in the regime's cheapest correct way."""

    def __init__(self, model: ResidualNetwork, optimizer, scheduler, cfg: TrainConfig, device: torch.device,
                 world: int = 1, backbone: FrozenBackbone | None = None):
        self.model, self.optimizer, self.scheduler, self.freeze = model, optimizer, scheduler, cfg.freeze
        self.autocast_dtype = amp_dtype(cfg.amp, device)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        # --freeze: the backbone is a constant function (frozen_backbone.py), only the head trains
        self.backbone = backbone or FrozenBackbone(model.backbone)
        trained = model.head if cfg.freeze else model
        if world > 1:  # gradients are averaged across ranks; frozen BN buffers need no broadcast
            from torch.nn.parallel import DistributedDataParallel as DDP

            # newer torch renamed broadcast_buffers to forward_sync_buffers
            no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else "broadcast_buffers")
            trained = DDP(trained, **{no_sync: False})
        if cfg.compile in TORCH_COMPILE_MODES:
            trained = torch.compile(trained, mode=None if cfg.compile == "default" else cfg.compile)
        # CUDA-graph modes reuse their output buffers: each step must say the last one's are done
        self.cudagraphs = cfg.compile in ("reduce-overhead", "max-autotune")
        self.trained = trained

    def autocast(self):
        return autocast(self.device_type, self.autocast_dtype)

    def logits(self, x):
        if self.freeze and x.dim() == 4:  # images (not cached features): no activations kept for the backbone
            x = self.backbone(x)
        return self.trained(x)

    def eval_logits(self, x):
        """Validation's logits (no autograd, eval mode): the frozen backbone as in training."""
        return self.model.head(self.backbone(x)) if self.freeze else self.model(x)

    def step(self, x, y):
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
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
def backbone_features(backbone: FrozenBackbone, split: CifarSplit, batch_size: int, device: torch.device,
                      channels_last: bool, autocast_dtype) -> CifarSplit:
    """The frozen backbone's features of a whole split: for --freeze without augmentation, where
    every epoch would compute exactly these again."""
    parts = []
    for x, _ in DeviceBatches(split, batch_size, device, shuffle=False, augment=False,
                              channels_last=channels_last).epoch(0):
        with autocast(device.type, autocast_dtype):
            parts.append(backbone(x).float())
    return CifarSplit(torch.cat(parts), split.labels, split.class_names)


def train_one_epoch(stepper: Stepper, batches: DeviceBatches, epoch: int, *, log_every: int, desc: str = "",
                    progress: bool = True) -> tuple[float, float]:
    """One pass over ``batches``; returns (mean loss, accuracy) over every rank's images.
    ``progress``: a tqdm bar on a terminal (tqdm's ``disable=None``), nothing otherwise."""
    stepper.model.train()  # frozen BatchNorms stay in eval mode
    totals = torch.zeros(3, device=batches.device, dtype=torch.float64)  # loss sum, correct, count
    bar = tqdm(batches.epoch(epoch), total=len(batches), desc=desc, leave=False, dynamic_ncols=True,
               disable=None if progress else True)
    with bar:
        for i, (x, y) in enumerate(bar):
            loss, logits = stepper.step(x, y)
            totals[0] += loss * len(y)
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)  # a Python number: no host-to-device copy (that would sync)
            if (i + 1) % log_every == 0:  # one read-back every few steps, not a device sync per step
                mean_loss = all_reduce(loss.clone()).item() / world_size()  # every rank sees a NaN anywhere
                check_finite(mean_loss, epoch)
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
    loss_sum, correct, n = all_reduce(totals).tolist()
    check_finite(loss_sum, epoch)
    return loss_sum / n, correct / n


def check_finite(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise UserError(f"the training loss became non-finite in epoch {epoch + 1}; lower --lr "
                        f"(the last good checkpoint is kept)")


@torch.no_grad()
def evaluate(stepper: Stepper, batches: DeviceBatches) -> tuple[float, float]:
    """(mean loss, accuracy) on ``batches`` (the validation split) in the training precision,
    over every rank's shard, counted on the device without a sync per batch."""
    stepper.model.eval()
    sums = torch.zeros(3, device=batches.device, dtype=torch.float64)  # loss sum, correct, count
    for x, y in batches.epoch(0):
        with stepper.autocast():
            logits = stepper.eval_logits(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)
    loss_sum, correct, n = all_reduce(sums).tolist()
    return loss_sum / n, correct / n


def learning_rates(optimizer, model: ResidualNetwork) -> dict:
    """The peak rates of the backbone (None: frozen) and of the head."""
    head = {id(p) for p in model.head.parameters()}
    rates = {"backbone": None, "head": None}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        lr = group.get("initial_lr", group["lr"])
        rates.update({**({"head": lr} if ids & head else {}), **({"backbone": lr} if ids - head else {})})
    return rates


def main(cfg: TrainConfig, pretrained: ResidualNetwork | None = None, quiet: bool = False) -> dict:
    """Train, validate each epoch, test at the end; write outputs into ``cfg.out_dir``. Returns the
    metrics. ``pretrained``: start from this network (changed in place) instead of ``cfg.weights``;
    its Keras names, for the way back, in its ``keras_names`` attribute (as ``api.load`` sets it).
    ``quiet``: print the run's first line only (the Python API's runs)."""
    with distributed(cfg.device) as ctx:
        ctx.quiet = quiet
        return train_and_test(cfg, ctx, pretrained)


def load_splits(cfg: TrainConfig, ctx: RunContext) -> tuple[CifarSplit, CifarSplit | None, CifarSplit]:
    """(train, validation (None with --val-size 0), test); rank 0 downloads the data set (if it
    must) before the others read it."""
    with rank_zero_first(ctx):
        full_train = load_cifar(cfg.data_dir, CIFAR10, "train", cfg.download)
        test = load_cifar(cfg.data_dir, CIFAR10, "test", cfg.download)
    n_val = cfg.val_count(len(full_train.labels))
    train, val = split_train_val(full_train, n_val, cfg.seed) if n_val else (full_train, None)
    if len(train.labels) < ctx.world:  # every rank needs at least one image per epoch
        raise UserError(f"--val-size {cfg.val_size} leaves {len(train.labels)} training images for "
                        f"{ctx.world} processes; lower it")
    return train, val, test


def train_and_test(cfg: TrainConfig, ctx: RunContext, pretrained: ResidualNetwork | None = None) -> dict:
    if cfg.batch_size % ctx.world:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch; it must divide by the "
                        f"{ctx.world} processes")
    with hold_run_folder(cfg, writer=ctx.main) as out:  # held (locked) until the run ends
        return train_in(out, cfg, ctx, pretrained)


def train_in(out, cfg: TrainConfig, ctx: RunContext, pretrained: ResidualNetwork | None) -> dict:
    torch.manual_seed(cfg.seed)
    device = ctx.device
    if device.type == "cpu":
        keep_freed_memory()
    channels_last = cfg.channels_last if cfg.channels_last is not None else True  # fastest on CPU and CUDA
    # A resumed run takes every weight from its checkpoint: the --weights file may be gone.
    if cfg.resume:
        ckpt = read_checkpoint(out / "checkpoint.pt")  # read once: the network, then the rest of the state
        pretrained = checkpoint_model(ckpt, out / "checkpoint.pt")
    keras_names = (None if cfg.resume else getattr(pretrained, "keras_names", None) if pretrained is not None
                   else keras_names_text(cfg.init_from or cfg.weights))
    model = prepare_model(cfg, pretrained=pretrained).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    train, val, test = load_splits(cfg, ctx)
    per_rank = cfg.batch_size // ctx.world
    n_val = len(val.labels) if val else 0
    shard = (ctx.rank, ctx.world)
    eval_kw = dict(shuffle=False, augment=False, channels_last=channels_last, shard=shard)
    val_batches = DeviceBatches(val, per_rank, device, **eval_kw) if val else None
    dtype = amp_dtype(cfg.amp, device)
    backbone = None
    if cfg.freeze:  # compiled where that pays over the images the whole run puts through it on a rank
        # (the whole run, not what a resume has left: a resumed run goes on with the backbone it began
        # with); without augmentation, every rank computes the whole split's features once
        train_images = cfg.epochs * len(train.labels) // ctx.world if cfg.augment else len(train.labels)
        images = train_images + cfg.epochs * n_val // ctx.world
        backbone = frozen_backbone(model.backbone, cfg.compile, device, dtype, per_rank, images, channels_last)
    cache_seconds = None  # computing the frozen backbone's features once is counted in the first epoch
    if cfg.freeze and not cfg.augment:
        t0 = time.perf_counter()
        train = backbone_features(backbone, train, per_rank, device, channels_last, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cache_seconds = time.perf_counter() - t0
    train_batches = DeviceBatches(train, per_rank, device, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                                  channels_last=channels_last, shard=shard)
    optimizer = optimizer_for(model, cfg)
    total_steps = cfg.epochs * len(train_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # cosine decay over the whole run, per step
        optimizer, lambda s: 1.0 if cfg.recipe == "keras" else  # Keras: a constant rate
        0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    stepper = Stepper(model, optimizer, scheduler, cfg, device, ctx.world, backbone)

    history, start_epoch = [], 0
    if cfg.resume:
        history, start_epoch, keras_names = load_checkpoint(ckpt, out / "checkpoint.pt", stepper, cfg)
        ctx.print(f"resuming {out} after epoch {start_epoch}")

    ctx.print(f"{cfg.regime}: {describe(device, stepper.autocast_dtype, channels_last, cfg.compile)}"
              f"{f' x{ctx.world}' if ctx.world > 1 else ''}; {len(train.labels)} train / {n_val} val / "
              f"{len(test.labels)} test images, batch {cfg.batch_size}, "
              f"trainable parameters {trainable_parameters(model):,}"
              f"{f'; {backbone.note}' if backbone else ''}", first_line=True)
    step_memory = None
    if cfg.step_memory:  # one extra, undone step: only when asked (bench/throughput.py measures it too)
        step_memory = step_memory_bytes(stepper, *next(train_batches.epoch(0)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    try:
        history, scores = epochs_and_test(cfg, ctx, stepper, out=out, history=history, start_epoch=start_epoch,
                                          cache_seconds=cache_seconds, train_batches=train_batches,
                                          val_batches=val_batches, test=test, keras_names=keras_names)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (errors.Terminated): the same message
        if len(history) > start_epoch or cfg.resume:  # this run's checkpoint is there
            raise type(e)(f"{out / 'checkpoint.pt'} keeps the run up to its last finished epoch; continue "
                          f"it with: {resume_command(out)}") from None
        raise type(e)("no epoch had finished, nothing was saved") from None
    peak = peak_memory_bytes(device)
    amp_name = str(stepper.autocast_dtype or "off").replace("torch.", "")
    metrics = {
        "regime": cfg.regime, **scores, "epochs": history,
        "trainable_parameters": trainable_parameters(model), "peak_memory_bytes": peak,
        "step_memory_bytes": step_memory, "device": str(device), "world_size": ctx.world,
        "amp": amp_name, "channels_last": channels_last,
        "precision": {"train": amp_name, "validation": amp_name, "test": "float32"},  # test: as train/evaluate.py
        "train_images": len(train.labels), "val_images": n_val, "test_images": len(test.labels),
        "stand_in_data": test.stand_in,  # synthetic.write_cifar's stand-in, not CIFAR-10: the report says so
        "learning_rates": learning_rates(optimizer, model), "feature_cache_seconds": cache_seconds,
        "startup_seconds": backbone.startup_seconds if backbone else 0.0,  # compiling (frozen_backbone.py)
        "config": asdict(cfg),
    }
    ctx.print(f"test loss {scores['test_loss']:.4f}  test accuracy {scores['test_accuracy']:.4f}  "
              f"top-5 {scores['test_top5']:.4f}  "
              f"(peak memory {'unknown' if peak is None else f'{peak / 2**20:.0f} MiB'}, "
              f"step memory {'not measured' if step_memory is None else f'{step_memory / 2**20:.0f} MiB'})")
    if ctx.main:
        write_run(out, model, metrics, keras_names)
        ctx.print(f"wrote {out}/model.pt, metrics.json, metrics.csv, curves.png")
    return metrics


def epochs_and_test(cfg: TrainConfig, ctx: RunContext, stepper: Stepper, *, out, history: list, start_epoch: int,
                    cache_seconds: float | None, train_batches: DeviceBatches, val_batches: DeviceBatches | None,
                    test: CifarSplit, keras_names: str | None) -> tuple[list, dict]:
    """The epochs from ``start_epoch`` on (a checkpoint after each), then the test set's scores:
    fp32, the very pass of train/evaluate.py, so both give one figure for one model."""
    device, optimizer = ctx.device, stepper.optimizer
    for epoch in range(start_epoch, cfg.epochs):
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        train_loss, train_acc = train_one_epoch(stepper, train_batches, epoch, log_every=cfg.log_every,
                                                desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=ctx.main)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0 + (cache_seconds if epoch == start_epoch and cache_seconds else 0)
        val_loss, val_acc = evaluate(stepper, val_batches) if val_batches else (None, None)
        row = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                   lr=lr, seconds=seconds, images_per_sec=train_batches.per_rank() * ctx.world / seconds)
        history.append(row)
        ctx.print(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                  + (f"val loss {val_loss:.4f} acc {val_acc:.4f}  " if val_batches else "")
                  + f"lr {lr:.2e}  {seconds:.1f}s {row['images_per_sec']:.0f} img/s"
                  + (f" (with computing the backbone features once, {cache_seconds:.1f}s)"
                     if epoch == start_epoch and cache_seconds else " (on cached features)" if cache_seconds else ""))
        if ctx.main:
            save_checkpoint(out / "checkpoint.pt", stepper, epoch=epoch, history=history, cfg=cfg,
                            keras_names=keras_names,
                            replaces_earlier_run=cfg.overwrite and not cfg.resume and epoch == start_epoch)
    return history, test_scores(stepper.model, test, cfg.batch_size, device)


def test_scores(model: ResidualNetwork, test: CifarSplit, batch_size: int, device) -> dict:
    """The test split's scores in fp32 (``evaluate.predict``), under the names of metrics.json."""
    scores, confusion = test_metrics(predict(model, test, batch_size, device), test.labels, test.class_names)
    return {"test_accuracy": scores["top1"], "test_top5": scores["top5"], "test_loss": scores["loss"],
            "class_names": test.class_names, "test_per_class": scores["per_class"],
            "test_per_class_images": scores["per_class_images"], "test_confusion": confusion.tolist()}
