"""PyTorch state dict -> Keras pickle: bit-identical round trip, Keras parity, refusals."""
import os
import pickle
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIGURES, ROOT, run_script
from torch_resnet import ResidualNetwork
from torch_resnet.convert import convert_pickle
from torch_resnet.files import names_sidecar
from torch_resnet.keras_map import default_keras_names
from test_parity import SCHEMES

EXPORTER = "convert/pt_to_keras_pickle.py"


def converted(keras_fixtures, scheme, tmp_path):
    convert_pickle(keras_fixtures / f"{scheme}.pkl", tmp_path / f"{scheme}.pt")
    return tmp_path / f"{scheme}.pt"


def ten_class_state(pt_path, seed=0):
    """A converted 100-class state dict with a seeded random 10-class head (as fine-tuning makes)."""
    state = torch.load(pt_path, weights_only=True)
    torch.manual_seed(seed)
    head = torch.nn.Linear(256, 10)
    return {**state, "head.weight": head.weight.detach(), "head.bias": head.bias.detach()}


def call_script(capsys, script, *args):
    """A script's main() in this process (no interpreter start-up): (exit status, stdout, stderr).
    @cli does the error handling, so this sees what a user would; run_script checks the real exit."""
    rc = runpy.run_path(str(ROOT / script))["main"]([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc, err, *needles):
    err = err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


def read_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_is_bit_identical(keras_fixtures, scheme, tmp_path, capsys):
    pt, out = converted(keras_fixtures, scheme, tmp_path), tmp_path / "back.pkl"
    rc, stdout, stderr = call_script(capsys, EXPORTER, pt, "-o", out)
    assert rc == 0 and "source pickle's names" in stdout, stderr
    original, back = read_pickle(keras_fixtures / f"{scheme}.pkl"), read_pickle(out)
    assert list(back) == list(original)
    for key, value in original.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key
    FIGURES.append((f"round trip {scheme}", f"{len(back)} tensors bit-identical, names and order equal"))


def test_fine_tuned_head_keeps_source_names(keras_fixtures, tmp_path):
    pt = converted(keras_fixtures, "keras3_seed_numbering", tmp_path)
    model = tmp_path / "run" / "model.pt"
    model.parent.mkdir()
    state = ten_class_state(pt)
    torch.save(state, model)
    shutil.copyfile(names_sidecar(pt), names_sidecar(model))  # what the trainer does
    r = run_script(EXPORTER, model, "-o", tmp_path / "ft.pkl")
    assert r.returncode == 0, r.stderr
    assert "100 Keras tensors (10 classes)" in r.stdout
    original, back = read_pickle(keras_fixtures / "keras3_seed_numbering.pkl"), read_pickle(tmp_path / "ft.pkl")
    assert list(back) == list(original)
    head = ("sequential_3/dense_1/kernel", "sequential_3/dense_1/bias")
    assert np.array_equal(back[head[0]], state["head.weight"].numpy().T) and back[head[0]].shape == (256, 10)
    assert np.array_equal(back[head[1]], state["head.bias"].numpy())
    assert all(np.array_equal(back[k], v) for k, v in original.items() if k not in head)


def test_ten_class_export_in_keras3_names_runs_in_keras(keras_fixtures, tmp_path):
    pt = converted(keras_fixtures, "keras3", tmp_path)
    state = ten_class_state(pt, seed=3)
    torch.save(state, tmp_path / "ten.pt")  # no sidecar: the documented Keras 3 naming
    r = run_script(EXPORTER, tmp_path / "ten.pt", "-o", tmp_path / "ten.pkl")
    assert r.returncode == 0 and "fresh Keras 3 names" in r.stdout, r.stderr
    assert list(read_pickle(tmp_path / "ten.pkl")) == [k for k, _ in default_keras_names(10)]
    convert_pickle(tmp_path / "ten.pkl", tmp_path / "again.pt")  # and the forward converter reads them back
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(again[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))

    images = np.random.default_rng(5).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    k = subprocess.run([sys.executable, "-m", "torch_resnet.keras_predict", tmp_path / "ten.pkl",
                        tmp_path / "images.npy", tmp_path / "logits.npy"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert k.returncode == 0, k.stderr[-3000:]
    model = ResidualNetwork(10).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        ours = model(torch.from_numpy(images).float() / 127.5 - 1).numpy()
    keras = np.load(tmp_path / "logits.npy")
    d = np.abs(ours - keras).max()
    FIGURES.append(("export 10-class, Keras 3 names, real Keras", f"max|dlogit| {d:.2e} "
                                                                 f"(max|logit| {np.abs(keras).max():.1f})"))
    assert np.abs(keras).max() > 1 and d <= 1e-4
    assert (ours.argmax(1) == keras.argmax(1)).all()


def assert_refused(capsys, tmp_path, src, *needles):
    out = tmp_path / "out" / "out.pkl"
    rc, _, err = call_script(capsys, EXPORTER, src, "-o", out)
    assert_one_line_error(rc, err, *needles)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no output, no temporary file


@pytest.fixture(scope="module")
def good_state(keras_fixtures, tmp_path_factory):
    return torch.load(converted(keras_fixtures, "keras3", tmp_path_factory.mktemp("good")), weights_only=True)


def test_refusal_from_the_real_script(tmp_path):
    r = run_script(EXPORTER, tmp_path / "nope.pt", "-o", tmp_path / "out.pkl")
    assert_one_line_error(r.returncode, r.stderr, "weights file", "nope.pt not found")
    assert not list(tmp_path.iterdir())


def test_refuses_non_state_dicts(tmp_path, capsys):
    (tmp_path / "text.pt").write_text("hello\n")
    assert_refused(capsys, tmp_path, tmp_path / "text.pt", "not a PyTorch state dict")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert_refused(capsys, tmp_path, tmp_path / "list.pt", "not a ResidualNetwork state dict")


def test_refuses_missing_tensor_and_wrong_architecture(tmp_path, good_state, capsys):
    torch.save({k: v for k, v in good_state.items() if k != "backbone.blocks.3.bn2.running_var"}, tmp_path / "m.pt")
    assert_refused(capsys, tmp_path, tmp_path / "m.pt", "does not fit ResidualNetwork",
                   "backbone.blocks.3.bn2.running_var")
    torch.save({**good_state, "backbone.blocks.4.conv1.weight": torch.zeros(128, 64, 3, 3)}, tmp_path / "w.pt")
    assert_refused(capsys, tmp_path, tmp_path / "w.pt", "does not fit ResidualNetwork",
                   "backbone.blocks.4.conv1.weight")


def test_refuses_nan_weights_and_bad_sidecar(tmp_path, good_state, capsys):
    bias = good_state["head.bias"].clone()
    bias[0] = float("nan")
    torch.save({**good_state, "head.bias": bias}, tmp_path / "nan.pt")
    assert_refused(capsys, tmp_path, tmp_path / "nan.pt", "head.bias", "non-finite")
    torch.save(good_state, tmp_path / "s.pt")
    names_sidecar(tmp_path / "s.pt").write_text('{"tensors": [["a/kernel", "head.weight", "float32"]]}')
    assert_refused(capsys, tmp_path, tmp_path / "s.pt", "keras_names.json", "do not match", "--keras3-names")
    names_sidecar(tmp_path / "s.pt").write_text("{not json")
    assert_refused(capsys, tmp_path, tmp_path / "s.pt", "not a Keras names file")
    rc, _, err = call_script(capsys, EXPORTER, tmp_path / "s.pt", "-o", tmp_path / "ok.pkl", "--keras3-names")
    assert rc == 0 and (tmp_path / "ok.pkl").is_file(), err


def test_refuses_odd_tensors_and_keys(tmp_path, good_state, capsys):
    torch.save({**good_state, 3: torch.zeros(1)}, tmp_path / "k.pt")
    assert_refused(capsys, tmp_path, tmp_path / "k.pt", "key 3 is not a parameter name")
    torch.save({**good_state, "head.bias": good_state["head.bias"].to_sparse()}, tmp_path / "sp.pt")
    assert_refused(capsys, tmp_path, tmp_path / "sp.pt", "head.bias is not a dense tensor")
    big = good_state["head.weight"].double()
    big[0, 0] = 1e300  # finite in float64, inf as float32
    torch.save({**good_state, "head.weight": big}, tmp_path / "big.pt")
    assert_refused(capsys, tmp_path, tmp_path / "big.pt", "head.weight", "too large for float32")


def test_never_writes_over_its_names_file(keras_fixtures, tmp_path, capsys):
    pt = converted(keras_fixtures, "keras3", tmp_path)
    names = names_sidecar(pt).read_bytes()
    rc, _, err = call_script(capsys, EXPORTER, pt, "-o", names_sidecar(pt))
    assert_one_line_error(rc, err, "is the input state dict or its names file")
    assert names_sidecar(pt).read_bytes() == names
