"""Keras weights (any file Keras saves, ``keras_files``) <-> PyTorch state dict (``.pt`` or
``.safetensors``), with checks, a report of what went where, and the names for the way back."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import Problems, UserError
from ..formats.files import atomic_write, load_model, save_model
from ..formats.keras_containers import KerasFile
from ..formats.keras_files import read_keras_file
from ..formats.keras_names import NAMES_HINT, KerasNames, names_sidecar
from ..formats.keras_h5 import write_keras3
from .keras_map import (TO_KERAS_AXES, TO_TORCH_AXES, Mapping, default_keras_names, keras3_h5_layout,
                        map_keras_names, relayout)
from ..applications.keras_files import is_family, other_network
from ..applications.keras_names import keras_path
from ..applications.resnet import KerasResNet
from ..model import BLOCKS, ResidualNetwork
from .applications import family_to_keras, recognised_model


def checked_cast(key: str, array: np.ndarray, dtype) -> np.ndarray:
    """``array`` as a contiguous ``dtype`` array; refuses non-float values and non-finite ones,
    also those that only the cast makes infinite (1e300 in float64 is inf in float32)."""
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"tensor {key!r} has dtype {array.dtype}, expected floating point")
    if not np.all(np.isfinite(array)):
        raise UserError(f"tensor {key!r} holds non-finite values (NaN or inf)")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(array, dtype=dtype)
    if not np.all(np.isfinite(out)):
        raise UserError(f"tensor {key!r} holds values too large for {np.dtype(dtype)}")
    return out


def keras_to_state_dict(arrays: dict[str, np.ndarray], shortcut_from_raw: bool = False):
    """Map and check a dict of Keras-named arrays; returns (state dict, Mapping)."""
    model, mapping = network_of(arrays, shortcut_from_raw)
    return model.state_dict(), mapping


def network_of(arrays: dict[str, np.ndarray], shortcut_from_raw: bool = False) -> tuple[ResidualNetwork, Mapping]:
    """The network holding a dict of Keras-named arrays, mapped and checked (``fill``), and the Mapping."""
    mapping = map_keras_names(arrays)
    if mapping.num_classes < 1:
        raise UserError("the Dense layer has no outputs (0 classes)")
    # The one model of the conversion: its state dict shares its tensors, the values go straight in.
    model = ResidualNetwork(mapping.num_classes, shortcut_from_raw)
    state = model.state_dict()
    filled = {t for _, t in mapping.pairs}
    missing = [k for k in state if k not in filled and not k.endswith("num_batches_tracked")]
    if missing:  # cannot happen when map_keras_names succeeded; kept as a guard on the mapping
        raise UserError(f"no Keras tensor for {missing[0]}")
    fill(state, arrays, mapping.pairs)
    return model, mapping


def fill(state: dict, arrays: dict[str, np.ndarray], pairs) -> None:
    """Copy each Keras array into its state-dict tensor (``pairs``: (Keras key, torch key)), in
    PyTorch's layout and float32. Every problem is reported: first the shapes (a huge tensor is
    refused before it is scanned), then the values."""
    problems = Problems()
    for key, tkey in pairs:
        if relayout(arrays[key], TO_TORCH_AXES).shape != state[tkey].shape:
            problems.add(f"tensor {key!r} has shape {arrays[key].shape}, which does not fit {tkey} "
                         f"(PyTorch shape {tuple(state[tkey].shape)})")
    problems.check()
    for key, tkey in pairs:
        with problems.each():
            value = checked_cast(key, relayout(arrays[key], TO_TORCH_AXES), np.float32)
            if tkey.endswith("running_var") and (value < 0).any():
                raise UserError(f"tensor {key!r} is a BatchNorm moving variance with negative values")
            state[tkey].copy_(torch.from_numpy(value))
    problems.check()


def format_report(arrays, mapping: Mapping) -> str:
    """Every Keras tensor with its shape and the PyTorch tensor it went to, one per line."""
    return "\n".join(f"{k}  {tuple(arrays[k].shape)}  ->  {t}" for k, t in mapping.pairs)


def keras_to_model(keras: KerasFile, source, shortcut_from_raw: bool = False) -> tuple[nn.Module, Mapping]:
    """The network of a Keras file read by ``read_keras_file`` (``source``: its path, for messages):
    a ``keras.applications`` ResNet (``applications.recognised_model``) or the course's network,
    carrying the Keras names of its tensors for the way back; and the Mapping (the report). A file
    of another network is refused, saying what it holds."""
    if is_family(keras.arrays) or keras.description is not None:
        return recognised_model(keras, source)
    if not looks_like_course(keras.arrays):
        raise UserError(f"{source}: {other_network(keras.arrays)}")
    model, mapping = network_of(keras.arrays, shortcut_from_raw)
    if keras.num_classes is not None and keras.num_classes != mapping.num_classes:
        raise UserError(f"{source}: its model description has {keras.num_classes} classes, its weights {mapping.num_classes}")
    names = {"source": str(source), "format": keras.kind, "num_classes": mapping.num_classes,
             "tensors": [[k, t, str(keras.arrays[k].dtype)] for k, t in mapping.pairs]}
    if keras.h5_paths:  # a Keras 3 file: its own structure, for writing the weights back into it
        names["keras3_h5"] = {"tensors": [[keras.h5_paths[k], t, str(keras.arrays[k].dtype)] for k, t in mapping.pairs],
                              "groups": keras.h5_groups}
    model.keras_names = KerasNames.of(names, f"the Keras names of {source}")
    return model, mapping


def looks_like_course(arrays) -> bool:
    """Whether the arrays are the course network's, some perhaps damaged: bias-free convolutions,
    most of them of its shapes (another network is refused as such, the course's in detail)."""
    shapes = {(3, 3, 3, BLOCKS[0][0])} | {s for cin, cout, _ in BLOCKS
                                          for s in ((3, 3, cin, cout), (3, 3, cout, cout), (1, 1, cin, cout))}
    kernels = [key for key, a in arrays.items() if getattr(a, "ndim", 0) == 4]
    paths = {keras_path(key) for key in arrays}
    biased = any(keras_path(k).rsplit("/", 1)[0] + "/bias" in paths for k in kernels)
    return not biased and 2 * sum(arrays[k].shape in shapes for k in kernels) > len(kernels)


def convert_keras_file(src, dst, shortcut_from_raw: bool = False):
    """Convert the Keras weights in ``src`` (a pickle, ``.keras``, ``.weights.h5`` or Keras 2 ``.h5``,
    told apart by content) into a state dict at ``dst`` (``save_model``: ``.safetensors`` or ``.pt``,
    the Keras names kept). Returns (Keras-named arrays, Mapping)."""
    keras = read_keras_file(src)  # first: a .pt given here is named as such, whatever the output path
    dst = Path(dst)
    if Path(src).resolve() in (dst.resolve(), names_sidecar(dst).resolve()):
        raise UserError(f"output {dst} (or its names file) is the input {src}; choose another path")
    model, mapping = keras_to_model(keras, src, shortcut_from_raw)
    save_model(model, dst)
    return keras.arrays, mapping


convert_pickle = convert_keras_file  # the name the demo, the API and the tests know


def checked_names(triples, state, where: str) -> list[tuple[str, str, str]]:
    """(Keras name, torch key, dtype) triples from a names record, checked against ``state``."""
    try:
        names = [tuple(t) for t in triples]
        ok = all(len(t) == 3 and all(isinstance(s, str) for s in t) and np.issubdtype(np.dtype(t[2]), np.floating)
                 for t in names)
    except (ValueError, KeyError, TypeError):  # not a list, not triples, unknown dtype
        ok = False
    if not ok:
        raise UserError(f"{where}: not a Keras names file written by the converter; {NAMES_HINT}")
    wanted = sorted(t for _, t in default_keras_names(state["head.weight"].shape[0]))
    if sorted(t for _, t, _ in names) != wanted or len({k for k, _, _ in names}) != len(names):
        raise UserError(f"{where}: its Keras names do not match the tensors of the weights one to one; {NAMES_HINT}")
    return names


def state_dict_to_keras(state: dict[str, torch.Tensor], names: list[tuple[str, str, str]] | None = None):
    """The inverse conversion: a dict of Keras-named numpy arrays, in ``names``' order and dtypes
    (Keras name, torch key, dtype) or, without them, in fresh Keras 3 naming as float32
    (``default_keras_names``: the paths of ``keras_model.build(num_classes)`` in a new session).
    Refuses what the converter would refuse on the way back."""
    if names is None:
        names = [(k, t, "float32") for k, t in default_keras_names(state["head.weight"].shape[0])]
    out = {}
    for key, tkey, dtype in names:
        if tkey not in state:
            raise UserError(f"state dict lacks {tkey} (for Keras tensor {key!r})")
        value = state[tkey].detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            value = value.float()
        out[key] = checked_cast(tkey, relayout(value.numpy(), TO_KERAS_AXES), dtype)
        if tkey.endswith("running_var") and (out[key] < 0).any():
            raise UserError(f"{tkey} is a BatchNorm running variance with negative values")
    return out


def check_keras_output(dst) -> bool:
    """Whether ``dst`` is a Keras 3 weights file (else a pickle); refuses names Keras would misread."""
    dst = Path(dst)
    h5 = dst.name.endswith(".weights.h5")
    if not h5 and dst.suffix in (".h5", ".keras"):
        raise UserError(f"output {dst}: Keras weights are written as NAME.weights.h5 (Keras 3 model.load_weights "
                        f"reads them) or as a pickle of arrays (any other name)")
    return h5


def model_to_keras(model: ResidualNetwork, h5: bool, use_source_names: bool = True):
    """The network's tensors as Keras-named arrays: (arrays, the Keras 3 file's groups (``h5``) or None,
    where the names came from or None). The names the network carries (``model.keras_names``) unless
    ``use_source_names`` is False, else fresh Keras 3 names (``keras_model.build``'s)."""
    if isinstance(model, KerasResNet):
        return family_to_keras(model, h5, use_source_names)
    state = model.state_dict()
    names_of = model.keras_names if use_source_names else None
    record, where = (names_of.record(), names_of.where) if names_of is not None else (None, None)
    groups = None
    if h5:
        layout = (record or {}).get("keras3_h5")
        if layout is None:  # no Keras 3 file behind the weights
            pairs, groups = keras3_h5_layout(state["head.weight"].shape[0])
            names, where = [(p, t, "float32") for p, t in pairs], None
        elif isinstance(layout, dict) and isinstance(layout.get("groups"), list) and \
                all(isinstance(g, str) for g in layout["groups"]):
            names, groups = checked_names(layout.get("tensors"), state, where), layout["groups"]
        else:
            raise UserError(f"{where}: not a Keras names file written by the converter; {NAMES_HINT}")
    else:
        names = checked_names(record.get("tensors"), state, where) if record else None
        where = where if record else None
    return state_dict_to_keras(state, names), groups, where


def write_keras_arrays(dst, arrays: dict, groups: list | None) -> None:
    """A Keras 3 weights file (``groups`` given) or a pickle of the arrays, written atomically."""
    if groups is not None:
        atomic_write(dst, lambda tmp: write_keras3(tmp, arrays, groups))
    else:
        atomic_write(dst, lambda tmp: Path(tmp).write_bytes(pickle.dumps(arrays, protocol=4)))


def export_keras_file(src, dst, use_source_names: bool = True):
    """Write the state dict (``.pt`` or ``.safetensors``) ``src`` as Keras weights at ``dst``: a
    Keras 3 weights file for a name ending in ``.weights.h5`` (the structure of the Keras 3 file the
    weights came from, else of ``keras_model.build``), else a pickle of Keras-named arrays (the names
    of the file they came from, else fresh Keras 3 names). Returns (arrays, where the names came
    from, or None, the Keras model the fresh names are of)."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() in (src.resolve(), names_sidecar(src).resolve()):
        raise UserError(f"output {dst} is the input state dict or its names file; choose another path")
    h5 = check_keras_output(dst)
    model = load_model(src)
    arrays, groups, where = model_to_keras(model, h5, use_source_names)
    write_keras_arrays(dst, arrays, groups)
    fresh = f"keras.applications.{model.spec.name}" if isinstance(model, KerasResNet) else "keras_model.build"
    return arrays, where, fresh


