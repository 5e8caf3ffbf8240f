"""The project's files: where they are by default, written atomically, weights read safely."""
from __future__ import annotations

import glob
import json
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from . import safetensors_io
from .keras_names import names_sidecar, read_names
from .safe_pickle import not_readable
from ..errors import UserError, first_line
from ..model import ResidualNetwork

DEFAULT_PICKLE = Path("weights/resnet_cifar100.pkl")
DEFAULT_STATE_DICT = Path("weights/resnet_cifar100.pt")


def atomic_write(path, write, before_replace=None) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file,
    and a failed write (disk full, read-only, over quota) is one UserError, the earlier file kept.
    A temporary file left by a killed earlier write of ``path`` is removed first.
    ``before_replace()``: called once the new file is whole on disk, just before the rename."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(glob.escape(f".{path.name}.") + "*.tmp"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename: no half-written file after a crash either
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make outputs private to their owner
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = os_error_in(e)
        if cause is not None:  # name the user's path, not the temporary file
            raise UserError(f"cannot write {path}: {cause.strerror or cause}") from None
        if isinstance(e, RuntimeError) and "inline_container" in str(e):  # torch.save to a path: no errno
            raise UserError(f"cannot write {path}: the write stopped short (disk full or over quota?)") from None
        raise


def os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: itself, or the one torch.save met writing to a file object (it
    raises a RuntimeError "unexpected pos ..." from it). Not for a UserError or an interrupt."""
    if isinstance(e, UserError) or not isinstance(e, Exception):
        return None
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def save_torch(obj, path, before_replace=None) -> None:
    """``torch.save`` of ``obj`` to ``path``, atomically (``atomic_write``); written through a
    Python file object so that a full disk is reported as one (torch.save to a path hides the
    OSError)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write, before_replace)


def is_run_folder(folder) -> bool:
    """Whether ``folder`` holds a fine-tuning run (what train/finetune.py writes)."""
    return any((Path(folder) / name).exists() for name in ("checkpoint.pt", "metrics.json"))


def refuse_run_folder(folder, option: str) -> None:
    """Only the trainer writes into a run folder: any other tool's output there is refused."""
    if is_run_folder(folder):
        raise UserError(f"{option} {folder} is a fine-tuning run's folder; only train/finetune.py writes there "
                        f"(its files are the run's record): choose another folder")


def missing_weights(path) -> UserError:
    """A weights file that is not there; the default one is made by converting the course pickle."""
    hint = (f": convert the course pickle first (`tr.from_keras({str(DEFAULT_PICKLE)!r}, out={str(path)!r})`)"
            if Path(path) == DEFAULT_STATE_DICT else "")
    return UserError(f"weights file {path} not found{hint}")


def load_model(path, shortcut_from_raw: bool = False) -> nn.Module:
    """The network in a state dict written by this project (weights only: no code runs): the
    course's ResidualNetwork, its head as wide as the file's, or the ``KerasResNet`` its
    architecture record describes; every tensor checked before it is used."""
    path = Path(path)
    if not path.is_file():
        raise missing_weights(path)
    try:
        with warnings.catch_warnings():  # torch's own complaints about a damaged file: the verdict
            warnings.simplefilter("ignore", UserWarning)  # below is the one line the user needs
            state = (safetensors_io.read(path) if safetensors_io.is_safetensors(path)
                     else torch.load(path, map_location="cpu", weights_only=True))
    except UserError:
        raise
    except Exception as e:  # a user's file: whatever the reader meets in it, it is not a state dict
        keras_pickle(path)
        first = (str(e).splitlines() or [""])[0].split(". ")[0]  # torch's advice to load unsafely is left out
        with open(path, "rb") as f:
            head = f.read(4096)
        raise not_readable(path, head, "a PyTorch state dict (.pt or .safetensors)",
                           f"{type(e).__name__}: {first}") from e
    architecture = architecture_text(path, state)
    if not isinstance(state, dict) or architecture is None and "head.weight" not in state:
        raise UserError(f"{path}: not a ResidualNetwork state dict (no 'head.weight')")
    check_tensors(state, path)
    model = model_for(state, architecture, path, shortcut_from_raw)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: does not fit {type(model).__name__}: {' '.join(str(e).split())[:300]}") from None
    model.keras_names = read_names(path)
    return model


