import importlib.util
import json
import os
import queue
import runpy
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

# torch and the project are imported where used: the xdist controller, which runs no test, loads
# this file too and would pay seconds for them while both cores wait for it.
ROOT = Path(__file__).resolve().parents[1]
FIGURES = []  # (what, value) lines printed at the end of the run
# The tests marked keras (the session's Keras process, the bench's Keras peer) need what the test
# extra installs: TensorFlow, Keras 3 and tf-keras. Where one is missing they are skipped, saying
# so; where TORCH_RESNET_REQUIRE_KERAS=1 (.ci/run) they fail instead, so that CI never passes
# without them. Found, not imported: TensorFlow stays out of pytest.
MISSING_KERAS = [name for name in ("tensorflow", "keras", "tf_keras") if importlib.util.find_spec(name) is None]
REQUIRE_KERAS = os.environ.get("TORCH_RESNET_REQUIRE_KERAS", "") not in ("", "0")
KERAS_MISSING = (f"needs TensorFlow and Keras: {', '.join(MISSING_KERAS)} not installed "
                 "(pip install -e '.[test]')")
# Under pytest-xdist each worker takes its share of the cores, and so do the scripts it runs as
# processes: a script then computes what the worker computes, bit for bit (resume after a kill).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    import torch

    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(THREADS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


TEMP = ".tmp"  # a test's stand-in for the system's temporary folder, inside its tmp_path


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own empty folder: default paths (runs/, weights/, data/) land there,
    never in the repository or a user's own files. So do temporary files, in tmp_path/.tmp: the
    tests' own (tempfile) and, through TMPDIR, those of every process a test starts."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / TEMP).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / TEMP))
    monkeypatch.setenv("TMPDIR", str(tmp_path / TEMP))


def left_in(folder):
    """Every path under ``folder`` (relative, sorted) but the empty temporary folder of a test: a
    temporary file left behind counts."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p != folder / TEMP)


def run_script(script, *args, timeout=600, env=None):
    """Run one of the project's scripts as a real process, the way a user does (in the current
    folder, the test's tmp_path); returns CompletedProcess. Each costs an interpreter and torch
    start-up: kept for what only a real process shows (exit status, stderr as written)."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def script_main(script, *args):
    """A script's main() in this process, on ``args``: its exit status (the output is the caller's)."""
    return runpy.run_path(str(ROOT / script))["main"]([str(a) for a in args])


def call_script(capsys, script, *args):
    """A script's main() in this process: (exit status, stdout, stderr). @cli does the error
    handling, so this sees what a user would; run_script checks the real process once per script."""
    capsys.readouterr()  # what came before is not this call's
    rc = script_main(script, *args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def stop_in_epoch(monkeypatch, stop_at):
    """Ctrl-C in the middle of epoch ``stop_at`` (0-based) of an in-process run."""
    from torch_resnet.training import train as trainer

    real = getattr(trainer.train_one_epoch, "real", trainer.train_one_epoch)  # not an earlier stop's

    def one_epoch(stepper, batches, epoch, **kw):
        if epoch == stop_at:
            raise KeyboardInterrupt
        return real(stepper, batches, epoch, **kw)

    one_epoch.real = real
    monkeypatch.setattr(trainer, "train_one_epoch", one_epoch)


def assert_refused(rc, err, *needles, nothing_in=None):
    """One line ``error: ...`` naming every needle, exit status 2, no traceback, and no file
    written under the folder ``nothing_in`` (no output, no temporary file)."""
    err = err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err
    if nothing_in is not None:
        assert not [p for p in Path(nothing_in).rglob("*") if p.is_file()], list(Path(nothing_in).rglob("*"))
    return err


class KerasChildProcess:
    """A Keras script in a child process (no TF in pytest), its stderr in FOLDER/stderr.txt and its
    stdout read line by line in a thread: ``next_line`` waits for the next one."""

    def __init__(self, folder, args, **popen):
        self.folder, self.lines = folder, queue.Queue()
        self.log = open(folder / "stderr.txt", "w")
        self.proc = subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=folder, **popen)
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("")  # it ended

    def next_line(self, waiting_for, timeout) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if not line:
            self.lines.put(line)  # for whoever waits next
            raise AssertionError(f"Keras {'ended' if line == '' else 'timed out'} before {waiting_for!r}: "
                                 + (self.folder / "stderr.txt").read_text()[-3000:])
        return line


class KerasApplications(KerasChildProcess):
    """tests/make_keras_applications.py with ``args``, one process for a test module; each network's
    files are there once it prints its line (``wait_for``), so the checks of one network run while
    Keras builds the next; ``load`` has it load weights we exported."""

    def __init__(self, folder, *args):
        super().__init__(folder, [ROOT / "tests" / "make_keras_applications.py", folder, *args],
                         env={**os.environ, "KERAS_HOME": str(folder), "TMPDIR": str(folder)}, stdin=subprocess.PIPE)
        self.counts, self.said = {}, set()

    def wait_for(self, name, timeout=600):
        """Keras' counts for network ``name`` once its files are written, or True once it said ``name``."""
        while name not in self.counts and name not in self.said:
            line = self.next_line(name, timeout)
            if line.startswith("{"):
                counts = json.loads(line)
                self.counts[counts["name"]] = counts
            else:
                self.said.add(line)
        return self.counts.get(name, True)

    def load(self, kind, weights, x_npz):
        """Our exported ``weights`` loaded into a fresh Keras ``kind`` model: its logits on ``x_npz``'s x."""
        result = Path(weights).with_suffix(".logits.npz")
        self.proc.stdin.write(f"{kind} {weights} {x_npz} {result}\n")
        self.proc.stdin.flush()
        self.wait_for(f"loaded {result}")
        import numpy as np

        with np.load(result) as saved:
            return saved["logits"]

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


class KerasProcess(KerasChildProcess):
    """The session's one Keras process (tests/make_keras_fixtures.py): it makes every Keras file the
    tests read, then loads into Keras what they export. ``wait_for`` a word it says when it is done
    with something ("fixtures", "training", "loaded SPEC")."""

    def __init__(self, folder):
        super().__init__(folder, [ROOT / "tests" / "make_keras_fixtures.py", folder], stdin=subprocess.PIPE)
        self.said = set()

    def wait_for(self, word, timeout=900):
        while word not in self.said:
            self.said.add(self.next_line(word, timeout))

    def load(self, spec):
        """Exported weights into Keras (make_keras_files.load of SPEC.json): their logits saved."""
        self.proc.stdin.write(f"{spec}\n")
        self.proc.stdin.flush()
        self.wait_for(f"loaded {spec}")

    def close(self):  # nothing more to ask of it (TensorFlow takes seconds to exit by itself)
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def uses(item, *fixtures):
    return any(f in getattr(item, "fixturenames", ()) for f in fixtures)


# The modules with tests that need the session's Keras process, and those with tests that read the
# session's runs (checked at collection). With pytest-xdist (-n 2 --dist loadfile), each set is
# one unit of work, on one worker: made once, not once per worker.
KERAS_MODULES = {"test_api.py", "test_convert_errors.py", "test_evaluate.py", "test_export.py", "test_keras_files.py",
                 "test_parity.py", "test_training_parity.py", "test_untrusted_files.py"}
RUN_MODULES = {"test_distributed.py", "test_finetune.py", "test_run_record.py"}
# and those that read the keras.applications files of the session's second Keras process
APPLICATIONS_MODULES = {"test_applications.py", "test_applications_files.py"}


# Tiers (markers registered in pyproject.toml): `pytest -m "not slow"` is the fast tier. A test is
# slow for what it does, each of which takes seconds: it starts a Python process (our scripts,
# torchrun, pip, a notebook's kernel), compiles (torch.compile), or trains a run to its end; and so
# is a test that uses a fixture that does (the session's Keras process, a session or module run).
# The test modules mark what their tests and their own fixtures do; the fixtures below mark the
# tests that use them.
FIXTURE_MARKS = {"keras_process": ("keras", "slow"),  # TensorFlow in a child process: ~20 s to start
                 "freeze_run": ("slow",), "full_run": ("slow",)}  # a fine-tuning run each


def module(item):
    return Path(str(item.path)).name


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """In one process, the modules that need no Keras run first, while the Keras process makes
    its files. On an xdist worker, the Keras modules come first, then the run modules: the worker
    that gets the Keras ones starts Keras at once, the other the longest unit. (First of the
    hooks: the marks of FIXTURE_MARKS are there when -m selects.)"""
    unlisted = {module(item) for item in items if uses(item, "keras_process") and module(item) not in KERAS_MODULES
                or uses(item, "freeze_run", "full_run") and module(item) not in RUN_MODULES
                or uses(item, "keras_applications") and module(item) not in APPLICATIONS_MODULES}
    if unlisted:
        raise pytest.UsageError(f"tests/conftest.py: add {', '.join(sorted(unlisted))} to KERAS_MODULES, RUN_MODULES "
                                f"or APPLICATIONS_MODULES")
    for item in items:
        for fixture, marks in FIXTURE_MARKS.items():
            for mark in marks:
                if uses(item, fixture) and not item.get_closest_marker(mark):
                    item.add_marker(mark)
    if "PYTEST_XDIST_WORKER" in os.environ:
        items.sort(key=lambda item: (module(item) not in APPLICATIONS_MODULES, module(item) not in KERAS_MODULES,
                                     module(item) not in RUN_MODULES))
    else:
        items.sort(key=lambda item: module(item) in KERAS_MODULES)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A keras test where TensorFlow or Keras is not installed: skipped, with the reason; failed
    instead under TORCH_RESNET_REQUIRE_KERAS=1. Before any fixture: no Keras process is started."""
    if MISSING_KERAS and item.get_closest_marker("keras"):
        if REQUIRE_KERAS:
            pytest.fail(f"TORCH_RESNET_REQUIRE_KERAS is set and this test {KERAS_MISSING}", pytrace=False)
        pytest.skip(KERAS_MISSING)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, in the collection's order, the Keras modules one unit, the run modules another."""
    if config.option.dist != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixturesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::")[0]
            name = Path(path).name
            return ("Keras modules" if name in KERAS_MODULES else "run modules" if name in RUN_MODULES
                    else "applications modules" if name in APPLICATIONS_MODULES else path)

    config.option.loadscopereorder = False
    return SharedFixturesTogether(config, log)


@pytest.fixture(scope="session")
def keras_process(request, tmp_path_factory):
    """One TensorFlow start-up for the session; the training reference is made only when a test needs it."""
    folder = tmp_path_factory.mktemp("keras")
    if any(uses(item, "keras_training") for item in request.session.items):
        from test_training_parity import write_inputs  # the inputs of the Keras training loop
        write_inputs(folder / "training")
    process = KerasProcess(folder)
    yield process
    process.close()


@pytest.fixture(scope="session", autouse=True)
def start_keras_first(request):
    """In one process, Keras starts with the session's first test (one that needs none of it: they
    run first), not with the first test that waits for it. Under xdist, the worker that gets the
    Keras modules starts it with their first test (the other worker runs meanwhile)."""
    if ("PYTEST_XDIST_WORKER" not in os.environ and not MISSING_KERAS
            and any(uses(item, "keras_process") for item in request.session.items)):
        request.getfixturevalue("keras_process")


@pytest.fixture(scope="session")
def keras_fixtures(keras_process):
    """Pickles and Keras outputs made by a real Keras model (tests/make_keras_fixtures.py)."""
    keras_process.wait_for("fixtures")
    return keras_process.folder


@pytest.fixture(scope="session")
def keras_training(keras_process):
    """The Keras training reference of tests/test_training_parity.py (make_keras_training_fixtures.py)."""
    keras_process.wait_for("training")
    return keras_process.folder / "training"


def converted(keras_fixtures, scheme, folder):
    """The fixture pickle ``scheme`` converted into ``folder``; returns the state dict's path."""
    from torch_resnet.conversion.convert import convert_pickle

    convert_pickle(keras_fixtures / f"{scheme}.pkl", folder / f"{scheme}.pt")
    return folder / f"{scheme}.pt"


def ten_class_state(pt_path, seed=0):
    """A converted 100-class state dict with a seeded random 10-class head (as fine-tuning makes)."""
    import torch

    state = torch.load(pt_path, weights_only=True)
    torch.manual_seed(seed)
    head = torch.nn.Linear(256, 10)
    return {**state, "head.weight": head.weight.detach(), "head.bias": head.bias.detach()}


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """Converted weights and a small CIFAR-10-format data set, for the fine-tuning tests: the
    demo's Keras-named pickle of the network (PyTorch's init, BatchNorm statistics of the data),
    converted. No TensorFlow: these tests need not wait for Keras, nor run on its xdist worker."""
    from torch_resnet.conversion.convert import convert_pickle
    from torch_resnet.data.cifar import CIFAR10
    from torch_resnet.data.synthetic import write_cifar, write_stand_in_keras_pickle

    root = tmp_path_factory.mktemp("finetune")
    write_cifar(root / "data", CIFAR10, train_size=64, test_size=32, seed=5)
    convert_pickle(write_stand_in_keras_pickle(root / "data", root / "keras3.pkl"), root / "keras3.pt")
    return root, root / "keras3.pt"


# 48/16/32 train/val/test images, 3 steps an epoch; fp32 (bf16 would hide the DDP check's 1e-4 in its rounding)
SMALL = dict(epochs=2, batch_size=16, val_size=16, seed=3, device="cpu", amp="off", download=False)


def train(setup, out, **kw):
    """A fine-tuning run on the small data set (or ``data_dir``), in process: (metrics, weights
    before, weights after)."""
    import torch
    from torch_resnet.training import train as trainer
    from torch_resnet.training.config import TrainConfig

    root, weights = setup
    cfg = TrainConfig(weights=str(kw.pop("weights", weights)), data_dir=str(kw.pop("data_dir", root / "data")),
                      out=str(out), **{**SMALL, **kw})
    metrics = trainer.main(cfg)
    return metrics, torch.load(cfg.weights, weights_only=True), torch.load(out / "model.pt", weights_only=True)


def finetune_args(setup, out, *extra):
    """train/finetune.py's arguments for the options of the session's runs (conftest.SMALL)."""
    root, weights = setup
    args = ["--weights", weights, "--data-dir", root / "data", "--out", out, "--epochs", SMALL["epochs"],
            "--batch-size", SMALL["batch_size"], "--val-size", SMALL["val_size"], "--seed", SMALL["seed"],
            "--device", SMALL["device"], "--amp", SMALL["amp"], "--no-download", *extra]
    return [str(a) for a in args]


@pytest.fixture(scope="session")
def freeze_run(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("freeze") / "run"
    return (*train(setup, out, freeze=True, step_memory=True), out)


@pytest.fixture(scope="session")
def full_run(setup, tmp_path_factory):
    return train(setup, tmp_path_factory.mktemp("full") / "run", freeze=False, step_memory=True)


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: its figures go to the controller
        session.config.workeroutput["figures"] = FIGURES


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    FIGURES.extend(map(tuple, getattr(node, "workeroutput", {}).get("figures", [])))


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if KERAS_MISSING in str(r.longrepr)]
    if MISSING_KERAS and skipped:
        terminalreporter.write_line(f"{len(skipped)} keras tests skipped: {KERAS_MISSING}")
    if FIGURES:
        terminalreporter.section("measured figures")
        for what, value in FIGURES:
            terminalreporter.write_line(f"{what}: {value}")


# The keras.applications ResNets Keras builds for the session (tests/make_keras_applications.py):
# each network's top-less model with its pooling (every pooling, each version with "avg"),
# other input sizes, ResNet50 and ResNet50V2 saved in every format, the course's birds model,
# and files of other networks.
APPLICATIONS_POOLING = {"ResNet50": "avg", "ResNet101": "max", "ResNet152": None,
                        "ResNet50V2": "avg", "ResNet101V2": None, "ResNet152V2": "max"}
APPLICATIONS_SIZE, APPLICATIONS_CLASSES = 64, 10
APPLICATIONS_ALSO = ["ResNet50:224x224", "ResNet50V2:45x67"]  # Keras' own size; odd sizes where V2 strides differ


@pytest.fixture(scope="session")
def keras_applications(tmp_path_factory):
    """One Keras process for the applications modules (one xdist unit), its files in its folder."""
    child = KerasApplications(tmp_path_factory.mktemp("keras_applications"), "--size", APPLICATIONS_SIZE,
                              "--classes", APPLICATIONS_CLASSES, *(f"--also={a}" for a in APPLICATIONS_ALSO),
                              "--files=ResNet50", "--files=ResNet50V2", "--seed-head", "--others",
                              *(f"{name}:{pooling or 'none'}" for name, pooling in APPLICATIONS_POOLING.items()))
    yield child
    child.close()
