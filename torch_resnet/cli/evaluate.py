"""Evaluate a state dict on the CIFAR test split or on a folder of test images.

    python train/evaluate.py [--weights weights/resnet_cifar100.pt] [--dataset cifar100|cifar10]
        [--data-dir data] [--out DIR] [--batch-size 256] [--device cuda|cpu] [--keras KERAS_FILE]
    python train/evaluate.py --weights runs/birds/model.pt --test-dir birds_test/ [--image-size N]

Prints top-1, top-5, mean cross-entropy and the worst classes. With --out: DIR/eval.json (all
figures, per-class accuracy) and DIR/confusion.png. With --keras: the Keras model itself is run
on the same images with that pickle (TensorFlow, in a child process) and compared.
"""
from pathlib import Path

from ..data.cifar import FORMATS
from .shell import ArgumentParser, cli
from ..training.evaluate import evaluate, format_summary
from ..formats.files import DEFAULT_STATE_DICT


@cli
def main(argv=None, prog=None):
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(DEFAULT_STATE_DICT),
                   help=f"state dict (.pt) from the converter or the trainer (default {DEFAULT_STATE_DICT})")
    p.add_argument("--dataset", choices=sorted(FORMATS), default=None,
                   help="the test set (default: cifar100 for a 100-class head, cifar10 for a 10-class one)")
    p.add_argument("--data-dir", default="data", help="folder holding cifar-100-python/ or cifar-10-batches-py/")
    p.add_argument("--test-dir", default=None, help="instead of CIFAR: a folder of test images, one sub-folder per "
                                                     "class (the classes the network was trained on, sorted by name)")
    p.add_argument("--image-size", type=int, default=None,
                   help="with --test-dir: resize images to N x N (default: the network's own input size)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never try to download the dataset when it is absent")
    p.add_argument("--out", default=None, help="write eval.json and confusion.png into this folder")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--keras", default=None, metavar="KERAS_FILE",
                   help="also run the Keras model with these Keras weights (pickle, .keras, .weights.h5, .h5) "
                        "and report its agreement")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="auto/off: fp32 (exact); bf16/fp16: autocast (about twice as fast on a CPU with native bf16)")
    p.add_argument("--shortcut-from-raw", action="store_true",
                   help="the weights were converted with --shortcut-from-raw")
    args = p.parse_args(argv)
    report = evaluate(args.weights, dataset=args.dataset, data_dir=args.data_dir, out=args.out,
                      batch_size=args.batch_size, device=args.device, keras_pickle=args.keras,
                      shortcut_from_raw=args.shortcut_from_raw, download=args.download, amp=args.amp,
                      test_dir=args.test_dir, image_size=args.image_size)
    print(format_summary(report))
    if args.out:
        print(f"wrote {Path(args.out) / 'eval.json'} and {Path(args.out) / 'confusion.png'}")
    return 0

