"""What a run leaves behind: the model, its figures as JSON and CSV, and plots.

Figures are ``matplotlib.figure.Figure`` objects, not pyplot's: they render to PNG without a
display and leave the process's backend (a notebook's, say) alone.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .files import atomic_write, names_sidecar

EPOCH_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_sec"]


def write_json(path, data, indent: int = 2) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=indent)))


def write_png(path, fig: Figure, dpi: int = 100) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def write_run(out: Path, model: torch.nn.Module, metrics: dict, names_from) -> None:
    """model.pt (with the Keras names of the weights it started from, ``names_from``),
    metrics.json, metrics.csv and curves.png in ``out``."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.pt", lambda tmp: torch.save(state, tmp))
    source_names, names = names_sidecar(names_from), names_sidecar(out / "model.pt")
    if source_names.is_file():  # keep the Keras names for the way back (convert/pt_to_keras_pickle.py)
        atomic_write(names, lambda tmp: shutil.copyfile(source_names, tmp))
    else:  # an earlier run's names would be taken for this model's
        names.unlink(missing_ok=True)
    write_json(out / "metrics.json", metrics)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, EPOCH_FIELDS)
    writer.writeheader()
    writer.writerows(metrics["epochs"])
    atomic_write(out / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    write_png(out / "curves.png", curves_figure(metrics["epochs"], metrics["regime"]))


def curves_figure(rows: list[dict], regime: str) -> Figure:
    """Loss and accuracy per epoch, training and validation side by side."""
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(11, 4), layout="tight")
    for ax, what, label in zip(fig.subplots(1, 2), ("loss", "acc"), ("cross-entropy loss", "accuracy")):
        ax.plot(epochs, [r[f"train_{what}"] for r in rows], "o-", label="train")
        if any(r[f"val_{what}"] is not None for r in rows):  # none with --val-size 0
            ax.plot(epochs, [r[f"val_{what}"] for r in rows], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{label.capitalize()} per epoch ({regime} regime)")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str) -> Figure:
    """One confusion matrix (``draw_confusion``) with its colour scale."""
    size, font = (7, 8) if len(class_names) <= 20 else (16, 5)  # 100 names fit at 5 pt on a 16-inch figure
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    fig.colorbar(draw_confusion(ax, confusion, class_names, title=title, font=font), ax=ax, shrink=0.8,
                 label="fraction of the true class")
    return fig


def draw_confusion(ax, confusion: np.ndarray, class_names: list[str], *, title: str, font: float):
    """The matrix on ``ax`` (rows: true class, columns: predicted), each row normalised to the
    fraction of that class's images, every class named on both axes; returns the image."""
    c = len(class_names)
    fraction = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    im = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(c), class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(c), class_names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return im
