"""Keras weights in HDF5, read as data with h5py (no Keras, no TensorFlow), and written back.

Two layouts (docs/keras.md, "Keras files"):

- Keras 3 ``save_weights("x.weights.h5")``, also the ``model.weights.h5`` inside a ``.keras``: a
  group per layer, its variables at ``<layer>/vars/0, 1, ...`` in creation order, the layer's
  path made of the model's attribute names (``layers/residual_block_3/conv2``) or, for a layer
  reached only through a list, of class-based names (``.../layers/batch_normalization_1``).
- Keras 2 / tf.keras ``save_weights("x.h5")`` and ``model.save("x.h5")`` (under
  ``model_weights``): ``layer_names`` and ``weight_names`` attributes, names like
  ``residual_block_9/conv2d_23/kernel:0``.

Either becomes the dict of Keras-named arrays that ``keras_map`` reads. Only plain (hard) links
are followed, a dataset that keeps its values outside the file is refused, and every size is
checked before anything is read.
"""
from __future__ import annotations

import h5py
import numpy as np

from ..applications.keras_files import other_layers, other_network
from ..errors import Problems, UserError

MAX_READ_BYTES = 768 * 2**20  # all tensors read: ResNet152 is 241 MB in float32 (the course network 17 MB)
MAX_ATTR_BYTES = 2**20
MAX_DEPTH, MAX_OBJECTS = 16, 20_000
# Keras 3 numbers a layer's variables; the number and ranks of them say which they are.
VARIABLES = {(4,): ("kernel",), (4, 1): ("kernel", "bias"), (2, 1): ("kernel", "bias"),
             (1, 1, 1, 1): ("gamma", "beta", "moving_mean", "moving_variance")}
KERAS2_ROOT = "model_weights"  # where model.save puts the weights in a Keras 2 .h5


