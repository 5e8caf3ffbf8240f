"""The stumbles between the README's sections: mixed-up files, a failed download, --help."""
import importlib.util
import pickle

import numpy as np
import pytest
import torch

from conftest import ROOT
from torch_resnet import ResidualNetwork
from torch_resnet.data import CIFAR10, find_or_download
from torch_resnet.errors import UserError, cli


def script_main(path):
    spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3], ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("legacy", [False, True])  # torch.save's zip format, and its pre-1.6 one
def test_a_state_dict_given_to_the_converter_says_which_script_takes_it(tmp_path, capsys, legacy):
    pt = tmp_path / "w.pt"
    torch.save(ResidualNetwork(10).state_dict(), pt, _use_new_zipfile_serialization=not legacy)
    assert script_main("convert/keras_pickle_to_pt.py")([str(pt), "-o", str(tmp_path / "out.pt")]) == 2
    one_line_error(capsys, "is a PyTorch file (torch.save), not a Keras pickle", "train/finetune.py --weights")
    assert not (tmp_path / "out.pt").exists()


class FailingDownload:
    """torchvision's dataset class as it behaves offline halfway: folder made, archive begun."""

    def __init__(self, root, train, download):
        from pathlib import Path
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b partial")
        raise OSError("connection reset")


def test_a_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FailingDownload)
    with pytest.raises(UserError, match="download failed: connection reset"):
        find_or_download(tmp_path / "new" / "data", CIFAR10)
    assert list(tmp_path.iterdir()) == []  # not even new/
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match="download failed"):
        find_or_download(tmp_path / "mine", CIFAR10)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]  # theirs kept, the archive gone


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        script_main("train/evaluate.py")(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: 256" in out and "(default: data)" in out and "default: None" not in out


def test_interrupted_says_how_to_go_on(capsys):
    @cli
    def main(argv=None):
        raise KeyboardInterrupt("continue with python train/finetune.py --resume --out runs/full")

    assert main([]) == 130
    one_line_error(capsys, "error: interrupted; continue with python train/finetune.py --resume --out runs/full")


def test_keras_pickle_loads_as_an_array_dict(tmp_path):  # the converter's input stays a plain pickle
    from torch_resnet.safe_pickle import load_array_dict
    (tmp_path / "k.pkl").write_bytes(pickle.dumps({"dense/bias": np.zeros(3, np.float32)}))
    assert list(load_array_dict(tmp_path / "k.pkl")) == ["dense/bias"]
