"""What the command line adds to the library: argparse's formatting, one-line errors and exit
statuses (``cli``), SIGTERM handled as Ctrl-C, commands written so that they paste into a shell."""
from __future__ import annotations

import argparse
import ast
import functools
import os
import re
import shlex
import signal
import sys
import threading

from ..errors import UserError, first_line


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, minus the noise: no "(default: None)" or "(default: False)"
    on flags, and nothing added where the help already says "(default ...)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if no_default(action.default) or "(default " in text:
            return text
        return super()._get_help_string(action)


def no_default(value) -> bool:
    return any(value is v for v in (None, False, True, argparse.SUPPRESS))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose complaints are UserErrors: one line (not the usage block), exit 2 via @cli;
    ``--help`` shows every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if "help" not in kwargs and not no_default(kwargs.get("default")):  # argparse shows
            kwargs["help"] = "default: %(default)s"  # no default for an option without help
        return super().add_argument(*args, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


# Each script of a checkout, and its subcommand of the installed command (torch_resnet.cli).
SCRIPTS = {"convert/keras_pickle_to_pt.py": "convert", "convert/pt_to_keras_pickle.py": "export",
           "train/finetune.py": "finetune", "train/evaluate.py": "evaluate", "train/report.py": "report",
           "train/demo.py": "demo"}
RUNNING_AS = None  # "torch-resnet" while the installed command runs: printed commands name it


def shell_command(script: str, args=(), python: str = "python") -> str:
    """``python script args...`` (``torch-resnet command args...`` when run as that) as a line
    that works when pasted into a shell (``shlex.join``)."""
    head = [RUNNING_AS, SCRIPTS[script]] if RUNNING_AS else [python, script]
    return shlex.join([*head, *map(str, args)])


# The library names a parameter `name` or `name=value` and a call `tr.function(...)`, as the Python
# API spells them; the command line shows its own options and commands in their place.
PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")
CALL = re.compile(r"`tr\.(\w+)\((.*?)\)`")
CALL_SCRIPTS = {"from_keras": ("convert/keras_pickle_to_pt.py", {"out": "-o"}),
                "to_keras": ("convert/pt_to_keras_pickle.py", {"path": "-o"}),
                "finetune": ("train/finetune.py", {}), "evaluate": ("train/evaluate.py", {}),
                "report": ("train/report.py", {"out": "-o"})}


def to_shell(text: str) -> str:
    """A library message as the command line says it: `batch_size` -> --batch-size, `freeze=True`
    -> --freeze, `augment=False` -> --no-augment, `val_size=0.1` -> --val-size 0.1,
    `tr.finetune(resume=True, out='runs/x')` -> python train/finetune.py --resume --out runs/x."""
    return PARAMETER.sub(lambda m: " ".join(option_words(m.group(1), m.group(2))),
                         CALL.sub(lambda m: shell_call(m.group(1), m.group(2)), text))


def option_words(name: str, value: str | None, spelled: dict | None = None) -> list[str]:
    flag = (spelled or {}).get(name, "--" + name.replace("_", "-"))
    if value is None or value == "True":
        return [flag]
    if value == "False":
        return ["--no-" + name.replace("_", "-")]
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    return option_value(flag, value)


def shell_call(function: str, arguments: str) -> str:
    """``tr.function(args, name=value)`` as the script's command line (positional words first)."""
    script, spelled = CALL_SCRIPTS[function]
    call = ast.parse(f"f({arguments})", mode="eval").body
    words = [str(ast.literal_eval(a)) for a in call.args]
    for k in call.keywords:
        words += option_words(k.arg, ast.unparse(k.value), spelled)
    return shell_command(script, words)


def option_value(name: str, value) -> list[str]:
    """An option and its value as command-line words: ``--out=-x`` where the value starts with
    "-" (argparse takes ``--out -x`` for two options)."""
    value = str(value)
    return [f"{name}={value}"] if value.startswith("-") else [name, value]


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C (what is saved stays saved, the way to go on is said); exit 143."""


def raise_terminated(signum, frame):
    raise Terminated()


def output_closed() -> int:
    """Exit status 141 (SIGPIPE's) with the rest of the output discarded, as a shell tool does."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (captured)
        pass
    return 141


def cli(main):
    """Decorate a script's ``main``: UserError (and OS errors on user paths) -> one line, exit 2;
    Ctrl-C -> exit 130 and SIGTERM -> exit 143, each with one line saying what was kept."""

    @functools.wraps(main)
    def wrapper(argv=None, **kwargs):
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread else None
        try:
            return main(argv, **kwargs)
        except BrokenPipeError:  # the output's reader stopped early (| head): nothing to say
            return output_closed()
        except UserError as e:
            print(f"error: {' '.join(to_shell(str(e)).split())}", file=sys.stderr)  # one line, whatever it held
        except OSError as e:
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            print(f"error: {first_line(str(e.strerror or e))}{where}", file=sys.stderr)
        except KeyboardInterrupt as e:  # a KeyboardInterrupt("...") says how to go on
            what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            print(f"error: {what}{f'; {to_shell(str(e))}' if str(e) else ''}", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
        return 2

    return wrapper
