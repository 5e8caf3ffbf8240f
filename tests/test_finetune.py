"""The two fine-tuning regimes on small CIFAR-10-format data: what trains, what must not move,
what a run leaves behind, and every refusal (in process; the real script once)."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIGURES, ROOT, SMALL, assert_refused, call_script, finetune_args, run_script, train
from torch_resnet import ResidualNetwork
from torch_resnet.data.cifar import CIFAR10, load_cifar
from torch_resnet.model import images_to_input
from torch_resnet.data.synthetic import write_cifar

FINETUNE = "train/finetune.py"


def test_freeze_keeps_every_backbone_tensor_and_trains_the_head(freeze_run):
    metrics, before, after, _ = freeze_run
    backbone = [k for k in before if k.startswith("backbone.")]
    assert len(backbone) == len([k for k in after if k.startswith("backbone.")]) > 100
    for k in backbone:
        assert torch.equal(before[k], after[k]), k
    assert after["head.weight"].shape == (10, 256)
    assert metrics["trainable_parameters"] == 2570 and metrics["regime"] == "freeze"


def test_full_regime_keeps_batchnorm_and_trains_convolutions_and_head(full_run):
    metrics, before, after = full_run
    bn = [k for k in before if k.rsplit(".", 1)[0].rsplit(".", 1)[-1] in ("bn", "bn1", "bn2")]
    convs = [k for k in before if k.endswith("weight") and before[k].ndim == 4]
    assert len(bn) == 19 * 5 and len(convs) == 22
    for k in bn:  # weight, bias, running mean/var and the step counter
        assert torch.equal(before[k], after[k]), k
    for k in convs:
        assert not torch.equal(before[k], after[k]), k
    assert after["head.weight"].shape == (10, 256)
    assert metrics["trainable_parameters"] == 4322100 - 2 * 5408 // 2 - 25700 + 2570


def test_run_outputs(freeze_run):
    metrics, _, after, out = freeze_run
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for e in metrics["epochs"]:
        assert set(e) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_sec"}
    assert metrics["peak_memory_bytes"] > 0 and metrics["train_images"] == 48 and metrics["val_images"] == 16
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc") and len(csv_lines) == 3
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ResidualNetwork(10).load_state_dict(after, strict=True)
    assert (out / "model.pt.keras_names.json").is_file()  # names kept for the way back to Keras
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.pt", "curves.png", "metrics.csv",  # no
                                                     "metrics.json", "model.pt", "model.pt.keras_names.json"]  # tmp file


def test_freeze_step_needs_far_less_memory_than_full(freeze_run, full_run):
    freeze, full = freeze_run[0]["step_memory_bytes"], full_run[0]["step_memory_bytes"]
    FIGURES.append((f"step memory at batch {SMALL['batch_size']} (CPU accounting)",
                    f"freeze {freeze / 2**20:.1f} MiB, full {full / 2**20:.1f} MiB, ratio {freeze / full:.3f}"))
    assert freeze < full / 4


@pytest.mark.slow
@pytest.mark.parametrize("augment", [True, False])  # without augmentation: cached backbone features
def test_learns_learnable_classes(setup, tmp_path, augment):
    # A stand-in for a pretrained network: PyTorch's init with BN statistics measured on the
    # training images, as a trained network would have them (random statistics, as the parity
    # fixtures' Keras weights have, give features with a large common offset that a few Adam
    # steps cannot get past). 88 training images, 24 steps.
    data = tmp_path / "data"
    write_cifar(data, CIFAR10, train_size=96, test_size=40, seed=5)
    torch.manual_seed(0)
    model = ResidualNetwork(100)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over what it sees
    with torch.no_grad():
        model.train()(images_to_input(load_cifar(data, CIFAR10, "train").images))
    weights = tmp_path / "init.pt"
    torch.save(model.state_dict(), weights)
    metrics, _, _ = train(setup, tmp_path / "run", weights=weights, data_dir=data, freeze=True, epochs=4,
                          batch_size=16, val_size=8, lr=0.03, augment=augment)
    FIGURES.append((f"freeze regime on learnable synthetic CIFAR-10, augment={augment}",
                    f"test accuracy {metrics['test_accuracy']:.3f}"))
    assert metrics["test_accuracy"] >= 0.4  # chance is 0.1


def test_two_stage_recipe_starts_full_regime_from_freeze_run(setup, freeze_run, tmp_path):
    stage1 = tmp_path / "stage1.pt"
    torch.save(freeze_run[2], stage1)
    metrics, _, after = train(setup, tmp_path / "run", freeze=False, epochs=1, init_from=str(stage1))
    assert metrics["regime"] == "full"
    assert not torch.equal(after["head.weight"], freeze_run[2]["head.weight"])  # trained further
    for k in after:
        if ".bn" in k:
            assert torch.equal(after[k], freeze_run[2][k]), k


# Runs train/finetune.py and SIGKILLs it at its first training step after the first checkpoint
# was written: inside the second epoch, whatever the machine's speed.
KILL_IN_SECOND_EPOCH = """
import os, runpy, signal, sys
from torch_resnet.training import train
save = train.save_checkpoint
def save_then_die_at_the_next_step(*args, **kwargs):
    save(*args, **kwargs)
    train.Stepper.step = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
