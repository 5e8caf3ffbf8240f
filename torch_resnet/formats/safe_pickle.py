"""Unpickle a dict of numpy arrays without ever running code from the file.

``pickle.load`` calls whatever global a pickle names. This unpickler resolves only the few
globals numpy needs to rebuild arrays; anything else is refused before it is called.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import warnings

import numpy as np

from ..errors import Problems, UserError, first_line

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


def _latin1_bytes(text, encoding="latin1"):
    """Protocol 2 pickles store bytes as latin-1 text rebuilt by ``_codecs.encode``; only that."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UserError("refusing to load: _codecs.encode called with something other than latin-1 text")
    return text.encode("latin1")


def _empty_bytes(*args):
    """Protocol 2 pickles store empty bytes as ``bytes()``; any argument (bytes(2**33)...) is refused."""
    if args:
        raise UserError("refusing to load: bytes() called with arguments")
    return b""


_REPLACED = {("_codecs", "encode"): _latin1_bytes, ("__builtin__", "bytes"): _empty_bytes,
             ("builtins", "bytes"): _empty_bytes}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _REPLACED:
            return _REPLACED[(module, name)]
        if (module, name) not in _ALLOWED:
            raise UserError(f"refusing to load: the pickle references {module}.{name}, "
                            f"which is not a numpy array (it could run code)")
        return super().find_class(module, name)


def _check_structure(data: bytes) -> None:
    """Walk the opcodes in pure Python before the C unpickler sees them.

    Two kinds of damage make ``_pickle`` itself misbehave (both found by bench/fuzz.py): a length
    far beyond the file (``BYTEARRAY8`` of 2**62 bytes: MemoryError plus a SystemError printed on
    stderr) and a memo index in the billions (``LONG_BINPUT 1058830150``: the memo table is grown
    to gigabytes, minutes of swapping). ``genops`` checks every length against the bytes left;
    a writer numbers its memo 0, 1, 2..., so an index above the opcodes read so far is damage.
    """
    try:
        with warnings.catch_warnings():  # genops decoding a damaged STRING warns "invalid escape sequence"
            warnings.simplefilter("ignore", DeprecationWarning)
            for count, (op, arg, _) in enumerate(pickletools.genops(data)):
                if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > count:
                    raise ValueError(f"memo index {arg} at opcode {count}")
    except (ValueError, OverflowError) as e:  # genops' words: "expected N bytes ... but only M remain"
        raise UserError(f"not a readable pickle, truncated or damaged ({first_line(str(e))})") from None


def text_file(data: bytes) -> str | None:
    """What a file that parses as nothing is, when it is text: "an empty file", "a web page (HTML)"
    (a download that got an error page), "a text file"; None for binary data."""
    if not data.strip():
        return "an empty file"
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not a multi-byte character cut at the end
            return None
        text = head[:e.start].decode("utf-8")
    if "\x00" in text or sum(not (c.isprintable() or c.isspace()) for c in text) > len(text) // 100:
        return None
    if text.lstrip()[:15].lower().startswith(("<!doctype html", "<html")):
        return "a web page (HTML; a download that went wrong?)"
    return "a text file"


def not_readable(path, data: bytes, what: str, detail: str) -> UserError:
    """The refusal of a file that is not ``what``: what it is instead when that is plain."""
    text = text_file(data)
    if text is not None:
        begins = first_line(data[:60].decode("utf-8", errors="replace"), 40)
        return UserError(f"{path} is {text}, not {what}" + (f" (it begins {begins!r})" if begins else ""))
    return UserError(f"{path}: not {what} ({detail})")


def safe_load(path, encoding: str = "ASCII", what: str = "a pickle"):
    """Unpickle ``path`` allowing only numpy arrays, dicts, lists and plain values.

    ``encoding="bytes"`` reads Python 2 pickles such as the CIFAR batches. ``what``: what the file
    should have been, for the message when it is plain text instead.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        _check_structure(data)
        return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UserError as e:
        if str(e).startswith("not a readable pickle") and text_file(data) is not None:
            raise not_readable(path, data, what, "") from None
        raise UserError(f"{path}: {e}") from None
    except Exception as e:  # truncated or not a pickle at all: every parser error means the same
        detail = first_line(str(e))
        raise not_readable(path, data, what if text_file(data) else "a readable pickle", f"{type(e).__name__}{': ' * bool(detail)}{detail}") from None


NEEDS_NO_CONVERSION = ("it needs no conversion: fine-tuning and evaluation take it as `weights` (the export "
                       "turns it back into Keras weights)")
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first thing pickled by torch.save's pre-1.6 format


def load_array_dict(path) -> dict[str, np.ndarray]:
    """Read ``path`` as a pickled dict from str to numpy array, refusing anything else."""
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format is a zip archive; a pickle is not
    obj = None if zipped else safe_load(path, what="Keras weights (a pickle, .keras or .h5)")
    if zipped or (isinstance(obj, int) and obj == TORCH_LEGACY_MAGIC):
        raise UserError(f"{path} is a PyTorch file (torch.save), not a Keras pickle: {NEEDS_NO_CONVERSION}")
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict of Keras variable names to arrays, got {type(obj).__name__}")
    problems = Problems()
    for key, value in obj.items():
        if not isinstance(key, str):
            problems.add(f"{path}: key {key!r} is not a string")
        elif not isinstance(value, np.ndarray):
            problems.add(f"{path}: tensor {key!r} is a {type(value).__name__}, not a numpy array")
    problems.check()
    return obj
