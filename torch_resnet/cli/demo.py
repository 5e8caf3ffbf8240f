"""The whole pipeline end to end, offline: Keras pickle -> PyTorch -> fine-tune on CIFAR-10 (both regimes).

Uses the real things when they are in their default places:
  weights/resnet_cifar100.pkl   the course's Keras pickle (converted to weights/resnet_cifar100.pt)
  data/cifar-10-batches-py/     the extracted CIFAR-10 python version
and otherwise stand-ins made on the spot, in the same formats, under demo/:
  a Keras-named pickle of the reference network (PyTorch init, BN statistics measured on the data)
  a small learnable data set written as CIFAR-10 python batches.
"""
import sys
from pathlib import Path

from ..training import train
from ..training.config import TrainConfig
from .finetune import command_line
from ..conversion.convert import convert_pickle
from ..data.cifar import CIFAR10
from ..errors import UserError
from .shell import ArgumentParser, cli, shell_command
from ..formats.files import DEFAULT_PICKLE, DEFAULT_STATE_DICT
from ..reporting.report import write_report
from ..data.synthetic import write_cifar, write_stand_in_keras_pickle

DEMO = Path("demo")


def python() -> str:
    """How to call this interpreter from here: .venv/bin/python when it is the project's venv."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return "python"


def shell(script: str, args: list[str]) -> str:
    return shell_command(script, args, python())


@cli
def main(argv=None, prog=None):
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs-freeze", type=int, default=3, help="epochs of the frozen-backbone run")
    p.add_argument("--epochs-full", type=int, default=2, help="epochs of the full fine-tuning run")
    p.add_argument("--stand-in-images", type=int, default=1200,
                   help="training images of the stand-in data set (made when data/ holds no CIFAR-10)")
    args = p.parse_args(argv)
    if args.stand_in_images < 20:
        raise UserError(f"--stand-in-images must be at least 20, got {args.stand_in_images}")

    real_data = (Path("data") / CIFAR10.folder).is_dir()
    data_dir = Path("data") if real_data else DEMO / "data"
    if not real_data:
        write_cifar(data_dir, CIFAR10, train_size=args.stand_in_images, test_size=args.stand_in_images // 3, seed=0)
        print(f"[data] no data/{CIFAR10.folder}: wrote a small learnable stand-in in CIFAR-10 format to {data_dir}")
    else:
        print(f"[data] using the real CIFAR-10 in data/{CIFAR10.folder}")

    real_weights = DEFAULT_PICKLE.is_file()
    if real_weights:
        pickle_path, weights = DEFAULT_PICKLE, DEFAULT_STATE_DICT
        print(f"[weights] converting the course pickle {DEFAULT_PICKLE}")
    else:
        pickle_path, weights = DEMO / "stand_in_keras_weights.pkl", DEMO / "stand_in_weights.pt"
        write_stand_in_keras_pickle(data_dir, pickle_path)
        print(f"[weights] no {DEFAULT_PICKLE}: made a Keras-format stand-in at {pickle_path}")
    arrays, mapping = convert_pickle(pickle_path, weights)
    print(f"[convert] {len(arrays)} Keras tensors -> {weights} ({mapping.num_classes} classes)")

    # The demo's own choices, all visible in the commands it prints: a short run, and on the
    # stand-in network (not pretrained) a higher head rate than the default 1e-3 for the course's.
    common = dict(weights=str(weights), data_dir=str(data_dir), overwrite=True, download=False,
                  batch_size=256 if real_data else 100)
    runs = [TrainConfig(freeze=True, epochs=args.epochs_freeze, out=str(DEMO / "freeze"),
                        lr=None if real_weights else 0.03, **common),
            TrainConfig(epochs=args.epochs_full, out=str(DEMO / "full"), init_from=str(DEMO / "freeze" / "model.pt"),
                        **common)]
    titles = ["frozen backbone, new head", "full fine-tuning from the frozen run's model, BatchNorm frozen"]
    results = []
    for i, (cfg, title) in enumerate(zip(runs, titles)):
        print(f"\n[{i + 1}/2] {title}\n$ {shell('train/finetune.py', command_line(cfg))}")
        results.append(train.main(cfg))
    folders = [str(cfg.out_dir) for cfg in runs]
    report = write_report(folders, DEMO / "report")
    print(f"\n[report] $ {shell('train/report.py', [*folders, '-o', str(DEMO / 'report')])}")
    print(f"results on the {'real' if real_data else 'stand-in'} CIFAR-10 test set: freeze "
          f"{results[0]['test_accuracy']:.1%}, full {results[1]['test_accuracy']:.1%}; both side by side in "
          f"{report} and {report.with_suffix('.html')} (open it in a browser)")
    next_steps(weights, data_dir, results, real_weights and real_data)
    return 0


def next_steps(weights: Path, data_dir: Path, results: list[dict], real: bool) -> None:
    """The commands to run next, with the trainer's defaults (10 epochs), on what the demo used."""
    own_weights = [] if weights == DEFAULT_STATE_DICT else ["--weights", str(weights)]
    own_data = [] if data_dir == Path("data") else ["--data-dir", str(data_dir)]
    minutes = [TrainConfig().epochs * r["train_images"] / (sum(e["images_per_sec"] for e in r["epochs"])
                                                             / len(r["epochs"])) / 60 for r in results]
    print(f"\nnext: the same two regimes with the trainer's defaults (10 epochs, learning rates in --help) on "
          f"{'the real weights and data' if real else 'the files the demo used'}; at this machine's speed about "
          f"{minutes[0]:.0f} and {minutes[1]:.0f} minutes:")
    print(f"  {shell('train/finetune.py', ['--freeze', *own_weights, *own_data, '--out', 'runs/freeze'])}")
    print(f"  {shell('train/finetune.py', ['--init-from', 'runs/freeze/model.pt', *own_data, '--out', 'runs/full'])}")
    print(f"  {shell('train/report.py', ['runs/freeze', 'runs/full', '-o', 'report'])}")
    print(f"  {shell('train/evaluate.py', ['--weights', 'runs/full/model.pt', *own_data, '--out', 'runs/eval_full'])}")
    print(f"  {shell('convert/pt_to_keras_pickle.py', ['runs/full/model.pt', '-o', 'model_keras.pkl'])}")
    print(f"a run stopped before its end (Ctrl-C) continues where it was with\n  "
          f"{shell('train/finetune.py', ['--resume', '--out', 'runs/full'])}")
    if not real:
        print(f"for the course's results: put its pickle at {DEFAULT_PICKLE}, convert it with\n  "
              f"{shell('convert/keras_pickle_to_pt.py', [])}\nand run the commands above without --weights and "
              f"--data-dir (the first training run downloads CIFAR-10 into data/; offline, extract "
              f"cifar-10-python.tar.gz there)")

