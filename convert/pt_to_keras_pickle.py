#!/usr/bin/env python
"""Convert a state dict of this project back into Keras weights: a Keras 3 weights file
(OUT.weights.h5, for model.load_weights) or a pickle of Keras-named numpy arrays (any other name).

The code is torch_resnet/cli/export.py; installed, the same command is ``torch-resnet export``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_resnet.cli import script  # noqa: E402  (light: torch is imported when main runs)

main = script("export")

if __name__ == "__main__":
    sys.exit(main())
