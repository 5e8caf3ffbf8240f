"""State dicts as safetensors files: the tensors under the state dict's keys and, in the file's
metadata, the Keras names for the way back (what a ``.pt`` keeps in its names sidecar)."""
from __future__ import annotations

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UserError

KERAS_NAMES = "keras_names"  # metadata key: the names record, as JSON text
ARCHITECTURE = "architecture"  # metadata key: which network of the family (``KerasResNet.architecture``), as JSON
MAX_HEADER = 100_000_000  # the safetensors library's own limit


def is_safetensors(path) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian) and ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= MAX_HEADER


def write(path, state: dict[str, torch.Tensor], keras_names: str | None, architecture: str | None = None) -> None:
    """``keras_names``: the names record as JSON text (``keras_names.KerasNames.text``);
    ``architecture``: the network's, as JSON text (none for the course network)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {key: text for key, text in ((KERAS_NAMES, keras_names), (ARCHITECTURE, architecture)) if text}
    save_file(tensors, str(path), metadata=metadata or None)


def read(path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{path}: not a readable safetensors file ({type(e).__name__}: {first})") from None


def metadata_text(path, key: str = KERAS_NAMES) -> str | None:
    """A record kept in the file's metadata (``KERAS_NAMES``, ``ARCHITECTURE``), as JSON text, if any."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(key)
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
