"""What a run leaves behind: the model, its figures as JSON and CSV, and plots.

Figures are ``matplotlib.figure.Figure`` objects, not pyplot's: they render to PNG without a
display and leave the process's backend (a notebook's, say) alone.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import UserError
from ..formats.files import atomic_write, save_model
from ..model import ResidualNetwork

EPOCH_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_sec"]
VAL_KEYS = ("val_loss", "val_acc")  # null with --val-size 0
RUN_FILES = ("checkpoint.pt", "model.pt", "metrics.json", "metrics.csv", "curves.png")
NUMBER, TEXT, COUNT, MAYBE_COUNT = (int, float), str, int, (int, type(None))
# What a finished run's metrics.json must hold for the report (written by train/finetune.py).
REQUIRED = {"regime": TEXT, "test_accuracy": NUMBER, "test_top5": NUMBER, "test_loss": NUMBER, "epochs": list,
            "trainable_parameters": COUNT, "peak_memory_bytes": MAYBE_COUNT, "step_memory_bytes": MAYBE_COUNT,
            "device": TEXT, "world_size": COUNT, "amp": TEXT, "channels_last": bool, "train_images": COUNT,
            "val_images": COUNT, "test_images": COUNT, "learning_rates": dict, "class_names": list,
            "test_per_class": dict, "test_confusion": list, "config": dict}
BIGGEST = 2**53  # no count or figure of a run comes near it; JSON allows any integer (10**400)


def write_json(path, data, indent: int = 2) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=indent)))


def write_png(path, fig: Figure, dpi: int = 100) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def write_run(out: Path, model: ResidualNetwork, metrics: dict) -> None:
    """model.pt (with its Keras names, for the way back), metrics.json, metrics.csv and curves.png
    in ``out``."""
    save_model(model, out / "model.pt")
    write_json(out / "metrics.json", metrics)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, EPOCH_FIELDS)
    writer.writeheader()
    writer.writerows(metrics["epochs"])
    atomic_write(out / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    write_png(out / "curves.png", curves_figure(metrics["epochs"], metrics["regime"],
                                                stand_in=metrics.get("stand_in_data") is True))


def is_number(v) -> bool:
    """A finite number within what a run writes (not a bool, not 10**400)."""
    if isinstance(v, bool) or not isinstance(v, NUMBER):
        return False
    return abs(v) < BIGGEST if isinstance(v, int) else math.isfinite(v)


def is_count(v) -> bool:
    return isinstance(v, int) and is_number(v) and v >= 0


def check_epoch_rows(rows) -> None:
    """The per-epoch rows of a run (metrics.json's 'epochs', a checkpoint's history)."""
    if not isinstance(rows, list) or not rows or not all(
            isinstance(r, dict) and all(is_number(r.get(k)) for k in EPOCH_FIELDS if k not in VAL_KEYS)
            and all(k in r and (r[k] is None or is_number(r[k])) for k in VAL_KEYS) for r in rows):
        raise UserError(f"'epochs' must be a list of rows with {', '.join(EPOCH_FIELDS)}")
    if not all(r["seconds"] > 0 for r in rows):
        raise UserError("an epoch took no time")


def read_metrics(path) -> dict:
    """A finished run's metrics.json, checked for everything the report reads: one line otherwise."""
    try:
        m = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{path}: not valid JSON ({type(e).__name__}: {' '.join(str(e).split())[:100]})") from None
    if not isinstance(m, dict):
        raise UserError(f"{path}: not the metrics of a run (a JSON {type(m).__name__})")
    for key, kind in REQUIRED.items():
        if key not in m:
            raise UserError(f"{path}: no {key!r} (written by an older train/finetune.py? run it again)")
        value = m[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)) or (
                kind in (NUMBER, COUNT, MAYBE_COUNT) and value is not None and not is_number(value)):
            in_range = isinstance(value, kind) and not isinstance(value, bool)
            raise UserError(f"{path}: {key!r} is {'out of range' if in_range else f'a {type(value).__name__}'}")
    try:
        check_details(m)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return m


