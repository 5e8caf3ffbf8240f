"""The package as it is handed out: ``python -m build`` makes an sdist and, from that sdist, a wheel;
``twine check`` accepts both, and the wheel installs and runs in a fresh virtual environment."""
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from filelock import FileLock

from conftest import ROOT

pytestmark = pytest.mark.slow  # python -m build, fresh interpreters, a venv

VERSION = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]  # no tomllib on 3.10
COMMANDS = ("convert", "finetune", "evaluate", "report", "export", "demo")


def checkout_files():
    """The checkout's files as git sees them (tracked, or new and not ignored), relative to ROOT."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def build_dists(tmp_path_factory):
    """(wheel, sdist) that ``python -m build`` makes from a copy of the checkout (so the build writes
    nothing into it: no build/, no .egg-info), once per test session, shared by pytest-xdist's workers."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    dist = root / "dists"
    with FileLock(str(root / "dists.lock")):
        if not dist.is_dir():
            src, out = root / "dists_src", root / "dists_building"
            shutil.rmtree(src, ignore_errors=True)
            for name in checkout_files():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, src / name)
            # --no-isolation: setuptools from this environment, no download
            r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            out.rename(dist)
    return dist / f"torch_resnet-{VERSION}-py3-none-any.whl", dist / f"torch_resnet-{VERSION}.tar.gz"


def test_public_names_are_listed_and_imported_on_first_use(tmp_path):
    check = ("import sys, torch_resnet as tr\n"
             "assert 'torch' not in sys.modules, 'import torch_resnet imported torch'\n"
             "assert set(tr.__all__) <= set(dir(tr)), set(tr.__all__) - set(dir(tr))\n"
             "print(tr.CIFAR10.name, tr.describe_training('cpu', 'off'), *(getattr(tr, n).__name__ for n in tr.__all__"
             " if n not in ('CIFAR10', 'CIFAR100')))")
    r = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("cifar10 cpu, fp32, channels_last"), r.stdout + r.stderr


@pytest.mark.slow
def test_wheel_and_sdist_pass_twine_and_the_wheel_runs_in_a_fresh_venv(tmp_path_factory, tmp_path):
    wheel, sdist = build_dists(tmp_path_factory)  # the wheel is built from the sdist: the sdist suffices
    assert wheel.is_file() and sdist.is_file(), sorted(os.listdir(wheel.parent))
    r = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("PASSED") == 2, r.stdout + r.stderr

    package = {n for n in checkout_files() if n.startswith("torch_resnet/") and n.endswith((".py", ".json"))}
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert package <= in_wheel, package - in_wheel
    assert {n.split("/")[0] for n in in_wheel} == {"torch_resnet", f"torch_resnet-{VERSION}.dist-info"}, in_wheel
    with tarfile.open(sdist) as tar:
        in_sdist = {n.partition("/")[2] for n in tar.getnames()}
    assert package | {"pyproject.toml", "README.md", "PKG-INFO"} <= in_sdist

    venv = tmp_path / "venv"  # no system site packages, no pip of its own: this pip installs into it
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                        "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*argv):
        return subprocess.run([str(a) for a in argv], cwd=tmp_path, capture_output=True, text=True, env=env,
                              timeout=120)

    r = run(venv / "bin" / "python", "-c", "import torch")
    assert r.returncode == 1 and "No module named 'torch'" in r.stderr  # so the command below imports none
    r = run(venv / "bin" / "torch-resnet", "--help")
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert all(f"  {c} " in r.stdout for c in COMMANDS), r.stdout
    r = run(venv / "bin" / "torch-resnet", "--version")
    assert r.returncode == 0 and r.stdout == f"torch-resnet {VERSION}\n", r.stdout + r.stderr
    r = run(venv / "bin" / "python", "-c", "import torch_resnet; print(torch_resnet.__file__)")
    assert r.stdout.startswith(str(venv)), r.stdout + r.stderr  # the installed copy, not the checkout
