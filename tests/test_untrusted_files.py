"""Damaged and hostile files: one line and exit 2, whatever the damage; never a crash, a hang, a
traceback or a message over two lines. tests/data/damaged holds files that once crashed or hung
libhdf5 (and every case bench/fuzz.py finds, kept here as a regression test)."""
import importlib.util
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, assert_refused, call_script, left_in

CONVERTER = "convert/keras_pickle_to_pt.py"
DAMAGED = Path(__file__).parent / "data" / "damaged"


def load_fuzz():
    spec = importlib.util.spec_from_file_location("fuzz", ROOT / "bench/fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KNOWN = {"segfault_weight_names.h5": "the HDF5 reader crashed: SIGSEGV",
         "hang_weight_names.h5": "the HDF5 reader took over 5 s of CPU",
         # found by the 100,000-case campaign: _pickle grew its memo to gigabytes (minutes of swapping),
         # or printed a SystemError beside its MemoryError
         "pickle_memo_index_in_billions.pkl": "truncated or damaged (memo index 1058830150",
         "pickle_bytearray8_of_exabytes.pkl": "truncated or damaged (expected 7310874250644458594 bytes",
         "cifar_batch_bytearray8_of_exabytes": "truncated or damaged (expected 1617222267367986289 bytes"}


@pytest.mark.slow
def test_files_that_crashed_or_hung_us_are_one_line(tmp_path, capsys):
    assert set(KNOWN) <= {p.name for p in DAMAGED.iterdir()}
    for path in sorted(DAMAGED.iterdir()):
        start = time.perf_counter()
        rc, _, err = call_script(capsys, CONVERTER, path, "-o", tmp_path / "out" / "out.pt")
        assert_refused(rc, err, f"{path}: not a readable", KNOWN.get(path.name, ""), nothing_in=tmp_path / "out")
        assert time.perf_counter() - start < 20, path


def wait_for(condition, what, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def importing_torch(pid) -> bool:
    """The process has begun loading torch's libraries (its import takes seconds from there)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def start_converter(path, out):
    return subprocess.Popen([sys.executable, str(ROOT / CONVERTER), str(path), "-o", str(out)],
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def assert_interrupted(proc, out_dir, within=3):
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130 and err.strip() == "error: interrupted", err
    assert time.perf_counter() - sent < within
    assert not left_in(out_dir)


@pytest.mark.slow
def test_ctrl_c_during_a_hung_read_stops_at_once(tmp_path):
    """A real process (Ctrl-C is a signal to it): libhdf5 spinning in the child does not hold us."""
    proc = start_converter(DAMAGED / "hang_weight_names.h5", tmp_path / "out.pt")
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    wait_for(lambda: children.read_text().strip(), "the reading child")  # torch imported, the child started
    time.sleep(0.5)  # and reading
    assert_interrupted(proc, tmp_path)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(DAMAGED / "hang_weight_names.h5") not in ps  # the reading child was killed with us


@pytest.mark.slow
def test_ctrl_c_while_torch_is_imported_is_one_line(tmp_path):
    """The first seconds of every command go to importing torch: Ctrl-C there is no traceback."""
    proc = start_converter(DAMAGED / "hang_weight_names.h5", tmp_path / "out.pt")
    wait_for(lambda: importing_torch(proc.pid), "torch's import")
    assert_interrupted(proc, tmp_path)


def test_library_messages_over_several_lines_become_one(tmp_path, capsys):
    """Python's unpickler says "A load persistent id instruction was encountered,\\nbut no ..."."""
    path = tmp_path / "persistent.pkl"
    path.write_bytes(b"\x80\x02X\x01\x00\x00\x00aQ.")
    rc, _, err = call_script(capsys, CONVERTER, path, "-o", tmp_path / "out" / "out.pt")
    assert_refused(rc, err, "not a readable pickle (UnpicklingError: A load persistent id instruction",
                   nothing_in=tmp_path / "out")


def test_a_zip_of_an_unknown_version_given_as_weights_is_refused(tmp_path):
    """zipfile raises NotImplementedError ("zip file version 20.0") for such an archive."""
    import torch
    from torch_resnet.errors import UserError
    from torch_resnet.formats.files import load_model

    path = tmp_path / "w.pt"
    torch.save({"head.weight": torch.zeros(2, 2)}, path)
    data = bytearray(path.read_bytes())
    directory = data.find(b"PK\x01\x02")
    data[directory + 6:directory + 8] = (200).to_bytes(2, "little")  # version needed to extract: 20.0
    path.write_bytes(bytes(data))
    with pytest.raises(NotImplementedError):
        zipfile.ZipFile(path).namelist()
    with pytest.raises(UserError) as refused:
        load_model(path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


def test_a_seeded_fuzz_run_finds_nothing(keras_fixtures, tmp_path):
    """A few hundred damaged copies of real files of every format (Keras' own among them, tiny),
    each read as a user's command reads it, in bench/fuzz.py's worker processes."""
    fuzz = load_fuzz()
    keras = tmp_path / "keras"
    keras.mkdir()
    for name in ("k2_model.h5", "k2_weights.h5", "k3_build.weights.h5", "k3_functional.keras"):
        (keras / name).symlink_to(keras_fixtures / "files" / name)
    seeds = [(t, s) for t, s in fuzz.make_seeds(tmp_path / "seeds", keras) if s.stat().st_size < 2**20 or t == "checkpoint"]
    assert {t for t, _ in seeds} == {"convert", "weights", "cifar", "checkpoint", "metrics"}
    assert sum(s.name.startswith("tiny_k") for _, s in seeds) == 4
    result = fuzz.campaign(seeds, 300, 7, 2, 30.0, tmp_path / "found")
    counts = sum(result["counts"].values(), start=Counter())
    assert sum(counts.values()) == 300 and counts["refused"] > 200, counts
    assert not result["found"], result["found"][:3]


@pytest.mark.slow
def test_the_fuzzer_tells_a_crash_and_a_hang(tmp_path):
    """The classifier is not blind: a worker that dies is a crash, one that does not answer a hang."""
    fuzz = load_fuzz()
    worker = fuzz.Worker(tmp_path, timeout=3)
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({}))
    worker.proc = subprocess.Popen([sys.executable, "-c", "import os, sys; sys.stdin.readline(); os.abort()"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert worker.run("convert", path)[0] == "crash"
    worker.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert worker.run("convert", path)[0] == "hang"
    assert fuzz.classify({"exc": None, "rc": 2, "stderr": "error: a\nb\n"}) == "multi-line"
    assert fuzz.classify({"exc": "ValueError: x", "rc": None, "stderr": ""}) == "traceback"
    assert fuzz.classify({"exc": None, "rc": 2, "stderr": "error: x\n"}) == "refused"
