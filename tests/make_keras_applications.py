"""Keras' own ResNets for tests/test_applications.py, in a process of their own (no TF in pytest).

    python tests/make_keras_applications.py OUT_DIR [--size 64] [--classes 10] [--also NAME:HxW]...
                                            [--files NAME]... [--seed-head] [--others] NAME:POOLING ...

For each NAME (a keras.applications function, ResNet50 ... ResNet152V2) it builds the network
with ``weights=None``, include_top=True, ``classes`` and no softmax, at SIZE x SIZE; gives it
seeded random weights and BatchNorm statistics (so a wrong epsilon or a swapped mean/variance
shows); builds it again with include_top=False and POOLING (avg, max or none) with the same
weights. It writes OUT_DIR/NAME.npz ({Keras path: array}) and OUT_DIR/NAME_outputs.npz (inputs
``x`` NHWC, ``logits``, ``features`` of the top-less model, and for each --also NAME:HxW of
the network ``x_HxW`` and ``logits_HxW`` of the top model built at that size), and prints one
JSON line per network, once its files are written, with Keras' count_params() of both models
and the trainable count of the first.

--files NAME: the top model is also saved the ways Keras saves it (``keras_application_files.py``: NAME.keras,
NAME.weights.h5, NAME.h5, NAME_imagenet_layout.h5); --seed-head: the course's birds model (ResNet50,
no top, avg pooling, Dense(1024, relu), Dropout(0.4), Dense(200, softmax)) as a Sequential and as
a Functional, saved as .keras and .weights.h5 with its logits; --others: files of other networks
(``other_files``). Then it answers requests on stdin
(``keras_application_files.answer``): load weights we exported into a fresh Keras model and save its logits.
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

BATCH = 2


def random_value(path, shape, fan_in, rng):
    """Weights that keep activations of order 1 through 50 blocks, and BatchNorm statistics far
    from the identity (gamma 1, beta 0, mean 0, variance 1)."""
    var = path.rsplit("/", 1)[-1]
    if var == "kernel":
        # a residual branch adds a fraction of the trunk: 0.5 / sqrt(fan in) keeps 50 of them finite
        gain = 0.5 if "_3_conv" in path or "_0_conv" in path else 1.0
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(gain / np.sqrt(fan_in))
    if var in ("bias", "beta"):
        return rng.normal(0, 0.1, shape).astype(np.float32)
    if var == "gamma":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if var == "moving_mean":
        return rng.normal(0, 0.2, shape).astype(np.float32)
    if var == "moving_variance":
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    raise ValueError(f"unexpected variable {path}")


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        v.assign(random_value(v.path, shape, fan_in, rng))
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def make(out, name, pooling, size, classes, other_sizes, seed):
    build = getattr(keras.applications, name)
    keras.backend.clear_session()
    top = build(weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None)
    weights = randomize(top, seed)
    notop = build(weights=None, include_top=False, input_shape=(size, size, 3), pooling=pooling)
    for v in notop.weights:  # the same layers, the same paths
        v.assign(weights[v.path])
    rng = np.random.default_rng(seed + 100)
    x = rng.standard_normal((BATCH, size, size, 3), dtype=np.float32)
    outputs = {"x": x, "logits": np.asarray(top(x, training=False)),
               "features": np.asarray(notop(x, training=False))}
    for hw in other_sizes:
        height, width = map(int, hw.split("x"))
        model = build(weights=None, input_shape=(height, width, 3), classes=classes, classifier_activation=None)
        model.set_weights(top.get_weights())
        outputs[f"x_{hw}"] = rng.standard_normal((BATCH, height, width, 3), dtype=np.float32)
        outputs[f"logits_{hw}"] = np.asarray(model(outputs[f"x_{hw}"], training=False))
    np.savez(out / f"{name}.npz", **weights)
    np.savez(out / f"{name}_outputs.npz", **outputs)
    trainable = sum(int(np.prod(v.shape)) for v in top.trainable_weights)
    return {"name": name, "top": top.count_params(), "notop": notop.count_params(), "top_trainable": trainable}, top


def main(argv):
    from keras_application_files import answer, other_files, save_files, seed_models

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("networks", nargs="+", help="NAME:POOLING, POOLING one of avg, max, none")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--also", action="append", default=[], help="NAME:HxW, a network also run at that size")
    parser.add_argument("--files", action="append", default=[], help="NAME: also save its top model in every format")
    parser.add_argument("--seed-head", action="store_true", help="also the course's ResNet50 + Dense head models")
    parser.add_argument("--others", action="store_true", help="also files of other networks, to be refused")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(args.networks):
        name, pooling = spec.split(":")
        other_sizes = [also.split(":")[1] for also in args.also if also.split(":")[0] == name]
        counts, top = make(args.out, name, None if pooling == "none" else pooling, args.size, args.classes,
                           other_sizes, seed=i)
        if name in args.files:
            save_files(top, args.out / name)
        print(json.dumps(counts), flush=True)
    if args.seed_head:
        seed_models(args.out, args.size, randomize)
        print("seed head", flush=True)
    if args.others:
        other_files(args.out, args.size)
        print("others", flush=True)
    answer(args.out, args.size, args.classes)


if __name__ == "__main__":
    main(sys.argv[1:])
