"""PyTorch modules equal, number for number, to Keras 3's ``keras.applications`` ResNet50/101/152
and ResNet50V2/101V2/152V2 (one builder for the six; ``specs.py`` has what tells them apart).

Input: float NCHW in the Keras model's own input domain (what Keras' model takes, i.e. after
``keras.applications.resnet[_v2].preprocess_input``); any size Keras accepts (>= 32x32).
Output: logits with ``include_top`` (Keras' softmax head becomes logits here, as PyTorch's losses
expect), else the pooled 2048 features (``pooling`` "avg" or "max") or the NCHW feature map (None).

Where Keras differs from the PyTorch habit (torchvision's ResNet), each checked by a test:
- every convolution has a bias, except the V2 block's 1x1 and 3x3 convs;
- BatchNorm epsilon is 1.001e-5;
- v1 puts the stride on the block's first 1x1 conv, not on its 3x3 (torchvision's "v1.5");
- v2 puts it on the stage's last block, whose shortcut is then a 1x1 max pool of stride 2 (a
  subsampling) of the block's raw input, not of its pre-activated input;
- the stem's max pool pads with zeros (Keras' ZeroPadding2D), not -inf: V2 pools the conv's
  output before any ReLU, so negative values meet the padding;
- every other padding is symmetric: Keras pads explicitly (ZeroPadding2D + "valid") or uses "same"
  at stride 1, so no TensorFlow asymmetric "same" padding occurs in these networks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .specs import (ACTIVATIONS, EXPANSION, FEATURES, KERAS_BN_EPS, KERAS_BN_MOMENTUM, KERAS_IMAGE_SIZE, POOLINGS,
                    STEM_CHANNELS, WIDTHS, Dense, ResNetSpec, spec_named, top)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


class BottleneckV1(nn.Module):
    """Keras' ``residual_block_v1``: 1x1(stride)-BN-ReLU, 3x3-BN-ReLU, 1x1-BN, + shortcut, ReLU.
    The shortcut is a strided 1x1 conv + BN on a stage's first block, else the identity."""

    def __init__(self, cin: int, width: int, stride: int, projection: bool):
        super().__init__()
        cout = EXPANSION * width
        self.conv1 = nn.Conv2d(cin, width, 1, stride)
        self.bn1 = batch_norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)  # "same" at stride 1: symmetric
        self.bn2 = batch_norm(width)
        self.conv3 = nn.Conv2d(width, cout, 1)
        self.bn3 = batch_norm(cout)
        self.shortcut_conv = nn.Conv2d(cin, cout, 1, stride) if projection else None
        self.shortcut_bn = batch_norm(cout) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        y = self.bn3(self.conv3(y))
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        return F.relu(y + shortcut, inplace=True)


