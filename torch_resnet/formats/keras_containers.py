"""Keras' two containers, HDF5 (``.weights.h5``, Keras 2 ``.h5``) and zip (``.keras``), read as
data with h5py and zipfile into one dict of Keras-named arrays. These parsers walk the file's own
structures, so they run only in the isolated child of ``isolation.py``; this module imports no
torch, to keep that child small and quick to start.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import UserError
from .keras_config import describe_config
from .keras_h5 import Reader, is_keras2, read_keras2, read_keras3
from .safe_pickle import NEEDS_NO_CONVERSION

HDF5_MAGIC, ZIP_MAGIC = b"\x89HDF\r\n\x1a\n", b"PK\x03\x04"
MAX_WEIGHTS_ENTRY = 1024 * 2**20  # a .keras's model.weights.h5, optimizer state included (ResNet152 with Adam: 723 MB)
MAX_CONFIG_ENTRY = 2**20
NOT_KERAS = "not a Keras pickle, .keras or .h5"


@dataclass
class KerasFile:
    kind: str  # what the file is, in words
    arrays: dict[str, np.ndarray]  # Keras name -> array, what keras_map reads
    h5_paths: dict[str, str] = field(default_factory=dict)  # Keras 3 files: each array's dataset
    h5_groups: list[str] = field(default_factory=list)  # and every group, to write the file back
    num_classes: int | None = None  # where the file's model description gives it
    description: dict | None = None  # a keras.applications ResNet's model description (keras_config)


def read_h5(f: h5py.File, where: str, kind: str | None = None, described=(None, None)) -> KerasFile:
    with f:
        reader = Reader(f, where)
        if is_keras2(f):
            config = reader.text("model_config")
            described = describe_config(config, f"{where} (model_config)") if config is not None else described
            result = KerasFile("Keras 2 .h5", read_keras2(reader), {}, [], *described)
        else:
            arrays, paths, groups = read_keras3(reader)
            result = KerasFile(kind or "Keras 3 .weights.h5", arrays, paths, groups, *described)
    if not result.arrays:
        raise UserError(f"{where}: no Keras weights in this HDF5 file")
    return result


def read_zip(path) -> KerasFile:
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        if any(n.endswith("data.pkl") for n in names):
            raise UserError(f"{path} is a PyTorch file (torch.save), {NOT_KERAS}: {NEEDS_NO_CONVERSION}")
        if not {"config.json", "model.weights.h5"} <= names:
            raise UserError(f"{path}: a zip archive without config.json and model.weights.h5: not a Keras 3 .keras "
                            f"file (nor a PyTorch file)")
        limits = {"config.json": MAX_CONFIG_ENTRY, "model.weights.h5": MAX_WEIGHTS_ENTRY}
        for name, limit in limits.items():  # both sizes as declared, before anything is inflated
            _check_size(z, name, z.getinfo(name).file_size, limit)
        described = describe_config(_entry(z, "config.json", MAX_CONFIG_ENTRY).decode("utf8", "replace"),
                               f"{path} (config.json)")
        weights = _entry(z, "model.weights.h5", MAX_WEIGHTS_ENTRY)
    if weights[:8] != HDF5_MAGIC:
        raise UserError(f"{path}: its model.weights.h5 is not an HDF5 file")
    return read_h5(h5py.File(io.BytesIO(weights), "r"), f"{path} (model.weights.h5)", "Keras 3 .keras", described)


def _entry(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """One member of the archive, refused before and while it is inflated if it exceeds ``limit``."""
    out = bytearray()
    with z.open(name) as f:
        while chunk := f.read(2**20):
            out += chunk
            _check_size(z, name, len(out), limit)  # zipfile stops at the declared size; this is a second guard
    return bytes(out)


def _check_size(z: zipfile.ZipFile, name: str, size: int, limit: int) -> None:
    if size > limit:
        raise UserError(f"{z.filename}: {name} would inflate to {size / 2**20:.0f} MB, more than a supported network's "
                        f"weights can need ({limit >> 20} MB); not read")
