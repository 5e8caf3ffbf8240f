"""notebooks/course.ipynb runs top to bottom, as a student's kernel runs it, on the stand-ins: on a
machine where torch_resnet is not installed, its first cell installs the wheel that lies next to it
(Colab), or says in one sentence what to do."""
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT
from test_package import VERSION, build_dists, checkout_files

pytestmark = pytest.mark.slow  # a notebook's kernel, its cells in fresh interpreters, pip

NOTEBOOK = ROOT / "notebooks" / "course.ipynb"
# The copy of torch_resnet this environment imports (the checkout, installed editable): hidden below.
CHECKOUT_COPY = Path(importlib.util.find_spec("torch_resnet").origin).parent
HIDE = '''"""A copy of torch_resnet ({hidden}) is not found here, as where it is not installed: every import
finder is wrapped so as not to find it; torch and the rest are found as before."""
import sys

HIDDEN = {hidden!r}


class Hide:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        spec = self.finder.find_spec(name, path, target)
        hidden = name.partition(".")[0] == "torch_resnet" and (spec and spec.origin or "").startswith(HIDDEN)
        return None if hidden else spec

    def __getattr__(self, name):  # invalidate_caches, find_distributions
        return getattr(self.finder, name)


sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
'''
INSTRUCTION = (f"torch_resnet is not installed: upload its wheel torch_resnet-{VERSION}-py3-none-any.whl (built in "
               "the repository with `pip wheel --no-deps . -w dist`) next to this notebook, or set PACKAGE_GIT_URL, "
               "and run this cell again.")


def without_torch_resnet(folder):
    """(environment variables, site): a Python started with them does not find the checkout's
    torch_resnet (a sitecustomize on PYTHONPATH hides it) and its pip installs into ``site``, a
    folder on its sys.path, empty so far, as Colab's pip installs into its site-packages, but
    offline: no dependencies (this environment has them, as Colab has), no index."""
    hide, site = folder / "hide", folder / "site"
    hide.mkdir(parents=True)
    site.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE.format(hidden=str(CHECKOUT_COPY) + os.sep))
    path = [str(hide), str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path), "PIP_TARGET": str(site), "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_BUILD_ISOLATION": "0"}, site  # "0": pip's inverted spelling of --no-build-isolation


def install_cell():
    cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    assert "PACKAGE_GIT_URL = \"\"" in cell.source  # one variable, empty as stored
    return cell.source


def run_cell(source, cwd, env=None):
    """The cell in a fresh interpreter (it uses no IPython magic), in ``cwd``, as Jupyter runs it there."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-c", source], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_install_cell_does_nothing_where_installed_and_says_what_to_do_where_nothing_is_found(tmp_path):
    r = run_cell(install_cell(), tmp_path / "installed")
    assert r.returncode == 0 and r.stdout == r.stderr == "", r.stdout + r.stderr
    env, site = without_torch_resnet(tmp_path / "machine")
    r = run_cell("import torch_resnet", tmp_path / "bare", env)
    assert r.stderr.endswith("ModuleNotFoundError: No module named 'torch_resnet'\n"), r.stderr  # hidden indeed
    r = run_cell(install_cell(), tmp_path / "bare", env)  # nothing uploaded, no address
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and r.stdout == "" and lines[-1] == f"ModuleNotFoundError: {INSTRUCTION}", r.stderr
    assert all(line.startswith('  File "<string>"') for line in lines if line.lstrip().startswith("File ")), r.stderr
    assert not os.listdir(site)  # pip never ran
    (tmp_path / "bare" / f"torch_resnet-{VERSION}-py3-none-any.whl").write_bytes(b"not a zip")  # pip refuses it
    r = run_cell(install_cell(), tmp_path / "bare", env)
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and r.stdout == f"installing torch_resnet from ./torch_resnet-{VERSION}-py3-none-any.whl\n"
    assert lines[-1] == (f"ModuleNotFoundError: torch_resnet could not be installed from ./torch_resnet-{VERSION}-"
                         "py3-none-any.whl: pip's output is above.") and "ERROR: " in r.stderr, r.stderr
    assert all(line.startswith('  File "<string>"') for line in lines if line.lstrip().startswith("File ")), r.stderr


def test_install_cell_builds_from_a_zip_of_the_sources_or_from_the_git_address(tmp_path, tmp_path_factory):
    sources = tmp_path / "torch_resnet-main"  # what GitHub's "Download ZIP" holds
    for name in checkout_files():
        if name.startswith("torch_resnet/") or name in ("pyproject.toml", "README.md"):
            (sources / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, sources / name)
    shutil.make_archive(str(tmp_path / "upload" / "torch_resnet-main"), "zip", tmp_path, sources.name)
    env, site = without_torch_resnet(tmp_path / "machine1")
    r = run_cell(install_cell(), tmp_path / "upload", env)
    assert r.returncode == 0 and r.stdout == "installing torch_resnet from ./torch_resnet-main.zip\n", r.stderr
    assert (site / "torch_resnet" / "__init__.py").is_file() and (site / "bin" / "torch-resnet").is_file()

    git = ["git", "-C", str(sources), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "sources"]):
        subprocess.run(git + argv, check=True, capture_output=True, timeout=60)
    source = install_cell().replace('PACKAGE_GIT_URL = ""', f'PACKAGE_GIT_URL = "file://{sources}"')
    env, site = without_torch_resnet(tmp_path / "machine2")
    r = run_cell(source, tmp_path / "empty", env)
    assert r.returncode == 0 and r.stdout == f"installing torch_resnet from git+file://{sources}\n", r.stderr
    assert (site / "torch_resnet" / "__init__.py").is_file()


def test_course_notebook_installs_the_wheel_beside_it_and_runs_to_the_end(tmp_path, tmp_path_factory, monkeypatch):
    """The issue's acceptance: run unchanged where torch_resnet is not installed but a wheel built from
    the repository lies next to it (and its sdist: the wheel is taken), it installs it and runs to the end."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "store the notebook without outputs"
    assert "parameters" in code[1].metadata.get("tags", [])  # right after the install cell
    here = tmp_path / "content"
    here.mkdir()
    for dist in build_dists(tmp_path_factory):
        shutil.copy(dist, here)
    env, site = without_torch_resnet(tmp_path / "machine")
    for name, value in {**env, "TORCH_RESNET_FAST": "1"}.items():
        monkeypatch.setenv(name, value)
    nb.cells.append(nbformat.v4.new_code_cell("print('torch_resnet:', tr.__file__)"))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(here)}}).execute()
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert text.startswith(f"installing torch_resnet from ./torch_resnet-{VERSION}-py3-none-any.whl\n"), text
    assert nb.cells[-1].outputs[0].text == f"torch_resnet: {site / 'torch_resnet' / '__init__.py'}\n"
    assert text.count("STAND-IN") == 3 and "DIFFERENT" not in text and text.count(" same") == 3
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert html.count("data:image/png;base64,") >= 5  # both runs' curves and the report's three figures
    assert "Fine-tuning report" in html and "<body" not in html
    for made in ("weights/resnet_cifar100.pt", "runs/freeze/model.pt", "runs/full/model.pt", "report/report.html",
                 "resnet_cifar10_keras.pkl"):
        assert (here / made).is_file(), made
    assert not (Path(sysconfig.get_paths()["purelib"]) / "torch_resnet").exists()  # not into this environment
