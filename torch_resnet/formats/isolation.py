"""HDF5 and zip files from users are parsed in a child process, never in ours.

libhdf5 is C code that walks the file's own structures: on a damaged file it has crashed
(SIGSEGV) and spun forever in a loop that neither Ctrl-C nor SIGTERM stops. So the parse runs in a
fresh interpreter (``python -I``: no user site, no PYTHON* variables) that imports numpy and h5py
only (no torch: about 0.1 s to start), with a clean environment (no HDF5 plugin path, one BLAS
thread), in a session of its own (Ctrl-C reaches us, and we kill it), and with its own limits:
CPU seconds, address space (a small multiple of the weights the network can hold), no core
file, no file written. It returns plain arrays only: a JSON header, then the arrays' raw bytes,
checked here against the header. A crash, a hang or a blown limit is one ``UserError`` naming the
user's file. This contains crashes, hangs and memory blow-ups; it is not a sandbox against code
that a crafted file might run (that would take seccomp or namespaces).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError, first_line

CPU_SECONDS = 5.0  # plus CPU_SECONDS_PER_MB of the file: a good 100 MB file parses in well under a second
CPU_SECONDS_PER_MB = 0.05
WALL_FACTOR, WALL_EXTRA = 4, 30  # wall time allowed: slow disks (a mounted Drive) wait on I/O, not CPU
MEMORY_BYTES = 768 * 2**20  # address space over what the child holds after its imports,
MEMORY_PER_FILE_BYTE = 3  # and 3 bytes per byte of the file: its tensors read, copied out, inflated
HEADER_BYTES = 16 * 2**20
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from torch_resnet.formats.isolation import child_main; child_main(sys.argv[2:])")
READERS = {"hdf5": "the HDF5 reader", "zip": "the .keras (zip) reader"}


def read_isolated(path, kind: str):
    """The ``KerasFile`` in ``path`` (``kind`` "hdf5" or "zip", from its first bytes), parsed in a
    child process with limits; every way that can go wrong is one UserError."""
    from .keras_containers import KerasFile
    from .keras_h5 import MAX_READ_BYTES

    size_mb = os.path.getsize(path) / 2**20
    cpu = CPU_SECONDS + CPU_SECONDS_PER_MB * size_mb
    wall = WALL_FACTOR * cpu + WALL_EXTRA
    env = {key: os.environ[key] for key in ("PATH", "LD_LIBRARY_PATH", "SYSTEMROOT") if key in os.environ}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               HDF5_USE_FILE_LOCKING="FALSE")
    proc = subprocess.Popen([sys.executable, "-I", "-c", CHILD, PACKAGE_ROOT, os.fspath(path), kind, str(cpu),
                             str(MEMORY_BYTES + MEMORY_PER_FILE_BYTE * int(size_mb * 2**20))], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    damaged = f"{path}: not a readable Keras file, truncated or damaged"
    try:
        out, _ = proc.communicate(timeout=wall)
    except subprocess.TimeoutExpired:
        raise UserError(f"{damaged} ({READERS[kind]} took over {wall:.0f} s; stopped)") from None
    finally:  # also on Ctrl-C: the child is in its own session and gets no SIGINT of its own
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if -proc.returncode in (getattr(signal, "SIGXCPU", None), getattr(signal, "SIGKILL", None)):
        raise UserError(f"{damaged} ({READERS[kind]} took over {cpu:.0f} s of CPU; stopped)")
    if proc.returncode < 0:
        raise UserError(f"{damaged} ({READERS[kind]} crashed: {signal.Signals(-proc.returncode).name})")
    try:
        header, arrays = _decode(out, MAX_READ_BYTES)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{damaged} ({READERS[kind]} gave a malformed answer: {first_line(str(e))})") from None
    if header is None:
        raise UserError(f"{damaged} ({READERS[kind]} stopped with status {proc.returncode} and no answer)")
    if "error" in header:
        lines = [first_line(str(line)) for line in header["error"]] or [damaged]
        raise UserError(lines[0], lines[1:])
    return KerasFile(str(header["kind"]), arrays, dict(header["h5_paths"]), list(header["h5_groups"]),
                     header["num_classes"], header.get("description"))


def _decode(out: bytes, max_bytes: int):
    """(header, {name: array}) from the child's answer, every size checked (ValueError if one is
    wrong); (None, {}) if there is no answer."""
    newline = out.find(b"\n", 0, HEADER_BYTES)
    if newline < 0:
        return None, {}
    header = json.loads(out[:newline])
    arrays, offset = {}, newline + 1
    for name, dtype, shape in header.get("arrays", []):
        dtype = np.dtype(dtype)
        if dtype.kind not in "fiub" or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"array {name} of dtype {dtype}")
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dtype.itemsize > len(out) or offset + count * dtype.itemsize - newline > max_bytes:
            raise ValueError(f"array {name} runs past the answer")
        arrays[str(name)] = np.frombuffer(out, dtype, count, offset).reshape(shape).copy()
        offset += count * dtype.itemsize
    return header, arrays


def child_main(argv) -> None:
    """In the child: parse one file, write the header line and the arrays to stdout, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the parent decides when to stop us
    path, kind, cpu, memory = argv[0], argv[1], float(argv[2]), int(argv[3])
    import h5py

    from .keras_containers import read_h5, read_zip

    while h5py.h5pl.size():  # no HDF5 filter plugin (a shared library) is loaded for a file's sake
        h5py.h5pl.remove(0)
    _limit(cpu, memory)
    try:
        result = read_h5(h5py.File(path, "r", locking=False), path) if kind == "hdf5" else read_zip(path)
        arrays = {k: np.ascontiguousarray(v) for k, v in result.arrays.items()}
        header = {"kind": result.kind, "h5_paths": result.h5_paths, "h5_groups": result.h5_groups,
                  "num_classes": result.num_classes, "description": result.description,
                  "arrays": [[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()]}
    except UserError as e:
        header, arrays = {"error": e.lines()}, {}
    except MemoryError:
        header, arrays = {"error": [f"{path}: not a readable Keras file: reading it needed more than "
                                    f"{memory >> 20} MB (damaged sizes?)"]}, {}
    except Exception as e:  # any parser failure on a damaged file
        header, arrays = {"error": [f"{path}: not a readable Keras file, truncated or damaged "
                                    f"({type(e).__name__}: {first_line(str(e))})"]}, {}
    out = sys.stdout.buffer
    out.write(json.dumps(header).encode() + b"\n")
    for value in arrays.values():
        out.write(value.data)
    out.flush()


def _limit(cpu: float, memory: int) -> None:
    try:
        import resource
    except ImportError:  # Windows: the wall-time limit still holds
        return
    soft = max(1, int(cpu + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 2))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # it writes no file
    try:
        with open("/proc/self/statm") as f:
            held = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (held + memory, held + memory))
    except (OSError, ValueError):  # no /proc (macOS), or a limit the system refuses
        pass
