"""The Keras reference of tests/test_training_parity.py, made in the session's Keras process
(tests/make_keras_fixtures.py; TensorFlow stays out of the pytest process), or on its own:

    python tests/make_keras_training_fixtures.py DIR

Reads DIR/inputs.pkl (written by test_training_parity.write_inputs: the head, the uint8 images
and labels of every step, learning rates, gradients for the optimizer check) and writes, from
real Keras 3:

- DIR/keras10.pkl: the 10-class reference model's weights, named the Keras 3 way (random
  non-trivial backbone whose BatchNorm statistics are those of the calibration images, the
  given head);
- DIR/keras_training.pkl: per regime the names of the trainable variables, the first step's
  scaled input and gradients, the loss of each step of a hand-written GradientTape loop with
  keras.optimizers.Adam, all weights at the end and, for the regimes listed in ``snapshots``,
  the trainable weights after each step; the values of keras.optimizers.Adam stepped by the
  given gradients alone; a fresh Dense layer's initial values.

The loop is what a Keras notebook runs: freezing = ``trainable=False`` on every layer but the
Dense (freeze) or on every BatchNormalization (full); ``model(x, training=True)``, whose frozen
BatchNormalization layers then run in inference mode; mean sparse categorical cross-entropy.
"""
import pickle
import sys
from pathlib import Path

import numpy as np

from torch_resnet import keras_model as km

keras = km.keras
import tensorflow as tf  # noqa: E402


def scale(images):  # the course's input scaling: x / 127.5 - 1 in float32
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1)


def set_regime(model, regime):
    """Parents come before their layers: a block's setting reaches its BatchNormalization first."""
    for layer in model._flatten_layers(include_self=False):
        dense, bn = isinstance(layer, keras.layers.Dense), isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = dense or (regime == "full" and not bn)


def calibrate(model, images):
    """BatchNorm moving statistics of a trained network: those of real data (other images than
    the training batches), so activations keep their scale through the nine blocks."""
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    for bn in bns:
        bn.momentum = 0.0
    model(scale(images), training=True)
    for bn in bns:
        bn.momentum = 0.99


def train(model, start, regime, images, labels, lr, snapshots):
    km.load_weights_dict(model, start)
    set_regime(model, regime)
    variables = model.trainable_variables
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    out = {"trainable": [v.path for v in variables], "losses": [], "steps": []}
    for k in range(len(images)):
        x = scale(images[k])
        with tf.GradientTape(watch_accessed_variables=False) as tape:  # no backward through frozen layers
            tape.watch([v.value for v in variables])  # the tf.Variables under Keras' own
            loss = loss_fn(labels[k], model(x, training=True))
        grads = tape.gradient(loss, variables)
        if k == 0:
            out.update(x=x, grads={v.path: np.asarray(g) for v, g in zip(variables, grads)})
        optimizer.apply_gradients(zip(grads, variables))
        out["losses"].append(np.float32(loss))
        if snapshots:
            out["steps"].append({v.path: np.asarray(v.numpy()) for v in variables})
    out["final"] = km.weights_dict(model)
    return out


def adam_on_given_gradients(start, grads, lr):
    """keras.optimizers.Adam alone: variables ``start`` stepped by the given gradients."""
    variables = [keras.Variable(v) for v in start]
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    values = []
    for step in grads:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step], variables))
        values.append([np.asarray(v.numpy()) for v in variables])
    return values


def main(folder):
    folder = Path(folder)
    inputs = pickle.loads((folder / "inputs.pkl").read_bytes())
    keras.backend.clear_session()  # layer numbers from 0, whatever this process built before
    keras.utils.set_random_seed(inputs["seed"])
    model = km.build(10)
    km.randomize(model, seed=inputs["seed"])
    calibrate(model, inputs["calibration_images"])
    model.layers[-1].kernel.assign(inputs["head_kernel"])
    model.layers[-1].bias.assign(inputs["head_bias"])
    start = km.weights_dict(model)
    (folder / "keras10.pkl").write_bytes(pickle.dumps(start, protocol=4))
    out = {regime: train(model, start, regime, inputs["images"], inputs["labels"], inputs["lr"][regime],
                         regime in inputs["snapshots"]) for regime in ("freeze", "full")}
    out["adam"] = adam_on_given_gradients(inputs["adam_start"], inputs["adam_grads"], inputs["adam_lr"])
    dense = keras.layers.Dense(10)
    dense.build((None, 256))
    out["dense_init"] = {"kernel": np.asarray(dense.kernel.numpy()), "bias": np.asarray(dense.bias.numpy())}
    (folder / "keras_training.pkl").write_bytes(pickle.dumps(out, protocol=4))


if __name__ == "__main__":
    main(sys.argv[1])
