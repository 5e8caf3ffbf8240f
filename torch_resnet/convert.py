"""Keras pickle <-> PyTorch state dict, with checks and a report of what went where."""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .keras_map import (Mapping, default_keras_names, keras_to_torch_layout, keras_variable_of,
                        map_keras_names, torch_to_keras_layout)
from .model import ResidualNetwork
from .safe_pickle import load_array_dict

DEFAULT_PICKLE = Path("weights/resnet_cifar100.pkl")
DEFAULT_STATE_DICT = Path("weights/resnet_cifar100.pt")


def names_sidecar(pt_path) -> Path:
    """Where the Keras names of a converted state dict are kept, for the way back to Keras."""
    return Path(str(pt_path) + ".keras_names.json")


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename: no half-written file after a crash either
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make outputs private to their owner
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_array(key: str, array: np.ndarray) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"tensor {key!r} has dtype {array.dtype}, expected floating point")
    if not np.all(np.isfinite(array)):
        raise UserError(f"tensor {key!r} holds non-finite values (NaN or inf)")


def keras_to_state_dict(arrays: dict[str, np.ndarray], shortcut_from_raw: bool = False):
    """Map and check a dict of Keras-named arrays; returns (state dict, Mapping)."""
    mapping = map_keras_names(arrays)
    expected = ResidualNetwork(mapping.num_classes, shortcut_from_raw).state_dict()
    state = {}
    for key, tkey in mapping.pairs:  # shapes first: a huge tensor is refused before it is scanned
        value = keras_to_torch_layout(keras_variable_of(tkey), arrays[key])
        if tuple(value.shape) != tuple(expected[tkey].shape):
            raise UserError(f"tensor {key!r} has shape {arrays[key].shape}, which does not fit {tkey} "
                            f"(PyTorch shape {tuple(expected[tkey].shape)})")
    for key, tkey in mapping.pairs:
        check_array(key, arrays[key])
        value = keras_to_torch_layout(keras_variable_of(tkey), arrays[key])
        state[tkey] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    for tkey, value in expected.items():
        if tkey.endswith("num_batches_tracked"):  # PyTorch-only counter, unused with momentum set
            state[tkey] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    if missing:  # cannot happen when map_keras_names succeeded; kept as a guard on the mapping
        raise UserError(f"no Keras tensor for {missing[0]}")
    return {k: state[k] for k in expected}, mapping


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
    arrays = load_array_dict(src)
    state, mapping = keras_to_state_dict(arrays, shortcut_from_raw)
    ResidualNetwork(mapping.num_classes, shortcut_from_raw).load_state_dict(state, strict=True)
    sidecar = {"source": str(src), "num_classes": mapping.num_classes,
               "tensors": [[k, t, str(arrays[k].dtype)] for k, t in mapping.pairs]}
    atomic_write(dst, lambda tmp: torch.save(state, tmp))
    atomic_write(names_sidecar(dst), lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=1)))
    return arrays, mapping


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a state dict written by this project (weights only: no code runs) and check it fits."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a PyTorch state dict ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or "head.weight" not in state:
        raise UserError(f"{path}: not a ResidualNetwork state dict (no 'head.weight')")
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise UserError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
        if key.endswith("num_batches_tracked"):
            continue
        if not value.is_floating_point():
            raise UserError(f"{path}: {key} has dtype {value.dtype}, expected floating point")
        if not torch.isfinite(value).all():
            raise UserError(f"{path}: {key} holds non-finite values (NaN or inf)")
    if state["head.weight"].dim() != 2:
        raise UserError(f"{path}: head.weight has shape {tuple(state['head.weight'].shape)}, expected (classes, 256)")
    try:
        ResidualNetwork(state["head.weight"].shape[0]).load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: does not fit ResidualNetwork: {' '.join(str(e).split())[:300]}") from None
    return state


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
        check_array(tkey, value.numpy())
        out[key] = np.ascontiguousarray(torch_to_keras_layout(keras_variable_of(tkey), value.numpy())).astype(dtype)
    return out


def export_keras_pickle(src, dst, use_source_names: bool = True):
    """Write the state dict ``src`` as a pickle of Keras-named arrays at ``dst``, in the names of
    the pickle it came from when its sidecar is there (and wanted), else in fresh Keras 3 names.
    Returns (arrays, the sidecar used or None)."""
    if Path(dst).resolve() == Path(src).resolve():
        raise UserError(f"output {dst} is the input state dict; choose another path")
    state = load_state_dict(src)
    names = source_names(src, state) if use_source_names else None
    arrays = state_dict_to_keras(state, names)
    atomic_write(dst, lambda tmp: Path(tmp).write_bytes(pickle.dumps(arrays, protocol=4)))
    return arrays, names_sidecar(src) if names else None
