"""A run's checkpoint after every epoch (model, optimizer, schedule, loss scale, history,
options), and the run folder's rules: one writer at a time, resume, overwrite, a finished run
final."""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from .config import DEFAULT_LR, TrainConfig, option
from ..errors import UserError
from ..formats.files import names_sidecar, save_torch
from ..applications.resnet import from_architecture
from ..model import ResidualNetwork
from .outputs import RUN_FILES, check_epoch_rows

# Options that do not change the numbers a run produces, so a resumed run may set them anew.
RESUME_MAY_CHANGE = {"resume", "overwrite", "log_every", "download", "data_dir", "test_dir", "val_dir", "device",
                     "out", "compile", "step_memory"}


def save_checkpoint(path: Path, stepper, *, epoch: int, history: list, cfg: TrainConfig,
                    replaces_earlier_run: bool = False) -> None:
    """Everything ``load_checkpoint`` needs to continue ``stepper`` (a ``stepper.Stepper``) after
    ``epoch``, without the weights file it started from (the model's Keras names included).
    ``replaces_earlier_run``: the first checkpoint of an --overwrite run (``clear_earlier_run``)."""
    names = stepper.model.keras_names.text if stepper.model.keras_names is not None else None
    ckpt = {"model": stepper.model.state_dict(), "optimizer": stepper.optimizer.state_dict(),
            "scheduler": stepper.scheduler.state_dict(), "scaler": stepper.scaler.state_dict(),
            "epoch": epoch, "history": history, "config": asdict(cfg), "keras_names": names,
            "architecture": getattr(stepper.model, "architecture", None)}
    save_torch(ckpt, path, (lambda: clear_earlier_run(path.parent)) if replaces_earlier_run else None)


CHECKPOINT_PARTS = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int,
                    "history": list, "config": dict}


# What loading a checkpoint's parts into the network, optimizer, schedule and scaler raises when
# they do not fit (load_state_dict's RuntimeError and KeyError, a part of the wrong type or shape);
# anything else is a bug of ours and goes up as it is.
UNFIT = (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError)


def read_checkpoint(path: Path) -> dict:
    """The checkpoint in ``path``, checked (parts, types, history) before anything uses it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a user's file, damaged any way: all mean the same (the cause kept, chained)
        raise unreadable(path, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}") from e
    if not isinstance(ckpt, dict):
        raise unreadable(path, f"a {type(ckpt).__name__}")
    for part, kind in CHECKPOINT_PARTS.items():
        if not isinstance(ckpt.get(part), kind) or isinstance(ckpt.get(part), bool):
            found = type(ckpt[part]).__name__ if part in ckpt else "missing"
            raise unreadable(path, f"its {part!r} is {found}, expected {kind.__name__}")
    epochs, done = saved_options(ckpt["config"], path)["epochs"], ckpt["epoch"] + 1
    if not 1 <= done <= epochs or len(ckpt["history"]) != done:
        raise unreadable(path, f"epoch {ckpt['epoch']} and {len(ckpt['history'])} history rows do not fit a run of "
                               f"{epochs} epochs")
    try:
        check_epoch_rows(ckpt["history"])
    except UserError as e:
        raise unreadable(path, f"history: {e}") from None
    return ckpt


def saved_options(saved: dict, path: Path) -> dict:
    """The options a checkpoint was saved with, as TrainConfig fields, checked."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kept = {k: v for k, v in saved.items() if k in fields}
    if isinstance(kept.get("compile"), bool):  # saved before --compile took a mode
        kept["compile"] = "default" if kept["compile"] else None
    try:
        return asdict(TrainConfig(**kept))
    except UserError as e:
        raise unreadable(path, f"its saved options: {e}") from None


def unreadable(path: Path, why: str) -> UserError:
    return UserError(f"`resume=True`: {path} is not a readable checkpoint of this trainer ({why})")


SAID = {("augment", True): "augmentation (no `augment=False`)", ("augment", False): "`augment=False`",
        ("channels_last", None): "the default memory layout", ("channels_last", False): "`channels_last=False`"}


def as_option(field: str, value, regime: str) -> str:
    """An option's value as it is given (or left out), for a message."""
    if (field, value) in SAID:
        return SAID[field, value]
    if field == "lr" and value is None:
        return f"the default `lr` ({DEFAULT_LR[regime]:g})"
    if value is None or value is False:
        return f"no {option(field)}" if field != "head_lr" else "the default `head_lr`"
    if value is True:
        return f"`{field}=True`"
    return f"`{field}={value:g}`" if isinstance(value, float) else f"`{field}={value!r}`"


def refuse_changes(saved: dict, cfg: TrainConfig, folder: Path) -> None:
    """Everything that decides the result must be as it was when the run started."""
    for key, value in asdict(cfg).items():
        if key not in RESUME_MAY_CHANGE and saved.get(key) != value:
            was = as_option(key, saved.get(key), "freeze" if saved.get("freeze") else "full")
            raise UserError(f"`resume=True`: {folder} was started with {was}, not {as_option(key, value, cfg.regime)}; "
                            f"leave {option(key)} out to continue it as it was, or start a new run with another `out`")


