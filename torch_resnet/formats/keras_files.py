"""Every file Keras saves for this network, told apart by its first bytes (never by its name),
read as data into one dict of Keras-named arrays for ``keras_map``.

- the course's pickle (``safe_pickle``);
- HDF5 (``\\x89HDF``): Keras 3 ``save_weights`` or Keras 2 ``save_weights`` / ``model.save``;
- a zip: Keras 3 ``model.save("x.keras")`` (``config.json`` checked against the network, then its
  ``model.weights.h5``, read in memory within a size cap), or ``torch.save``'s output (refused:
  it needs no conversion), as is a safetensors file.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import UserError
from .isolation import read_isolated
from .keras_containers import HDF5_MAGIC, NOT_KERAS, ZIP_MAGIC, KerasFile
from .safe_pickle import NEEDS_NO_CONVERSION
from .safe_pickle import load_array_dict
from .safetensors_io import is_safetensors


def sniff(path) -> str:
    """"hdf5", "zip", "safetensors" or "other", from the first bytes of ``path``."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head == HDF5_MAGIC:
        return "hdf5"
    if head[:4] == ZIP_MAGIC:
        return "zip"
    return "safetensors" if is_safetensors(path) else "other"


def read_keras_file(path) -> KerasFile:
    kind = sniff(path)
    if kind in ("hdf5", "zip"):  # parsed by C code (libhdf5) or on its behalf: in a child process
        return read_isolated(path, kind)
    if kind == "safetensors":
        raise UserError(f"{path} is a safetensors state dict (PyTorch), {NOT_KERAS}: {NEEDS_NO_CONVERSION}")
    return KerasFile("Keras pickle", load_array_dict(path))


def keras_kind(path) -> str | None:
    """What Keras file ``path`` is, in words, from a quick look; None when it is none."""
    kind = sniff(path)
    if kind == "hdf5":
        return "an HDF5 file (Keras .weights.h5 or .h5)"
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as z:
                return "a Keras 3 .keras file" if "config.json" in z.namelist() else None
        except Exception:  # a user's file, damaged any way (NotImplementedError for an unknown zip version...)
            return None
    try:
        return "a Keras pickle (numpy arrays by Keras name)" if kind == "other" and load_array_dict(path) else None
    except UserError:
        return None


def converted_name(path) -> Path:
    """The converter's default output for ``path``: x.pkl, x.keras, x.h5, x.weights.h5 -> x.pt."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".weights.h5") + ".pt") if path.name.endswith(".weights.h5") \
        else path.with_suffix(".pt")
