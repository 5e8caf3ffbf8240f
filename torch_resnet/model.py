"""The course's pre-activation SiLU ResNet, numerically identical to the Keras original.

Keras differences that matter for parity (see docs/keras.md):
- ``padding="same"`` with stride 2 pads 0 before and 1 after (PyTorch's padding=1 pads both);
- BatchNormalization epsilon is 1e-3 (PyTorch's default is 1e-5);
- no convolution has a bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import BLOCKS, FEATURES, KERAS_BN_EPS, KERAS_BN_MOMENTUM  # noqa: F401 (re-exported)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding for one dimension: (before, after); the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow/Keras "same" padding for any stride."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.same_conv(x, self.weight)

    def same_conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """This convolution's padding and stride with another ``weight`` (and a ``bias``)."""
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:  # symmetric: let the conv kernel pad (no copy)
            return F.conv2d(x, weight, bias, self.stride, (top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, self.stride)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


class ResidualBlock(nn.Module):
    """Pre-activation basic block: BN-SiLU-Conv3x3(stride)-BN-SiLU-Conv3x3, plus shortcut.

    The shortcut is the identity when channels match, else a bias-free strided 1x1 conv that
    reads the pre-activated input (ResNet v2 style) or, with ``shortcut_from_raw``, the raw input.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut_from_raw: bool = False):
        super().__init__()
        self.bn1 = batch_norm(cin)
        self.conv1 = Conv2dSame(cin, cout, 3, stride)
        self.bn2 = batch_norm(cout)
        self.conv2 = Conv2dSame(cout, cout, 3)
        self.shortcut = Conv2dSame(cin, cout, 1, stride) if cin != cout else None
        self.shortcut_from_raw = shortcut_from_raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = not torch.is_grad_enabled()  # without autograd, no need for a second activation buffer
        y = F.silu(self.bn1(x), inplace=inplace)
        if self.shortcut is None:
            s = x
        else:
            s = self.shortcut(x if self.shortcut_from_raw else y)
        y = self.conv1(y)
        y = self.conv2(F.silu(self.bn2(y), inplace=inplace))
        return y + s


class Backbone(nn.Module):
    """Everything but the classifier: stem conv, nine blocks, BN, SiLU, global average pool."""

    def __init__(self, shortcut_from_raw: bool = False):
        super().__init__()
        self.stem = Conv2dSame(3, 16, 3)
        self.blocks = nn.Sequential(*[ResidualBlock(i, o, s, shortcut_from_raw) for i, o, s in BLOCKS])
        self.bn = batch_norm(FEATURES)
        self.act = nn.SiLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.blocks(self.stem(x)))))


class ResidualNetwork(nn.Module):
    """The course network. Input: float NCHW scaled to [-1, 1]. Output: logits.

    ``backbone`` maps images to 256-d pooled features; ``head`` is the final Linear (Keras Dense).
    ``keras_names``: for a network converted from Keras, the names its tensors had there
    (``formats.keras_names.KerasNames``), for the way back; every file format we write keeps them.
    """

    preprocess = "tf"  # its inputs: images_to_input's x / 127.5 - 1, as the course scaled them
    input_size = [32, 32]  # the images it was trained on (CIFAR's); it takes any size
    image_size = 32  # the side images are given at by default (image folders, summary)

    def __init__(self, num_classes: int = 100, shortcut_from_raw: bool = False):
        super().__init__()
        self.backbone = Backbone(shortcut_from_raw)
        self.head = nn.Linear(FEATURES, num_classes)
        self.keras_names = None

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def summary_rows(self) -> list[tuple[str, nn.Module]]:
        """(Keras name (type), module) of each row of ``summary``, as Keras' summary lists them."""
        b = self.backbone
        return [("conv2d (Conv2D)", b.stem),
                *((f"residual_block_{i} (ResidualBlock)", blk) for i, blk in enumerate(b.blocks)),
                ("batch_normalization (BatchNormalization)", b.bn), ("activation (Activation)", b.act),
                ("global_average_pooling2d (GlobalAveragePooling2D)", b.pool), ("dense (Dense)", self.head)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# Keras' preprocess_input "caffe" mode (the v1 ResNets): BGR channels, each less its ImageNet mean
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def images_to_input(images: torch.Tensor, channels_last: bool = False, mode: str = "tf") -> torch.Tensor:
    """The network's input scaling, the one the whole project uses (training, evaluation, the
    Keras runs): uint8 RGB images, NCHW as CIFAR stores them or NHWC as Keras takes them (told
    apart by where the 3 colour channels are), -> float NCHW as Keras' ``preprocess_input`` of the
    network's ``mode`` makes them: "tf" (the course network, the V2 ResNets) x / 127.5 - 1, in
    [-1, 1]; "caffe" (the v1 ResNets) RGB -> BGR less the ImageNet mean. With ``channels_last``
    in that memory format."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    if mode == "caffe":  # Keras: x[..., ::-1] - mean, in float32
        x = images.flip(1).float().sub_(torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))
    elif mode == "tf":
        x = images.float().div_(127.5).sub_(1.0)  # as the course (and Keras) scales: x / 127.5 - 1
    else:
        raise ValueError(f"unknown preprocessing {mode!r}; expected 'tf' or 'caffe'")
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Keras-style totals: BN running statistics count as non-trainable, the step counter not."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return {"total": trainable + frozen + stats, "trainable": trainable, "non_trainable": frozen + stats}


def summary(model: nn.Module, image_size: int | None = None) -> str:
    """A table in the layout of Keras' ``model.summary()`` (NHWC output shapes, Keras names) of the
    network's ``summary_rows()``, run on one image of ``image_size`` (default: its input size)."""
    image_size = image_size or model.image_size
    rows_spec = model.summary_rows()
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
             for name, m in rows_spec]
    modes = {m: m.training for m in model.modules()}  # the caller's model stays as it was
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training

    def keras_shape(s):
        s = (s[0], *s[2:], s[1]) if len(s) == 4 else s  # NCHW -> NHWC
        return "(None, " + ", ".join(str(d) for d in s[1:]) + ")"

    lines = [f"{'Layer (type)':<52}{'Output Shape':<24}{'Param #':>12}", "=" * 88]
    for name, m in rows_spec:
        n = sum(p.numel() for p in m.parameters()) + sum(
            x.numel() for k, x in m.named_buffers() if k.endswith(("running_mean", "running_var")))
        lines.append(f"{name:<52}{keras_shape(shapes[name]):<24}{n:>12,}")
    totals = count_parameters(model)
    lines += ["=" * 88, f"Total params: {totals['total']:,}", f"Trainable params: {totals['trainable']:,}",
              f"Non-trainable params: {totals['non_trainable']:,}"]
    return "\n".join(lines)
