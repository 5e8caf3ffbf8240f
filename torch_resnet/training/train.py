"""Fine-tuning the converted network on CIFAR-10: one explicit loop, laid out as torchvision's
``references/classification/train.py``: ``train_one_epoch``, ``evaluate``, ``main``.

The regimes (what trains) are in ``regimes.py``, the options in ``config.py``; under
``torchrun`` each rank takes its shard of every global batch, metrics are summed across ranks
and rank 0 writes (``distributed.py``); checkpoints in ``checkpoint.py``, outputs in
``outputs.py``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm  # widget bars in a notebook, text bars in a terminal
else:  # tqdm.auto would warn "IProgress not found" in a notebook; there the epoch lines show progress
    from tqdm import tqdm

from .checkpoint import (checkpoint_model, hold_run_folder, load_checkpoint, read_checkpoint, resume_command,
                         save_checkpoint)
from .config import TrainConfig
from ..data.cifar import CifarSplit, DeviceBatches, split_train_val
from ..data.source import DataSource, source_for
from .distributed import RunContext, all_reduce, distributed, rank_zero_first, world_size
from ..errors import UserError
from .evaluate import metrics as test_metrics
from .evaluate import predict
from .frozen_backbone import FrozenBackbone, frozen_backbone
from .stepper import Stepper, backbone_features
from ..formats.keras_names import KerasNames
from .memory import peak_memory_bytes, step_memory_bytes
from ..model import ResidualNetwork
from .outputs import write_run
from .performance import amp_dtype, describe, keep_freed_memory
from .regimes import (check_weights_exist, learning_rates, optimizer_for, prepare_model, schedule,
                      trainable_parameters)


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
        raise UserError(f"the training loss became non-finite in epoch {epoch + 1}; lower `lr` "
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


def main(cfg: TrainConfig, pretrained: nn.Module | None = None, quiet: bool = False,
         data: DataSource | None = None) -> dict:
    """Train, validate each epoch, test at the end; write outputs into ``cfg.out_dir``. Returns the
    metrics. ``pretrained``: start from this network (changed in place) instead of ``cfg.weights``.
    ``quiet``: print the run's first line only (the Python API's runs). ``data``: where the images
    come from (``data/source.py``); by default CIFAR-10 in ``cfg.data_dir``."""
    with distributed(cfg.device) as ctx:
        ctx.quiet = quiet
        data = data or source_for(cfg.data_dir, cfg.test_dir, cfg.val_dir, cfg.image_size, cfg.skip_bad_images)
        return train_and_test(cfg, ctx, pretrained, data)


def load_splits(cfg: TrainConfig, ctx: RunContext, data: DataSource
                ) -> tuple[CifarSplit, CifarSplit | None, CifarSplit]:
    """(train, validation (None with --val-size 0), test); rank 0 downloads the data set (if it
    must) before the others read it."""
    with rank_zero_first(ctx):
        full_train = data.split("train", cfg.download)
        test = data.split("test", cfg.download)
        given_val = data.split("val", cfg.download) if getattr(data, "has_val", False) else None
    n_val = 0 if given_val is not None else cfg.val_count(len(full_train.labels))
    train, val = split_train_val(full_train, n_val, cfg.seed) if n_val else (full_train, given_val)
    if len(train.labels) < ctx.world:  # every rank needs at least one image per epoch
        raise UserError(f"`val_size={cfg.val_size}` leaves {len(train.labels)} training images for "
                        f"{ctx.world} processes; lower it")
    return train, val, test


def train_and_test(cfg: TrainConfig, ctx: RunContext, pretrained: nn.Module | None, data: DataSource) -> dict:
    if pretrained is None:
        check_weights_exist(cfg)
    if cfg.batch_size % ctx.world:
        raise UserError(f"`batch_size={cfg.batch_size}` is the global batch; it must divide by the "
                        f"{ctx.world} processes")
    with hold_run_folder(cfg, writer=ctx.main) as out:  # held (locked) until the run ends
        return train_in(out, cfg, ctx, pretrained, data)


@dataclass
class Session:
    """What a run's epochs work with (``setup`` makes it): the folder, the options, the ranks, the
    step, the batches, and where a resumed run goes on from."""
    out: Path
    cfg: TrainConfig
    ctx: RunContext
    stepper: Stepper
    train_batches: DeviceBatches
    val_batches: DeviceBatches | None
    test: CifarSplit
    channels_last: bool
    backbone: FrozenBackbone | None  # --freeze: the backbone as one constant function
    cache_seconds: float | None  # --freeze without augmentation: computing the features once
    history: list = field(default_factory=list)
    start_epoch: int = 0
    data: str = ""  # the data source's name
    skipped: list = field(default_factory=list)  # unreadable files an image folder skipped (skip_bad_images)

    @property
    def images(self) -> tuple[int, int, int]:
        """(train, validation, test) images of the run."""
        val = self.val_batches
        return len(self.train_batches.labels), len(val.labels) if val else 0, len(self.test.labels)


def train_in(out, cfg: TrainConfig, ctx: RunContext, pretrained: nn.Module | None, data: DataSource) -> dict:
    """The run, top to bottom: set up, the epochs (a checkpoint after each), the test, the outputs."""
    s = setup(out, cfg, ctx, pretrained, data)
    announce(s)
    step_memory = None
    if cfg.step_memory:  # one extra, undone step: only when asked (bench/throughput.py measures it too)
        step_memory = step_memory_bytes(s.stepper, *next(s.train_batches.epoch(0)))
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    with says_how_to_go_on(s):
        for epoch in range(s.start_epoch, cfg.epochs):
            train_and_validate(s, epoch)
        scores = test_scores(s.stepper.model, s.test, cfg.batch_size, ctx.device)
    metrics = run_metrics(s, scores, step_memory)
    if ctx.main:
        write_run(out, s.stepper.model, metrics)
        ctx.print(f"wrote {out}/model.pt, metrics.json, metrics.csv, curves.png")
    return metrics


def setup(out, cfg: TrainConfig, ctx: RunContext, pretrained: nn.Module | None, data: DataSource) -> Session:
    """The model for the regime, the data as batches on the device, the step; a resumed run's state."""
    torch.manual_seed(cfg.seed)
    device = ctx.device
    if device.type == "cpu":
        keep_freed_memory()
    channels_last = cfg.channels_last if cfg.channels_last is not None else True  # fastest on CPU and CUDA
    # A resumed run takes every weight from its checkpoint: the --weights file may be gone.
    ckpt = read_checkpoint(out / "checkpoint.pt") if cfg.resume else None  # read once: network, then state
    if ckpt is not None:
        pretrained = checkpoint_model(ckpt, out / "checkpoint.pt")
    model = prepare_model(cfg, data.num_classes, pretrained).to(device)  # its Keras names come along
    if getattr(data, "image_size", 0) is None:  # an image folder: the network's own input size
        data.image_size = model.image_size
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    train, val, test = load_splits(cfg, ctx, data)
    per_rank = cfg.batch_size // ctx.world
    eval_kw = dict(shuffle=False, augment=False, channels_last=channels_last, shard=(ctx.rank, ctx.world),
                   mode=model.preprocess)
    val_batches = DeviceBatches(val, per_rank, device, **eval_kw) if val else None
    backbone, cache_seconds = None, None
    if cfg.freeze:
        backbone = frozen_backbone_for(model, cfg, ctx, len(train.labels), len(val.labels) if val else 0,
                                       channels_last)
    if cfg.freeze and not cfg.augment:  # computing the features once is counted in the first epoch
        t0 = time.perf_counter()
        train = backbone_features(backbone, train, per_rank, device, channels_last, amp_dtype(cfg.amp, device),
                                  model.preprocess)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cache_seconds = time.perf_counter() - t0
    train_batches = DeviceBatches(train, per_rank, device, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                                  channels_last=channels_last, shard=(ctx.rank, ctx.world), mode=model.preprocess)
    optimizer = optimizer_for(model, cfg)
    stepper = Stepper(model, optimizer, schedule(optimizer, cfg, cfg.epochs * len(train_batches)), cfg, device,
                      ctx.world, backbone)
    s = Session(out, cfg, ctx, stepper, train_batches, val_batches, test, channels_last, backbone, cache_seconds,
                data=data.name, skipped=list(getattr(data, "skipped", [])))
    if ckpt is not None:
        s.history, s.start_epoch, names = load_checkpoint(ckpt, out / "checkpoint.pt", stepper, cfg)
        model.keras_names = None if names is None else KerasNames(names, f"{out / 'checkpoint.pt'} (its Keras names)")
        ctx.print(f"resuming {out} after epoch {s.start_epoch}")
    return s


