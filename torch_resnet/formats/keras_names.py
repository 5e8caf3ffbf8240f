"""The Keras names of a network converted from Keras, kept with it for the way back.

The converter records, for every tensor, the Keras name it came from, the PyTorch key it went to
and its Keras dtype (for a Keras 3 file also the file's own HDF5 paths and groups). The record
travels with the network: ``model.keras_names`` in memory, ``NAME.pt.keras_names.json`` beside a
``.pt``, the metadata of a ``.safetensors``, the ``keras_names`` entry of a checkpoint. It is
read as text and checked where it is used (the export), so a damaged record never stops a run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import safetensors_io

NAMES_HINT = "pass `keras3_names=True` to ignore it"


def names_sidecar(pt_path) -> Path:
    """Where the Keras names of a ``.pt`` state dict are kept."""
    return Path(str(pt_path) + ".keras_names.json")


@dataclass(frozen=True)
class KerasNames:
    text: str  # the record as JSON, as the converter wrote it
    where: str  # where it was read, for messages

    @classmethod
    def of(cls, record: dict, where: str) -> KerasNames:
        return cls(json.dumps(record, indent=1), where)

    def record(self) -> dict:
        """The record, checked to be one (its tensors are checked against the weights by the export)."""
        try:
            record = json.loads(self.text)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise UserError(f"{self.where}: not a Keras names file written by the converter; {NAMES_HINT}")
        return record


def read_names(weights) -> KerasNames | None:
    """The Keras names kept with the weights file ``weights`` (its sidecar, or a safetensors file's
    metadata), if any."""
    if safetensors_io.is_safetensors(weights):
        text = safetensors_io.metadata_text(weights)
        return None if text is None else KerasNames(text, f"{weights} (its metadata)")
    sidecar = names_sidecar(weights)
    if not sidecar.is_file():
        return None
    try:
        return KerasNames(sidecar.read_text(), str(sidecar))
    except (OSError, UnicodeDecodeError) as e:  # said where the names are used, not where they are not
        return KerasNames("", f"{sidecar} (unreadable: {e})")
