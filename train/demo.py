#!/usr/bin/env python
"""The whole pipeline end to end, offline: convert, fine-tune in both regimes, evaluate, report
(on stand-ins where the course's files are not found).

The code is torch_resnet/cli/demo.py; installed, the same command is ``torch-resnet demo``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_resnet.cli import script  # noqa: E402  (light: torch is imported when main runs)

main = script("demo")

if __name__ == "__main__":
    sys.exit(main())
