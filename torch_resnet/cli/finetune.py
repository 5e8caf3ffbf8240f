"""Fine-tune a converted network on CIFAR-10 or an image folder with an explicit PyTorch loop.

    python train/finetune.py --freeze     # backbone fixed, only the new 10-class head trains
    python train/finetune.py              # all convolutions train, BatchNorm frozen, very low lr
    python train/finetune.py --freeze --weights r50.pt --data-dir birds/ --head 1024,200

Outputs in --out (default runs/freeze or runs/full): model.pt, metrics.json, metrics.csv,
curves.png, checkpoint.pt (after every epoch). A stopped run continues with its own options:

    python train/finetune.py --resume --out runs/full
"""
import argparse
from dataclasses import fields

from .shell import ArgumentParser, cli, option_value
from ..training import train
from ..training.checkpoint import resume_config
from ..training.config import AMP_MODES, COMPILE_MODES, DEFAULT_LR, HEAD_LR, RECIPES, TrainConfig


def val_size(text: str) -> float:
    """A fraction below 1, or a whole number of images."""
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def parse_args(argv=None, prog=None) -> TrainConfig:
    d = TrainConfig()
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--freeze", action="store_true", help="train only the new head (frozen backbone)")
    p.add_argument("--weights", default=d.weights, help=f"converted state dict (default {d.weights}, "
                                                         "written by convert/keras_pickle_to_pt.py)")
    p.add_argument("--init-from", default=None, metavar="MODEL_PT",
                   help="full regime only: start from a --freeze run's model.pt (two-stage recipe)")
    add_data_options(p, d)
    p.add_argument("--out", default=None, help="output folder (default runs/freeze or runs/full)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training images")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {DEFAULT_LR['freeze']} for "
                   f"the head with --freeze, {DEFAULT_LR['full']} for the pretrained layers otherwise)")
    p.add_argument("--head-lr", type=float, default=None, help=f"full regime: the head's rate (default {HEAD_LR} "
                   "for a new head, --lr for a head from --init-from)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW's weight decay (--recipe default only)")
    p.add_argument("--recipe", default=d.recipe, metavar="{" + ",".join(RECIPES) + "}",
                   help="the training loop: default (AdamW, cosine decay) or keras (the Keras notebook's loop: "
                        "Keras' Adam rule, constant --lr for every trained tensor, Keras Dense head init; see docs/training.md)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seeds the new head, the validation split, the shuffling and the augmentation")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default=d.amp, metavar="{" + ",".join(AMP_MODES) + "}",
                   help="mixed precision (auto: bf16 on GPUs of compute capability 8.0+, fp16 with a gradient "
                        "scaler on 7.x (T4, V100), fp32 below; on CPUs bf16 where native, else fp32)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="NHWC memory layout (the default: fastest on CPU and CUDA)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="NCHW memory layout (PyTorch's usual one)")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="off: everything eager; a torch.compile mode (" + ", ".join(COMPILE_MODES[1:]) + "; alone: "
                        "default): the trained model in that mode; by default, --freeze compiles its frozen "
                        "backbone with inductor freezing where measured to pay on this CPU (docs/performance.md)")
    p.add_argument("--step-memory", action="store_true",
                   help="measure one training step's memory before training (one extra step, undone)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, with the "
                   "options it was started with (--resume --out DIR is enough)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between loss read-backs")
    args = vars(p.parse_args(argv))
    if not args["resume"]:
        return TrainConfig(**args)
    for action in p._actions:  # parsed again without defaults: only the options given remain
        action.default = argparse.SUPPRESS
    return resume_config(vars(p.parse_args(argv)))


def add_data_options(p: ArgumentParser, d: TrainConfig) -> None:
    """Where the images come from: CIFAR-10, or an image folder (one sub-folder per class)."""
    p.add_argument("--data-dir", default=d.data_dir, help="an image folder (one sub-folder of images per class), or "
                   "the folder holding cifar-10-batches-py/ (downloaded there when absent and a network is available)")
    p.add_argument("--test-dir", default=None, help="image folders: the test images, in the same class sub-folders "
                                                     "(default: a tenth of --data-dir held out)")
    p.add_argument("--val-dir", default=None, help="image folders: the validation images (default: --val-size held out)")
    p.add_argument("--val-size", type=val_size, default=d.val_size,
                   help="training images held out for validation: a fraction (0.1: a tenth) or a count (5000); "
                        "0: none, train on all")
    p.add_argument("--image-size", type=int, default=None, help="image folders: resize images to N x N (default: "
                   "the size recorded with the weights, else 224)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="image folders: skip files that are not readable images (counted in metrics.json)")
    p.add_argument("--head", default=None, metavar="WIDTHS", help="keras.applications ResNets: the new head's Dense "
                   "widths, the last the number of classes (1024,200; default: the converted head's, or one Dense)")
    p.add_argument("--head-dropout", type=float, default=d.head_dropout,
                   help="with --head: a Dropout of this rate before each Dense after the first")
    p.add_argument("--no-download", dest="download", action="store_false", help="never try to download CIFAR-10")


@cli
def main(argv=None, prog=None):
    train.main(parse_args(argv, prog))
    return 0


def flag(field: str) -> str:
    """A field's option: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


def command_line(cfg: TrainConfig) -> list[str]:
    """train/finetune.py's arguments for ``cfg``: the options that differ from the defaults."""
    default, args = TrainConfig(), []
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if value == getattr(default, f.name):
            continue
        if f.name in ("augment", "download", "channels_last") and value is False:
            args.append(flag(f.name).replace("--", "--no-"))
        elif value is True or f.name == "compile" and value == "default":
            args.append(flag(f.name))
        elif value is not None:
            args += option_value(flag(f.name), f"{value:g}" if isinstance(value, float) else value)
    return args
