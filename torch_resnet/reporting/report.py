"""Side by side: fine-tuning runs compared from their ``metrics.json`` (``train/report.py``).

Writes ``report.md`` and ``report.html`` (figures inline) into one folder, with ``curves.png``
(validation accuracy and loss per epoch), ``per_class.png`` (test accuracy per class, grouped
bars) and ``confusion.png`` (the test confusion matrices). Every number comes from the runs'
``metrics.json``; nothing is evaluated again.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from ..training.checkpoint import resume_command
from ..errors import UserError
from ..formats.files import atomic_write, refuse_run_folder
from ..training.outputs import is_number, read_metrics
from .report_figures import confusion_figure, curves_figure, per_class_figure, stand_in_runs

FIGURES = {"curves.png": ("Validation accuracy and loss per epoch", curves_figure),
           "per_class.png": ("Test accuracy per class", per_class_figure),
           "confusion.png": ("Test confusion matrices (rows: true class, fraction of its images)", confusion_figure)}
@dataclass
class Run:
    label: str  # the folder as the user wrote it
    metrics: dict

    def seconds_per_epoch(self) -> float:
        rows = self.metrics["epochs"]
        return sum(r["seconds"] for r in rows) / len(rows)

    def images_per_sec(self) -> float:
        """Over the whole run: every epoch's images over every epoch's seconds."""
        rows = self.metrics["epochs"]
        return sum(r["images_per_sec"] * r["seconds"] for r in rows) / sum(r["seconds"] for r in rows)


def load_run(folder) -> Run:
    """A finished run's metrics, checked for everything the report reads: one-line errors otherwise."""
    folder = Path(folder)
    path, ckpt = folder / "metrics.json", folder / "checkpoint.pt"
    if not folder.is_dir():
        raise UserError(f"{folder}: {'a file, not' if folder.exists() else 'no such'} run folder")
    resume = f"finish it with {resume_command(folder)}"
    if not path.is_file():
        if ckpt.is_file():
            raise UserError(f"{folder}: the run is unfinished (a checkpoint, no metrics.json yet); {resume}")
        raise UserError(f"{folder}: not a run folder (no metrics.json; train/finetune.py writes it at the end)")
    if ckpt.is_file() and ckpt.stat().st_mtime > path.stat().st_mtime:
        raise UserError(f"{folder}: the run was started again and is unfinished (its checkpoint is newer than "
                        f"metrics.json); {resume}")
    m = read_metrics(path)
    if not isinstance(m.get("stand_in_data", False), bool):  # absent in the metrics.json of older runs
        raise UserError(f"{path}: 'stand_in_data' is a {type(m['stand_in_data']).__name__}, not true or false")
    planned = m["config"].get("epochs")
    if isinstance(planned, int) and len(m["epochs"]) < planned:
        raise UserError(f"{folder}: the run is unfinished ({len(m['epochs'])} of {planned} epochs); {resume}")
    return Run(str(folder), m)


def load_runs(folders) -> list[Run]:
    if not folders:
        raise UserError("name at least one run folder (for example runs/freeze runs/full)")
    runs = [load_run(f) for f in folders]
    labels = [r.label for r in runs]
    twice = next((f for f in folders if sum(Path(f).resolve() == Path(g).resolve() for g in folders) > 1), None)
    if twice is not None:
        raise UserError(f"{twice} is named twice")
    names = runs[0].metrics["class_names"]
    for r in runs[1:]:
        if r.metrics["class_names"] != names:
            raise UserError(f"{labels[0]} and {r.label} were tested on different classes; they cannot share a report")
    return runs


# ----------------------------------------------------------------------------- numbers as shown

def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def mib(b, missing: str = "unknown") -> str:
    return missing if b is None else f"{b / 2**20:,.1f} MiB"


def rate(x) -> str:
    return "frozen" if x is None else f"{x:g}"


