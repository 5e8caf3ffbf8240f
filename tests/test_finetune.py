"""The two fine-tuning regimes on small CIFAR-10-format data: what trains, what must not move."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import FIGURES, ROOT, run_script
from torch_resnet import train as trainer
from torch_resnet.config import TrainConfig
from torch_resnet.data import CIFAR10
from torch_resnet.files import load_model

SMALL = dict(epochs=2, batch_size=40, val_size=40, seed=3, download=False)


def train(setup, tmp_path, **kw):
    root, weights = setup
    cfg = TrainConfig(weights=str(weights), data_dir=str(root / "data"), out=str(tmp_path / "run"), **{**SMALL, **kw})
    metrics = trainer.main(cfg)
    return metrics, torch.load(weights, weights_only=True), torch.load(tmp_path / "run" / "model.pt", weights_only=True)


def is_bn(key):
    return ".bn" in key and not key.endswith(".weight") or key.rsplit(".", 2)[-2].startswith("bn")


@pytest.fixture(scope="module")
def freeze_run(setup, tmp_path_factory):
    return train(setup, tmp_path_factory.mktemp("freeze"), freeze=True)


@pytest.fixture(scope="module")
def full_run(setup, tmp_path_factory):
    return train(setup, tmp_path_factory.mktemp("full"), freeze=False)


def test_freeze_keeps_every_backbone_tensor_and_trains_the_head(freeze_run):
    metrics, before, after = freeze_run
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


def test_outputs_are_complete(full_run, tmp_path):
    metrics, _, _ = full_run
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for e in metrics["epochs"]:
        assert set(e) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_sec"}
    assert metrics["peak_memory_bytes"] > 0 and metrics["train_images"] == 120 and metrics["val_images"] == 40


def test_output_files(setup, tmp_path):
    metrics, _, _ = train(setup, tmp_path, freeze=True, epochs=1)
    out = tmp_path / "run"
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc") and len(csv_lines) == 2
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from torch_resnet import ResidualNetwork
    ResidualNetwork(10).load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)
    assert (out / "model.pt.keras_names.json").is_file()  # names kept for the way back to Keras


def test_freeze_step_needs_far_less_memory_than_full(freeze_run, full_run):
    freeze, full = freeze_run[0]["step_memory_bytes"], full_run[0]["step_memory_bytes"]
    FIGURES.append(("step memory at batch 40 (CPU accounting)",
                    f"freeze {freeze / 2**20:.1f} MiB, full {full / 2**20:.1f} MiB, ratio {freeze / full:.3f}"))
    assert freeze < full / 4


@pytest.mark.parametrize("augment", [True, False])  # without augmentation: cached backbone features
def test_learns_learnable_classes(setup, tmp_path, augment):
    # The parity fixture's random BN statistics give features with a large common offset that a
    # few Adam steps cannot get past. A stand-in for a pretrained network: PyTorch's init with
    # BN statistics measured on the training images, as a trained network would have them.
    from torch_resnet import ResidualNetwork
    from torch_resnet.data import load_cifar, to_model_input
    root, _ = setup
    torch.manual_seed(0)
    model = ResidualNetwork(100)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over what it sees
    with torch.no_grad():
        model.train()(to_model_input(load_cifar(root / "data", CIFAR10, "train").images))
    weights = tmp_path / "init.pt"
    torch.save(model.state_dict(), weights)
    metrics, _, _ = train((root, weights), tmp_path, freeze=True, epochs=4, batch_size=20, lr=0.03, augment=augment)
    FIGURES.append((f"freeze regime on learnable synthetic CIFAR-10, augment={augment}",
                    f"test accuracy {metrics['test_accuracy']:.3f}"))
    assert metrics["test_accuracy"] >= 0.4  # chance is 0.1


def test_two_stage_recipe_starts_full_regime_from_freeze_run(setup, freeze_run, tmp_path):
    stage1 = tmp_path / "stage1.pt"
    torch.save(freeze_run[2], stage1)
    metrics, _, after = train(setup, tmp_path, freeze=False, epochs=1, init_from=str(stage1))
    assert metrics["regime"] == "full"
    assert not torch.equal(after["head.weight"], freeze_run[2]["head.weight"])  # trained further
    for k in after:
        if ".bn" in k:
            assert torch.equal(after[k], freeze_run[2][k]), k


def finetune_cli(setup, out, *extra):
    root, weights = setup
    return [sys.executable, str(ROOT / "train/finetune.py"), "--weights", str(weights), "--data-dir",
            str(root / "data"), "--out", str(out), "--epochs", "3", "--batch-size", "40", "--val-size", "40",
            "--seed", "3", "--no-download", *extra]


def test_resume_after_kill_gives_the_same_weights(setup, tmp_path):
    straight = subprocess.run(finetune_cli(setup, tmp_path / "straight"), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(finetune_cli(setup, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "model.pt").exists()
    resumed = subprocess.run(finetune_cli(setup, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((out / "metrics.json").read_text())
    assert ma["test_accuracy"] == mb["test_accuracy"] and ma["test_loss"] == mb["test_loss"]


@pytest.mark.parametrize("args,needle", [
    (["--weights", "/nonexistent.pt"], "not found"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-1"], "--lr must be a number in (0, 1]"),
    (["--lr", "nan"], "--lr must be a number in (0, 1]"),
    (["--lr", "1e300"], "--lr must be a number in (0, 1]"),
    (["--seed", "1000000000000000"], "--seed must be between"),
    (["--device", "meta"], "only cpu and cuda"),
    (["--out", ""], "--out must name a folder"),
    (["--val-size", "100000"], "--val-size"),
    (["--device", "cuda:0"], "CUDA is not available"),
    (["--device", "banana"], "not a device"),
    (["--freeze", "--init-from", "x.pt"], "cannot be used with --freeze"),
    (["--resume"], "nothing to resume"),
])
def test_bad_options(setup, tmp_path, args, needle):
    root, weights = setup
    r = run_script("train/finetune.py", "--weights", weights, "--data-dir", root / "data", "--out", tmp_path / "o",
                   "--no-download", *args)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "model.pt").exists()


def test_argparse_nonsense_is_one_line_exit_2(tmp_path):
    r = run_script("train/finetune.py", "--epochs", "many")
    assert r.returncode == 2 and "invalid int value" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_wrong_weights(setup, tmp_path):
    root, weights = setup
    bad = tmp_path / "bad.pt"
    state = torch.load(weights, weights_only=True)
    state["backbone.stem.weight"] = state["backbone.stem.weight"][:8]
    torch.save(state, bad)
    r = run_script("train/finetune.py", "--weights", bad, "--data-dir", root / "data", "--out", tmp_path / "o")
    assert r.returncode == 2 and "does not fit ResidualNetwork" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "junk.pt").write_text("junk")
    r = run_script("train/finetune.py", "--weights", tmp_path / "junk.pt", "--data-dir", root / "data")
    assert r.returncode == 2 and "not a PyTorch state dict" in r.stderr
    ten = tmp_path / "ten.pt"
    torch.save({**torch.load(weights, weights_only=True), "head.weight": torch.zeros(10, 256),
                "head.bias": torch.zeros(10)}, ten)
    r = run_script("train/finetune.py", "--init-from", ten, "--weights", weights, "--data-dir", tmp_path / "none",
                   "--no-download", "--out", tmp_path / "o")
    assert r.returncode == 2 and "cifar10 not found" in r.stderr  # 10-class --init-from accepted, data missing
    r = run_script("train/finetune.py", "--init-from", weights, "--weights", weights, "--data-dir", root / "data",
                   "--no-download", "--out", tmp_path / "o")
    assert r.returncode == 2 and "a 100-class model" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_earlier_run_is_never_replaced_without_asking(setup, tmp_path):
    out = tmp_path / "o"
    r = subprocess.run(finetune_cli(setup, out, "--epochs", "1", "--freeze"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (out / "checkpoint.pt").unlink()  # a finished run whose checkpoint was cleaned up
    model = (out / "model.pt").read_bytes()
    r = subprocess.run(finetune_cli(setup, out, "--epochs", "1", "--freeze"), capture_output=True, text=True)
    assert r.returncode == 2 and "already holds a run (model.pt)" in r.stderr, r.stderr
    assert (out / "model.pt").read_bytes() == model


@pytest.mark.parametrize("checkpoint", [
    lambda model: b"not a checkpoint",
    lambda model: model,  # a model.pt where the checkpoint should be
])
def test_resume_from_a_bad_checkpoint(setup, tmp_path, checkpoint):
    out = tmp_path / "o"
    r = subprocess.run(finetune_cli(setup, out, "--epochs", "1", "--freeze"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (out / "checkpoint.pt").write_bytes(checkpoint((out / "model.pt").read_bytes()))
    r = subprocess.run(finetune_cli(setup, out, "--epochs", "1", "--freeze", "--resume"), capture_output=True, text=True)
    assert r.returncode == 2 and "is not a readable checkpoint" in r.stderr and "Traceback" not in r.stderr, r.stderr


def corrupt_copy(setup, tmp_path, damage):
    import shutil
    root, _ = setup
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    damage(data / CIFAR10.folder)
    return data


@pytest.mark.parametrize("damage,needle", [
    (lambda d: (d / "data_batch_3").unlink(), "data_batch_3 is missing"),
    (lambda d: (d / "test_batch").write_bytes(b"\x80\x02garbage"), "not a readable pickle"),
    (lambda d: (d / "data_batch_1").write_bytes((d / "data_batch_1").read_bytes()[:3000]), "not a readable pickle"),
])
def test_corrupt_data_dir(setup, tmp_path, damage, needle):
    data = corrupt_copy(setup, tmp_path, damage)
    r = run_script("train/finetune.py", "--weights", setup[1], "--data-dir", data, "--no-download",
                   "--out", tmp_path / "o")
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_wrong_structure_in_batch(setup, tmp_path):
    import pickle
    import numpy as np

    def damage(d):
        batch = pickle.loads((d / "data_batch_2").read_bytes(), encoding="bytes")
        batch[b"data"] = batch[b"data"].astype(np.float32)
        (d / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
        batch = pickle.loads((d / "data_batch_4").read_bytes(), encoding="bytes")
        batch[b"labels"][0] = 10
        (d / "data_batch_4").write_bytes(pickle.dumps(batch, protocol=2))

    def labels(d, value):
        batch = pickle.loads((d / "data_batch_1").read_bytes(), encoding="bytes")
        batch[b"labels"] = value
        (d / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))

    data = corrupt_copy(setup, tmp_path, damage)
    r = run_script("train/finetune.py", "--weights", setup[1], "--data-dir", data, "--no-download")
    assert r.returncode == 2 and "data_batch_2: 'data' must be uint8" in r.stderr
    (data / CIFAR10.folder / "data_batch_2").write_bytes((setup[0] / "data" / CIFAR10.folder / "data_batch_2").read_bytes())
    r = run_script("train/finetune.py", "--weights", setup[1], "--data-dir", data, "--no-download")
    assert r.returncode == 2 and "data_batch_4: label 10 outside 0..9" in r.stderr
    for value in (7, None, [1, [2, 3]]):  # not one integer per image
        labels(data / CIFAR10.folder, value)
        r = run_script("train/finetune.py", "--weights", setup[1], "--data-dir", data, "--no-download")
        assert r.returncode == 2 and "data_batch_1: 'labels' must be" in r.stderr and "Traceback" not in r.stderr


def test_non_finite_loss_stops_and_keeps_earlier_run(setup, tmp_path):
    out = tmp_path / "o"
    r = subprocess.run(finetune_cli(setup, out, "--epochs", "1", "--freeze"), capture_output=True, text=True)
    assert r.returncode == 0
    before = (out / "checkpoint.pt").read_bytes()
    poisoned = tmp_path / "poisoned.pt"  # a negative variance: NaN from the first batch on
    state = torch.load(setup[1], weights_only=True)
    state["backbone.blocks.4.bn2.running_var"][7] = -1.0
    torch.save(state, poisoned)
    cmd = finetune_cli(setup, out, "--freeze", "--overwrite", "--log-every", "1")
    cmd[cmd.index("--weights") + 1] = str(poisoned)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "non-finite" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_changed_options(setup, tmp_path):
    out = tmp_path / "o"
    r = subprocess.run(finetune_cli(setup, out, "--epochs", "1", "--freeze"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(finetune_cli(setup, out, "--epochs", "1", "--freeze", "--resume", "--lr", "0.5"),
                       capture_output=True, text=True)
    assert r.returncode == 2 and "used lr=None, not 0.5" in r.stderr, r.stderr


@pytest.mark.parametrize("poison,needle", [
    (lambda s: s.__setitem__("head.bias", torch.full((100,), float("nan"))), "head.bias holds non-finite"),
    (lambda s: s.__setitem__("head.weight", s["head.weight"].long()), "head.weight has dtype torch.int64"),
    (lambda s: s.__setitem__("backbone.bn.weight", [1.0] * 256), "backbone.bn.weight is a list"),
])
def test_weights_with_bad_values(setup, tmp_path, poison, needle):
    state = torch.load(setup[1], weights_only=True)
    poison(state)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    r = run_script("train/finetune.py", "--weights", bad, "--data-dir", setup[0] / "data", "--out", tmp_path / "o")
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_step_memory_measurement_leaves_no_trace(setup):
    from torch_resnet.memory import step_memory_bytes
    from torch_resnet.regimes import optimizer_for, prepare_model
    from torch_resnet.train import Stepper
    cfg = TrainConfig(freeze=False)
    model = prepare_model(cfg, pretrained=load_model(setup[1]))
    opt = optimizer_for(model, cfg)
    stepper = Stepper(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9 ** s), cfg, torch.device("cpu"))
    stepper.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)  # as with --amp fp16
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    stepper.step(x, y)  # some optimizer state to keep
    before = ({k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict(),
              stepper.scheduler.state_dict(), stepper.scaler.state_dict())
    before_opt = {k: {n: t.clone() for n, t in s.items()} for k, s in before[1]["state"].items()}
    assert step_memory_bytes(stepper, x, y) > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before[0].items())
    after_opt = opt.state_dict()["state"]
    assert all(torch.equal(t, after_opt[k][n]) for k, s in before_opt.items() for n, t in s.items())
    assert stepper.scheduler.state_dict() == before[2] and stepper.scaler.state_dict() == before[3]


def test_class_names_that_are_not_utf8(setup, tmp_path):
    import pickle
    from torch_resnet.data import load_cifar
    data = corrupt_copy(setup, tmp_path, lambda d: (d / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [b"\xff\xfe"] * 10}, protocol=2)))
    assert len(load_cifar(data, CIFAR10, "test", download=False).class_names) == 10
