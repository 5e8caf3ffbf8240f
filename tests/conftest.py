import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = []  # (what, value) lines printed at the end of the run


def run_script(script, *args, timeout=600, env=None):
    """Run one of the project's scripts the way a user does; returns CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def keras_fixtures(tmp_path_factory):
    """Pickles and Keras outputs made by a real Keras model, in a subprocess (no TF in pytest)."""
    out = tmp_path_factory.mktemp("keras")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "make_keras_fixtures.py"), str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def setup(keras_fixtures, tmp_path_factory):
    """Converted weights and a small CIFAR-10-format data set, for the fine-tuning tests."""
    from torch_resnet.convert import convert_pickle
    from torch_resnet.data import CIFAR10
    from torch_resnet.synthetic import write_cifar

    root = tmp_path_factory.mktemp("finetune")
    weights = root / "weights.pt"
    convert_pickle(keras_fixtures / "keras3.pkl", weights)
    write_cifar(root / "data", CIFAR10, train_size=160, test_size=80, seed=5)
    return root, weights


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("measured figures")
        for what, value in FIGURES:
            terminalreporter.write_line(f"{what}: {value}")
