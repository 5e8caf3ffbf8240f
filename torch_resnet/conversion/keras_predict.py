"""Logits of the Keras reference model, computed in a child process.

    python -m torch_resnet.conversion.keras_predict WEIGHTS.pkl INPUTS.npy OUT.npy [--shortcut-from-raw]

WEIGHTS.pkl: Keras arrays in fresh Keras 3 naming (``default_keras_names``, as written by
``convert/pt_to_keras_pickle.py --keras3-names``), loaded by exact ``Variable.path`` into
``keras_model.build(num_classes)`` in a new session. INPUTS.npy: float32 N x 32 x 32 x 3, the
network's input in Keras' layout (``model.images_to_input``, then NHWC): both frameworks get the
very same numbers. OUT.npy: float32 N x num_classes, inference mode.

TensorFlow and PyTorch computing in one process get in each other's way (threads, memory), so
the torch side calls ``keras_logits``, which runs this module with ``python -m``.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..cli.shell import ArgumentParser, cli
from ..model import images_to_input
from ..formats.safe_pickle import load_array_dict


def keras_logits(arrays: dict[str, np.ndarray], images: np.ndarray, shortcut_from_raw: bool = False,
                 batch_size: int = 256) -> np.ndarray:
    """Run the Keras model with ``arrays`` (fresh Keras 3 names) on uint8 NCHW ``images``."""
    with tempfile.TemporaryDirectory(prefix="keras_predict_") as tmp:
        tmp = Path(tmp)
        (tmp / "weights.pkl").write_bytes(pickle.dumps(arrays, protocol=4))
        np.save(tmp / "inputs.npy", images_to_input(torch.from_numpy(images)).permute(0, 2, 3, 1).numpy())
        cmd = [sys.executable, "-m", __name__, tmp / "weights.pkl", tmp / "inputs.npy", tmp / "logits.npy",
               "--batch-size", str(batch_size)] + ["--shortcut-from-raw"] * shortcut_from_raw
        root = str(Path(__file__).resolve().parents[1])  # importable without an install
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env)
        if r.returncode != 0:
            lines = [l for l in r.stderr.splitlines() if l.strip()]
            last = lines[-1].removeprefix("error: ") if lines else f"exit status {r.returncode}"
            raise UserError(f"the Keras run failed: {last}")
        return np.load(tmp / "logits.npy")


@cli
def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights")
    p.add_argument("inputs")
    p.add_argument("out")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shortcut-from-raw", action="store_true")
    args = p.parse_args(argv)
    arrays = load_array_dict(args.weights)
    x = np.load(args.inputs)
    if x.dtype != np.float32 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise UserError(f"{args.inputs}: expected float32 N x 32 x 32 x 3 inputs, got {x.dtype} {x.shape}")
    kernels = [a for a in arrays.values() if a.ndim == 2]  # the Dense kernel, (256, classes)
    if len(kernels) != 1:
        raise UserError(f"{args.weights}: expected exactly one Dense kernel, found {len(kernels)}")

    from .. import keras_model as km  # imports TensorFlow

    km.keras.backend.clear_session()  # layer numbers from 0: the paths of default_keras_names
    model = km.build(kernels[0].shape[1], shortcut_from_raw=args.shortcut_from_raw)
    paths = [v.path for v in model.weights]
    if set(paths) != set(arrays):
        odd = sorted(set(paths) ^ set(arrays))[0]
        raise UserError(f"{args.weights}: not in fresh Keras 3 naming (e.g. {odd!r}); "
                        f"export it with convert/pt_to_keras_pickle.py --keras3-names")
    try:
        km.load_weights_dict(model, arrays)
    except ValueError as e:
        raise UserError(f"{args.weights}: {' '.join(str(e).split())[:200]}") from None
    logits = [np.asarray(model(x[i:i + args.batch_size], training=False)) for i in range(0, len(x), args.batch_size)]
    np.save(args.out, np.concatenate(logits).astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
