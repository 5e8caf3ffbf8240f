"""The six ``keras.applications`` ResNets as plain numbers, importable without torch (a file
reader can tell them apart by their Keras names without building anything).

Both versions share the stem (7x7/2 conv, 3x3/2 max pool), four stages of bottleneck blocks of
widths 64, 128, 256, 512 (each block's output is 4x its width) and 2048 features. They differ in
the block and in where a stage shrinks the image:
- v1 (ResNet50/101/152): the first block of a stage holds the stride, on its first 1x1 conv
  (and on its 1x1 shortcut conv); stages conv3..conv5 shrink.
- v2 (ResNet50V2/101V2/152V2): the LAST block of a stage holds the stride, on its 3x3 conv
  (its identity shortcut becomes a 1x1 max pool of stride 2); stages conv2..conv4 shrink.
"""
from __future__ import annotations

from dataclasses import dataclass

KERAS_BN_EPS = 1.001e-5  # what keras.applications' ResNets use (not Keras' default 1e-3)
KERAS_BN_MOMENTUM = 0.01  # PyTorch's 0.01 is the same update as Keras' momentum=0.99
WIDTHS = (64, 128, 256, 512)  # bottleneck widths of the stages conv2..conv5
EXPANSION = 4  # a block's output channels: 4x its width
FEATURES = EXPANSION * WIDTHS[-1]  # 2048
STEM_CHANNELS = 64
POOLINGS = ("avg", "max", None)
KERAS_IMAGE_SIZE = 224  # the ImageNet size keras.applications builds the ResNets for by default
# Keras' preprocess_input of each version: "caffe" (RGB -> BGR, ImageNet mean subtracted, 0..255)
# for v1, "tf" (scaled to [-1, 1]) for V2
PREPROCESS = {False: "caffe", True: "tf"}
# Dense activations a head may use (Keras name -> what applies it in PyTorch, in resnet.py); a
# softmax is allowed on the last Dense only, where it becomes logits
ACTIVATIONS = ("linear", "relu", "gelu", "silu", "swish", "tanh", "sigmoid", "elu", "softmax")


@dataclass(frozen=True)
class Dense:
    """One Dense layer of a head: ``units``, its ``activation``, the rate of a Dropout before it,
    and its Keras layer name (for the way back)."""
    units: int
    activation: str = "linear"
    dropout: float = 0.0
    name: str = "dense"

    def record(self) -> dict:
        return {"units": self.units, "activation": self.activation, "dropout": self.dropout, "name": self.name}


def head_indices(head) -> list[int]:
    """Where each Dense of ``head`` sits in its ``nn.Sequential`` (resnet.dense_head): a Dropout
    before it and an activation module after it take a place each (linear and softmax none)."""
    indices, i = [], 0
    for dense in head:
        i += dense.dropout > 0
        indices.append(i)
        i += 1 + (dense.activation not in ("linear", "softmax"))
    return indices


def top(classes: int) -> tuple[Dense]:
    """Keras' own top: the ``predictions`` Dense with a softmax."""
    return (Dense(classes, "softmax", name="predictions"),)


@dataclass(frozen=True)
class ResNetSpec:
    name: str  # the keras.applications function
    blocks: tuple[int, int, int, int]  # bottleneck blocks of the stages conv2..conv5
    preact: bool  # True for the V2 (pre-activation) networks

    @property
    def stage_strides(self) -> tuple[int, int, int, int]:
        return (2, 2, 2, 1) if self.preact else (1, 2, 2, 2)

    @property
    def preprocess(self) -> str:
        return PREPROCESS[self.preact]

    def block_stride(self, stage: int, block: int) -> int:
        """The stride of block ``block`` (0-based) of stage ``stage`` (0 = Keras' conv2)."""
        holder = self.blocks[stage] - 1 if self.preact else 0
        return self.stage_strides[stage] if block == holder else 1


SPECS = {spec.name: spec for spec in (
    ResNetSpec("ResNet50", (3, 4, 6, 3), preact=False),
    ResNetSpec("ResNet101", (3, 4, 23, 3), preact=False),
    ResNetSpec("ResNet152", (3, 8, 36, 3), preact=False),
    ResNetSpec("ResNet50V2", (3, 4, 6, 3), preact=True),
    ResNetSpec("ResNet101V2", (3, 4, 23, 3), preact=True),
    ResNetSpec("ResNet152V2", (3, 8, 36, 3), preact=True),
)}


def spec_named(name: str | ResNetSpec) -> ResNetSpec:
    """``SPECS[name]``, with a message that lists the names on a typo."""
    if isinstance(name, ResNetSpec):
        return name
    if name not in SPECS:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(SPECS)}")
    return SPECS[name]
