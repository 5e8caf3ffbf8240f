"""CIFAR-10/100 in their real python format, checked for structure, kept as uint8 tensors,
and batches augmented on whatever device holds them (no per-image Python work)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..model import images_to_input
from ..formats.safe_pickle import safe_load


@dataclass(frozen=True)
class CifarFormat:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    url: str


CIFAR10 = CifarFormat("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      "test_batch", "batches.meta", b"labels", b"label_names", 10,
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
CIFAR100 = CifarFormat("cifar100", "cifar-100-python", ("train",), "test", "meta", b"fine_labels",
                       b"fine_label_names", 100, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")
FORMATS = {f.name: f for f in (CIFAR10, CIFAR100)}
STAND_IN_KEY = b"stand_in"  # in the meta file of a stand-in data set (synthetic.write_cifar); the real one has none


@dataclass
class CifarSplit:
    images: torch.Tensor  # uint8, N x 3 x 32 x 32
    labels: torch.Tensor  # int64, N
    class_names: list[str]
    stand_in: bool = False  # a stand-in made by synthetic.write_cifar (its batches.meta says so), not CIFAR


def _read_batch(path: Path, fmt: CifarFormat):
    batch = safe_load(path, encoding="bytes")
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, expected a dict)")
    for key in (b"data", fmt.label_key):
        if key not in batch:
            raise UserError(f"{path}: not a {fmt.name} batch: no {key.decode()!r} entry")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {desc}")
    try:
        labels = np.asarray(batch[fmt.label_key])
    except ValueError:  # a ragged list
        labels = np.asarray(None)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: {fmt.label_key.decode()!r} must be {len(data)} integers, one per image, "
                        f"got {labels.dtype} of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= fmt.num_classes):
        raise UserError(f"{path}: label {int(labels.max() if labels.max() >= fmt.num_classes else labels.min())} "
                        f"outside 0..{fmt.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def find_or_download(data_dir, fmt: CifarFormat, download: bool = True) -> Path:
    """The extracted folder, downloading it through torchvision (checksummed) if absent."""
    root = Path(data_dir) / fmt.folder
    if root.is_dir():
        return root
    error = "no network download was allowed"
    if download:
        # What a failed download leaves behind is removed: the folder if it made it, else the
        # archive and a half-extracted folder.
        made = [p for p in (Path(data_dir), *Path(data_dir).parents) if not p.exists()]
        archive = Path(data_dir) / fmt.url.rsplit("/", 1)[-1]
        had_archive = archive.exists()
        try:
            import torchvision

            cls = torchvision.datasets.CIFAR10 if fmt is CIFAR10 else torchvision.datasets.CIFAR100
            cls(str(data_dir), train=True, download=True)
            return root
        except Exception as e:  # offline, DNS, checksum: all mean the user must fetch it by hand
            error = f"download failed: {' '.join(str(e).split())[:120]}"
            if made:
                shutil.rmtree(made[-1], ignore_errors=True)
            else:
                shutil.rmtree(root, ignore_errors=True)
                if not had_archive:
                    archive.unlink(missing_ok=True)
    raise UserError(f"{fmt.name} not found at {root} ({error}); download {fmt.url} and extract it "
                    f"into {Path(data_dir)} so that {root} holds {', '.join(fmt.train_files[:1])} ... {fmt.test_file}")


def load_cifar(data_dir, fmt: CifarFormat, split: str, download: bool = True) -> CifarSplit:
    """Read the ``train`` or ``test`` split of CIFAR-10/100 from its python-format folder."""
    root = find_or_download(data_dir, fmt, download)
    files = fmt.train_files if split == "train" else (fmt.test_file,)
    missing = [n for n in (*fmt.train_files, fmt.test_file) if not (root / n).is_file()]
    if missing:  # all of them named, and the way to mend it
        archive = fmt.url.rsplit("/", 1)[1]
        raise UserError(f"{root} is incomplete: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing; "
                        f"extract {archive} into {Path(data_dir)} again, or delete {root} and let it be downloaded")
    parts = [_read_batch(root / name, fmt) for name in files]
    names, stand_in = [f"class_{i}" for i in range(fmt.num_classes)], False
    if (root / fmt.meta_file).is_file():
        meta = safe_load(root / fmt.meta_file, encoding="bytes")
        stand_in = isinstance(meta, dict) and meta.get(STAND_IN_KEY) is True
        listed = meta.get(fmt.names_key) if isinstance(meta, dict) else None
        if isinstance(listed, (list, tuple)) and len(listed) == fmt.num_classes:  # else keep class_<i>
            names = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in listed]
            twice = next((n for n in names if names.count(n) > 1), None)
            if twice is not None:  # per-class figures are keyed by name: two classes would become one
                raise UserError(f"{root / fmt.meta_file}: {fmt.names_key} names the class {twice!r} twice")
    images = np.concatenate([p[0] for p in parts])
    if len(images) == 0:
        raise UserError(f"{root}: the {split} split holds no images")
    labels = np.concatenate([p[1] for p in parts])
    return CifarSplit(torch.from_numpy(images), torch.from_numpy(labels), names, stand_in)


def split_train_val(data: CifarSplit, val_size: int, seed: int) -> tuple[CifarSplit, CifarSplit]:
    """Hold out ``val_size`` images, chosen by a seeded permutation, as the validation set."""
    if not 0 < val_size < len(data.labels):
        raise UserError(f"`val_size={val_size}` must be between 1 and {len(data.labels) - 1} images (the training "
                        f"set has {len(data.labels):,}); a fraction such as 0.1 holds out a tenth of any set")
    perm = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size], perm[val_size:]
    return (CifarSplit(data.images[train], data.labels[train], data.class_names, data.stand_in),
            CifarSplit(data.images[val], data.labels[val], data.class_names, data.stand_in))


class DeviceBatches:
    """A whole split on one device as uint8; batches shuffled and augmented there.

    (A split of float tensors, such as cached backbone features, is batched as it is.)

    Augmentation is torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` in
    distribution: offsets uniform in 0..8 on each axis over a zero-padded image, flip with p=0.5
    (for larger images the padding is an eighth of the side: 28 at 224). Batches are made float
    by ``images_to_input`` in the network's ``mode`` (its Keras ``preprocess_input``).
    All random numbers of an epoch come from a CPU generator seeded by (seed, epoch), so an epoch
    is the same on any device and after a resume.
    """

    CHUNK = 16  # batches gathered and augmented together

    def __init__(self, split: CifarSplit, batch_size: int, device, *, shuffle: bool, augment: bool,
                 seed: int = 0, channels_last: bool = False, shard: tuple[int, int] = (0, 1), mode: str = "tf"):
        self.images = split.images.to(device)
        self.pad = max(4, self.images.shape[-1] // 8) if self.images.dim() == 4 else 0
        self.mode = mode
        self.labels = split.labels.to(device)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.shuffle, self.augment, self.seed, self.channels_last = shuffle, augment, seed, channels_last
        self.rank, self.world = shard

    def __len__(self) -> int:  # batches per epoch on this rank
        return -(-self.per_rank() // self.batch_size)

    def per_rank(self) -> int:
        """Images this rank sees per epoch. Training shards are cut to equal sizes (every rank
        must take the same number of steps); evaluation shards keep every image."""
        if self.world == 1:
            return len(self.labels)
        if self.shuffle:
            return len(self.labels) // self.world
        return len(range(self.rank, len(self.labels), self.world))

    def epoch(self, epoch: int):
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.augment:
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g)
            flips = torch.rand(n, generator=g) < 0.5
        if self.world > 1:  # each rank takes every world-th image of the same global order
            order = order[: self.per_rank() * self.world if self.shuffle else n][self.rank::self.world]
        order = order.to(self.device, non_blocking=True)
        if self.augment:
            offsets = offsets.to(self.device, non_blocking=True)[order]
            flips = flips.to(self.device, non_blocking=True)[order]
        # Gather and augment CHUNK batches at a time: the same work in a sixteenth of the kernel
        # launches, which matter when a step takes a few milliseconds.
        chunk = self.batch_size * self.CHUNK
        for chunk_start in range(0, len(order), chunk):
            idx = order[chunk_start:chunk_start + chunk]
            images = self.images[idx]
            if self.augment:
                images = self.crop_and_flip(images, offsets[chunk_start:chunk_start + chunk],
                                            flips[chunk_start:chunk_start + chunk], self.pad)
            labels = self.labels[idx]
            for start in range(0, len(idx), self.batch_size):
                batch = images[start:start + self.batch_size]
                if batch.dtype == torch.uint8:  # float tensors (cached features) pass as they are
                    batch = images_to_input(batch, self.channels_last, self.mode)
                yield batch, labels[start:start + self.batch_size]

    @staticmethod
    def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
        """Crop each image at ``offsets`` (0..2*pad per axis) from its zero-padded version, then
        mirror where ``flips``. Two gathers (rows, then columns) whose index tensors are
        broadcast views, so no padded copy and no full-size index is ever materialised."""
        b, c, h, w = images.shape
        rows = offsets[:, 0:1] - pad + torch.arange(h, device=images.device)  # B x H source rows, may fall outside
        cols = offsets[:, 1:2] - pad + torch.arange(w, device=images.device)
        cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reads the columns right to left
        out = images.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
        out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
        inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
        return out * inside  # the padding is zeros, as in torchvision's RandomCrop(padding=pad)
