"""The reference network in Keras 3 (tensorflow-cpu), as the course defines it.

Used by the parity tests, by the offline demo (to make a real Keras pickle when the course's is
not at hand) and by ``train/evaluate.py --keras``. Importing this module imports TensorFlow.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import Model, layers  # noqa: E402

from .model import BLOCKS  # noqa: E402


class ResidualBlock(Model):
    """The seed's template (Figure 3): a pre-activation block as a Keras Model."""

    def __init__(self, input_channels, output_channels, strides=(1, 1), shortcut_first=False,
                 shortcut_from_raw=False):
        super().__init__()
        self.shortcut_from_raw = shortcut_from_raw
        conv = lambda k, s=(1, 1): layers.Conv2D(output_channels, k, strides=s, padding="same", use_bias=False)
        project = input_channels != output_channels
        self.shortcut = conv(1, strides) if project and shortcut_first else None
        self.bn1 = layers.BatchNormalization()
        self.act1 = layers.Activation("silu")
        self.conv1 = conv(3, strides)
        self.bn2 = layers.BatchNormalization()
        self.act2 = layers.Activation("silu")
        self.conv2 = conv(3)
        if project and not shortcut_first:
            self.shortcut = conv(1, strides)

    def call(self, x, training=False):
        y = self.act1(self.bn1(x, training=training))
        s = x if self.shortcut is None else self.shortcut(x if self.shortcut_from_raw else y)
        y = self.conv1(y)
        y = self.conv2(self.act2(self.bn2(y, training=training)))
        return y + s


def build(num_classes=100, shortcut_first=False, shortcut_from_raw=False, name=None, built=True) -> keras.Sequential:
    """The network in Keras; ``built=False``: its layers made (named, numbered) but not built."""
    model = keras.Sequential(
        [keras.Input((32, 32, 3))] * built + [layers.Conv2D(16, 3, padding="same", use_bias=False)]
        + [ResidualBlock(i, o, (s, s), shortcut_first, shortcut_from_raw) for i, o, s in BLOCKS]
        + [layers.BatchNormalization(), layers.Activation("silu"), layers.GlobalAveragePooling2D(),
           layers.Dense(num_classes)],
        name=name)
    return model


def randomize(model, seed=0) -> None:
    """Non-trivial weights: kernels He-scaled, BN statistics far from 0/1, gamma/beta not 1/0."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape, leaf = tuple(v.shape), getattr(v, "path", v.name).rsplit("/", 1)[-1].split(":")[0]  # Keras 3 or 2
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            gain = 2.0 if len(shape) == 4 else 0.2  # a smaller Dense keeps logits of order 10
            value = rng.normal(0, np.sqrt(gain / fan_in), shape)
        elif leaf == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("beta", "bias"):
            value = rng.normal(0, 0.3, shape)
        elif leaf == "moving_mean":
            value = rng.normal(0, 1.0, shape)
        else:  # moving_variance
            value = rng.uniform(0.2, 3.0, shape)
        v.assign(value.astype("float32"))


def weights_dict(model, style="keras3") -> dict[str, np.ndarray]:
    """The course's pickle: Keras variable name -> numpy array, named the Keras 3 way
    (``Variable.path``) or the Keras 2 way (no model prefix, ``:0`` suffix)."""
    out = {}
    for v in model.weights:
        if style == "keras3":
            key = v.path
        elif style == "keras2":
            key = v.path.split("/", 1)[1] + ":0"
        else:
            raise ValueError(style)
        out[key] = np.asarray(v.numpy())
    return out


def load_weights_dict(model, arrays: dict[str, np.ndarray]) -> None:
    """Assign a dict named like ``weights_dict(model)`` back into ``model`` (by exact path)."""
    by_path = {v.path: v for v in model.weights}
    for key in arrays:
        by_path[key].assign(arrays[key])
