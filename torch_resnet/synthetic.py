"""Small, learnable data sets written in the real CIFAR python format (for tests and the offline demo)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .data import CIFAR10, CifarFormat


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
    """Write ``data_dir/<fmt.folder>`` with the files, keys and dtypes of the real download."""
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
    dump(fmt.meta_file, {fmt.names_key: names})
    return root
