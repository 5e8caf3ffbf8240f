"""The fastest settings stay correct: a bf16 CPU training step is finite and close to fp32,
and the choice of precision per device is the documented one (per GPU generation with the
device's compute capability faked: this machine may have no GPU)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import FIGURES
from torch_resnet.training.config import TrainConfig
from torch_resnet.model import ResidualNetwork
from torch_resnet.training.performance import amp_dtype, cpu_has_native_bf16, describe, keep_freed_memory
from torch_resnet.training.regimes import optimizer_for, prepare_model
from torch_resnet.training.stepper import Stepper

CPU = torch.device("cpu")


def one_step(amp: str, pretrained, x, y):
    cfg = TrainConfig(freeze=False, amp=amp, lr=1e-3)
    model = prepare_model(cfg, pretrained=copy.deepcopy(pretrained)).to(memory_format=torch.channels_last)
    opt = optimizer_for(model, cfg)
    stepper = Stepper(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), cfg, CPU)
    model.train()
    loss, logits = stepper.step(x, y)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), logits.float(), grads, {k: v.clone() for k, v in model.state_dict().items()}


def test_bf16_cpu_step_is_finite_and_close_to_fp32():
    """Stated tolerances: logits within 5 % of their norm, loss within 2 %, every gradient
    within 10 % of its norm (cosine above 0.99); bf16 keeps 8 bits of mantissa (about 0.4 %
    per rounding) through 21 convolutions."""
    torch.manual_seed(0)
    pretrained = ResidualNetwork(100)
    with torch.no_grad():  # BN statistics of the data, as a trained network has them
        for m in pretrained.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        x = (torch.rand(8, 3, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
        pretrained.train()(x)
    y = torch.arange(8) % 10
    loss32, logits32, grads32, after32 = one_step("off", pretrained, x, y)
    loss16, logits16, grads16, after16 = one_step("bf16", pretrained, x, y)
    assert torch.isfinite(logits16).all() and all(torch.isfinite(g).all() for g in grads16.values())
    worst_grad = max(((grads16[n] - g).norm() / g.norm()).item() for n, g in grads32.items())
    FIGURES.append(("bf16 vs fp32 CPU training step (batch 8)",
                    f"logits rel {((logits16 - logits32).norm() / logits32.norm()).item():.1e}, "
                    f"loss rel {abs(loss16 - loss32) / loss32:.1e}, worst gradient rel {worst_grad:.1e}"))
    assert (logits16 - logits32).norm() <= 0.05 * logits32.norm()
    assert abs(loss16 - loss32) <= 0.02 * loss32
    assert grads16.keys() == grads32.keys() and len(grads32) == 24  # 22 convolutions, head weight and bias
    for name, g in grads32.items():
        assert (grads16[name] - g).norm() <= 0.1 * g.norm(), name
        assert F.cosine_similarity(grads16[name].flatten(), g.flatten(), dim=0) > 0.99, name
    for k, v in after32.items():  # the update is in fp32 either way: same weights to within one Adam step
        assert after16[k].dtype == v.dtype and (after16[k] - v).abs().max() <= 2e-3 + 1e-6, k


def test_precision_and_layout_per_device():
    native = cpu_has_native_bf16()
    assert amp_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    assert amp_dtype("auto", CPU, training=False) is None  # evaluation stays fp32
    assert amp_dtype("off", torch.device("cuda")) is None and amp_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(Exception, match="needs a CUDA device"):
        amp_dtype("fp16", CPU)
    with pytest.raises(Exception, match="`amp` must be one of auto, bf16, fp16, off, got 'fp8'"):
        amp_dtype("fp8", CPU, training=False)  # evaluate() is called without argparse too
    kept = keep_freed_memory()
    assert keep_freed_memory() == kept  # idempotent
    line = describe(CPU, amp_dtype("auto", CPU), True)
    assert line.startswith("cpu, ") and "channels_last" in line and ("bf16 autocast" in line) == native
    assert ("(native bf16)" in line) == native and ("fp32 (no native bf16 on this CPU)" in line) == (not native)


FP16 = "fp16 tensor cores, no bf16; gradient scaler when training"


def fake_gpu(monkeypatch, capability):
    """A CUDA device of this compute capability, as far as the precision choice can tell."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("capability, dtype, why", [
    ((9, 0), torch.bfloat16, "bf16 autocast (compute capability 9.0: native bf16)"),  # H100, H200
    ((8, 0), torch.bfloat16, "bf16 autocast (compute capability 8.0: native bf16)"),  # A100
    ((8, 6), torch.bfloat16, "bf16 autocast (compute capability 8.6: native bf16)"),  # RTX 30xx, A10
    ((7, 5), torch.float16, f"fp16 autocast (compute capability 7.5: {FP16})"),  # T4 (Colab's free GPU)
    ((7, 0), torch.float16, f"fp16 autocast (compute capability 7.0: {FP16})"),  # V100
    ((6, 0), None, "fp32 (compute capability 6.0: no tensor cores)"),  # P100
    ((3, 7), None, "fp32 (compute capability 3.7: no tensor cores)"),  # K80
])
def test_auto_precision_per_gpu_generation(monkeypatch, capability, dtype, why):
    fake_gpu(monkeypatch, capability)
    cuda = torch.device("cuda", 0)
    assert amp_dtype("auto", cuda) == dtype
    assert amp_dtype("auto", cuda, training=False) is None  # evaluation stays fp32 on every GPU
    assert describe(cuda, amp_dtype("auto", cuda), True) == f"cuda:0, {why}, channels_last"
    # the trainer's step takes the same choice, with the gradient scaler exactly when it is fp16
    cfg = TrainConfig(freeze=True, amp="auto")
    model = prepare_model(cfg, pretrained=ResidualNetwork(100))
    opt = optimizer_for(model, cfg)
    stepper = Stepper(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), cfg, cuda)
    assert stepper.autocast_dtype == dtype and stepper.scaler.is_enabled() == (dtype == torch.float16)


def test_other_choices_on_a_gpu_say_what_they_cost(monkeypatch):
    fake_gpu(monkeypatch, (7, 5))
    t4 = torch.device("cuda")
    assert describe(t4, amp_dtype("bf16", t4), False) == (
        "cuda, bf16 autocast (compute capability 7.5: bf16 is emulated here, slower than fp32), NCHW")
    assert describe(t4, amp_dtype("off", t4), True) == "cuda, fp32 (compute capability 7.5), channels_last"
    fake_gpu(monkeypatch, (8, 0))
    assert describe(t4, amp_dtype("fp16", t4), True) == (
        "cuda, fp16 autocast (compute capability 8.0: fp16 tensor cores; gradient scaler when training), channels_last")
