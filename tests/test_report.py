"""train/report.py: real runs of both regimes compared side by side; every number in the report
is the one in the runs' metrics.json, the figures are written, bad folders are one-line errors."""
import base64
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import struct

import pytest
import torch

from conftest import assert_refused, call_script, script_main
from torch_resnet import ResidualNetwork
from torch_resnet.training.config import TrainConfig
from torch_resnet.data.cifar import CIFAR10
from torch_resnet.data.synthetic import write_cifar
from torch_resnet.training.train import main as run

FIGURE_FILES = ("curves.png", "per_class.png", "confusion.png")


def report(capsys, *args):
    return call_script(capsys, "train/report.py", *args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A --freeze run and a full run started from it, by the trainer, on CIFAR-10-format data."""
    root = tmp_path_factory.mktemp("report")
    write_cifar(root / "data", CIFAR10, train_size=40, test_size=30, seed=2)
    torch.manual_seed(0)
    weights = root / "weights.pt"
    torch.save(ResidualNetwork(100).state_dict(), weights)
    common = dict(weights=str(weights), data_dir=str(root / "data"), epochs=2, batch_size=10, val_size=10,
                  device="cpu", download=False)
    run(TrainConfig(freeze=True, out=str(root / "freeze"), step_memory=True, **common))
    run(TrainConfig(out=str(root / "full"), init_from=str(root / "freeze" / "model.pt"), **common))
    return root


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
    """train/report.py on both runs, once, for the tests that read what it wrote: (rc, stdout, stderr, folder)."""
    out = tmp_path_factory.mktemp("written") / "rep"
    with contextlib.redirect_stdout(io.StringIO()) as o, contextlib.redirect_stderr(io.StringIO()) as e:
        rc = script_main("train/report.py", runs / "freeze", runs / "full", "-o", out)
    return rc, o.getvalue(), e.getvalue(), out


def metrics_of(folder):
    return json.loads((folder / "metrics.json").read_text())


def tables(md: str) -> list[list[list[str]]]:
    """Every Markdown table: its rows (header and separator dropped), each a list of cells."""
    found, current = [], None
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current = (current or []) + [[c.strip() for c in line.strip().strip("|").split(" | ")]]
        elif current:
            found.append(current[2:])
            current = None
    return found


def number(cell: str) -> float:
    return float(re.sub(r"[ ,%]|MiB", "", cell))


def mean(m, key):
    return sum(e[key] for e in m["epochs"]) / len(m["epochs"])


def images_per_sec(m):  # the whole run's: images over seconds
    return sum(e["images_per_sec"] * e["seconds"] for e in m["epochs"]) / sum(e["seconds"] for e in m["epochs"])


def expected_numbers(m):
    """(row, value in the report's unit, tolerance of its rounding) from a run's metrics.json."""
    return [("test top-1", 100 * m["test_accuracy"], 0.005), ("test top-5", 100 * m["test_top5"], 0.005),
            ("test loss", m["test_loss"], 5e-5), ("trainable parameters", m["trainable_parameters"], 0),
            ("epochs", len(m["epochs"]), 0), ("seconds per epoch (mean)", mean(m, "seconds"), 0.005),
            ("training img/s (whole run)", images_per_sec(m), 0.5),
            ("final train accuracy", 100 * m["epochs"][-1]["train_acc"], 0.005),
            ("final validation accuracy", 100 * m["epochs"][-1]["val_acc"], 0.005),
            ("peak memory", m["peak_memory_bytes"] / 2**20, 0.05)] + (
        [("step memory", m["step_memory_bytes"] / 2**20, 0.05)] if m["step_memory_bytes"] is not None else [])


@pytest.mark.slow
def test_the_trainer_records_what_the_report_needs(runs):
    for regime in ("freeze", "full"):
        m = metrics_of(runs / regime)
        confusion = torch.tensor(m["test_confusion"])
        assert confusion.shape == (10, 10) and confusion.sum() == m["test_images"] == 30
        assert m["test_accuracy"] == pytest.approx(confusion.trace().item() / 30, abs=1e-12)
        assert 0 <= m["test_accuracy"] <= m["test_top5"] <= 1
        assert m["class_names"] == [f"synthetic_{i}" for i in range(10)] == list(m["test_per_class"])
        for i, name in enumerate(m["class_names"]):
            n = confusion[i].sum().item()
            assert m["test_per_class"][name] == (pytest.approx(confusion[i, i].item() / n) if n else None)
    assert metrics_of(runs / "freeze")["learning_rates"] == {"backbone": None, "head": 1e-3}
    assert metrics_of(runs / "full")["learning_rates"] == {"backbone": 1e-5, "head": 1e-5}  # head from --init-from


@pytest.mark.slow
def test_every_number_in_the_report_is_the_runs(runs, written):
    folders = [str(runs / "freeze"), str(runs / "full")]
    rc, out, err, rep = written
    assert rc == 0 and str(rep / "report.md") in out, err
    md = (rep / "report.md").read_text()
    summary, per_class = tables(md)
    rows = {r[0]: r[1:] for r in summary}
    assert all(len(cells) == 2 for cells in rows.values())
    for col, folder in enumerate(folders):
        m = metrics_of(runs / folder.rsplit("/", 1)[-1])
        assert rows["regime"][col] == m["regime"]
        for what, value, tol in expected_numbers(m):
            assert abs(number(rows[what][col]) - value) <= tol + 1e-9, (folder, what, rows[what][col], value)
        rates = m["learning_rates"]
        assert rows["learning rate, head"][col] == f"{rates['head']:g}"
        assert rows["learning rate, backbone"][col] == ("frozen" if rates["backbone"] is None
                                                        else f"{rates['backbone']:g}")
        assert rows["device"][col] == "cpu" and rows["precision"][col].startswith(m["amp"] if m["amp"] != "off"
                                                                                  else "float32")
        if m["step_memory_bytes"] is None:
            assert rows["step memory"][col] == "not measured (--step-memory)"
        train, val, test = (number(x) for x in rows["images train / val / test"][col].split("/"))
        assert (train, val, test) == (m["train_images"], m["val_images"], m["test_images"]) == (30, 10, 30)
        for name, *cells in per_class:
            assert abs(number(cells[col]) - 100 * m["test_per_class"][name]) <= 0.005 + 1e-9, name
    assert [r[0] for r in per_class] == metrics_of(runs / "freeze")["class_names"]
    assert "started from" in rows["recipe"][1] and "no augmentation" not in rows["recipe"][0]
    assert metrics_of(runs / "freeze")["step_memory_bytes"] > 0 and rows["step memory"][1].startswith("not measured")
    a, b = metrics_of(runs / "freeze"), metrics_of(runs / "full")
    diff = re.search(r"test top-1 ([+-][\d.]+) points", md)
    assert abs(float(diff.group(1)) - 100 * (b["test_accuracy"] - a["test_accuracy"])) <= 0.005 + 1e-9


def png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_figures_are_written_and_inline_in_the_html(written):
    rc, _, err, out = written
    assert rc == 0, err
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    inline = [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert inline == [(out / f).read_bytes() for f in FIGURE_FILES]  # the same figures, in the page itself
    for f in FIGURE_FILES:
        width, height = png_size((out / f).read_bytes())
        assert width >= 600 and height >= 300, f
        assert f"]({f})" in md  # the Markdown links the file next to it
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 2 and "synthetic_9" in page
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.slow
def test_any_number_of_runs_one_column_each(runs, tmp_path, capsys):
    shutil.copytree(runs / "full", tmp_path / "full_again")
    assert report(capsys, runs / "freeze", runs / "full", tmp_path / "full_again", "-o", tmp_path / "rep")[0] == 0
    summary, per_class = tables((tmp_path / "rep" / "report.md").read_text())
    assert all(len(r) == 4 for r in summary + per_class)
    assert report(capsys, runs / "full", "-o", tmp_path / "one")[0] == 0
    assert all(len(r) == 2 for r in tables((tmp_path / "one" / "report.md").read_text())[0])


def unfinished(folder):  # a run that was started again: its checkpoint is newer than metrics.json
    (folder / "checkpoint.pt").write_bytes(b"x")
    os.utime(folder / "metrics.json", (1, 1))


def edit_metrics(change):
    def damage(folder):
        m = metrics_of(folder)
        change(m)
        (folder / "metrics.json").write_text(json.dumps(m))
    return damage


@pytest.mark.slow
@pytest.mark.parametrize("damage,needle", [
    (lambda f: shutil.rmtree(f), "no such run folder"),
    (lambda f: (f / "metrics.json").unlink(), "the run is unfinished (a checkpoint, no metrics.json yet); "
                                              "finish it with python train/finetune.py --resume --out"),
    (lambda f: [(f / n).unlink() for n in ("metrics.json", "checkpoint.pt")], "not a run folder"),
    (unfinished, "checkpoint is newer than metrics.json"),
    (lambda f: (f / "metrics.json").write_text("{not json"), "metrics.json: not valid JSON"),
    (edit_metrics(lambda m: m.pop("test_confusion")), "no 'test_confusion' (written by an older"),
    (edit_metrics(lambda m: m.__setitem__("test_loss", "low")), "'test_loss' is a str"),
    (edit_metrics(lambda m: m["epochs"].pop()), "unfinished (1 of 2 epochs)"),
    (edit_metrics(lambda m: m["test_confusion"][3].pop()), "'test_confusion' must be 10 x 10 counts"),
    (edit_metrics(lambda m: m["epochs"][0].pop("val_acc")), "'epochs' must be a list of rows"),
    (edit_metrics(lambda m: m.__setitem__("class_names", m["class_names"][::-1])), "'test_per_class' must give"),
])
def test_bad_run_folders_are_one_line_errors(runs, tmp_path, capsys, damage, needle):
    folder = tmp_path / "full"
    shutil.copytree(runs / "full", folder)
    damage(folder)
    rc, _, err = report(capsys, runs / "freeze", folder, "-o", tmp_path / "rep")
    assert_refused(rc, err, needle)
    assert not (tmp_path / "rep").exists()


@pytest.mark.slow
def test_bad_arguments_are_one_line_errors(runs, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(runs / "full", other)
    edit_metrics(lambda m: m.update(class_names=[f"c{i}" for i in range(10)],
                                    test_per_class={f"c{i}": 0.5 for i in range(10)}))(other)
    (tmp_path / "file").write_text("")
    for argv, needle in [([runs / "freeze", str(runs / "freeze") + "/"], "is named twice"),
                         ([runs / "freeze", other], "were tested on different classes"),
                         ([runs / "freeze", "-o", tmp_path / "file"], "is a file, not a folder"),
                         ([], "the following arguments are required: RUN_DIR")]:
        rc, _, err = report(capsys, *argv)
        assert_refused(rc, err, needle)
    assert not (tmp_path / "report").exists()  # the default -o: nothing written


# ----------------------------------------------------------------------------- figures and stand-ins

def suptitle(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle else ""


@pytest.mark.slow
def test_stand_in_data_is_said_in_metrics_the_report_and_every_figure(runs, written, tmp_path, capsys, monkeypatch):
    from torch_resnet.training import outputs
    from torch_resnet.data.cifar import load_cifar
    from torch_resnet.reporting.report import FIGURES, blocks, load_runs, to_markdown

    assert load_cifar(runs / "data", CIFAR10, "test").stand_in  # synthetic.write_cifar marks its batches.meta
    assert all(metrics_of(runs / r)["stand_in_data"] is True for r in ("freeze", "full"))
    md = (written[3] / "report.md").read_text()
    assert written[0] == 0 and md.startswith("# Fine-tuning report on stand-in data: ") and "not on CIFAR-10" in md
    assert {r[0]: r[1:] for r in tables(md)[0]}["data"] == ["stand-in (synthetic)"] * 2
    for file, (_, make) in FIGURES.items():
        assert "Stand-in data" in suptitle(make(load_runs([runs / "freeze", runs / "full"]))), file
    figures = {}  # a run's own curves.png, as the trainer writes it
    monkeypatch.setattr(outputs, "write_png", lambda path, fig, dpi=100: figures.setdefault(path.name, fig))
    outputs.write_run(tmp_path / "run", ResidualNetwork(10), metrics_of(runs / "freeze"))
    assert "Stand-in data" in suptitle(figures["curves.png"])

    # The real data set has no marker; a metrics.json of an older run has no key: both still reported.
    meta = runs / "data" / CIFAR10.folder / CIFAR10.meta_file
    real = tmp_path / "real" / CIFAR10.folder
    shutil.copytree(meta.parent, real)
    with open(meta, "rb") as f:
        names = pickle.load(f)
    del names[b"stand_in"]
    (real / CIFAR10.meta_file).write_bytes(pickle.dumps(names, protocol=2))
    assert not load_cifar(tmp_path / "real", CIFAR10, "test").stand_in
    shutil.copytree(runs / "full", tmp_path / "older")
    edit_metrics(lambda m: m.pop("stand_in_data"))(tmp_path / "older")
    older = load_runs([tmp_path / "older"])
    md = to_markdown(blocks(older))
    assert "stand-in" not in md.split("\n", 1)[0] and "not recorded (older run)" in md
    assert not suptitle(FIGURES["curves.png"][1](older))
    mixed = to_markdown(blocks(load_runs([runs / "freeze", tmp_path / "older"])))
    assert f"{runs / 'freeze'} was trained and tested on a stand-in" in mixed
    edit_metrics(lambda m: m.update(stand_in_data="yes"))(tmp_path / "older")
    rc, _, err = report(capsys, tmp_path / "older", "-o", tmp_path / "bad")
    assert_refused(rc, err, "'stand_in_data' is a str")


def visible_ticks(ax) -> list[float]:
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticks() if low <= t <= high]


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [1, 2, 7])
def test_every_epoch_axis_has_whole_epochs(runs, epochs):
    from torch_resnet.training.outputs import curves_figure as run_curves
    from torch_resnet.reporting.report import Run
    from torch_resnet.reporting.report_figures import curves_figure

    m = metrics_of(runs / "freeze")
    m["epochs"] = [{**m["epochs"][0], "epoch": e + 1} for e in range(epochs)]
    for fig in (run_curves(m["epochs"], "freeze"), curves_figure([Run("a", m), Run("b", m)])):
        for ax in fig.axes:
            ticks = visible_ticks(ax)
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
            assert 1 in ticks


@pytest.mark.slow
def test_more_than_ten_runs_get_distinct_colours(runs):
    from matplotlib.colors import to_hex
    from torch_resnet.reporting.report import Run
    from torch_resnet.reporting.report_figures import curves_figure, per_class_figure

    m = metrics_of(runs / "full")
    many = [Run(f"run {i}", m) for i in range(23)]
    for n in (12, 23):
        acc_ax = curves_figure(many[:n]).axes[0]
        assert len({to_hex(line.get_color()) for line in acc_ax.get_lines()}) == n
        bars = per_class_figure(many[:n]).axes[0].containers
        assert len({to_hex(c.patches[0].get_facecolor()) for c in bars}) == n


def test_confusion_cells_show_their_share_readably():
    import numpy as np
    from matplotlib.colors import to_rgb
    from torch_resnet.training.outputs import confusion_figure

    confusion = np.zeros((10, 10), int)
    confusion[np.arange(10), np.arange(10)] = 90  # dark diagonal cells
    confusion[0, 1], confusion[2, 3], confusion[4, 5] = 10, 1, 900  # light ones; a share below 1 %; a dark one
    ax = confusion_figure(confusion, [f"c{i}" for i in range(10)], "t").axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert set(cells) == {tuple(ij) for ij in np.argwhere(confusion)}  # every non-empty cell, none other
    assert [cells[k].get_text() for k in ((0, 0), (0, 1), (2, 3), (4, 5), (4, 4))] == ["90", "10", "1", "91", "9"]
    white, black = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    assert to_rgb(cells[0, 0].get_color()) == white and to_rgb(cells[4, 5].get_color()) == white
    assert to_rgb(cells[0, 1].get_color()) == black and to_rgb(cells[4, 4].get_color()) == black
    confusion[2, 2] = 900
    assert {t.get_text() for t in confusion_figure(confusion, [f"c{i}" for i in range(10)], "t").axes[0].texts
            if t.get_position() == (3, 2)} == {"<1"}
    many = np.eye(100, dtype=int) * 5
    assert not confusion_figure(many, [f"c{i}" for i in range(100)], "t").axes[0].texts  # 10,000 cells: unreadable
