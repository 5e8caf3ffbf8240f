"""The installed ``torch-resnet`` command: built and installed normally (not editable) into a
folder of its own, it runs every step from any folder, with the scripts' options and errors."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL, assert_refused, stop_in_epoch
from torch_resnet import cli


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package as ``pip install`` builds it from a copy of the sources (the build writes
    nothing into the checkout): its folder, with bin/torch-resnet."""
    root = tmp_path_factory.mktemp("install")
    shutil.copytree(ROOT / "torch_resnet", root / "src" / "torch_resnet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, root / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-compile", "--target", str(root / "site"), str(root / "src")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "site"


def command(site, *args, cwd):
    return subprocess.run([str(site / "bin" / "torch-resnet"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(site)})


@pytest.mark.slow
def test_installed_command_runs_every_step_from_any_folder(installed, setup, tmp_path):
    where = "import importlib.util; print(importlib.util.find_spec('torch_resnet').origin)"  # torch not imported
    r = subprocess.run([sys.executable, "-c", where], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(installed)})
    assert r.stdout.startswith(str(installed)), r.stdout  # what `import torch_resnet` takes: the installed copy
    r = command(installed, "convert", setup[0] / "keras3.pkl", "-o", "w.pt", cwd=tmp_path)  # a Keras-named pickle
    assert r.returncode == 0 and (tmp_path / "w.pt").is_file(), r.stderr
    r = command(installed, "finetune", "--freeze", "--weights", "w.pt", "--data-dir", setup[0] / "data", "--out", "run",
                "--epochs", 1, "--batch-size", SMALL["batch_size"], "--val-size", SMALL["val_size"], "--device", "cpu",
                "--amp", "off", "--no-download", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "run" / "metrics.json").is_file(), r.stderr
    r = command(installed, "finetune", "--resume", "--out", "run", cwd=tmp_path)  # the scripts' one-line errors
    assert_refused(r.returncode, r.stderr, "holds a finished run")


def test_command_in_process(capsys, tmp_path):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c} " in out for c in ("convert", "finetune", "evaluate", "report", "export", "demo")), out
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    assert capsys.readouterr().out.startswith("usage: torch-resnet finetune")
    assert cli.main(["fine-tune"]) == 2
    assert_refused(2, capsys.readouterr().err, "'fine-tune' is not a command of torch-resnet")


def test_printed_commands_name_the_command_it_was_run_as(setup, capsys, monkeypatch):
    stop_in_epoch(monkeypatch, 1)
    rc = cli.main(["finetune", "--freeze", "--weights", setup[1], "--data-dir", setup[0] / "data", "--out", "my run",
                   "--epochs", 2, "--batch-size", SMALL["batch_size"], "--device", "cpu", "--no-download"])
    err = capsys.readouterr().err
    assert rc == 130 and err.strip().endswith("continue it with: torch-resnet finetune --resume --out 'my run'"), err
