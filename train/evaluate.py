#!/usr/bin/env python
"""Evaluate a ResidualNetwork state dict on the CIFAR test split.

The code is torch_resnet/cli/evaluate.py; installed, the same command is ``torch-resnet evaluate``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_resnet.cli import script  # noqa: E402  (light: torch is imported when main runs)

main = script("evaluate")

if __name__ == "__main__":
    sys.exit(main())
