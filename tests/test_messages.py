"""What a student sees when something is off: what is wrong and the one thing to do, in one line;
the API in its parameters' names, the command line in its options."""
import shutil

import pytest

import torch_resnet as tr
from conftest import assert_refused, call_script, finetune_args
from torch_resnet import UserError
from torch_resnet.data.cifar import CIFAR10

CONVERTER, FINETUNE, EVALUATE = "convert/keras_pickle_to_pt.py", "train/finetune.py", "train/evaluate.py"
NOT_FILES = {"notes.h5": (b"hello\nworld\n", "is a text file", "(it begins 'hello')"),
             "page.pkl": (b"<!DOCTYPE html>\n<html><body>404</body></html>", "is a web page (HTML", "<!DOCTYPE"),
             "empty.pt": (b"", "is an empty file", "")}


@pytest.mark.parametrize("name", NOT_FILES)
def test_a_file_that_is_text_says_so(setup, tmp_path, capsys, name):
    data, what, begins = NOT_FILES[name]
    (tmp_path / name).write_bytes(data)
    rc, _, err = call_script(capsys, CONVERTER, tmp_path / name, "-o", tmp_path / "out" / "w.pt")
    assert_refused(rc, err, f"{name} {what}", "not Keras weights (a pickle, .keras or .h5)", begins,
                   nothing_in=tmp_path / "out")
    rc, _, err = call_script(capsys, EVALUATE, "--weights", tmp_path / name, "--data-dir", setup[0] / "data")
    assert_refused(rc, err, f"{name} {what}", "not a PyTorch state dict (.pt or .safetensors)", begins)


def test_an_incomplete_cifar_folder_names_every_missing_file_and_the_mend(setup, tmp_path, capsys):
    shutil.copytree(setup[0] / "data", tmp_path / "data")
    for name in ("data_batch_2", "test_batch"):
        (tmp_path / "data" / CIFAR10.folder / name).unlink()
    rc, _, err = call_script(capsys, FINETUNE, *finetune_args(setup, tmp_path / "run", "--freeze"),
                             "--data-dir", tmp_path / "data")
    assert_refused(rc, err, "is incomplete: data_batch_2, test_batch are missing",
                   "extract cifar-10-python.tar.gz into", "again, or delete")


def test_missing_weights_are_said_before_the_run_folder(setup, tmp_path, capsys):
    """A finished run in runs/freeze and no converted weights: the weights are the first thing to mend."""
    (tmp_path / "runs" / "freeze").mkdir(parents=True)
    (tmp_path / "runs" / "freeze" / "metrics.json").write_text("{}")
    rc, _, err = call_script(capsys, FINETUNE, "--freeze", "--data-dir", setup[0] / "data", "--no-download")
    assert_refused(rc, err, "weights file weights/resnet_cifar100.pt not found: convert the course pickle first "
                            "(python convert/keras_pickle_to_pt.py weights/resnet_cifar100.pkl -o "
                            "weights/resnet_cifar100.pt)")
    rc, _, err = call_script(capsys, EVALUATE, "--data-dir", setup[0] / "data")
    assert_refused(rc, err, "not found: convert the course pickle first (python convert/keras_pickle_to_pt.py")
    with pytest.raises(UserError, match=r"convert the course pickle first \(`tr.from_keras\('weights/resnet_cifar100"):
        tr.evaluate("weights/resnet_cifar100.pt", data_dir=setup[0] / "data")


def test_the_converter_says_one_line_unless_asked(setup, tmp_path, capsys):
    rc, out, err = call_script(capsys, CONVERTER, setup[0] / "keras3.pkl", "-o", tmp_path / "w.pt")
    assert rc == 0 and out.splitlines() == [f"converted 100 Keras tensors (100 classes) from {setup[0] / 'keras3.pkl'}"
                                            f" -> {tmp_path / 'w.pt'} (-v lists where each went)"], (out, err)


def test_resume_hints_are_commands_on_the_command_line_and_calls_in_python(setup, tmp_path, capsys):
    from torch_resnet.cli.shell import to_shell
    from torch_resnet.training.checkpoint import resume_command

    hint = resume_command(tmp_path / "my run")
    assert hint == f"`tr.finetune(resume=True, out='{tmp_path / 'my run'}')`"
    assert to_shell(hint) == f"python train/finetune.py --resume --out '{tmp_path / 'my run'}'"
