#!/usr/bin/env python
"""Feed damaged copies of real files to every reader a user's file reaches, and count what happens.

    python bench/fuzz.py [--cases 100000] [--workers 2] [--seed 0] [--keras-files DIR] [--keep DIR]

Seed files are made the test suite's way, in a temporary folder: a CIFAR batch, the demo's
stand-in Keras pickle, its conversion as .pt and .safetensors, a run folder's checkpoint.pt and
metrics.json (a one-epoch run), and Keras 3 / Keras 2 files written by Keras itself
(``tests/make_keras_files.py``, in a child process; or those in ``--keras-files``). Each also comes
as a tiny copy (every tensor cut to 2 per axis), so that most damage lands in the structure.

Case i takes seed i mod the number of seeds and 1 to 4 random mutations (bit flips, bytes
overwritten, truncation, a range copied elsewhere, bytes inserted or removed), seeded by
(--seed, i): a case found once is found again. It goes to the reader a user's command uses
(``convert`` for Keras files; the ``--weights`` loader for .pt/.safetensors; the CIFAR reader;
the checkpoint and metrics.json readers of --resume and report), in a worker process with what
the user would see (stderr at the file-descriptor level) captured. Outcomes: converted, refused
(one line "error: ...", exit 2), and the failures: traceback, crash (the worker died), hang (over
--timeout s), multi-line (more than one line on stderr). Failing cases are copied into --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from torch_resnet.cli.shell import ArgumentParser  # noqa: E402

FAILURES = ("traceback", "crash", "hang", "multi-line")
OUTCOMES = ("converted", "refused", *FAILURES)
INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
               b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff" * 8, b"\x01\x00\x00\x00\x00\x00\x00\x00"]


# --- the seeds -------------------------------------------------------------------------------

def shrink_h5(src, dst) -> None:
    """A copy of an HDF5 file, groups and attributes as they are, every dataset cut to 2 per axis."""
    import h5py

    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                g.require_group(name)
            else:
                g.create_dataset(name, data=obj[tuple(slice(0, 2) for _ in obj.shape)])
            for key, value in obj.attrs.items():
                g[name].attrs[key] = value
        for key, value in f.attrs.items():
            g.attrs[key] = value
        f.visititems(copy)


def shrink_keras(src, dst, work: Path) -> None:
    """A .keras archive with the same members, its model.weights.h5 shrunk."""
    with zipfile.ZipFile(src) as z:
        (work / "full.h5").write_bytes(z.read("model.weights.h5"))
        shrink_h5(work / "full.h5", work / "tiny.h5")
        with zipfile.ZipFile(dst, "w") as out:
            for name in z.namelist():
                data = (work / "tiny.h5").read_bytes() if name == "model.weights.h5" else z.read(name)
                out.writestr(name, data)


def make_seeds(folder: Path, keras_files: Path | None) -> list[tuple[str, Path]]:
    """(target, seed file) pairs, written into ``folder``."""
    import pickle

    import torch
    from torch_resnet.conversion.convert import convert_keras_file
    from torch_resnet.data.cifar import CIFAR10
    from torch_resnet.data.synthetic import write_cifar, write_stand_in_keras_pickle
    from torch_resnet.formats.safe_pickle import load_array_dict
    from torch_resnet.training import train
    from torch_resnet.training.config import TrainConfig

    root = write_cifar(folder / "data", CIFAR10, train_size=40, test_size=16)
    course = write_stand_in_keras_pickle(folder / "data", folder / "course.pkl")
    tiny = {k: v[tuple(slice(0, 2) for _ in v.shape)] for k, v in load_array_dict(course).items()}
    (folder / "tiny.pkl").write_bytes(pickle.dumps(tiny, protocol=4))
    convert_keras_file(course, folder / "course.pt")
    convert_keras_file(course, folder / "course.safetensors")
    state = torch.load(folder / "course.pt", weights_only=True)
    torch.save({k: v[tuple(slice(0, 2) for _ in v.shape)].clone() for k, v in state.items()}, folder / "tiny.pt")
    train.main(TrainConfig(weights=str(folder / "course.pt"), data_dir=str(folder / "data"), out=str(folder / "run"),
                           freeze=True, epochs=1, batch_size=8, val_size=8, seed=0, device="cpu", amp="off", download=False))
    seeds = [("cifar", root / "data_batch_1"), ("convert", course), ("convert", folder / "tiny.pkl"),
             ("weights", folder / "course.pt"), ("weights", folder / "tiny.pt"),
             ("weights", folder / "course.safetensors"), ("convert", folder / "course.safetensors"),
             ("checkpoint", folder / "run/checkpoint.pt"), ("metrics", folder / "run/metrics.json")]
    keras_files = keras_files or make_keras_files(folder / "keras")
    for src in sorted(keras_files.iterdir()) if keras_files else []:
        if src.name.endswith(".h5"):
            shrink_h5(src, folder / f"tiny_{src.name}")
        elif src.suffix == ".keras":
            shrink_keras(src, folder / f"tiny_{src.name}", folder)
        else:
            continue
        seeds.append(("convert", folder / f"tiny_{src.name}"))
        if src.name in ("k2_weights.h5", "k3_build.weights.h5"):  # full size too, a few
            seeds.append(("convert", src))
    return seeds


def make_keras_files(out: Path) -> Path | None:
    """Keras 3 and Keras 2 files written by Keras (tests/make_keras_files.py), or None without it."""
    r = subprocess.run([sys.executable, str(ROOT / "tests/make_keras_files.py"), "make", str(out)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"fuzz: no Keras files (TensorFlow missing?): {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return out


# --- the mutations ---------------------------------------------------------------------------

def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(data)
        if n == 0:
            break
        at = rng.randrange(n)
        kind = rng.randrange(6)
        if kind == 0:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # an interesting value
            value = rng.choice(INTERESTING)
            data[at:at + len(value)] = value
        elif kind == 2:  # random bytes
            data[at:at + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3:  # truncated
            del data[at:]
        elif kind == 4:  # a range copied over another
            length = rng.randint(1, min(256, n))
            start = rng.randrange(max(1, n - length))
            data[at:at + length] = data[start:start + length]
        else:  # bytes removed or inserted
            if rng.random() < 0.5:
                del data[at:at + rng.randint(1, 64)]
            else:
                data[at:at] = rng.randbytes(rng.randint(1, 64))
    return bytes(data)


# --- the worker: one process reading cases until its stdin closes ----------------------------

def targets(tmp: Path) -> dict:
    from torch_resnet.cli import convert
    from torch_resnet.data.cifar import CIFAR10, _read_batch
    from torch_resnet.cli.shell import cli
    from torch_resnet.formats.files import load_model
    from torch_resnet.training.checkpoint import checkpoint_model, read_checkpoint
    from torch_resnet.training.outputs import read_metrics

    def checkpoint(path):
        checkpoint_model(read_checkpoint(path), path)

    def command(read):
        @cli
        def main(argv):
            read(Path(argv[0]))
            return 0
        return main

    reads = {"weights": load_model, "cifar": lambda p: _read_batch(p, CIFAR10), "checkpoint": checkpoint,
             "metrics": read_metrics}
    found = {name: command(read) for name, read in reads.items()}
    found["convert"] = lambda argv: convert.main([argv[0], "-o", str(tmp / "out.pt")])
    return found


def worker() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-worker-"))
    answer = os.fdopen(os.dup(1), "w")
    err_file = open(tmp / "stderr", "w+")
    os.dup2(err_file.fileno(), 2)  # what the user would see, C libraries' writes included
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    run = targets(tmp)
    for line in sys.stdin:
        target, path = line.rstrip("\n").split("\t")
        err_file.seek(0)
        err_file.truncate()
        try:
            rc, exc = run[target]([path]), None
        except BaseException as e:  # noqa: B036 -- what escaped the command is the finding
            rc, exc = None, f"{type(e).__name__}: {e}"
        sys.stderr.flush()
        err_file.seek(0)
        answer.write(json.dumps({"rc": rc, "stderr": err_file.read()[-2000:], "exc": exc}) + "\n")
        answer.flush()


def classify(reply: dict) -> str:
    if reply["exc"] is not None:
        return "traceback"
    lines = [line for line in reply["stderr"].splitlines() if line.strip()]
    if len(lines) > 1:
        return "multi-line"
    if reply["rc"] == 0:
        return "converted"
    return "refused" if reply["rc"] == 2 and lines and lines[0].startswith("error: ") else "traceback"


# --- the supervisor --------------------------------------------------------------------------

class Worker:
    def __init__(self, folder: Path, timeout: float):
        self.folder, self.timeout, self.proc = folder, timeout, None

    def start(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=self.folder)

    def run(self, target: str, path: Path) -> tuple[str, dict]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(f"{target}\t{path}\n")
        self.proc.stdin.flush()
        reply = []
        reader = threading.Thread(target=lambda: reply.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.timeout)
        if reader.is_alive() or not reply or not reply[0]:
            hung = reader.is_alive()
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return ("hang" if hung else "crash"), {"stderr": "", "rc": None, "exc": None}
        answer = json.loads(reply[0])
        return classify(answer), answer

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def campaign(seeds, cases: int, seed: int, workers: int, timeout: float, keep: Path | None, first: int = 0,
             progress=None) -> dict:
    """Run cases first..first+cases-1 over ``seeds``; {"counts": {target: Counter}, "found": [...]}."""
    counts, found, lock = {}, [], threading.Lock()
    todo = iter(range(first, first + cases))
    contents = {path: path.read_bytes() for _, path in seeds}

    def loop(index: int):
        folder = Path(tempfile.mkdtemp(prefix=f"fuzz-{index}-"))
        w = Worker(folder, timeout)
        try:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                target, src = seeds[i % len(seeds)]
                rng = random.Random(f"{seed}:{i}")
                case = folder / f"case_{src.name}"
                case.write_bytes(mutate(contents[src], rng))
                outcome, reply = w.run(target, case)
                with lock:
                    counts.setdefault(f"{target}: {src.name}", Counter())[outcome] += 1
                    if outcome in FAILURES:
                        found.append({"case": i, "seed": src.name, "outcome": outcome, "stderr": reply["stderr"][-500:],
                                      "exc": reply["exc"]})
                        if keep is not None:
                            keep.mkdir(parents=True, exist_ok=True)
                            (keep / f"{outcome}_{i}_{src.name}").write_bytes(case.read_bytes())
                    if progress is not None:
                        progress()
        finally:
            w.stop()

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"counts": counts, "found": found}


def table(counts: dict) -> str:
    rows = [f"| {'reader: seed':<42} | " + " | ".join(OUTCOMES) + " |", "|---" * (len(OUTCOMES) + 1) + "|"]
    total = Counter()
    for name in sorted(counts):
        total.update(counts[name])
        rows.append(f"| {name:<42} | " + " | ".join(str(counts[name][o]) for o in OUTCOMES) + " |")
    rows.append(f"| {'all':<42} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1000, help="how many mutated files to try")
    p.add_argument("--first", type=int, default=0, help="the first case's number (to go on from a campaign)")
    p.add_argument("--seed", type=int, default=0, help="the random seed: the same seed, the same cases")
    p.add_argument("--workers", type=int, default=2, help="cases run side by side (one per core)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take before it counts as a hang")
    p.add_argument("--keras-files", type=Path, help="Keras files to use as seeds (default: made by Keras now)")
    p.add_argument("--keep", type=Path, default=Path("fuzz-findings"), help="where failing cases are copied")
    p.add_argument("--json", type=Path, help="write the counts and findings here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker()
        return 0
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as folder:
        seeds = make_seeds(Path(folder), args.keras_files)
        start = time.perf_counter()
        with tqdm(total=args.cases, unit="case", mininterval=5) as bar:
            result = campaign(seeds, args.cases, args.seed, args.workers, args.timeout, args.keep, args.first,
                              progress=bar.update)
        seconds = time.perf_counter() - start
    print(table(result["counts"]))
    for f in result["found"][:20]:
        print(f"{f['outcome']}: case {f['case']} ({f['seed']}): {(f['exc'] or f['stderr']).strip()[:300]}")
    bad = sum(1 for f in result["found"])
    print(f"{args.cases} cases from {len(seeds)} seeds in {seconds:.0f} s on {args.workers} workers "
          f"({args.cases / seconds:.1f} cases/s): {bad} failures")
    if args.json:
        args.json.write_text(json.dumps({**result, "seconds": seconds, "cases": args.cases}, indent=1, default=dict))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