def frozen_backbone_for(model: nn.Module, cfg: TrainConfig, ctx: RunContext, n_train: int, n_val: int,
                        channels_last: bool) -> FrozenBackbone:
    """--freeze's backbone, compiled where that pays over the images the whole run puts through it on
    a rank (the whole run, not what a resume has left: a resumed run goes on with the backbone it began
    with); without augmentation, every rank computes the whole split's features once."""
    train_images = cfg.epochs * n_train // ctx.world if cfg.augment else n_train
    images = train_images + cfg.epochs * n_val // ctx.world
    return frozen_backbone(model.backbone, cfg.compile, ctx.device, amp_dtype(cfg.amp, ctx.device),
                           cfg.batch_size // ctx.world, images, channels_last, isinstance(model, ResidualNetwork))


def announce(s: Session) -> None:
    """The run's first line: where and how it trains, on how much data, what trains."""
    cfg, ctx = s.cfg, s.ctx
    n_train, n_val, n_test = s.images
    ctx.print(f"{cfg.regime}: {describe(ctx.device, s.stepper.autocast_dtype, s.channels_last, cfg.compile)}"
              f"{f' x{ctx.world}' if ctx.world > 1 else ''}; {n_train} train / {n_val} val / "
              f"{n_test} test images, batch {cfg.batch_size}, "
              f"trainable parameters {trainable_parameters(s.stepper.model):,}"
              f"{f'; {s.backbone.note}' if s.backbone else ''}"
              f"{f'; {len(s.skipped)} unreadable files skipped' if s.skipped else ''}", first_line=True)


@contextlib.contextmanager
def says_how_to_go_on(s: Session):
    """Ctrl-C, or SIGTERM (errors.Terminated): the same message, saying what was kept."""
    try:
        yield
    except KeyboardInterrupt as e:
        if len(s.history) > s.start_epoch or s.cfg.resume:  # this run's checkpoint is there
            raise type(e)(f"{s.out / 'checkpoint.pt'} keeps the run up to its last finished epoch; continue "
                          f"it with: {resume_command(s.out)}") from None
        raise type(e)("no epoch had finished, nothing was saved") from None


def train_and_validate(s: Session, epoch: int) -> None:
    """One epoch: train, validate, one line, a checkpoint."""
    cfg, ctx, optimizer = s.cfg, s.ctx, s.stepper.optimizer
    lr = optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    train_loss, train_acc = train_one_epoch(s.stepper, s.train_batches, epoch, log_every=cfg.log_every,
                                            desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=ctx.main)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    first = epoch == s.start_epoch
    seconds = time.perf_counter() - t0 + (s.cache_seconds if first and s.cache_seconds else 0)
    val_loss, val_acc = evaluate(s.stepper, s.val_batches) if s.val_batches else (None, None)
    row = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
               lr=lr, seconds=seconds, images_per_sec=s.train_batches.per_rank() * ctx.world / seconds)
    s.history.append(row)
    ctx.print(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
              + (f"val loss {val_loss:.4f} acc {val_acc:.4f}  " if s.val_batches else "")
              + f"lr {lr:.2e}  {seconds:.1f}s {row['images_per_sec']:.0f} img/s"
              + (f" (with computing the backbone features once, {s.cache_seconds:.1f}s)"
                 if first and s.cache_seconds else " (on cached features)" if s.cache_seconds else ""),
              progress=True)
    if ctx.main:
        save_checkpoint(s.out / "checkpoint.pt", s.stepper, epoch=epoch, history=s.history, cfg=cfg,
                        replaces_earlier_run=cfg.overwrite and not cfg.resume and first)


