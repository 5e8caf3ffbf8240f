"""The trainer's parts on their own: memory measurement, the torchrun set-up, the run's figures."""
import sys

import matplotlib
import pytest
import torch

from torch_resnet.training import distributed
from torch_resnet.training.config import TrainConfig
from torch_resnet.errors import UserError
from torch_resnet.formats.files import load_model
from torch_resnet.training.memory import peak_memory_bytes, step_memory_bytes
from torch_resnet.training.outputs import curves_figure, write_png
from torch_resnet.training.regimes import optimizer_for, prepare_model
from torch_resnet.training.stepper import Stepper
from torch_resnet.data.cifar import CifarSplit
from torch_resnet.data.source import CifarSource
from torch_resnet.training import train
from torch_resnet.training.train import load_splits


def test_step_memory_measurement_leaves_no_trace(setup):
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


def test_peak_memory_on_linux_macos_and_windows(monkeypatch):
    import resource
    cpu = torch.device("cpu")
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_memory_bytes(cpu) >= kib * 1024 > 0  # Linux: ru_maxrss in KiB
    monkeypatch.setattr(sys, "platform", "darwin")  # macOS: ru_maxrss in bytes
    assert kib <= peak_memory_bytes(cpu) < kib * 1024
    monkeypatch.setitem(sys.modules, "resource", None)  # Windows: no resource module at all
    assert peak_memory_bytes(cpu) is None


@pytest.fixture
def two_ranks(monkeypatch):
    """This process as rank 0 of 2 (what torchrun sets), with no process group behind it."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("group started"))


@pytest.mark.parametrize("device,needle", [
    ("banana", "not a device"),
    ("meta", "only cpu and cuda"),
    ("cuda:1", "each rank takes cuda:LOCAL_RANK"),
])
def test_torchrun_checks_the_device_first(two_ranks, monkeypatch, device, needle):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # so that cuda:1 is a device here
    with pytest.raises(UserError, match=needle):
        with distributed.distributed(device):
            pass


def test_torchrun_needs_its_variables_together(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(UserError, match="set together"):
        with distributed.distributed("cpu"):
            pass


def test_fewer_training_images_than_ranks_is_refused(setup, monkeypatch):
    monkeypatch.setattr(distributed.dist, "barrier", lambda: None)
    cfg = TrainConfig(data_dir=str(setup[0] / "data"), val_size=63, download=False)  # leaves 1 of 64 images
    ctx = distributed.RunContext(torch.device("cpu"), rank=0, world=2)
    with pytest.raises(UserError, match="leaves 1 training images for 2 processes"):
        load_splits(cfg, ctx, CifarSource(cfg.data_dir))


class Shapes:
    """A data source of another kind than CIFAR (what an image folder will be): 24 x 24 images of
    three classes, a bright square, a dark one, a stripe, made in memory."""
    name, num_classes = "shapes", 3

    def split(self, which, download):
        g = torch.Generator().manual_seed(0 if which == "train" else 1)
        n = 48 if which == "train" else 24
        labels = torch.arange(n) % 3
        images = torch.randint(0, 60, (n, 3, 24, 24), generator=g, dtype=torch.uint8)
        images[labels == 0, :, 6:18, 6:18] = 250
        images[labels == 1, :, 6:18, 6:18] = 0
        images[labels == 2, :, :, 10:14] = 200
        return CifarSplit(images, labels, ["bright", "dark", "stripe"])


@pytest.mark.slow
def test_a_data_source_of_another_kind_plugs_into_the_loop(setup, tmp_path):
    """The loop takes any DataSource: the head follows its classes, the record its names and sizes."""
    cfg = TrainConfig(freeze=True, epochs=2, batch_size=16, val_size=12, lr=0.05, device="cpu", amp="off",
                      out=str(tmp_path / "shapes"), weights=str(setup[1]))
    metrics = train.main(cfg, quiet=True, data=Shapes())
    model = load_model(tmp_path / "shapes" / "model.pt")
    assert model.num_classes == 3 and metrics["class_names"] == ["bright", "dark", "stripe"]
    assert (metrics["train_images"], metrics["val_images"], metrics["test_images"]) == (36, 12, 24)
    assert metrics["test_accuracy"] > 0.5  # it learnt the shapes (chance: 1/3)


def test_curves_leave_the_plotting_backend_alone(tmp_path, monkeypatch):
    monkeypatch.setitem(matplotlib.rcParams, "backend", "svg")  # as a notebook or a GUI would have it
    rows = [dict(epoch=e, train_loss=1 / e, val_loss=1.1 / e, train_acc=0.5, val_acc=0.4) for e in (1, 2)]
    write_png(tmp_path / "curves.png", curves_figure(rows, "freeze"))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == "svg"
