"""Fine-tuning a keras.applications ResNet on an image folder (class sub-folders of real JPEG and
PNG files made here): decoding to RGB, the held-out test split, messy folders refused in one line
before any work, and both regimes on ResNet50 with the course's Dense(1024) + Dense(classes) head."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_refused, call_script, stop_in_epoch
from torch_resnet.applications.resnet import build
from torch_resnet.data.images import ImageFolderSource
from torch_resnet.formats.files import load_model, save_model
from torch_resnet.model import images_to_input

FINETUNE = "train/finetune.py"
CLASSES = ("albatross", "crow", "wren")
MODES = ("RGB", "L", "P", "RGBA")  # JPEG colour, PNG grayscale, palette, with alpha


def make_folder(root, per_class=6, size=(40, 52)):
    """Real image files, every colour mode, of sizes that differ; returns the RGB arrays by path."""
    rng, made = np.random.default_rng(0), {}
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            rgb = rng.integers(0, 256, (size[0] + i, size[1], 3), dtype=np.uint8)
            mode = MODES[i % len(MODES)]
            image = Image.fromarray(rgb).convert(mode)
            path = root / c / f"{i}.{'jpg' if mode == 'RGB' else 'png'}"
            image.save(path)
            made[path] = np.asarray(Image.open(path).convert("RGB"))
    return made


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "birds", make_folder(tmp_path / "birds")


def test_images_are_decoded_to_rgb_and_resized(folder):
    root, made = folder
    source = ImageFolderSource(root, image_size=32)
    train, test = source.split("train"), source.split("test")
    assert source.num_classes == 3 and train.class_names == list(CLASSES)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert len(train.labels) + len(test.labels) == len(made) and len(test.labels) == 3  # one per class held out
    assert set(test.labels.tolist()) == {0, 1, 2}
    # a palette PNG and a grayscale PNG decode to the RGB that PIL gives; the gray one has equal channels
    full = ImageFolderSource(root, test_dir=root, image_size=40).split("test")
    gray = full.images[1]  # albatross/1.png, mode L
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert not torch.equal(full.images[2][0], full.images[2][1])  # palette: colour kept


@pytest.mark.parametrize("edit, needles", [
    (lambda root: (root / "crow" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
     ("crow/5.png", "not a readable image", "--skip-bad-images")),
    (lambda root: (root / "wren" / "notes.txt").write_text("seen at dawn"), ("wren/notes.txt", "not a readable image")),
    (lambda root: (root / "empty").mkdir(), ("class folder 'empty' holds no images",)),
], ids=["corrupt PNG", "text file", "empty class"])
def test_messy_folders_get_one_line_before_any_work(folder, edit, needles, capsys, tmp_path):
    root, _ = folder
    edit(root)
    weights = tmp_path / "r50.pt"
    save_model(build("ResNet50", include_top=False), weights)
    rc, _, stderr = call_script(capsys, FINETUNE, "--freeze", "--weights", weights, "--data-dir", root,
                                "--image-size", 32, "--epochs", 1, "--out", tmp_path / "run")
    assert_refused(rc, stderr, *needles, nothing_in=tmp_path / "run")


def test_test_classes_must_be_the_training_classes(folder, tmp_path, capsys):
    root, _ = folder
    other = tmp_path / "test"
    make_folder(other, per_class=2)
    (other / "crow").rename(other / "raven")
    save_model(build("ResNet50", include_top=False), tmp_path / "r50.pt")
    rc, _, stderr = call_script(capsys, FINETUNE, "--weights", tmp_path / "r50.pt", "--data-dir", root, "--test-dir",
                                other, "--out", tmp_path / "run")
    assert_refused(rc, stderr, "its classes differ", "crow", "raven", nothing_in=tmp_path / "run")


@pytest.mark.parametrize("args, needles", [
    (["train/finetune.py", "--head", "1024,3", "--init-from", "{run}"], ("--head makes a new head", "--init-from")),
    (["train/evaluate.py", "--keras", "{weights}", "--test-dir", "{root}"], ("--keras", "course network")),
    (["train/evaluate.py", "--test-dir", "{root}", "--image-size", "-5"], ("--image-size", "between 32 and 4096")),
], ids=["head with init-from", "evaluate --keras", "image size"])
def test_options_that_cannot_apply_get_one_line(folder, tmp_path, capsys, args, needles):
    root, _ = folder
    weights = tmp_path / "r50.pt"
    save_model(build("ResNet50", classes=3), weights)
    script, *rest = [a.format(run=weights, weights=weights, root=root) for a in args]
    rc, _, stderr = call_script(capsys, script, "--weights", weights, *rest)
    assert_refused(rc, stderr, *needles)


def test_caffe_preprocessing_is_bgr_less_the_imagenet_mean():
    images = torch.tensor([[[[0]], [[128]], [[255]]]], dtype=torch.uint8)  # one pixel, R=0 G=128 B=255
    x = images_to_input(images, mode="caffe")
    assert x.flatten().tolist() == pytest.approx([255 - 103.939, 128 - 116.779, 0 - 123.68])
    assert images_to_input(images, mode="tf").flatten().tolist() == pytest.approx([-1, 128 / 127.5 - 1, 1], abs=1e-7)


def run(capsys, *args):
    rc, stdout, stderr = call_script(capsys, FINETUNE, *args)
    assert rc == 0, stderr
    return stdout


@pytest.fixture
def resnet50(tmp_path):
    """A ResNet50 with Keras' top for 1000 classes (no Keras needed: the converter's tests check
    the weights), at 32 x 32: its head is replaced by the run's."""
    torch.manual_seed(0)
    model = build("ResNet50", classes=1000)
    model.input_size = [32, 32]
    save_model(model, tmp_path / "r50.pt")
    return tmp_path / "r50.pt"


