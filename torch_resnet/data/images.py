"""An image folder as a data source: one sub-folder of images per class (torchvision's
``ImageFolder`` layout; CUB-200's ``images/`` folder is one), decoded once into memory.

Every image is decoded by Pillow (JPEG, PNG, GIF, WebP, BMP...; what torchvision's ``ImageFolder``
and Keras' ``load_img`` use), made RGB (grayscale, palette and RGBA images too), resized to
``image_size`` x ``image_size`` (what Keras' ``target_size`` does) and kept as uint8,
N x 3 x H x W: the CIFAR path's design, so the loop, the augmentation and the batches are the
same. Decoding runs on a thread pool (Pillow releases the GIL while it decodes).

Real folders are messy, and each problem is one line before any training: an empty class folder,
test (or validation) classes that differ from the training classes, a file that is not a readable
image (named; with ``skip_bad`` skipped and counted instead: ``skipped``). Hidden files are ignored.
Without a test folder, a seeded tenth of the images (at least one per class where a class has two)
is held out as the test split, and said so.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..applications.specs import KERAS_IMAGE_SIZE
from ..errors import UserError
from .cifar import CifarSplit

DEFAULT_IMAGE_SIZE = KERAS_IMAGE_SIZE  # keras.applications' ResNets' own (the trainer passes the network's)
HELD_OUT_TEST = 0.1  # of the images, when there is no test folder


def class_folders(root: Path, what: str) -> dict[str, list[Path]]:
    """{class name: its image files, sorted}, the classes sorted as ImageFolder sorts them."""
    if not root.is_dir():
        raise UserError(f"{what} {root} is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{what} {root} holds no class folders: it must hold one sub-folder of images per class "
                        f"({root}/<class>/<image>.jpg)")
    files = {c.name: sorted(f for f in c.rglob("*") if f.is_file() and not any(
        part.startswith(".") for part in f.relative_to(c).parts)) for c in classes}
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise UserError(f"{what} {root}: class folder {empty[0]!r} holds no images"
                        + (f" (and {len(empty) - 1} more empty ones)" if len(empty) > 1 else ""))
    return files


@dataclass
class ImageFolderSource:
    """Images in ``data_dir/<class>/``; test images in ``test_dir`` (same classes), else held out;
    validation images in ``val_dir`` if given (else the trainer holds out ``val_size``)."""
    data_dir: Path | str
    test_dir: Path | str | None = None
    val_dir: Path | str | None = None
    image_size: int | None = None  # None: DEFAULT_IMAGE_SIZE (the trainer passes the network's own)
    skip_bad: bool = False
    skipped: list[str] = field(default_factory=list)  # files skipped (skip_bad), for the run's record

    def __post_init__(self):
        self.files = {"train": class_folders(Path(self.data_dir), "data folder")}
        for which, folder in (("test", self.test_dir), ("val", self.val_dir)):
            if folder is not None:
                self.files[which] = class_folders(Path(folder), f"{which} folder")
                self.check_same_classes(which, folder)
        if self.test_dir is None:
            self.files["train"], self.files["test"] = held_out(self.files["train"], HELD_OUT_TEST)

    def check_same_classes(self, which: str, folder) -> None:
        train, other = list(self.files["train"]), list(self.files[which])
        if train != other:
            only_train = [c for c in train if c not in other]
            only_other = [c for c in other if c not in train]
            detail = (f"{len(only_train)} classes only in training ({', '.join(only_train[:3])}...)" if only_train
                      else "") + ("; " if only_train and only_other else "") + \
                (f"{len(only_other)} only in {which} ({', '.join(only_other[:3])}...)" if only_other else "")
            raise UserError(f"{which} folder {folder}: its classes differ from those of {self.data_dir}: {detail}")

    @property
    def name(self) -> str:
        return Path(self.data_dir).name or str(self.data_dir)

    @property
    def num_classes(self) -> int:
        return len(self.files["train"])

    @property
    def has_val(self) -> bool:
        return "val" in self.files

    def split(self, which: str, download: bool = False) -> CifarSplit:
        """The ``"train"``, ``"test"`` or ``"val"`` images, decoded (``download`` has no meaning here)."""
        size = self.image_size or DEFAULT_IMAGE_SIZE
        classes = list(self.files["train"])
        paths = [(p, label) for label, c in enumerate(classes) for p in self.files[which][c]]
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            images = list(pool.map(lambda item: self.decode(item[0], size), paths))
        kept = [(image, label) for image, (_, label) in zip(images, paths) if image is not None]
        if not kept:
            raise UserError(f"{Path(self.data_dir)}: no readable image in the {which} split")
        return CifarSplit(torch.stack([image for image, _ in kept]),
                          torch.tensor([label for _, label in kept], dtype=torch.int64), classes)

    def decode(self, path: Path, size: int) -> torch.Tensor | None:
        """One image, RGB, ``size`` x ``size``, uint8 3 x H x W (PIL, as Keras' ``load_img``: any mode
        converted to RGB, alpha dropped; resized bilinearly, where ``load_img`` defaults to nearest);
        a file that is not one: UserError, or None (and counted) with ``skip_bad``."""
        try:
            with Image.open(path) as image:
                image.draft("RGB", (size, size))  # a large JPEG decoded at a fraction of its size: faster
                rgb = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            if self.skip_bad:
                self.skipped.append(str(path))
                return None
            why = " ".join(f"{type(e).__name__}: {e}".split())[:120]
            raise UserError(f"{path}: not a readable image ({why}); pass `skip_bad_images=True` to skip such "
                            f"files and count them") from None
        return torch.from_numpy(rgb.transpose(2, 0, 1).copy())


def held_out(files: dict[str, list[Path]], fraction: float) -> tuple[dict, dict]:
    """(train, test): ``fraction`` of each class's images, at least one, spread evenly over its
    sorted files, goes to test (a class of one image stays whole in train)."""
    train, test = {}, {}
    for c, found in files.items():
        n = max(1, round(len(found) * fraction)) if len(found) >= 2 else 0
        picked = {int((k + 0.5) * len(found) / n) for k in range(n)}
        train[c] = [p for i, p in enumerate(found) if i not in picked]
        test[c] = [p for i, p in enumerate(found) if i in picked]
    return train, test


def is_image_folder(folder) -> bool:
    """Whether ``folder`` looks like class sub-folders of images (not a CIFAR data folder)."""
    folder = Path(folder)
    if not folder.is_dir() or any((folder / name).is_dir() for name in ("cifar-10-batches-py", "cifar-100-python")):
        return False
    return any(p.is_dir() and not p.name.startswith(".") and any(True for _ in os.scandir(p)) for p in folder.iterdir())
