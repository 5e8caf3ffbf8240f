"""Frozen layers made cheaper: the full regime's BatchNorm folded into the convolution before it,
and the freeze regime's backbone compiled with inductor freezing where measured to pay. Neither
may change results beyond float rounding, nor the state dict."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import train
from torch_resnet import ResidualNetwork
from torch_resnet.model import ResidualBlock
from torch_resnet.training import performance
from torch_resnet.training.frozen_backbone import compile_with_freezing, frozen_backbone
from torch_resnet.applications import build
from torch_resnet.training.folded_applications import FoldedBottleneckV1, FoldedBottleneckV2
from torch_resnet.training.frozen_batchnorm import FoldedResidualBlock, FrozenBatchNorm2d, freeze_batchnorm

CPU = torch.device("cpu")


def network_with_trained_statistics(shortcut_from_raw):
    torch.manual_seed(0)
    model = ResidualNetwork(10, shortcut_from_raw=shortcut_from_raw)
    for m in model.modules():  # BatchNorms as training leaves them, not the identity of a new one
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.3, 3)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("shortcut_from_raw", [False, True])
def test_folded_batchnorm_trains_as_the_unfolded_one(shortcut_from_raw):
    model = network_with_trained_statistics(shortcut_from_raw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_batchnorm(model.backbone)
    assert all(type(b) is FoldedResidualBlock for b in model.backbone.blocks)
    bns = [m for m in model.modules() if "BatchNorm" in type(m).__name__]
    assert len(bns) == 19 and all(type(m) is FrozenBatchNorm2d for m in bns)  # explicit modules, no class swap
    assert not [n for n, _ in model.named_parameters() if ".bn" in n]  # buffers: nothing of them can train
    state = model.state_dict()
    assert list(state) == list(before) and all(torch.equal(state[k], v) for k, v in before.items())
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 8, 8))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # statistics untouched

    reference = copy.deepcopy(model)
    for block in reference.backbone.blocks:
        block.__class__ = ResidualBlock  # the model's own block, with the same frozen BatchNorms
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    y = torch.randint(0, 10, (4,))
    for m in (model, reference):
        m.train()
        F.cross_entropy(m(x), y).backward()
    with torch.no_grad():
        folded, unfolded = model(x), reference(x)
    assert (folded - unfolded).abs().max() <= 1e-5 * unfolded.abs().max()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if q.grad is None:
            assert p.grad is None, name  # frozen BatchNorm: no gradient in either
            continue
        assert (p.grad - q.grad).norm() <= 1e-4 * q.grad.norm(), name

    model.eval(), reference.eval()  # evaluation is the exact path, bit for bit
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("name", ["ResNet50", "ResNet50V2"])
def test_keras_applications_batchnorm_folds_into_its_convolutions(name):
    """Every v1 BatchNorm (and V2's bn1, bn2) folded while training: the same logits and gradients as
    the unfolded frozen network to float rounding, the state dict unchanged, eval bit for bit."""
    torch.manual_seed(0)
    model = build(name, classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.3, 3), m.weight.data.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = copy.deepcopy(model)
    freeze_batchnorm(model.backbone)
    for m in reference.modules():  # the unfolded network, its BatchNorms frozen the plain way
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval().requires_grad_(False)
            m.train = lambda mode=True, m=m: m
    folded = (FoldedBottleneckV2 if name.endswith("V2") else FoldedBottleneckV1)
    assert sum(type(m) is folded for m in model.modules()) == 16
    state = model.state_dict()
    assert list(state) == list(before) and all(torch.equal(state[k], v) for k, v in before.items())
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randint(0, 10, (2,))
    for m in (model, reference):
        F.cross_entropy(m.train()(x), y).backward()
    unfolded = dict(reference.named_parameters())  # the folded model's BatchNorms hold buffers, not parameters
    for key, p in model.named_parameters():
        assert (p.grad - unfolded[key].grad).norm() <= 1e-4 * unfolded[key].grad.norm(), key
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() <= 1e-5 * reference(x).abs().max()
        assert torch.equal(model.eval()(x), reference.eval()(x))


def test_compiling_the_frozen_backbone_is_decided_by_measured_rates(monkeypatch):
    bf16, fp32 = torch.bfloat16, None
    monkeypatch.setattr(performance, "cpu_kind", lambda: "amx")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    pays, why = performance.compile_frozen_backbone(CPU, bf16, 500_000)
    assert pays and "+39% measured on this CPU (amx) in bf16" in why and "for 7 s of compilation" in why
    pays, why = performance.compile_frozen_backbone(CPU, bf16, 10_000)  # too few images to pay back
    assert not pays and "against 7 s" in why
    pays, why = performance.compile_frozen_backbone(CPU, fp32, 500_000)
    assert not pays and "not measured to pay on this CPU (amx) in fp32" in why
    monkeypatch.setattr(performance, "cpu_kind", lambda: "avx2")
    pays, why = performance.compile_frozen_backbone(CPU, fp32, 10**7)
    assert not pays and "compiled measured +1% on this CPU (avx2) in fp32, under the 5% that counts" in why
    pays, why = performance.compile_frozen_backbone(torch.device("cuda"), bf16, 10**7)
    assert not pays and "on cuda" in why


@pytest.mark.slow
def test_compiled_frozen_backbone_changes_nothing_but_rounding(setup, tmp_path, monkeypatch, capsys):
    """A real inductor compilation (where the rates say it pays; here they are made to), checked
    against --compile off on the same run: the same head within fp32 rounding."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # not the user's /tmp
    monkeypatch.setitem(performance.FROZEN_BACKBONE_RATES, (performance.cpu_kind(), None), (10.0, 20.0, 0.1))
    small = dict(freeze=True, epochs=1, batch_size=16, val_size=8)  # 56 train images: a last batch of 8, eager
    compiled, _, compiled_model = train(setup, tmp_path / "auto", **small)
    first_line = capsys.readouterr().out.splitlines()[0]
    assert "frozen backbone compiled with inductor freezing in" in first_line and "+100% measured" in first_line
    assert compiled["startup_seconds"] > 0
    eager, _, eager_model = train(setup, tmp_path / "off", compile="off", **small)
    assert "frozen backbone eager (--compile off)" in capsys.readouterr().out.splitlines()[0]
    assert eager["startup_seconds"] == 0
    for key in ("head.weight", "head.bias"):
        assert (compiled_model[key] - eager_model[key]).abs().max() <= 1e-4 * eager_model[key].abs().max(), key
    assert abs(compiled["epochs"][0]["val_loss"] - eager["epochs"][0]["val_loss"]) <= 1e-4
    assert compiled["test_accuracy"] == eager["test_accuracy"]  # the test pass is fp32 eager in both


def conv_bn_silu():
    """A graph of the backbone's kind in miniature: it compiles in a second where the network takes 30."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.SiLU())


@pytest.mark.slow
def test_freezing_makes_the_weights_constants(tmp_path, monkeypatch):
    """Freezing is what folds BatchNorm and fuses SiLU: the compiled graph must hold the weights as
    constants, not read them (it does not, when freezing is passed only in torch.compile's options)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    small = conv_bn_silu().eval()
    x = torch.rand(2, 3, 8, 8)
    compiled, first = compile_with_freezing(small, x, None)
    with torch.no_grad():
        small[0].weight.mul_(2)  # a frozen graph does not see it
        assert torch.equal(compiled(x), first) and not torch.allclose(small(x), first)


class ConvBatchNormSiLU(torch.nn.Module):  # a function of its own: dynamo counts compilations per function
    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


@pytest.mark.slow
def test_past_dynamos_recompile_limit_the_backbone_is_eager_and_says_so(tmp_path, monkeypatch):
    """A notebook making many runs in one process: past dynamo's limit it would run the function
    eagerly by itself, while the run said compiled."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setitem(performance.FROZEN_BACKBONE_RATES, (performance.cpu_kind(), None), (10.0, 20.0, 0.1))
    with torch._dynamo.config.patch(recompile_limit=1):  # (monkeypatch's undo would delete the entry)
        first, second = [frozen_backbone(ConvBatchNormSiLU(), None, CPU, None, batch=2, images=10**6) for _ in range(2)]
    assert first.compiled is not None and "compiled with inductor freezing" in first.note
    assert second.compiled is None and "dynamo's limit of 1 compilations of one function is reached" in second.note


@pytest.mark.slow
def test_a_failed_compilation_leaves_the_backbone_eager(tmp_path, monkeypatch):
    """No working C++ compiler (as on many Windows machines): the run goes on, eager, and says why."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setitem(performance.FROZEN_BACKBONE_RATES, (performance.cpu_kind(), None), (10.0, 20.0, 0.1))
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (str(tmp_path / "no-such-c++"),))
    # what fails is the C++ compilation, not the graph: a small conv-BN-SiLU graph fails the same
    # way in a second, where the network's would take ten
    small = conv_bn_silu()
    backbone = frozen_backbone(small, None, CPU, None, batch=2, images=10**6)
    assert backbone.compiled is None and "frozen backbone eager (torch.compile failed:" in backbone.note
    assert "C++ compiler" in backbone.note
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone(x), small.eval()(x))
