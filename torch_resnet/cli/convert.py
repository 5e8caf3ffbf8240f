"""Convert Keras weights into a PyTorch state dict: the course's pickle of Keras-named numpy
tensors, a Keras 3 model.save() .keras or save_weights() .weights.h5, or a Keras 2 / tf.keras .h5.

    python convert/keras_pickle_to_pt.py [WEIGHTS] [-o OUT.pt | -o OUT.safetensors] [--verbose]

The input's format is read from its content, not its name; it is read as data (h5py, zipfile, a
restricted unpickler): no Keras, no TensorFlow, no code from the file. Defaults:
weights/resnet_cifar100.pkl -> weights/resnet_cifar100.pt. OUT.pt comes with OUT.pt.keras_names.json
(the Keras names, for convert/pt_to_keras_pickle.py); OUT.safetensors keeps them in its metadata.
Besides the course's network, keras.applications' ResNet50/101/152 and ResNet50V2/101V2/152V2 are
read, with Keras' top, without it, or with Dense/Dropout layers of one's own on top.
"""
import sys
from pathlib import Path

from ..conversion.convert import convert_keras_file, format_report
from ..errors import UserError
from .shell import ArgumentParser, cli
from ..formats.files import DEFAULT_PICKLE, DEFAULT_STATE_DICT
from ..formats.keras_files import converted_name


@cli
def main(argv=None, prog=None):
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="?", default=str(DEFAULT_PICKLE),
                   help=f"Keras weights: pickle, .keras, .weights.h5 or Keras 2 .h5 (default {DEFAULT_PICKLE})")
    p.add_argument("-o", "--out", default=None,
                   help=f"output: a state dict (.pt, default {DEFAULT_STATE_DICT} or the input's name with .pt) "
                        f"or a .safetensors file")
    p.add_argument("--shortcut-from-raw", action="store_true",
                   help="the 1x1 shortcut reads the raw block input (default: the pre-activated one)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list where each Keras tensor went (and every problem of a file that does not fit)")
    args = p.parse_args(argv)
    src = Path(args.weights)
    if not src.is_file():
        hint = (" Put the course's pickle there or pass its path" if args.weights == str(DEFAULT_PICKLE)
                else "")
        raise UserError(f"Keras weights file {src} not found.{hint}")
    out = Path(args.out) if args.out is not None else (DEFAULT_STATE_DICT if args.weights == str(DEFAULT_PICKLE)
                                                       else converted_name(src))
    try:
        arrays, mapping = convert_keras_file(src, out, args.shortcut_from_raw)
    except UserError as e:  # a file that does not fit: the first problem and a count, or all of them
        if not e.more:
            raise
        if not args.verbose:
            raise UserError(f"{e.lines()[0]} (and {len(e.more)} more; -v lists them all)") from None
        print("\n".join(f"error: {line}" for line in e.lines()), file=sys.stderr)
        return 2
    if args.verbose:
        print(format_report(arrays, mapping))
    classes = f"{mapping.num_classes} classes" if mapping.num_classes else "no classifier"
    print(f"converted {len(arrays)} Keras tensors ({classes}) from {src} -> {out}"
          + ("" if args.verbose else " (-v lists where each went)"))
    for line in mapping.summary:  # a keras.applications ResNet: which, with what on top, its inputs
        print(f"  {line}")
    return 0