def architecture_text(path, state) -> str | None:
    """The architecture record kept with a state dict: a safetensors file's metadata, or the
    root entry of a ``.pt`` state dict's own ``_metadata`` (where torch keeps module versions)."""
    if safetensors_io.is_safetensors(path):
        return safetensors_io.metadata_text(path, safetensors_io.ARCHITECTURE)
    root = getattr(state, "_metadata", {}).get("", {})
    return root.get(safetensors_io.ARCHITECTURE) if isinstance(root, dict) else None


def model_for(state: dict, architecture: str | None, path, shortcut_from_raw: bool) -> nn.Module:
    """An empty network of the state dict's architecture (the course network without a record)."""
    if architecture is not None:
        from ..applications.resnet import from_architecture
        try:
            return from_architecture(json.loads(architecture))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise UserError(f"{path}: its architecture record is not one this project writes "
                            f"({type(e).__name__}: {first_line(str(e))})") from None
    if state["head.weight"].dim() != 2 or state["head.weight"].shape[0] < 1:
        raise UserError(f"{path}: head.weight has shape {tuple(state['head.weight'].shape)}, expected (classes, 256)")
    return ResidualNetwork(state["head.weight"].shape[0], shortcut_from_raw)


def check_tensors(state: dict, path) -> None:
    """Every entry a dense floating-point tensor of finite values (counters aside)."""
    for key, value in state.items():
        if not isinstance(key, str):
            raise UserError(f"{path}: key {key!r} is not a parameter name")
        if not torch.is_tensor(value):
            raise UserError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
        if value.is_meta or value.layout != torch.strided:
            raise UserError(f"{path}: {key} is not a dense tensor with values ({value.layout}, {value.device})")
        if key.endswith("num_batches_tracked"):
            continue
        if not value.is_floating_point():
            raise UserError(f"{path}: {key} has dtype {value.dtype}, expected floating point")
        if not torch.isfinite(value.float()).all():  # the model is float32: 1e300 in float64 would be inf
            raise UserError(f"{path}: {key} holds non-finite values (NaN or inf) or values too large for float32")


def save_model(model: nn.Module, path) -> None:
    """``model``'s state dict at ``path`` with its Keras names (and a ``KerasResNet``'s architecture):
    a ``.safetensors`` file (both in its metadata) for that suffix, else ``torch.save``'s format, the
    architecture in the state dict's ``_metadata`` and the names in ``NAME.keras_names.json`` (an
    earlier file's names removed when the model has none). Atomic: a failure leaves neither file."""
    path = Path(path)
    state = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in model.state_dict().items())
    names = model.keras_names.text if model.keras_names is not None else None
    architecture = json.dumps(model.architecture) if hasattr(model, "architecture") else None
    if path.suffix == ".safetensors":
        atomic_write(path, lambda tmp: safetensors_io.write(tmp, state, names, architecture))
        return
    if architecture is not None:
        state._metadata = OrderedDict({"": {safetensors_io.ARCHITECTURE: architecture}})
    sidecar = names_sidecar(path)

    def names_then_weights():  # the names once the weights are whole on disk, just before their rename
        if names is None:
            sidecar.unlink(missing_ok=True)
        else:
            atomic_write(sidecar, lambda tmp: Path(tmp).write_text(names))

    save_torch(state, path, names_then_weights)


def keras_pickle(path) -> None:
    """Refuse, saying which script takes it, Keras weights where a state dict belongs."""
    from .keras_files import converted_name, keras_kind

    kind = keras_kind(path)
    if kind is None:
        return  # not Keras weights either: the caller says what it is not
    raise UserError(f"{path} is {kind}, not a PyTorch state dict: convert it first with "
                    f"`tr.from_keras({str(path)!r}, out={str(converted_name(path))!r})`")