def recipe(m: dict) -> str:
    c = m["config"]
    if c.get("recipe") == "keras":
        parts = ["Keras' Adam, constant rate"]
    else:
        decay = f", weight decay {c['weight_decay']:g}" if is_number(c.get("weight_decay")) else ""
        parts = [f"AdamW{decay}, cosine decay per step"]
    parts += [f"batch {c.get('batch_size', 'n/a')}", "crop + flip" if c.get("augment", True) else "no augmentation"]
    if is_number(m.get("feature_cache_seconds")):
        parts.append(f"backbone features computed once ({m['feature_cache_seconds']:.2f} s, counted in epoch 1)")
    if c.get("init_from"):
        parts.append(f"started from {c['init_from']}")
    return ", ".join(parts)


def precision(m: dict) -> str:
    compiled, startup = m["config"].get("compile"), m.get("startup_seconds")
    return ((m["amp"] if m["amp"] != "off" else "float32") + (", channels_last" if m["channels_last"] else "")
            + (f", torch.compile {compiled}" if isinstance(compiled, str) and compiled != "off"
               else ", torch.compile" if compiled is True else "")
            + (f", frozen backbone compiled ({startup:.1f} s start-up)" if is_number(startup) and startup > 0 else ""))


def final(m: dict, key: str) -> str:
    value = m["epochs"][-1][key]
    return "none (--val-size 0)" if value is None else pct(value)


def data_kind(m: dict) -> str:
    stand_in = m.get("stand_in_data")
    return "stand-in (synthetic)" if stand_in else "not recorded (older run)" if stand_in is None else "real"