class BottleneckV2(nn.Module):
    """Keras' ``residual_block_v2``: BN-ReLU (pre-activation), 1x1-BN-ReLU, 3x3(stride)-BN-ReLU,
    1x1, + shortcut. The shortcut is a 1x1 conv of the pre-activated input on a stage's first
    block, the raw input subsampled by ``stride`` on a striding block, else the raw input."""

    def __init__(self, cin: int, width: int, stride: int, projection: bool):
        super().__init__()
        cout = EXPANSION * width
        self.preact_bn = batch_norm(cin)
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = batch_norm(width)
        # Keras: ZeroPadding2D(1) then a "valid" conv, i.e. symmetric padding even at stride 2
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = batch_norm(width)
        self.conv3 = nn.Conv2d(width, cout, 1)
        self.shortcut_conv = nn.Conv2d(cin, cout, 1, stride) if projection else None
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.preact_bn(x))  # not in place: x is the shortcut
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_conv(pre)
        else:  # Keras' MaxPooling2D(1, strides=stride): a 1x1 max is the value itself
            shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        y = F.relu(self.bn1(self.conv1(pre)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        return self.conv3(y) + shortcut


class Stem(nn.Module):
    """conv1: 7x7/2 conv (ZeroPadding2D(3) + "valid" is PyTorch's padding=3), for v1 BN + ReLU,
    then pool1: ZeroPadding2D(1) + 3x3/2 max pool."""

    def __init__(self, preact: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, STEM_CHANNELS, 7, 2, padding=3)
        self.bn = None if preact else batch_norm(STEM_CHANNELS)
        # zeros, not MaxPool2d(padding=1)'s -inf: V2 pools values that can be negative
        self.pool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = F.relu(self.bn(x), inplace=True)
        return self.pool(x)


def stage(spec: ResNetSpec, index: int, cin: int) -> nn.Sequential:
    """Keras' stage conv{index + 2}; its first block widens (a projection shortcut)."""
    block = BottleneckV2 if spec.preact else BottleneckV1
    width = WIDTHS[index]
    return nn.Sequential(*[block(cin if b == 0 else EXPANSION * width, width, spec.block_stride(index, b), b == 0)
                           for b in range(spec.blocks[index])])


def global_pool(x: torch.Tensor, pooling: str | None) -> torch.Tensor:
    if pooling == "avg":
        return x.mean((2, 3))
    if pooling == "max":
        return x.amax((2, 3))
    return x


class Backbone(nn.Module):
    """Everything but the classifier: stem, four stages, V2's ``post_bn`` + ReLU, the pooling."""

    def __init__(self, spec: ResNetSpec, pooling: str | None):
        super().__init__()
        cins = (STEM_CHANNELS, *(EXPANSION * w for w in WIDTHS[:-1]))
        self.stem = Stem(spec.preact)
        self.stages = nn.Sequential(*[stage(spec, i, cin) for i, cin in enumerate(cins)])
        self.post_bn = batch_norm(FEATURES) if spec.preact else None
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        if self.post_bn is not None:
            x = F.relu(self.post_bn(x), inplace=True)
        return global_pool(x, self.pooling)


ACTIVATION_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh,
                      "sigmoid": nn.Sigmoid, "elu": nn.ELU}


def dense_head(features: int, head: tuple[Dense, ...]) -> nn.Sequential:
    """Keras' Dense (and Dropout) layers on the pooled features, as ``nn.Sequential``; the last
    layer's softmax is left out (logits). Empty for a network without a head."""
    layers, width = [], features
    for i, dense in enumerate(head):
        if dense.activation not in ACTIVATIONS or dense.activation == "softmax" and i < len(head) - 1:
            raise ValueError(f"Dense {dense.name!r}: activation {dense.activation!r} is not supported here")
        if dense.dropout:
            layers.append(nn.Dropout(dense.dropout))
        layers.append(nn.Linear(width, dense.units))
        if dense.activation in ACTIVATION_MODULES:
            layers.append(ACTIVATION_MODULES[dense.activation]())
        width = dense.units
    return nn.Sequential(*layers)


class KerasResNet(nn.Module):
    """``keras.applications.<spec.name>(include_top, pooling, classes)`` in PyTorch, or its
    backbone with the user's own Dense layers on top (``head``, e.g. the course's
    ``Dense(1024, "relu")``, ``Dropout(0.4)``, ``Dense(200, "softmax")``), without the final
    softmax: ``backbone`` gives the features, ``head`` the logits. As in Keras, ``pooling`` is
    ignored with the top (the top always averages). ``architecture`` is what rebuilds it
    (``from_architecture``); ``preprocess`` the Keras ``preprocess_input`` its inputs need."""

    def __init__(self, spec: ResNetSpec | str, include_top: bool = True, pooling: str | None = None,
                 classes: int = 1000, head: tuple[Dense, ...] | None = None, input_size=None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if head is None and include_top:
            head, pooling = top(classes), "avg"  # as in Keras: the top always averages
        head = head or ()
        if head and pooling is None:
            pooling = "avg"  # a user's Dense layers need pooled features too
        self.spec, self.pooling, self.head_layers = spec_named(spec), pooling, tuple(head)
        self.input_size = None if input_size is None else [int(n) for n in input_size]
        self.backbone = Backbone(self.spec, pooling)
        self.head = dense_head(FEATURES, self.head_layers)
        self.keras_names = None  # the names its tensors had in Keras, where it came from Keras

    @property
    def num_classes(self) -> int | None:
        return self.head_layers[-1].units if self.head_layers else None

    @property
    def preprocess(self) -> str:
        return self.spec.preprocess

    @property
    def image_size(self) -> int:
        """The side images are given at by default: the square size the Keras model was built
        for, where its file says, else Keras' own 224."""
        square = self.input_size is not None and self.input_size[0] == self.input_size[1]
        return self.input_size[0] if square else KERAS_IMAGE_SIZE

    @property
    def architecture(self) -> dict:
        return {"network": self.spec.name, "pooling": self.pooling, "head": [d.record() for d in self.head_layers],
                "preprocess": self.preprocess, "input_size": self.input_size}

    def summary_rows(self) -> list[tuple[str, nn.Module]]:
        """(name (type), module) of each row of ``model.summary``, as Keras' summary of the course's
        birds model lists them: the ResNet as one Functional, then each Dense layer."""
        dense = [m for m in self.head if isinstance(m, nn.Linear)]
        return [(f"{self.spec.name.lower()} (Functional)", self.backbone),
                *((f"{d.name} (Dense)", m) for d, m in zip(self.head_layers, dense))]

    def replace_head(self, head: tuple[Dense, ...]) -> None:
        """New Dense layers on the pooled features (``avg`` if the backbone pooled none), initialised
        as PyTorch initialises ``nn.Linear``; the Keras names of the old head no longer apply."""
        if self.pooling is None:
            self.pooling = self.backbone.pooling = "avg"
        self.head_layers = tuple(head)
        self.head = dense_head(FEATURES, self.head_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build(name: str, include_top: bool = True, pooling: str | None = None, classes: int = 1000,
          head: tuple[Dense, ...] | None = None) -> KerasResNet:
    """``build("ResNet50", include_top=False, pooling="avg")``: the arguments of the Keras function;
    ``head``: Dense layers of one's own instead of Keras' top."""
    return KerasResNet(name, include_top=include_top, pooling=pooling, classes=classes, head=head)


def from_architecture(record: dict) -> KerasResNet:
    """The network an ``architecture`` record describes (ValueError/KeyError/TypeError if it is not one)."""
    head = tuple(Dense(int(d["units"]), str(d["activation"]), float(d["dropout"]), str(d["name"]))
                 for d in record["head"])
    if any(d.units < 1 or not 0 <= d.dropout < 1 for d in head):
        raise ValueError("a Dense layer without units or with a dropout rate outside [0, 1)")
    return KerasResNet(str(record["network"]), pooling=record["pooling"], head=head,
                       input_size=record.get("input_size"))
