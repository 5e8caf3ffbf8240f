#!/usr/bin/env python
"""The peer we replace: the seed's network in Keras 3 on TensorFlow, trained by the loop a course
student writes. Run by bench/throughput.py in a fresh process of its own (TensorFlow never shares
a process with our PyTorch loop); prints one JSON line.

    python bench/keras_peer.py --regime freeze|full|infer --data-dir D --images N --batch-size B

- freeze: every layer but the final Dense ``trainable=False``; full: only the BatchNormalization
  layers ``trainable=False`` (in Keras 3 that also means inference mode);
- ``tf.function`` train step with ``GradientTape``, ``keras.optimizers.Adam``, sparse categorical
  cross-entropy from logits;
- tf.data input: shuffle, per-image random crop (4-pixel zero padding) and horizontal flip,
  scaling to [-1, 1], batch, prefetch; the ``infer`` regime scales only and runs
  ``model(x, training=False)`` in a ``tf.function``;
- one untimed warm-up epoch (tracing), then the best of three timed epochs;
- TensorFlow's threads at their best measured setting (intra-op: every core, inter-op: 1).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's best setting found on a 2-core CPU: all cores for each op, one op at a time. Its
# default inter-op pool runs independent ops side by side and cost inference 40 % (100 against
# 167 images/s); training was the same either way. (tf.config.threading did not take effect.)
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regime", choices=["freeze", "full", "infer"], required=True,
                   help="freeze: only the Dense head trains; full: all but BatchNorm; infer: forward passes only")
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--images", type=int, required=True, help="training images per epoch (the first N)")
    p.add_argument("--batch-size", type=int, required=True, help="images per step")
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from torch_resnet.data.cifar import CIFAR10, load_cifar
    from torch_resnet.keras_model import build

    data = load_cifar(args.data_dir, CIFAR10, "train", download=False)
    images = data.images[:args.images].permute(0, 2, 3, 1).numpy()  # NHWC, as Keras users hold them
    labels = data.labels[:args.images].numpy().astype(np.int32)

    # Random weights: speed does not depend on the values. (No keras.utils.set_random_seed: it
    # resets TensorFlow's context, threads included, and cost inference 40 % here.)
    model = build(num_classes=10)
    blocks = [layer for layer in model.layers if isinstance(layer, keras.Model)]  # the residual blocks
    for layer in model.layers + [sub for block in blocks for sub in block.layers]:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    if args.regime == "freeze":
        for layer in model.layers[:-1]:
            layer.trainable = False

    def scale(x):
        return tf.cast(x, tf.float32) / 127.5 - 1.0

    def augment(x, y):
        x = tf.image.pad_to_bounding_box(x, 4, 4, 40, 40)
        x = tf.image.random_crop(x, (32, 32, 3))
        return scale(tf.image.random_flip_left_right(x)), y

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if args.regime == "infer":
        ds = ds.batch(args.batch_size).map(lambda x, y: (scale(x), y))
    else:
        ds = ds.shuffle(len(labels), seed=0).map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch_size)
    ds = ds.prefetch(tf.data.AUTOTUNE)

    optimizer = keras.optimizers.Adam(1e-3 if args.regime == "freeze" else 1e-5)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def infer_step(x):
        return model(x, training=False)

    def epoch():
        for x, y in ds:
            out = infer_step(x) if args.regime == "infer" else train_step(x, y)
        out.numpy()  # wait for the last step

    epoch()  # warm-up: tracing
    seconds = min(timed(epoch) for _ in range(3))  # best of three: TensorFlow's first epochs vary (100-170 img/s)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    print(json.dumps({"keras_ips": len(labels) / seconds, "keras_epoch_s": seconds,
                      "keras_trainable_params": trainable if args.regime != "infer" else 0,
                      "keras_version": keras.__version__, "tensorflow_version": tf.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