def summary_rows(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """(what, one cell per run): the side-by-side table."""
    def row(what, cell):
        return what, [cell(r.metrics, r) for r in runs]

    return [
        row("regime", lambda m, r: m["regime"]),
        row("test top-1", lambda m, r: pct(m["test_accuracy"])),
        row("test top-5", lambda m, r: pct(m["test_top5"])),
        row("test loss", lambda m, r: f"{m['test_loss']:.4f}"),
        row("trainable parameters", lambda m, r: f"{m['trainable_parameters']:,}"),
        row("epochs", lambda m, r: str(len(m["epochs"]))),
        row("seconds per epoch (mean)", lambda m, r: f"{r.seconds_per_epoch():,.2f}"),
        row("training img/s (whole run)", lambda m, r: f"{r.images_per_sec():,.0f}"),
        row("final train accuracy", lambda m, r: final(m, "train_acc")),
        row("final validation accuracy", lambda m, r: final(m, "val_acc")),
        row("peak memory", lambda m, r: mib(m["peak_memory_bytes"])),
        row("step memory", lambda m, r: mib(m["step_memory_bytes"], "not measured (--step-memory)")),
        row("learning rate, backbone", lambda m, r: rate(m["learning_rates"]["backbone"])),
        row("learning rate, head", lambda m, r: rate(m["learning_rates"]["head"])),
        row("recipe", lambda m, r: recipe(m)),
        row("device", lambda m, r: m["device"] + (f" x{m['world_size']}" if m["world_size"] > 1 else "")),
        row("precision", lambda m, r: precision(m)),
        row("data", lambda m, r: data_kind(m)),
        row("images train / val / test", lambda m, r: f"{m['train_images']:,} / {m['val_images']:,} / "
                                                       f"{m['test_images']:,}"),
    ]


def differences(runs: list[Run]) -> list[str]:
    """Each later run against the first, in the report's own numbers."""
    base, lines = runs[0], []
    for r in runs[1:]:
        a, b = base.metrics, r.metrics
        gains = sorted(((b["test_per_class"][n] or 0) - (a["test_per_class"][n] or 0), n) for n in a["class_names"])
        lines.append(
            f"{r.label} against {base.label}: test top-1 {100 * (b['test_accuracy'] - a['test_accuracy']):+.2f} points, "
            f"{b['trainable_parameters'] / max(a['trainable_parameters'], 1):,.1f}x the trainable parameters, "
            f"{r.seconds_per_epoch() / base.seconds_per_epoch():,.2f}x the seconds per epoch, "
            + (f"{b['step_memory_bytes'] / max(a['step_memory_bytes'], 1):,.2f}x the step memory; "
               if a["step_memory_bytes"] and b["step_memory_bytes"] else "")
            + f"largest class gain {gains[-1][1]} {100 * gains[-1][0]:+.2f} points, "
            + (f"largest loss {gains[0][1]} {100 * gains[0][0]:+.2f} points." if gains[0][0] < 0
               else "no class lost accuracy."))
    return lines


# ----------------------------------------------------------------------------- the pages

def blocks(runs: list[Run]) -> list[tuple]:
    labels = [r.label for r in runs]
    names = runs[0].metrics["class_names"]
    stand_in = [r.label for r in stand_in_runs(runs)]
    out = [("h1", "Fine-tuning report" + (" on stand-in data" if stand_in else "") + ": " + ", ".join(labels))]
    if stand_in:
        who = (("This run was" if len(runs) == 1 else "These runs were") if len(stand_in) == len(runs)
               else f"{', '.join(stand_in)} {'was' if len(stand_in) == 1 else 'were'}")
        out.append(("p", who + " trained and tested on a stand-in data set (synthetic images in CIFAR format, made by "
                      "torch_resnet.data.synthetic when the real CIFAR-10 was not there), not on CIFAR-10: the numbers "
                      "show that the pipeline works, not how well the network does on CIFAR-10."))
    out += [("p", "Every number below is read from the runs' metrics.json (test set evaluated once, at the end "
                  "of each run; validation split held out from the training images unless a run names its own)."),
            ("table", ["", *labels], summary_rows(runs))]
    if len(runs) > 1:
        out += [("h2", "Differences"), ("ul", differences(runs)),
                ("p", "What to look at: trainable parameters, seconds per epoch and memory are each regime's cost; "
                      "the gap between final train and validation accuracy shows over-fitting; the per-class bars "
                      "and the confusion matrices show which classes adapting the features helps, and which "
                      "classes each regime confuses.")]
    for file, (title, _) in FIGURES.items():
        out += [("h2", title), ("img", file, title)]
        if file == "per_class.png":
            out.append(("table", ["class", *labels],
                        [(n, [pct(r.metrics["test_per_class"][n]) for r in runs]) for n in names]))
    return out


def to_markdown(page: list[tuple]) -> str:
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = []
    for kind, *rest in page:
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "ul":
            lines += [f"- {s}" for s in rest[0]] + [""]
        elif kind == "img":
            lines += [f"![{rest[1]}]({rest[0]})", ""]
        elif kind == "table":
            header, rows = rest
            lines.append("| " + " | ".join(map(cell, header)) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(map(cell, [what, *cells])) + " |" for what, cells in rows]
            lines.append("")
    return "\n".join(lines)


def to_html(page: list[tuple], pngs: dict[str, bytes]) -> str:
    e = html.escape
    body = []
    for kind, *rest in page:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{e(s)}</li>" for s in rest[0]) + "</ul>")
        elif kind == "img":
            data = base64.b64encode(pngs[rest[0]]).decode("ascii")
            body.append(f'<img src="data:image/png;base64,{data}" alt="{e(rest[1])}">')
        elif kind == "table":
            header, rows = rest
            body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>" + "".join(
                f"<tr><th>{e(what)}</th>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>"
                for what, cells in rows) + "</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "th:first-child{text-align:left}img{max-width:100%}")
    title = e(page[0][1])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def render_report(runs: list[Run]) -> tuple[str, str, dict[str, bytes]]:
    """The report of ``runs`` in memory: (Markdown, HTML with the figures inline, the figures' PNGs by file name)."""
    page = blocks(runs)
    pngs = {file: png_bytes(make(runs)) for file, (_, make) in FIGURES.items()}
    return to_markdown(page), to_html(page, pngs), pngs


def write_report(folders, out) -> Path:
    """Read the runs, write the figures, then report.md and report.html (last). Returns report.md."""
    runs = load_runs(folders)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file, not a folder")
    refuse_run_folder(out, "`out`")
    markdown, html, pngs = render_report(runs)
    for file, data in pngs.items():
        atomic_write(out / file, lambda tmp, data=data: Path(tmp).write_bytes(data))
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8"))
    atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    return out / "report.md"
