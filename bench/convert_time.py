#!/usr/bin/env python
"""Time the converter on Keras files, this checkout beside another (an earlier commit), as a user
runs it: the whole command, one process per conversion, the two alternating, median of --rounds.

    git worktree add /tmp/before <commit>
    python bench/convert_time.py --other /tmp/before FILE... [--rounds 5]
"""
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "convert/keras_pickle_to_pt.py"
sys.path.insert(0, str(ROOT))
from torch_resnet.cli.shell import ArgumentParser  # noqa: E402


def seconds(checkout: Path, src: Path, out: Path) -> float:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(checkout / SCRIPT), str(src), "-o", str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {checkout / SCRIPT} {src}: {r.stderr.strip()}")
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="the files to convert (each timed in both checkouts)")
    p.add_argument("--other", type=Path, required=True, help="the other checkout (its convert script is timed)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per file; the median is shown")
    args = p.parse_args(argv)
    print(f"| file | MB | {args.other.name} s | this s | this/{args.other.name} |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for src in args.files:
            times = {"other": [], "this": []}
            for _ in range(args.rounds):
                for name, checkout in (("other", args.other), ("this", ROOT)):
                    times[name].append(seconds(checkout, src, Path(tmp) / "out.pt"))
            other, this = statistics.median(times["other"]), statistics.median(times["this"])
            print(f"| {src.name} | {src.stat().st_size / 2**20:.0f} | {other:.2f} | {this:.2f} | {this / other:.2f} |")


if __name__ == "__main__":
    main()
