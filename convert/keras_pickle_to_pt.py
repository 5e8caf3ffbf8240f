#!/usr/bin/env python
"""Convert Keras weights into a PyTorch state dict: the course's pickle of Keras-named numpy
tensors, a Keras 3 model.save() .keras or save_weights() .weights.h5, or a Keras 2 / tf.keras .h5.

The code is torch_resnet/cli/convert.py; installed, the same command is ``torch-resnet convert``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_resnet.cli import script  # noqa: E402  (light: torch is imported when main runs)

main = script("convert")

if __name__ == "__main__":
    sys.exit(main())