def run_metrics(s: Session, scores: dict, step_memory: int | None) -> dict:
    """What metrics.json holds (the schema in docs/training.md), and the run's last line."""
    cfg, ctx, model = s.cfg, s.ctx, s.stepper.model
    peak = peak_memory_bytes(ctx.device)
    amp_name = str(s.stepper.autocast_dtype or "off").replace("torch.", "")
    n_train, n_val, n_test = s.images
    metrics = {
        "regime": cfg.regime, **scores, "epochs": s.history,
        "trainable_parameters": trainable_parameters(model), "peak_memory_bytes": peak,
        "step_memory_bytes": step_memory, "device": str(ctx.device), "world_size": ctx.world,
        "amp": amp_name, "channels_last": s.channels_last,
        "precision": {"train": amp_name, "validation": amp_name, "test": "float32"},  # test: as train/evaluate.py
        "train_images": n_train, "val_images": n_val, "test_images": n_test,
        "stand_in_data": s.test.stand_in,  # synthetic.write_cifar's stand-in, not CIFAR-10: the report says so
        "learning_rates": learning_rates(s.stepper.optimizer, model), "feature_cache_seconds": s.cache_seconds,
        "startup_seconds": s.backbone.startup_seconds if s.backbone else 0.0,  # compiling (frozen_backbone.py)
        "data": s.data, "skipped_images": s.skipped, "network": getattr(model, "architecture", None),
        "config": asdict(cfg),
    }
    ctx.print(f"test loss {scores['test_loss']:.4f}  test accuracy {scores['test_accuracy']:.4f}  "
              f"top-5 {scores['test_top5']:.4f}  "
              f"(peak memory {'unknown' if peak is None else f'{peak / 2**20:.0f} MiB'}, "
              f"step memory {'not measured' if step_memory is None else f'{step_memory / 2**20:.0f} MiB'})")
    return metrics


def test_scores(model: nn.Module, test: CifarSplit, batch_size: int, device) -> dict:
    """The test split's scores in fp32 (``evaluate.predict``), under the names of metrics.json."""
    scores, confusion = test_metrics(predict(model, test, batch_size, device), test.labels, test.class_names)
    return {"test_accuracy": scores["top1"], "test_top5": scores["top5"], "test_loss": scores["loss"],
            "class_names": test.class_names, "test_per_class": scores["per_class"],
            "test_per_class_images": scores["per_class_images"], "test_confusion": confusion.tolist()}
