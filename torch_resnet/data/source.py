"""What the trainer reads its images from: a data source gives a training and a test split of
uint8 images in memory (``CifarSplit``: N x 3 x H x W images, labels, class names). The loop
never knows the format; CIFAR's python batches are one source, an image folder (``images.py``)
another. A source may also give a ``"val"`` split (``has_val``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .cifar import CIFAR10, CifarFormat, CifarSplit, load_cifar
from .images import ImageFolderSource, is_image_folder


class DataSource(Protocol):
    name: str  # what the run's lines and record call it
    num_classes: int  # known before anything is read: the new head is made before the data is loaded

    def split(self, which: str, download: bool) -> CifarSplit:
        """The ``"train"`` or ``"test"`` split, read (downloaded first where allowed and needed)."""


@dataclass(frozen=True)
class CifarSource:
    """CIFAR-10 or CIFAR-100 in its python format in ``data_dir``."""
    data_dir: Path | str
    fmt: CifarFormat = CIFAR10

    @property
    def name(self) -> str:
        return self.fmt.name

    @property
    def num_classes(self) -> int:
        return self.fmt.num_classes

    def split(self, which: str, download: bool) -> CifarSplit:
        return load_cifar(self.data_dir, self.fmt, which, download)


def source_for(data_dir, test_dir=None, val_dir=None, image_size: int | None = None,
               skip_bad_images: bool = False) -> DataSource:
    """An image folder (class sub-folders, or a test/validation folder given), else CIFAR-10."""
    if test_dir is not None or val_dir is not None or is_image_folder(data_dir):
        return ImageFolderSource(data_dir, test_dir, val_dir, image_size, skip_bad_images)
    return CifarSource(data_dir)
