"""The Python API: what the scripts in ``convert/`` and ``train/`` do, as functions for a notebook.

    import torch_resnet as tr
    model = tr.from_keras("weights/resnet_cifar100.pkl")         # the course's Keras weights
    frozen = tr.finetune(model, freeze=True, epochs=2)            # stage 1: new head only
    full = tr.finetune(frozen, epochs=2)                          # stage 2: from stage 1, BatchNorm frozen
    tr.report([frozen, full])                                     # shown inline in Jupyter
    tr.to_keras(full.model, "resnet_cifar10.pkl")                 # back to Keras

Options keep the trainer's names (``train/finetune.py --batch-size`` is ``batch_size=``) and its
defaults; an error a user can fix is a ``UserError`` with the scripts' own message.
"""
from __future__ import annotations

import base64
import copy
import dataclasses
import html
import os
from pathlib import Path

from matplotlib.figure import Figure

from .conversion import convert
from .training import evaluate as evaluation
from .reporting import report as reporting
from .training import train
from .training.config import TrainConfig
from .errors import UserError
from .formats.files import load_model, save_model
from .formats.keras_names import names_sidecar
from .formats.keras_files import read_keras_file
from .applications.resnet import KerasResNet
from .model import ResidualNetwork
from .training.outputs import curves_figure

NETWORKS = (ResidualNetwork, KerasResNet)  # the course's network, keras.applications' ResNets

PathLike = str | os.PathLike


def from_keras(path: PathLike, *, out: PathLike | None = None, shortcut_from_raw: bool = False) -> ResidualNetwork:
    """Convert Keras weights into a ``ResidualNetwork`` or, for a keras.applications ResNet (with its
    top, none or Dense layers of one's own), a ``KerasResNet`` (what ``convert/keras_pickle_to_pt.py`` does).

    Parameters
    ----------
    path : str or Path
        The Keras weights file, e.g. the course's pickle of Keras-named numpy arrays.
    out : str or Path, optional
        Also keep the converted state dict here (a ``.pt`` with its Keras names file, or a
        ``.safetensors`` with them in its metadata), as the converter writes it. By default
        nothing is written.
    shortcut_from_raw : bool
        The network's 1x1 shortcut reads the raw block input, not the pre-activated one.

    Returns
    -------
    ResidualNetwork
        On the CPU, in eval mode, with as many classes as the file's Dense layer. It remembers the
        Keras names, so that ``to_keras`` writes them back.
    """
    model, _ = convert.keras_to_model(read_keras_file(path), path, shortcut_from_raw)
    if out is not None:
        save_model(model, out)
    return model.eval()


def load(path: PathLike, *, shortcut_from_raw: bool = False) -> ResidualNetwork:
    """A ``ResidualNetwork`` from a state dict this project wrote (converter, ``save``, a run's
    ``model.pt``; ``.pt`` or ``.safetensors``), every tensor checked, on the CPU, in eval mode, with
    the Keras names kept with the file; no code in the file runs."""
    return load_model(path, shortcut_from_raw).eval()


def save(model: ResidualNetwork, path: PathLike) -> Path:
    """Write ``model``'s state dict to ``path``: a ``.safetensors`` file for that suffix, else a ``.pt``
    (what ``load``, ``--weights`` and ``torch.load(weights_only=True)`` read), with its Keras names
    when it came from Keras. Written atomically: an earlier file is replaced whole or not at all."""
    if not isinstance(model, NETWORKS):
        raise UserError(f"save() takes a ResidualNetwork or a KerasResNet, got {type(model).__name__}")
    save_model(model, path)
    return Path(path)


@dataclasses.dataclass(repr=False)
class Run:
    """A finished fine-tuning run: its folder, what its ``metrics.json`` holds, the trained model."""

    folder: Path
    metrics: dict
    model: ResidualNetwork

    def curves(self) -> Figure:
        """Loss and accuracy per epoch (the run's ``curves.png``) as a matplotlib Figure."""
        return curves_figure(self.metrics["epochs"], self.metrics["regime"],
                             stand_in=self.metrics.get("stand_in_data") is True)

    def __repr__(self):
        m, n = self.metrics, len(self.metrics["epochs"])
        return f"Run({str(self.folder)!r}: {m['regime']}, {n} epoch{'s' * (n != 1)}, test top-1 {m['test_accuracy']:.2%})"

    def _repr_html_(self):
        png = base64.b64encode((self.folder / "curves.png").read_bytes()).decode("ascii")
        return f"<p>{html.escape(repr(self))}</p><img src='data:image/png;base64,{png}' style='max-width:100%'>"


