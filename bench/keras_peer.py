#!/usr/bin/env python
"""The peer we replace: the seed's network in Keras 3 on TensorFlow, trained by the loop a course
student writes. Run by bench/throughput.py in a fresh process of its own (TensorFlow never shares
a process with our PyTorch loop); prints one JSON line.

    python bench/keras_peer.py --regime freeze|full|infer --data-dir D --images N --batch-size B
    python bench/keras_peer.py --network ResNet50 --image-size 224 --head 1024,200 --regime ... --images N ...

With --network (a keras.applications ResNet): the course's birds model, ``NAME(weights=None,
include_top=False, pooling="avg")`` + Dense(1024, relu) + Dropout(0.4) + Dense(200), on random
uint8 images of --image-size (speed does not depend on the pixels), scaled by the network's own
``preprocess_input``; freeze: the ResNet ``trainable=False`` (as the seed does).

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


def course_model(args):
    """CIFAR-10's first images, the seed's network, its BatchNorm frozen (and the rest with --freeze)."""
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
    return images, labels, model, lambda x: tf.cast(x, tf.float32) / 127.5 - 1.0


def applications_model(args):
    """Random images, the course's birds model on a keras.applications ResNet (BatchNorm frozen;
    with --freeze the whole ResNet), scaled by the ResNet's own preprocess_input."""
    import keras
    import numpy as np
    import tensorflow as tf

    widths = [int(w) for w in args.head.split(",")]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, widths[-1], args.images).astype(np.int32)
    base = getattr(keras.applications, args.network)(weights=None, include_top=False, pooling="avg",
                                                     input_shape=(args.image_size, args.image_size, 3))
    base.trainable = args.regime != "freeze"  # first: it sets every layer's flag
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    x = base.output
    for i, width in enumerate(widths):
        x = keras.layers.Dropout(0.4)(x) if i else x
        x = keras.layers.Dense(width, activation="relu" if i < len(widths) - 1 else None)(x)
    family = keras.applications.resnet_v2 if args.network.endswith("V2") else keras.applications.resnet
    return images, labels, keras.Model(base.input, x), lambda x: family.preprocess_input(tf.cast(x, tf.float32))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regime", choices=["freeze", "full", "infer"], required=True,
                   help="freeze: only the Dense head trains; full: all but BatchNorm; infer: forward passes only")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ (the course network)")
    p.add_argument("--network", default="course", help="course, or a keras.applications ResNet (ResNet50...)")
    p.add_argument("--image-size", type=int, default=224, help="with --network: the images' side")
    p.add_argument("--head", default="1024,200", help="with --network: the Dense widths on the pooled features")
    p.add_argument("--images", type=int, required=True, help="training images per epoch (the first N)")
    p.add_argument("--batch-size", type=int, required=True, help="images per step")
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    if args.network == "course":
        images, labels, model, scale = course_model(args)
    else:
        images, labels, model, scale = applications_model(args)
    size, pad = images.shape[1], max(4, images.shape[1] // 8)  # the padding of our DeviceBatches

    def augment(x, y):
        x = tf.image.pad_to_bounding_box(x, pad, pad, size + 2 * pad, size + 2 * pad)
        x = tf.image.random_crop(x, (size, size, 3))
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
