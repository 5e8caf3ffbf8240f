#!/usr/bin/env python
"""The whole pipeline end to end, offline: Keras pickle -> PyTorch -> fine-tune on CIFAR-10 (both regimes).

Uses the real things when they are in their default places:
  weights/resnet_cifar100.pkl   the course's Keras pickle (converted to weights/resnet_cifar100.pt)
  data/cifar-10-batches-py/     the extracted CIFAR-10 python version
and otherwise stand-ins made on the spot, in the same formats, under demo/:
  a Keras-named pickle of the reference network (PyTorch init, BN statistics measured on the data)
  a small learnable data set written as CIFAR-10 python batches.
"""
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from torch_resnet import ResidualNetwork, images_to_input, train  # noqa: E402
from torch_resnet.config import TrainConfig  # noqa: E402
from torch_resnet.convert import convert_pickle, state_dict_to_keras  # noqa: E402
from torch_resnet.data import CIFAR10, load_cifar  # noqa: E402
from torch_resnet.errors import ArgumentParser, cli  # noqa: E402
from torch_resnet.files import DEFAULT_PICKLE, DEFAULT_STATE_DICT, atomic_write  # noqa: E402
from torch_resnet.synthetic import write_cifar  # noqa: E402

DEMO = Path("demo")


def stand_in_pickle(data_dir: Path, path: Path) -> None:
    """A Keras-format pickle of the network, with BN statistics that fit the data."""
    torch.manual_seed(0)
    model = ResidualNetwork(100)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    images = load_cifar(data_dir, CIFAR10, "train", download=False).images[:500]
    with torch.no_grad():
        model.train()(images_to_input(images))
    arrays = state_dict_to_keras(model.state_dict())
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(pickle.dumps(arrays, protocol=4)))


@cli
def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs-freeze", type=int, default=3)
    p.add_argument("--epochs-full", type=int, default=2)
    args = p.parse_args(argv)

    real_data = (Path("data") / CIFAR10.folder).is_dir()
    data_dir = Path("data") if real_data else DEMO / "data"
    if not real_data:
        write_cifar(data_dir, CIFAR10, train_size=1200, test_size=400, seed=0)
        print(f"[data] no data/{CIFAR10.folder}: wrote a small learnable stand-in in CIFAR-10 format to {data_dir}")
    else:
        print(f"[data] using the real CIFAR-10 in data/{CIFAR10.folder}")

    if DEFAULT_PICKLE.is_file():
        pickle_path, weights = DEFAULT_PICKLE, DEFAULT_STATE_DICT
        print(f"[weights] converting the course pickle {DEFAULT_PICKLE}")
    else:
        pickle_path, weights = DEMO / "stand_in_keras_weights.pkl", DEMO / "stand_in_weights.pt"
        stand_in_pickle(data_dir, pickle_path)
        print(f"[weights] no {DEFAULT_PICKLE}: made a Keras-format stand-in at {pickle_path}")
    arrays, mapping = convert_pickle(pickle_path, weights)
    print(f"[convert] {len(arrays)} Keras tensors -> {weights} ({mapping.num_classes} classes)")

    val = 200 if not real_data else 5000
    common = dict(weights=str(weights), data_dir=str(data_dir), val_size=val, overwrite=True, download=False,
                  batch_size=100 if not real_data else 256)
    print("\n[1/2] frozen backbone, new head (python train/finetune.py --freeze)")
    frozen = train.main(TrainConfig(freeze=True, epochs=args.epochs_freeze, out=str(DEMO / "freeze"),
                             lr=None if real_data else 0.03, **common))
    print("\n[2/2] full fine-tuning from the frozen run, BatchNorm frozen, very low lr "
          "(python train/finetune.py --init-from runs/freeze/model.pt)")
    full = train.main(TrainConfig(freeze=False, epochs=args.epochs_full, out=str(DEMO / "full"),
                           init_from=str(DEMO / "freeze" / "model.pt"), **common))
    print(f"\nresults on the {'real' if real_data else 'stand-in'} CIFAR-10 test set: "
          f"freeze {frozen['test_accuracy']:.3f}, full {full['test_accuracy']:.3f} "
          f"(outputs in {DEMO}/freeze and {DEMO}/full)")
    if not real_data or not DEFAULT_PICKLE.is_file():
        print(f"for the real thing: put the course pickle at {DEFAULT_PICKLE} and extract CIFAR-10 into "
              f"data/ (or let train/finetune.py download it), then run python convert/keras_pickle_to_pt.py "
              f"and python train/finetune.py --freeze / python train/finetune.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
