"""PyTorch state dict -> Keras pickle: bit-identical round trip, names, refusals (Keras itself
runs the exports in tests/test_keras_files.py)."""
import pickle
import shutil

import numpy as np
import pytest
import torch

from conftest import FIGURES, assert_refused, call_script, converted, ten_class_state
from torch_resnet.conversion.convert import convert_pickle
from torch_resnet.formats.files import names_sidecar
from torch_resnet.conversion.keras_map import default_keras_names
from test_parity import SCHEMES

EXPORTER = "convert/pt_to_keras_pickle.py"


def read_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_is_bit_identical(keras_fixtures, scheme, tmp_path, capsys):
    pt, out = converted(keras_fixtures, scheme, tmp_path), tmp_path / "back.pkl"
    rc, stdout, stderr = call_script(capsys, EXPORTER, pt, "-o", out)
    assert rc == 0 and "the source file's names" in stdout, stderr
    original, back = read_pickle(keras_fixtures / f"{scheme}.pkl"), read_pickle(out)
    assert list(back) == list(original)
    for key, value in original.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key
    FIGURES.append((f"round trip {scheme}", f"{len(back)} tensors bit-identical, names and order equal"))


def test_fine_tuned_head_keeps_source_names(keras_fixtures, tmp_path, capsys):
    pt = converted(keras_fixtures, "keras3_seed_numbering", tmp_path)
    model = tmp_path / "run" / "model.pt"
    model.parent.mkdir()
    state = ten_class_state(pt)
    torch.save(state, model)
    shutil.copyfile(names_sidecar(pt), names_sidecar(model))  # what the trainer does
    rc, stdout, err = call_script(capsys, EXPORTER, model, "-o", tmp_path / "ft.pkl")
    assert rc == 0, err
    assert "100 Keras tensors (10 classes)" in stdout
    original, back = read_pickle(keras_fixtures / "keras3_seed_numbering.pkl"), read_pickle(tmp_path / "ft.pkl")
    assert list(back) == list(original)
    head = ("sequential_3/dense_1/kernel", "sequential_3/dense_1/bias")
    assert np.array_equal(back[head[0]], state["head.weight"].numpy().T) and back[head[0]].shape == (256, 10)
    assert np.array_equal(back[head[1]], state["head.bias"].numpy())
    assert all(np.array_equal(back[k], v) for k, v in original.items() if k not in head)


