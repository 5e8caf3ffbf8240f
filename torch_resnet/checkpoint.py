"""A run's checkpoint after every epoch: model, optimizer, schedule, loss scale, history, options."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import torch

from .config import DEFAULT_LR, TrainConfig, option
from .errors import UserError
from .files import atomic_write

# Options that do not change the numbers a run produces, so a resumed run may set them anew.
RESUME_MAY_CHANGE = {"resume", "overwrite", "log_every", "download", "data_dir", "device", "out", "compile",
                     "step_memory"}


def save_checkpoint(path: Path, stepper, *, epoch: int, history: list, cfg: TrainConfig) -> None:
    """Everything ``load_checkpoint`` needs to continue ``stepper`` (a ``train.Stepper``) after ``epoch``."""
    ckpt = {"model": stepper.model.state_dict(), "optimizer": stepper.optimizer.state_dict(),
            "scheduler": stepper.scheduler.state_dict(), "scaler": stepper.scaler.state_dict(),
            "epoch": epoch, "history": history, "config": asdict(cfg)}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def read_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
            raise ValueError("no saved options")
        return ckpt
    except Exception as e:  # truncated, not a checkpoint, or one of another model: all mean the same
        raise UserError(f"--resume: {path} is not a readable checkpoint of this trainer "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


SAID = {("augment", True): "augmentation (no --no-augment)", ("augment", False): "--no-augment",
        ("channels_last", None): "the default memory layout", ("channels_last", False): "--no-channels-last"}


def as_option(field: str, value, regime: str) -> str:
    """An option's value as it is written on the command line (or left out)."""
    if (field, value) in SAID:
        return SAID[field, value]
    if field == "lr" and value is None:
        return f"the default --lr ({DEFAULT_LR[regime]:g})"
    if value is None or value is False:
        return f"no {option(field)}" if field != "head_lr" else "the default --head-lr"
    if value is True:
        return option(field)
    return f"{option(field)} {value:g}" if isinstance(value, float) else f"{option(field)} {value}"


def refuse_changes(saved: dict, cfg: TrainConfig, folder: Path) -> None:
    """Everything that decides the result must be as it was when the run started."""
    for key, value in asdict(cfg).items():
        if key not in RESUME_MAY_CHANGE and saved.get(key) != value:
            was = as_option(key, saved.get(key), "freeze" if saved.get("freeze") else "full")
            raise UserError(f"--resume: {folder} was started with {was}, not {as_option(key, value, cfg.regime)}; "
                            f"leave {option(key)} out to continue it as it was, or start a new run with another --out")


def resume_config(given: dict) -> TrainConfig:
    """The options of the run to resume, as saved in its checkpoint, with those ``given`` on the
    command line on top (those that would change the result are refused): ``--resume --out DIR``
    alone continues the run in DIR as it was started."""
    cfg = TrainConfig(**{**given, "resume": True})
    path = run_folder(cfg) / "checkpoint.pt"
    saved = read_checkpoint(path)["config"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kept = {k: v for k, v in saved.items() if k in fields}
    if isinstance(kept.get("compile"), bool):  # saved before --compile took a mode
        kept["compile"] = "default" if kept["compile"] else None
    cfg = TrainConfig(**{**kept, **given, "resume": True})
    refuse_changes(saved, cfg, path.parent)
    return cfg


def load_checkpoint(path: Path, stepper, cfg: TrainConfig) -> tuple[list, int]:
    """Restore model, optimizer, schedule and loss scale from ``path``; returns (history, next epoch)."""
    ckpt = read_checkpoint(path)
    refuse_changes(ckpt["config"], cfg, path.parent)
    try:
        stepper.model.load_state_dict(ckpt["model"])
        stepper.optimizer.load_state_dict(ckpt["optimizer"])
        stepper.scheduler.load_state_dict(ckpt["scheduler"])
        stepper.scaler.load_state_dict(ckpt["scaler"])
        return list(ckpt["history"]), int(ckpt["epoch"]) + 1
    except Exception as e:  # truncated, not a checkpoint, or one of another model: all mean the same
        raise UserError(f"--resume: {path} is not a readable checkpoint of this trainer "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def run_folder(cfg: TrainConfig) -> Path:
    """The run's output folder, checked: an earlier run there is continued (--resume), replaced
    (--overwrite) or refused."""
    out = cfg.out_dir
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    earlier = [n for n in ("checkpoint.pt", "model.pt", "metrics.json") if (out / n).exists()]
    if earlier and not (cfg.resume or cfg.overwrite):
        raise UserError(f"{out} already holds a run ({earlier[0]}); pass --resume to continue it, --overwrite "
                        f"to start again, or another --out")
    if cfg.resume and not (out / "checkpoint.pt").exists():
        raise UserError(f"nothing to resume: {out / 'checkpoint.pt'} does not exist")
    return out
