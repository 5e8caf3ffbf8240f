#!/usr/bin/env python
"""Convert a state dict of this project back into a pickle of Keras-named numpy arrays.

    python convert/pt_to_keras_pickle.py MODEL.pt -o OUT.pkl [--keras3-names]

Names: those of the pickle the weights came from when MODEL.pt.keras_names.json (written by
convert/keras_pickle_to_pt.py, copied by the trainer) is there, else the Keras 3 paths of
torch_resnet.keras_model.build(num_classes) in a fresh session ("sequential/conv2d/kernel", ...).
Layouts: conv OIHW -> HWIO, Linear (out, in) -> Dense (in, out), BN running stats -> moving_*.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_resnet.convert import export_keras_pickle  # noqa: E402
from torch_resnet.errors import ArgumentParser, cli  # noqa: E402


@cli
def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", help="PyTorch state dict (.pt) of ResidualNetwork, any head width")
    p.add_argument("-o", "--out", required=True, help="output pickle")
    p.add_argument("--keras3-names", action="store_true",
                   help="fresh Keras 3 names even when the source pickle's names are known")
    args = p.parse_args(argv)
    arrays, sidecar = export_keras_pickle(args.weights, args.out, use_source_names=not args.keras3_names)
    naming = f"the source pickle's names (from {sidecar})" if sidecar else "fresh Keras 3 names (keras_model.build)"
    classes = next(a.shape[1] for a in arrays.values() if a.ndim == 2)  # the Dense kernel, (256, classes)
    print(f"wrote {len(arrays)} Keras tensors ({classes} classes) in {naming}: {args.weights} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
