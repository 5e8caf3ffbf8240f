"""Real Keras files, written by Keras 3 and by Keras 2 (tf-keras), for tests/test_keras_files.py.
Called in the session's Keras process (tests/make_keras_fixtures.py; TensorFlow stays out of the
pytest process), or on its own:

    python tests/make_keras_files.py make OUT_DIR     (the files)
    python tests/make_keras_files.py load SPEC.json   (Keras loads exported weights, gives logits)

``make`` writes into OUT_DIR, each with <name>.npz (the images and Keras' logits on them):

- k3_build.weights.h5: ``keras_model.build``, ``save_weights`` (Keras 3 files name layers by
  attribute and class, so the seed's numbering does not show in them);
- k3_custom.keras and k3_custom.weights.h5: the author's own block class (``NamedBlock``: its
  attributes norm_a, conv_a, norm_b, conv_b, skip; the shortcut created first), a 10-class head,
  compiled and with Adam's state, ``model.save`` and ``save_weights``;
- k3_functional.keras: the network built with the functional API (Keras' own layers only);
- k2_weights.h5 and k2_model.h5: Keras 2 (tf-keras, TF_USE_LEGACY_KERAS=1), the seed's
  numbering (``block_9``, ``conv2d_22``), the shortcut created first, ``save_weights`` and
  ``model.save``.

``load`` reads SPEC.json: {"inputs": x.npy, "models": [[kind, classes, weights, out.npy]...]},
kind "build" (keras_model.build), "custom" (NamedBlock's model), both with ``load_weights``, or
"pickle" (keras_model.build, a pickle in its fresh Keras 3 names), and saves each one's logits.
"""
import json
import os
import pickle
import sys
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is Keras 2 (tf-keras); `import keras` stays Keras 3
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

from torch_resnet import keras_model as km  # noqa: E402
from torch_resnet.model import BLOCKS  # noqa: E402

keras = km.keras


@keras.saving.register_keras_serializable(package="tests")
class NamedBlock(keras.Model):
    """An author's own block: other attribute names, the shortcut created first. As a Model, its
    layers after ``layers`` in sorted order (norm_a, norm_b, skip) are saved by class name."""

    def __init__(self, cin, cout, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.cin, self.cout, self.stride = cin, cout, stride
        conv = lambda k, s=1: keras.layers.Conv2D(cout, k, strides=s, padding="same", use_bias=False)
        self.skip = conv(1, stride) if cin != cout else None
        self.norm_a = keras.layers.BatchNormalization()
        self.conv_a = conv(3, stride)
        self.norm_b = keras.layers.BatchNormalization()
        self.conv_b = conv(3)

    def call(self, x, training=False):
        y = keras.activations.silu(self.norm_a(x, training=training))
        s = x if self.skip is None else self.skip(y)
        return self.conv_b(keras.activations.silu(self.norm_b(self.conv_a(y), training=training))) + s

    def get_config(self):
        return {**super().get_config(), "cin": self.cin, "cout": self.cout, "stride": self.stride}


def custom_model(classes):
    layers = keras.layers
    return keras.Sequential([keras.Input((32, 32, 3)), layers.Conv2D(16, 3, padding="same", use_bias=False)]
                            + [NamedBlock(i, o, s) for i, o, s in BLOCKS]
                            + [layers.BatchNormalization(), layers.Activation("silu"),
                               layers.GlobalAveragePooling2D(), layers.Dense(classes)])


def functional_model(classes):
    """The network built with Keras' functional API, of Keras' own layers only."""
    L = keras.layers
    conv = lambda cout, k, s=1: L.Conv2D(cout, k, strides=s, padding="same", use_bias=False)
    inputs = keras.Input((32, 32, 3))
    x = conv(16, 3)(inputs)
    for cin, cout, s in BLOCKS:
        y = L.Activation("silu")(L.BatchNormalization()(x))
        shortcut = x if cin == cout else conv(cout, 1, s)(y)
        y = conv(cout, 3)(L.Activation("silu")(L.BatchNormalization()(conv(cout, 3, s)(y))))
        x = L.Add()([y, shortcut])
    x = L.GlobalAveragePooling2D()(L.Activation("silu")(L.BatchNormalization()(x)))
    return keras.Model(inputs, L.Dense(classes)(x))


def keras2_model(classes):
    import tf_keras as k2

    class Block(k2.Model):  # the seed's template in Keras 2, the shortcut created first
        def __init__(self, cin, cout, stride=1, **kwargs):
            super().__init__(**kwargs)
            self.cin, self.cout, self.stride = cin, cout, stride
            conv = lambda k, s=1: k2.layers.Conv2D(cout, k, strides=s, padding="same", use_bias=False)
            self.shortcut = conv(1, stride) if cin != cout else None
            self.bn1, self.conv1 = k2.layers.BatchNormalization(), conv(3, stride)
            self.bn2, self.conv2 = k2.layers.BatchNormalization(), conv(3)

        def call(self, x, training=False):
            y = k2.activations.swish(self.bn1(x, training=training))
            s = x if self.shortcut is None else self.shortcut(y)
            return self.conv2(k2.activations.swish(self.bn2(self.conv1(y), training=training))) + s

        def get_config(self):
            return {"cin": self.cin, "cout": self.cout, "stride": self.stride, "name": self.name}

    L = k2.layers
    return k2.Sequential([k2.Input((32, 32, 3)), L.Conv2D(16, 3, padding="same", use_bias=False)]
                         + [Block(i, o, s) for i, o, s in BLOCKS]
                         + [L.BatchNormalization(), L.Activation("swish"), L.GlobalAveragePooling2D(), L.Dense(classes)])


def make(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    x = images.astype(np.float32) / 127.5 - 1.0

    def keep(name, model):
        np.savez(out / f"{name}.npz", images=images, logits=np.asarray(model(x, training=False)))

    keras.backend.clear_session()
    model = km.build()
    km.randomize(model, 20)
    model.save_weights(out / "k3_build.weights.h5")
    keep("k3_build", model)

    model = functional_model(100)
    km.randomize(model, 5)
    model.save(out / "k3_functional.keras")
    keep("k3_functional", model)

    model = custom_model(10)
    km.randomize(model, 21)
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)  # Adam's state goes into the files too
    model.save(out / "k3_custom.keras")
    model.save_weights(out / "k3_custom.weights.h5")
    keep("k3_custom", model)

    keras2_model(100)  # the seed's numbering in Keras 2
    model = keras2_model(100)
    km.randomize(model, 22)
    model.compile(optimizer="adam", loss="mse")
    model.save_weights(out / "k2_weights.h5")
    model.save(out / "k2_model.h5")
    keep("k2", model)


def load(spec_path):
    spec = json.loads(Path(spec_path).read_text())
    x = np.load(spec["inputs"])
    for kind, classes, weights, out in spec["models"]:
        keras.backend.clear_session()
        model = custom_model(classes) if kind == "custom" else km.build(classes)
        if kind == "pickle":  # fresh Keras 3 names: each array to the variable of that path
            km.load_weights_dict(model, pickle.loads(Path(weights).read_bytes()))
        else:
            model.load_weights(weights)
        np.save(out, np.asarray(model(x, training=False)))


if __name__ == "__main__":
    {"make": make, "load": load}[sys.argv[1]](sys.argv[2])
