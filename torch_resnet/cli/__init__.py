"""``torch-resnet``, the installed command: one subcommand per step, each with the options of
its script in ``convert/`` and ``train/`` (the scripts call the same ``main``)."""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, version

from . import shell
from ..errors import UserError
from .shell import cli

# subcommand (and its module in this package): what it does; its script is shell.SCRIPTS'
WHAT = {
    "convert": "Keras weights (course pickle, .keras, .weights.h5, Keras 2 .h5) -> PyTorch (.pt, .safetensors)",
    "finetune": "fine-tune on CIFAR-10: --freeze, or the full regime",
    "evaluate": "top-1, top-5, per-class accuracy on the CIFAR test split",
    "report": "fine-tuning runs side by side: Markdown and HTML with figures",
    "export": "a state dict back to Keras (pickle or .weights.h5)",
    "demo": "the whole pipeline end to end, offline, on stand-ins where needed",
}
PROGRAM = "torch-resnet"


def usage() -> str:
    width = max(map(len, WHAT))
    lines = [f"usage: {PROGRAM} COMMAND [options]   ({PROGRAM} COMMAND --help: its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, what in WHAT.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if not argv or argv[0] in ("-h", "--help"):
        try:
            print(usage(), flush=True)
        except BrokenPipeError:
            return shell.output_closed()
        return 0
    if argv[0] == "--version":
        try:
            print(f"{PROGRAM} {version('torch_resnet')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print(f"{PROGRAM} (not installed)")
        return 0
    if argv[0] not in WHAT:
        return cli(refuse_unknown)(argv[:1])
    shell.RUNNING_AS = PROGRAM  # the commands the run prints name torch-resnet, not a script
    try:
        return run(argv[0], argv[1:], prog=f"{PROGRAM} {argv[0]}")
    finally:
        shell.RUNNING_AS = None


def run(command: str, argv=None, **kwargs) -> int:
    """Import a command's module (torch: seconds) and run its main; Ctrl-C while it imports is
    exit 130 and one line, as at any later moment, not a traceback from inside torch."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, exit_interrupted) if in_main_thread else None
    try:
        module = importlib.import_module(f".{command}", __name__)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    return module.main(argv, **kwargs)


def exit_interrupted(signum, frame):
    """Ctrl-C while importing: nothing is written yet, so stop at once. (A KeyboardInterrupt can land
    in one of importlib's callbacks, where Python prints it as "Exception ignored" and goes on.)"""
    os.write(2, b"error: interrupted\n")
    os._exit(130)


def script(command: str):
    """The ``main`` of a thin script in convert/ or train/: nothing heavy imported before it runs."""
    def main(argv=None) -> int:
        return run(command, argv)
    return main


def refuse_unknown(argv) -> int:
    raise UserError(f"{argv[0]!r} is not a command of {PROGRAM}; its commands: {', '.join(WHAT)} "
                    f"({PROGRAM} --help)")
