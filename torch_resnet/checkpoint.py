"""A run's checkpoint after every epoch: model, optimizer, schedule, loss scale, history, options."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from .config import TrainConfig
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


def load_checkpoint(path: Path, stepper, cfg: TrainConfig) -> tuple[list, int]:
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
