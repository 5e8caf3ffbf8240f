"""One exception type for every problem a user can fix; scripts turn it into a one-line error."""
from __future__ import annotations

import argparse
import functools
import sys


class UserError(Exception):
    """Bad input or options: reported as one line, exit status 2, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose complaints are UserErrors: one line (not the usage block), exit 2 via @cli."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def cli(main):
    """Decorate a script's ``main``: UserError (and OS errors on user paths) -> one line, exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
        except OSError as e:
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        return 2

    return wrapper