class Reader:
    """One open HDF5 file, walked safely: hard links only, bounded depth and count, sizes checked."""

    def __init__(self, f: h5py.File, where: str):
        self.f, self.where, self.left, self.seen = f, where, MAX_READ_BYTES, 0

    def refuse(self, what: str):
        raise UserError(f"{self.where}: {what}")

    def child(self, group: h5py.Group, name: str, path: str):
        link = group.get(name, getlink=True)  # the link itself: where it points is not looked at
        if link is None:
            self.refuse(f"{path} is listed but not in the file")
        if not isinstance(link, h5py.HardLink):
            self.refuse(f"{path} is an HDF5 {type(link).__name__}, not a group or dataset of the file; "
                        f"links are not followed")
        self.seen += 1
        if self.seen > MAX_OBJECTS:
            self.refuse(f"more than {MAX_OBJECTS} objects; not a Keras weights file of this network")
        obj = group[name]
        if isinstance(obj, h5py.Dataset) and (obj.is_virtual or obj.external):
            self.refuse(f"dataset {path} keeps its values outside the file; not read")
        if not isinstance(obj, (h5py.Group, h5py.Dataset)):
            self.refuse(f"{path} is neither a group nor a dataset")
        return obj

    def walk(self, group, path: str = "", skip=()):
        """(path, object) for everything under ``group``, each group before what it holds."""
        if path.count("/") >= MAX_DEPTH:
            self.refuse(f"{path} is nested more than {MAX_DEPTH} deep")
        for name in group:  # the names only: no link is followed here
            if name in skip:
                continue
            p = f"{path}/{name}" if path else name
            obj = self.child(group, name, p)
            yield p, obj
            if isinstance(obj, h5py.Group):
                yield from self.walk(obj, p)

    def resolve(self, group, path: str):
        obj, parts = group, path.split("/")
        for i, name in enumerate(parts):
            if not isinstance(obj, h5py.Group):
                self.refuse(f"{group.name}/{path} is listed but not in the file")
            obj = self.child(obj, name, f"{group.name}/{'/'.join(parts[:i + 1])}")
        if not isinstance(obj, h5py.Dataset):
            self.refuse(f"{group.name}/{path} is not a dataset")
        return obj

    def read(self, dset: h5py.Dataset, path: str) -> np.ndarray:
        if dset.dtype.kind not in "fiub":  # a string or compound dataset; integers are named later
            self.refuse(f"dataset {path} has dtype {dset.dtype}, expected floating point")
        chunk = int(np.prod(dset.chunks)) if dset.chunks else 0
        nbytes = max(dset.size, chunk) * dset.dtype.itemsize
        if nbytes > self.left:
            self.refuse(f"dataset {path} of shape {dset.shape} ({dset.dtype}) is more than a supported network's "
                        f"weights can be ({MAX_READ_BYTES >> 20} MB in all); not read")
        self.left -= nbytes
        return np.asarray(dset[()])

    def check_attr(self, obj, attr: str) -> None:
        aid = obj.attrs.get_id(attr)
        if int(np.prod(aid.shape or ())) * aid.dtype.itemsize > MAX_ATTR_BYTES:
            self.refuse(f"attribute {attr} of {obj.name} is larger than {MAX_ATTR_BYTES >> 20} MB")

    def names(self, obj, attr: str) -> list[str]:
        """A list-of-names attribute, also as Keras 2 splits a long one (``attr0``, ``attr1``...)."""
        keys = [attr]
        if attr not in obj.attrs:
            keys = []
            while f"{attr}{len(keys)}" in obj.attrs:
                keys.append(f"{attr}{len(keys)}")
        out = []
        for key in keys:
            self.check_attr(obj, key)
            value = np.asarray(obj.attrs[key])
            if value.size and (value.ndim > 1 or value.dtype.kind not in "SUO"):  # Keras writes [] as floats
                self.refuse(f"attribute {key} of {obj.name} is not a list of names")
            out += [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
        return out

    def text(self, attr: str) -> str | None:
        if attr not in self.f.attrs:
            return None
        self.check_attr(self.f, attr)
        value = self.f.attrs[attr]
        return value.decode("utf8") if isinstance(value, bytes) else str(value)


def is_keras2(f: h5py.File) -> bool:
    return KERAS2_ROOT in list(f) or "layer_names" in f.attrs


def read_keras2(reader: Reader) -> dict[str, np.ndarray]:
    """{Keras 2 weight name: array}, the layers and weights in the order the file lists them."""
    root = reader.child(reader.f, KERAS2_ROOT, KERAS2_ROOT) if KERAS2_ROOT in list(reader.f) else reader.f
    arrays, problems = {}, Problems()
    for layer in reader.names(root, "layer_names"):
        group = reader.child(root, layer, layer)
        for weight in reader.names(group, "weight_names"):
            with problems.each():
                key = weight if weight.startswith(f"{layer}/") else f"{layer}/{weight}"
                if key in arrays:
                    raise UserError(f"{reader.where}: weight {key!r} is listed twice")
                arrays[key] = reader.read(reader.resolve(group, weight), f"{group.name}/{weight}")
    problems.check()
    return arrays


def read_keras3(reader: Reader):
    """({Keras name: array}, {Keras name: dataset path}, [every group]) of a Keras 3 weights file.
    A layer ``L`` with variables ``L/vars/0..n`` gives ``L/kernel`` etc.; the optimizer is skipped."""
    variables: dict[str, dict[int, tuple[h5py.Dataset, str]]] = {}
    groups, problems = [], Problems()
    for path, obj in reader.walk(reader.f, skip=("optimizer",)):
        if isinstance(obj, h5py.Group):
            groups.append(path)
            continue
        layer, _, name = path.rpartition("/")
        if not (layer == "vars" or layer.endswith("/vars")) or not name.isdigit():
            problems.add(f"{reader.where}: dataset {path} is not a layer's variable (<layer>/vars/<number>)")
            continue
        variables.setdefault(layer[:-len("vars")].rstrip("/"), {})[int(name)] = (obj, path)
    if other_layers(variables):  # say what the file holds before what does not fit
        reader.refuse(other_network({layer: None for layer in variables}))
    arrays, paths = {}, {}
    for layer, found in variables.items():
        with problems.each():
            ranks = tuple(found[n][0].ndim for n in sorted(found))
            shapes = ", ".join(str(found[n][0].shape) for n in sorted(found))
            if sorted(found) != list(range(len(found))) or ranks not in VARIABLES:
                raise UserError(f"{reader.where}: layer {layer or '(top level)'!r} holds variables "
                                f"{sorted(found)} of shapes {shapes}: not a bias-free convolution, a Dense "
                                f"or a BatchNormalization of this network")
            for n, var in enumerate(VARIABLES[ranks]):
                dset, path = found[n]
                key = f"{layer}/{var}"
                arrays[key], paths[key] = reader.read(dset, path), path
    problems.check()
    return arrays, paths, groups


def write_keras3(path, arrays: dict[str, np.ndarray], groups: list[str]) -> None:
    """A Keras 3 weights file: ``arrays`` by dataset path, and the (empty) ``groups`` besides."""
    with h5py.File(path, "w") as f:
        for group in groups:
            f.require_group(group)
        for dataset, value in arrays.items():
            f.create_dataset(dataset, data=value)