train.save_checkpoint = save_then_die_at_the_next_step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(setup, full_run, tmp_path, capsys):
    out = tmp_path / "killed"
    args = finetune_args(setup, out)
    killed = subprocess.run([sys.executable, "-c", KILL_IN_SECOND_EPOCH, str(ROOT / FINETUNE), *args],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "epoch 1/2" in killed.stdout and "epoch 2/2" not in killed.stdout
    assert (out / "checkpoint.pt").is_file() and not (out / "model.pt").exists()
    rc, stdout, err = call_script(capsys, FINETUNE, *args, "--resume")
    assert rc == 0, err
    assert "resuming" in stdout
    metrics, _, straight = full_run  # the same options, never interrupted
    resumed = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_accuracy"] == metrics["test_accuracy"] and m["test_loss"] == metrics["test_loss"]


@pytest.mark.parametrize("args,needle", [
    (["--weights", "/nonexistent.pt"], "not found"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-1"], "--lr must be a number in (0, 1]"),
    (["--lr", "nan"], "--lr must be a number in (0, 1]"),
    (["--lr", "1e300"], "--lr must be a number in (0, 1]"),
    (["--seed", "1000000000000000"], "--seed must be between"),
    (["--amp", "fp8"], "--amp must be one of auto, bf16, fp16, off"),
    (["--device", "meta"], "only cpu and cuda"),
    (["--out", ""], "--out must name a folder"),
    (["--val-size", "100000"], "--val-size"),
    (["--device", "cuda:0"], "CUDA is not available"),
    (["--device", "banana"], "not a device"),
    (["--freeze", "--init-from", "x.pt"], "cannot be used with --freeze"),
    (["--resume"], "nothing to resume"),
])
def test_bad_options(setup, tmp_path, capsys, args, needle):
    root, weights = setup
    rc, _, err = call_script(capsys, FINETUNE, "--weights", weights, "--data-dir", root / "data",
                             "--out", tmp_path / "o", "--no-download", *args)
    assert_refused(rc, err, needle, nothing_in=tmp_path)


@pytest.mark.slow
def test_argparse_nonsense_is_one_line_exit_2_from_the_real_script(tmp_path):
    r = run_script(FINETUNE, "--epochs", "many")
    assert_refused(r.returncode, r.stderr, "invalid int value", nothing_in=tmp_path)


def test_wrong_weights(setup, tmp_path, capsys):
    root, weights = setup
    bad = tmp_path / "w" / "bad.pt"
    bad.parent.mkdir()
    state = torch.load(weights, weights_only=True)
    state["backbone.stem.weight"] = state["backbone.stem.weight"][:8]
    torch.save(state, bad)
    out = tmp_path / "o"
    rc, _, err = call_script(capsys, FINETUNE, "--weights", bad, "--data-dir", root / "data", "--out", out)
    assert_refused(rc, err, "does not fit ResidualNetwork", nothing_in=out)
    (tmp_path / "w" / "junk.pt").write_text("junk")
    rc, _, err = call_script(capsys, FINETUNE, "--weights", tmp_path / "w" / "junk.pt", "--data-dir", root / "data")
    assert_refused(rc, err, "not a PyTorch state dict", nothing_in=tmp_path / "runs")
    ten = tmp_path / "w" / "ten.pt"
    torch.save({**torch.load(weights, weights_only=True), "head.weight": torch.zeros(10, 256),
                "head.bias": torch.zeros(10)}, ten)
    rc, _, err = call_script(capsys, FINETUNE, "--init-from", ten, "--weights", weights,
                             "--data-dir", tmp_path / "none", "--no-download", "--out", out)
    assert_refused(rc, err, "cifar10 not found", nothing_in=out)  # 10-class --init-from accepted, data missing
    rc, _, err = call_script(capsys, FINETUNE, "--init-from", weights, "--weights", weights,
                             "--data-dir", root / "data", "--no-download", "--out", out)
    assert_refused(rc, err, "a 100-class model", nothing_in=out)


@pytest.fixture
def finished_run(freeze_run, tmp_path):
    """A copy of the session's finished --freeze run, to be damaged or run again."""
    out = tmp_path / "o"
    shutil.copytree(freeze_run[3], out)
    return out


def test_earlier_run_is_never_replaced_without_asking(setup, finished_run, capsys):
    (finished_run / "checkpoint.pt").unlink()  # a finished run whose checkpoint was cleaned up
    model = (finished_run / "model.pt").read_bytes()
    rc, _, err = call_script(capsys, FINETUNE, *finetune_args(setup, finished_run, "--freeze"))
    err = assert_refused(rc, err, "already holds a finished run (metrics.json); pass --overwrite to replace it")
    assert "--resume" not in err  # it would only be refused in turn
    assert (finished_run / "model.pt").read_bytes() == model
    (finished_run / "metrics.json").unlink()  # a run stopped before its end: resuming it is the way on
    rc, _, err = call_script(capsys, FINETUNE, *finetune_args(setup, finished_run, "--freeze"))
    assert_refused(rc, err, "already holds a run (model.pt); pass --resume to continue it, --overwrite")


@pytest.mark.parametrize("checkpoint", [
    lambda model: b"not a checkpoint",
    lambda model: model,  # a model.pt where the checkpoint should be
])
def test_resume_from_a_bad_checkpoint(setup, finished_run, capsys, checkpoint):
    (finished_run / "metrics.json").unlink()  # a run stopped before its end
    (finished_run / "checkpoint.pt").write_bytes(checkpoint((finished_run / "model.pt").read_bytes()))
    rc, _, err = call_script(capsys, FINETUNE, *finetune_args(setup, finished_run, "--freeze", "--resume"))
    assert_refused(rc, err, "is not a readable checkpoint")


def test_resume_refuses_changed_options(setup, finished_run, capsys):
    (finished_run / "metrics.json").unlink()  # a run stopped before its end
    rc, _, err = call_script(capsys, FINETUNE, *finetune_args(setup, finished_run, "--freeze", "--resume",
                                                              "--lr", "0.5"))
    assert_refused(rc, err, "was started with the default --lr (0.001), not --lr 0.5; leave --lr out")


def test_non_finite_loss_stops_and_keeps_earlier_run(setup, finished_run, tmp_path, capsys):
    before = (finished_run / "checkpoint.pt").read_bytes()
    poisoned = tmp_path / "poisoned.pt"  # a negative variance: NaN from the first batch on
    state = torch.load(setup[1], weights_only=True)
    state["backbone.blocks.4.bn2.running_var"][7] = -1.0
    torch.save(state, poisoned)
    args = finetune_args(setup, finished_run, "--freeze", "--overwrite", "--log-every", "1")
    args[args.index("--weights") + 1] = str(poisoned)
    rc, _, err = call_script(capsys, FINETUNE, *args)
    assert_refused(rc, err, "non-finite")
    assert (finished_run / "checkpoint.pt").read_bytes() == before


def corrupt_copy(setup, tmp_path, damage):
    root, _ = setup
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    damage(data / CIFAR10.folder)
    return data


def call_with_data(capsys, setup, tmp_path, data):
    return call_script(capsys, FINETUNE, "--weights", setup[1], "--data-dir", data, "--no-download",
                       "--out", tmp_path / "o")


@pytest.mark.parametrize("damage,needle", [
    (lambda d: (d / "data_batch_3").unlink(), "data_batch_3 is missing"),
    (lambda d: (d / "test_batch").write_bytes(b"\x80\x02garbage"), "not a readable pickle"),
    (lambda d: (d / "data_batch_1").write_bytes((d / "data_batch_1").read_bytes()[:3000]), "not a readable pickle"),
])
def test_corrupt_data_dir(setup, tmp_path, capsys, damage, needle):
    rc, _, err = call_with_data(capsys, setup, tmp_path, corrupt_copy(setup, tmp_path, damage))
    assert_refused(rc, err, needle, nothing_in=tmp_path / "o")


def rewrite_batch(folder, name, change):
    path = folder / name
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    change(batch)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def test_wrong_structure_in_batch(setup, tmp_path, capsys):
    def damage(d):
        rewrite_batch(d, "data_batch_2", lambda b: b.__setitem__(b"data", b[b"data"].astype(np.float32)))
        rewrite_batch(d, "data_batch_4", lambda b: b[b"labels"].__setitem__(0, 10))

    data = corrupt_copy(setup, tmp_path, damage)
    rc, _, err = call_with_data(capsys, setup, tmp_path, data)
    assert_refused(rc, err, "data_batch_2: 'data' must be uint8")
    shutil.copyfile(setup[0] / "data" / CIFAR10.folder / "data_batch_2", data / CIFAR10.folder / "data_batch_2")
    rc, _, err = call_with_data(capsys, setup, tmp_path, data)
    assert_refused(rc, err, "data_batch_4: label 10 outside 0..9")
    for value in (7, None, [1, [2, 3]]):  # not one integer per image
        rewrite_batch(data / CIFAR10.folder, "data_batch_1", lambda b: b.__setitem__(b"labels", value))
        rc, _, err = call_with_data(capsys, setup, tmp_path, data)
        assert_refused(rc, err, "data_batch_1: 'labels' must be", nothing_in=tmp_path / "o")


@pytest.mark.parametrize("poison,needle", [
    (lambda s: s.__setitem__("head.bias", torch.full((100,), float("nan"))), "head.bias holds non-finite"),
    (lambda s: s.__setitem__("head.weight", s["head.weight"].long()), "head.weight has dtype torch.int64"),
    (lambda s: s.__setitem__("backbone.bn.weight", [1.0] * 256), "backbone.bn.weight is a list"),
])
def test_weights_with_bad_values(setup, tmp_path, capsys, poison, needle):
    state = torch.load(setup[1], weights_only=True)
    poison(state)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    rc, _, err = call_script(capsys, FINETUNE, "--weights", bad, "--data-dir", setup[0] / "data",
                             "--out", tmp_path / "o")
    assert_refused(rc, err, needle, nothing_in=tmp_path / "o")


def test_class_names_that_are_not_utf8(setup, tmp_path):
    data = corrupt_copy(setup, tmp_path, lambda d: (d / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [b"cat\xff", b"\xfe"] + [b"ok%d" % i for i in range(8)]}, protocol=2)))
    names = load_cifar(data, CIFAR10, "test", download=False).class_names
    assert names == ["cat\ufffd", "\ufffd"] + [f"ok{i}" for i in range(8)]  # undecodable bytes replaced
