#!/usr/bin/env python
"""import pickle
import sys
from pathlib import Path

The code is torch_resnet/cli/demo.py; installed, the same command is ``torch-resnet demo``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_resnet.cli.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