def resume_config(given: dict) -> TrainConfig:
    """The options of the run to resume, as saved in its checkpoint, with those ``given`` on the
    command line on top (those that would change the result are refused): ``--resume --out DIR``
    alone continues the run in DIR as it was started."""
    cfg = TrainConfig(**{**given, "resume": True})
    path = run_folder(cfg) / "checkpoint.pt"
    saved = read_checkpoint(path)["config"]
    cfg = TrainConfig(**{**saved_options(saved, path), **given, "resume": True})
    refuse_changes(saved, cfg, path.parent)
    return cfg


def checkpoint_model(ckpt: dict, path: Path) -> ResidualNetwork:
    """The network saved in ``ckpt`` (``read_checkpoint(path)``): a resumed run needs no other
    weights file."""
    state, architecture = ckpt["model"], ckpt.get("architecture")
    try:
        model = ResidualNetwork(state.get("head.weight").shape[0]) if architecture is None else \
            from_architecture(architecture)
        model.load_state_dict(state)
        return model
    except UNFIT as e:
        raise unreadable(path, f"no ResidualNetwork: {type(e).__name__}: {' '.join(str(e).split())[:120]}") from e


def load_checkpoint(ckpt: dict, path: Path, stepper, cfg: TrainConfig) -> tuple[list, int, str | None]:
    """Restore model, optimizer, schedule and loss scale from ``ckpt`` (``read_checkpoint(path)``);
    returns (history, next epoch, the Keras names of the weights the run started from)."""
    refuse_changes(ckpt["config"], cfg, path.parent)
    try:
        stepper.model.load_state_dict(ckpt["model"])
        stepper.optimizer.load_state_dict(ckpt["optimizer"])
        stepper.scheduler.load_state_dict(ckpt["scheduler"])
        stepper.scaler.load_state_dict(ckpt["scaler"])
        names = ckpt.get("keras_names")
        return list(ckpt["history"]), int(ckpt["epoch"]) + 1, names if isinstance(names, str) else None
    except UNFIT as e:  # not a checkpoint of this trainer, or one of another model: all mean the same
        raise unreadable(path, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}") from e


def resume_command(out: Path) -> str:
    """How to continue the run in ``out`` (the command line shows its command)."""
    return f"`tr.finetune(resume=True, out={str(out)!r})`"


def run_folder(cfg: TrainConfig) -> Path:
    """The run's output folder, checked: an earlier run there is continued (--resume, unless it
    is finished), replaced (--overwrite) or refused."""
    out = cfg.out_dir
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out} is a file, not a folder")
    earlier = [n for n in ("checkpoint.pt", "model.pt", "metrics.json") if (out / n).exists()]
    finished = (out / "metrics.json").exists()
    if earlier and finished and not (cfg.resume or cfg.overwrite):  # resuming it would only be refused
        raise UserError(f"{out} already holds a finished run (metrics.json); pass `overwrite=True` to replace it, "
                        f"or another `out`")
    if earlier and not (cfg.resume or cfg.overwrite):
        raise UserError(f"{out} already holds a run ({earlier[0]}); pass `resume=True` to continue it, "
                        f"`overwrite=True` to start again, or another `out`")
    if cfg.resume and finished:
        raise UserError(f"{out} holds a finished run (tested, metrics.json written): `resume=True` has nothing to "
                        f"continue and changed nothing; start a new run with another `out` (or `overwrite=True` to "
                        f"replace this one)")
    if cfg.resume and not (out / "checkpoint.pt").exists():
        raise UserError(f"nothing to resume: {out / 'checkpoint.pt'} does not exist")
    return out


def clear_earlier_run(out: Path) -> None:
    """--overwrite: the earlier run's files go once the new run's first checkpoint is whole on
    disk, just before it replaces the earlier one; metrics.json first, so that the folder holds
    one run at every moment: the earlier one (finished, or resumable from its checkpoint) until
    the new checkpoint is in place. A failed write (a full disk) leaves the earlier run whole."""
    for name in ("metrics.json", "model.pt", names_sidecar("model.pt").name, *RUN_FILES):
        if name != "checkpoint.pt":
            (out / name).unlink(missing_ok=True)


@contextlib.contextmanager
def hold_run_folder(cfg: TrainConfig, writer: bool = True):
    """The run's folder, checked and held for the whole run: one writer at a time (an exclusive
    lock on ``.lock``, which the OS releases if the process dies). A run that stops before
    writing anything leaves no folder behind.
    ``writer``: False on the ranks of a torchrun launch that do not write (rank 0 holds the lock)."""
    out = run_folder(cfg)  # a finished run is refused before anything is touched
    if not writer:
        yield out
        return
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create `out` {out}: {e.strerror or e}") from None
    lock = FileLock(out / ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{out} is in use by another run (it holds {out / '.lock'}); wait for it to end, "
                        f"or choose another --out") from None
    except OSError as e:
        raise UserError(f"cannot lock `out` {out}: {e.strerror or e}") from None
    try:
        run_folder(cfg)  # again, now that no other run can change it
        yield out
    finally:
        lock.release()
        if not any(p.name != ".lock" for p in out.iterdir()):  # nothing written: leave no trace
            (out / ".lock").unlink(missing_ok=True)
            if created:
                out.rmdir()
