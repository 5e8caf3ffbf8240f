#!/usr/bin/env python
"""Compare fine-tuning runs side by side: a Markdown and an HTML report with figures.

The code is torch_resnet/cli/report.py; installed, the same command is ``torch-resnet report``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_resnet.cli import script  # noqa: E402  (light: torch is imported when main runs)

main = script("report")

if __name__ == "__main__":
    sys.exit(main())
