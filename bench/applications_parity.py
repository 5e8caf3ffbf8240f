#!/usr/bin/env python
"""All six keras.applications ResNets, every Keras file format, against Keras itself: the figures
behind the README's conversion table (the suite checks ResNet50 and ResNet50V2; this checks all).

    python bench/applications_parity.py [--size 64] [--also 224] [--networks ResNet50,...] [--keep DIR]

Keras (tests/make_keras_applications.py, in a child process) builds each network with seeded
random weights and BatchNorm statistics, saves it as .keras, .weights.h5, Keras 2 .h5 and in the
layout of Keras' ImageNet files, and predicts at --size and at --also x --also. Each file is
converted by the converter's command (a child process, as a user runs it); the converted network's
logits are compared with Keras' at both sizes; the conversion is exported back to .weights.h5,
loaded by Keras into a fresh keras.applications model and run again. Prints one line per file
and a Markdown table: max |dlogit| relative to max |logit|, which must stay under 1e-4.
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import KerasApplications  # noqa: E402  (the suite's driver of the Keras child)
from torch_resnet.applications import SPECS  # noqa: E402
from torch_resnet.cli.shell import ArgumentParser  # noqa: E402
from torch_resnet.formats.files import load_model  # noqa: E402

FORMATS = (".keras", ".weights.h5", ".h5", "_imagenet_layout.h5")
TOL = 1e-4


def relative_gap(ours, keras) -> float:
    return float(np.abs(ours - keras).max() / np.abs(keras).max())


def logits_of(model, x_nhwc) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def check(child, folder: Path, name: str, size: int, also: int) -> list[tuple]:
    """(file, relative gap at size, at also, of the export back) for each format of ``name``."""
    child.wait_for(name)
    with np.load(folder / f"{name}_outputs.npz") as saved:
        ref = {k: saved[k] for k in saved.files}
    rows = []
    for fmt in FORMATS:
        src, pt = folder / f"{name}{fmt}", folder / f"{name}{fmt}.pt"
        subprocess.run([sys.executable, ROOT / "convert/keras_pickle_to_pt.py", src, "-o", pt], check=True,
                       stdout=subprocess.DEVNULL)
        model = load_model(pt)
        small = relative_gap(logits_of(model, ref["x"]), ref["logits"])
        large = relative_gap(logits_of(model, ref[f"x_{also}x{also}"]), ref[f"logits_{also}x{also}"])
        back = folder / f"{name}{fmt}.back.weights.h5"
        subprocess.run([sys.executable, ROOT / "convert/pt_to_keras_pickle.py", pt, "-o", back], check=True,
                       stdout=subprocess.DEVNULL)
        exported = relative_gap(child.load(name, back, folder / f"{name}_outputs.npz"), ref["logits"])
        rows.append((f"{name}{fmt}", small, large, exported))
        print(f"{name}{fmt}: {size}x{size} {small:.1e}, {also}x{also} {large:.1e}, exported back {exported:.1e}",
              flush=True)
        for path in (pt, back, back.with_suffix(".logits.npz")):
            path.unlink(missing_ok=True)
    return rows


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="the side of the images Keras builds and runs the networks at")
    p.add_argument("--also", type=int, default=224, help="a second side the converted networks are run at")
    p.add_argument("--networks", default=",".join(SPECS), help="which networks, comma-separated")
    p.add_argument("--keep", type=Path, default=None, help="keep Keras' files in this folder (default: a temporary one)")
    args = p.parse_args(argv)
    names = args.networks.split(",")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="applications-parity-"))
    folder.mkdir(parents=True, exist_ok=True)
    child = KerasApplications(folder, "--size", args.size, "--classes", 10,
                              *(f"--also={n}:{args.also}x{args.also}" for n in names),
                              *(f"--files={n}" for n in names), *(f"{n}:avg" for n in names))
    try:
        rows = [row for name in names for row in check(child, folder, name, args.size, args.also)]
    finally:
        child.close()
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n| file | {args.size}x{args.size} | {args.also}x{args.also} | exported back |\n|---|---|---|---|")
    for file, *gaps in rows:
        print(f"| {file} | " + " | ".join(f"{g:.1e}" for g in gaps) + " |")
    worst = max(max(gaps) for _, *gaps in rows)
    print(f"\nworst max|dlogit| / max|logit|: {worst:.1e} (bound {TOL:.0e})")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
