"""The report's figures (``torch_resnet.reporting.report``), drawn with matplotlib's Figure: no pyplot, no
display, no backend switch. Each takes the list of runs (``report.Run``) and returns a Figure, one
colour per run (however many), titled as on stand-in data when a run's data was a stand-in."""
from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from ..training.outputs import confusion_scale, draw_confusion, epoch_axis, title_stand_in


def stand_in_runs(runs) -> list:
    """The runs trained and tested on a stand-in data set (older metrics.json do not say: not counted)."""
    return [r for r in runs if r.metrics.get("stand_in_data") is True]


def run_colours(n: int) -> list:
    """``n`` distinct colours: matplotlib's own ten (tab10), then tab20's twenty, then as many
    samples of a continuous colormap (the default cycle repeats after ten)."""
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def note_stand_in(fig: Figure, runs) -> Figure:
    """The figure's title says so when a run's data was a stand-in."""
    stand_in = stand_in_runs(runs)
    if not stand_in:
        return fig
    return title_stand_in(fig, "" if len(stand_in) == len(runs) else f" ({', '.join(r.label for r in stand_in)})")


def curves_figure(runs) -> Figure:
    """Validation accuracy and loss of every run over its epochs, on shared axes."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2, sharex=True)
    for r, colour in zip(runs, run_colours(len(runs))):
        rows = r.metrics["epochs"]
        epochs = [row["epoch"] for row in rows]
        if rows[0]["val_acc"] is None:  # --val-size 0: no validation, nothing to draw
            acc_ax.plot([], [], color=colour, label=f"{r.label} (no validation)")
            loss_ax.plot([], [], color=colour, label=f"{r.label} (no validation)")
            continue
        acc_ax.plot(epochs, [row["val_acc"] for row in rows], "o-", color=colour, label=r.label)
        loss_ax.plot(epochs, [row["val_loss"] for row in rows], "o-", color=colour, label=r.label)
    for ax, what in ((acc_ax, "validation accuracy"), (loss_ax, "validation loss (cross-entropy)")):
        epoch_axis(ax)
        ax.set_ylabel(what)
        ax.set_title(what.capitalize() + " per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    return note_stand_in(fig, runs)


def per_class_figure(runs) -> Figure:
    """Test accuracy per class, one bar per run in each class's group, class names on the axis."""
    names = runs[0].metrics["class_names"]
    n = len(names)
    width = 0.8 / len(runs)
    fig = Figure(figsize=(max(10, 0.35 * n * max(len(runs), 2) / 2 + 2), 5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(n)
    for i, (r, colour) in enumerate(zip(runs, run_colours(len(runs)))):
        acc = [r.metrics["test_per_class"][c] for c in names]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, [a if a is not None else np.nan for a in acc], width,
               color=colour, label=f"{r.label} (top-1 {r.metrics['test_accuracy']:.1%})")
    ax.set_xticks(x, names, rotation=45 if n <= 20 else 90, ha="right" if n <= 20 else "center",
                  fontsize=10 if n <= 20 else 6)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("class")
    ax.set_ylabel("test accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Test accuracy per class")
    fig.legend(loc="outside lower center", ncols=min(len(runs), 4), frameon=False)
    return note_stand_in(fig, runs)


def confusion_figure(runs) -> Figure:
    """One row-normalised test confusion matrix per run, on one colour scale, classes named."""
    names = runs[0].metrics["class_names"]
    n, cols = len(names), min(len(runs), 2)
    rows = math.ceil(len(runs) / cols)
    side = 6 if n <= 20 else 12
    fig = Figure(figsize=(side * cols + 1.5, side * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    font = 9 if n <= 20 else 4
    for ax, r in zip(axes, runs):
        im = draw_confusion(ax, np.asarray(r.metrics["test_confusion"], dtype=float), names,
                            title=f"{r.label}: top-1 {r.metrics['test_accuracy']:.1%}", font=font)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes[:len(runs)].tolist(), shrink=0.8, label=confusion_scale(n))
    return note_stand_in(fig, runs)
