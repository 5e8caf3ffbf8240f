"""State dicts as safetensors files: the tensors under the state dict's keys and, in the file's
metadata, the Keras names for the way back (what a ``.pt`` keeps in its names sidecar)."""
from __future__ import annotations

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UserError

KERAS_NAMES = "keras_names"  # metadata key: the names record, as JSON text
MAX_HEADER = 100_000_000  # the safetensors library's own limit


def is_safetensors(path) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian) and ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= MAX_HEADER


def write(path, state: dict[str, torch.Tensor], keras_names: str | None) -> None:
    """``keras_names``: the names record as JSON text (``keras_names.KerasNames.text``)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={KERAS_NAMES: keras_names} if keras_names else None)


def read(path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{path}: not a readable safetensors file ({type(e).__name__}: {first})") from None


def keras_names_text(path) -> str | None:
    """The names record kept in the file's metadata, as JSON text, if any."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(KERAS_NAMES)
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