def finetune(model_or_path: ResidualNetwork | PathLike | Run | None = None, *, freeze: bool = False,
             epochs: int = TrainConfig.epochs, batch_size: int = TrainConfig.batch_size, lr: float | None = None,
             data_dir: PathLike = TrainConfig.data_dir, out: PathLike | None = None,
             recipe: str = TrainConfig.recipe, device: str = TrainConfig.device, amp: str = TrainConfig.amp,
             **options) -> Run:
    """Fine-tune on CIFAR-10 or an image folder (what ``train/finetune.py`` does), in one of the two regimes.

    Parameters
    ----------
    model_or_path : ResidualNetwork, str, Path or Run, optional
        Where to start. A network (e.g. from ``from_keras``; it is copied, not changed) or the
        path of a state dict gets a new head for the data's classes. A ``Run`` of the frozen regime starts the full regime from its model, head
        included (``--init-from``). Default: ``weights/resnet_cifar100.pt``.
    freeze : bool
        True: the backbone is frozen and only the new head trains. False: every convolution and
        the head train, every BatchNorm stays frozen.
    epochs, batch_size, lr, data_dir, out, recipe, device, amp
        As the script's ``--epochs``, ``--batch-size``, ... (``python train/finetune.py --help``).
        ``out`` defaults to ``runs/freeze`` or ``runs/full``.
    **options
        Any other option of the trainer: ``head_lr``, ``weight_decay``, ``val_size``, ``seed``,
        ``augment``, ``channels_last``, ``compile``, ``step_memory``, ``resume``, ``overwrite``,
        ``download``, ``log_every``, ``weights``, ``init_from``; for image folders (``data_dir`` with
        one sub-folder per class) ``test_dir``, ``val_dir``, ``image_size``, ``skip_bad_images``; for
        keras.applications ResNets ``head`` ("1024,200") and ``head_dropout``.

    Returns
    -------
    Run
        ``.model`` (the trained network, on the CPU), ``.metrics``, ``.folder``.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UserError(f"finetune() has no option {unknown[0]!r}; its options: {', '.join(sorted(names))}")
    given = dict(freeze=freeze, epochs=epochs, batch_size=batch_size, lr=lr, data_dir=data_dir, out=out,
                 recipe=recipe, device=device, amp=amp, **options)
    model = None
    if isinstance(model_or_path, Run):
        given["init_from"] = model_or_path.folder / "model.pt"
    elif isinstance(model_or_path, NETWORKS):
        model = model_or_path
    elif model_or_path is not None:
        given["weights"] = model_or_path
    if model is not None:  # recorded as the run's --weights; a resume needs only the run's checkpoint
        given["weights"] = f"<{type(model).__name__} object>"
    cfg = TrainConfig(**{k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in given.items()})
    metrics = train.main(cfg, pretrained=None if model is None else copy.deepcopy(model), quiet=True)
    return Run(cfg.out_dir, metrics, load(cfg.out_dir / "model.pt"))


def network(model_or_path: ResidualNetwork | PathLike | Run) -> tuple[ResidualNetwork, str | None]:
    """(the network, the file it was read from or None) for a network, a Run or a path."""
    if isinstance(model_or_path, NETWORKS):
        return model_or_path, None
    path = model_or_path.folder / "model.pt" if isinstance(model_or_path, Run) else Path(model_or_path)
    return load_model(path), str(path)


def evaluate(model_or_path: ResidualNetwork | PathLike | Run, *, data_dir: PathLike = "data",
             dataset: str | None = None, out: PathLike | None = None, batch_size: int = 256,
             device: str | None = None, amp: str = "auto", download: bool = True,
             shortcut_from_raw: bool = False, keras: PathLike | None = None, test_dir: PathLike | None = None,
             image_size: int | None = None) -> dict:
    """Evaluate on the CIFAR test split or a folder of test images (what ``train/evaluate.py`` does).

    Parameters
    ----------
    model_or_path : ResidualNetwork, str, Path or Run
        The network, its state dict, or a finished run (its ``model.pt``).
    data_dir : str or Path
        The folder holding ``cifar-100-python/`` or ``cifar-10-batches-py/`` (downloaded there
        when absent and ``download``).
    dataset : {"cifar100", "cifar10"}, optional
        Default: the one with as many classes as the network's head.
    out : str or Path, optional
        Also write ``eval.json`` and ``confusion.png`` into this folder.
    batch_size, device, amp, download, shortcut_from_raw
        As ``train/evaluate.py``'s options; ``amp="auto"`` evaluates in fp32 (an exact number).
    keras : str or Path, optional
        A Keras pickle of the same network: Keras itself (TensorFlow, in a child process) is run
        on the same images and compared.
    test_dir : str or Path, optional
        Instead of CIFAR: a folder of test images, one sub-folder per class (the network's classes,
        sorted by name), resized to ``image_size`` (default: the network's input size).

    Returns
    -------
    dict
        What ``eval.json`` holds: ``top1``, ``top5``, ``loss``, ``per_class``, ... (``weights``:
        the file evaluated, None for a network object).
    """
    evaluation.check_options(batch_size, out)
    if isinstance(model_or_path, NETWORKS) or shortcut_from_raw is False:
        model, source = network(model_or_path)
    else:  # the file's network, with the other shortcut
        model, source = load_model(Path(model_or_path), shortcut_from_raw), str(model_or_path)
    return evaluation.evaluate_model(model, source, dataset=dataset, data_dir=data_dir, out=out, batch_size=batch_size,
                                     device=device, keras_pickle=keras, shortcut_from_raw=shortcut_from_raw,
                                     download=download, amp=amp, test_dir=test_dir, image_size=image_size)


@dataclasses.dataclass(repr=False)
class Report:
    """Runs side by side (what ``train/report.py`` writes); shown inline in Jupyter, figures embedded."""

    html: str  # report.html: a whole page, figures inline
    markdown: str  # report.md (its figures are the PNG files next to it, in ``folder``)
    runs: list  # report.Run: each run's label and metrics
    folder: Path | None  # where the files are; None when nothing was written

    def figures(self) -> dict[str, Figure]:
        """The report's figures by file name (``curves.png``, ``per_class.png``, ``confusion.png``)."""
        return {file: make(self.runs) for file, (_, make) in reporting.FIGURES.items()}

    def __repr__(self):
        return f"Report({', '.join(r.label for r in self.runs)})"

    def _repr_html_(self):
        """The page's body, its style limited to the report (the page's own would restyle the notebook)."""
        body = self.html.split("<body>", 1)[-1].rsplit("</body>", 1)[0]
        style = ("<style>.torch-resnet-report table{border-collapse:collapse}.torch-resnet-report th,"
                 ".torch-resnet-report td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
                 ".torch-resnet-report th:first-child{text-align:left}.torch-resnet-report img{max-width:100%}"
                 "</style>")
        return f'{style}<div class="torch-resnet-report">{body}</div>'


def report(runs_or_folders, *, out: PathLike | None = None) -> Report:
    """Compare finished runs side by side (what ``train/report.py`` does).

    Parameters
    ----------
    runs_or_folders : Run, str or Path, or a list of them
        Runs from ``finetune``, or run folders (each holds the ``metrics.json`` of a finished run).
    out : str or Path, optional
        Also write ``report.md``, ``report.html`` and the figures into this folder.

    Returns
    -------
    Report
        ``.html``, ``.markdown``, ``.figures()``; a notebook shows it inline.
    """
    if isinstance(runs_or_folders, (Run, str, os.PathLike)):
        runs_or_folders = [runs_or_folders]
    folders = [str(r.folder if isinstance(r, Run) else os.fspath(r)) for r in runs_or_folders]
    if out is not None:
        reporting.write_report(folders, out)
    runs = reporting.load_runs(folders)
    markdown, page, _ = reporting.render_report(runs)
    return Report(page, markdown, runs, Path(out) if out is not None else None)


def to_keras(model_or_path: ResidualNetwork | PathLike | Run, path: PathLike, *, keras3_names: bool = False) -> Path:
    """Write the network as a pickle of Keras-named numpy arrays (what ``convert/pt_to_keras_pickle.py``
    does), in the names of the Keras file it came from when they are known, else in fresh Keras 3
    names (``keras3_names=True`` always); a name ending in ``.weights.h5`` is a Keras 3 weights file.
    Returns ``path``."""
    h5 = convert.check_keras_output(path)
    model, source = network(model_or_path)
    if source is not None and Path(path).resolve() in (Path(source).resolve(), names_sidecar(source).resolve()):
        raise UserError(f"to_keras(): {path} is the input state dict or its names file; choose another path")
    arrays, groups, _ = convert.model_to_keras(model, h5, use_source_names=not keras3_names)
    convert.write_keras_arrays(path, arrays, groups)
    return Path(path)
