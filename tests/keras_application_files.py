"""The Keras side of tests/test_applications.py's file checks (imported by make_keras_applications.py,
in its Keras process): each network saved the ways Keras saves it, the course's birds model, and
weights we exported loaded back into Keras."""
import sys
from pathlib import Path

import h5py
import keras
import numpy as np

BATCH = 2
SEED_HEAD = "ResNet50"  # the course's birds practice: ResNet50 features, Dense(1024) + Dense(200) on top


def save_files(model, stem: Path):
    """``model`` as Keras 3 saves it (.keras, .weights.h5), as Keras 2 did (model.save's .h5), and in
    the layout of Keras' own ImageNet weights files (a Keras 2 save_weights .h5)."""
    from keras.src.legacy.saving import legacy_h5_format

    model.save(f"{stem}.keras")
    model.save_weights(f"{stem}.weights.h5")
    model.save(f"{stem}.h5")
    with h5py.File(f"{stem}_imagenet_layout.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def seed_head(x):
    x = keras.layers.Dense(1024, activation="relu")(x)
    x = keras.layers.Dropout(0.4)(x)
    return keras.layers.Dense(200, activation="softmax")(x)


def seed_models(out: Path, size: int, randomize):
    """The course's model as a Sequential (the ResNet50 a layer of it) and as a Functional (built on
    the ResNet50's own input, its layers flat), random weights, saved with their logits."""
    keras.backend.clear_session()
    base = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3))
    sequential = keras.Sequential([keras.Input((size, size, 3)), base, keras.layers.Dense(1024, activation="relu"),
                                   keras.layers.Dropout(0.4), keras.layers.Dense(200, activation="softmax")])
    randomize(sequential, 7)
    functional = keras.Model(base.input, seed_head(base.output))
    for v, w in zip(functional.weights[-4:], sequential.weights[-4:]):
        v.assign(w)
    x = np.random.default_rng(8).standard_normal((BATCH, size, size, 3), dtype=np.float32)
    outputs = {"x": x, "logits": logits(sequential, x), "params": np.array(sequential.count_params())}
    assert np.allclose(logits(functional, x), outputs["logits"], atol=1e-5)
    for name, model in (("seed_sequential", sequential), ("seed_functional", functional)):
        model.save(out / f"{name}.keras")
        model.save_weights(out / f"{name}.weights.h5")
    np.savez(out / "seed_outputs.npz", **outputs)
    images = np.random.default_rng(9).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.savez(out / "preprocess.npz", images=images,
             caffe=keras.applications.resnet.preprocess_input(images.astype(np.float32)),
             tf=keras.applications.resnet_v2.preprocess_input(images.astype(np.float32)))
    return sequential


def logits(model, x):
    """The model's output before its final softmax: the last Dense applied to what it receives."""
    dense = model.layers[-1]
    features = keras.Model(model.inputs, dense.input)(x, training=False)
    return np.asarray(features) @ np.asarray(dense.kernel.numpy()) + np.asarray(dense.bias.numpy())


def fresh(kind: str, size: int, classes: int):
    """A model to load exported weights into: keras.applications.KIND's top model, or the course's."""
    keras.backend.clear_session()
    if kind.startswith("seed_"):
        base = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3))
        if kind == "seed_sequential":
            return keras.Sequential([keras.Input((size, size, 3)), base, keras.layers.Dense(1024, activation="relu"),
                                     keras.layers.Dropout(0.4), keras.layers.Dense(200, activation="softmax")])
        return keras.Model(base.input, seed_head(base.output))
    return getattr(keras.applications, kind)(weights=None, input_shape=(size, size, 3), classes=classes,
                                             classifier_activation=None)


def answer(out: Path, size: int, classes: int):
    """Requests on stdin, one per line: ``KIND WEIGHTS X_NPZ OUT_NPZ``: a fresh KIND model loads
    WEIGHTS (a .weights.h5 with load_weights; a pickle of arrays by Keras path, assigned by path),
    runs on X_NPZ's ``x`` and saves its logits in OUT_NPZ; then says ``loaded OUT_NPZ``."""
    import pickle

    for line in sys.stdin:
        kind, weights, x_npz, result = line.split()
        model = fresh(kind, size, classes)
        if weights.endswith(".weights.h5"):
            model.load_weights(weights)
        else:
            with open(weights, "rb") as f:
                arrays = pickle.load(f)  # our own export, in a test's folder
            assert sorted(arrays) == sorted(v.path for v in model.weights), "names differ from Keras' paths"
            for v in model.weights:
                v.assign(arrays[v.path])
        x = np.load(x_npz)["x"]
        out_logits = logits(model, x) if kind.startswith("seed_") else np.asarray(model(x, training=False))
        np.savez(result, logits=out_logits)
        print(f"loaded {result}", flush=True)


def other_files(out: Path, size: int):
    """Files the converter must refuse, each saying why: other networks (EfficientNetB0, VGG16 without
    its top, as .weights.h5) and the course's third birds model, whose head holds a Conv2D and a
    BatchNormalization on the unpooled ResNet50 features (.keras)."""
    keras.backend.clear_session()
    shape = (size, size, 3)
    keras.applications.EfficientNetB0(weights=None, input_shape=shape).save_weights(out / "efficientnetb0.weights.h5")
    keras.applications.VGG16(weights=None, include_top=False, input_shape=shape).save_weights(out / "vgg16.weights.h5")
    base = keras.applications.ResNet50(weights=None, include_top=False, pooling=None, input_shape=shape)
    x = keras.layers.Conv2D(256, 3, padding="same", activation="relu")(base.output)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(base.input, keras.layers.Dense(200, activation="softmax")(x)).save(out / "conv_bn_head.keras")
