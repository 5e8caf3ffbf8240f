"""Keras pickle <-> PyTorch state dict, with checks and a report of what went where."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import Problems, UserError
from .files import atomic_write, load_model, names_sidecar
from .keras_map import TO_KERAS_AXES, TO_TORCH_AXES, Mapping, default_keras_names, map_keras_names, relayout
from .model import ResidualNetwork
from .safe_pickle import load_array_dict


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
    """Map and check a dict of Keras-named arrays; returns (state dict, Mapping). Every problem
    is reported: first the shapes (a huge tensor is refused before it is scanned), then values."""
    mapping = map_keras_names(arrays)
    if mapping.num_classes < 1:
        raise UserError("the Dense layer has no outputs (0 classes)")
    # The one model of the conversion: its state dict shares its tensors, the values go straight in.
    state = ResidualNetwork(mapping.num_classes, shortcut_from_raw).state_dict()
    filled = {t for _, t in mapping.pairs}
    missing = [k for k in state if k not in filled and not k.endswith("num_batches_tracked")]
    if missing:  # cannot happen when map_keras_names succeeded; kept as a guard on the mapping
        raise UserError(f"no Keras tensor for {missing[0]}")
    problems = Problems()
    for key, tkey in mapping.pairs:
        if relayout(arrays[key], TO_TORCH_AXES).shape != state[tkey].shape:
            problems.add(f"tensor {key!r} has shape {arrays[key].shape}, which does not fit {tkey} "
                         f"(PyTorch shape {tuple(state[tkey].shape)})")
    problems.check()
    for key, tkey in mapping.pairs:
        with problems.each():
            value = checked_cast(key, relayout(arrays[key], TO_TORCH_AXES), np.float32)
            if tkey.endswith("running_var") and (value < 0).any():
                raise UserError(f"tensor {key!r} is a BatchNorm moving variance with negative values")
            state[tkey].copy_(torch.from_numpy(value))
    problems.check()
    return state, mapping


def format_report(arrays, mapping: Mapping, verbose: bool = False) -> str:
    """Verbose: every tensor with shapes. Otherwise one line per layer."""
    if verbose:
        return "\n".join(f"{k}  {tuple(arrays[k].shape)}  ->  {t}" for k, t in mapping.pairs)
    layers = {}
    for k, t in mapping.pairs:
        layers.setdefault(k.rsplit("/", 1)[0].rsplit(":", 1)[0], t.rsplit(".", 1)[0])
    return "\n".join(f"{k}  ->  {t}" for k, t in layers.items())


def convert_pickle(src, dst, shortcut_from_raw: bool = False):
    """Convert the Keras pickle ``src`` into a state dict at ``dst`` (and its names sidecar)."""
    arrays = load_array_dict(src)  # first: a .pt given here is named as such, whatever the output path
    if Path(src).resolve() in (Path(dst).resolve(), names_sidecar(dst).resolve()):
        raise UserError(f"output {dst} (or its names file) is the input {src}; choose another path")
    state, mapping = keras_to_state_dict(arrays, shortcut_from_raw)
    sidecar = {"source": str(src), "num_classes": mapping.num_classes,
               "tensors": [[k, t, str(arrays[k].dtype)] for k, t in mapping.pairs]}

    def write(tmp):  # the names file first, inside the weights' write: a failure leaves neither
        torch.save(state, tmp)
        atomic_write(names_sidecar(dst), lambda tmp2: Path(tmp2).write_text(json.dumps(sidecar, indent=1)))

    atomic_write(dst, write)
    return arrays, mapping


def source_names(pt_path, state) -> list[tuple[str, str, str]] | None:
    """The (Keras name, torch key, dtype) triples of the pickle the weights at ``pt_path`` came
    from, read from its names sidecar and checked against ``state``; None without a sidecar."""
    sidecar = names_sidecar(pt_path)
    if not sidecar.is_file():
        return None
    hint = "pass --keras3-names to ignore it"
    try:
        names = [tuple(t) for t in json.loads(sidecar.read_text())["tensors"]]
        ok = all(len(t) == 3 and all(isinstance(s, str) for s in t) and np.issubdtype(np.dtype(t[2]), np.floating)
                 for t in names)
    except (ValueError, KeyError, TypeError):  # bad JSON, no "tensors", not triples, unknown dtype
        ok = False
    if not ok:
        raise UserError(f"{sidecar}: not a Keras names file written by the converter; {hint}")
    wanted = sorted(t for _, t in default_keras_names(state["head.weight"].shape[0]))
    if sorted(t for _, t, _ in names) != wanted or len({k for k, _, _ in names}) != len(names):
        raise UserError(f"{sidecar}: its Keras names do not match the tensors of {pt_path} one to one; {hint}")
    return names


def state_dict_to_keras(state: dict[str, torch.Tensor], names: list[tuple[str, str, str]] | None = None):
    """The inverse conversion: a dict of Keras-named numpy arrays, in ``names``' order and dtypes
    (Keras name, torch key, dtype) or, without them, in fresh Keras 3 naming as float32
    (``default_keras_names``: the paths of ``keras_model.build(num_classes)`` in a new session)."""
    num_classes = state["head.weight"].shape[0]
    if names is None:
        names = [(k, t, "float32") for k, t in default_keras_names(num_classes)]
    out = {}
    for key, tkey, dtype in names:
        if tkey not in state:
            raise UserError(f"state dict lacks {tkey} (for Keras tensor {key!r})")
        value = state[tkey].detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            value = value.float()
        out[key] = checked_cast(tkey, relayout(value.numpy(), TO_KERAS_AXES), dtype)
    return out


def export_keras_pickle(src, dst, use_source_names: bool = True):
    """Write the state dict ``src`` as a pickle of Keras-named arrays at ``dst``, in the names of
    the pickle it came from when its sidecar is there (and wanted), else in fresh Keras 3 names.
    Returns (arrays, the sidecar used or None)."""
    if Path(dst).resolve() in (Path(src).resolve(), names_sidecar(src).resolve()):
        raise UserError(f"output {dst} is the input state dict or its names file; choose another path")
    state = load_model(src).state_dict()
    names = source_names(src, state) if use_source_names else None
    arrays = state_dict_to_keras(state, names)
    atomic_write(dst, lambda tmp: Path(tmp).write_bytes(pickle.dumps(arrays, protocol=4)))
    return arrays, names_sidecar(src) if names else None
