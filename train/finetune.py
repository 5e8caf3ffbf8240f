#!/usr/bin/env python
"""Fine-tune the course's network on CIFAR-10: --freeze (backbone fixed, head trained) or the
full regime (every weight trained, BatchNorm frozen, a very low learning rate).

The code is torch_resnet/cli/finetune.py; installed, the same command is ``torch-resnet finetune``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_resnet.cli import script  # noqa: E402  (light: torch is imported when main runs)

main = script("finetune")

if __name__ == "__main__":
    sys.exit(main())
