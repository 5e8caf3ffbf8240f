"""Convert a state dict of this project back into Keras weights: a Keras 3 weights file
(OUT.weights.h5, for model.load_weights) or a pickle of Keras-named numpy arrays (any other name).

    python convert/pt_to_keras_pickle.py MODEL.pt -o OUT.weights.h5 [--keras3-names]
    python convert/pt_to_keras_pickle.py MODEL.pt -o OUT.pkl [--keras3-names]

MODEL may be a .pt or a .safetensors file. Structure and names: those of the Keras file the
weights came from (kept by convert/keras_pickle_to_pt.py in MODEL.pt.keras_names.json or in the
safetensors metadata, and copied by the trainer): a .weights.h5 from a Keras 3 file is laid out
as that file was, so the author's own model class loads it. Without them (or with --keras3-names),
those of torch_resnet.keras_model.build(num_classes) in a fresh Keras 3 session (for a
keras.applications ResNet: those of keras.applications.NAME(weights=None), with its head).
Layouts: conv OIHW -> HWIO, Linear (out, in) -> Dense (in, out), BN running stats -> moving_*.
"""

from ..conversion.convert import export_keras_file
from .shell import ArgumentParser, cli


@cli
def main(argv=None, prog=None):
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("weights", help="state dict (.pt or .safetensors) written by this project")
    p.add_argument("-o", "--out", required=True, help="output: NAME.weights.h5 (Keras 3) or a pickle")
    p.add_argument("--keras3-names", action="store_true",
                   help="the names and structure of keras_model.build even when the source file's are known")
    args = p.parse_args(argv)
    arrays, source, fresh = export_keras_file(args.weights, args.out, use_source_names=not args.keras3_names)
    h5 = args.out.endswith(".weights.h5")
    naming = (f"the source file's {'structure' if h5 else 'names'} (from {source})" if source
              else f"{'the structure of' if h5 else 'fresh Keras 3 names of'} {fresh}")
    dense = [a.shape[1] for a in arrays.values() if a.ndim == 2]  # Dense kernels (in, out): the last gives the classes
    classes = f"{dense[-1]} classes" if dense else "no classifier"
    print(f"wrote {len(arrays)} Keras tensors ({classes}) in {naming}: {args.weights} -> {args.out}")
    return 0

