"""Stand-ins for the course's files, in their real formats (for tests, the offline demo and the
notebook): small learnable data sets as CIFAR python batches, and a Keras pickle of the network."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..conversion.convert import state_dict_to_keras
from .cifar import CIFAR10, STAND_IN_KEY, CifarFormat, load_cifar
from ..formats.files import atomic_write
from ..model import ResidualNetwork, images_to_input


def make_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Each class: its own colour and stripe orientation, plus noise. N x 3072 uint8 (CIFAR rows)."""
    palette = np.random.default_rng(12345).integers(30, 226, (num_classes, 3))
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.empty((len(labels), 3, 32, 32), np.float32)
    for k in range(num_classes):
        idx = np.nonzero(labels == k)[0]
        angle = np.pi * k / num_classes
        stripes = 40 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.6)
        images[idx] = palette[k][:, None, None] + stripes + rng.normal(0, 25, (len(idx), 3, 32, 32))
    return np.clip(images, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar(data_dir, fmt: CifarFormat = CIFAR10, train_size: int = 500, test_size: int = 200,
                seed: int = 0) -> Path:
    """Write ``data_dir/<fmt.folder>`` with the files, keys and dtypes of the real download; its meta
    file also says ``stand_in: True`` (``data.load_cifar`` reads it into ``CifarSplit.stand_in``)."""
    rng = np.random.default_rng(seed)
    root = Path(data_dir) / fmt.folder
    root.mkdir(parents=True, exist_ok=True)
    names = [f"synthetic_{i}".encode() for i in range(fmt.num_classes)]
    label_key = fmt.label_key

    def dump(name, batch):
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)

    shares = np.array_split(np.arange(train_size), len(fmt.train_files))
    for name, share in zip(fmt.train_files, shares):
        labels = rng.integers(0, fmt.num_classes, len(share))
        dump(name, {b"batch_label": name.encode(), label_key: labels.tolist(), b"data": make_images(labels, fmt.num_classes, rng),
                    b"filenames": [f"{name}_{i}.png".encode() for i in range(len(share))]})
    labels = rng.integers(0, fmt.num_classes, test_size)
    dump(fmt.test_file, {b"batch_label": b"testing batch", label_key: labels.tolist(),
                         b"data": make_images(labels, fmt.num_classes, rng)})
    dump(fmt.meta_file, {fmt.names_key: names, STAND_IN_KEY: True})
    return root


def write_stand_in_keras_pickle(data_dir, path, num_classes: int = 100) -> Path:
    """A Keras-named pickle of the network, as the course's: PyTorch's initialisation, and the
    BatchNorm statistics of (up to 500) CIFAR-10 training images in ``data_dir``, so that the
    frozen backbone's features are on the scale a trained network gives."""
    torch.manual_seed(0)
    model = ResidualNetwork(num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    images = load_cifar(data_dir, CIFAR10, "train", download=False).images[:500]
    with torch.no_grad():
        model.train()(images_to_input(images))
    arrays = state_dict_to_keras(model.state_dict())
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(pickle.dumps(arrays, protocol=4)))
    return Path(path)
