"""train/evaluate.py on small CIFAR-format test sets: figures, files, Keras agreement, refusals."""
import json
import pickle
import shutil
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIGURES, assert_refused, call_script, converted, ten_class_state
from torch_resnet import ResidualNetwork
from torch_resnet.data.cifar import CIFAR10, CIFAR100
from torch_resnet.data.synthetic import write_cifar

EVALUATE = "train/evaluate.py"
N_TEST = {"cifar100": 100, "cifar10": 50}  # ~10 ms an image on a 2-core CPU


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, CIFAR100, 0, N_TEST["cifar100"])
    write_cifar(root, CIFAR10, 0, N_TEST["cifar10"], seed=1)
    return root


@pytest.fixture(scope="module")
def weights(keras_fixtures, tmp_path_factory):
    """A converted 100-class state dict and a 10-class one made from it."""
    tmp = tmp_path_factory.mktemp("weights")
    w100 = converted(keras_fixtures, "keras3_seed_numbering", tmp)
    torch.save(ten_class_state(w100, seed=7), tmp / "ten.pt")
    return {100: w100, 10: tmp / "ten.pt"}


def independent_scores(pt, fmt, data_dir):
    """Top-1/top-5/loss straight from the test file and the model, without the library's data path."""
    with open(data_dir / fmt.folder / fmt.test_file, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    images = torch.from_numpy(batch[b"data"].reshape(-1, 3, 32, 32))
    labels = torch.tensor(batch[fmt.label_key])
    state = torch.load(pt, weights_only=True)
    model = ResidualNetwork(state["head.weight"].shape[0]).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model(images.float() / 127.5 - 1)
    top1 = (logits.argmax(1) == labels).sum().item() / len(labels)
    top5 = logits.topk(5, 1).indices.eq(labels[:, None]).any(1).sum().item() / len(labels)
    return top1, top5, F.cross_entropy(logits, labels).item()


def check_outputs(out, fmt, pt, data_dir):
    report = json.loads((out / "eval.json").read_text())
    assert report["dataset"] == fmt.name and report["num_classes"] == fmt.num_classes
    assert report["n_images"] == N_TEST[fmt.name] and report["weights"] == str(pt)
    assert 0 <= report["top1"] <= report["top5"] <= 1
    assert list(report["per_class"]) == [f"synthetic_{i}" for i in range(fmt.num_classes)]
    top1, top5, loss = independent_scores(pt, fmt, data_dir)
    assert report["top1"] == pytest.approx(top1, abs=1e-9) and report["top5"] == pytest.approx(top5, abs=1e-9)
    assert report["loss"] == pytest.approx(loss, rel=1e-4)
    images = report["per_class_images"]
    assert sum(images.values()) == report["n_images"]
    correct = sum(round(acc * images[name]) for name, acc in report["per_class"].items() if acc is not None)
    assert correct == round(report["top1"] * report["n_images"])
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp"))
    return report


def test_cifar100_converted_weights_agree_with_keras(keras_fixtures, weights, data_dir, tmp_path, capsys):
    start = time.perf_counter()
    rc, stdout, err = call_script(capsys, EVALUATE, "--weights", weights[100], "--data-dir", data_dir,
                                  "--out", tmp_path / "ev", "--batch-size", 64, "--device", "cpu",
                                  "--keras", keras_fixtures / "keras3_seed_numbering.pkl")
    seconds = time.perf_counter() - start
    assert rc == 0, err
    assert "top-1" in stdout and "worst classes" in stdout and "argmax agreement 100.00%" in stdout
    report = check_outputs(tmp_path / "ev", CIFAR100, weights[100], data_dir)
    k = report["keras"]
    FIGURES.append(("evaluate cifar100 + --keras", f"{report['n_images']} images in {seconds:.1f} s (in "
                                                   f"process, CPU); Keras agreement {k['agreement']:.4f}, "
                                                   f"max|dlogit| {k['max_abs_dlogit']:.2e}"))
    assert k["agreement"] == 1.0 and k["max_abs_dlogit"] <= 1e-4 and k["top1"] == report["top1"]


def test_cifar10_ten_class_head_picks_cifar10(weights, data_dir, tmp_path, capsys):
    start = time.perf_counter()
    rc, stdout, err = call_script(capsys, EVALUATE, "--weights", weights[10], "--data-dir", data_dir,
                                  "--out", tmp_path / "ev")
    seconds = time.perf_counter() - start
    assert rc == 0, err
    assert stdout.startswith(f"cifar10 test, {N_TEST['cifar10']} images")
    check_outputs(tmp_path / "ev", CIFAR10, weights[10], data_dir)
    FIGURES.append(("evaluate cifar10 (in process)", f"{N_TEST['cifar10']} images in {seconds:.1f} s (CPU)"))


def refused(capsys, tmp_path, needles, *args):
    rc, _, err = call_script(capsys, EVALUATE, *args, "--out", tmp_path / "ev")
    assert_refused(rc, err, *needles, nothing_in=tmp_path / "ev")


def test_missing_weights(tmp_path, data_dir, capsys):
    refused(capsys, tmp_path, ["nope.pt not found"], "--weights", tmp_path / "nope.pt", "--data-dir", data_dir)


def test_refuses_bad_weights(tmp_path, data_dir, weights, capsys):
    (tmp_path / "text.pt").write_text("hello\n")
    refused(capsys, tmp_path, ["not a PyTorch state dict"], "--weights", tmp_path / "text.pt",
                   "--data-dir", data_dir)
    torch.save({"a": torch.zeros(3)}, tmp_path / "other.pt")
    refused(capsys, tmp_path, ["not a ResidualNetwork state dict"], "--weights", tmp_path / "other.pt",
                   "--data-dir", data_dir)
    state = torch.load(weights[100], weights_only=True)
    torch.save({**state, "head.weight": state["head.weight"][:37], "head.bias": state["head.bias"][:37]},
               tmp_path / "w37.pt")
    refused(capsys, tmp_path, ["37 classes", "no CIFAR dataset"], "--weights", tmp_path / "w37.pt",
                   "--data-dir", data_dir)
    var = state["backbone.blocks.2.bn1.running_var"].clone()
    var[0] = -1.0  # finite weights that give NaN: no report with a NaN loss is written
    torch.save({**state, "backbone.blocks.2.bn1.running_var": var}, tmp_path / "negvar.pt")
    refused(capsys, tmp_path, ["non-finite logits"], "--weights", tmp_path / "negvar.pt",
                   "--data-dir", data_dir)


def test_refuses_class_count_mismatch(tmp_path, data_dir, weights, keras_fixtures, capsys):
    refused(capsys, tmp_path, ["100 classes", "cifar10 has 10", "--dataset cifar100"],
                   "--weights", weights[100], "--dataset", "cifar10", "--data-dir", data_dir)
    refused(capsys, tmp_path, ["keras3.pkl", "100 classes", "the weights have 10"], "--weights", weights[10],
                   "--data-dir", data_dir, "--keras", keras_fixtures / "keras3.pkl")
    build = keras_fixtures / "files" / "k3_build.weights.h5"  # --keras reads every file the converter reads
    refused(capsys, tmp_path, ["k3_build.weights.h5", "100 classes", "the weights have 10"], "--weights",
            weights[10], "--data-dir", data_dir, "--keras", build)


def test_refuses_incomplete_or_corrupt_data(tmp_path, data_dir, weights, capsys):
    args = ("--weights", weights[100], "--data-dir", tmp_path / "d")
    refused(capsys, tmp_path, ["cifar100 not found", "no network download"], *args, "--no-download")
    shutil.copytree(data_dir / CIFAR100.folder, tmp_path / "d" / CIFAR100.folder)
    test_file = tmp_path / "d" / CIFAR100.folder / "test"
    with open(test_file, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    test_file.unlink()
    refused(capsys, tmp_path, ["incomplete", "test is missing"], *args)
    with open(test_file, "wb") as f:
        pickle.dump({**batch, b"data": batch[b"data"].astype(np.float32)}, f, protocol=2)
    refused(capsys, tmp_path, ["'data' must be uint8", "float32"], *args)
    test_file.write_bytes(b"\x80\x02}q\x00(")  # a truncated pickle
    refused(capsys, tmp_path, ["not a readable pickle"], *args)


def test_a_stand_in_test_set_is_said(tmp_path, capsys):
    write_cifar(tmp_path / "data", CIFAR10, 0, 20)
    torch.manual_seed(0)
    torch.save(ResidualNetwork(10).state_dict(), tmp_path / "ten.pt")
    rc, out, err = call_script(capsys, EVALUATE, "--weights", tmp_path / "ten.pt", "--data-dir", tmp_path / "data",
                               "--out", tmp_path / "eval", "--no-download")
    assert rc == 0, err
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["stand_in_data"] is True
    assert "stand-in data (synthetic images in CIFAR format), not CIFAR" in out


def test_worst_classes_are_those_below_100_percent():
    from torch_resnet.training.evaluate import format_summary

    report = {"dataset": "cifar10", "n_images": 9, "weights": "w.pt", "settings": "cpu", "top1": 0.8, "top5": 1.0,
              "loss": 0.5, "per_class": {"cat": 1.0, "dog": 0.5, "ship": None, "frog": 1.0, "bird": 0.75},
              "per_class_images": {"cat": 2, "dog": 2, "ship": 0, "frog": 1, "bird": 4}}
    lines = format_summary(report).splitlines()
    assert lines[-1] == "worst classes: dog 50.0% (1/2), bird 75.0% (3/4)" and "stand-in" not in format_summary(report)
    report["per_class"].update(dog=1.0, bird=1.0)
    assert format_summary(report).splitlines()[-1] == "worst classes: none: every class with test images is at 100 %"