@pytest.mark.slow
def test_freeze_trains_the_head_only(folder, resnet50, tmp_path, capsys):
    root, _ = folder
    said = run(capsys, "--freeze", "--weights", resnet50, "--data-dir", root, "--head", "1024,3", "--head-dropout",
               "0.4", "--epochs", 1, "--batch-size", 4, "--out", tmp_path / "run")
    assert "trainable parameters 2,101,251" in said  # 2048*1024+1024 + 1024*3+3
    before, after = load_model(resnet50).state_dict(), load_model(tmp_path / "run" / "model.pt")
    assert all(torch.equal(before[k], v) for k, v in after.state_dict().items() if k.startswith("backbone."))
    assert [d.units for d in after.head_layers] == [1024, 3] and after.head_layers[1].dropout == 0.4
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["network"]["network"] == "ResNet50" and metrics["data"] == "birds"
    assert metrics["train_images"] + metrics["val_images"] + metrics["test_images"] == 18


@pytest.mark.slow
def test_full_regime_keeps_batchnorm_and_resumes_exactly(folder, resnet50, tmp_path, capsys, monkeypatch):
    root, _ = folder
    args = ["--weights", resnet50, "--data-dir", root, "--epochs", 2, "--batch-size", 6, "--val-size", 0]
    run(capsys, *args, "--out", tmp_path / "whole")
    before, whole = load_model(resnet50).state_dict(), load_model(tmp_path / "whole" / "model.pt").state_dict()
    bns = [k for k in before if "bn" in k.split(".")[-2]]  # bn, bn1..3, shortcut_bn: all four tensors each
    assert len(bns) == 53 * 5 and all(torch.equal(before[k], whole[k]) for k in bns)  # BatchNorm frozen
    assert not torch.equal(before["backbone.stem.conv.weight"], whole["backbone.stem.conv.weight"])
    stop_in_epoch(monkeypatch, 1)
    rc, _, _ = call_script(capsys, FINETUNE, *args, "--out", tmp_path / "stopped")
    assert rc == 130
    monkeypatch.undo()
    run(capsys, "--resume", "--out", tmp_path / "stopped")
    resumed = load_model(tmp_path / "stopped" / "model.pt").state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.slow
def test_unreadable_files_can_be_skipped_and_counted(folder, resnet50, tmp_path, capsys):
    root, _ = folder
    (root / "crow" / "5.png").write_bytes(b"not an image")
    said = run(capsys, "--freeze", "--weights", resnet50, "--data-dir", root, "--skip-bad-images", "--epochs", 1,
               "--batch-size", 4, "--out", tmp_path / "run")
    assert "1 unreadable files skipped" in said
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"] == [str(root / "crow" / "5.png")]