def test_ten_class_export_in_fresh_keras3_names(keras_fixtures, tmp_path, capsys):
    """Without a names file, the Variable.paths of keras_model.build in a fresh session; the forward
    converter reads them back (real Keras runs them: test_keras_files.test_exports_load_into_keras...)."""
    pt = converted(keras_fixtures, "keras3", tmp_path)
    state = ten_class_state(pt, seed=3)
    torch.save(state, tmp_path / "ten.pt")  # no sidecar: the documented Keras 3 naming
    rc, stdout, err = call_script(capsys, EXPORTER, tmp_path / "ten.pt", "-o", tmp_path / "ten.pkl")
    assert rc == 0 and "fresh Keras 3 names of keras_model.build" in stdout, err
    assert list(read_pickle(tmp_path / "ten.pkl")) == [k for k, _ in default_keras_names(10)]
    convert_pickle(tmp_path / "ten.pkl", tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(again[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def refused(capsys, tmp_path, src, *needles):
    rc, _, err = call_script(capsys, EXPORTER, src, "-o", tmp_path / "out" / "out.pkl")
    assert_refused(rc, err, *needles, nothing_in=tmp_path / "out")


@pytest.fixture(scope="module")
def good_state(keras_fixtures, tmp_path_factory):
    return torch.load(converted(keras_fixtures, "keras3", tmp_path_factory.mktemp("good")), weights_only=True)


def test_missing_weights(tmp_path, capsys):
    refused(capsys, tmp_path, tmp_path / "nope.pt", "weights file", "nope.pt not found")


def test_refuses_non_state_dicts(tmp_path, capsys):
    (tmp_path / "text.pt").write_text("hello\n")
    refused(capsys, tmp_path, tmp_path / "text.pt", "not a PyTorch state dict")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    refused(capsys, tmp_path, tmp_path / "list.pt", "not a ResidualNetwork state dict")


def test_refuses_missing_tensor_and_wrong_architecture(tmp_path, good_state, capsys):
    torch.save({k: v for k, v in good_state.items() if k != "backbone.blocks.3.bn2.running_var"}, tmp_path / "m.pt")
    refused(capsys, tmp_path, tmp_path / "m.pt", "does not fit ResidualNetwork",
                   "backbone.blocks.3.bn2.running_var")
    torch.save({**good_state, "backbone.blocks.4.conv1.weight": torch.zeros(128, 64, 3, 3)}, tmp_path / "w.pt")
    refused(capsys, tmp_path, tmp_path / "w.pt", "does not fit ResidualNetwork",
                   "backbone.blocks.4.conv1.weight")


def test_refuses_nan_weights_and_bad_sidecar(tmp_path, good_state, capsys):
    bias = good_state["head.bias"].clone()
    bias[0] = float("nan")
    torch.save({**good_state, "head.bias": bias}, tmp_path / "nan.pt")
    refused(capsys, tmp_path, tmp_path / "nan.pt", "head.bias", "non-finite")
    torch.save(good_state, tmp_path / "s.pt")
    names_sidecar(tmp_path / "s.pt").write_text('{"tensors": [["a/kernel", "head.weight", "float32"]]}')
    refused(capsys, tmp_path, tmp_path / "s.pt", "keras_names.json", "do not match", "--keras3-names")
    names_sidecar(tmp_path / "s.pt").write_text("{not json")
    refused(capsys, tmp_path, tmp_path / "s.pt", "not a Keras names file")
    rc, _, err = call_script(capsys, EXPORTER, tmp_path / "s.pt", "-o", tmp_path / "ok.pkl", "--keras3-names")
    assert rc == 0 and (tmp_path / "ok.pkl").is_file(), err


@pytest.mark.parametrize("out", ["out.pkl", "out.weights.h5"])
def test_refuses_what_the_converter_would_refuse(tmp_path, good_state, capsys, out):
    var = good_state["backbone.blocks.2.bn1.running_var"].clone()
    var[3] = -0.25
    torch.save({**good_state, "backbone.blocks.2.bn1.running_var": var}, tmp_path / "neg.pt")
    bias = good_state["head.bias"].clone()
    bias[0] = float("inf")
    torch.save({**good_state, "head.bias": bias}, tmp_path / "inf.pt")
    for src, needles in (("neg.pt", ("backbone.blocks.2.bn1.running_var", "negative")),
                         ("inf.pt", ("head.bias", "non-finite"))):
        rc, _, err = call_script(capsys, EXPORTER, tmp_path / src, "-o", tmp_path / "out" / out)
        assert_refused(rc, err, *needles, nothing_in=tmp_path / "out")


def test_refuses_keras_file_names_it_does_not_write(tmp_path, good_state, capsys):
    torch.save(good_state, tmp_path / "m.pt")
    for out in ("model.h5", "model.keras"):
        rc, _, err = call_script(capsys, EXPORTER, tmp_path / "m.pt", "-o", tmp_path / "out" / out)
        assert_refused(rc, err, "NAME.weights.h5", nothing_in=tmp_path / "out")


def test_refuses_odd_tensors_and_keys(tmp_path, good_state, capsys):
    torch.save({**good_state, 3: torch.zeros(1)}, tmp_path / "k.pt")
    refused(capsys, tmp_path, tmp_path / "k.pt", "key 3 is not a parameter name")
    torch.save({**good_state, "head.bias": good_state["head.bias"].to_sparse()}, tmp_path / "sp.pt")
    refused(capsys, tmp_path, tmp_path / "sp.pt", "head.bias is not a dense tensor")
    big = good_state["head.weight"].double()
    big[0, 0] = 1e300  # finite in float64, inf as float32
    torch.save({**good_state, "head.weight": big}, tmp_path / "big.pt")
    refused(capsys, tmp_path, tmp_path / "big.pt", "head.weight", "too large for float32")


def test_never_writes_over_its_names_file(keras_fixtures, tmp_path, capsys):
    pt = converted(keras_fixtures, "keras3", tmp_path)
    names = names_sidecar(pt).read_bytes()
    rc, _, err = call_script(capsys, EXPORTER, pt, "-o", names_sidecar(pt))
    assert_refused(rc, err, "is the input state dict or its names file")
    assert names_sidecar(pt).read_bytes() == names