def check_details(m: dict) -> None:
    check_epoch_rows(m["epochs"])
    names, confusion = m["class_names"], m["test_confusion"]
    if not names or not all(isinstance(n, str) for n in names):
        raise UserError("'class_names' must be a list of names")
    if len(set(names)) != len(names):
        raise UserError(f"'class_names' names a class twice ({next(n for n in names if names.count(n) > 1)!r})")
    if list(m["test_per_class"]) != names or not all(v is None or is_number(v) for v in m["test_per_class"].values()):
        raise UserError("'test_per_class' must give an accuracy (or null) for each of 'class_names'")
    if len(confusion) != len(names) or not all(isinstance(row, list) and len(row) == len(names) and all(
            is_count(v) for v in row) for row in confusion):
        raise UserError(f"'test_confusion' must be {len(names)} x {len(names)} counts")
    rates = m["learning_rates"]
    if set(rates) != {"backbone", "head"} or not all(v is None or is_number(v) for v in rates.values()):
        raise UserError("'learning_rates' must give 'backbone' and 'head'")
    if not all(is_count(m[k]) for k in ("trainable_parameters", "world_size", "train_images", "val_images",
                                          "test_images")) or m["world_size"] < 1:
        raise UserError("the counts (parameters, images, processes) must be whole numbers >= 0")


STAND_IN_NOTE = "stand-in data (synthetic images in CIFAR format), not CIFAR"


def title_stand_in(fig: Figure, which: str = "") -> Figure:
    """The figure's title says its data was a stand-in (``which``: for which runs, when not all)."""
    fig.suptitle(STAND_IN_NOTE[0].upper() + STAND_IN_NOTE[1:] + which, color="firebrick")
    return fig


def epoch_axis(ax) -> None:
    """Whole epochs on the x axis, also for a run of one epoch (MaxNLocator wants two integers
    in view by default, and falls back to ticks such as 0.975 without them)."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def curves_figure(rows: list[dict], regime: str, *, stand_in: bool = False) -> Figure:
    """Loss and accuracy per epoch, training and validation side by side; ``stand_in``: the run
    trained on a stand-in data set (``metrics.json``'s ``stand_in_data``), said in the titles."""
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(11, 4), layout="tight")
    for ax, what, label in zip(fig.subplots(1, 2), ("loss", "acc"), ("cross-entropy loss", "accuracy")):
        ax.plot(epochs, [r[f"train_{what}"] for r in rows], "o-", label="train")
        if any(r[f"val_{what}"] is not None for r in rows):  # none with --val-size 0
            ax.plot(epochs, [r[f"val_{what}"] for r in rows], "s-", label="validation")
        epoch_axis(ax)
        ax.set_ylabel(label)
        ax.set_title(f"{label.capitalize()} per epoch ({regime} regime)")
        ax.grid(alpha=0.3)
        ax.legend()
    return title_stand_in(fig) if stand_in else fig


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str) -> Figure:
    """One confusion matrix (``draw_confusion``) with its colour scale."""
    size, font = (7, 8) if len(class_names) <= 20 else (16, 5)  # 100 names fit at 5 pt on a 16-inch figure
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    fig.colorbar(draw_confusion(ax, confusion, class_names, title=title, font=font), ax=ax, shrink=0.8,
                 label=confusion_scale(len(class_names)))
    return fig


CELL_FONT = {10: 8, 20: 6, 30: 4}  # up to so many classes: the cells' font size; more: no numbers (unreadable)


def cell_font(num_classes: int) -> float | None:
    """The font size of the numbers in a confusion matrix's cells; None: too many cells to write in."""
    return next((size for most, size in CELL_FONT.items() if num_classes <= most), None)


def confusion_scale(num_classes: int) -> str:
    """The colour bar's label."""
    return "fraction of the true class" + (" (cells in %)" if cell_font(num_classes) else "")


def draw_confusion(ax, confusion: np.ndarray, class_names: list[str], *, title: str, font: float):
    """The matrix on ``ax`` (rows: true class, columns: predicted), each row normalised to the
    fraction of that class's images, every class named on both axes, each non-empty cell's share
    written in it (in %, "<1" below half a percent; black on light cells, white on dark ones)
    while the cells are large enough to read; returns the image."""
    c = len(class_names)
    fraction = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    im = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(c), class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(c), class_names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    size = cell_font(c)
    if size is not None:
        shade = im.cmap(im.norm(fraction))[..., :3] @ np.array([0.299, 0.587, 0.114])  # luminance, 0..1
        for (i, j), count in np.ndenumerate(confusion):
            if count:
                share = fraction[i, j]
                ax.text(j, i, f"{100 * share:.0f}" if share >= 0.005 else "<1", ha="center", va="center",
                        fontsize=size, color="white" if shade[i, j] < 0.5 else "black")
    return im
