"""One exception type for every problem a user can fix; the command line turns it into a
one-line error (``cli/shell.py``), the Python API raises it as it is."""
from __future__ import annotations

import contextlib


class UserError(Exception):
    """Bad input or options: reported as one line, exit status 2, no traceback. ``more``: the
    further problems found in the same input, counted in that line (``lines()`` has them all)."""

    def __init__(self, message: str, more: list[str] | tuple = ()):
        super().__init__(message)
        self.more = list(more)

    def __str__(self):
        first = super().__str__()
        return f"{first} (and {len(self.more)} more)" if self.more else first

    def lines(self) -> list[str]:
        return [super().__str__(), *self.more]


def first_line(text: str, limit: int = 300) -> str:
    """The first line of a library's message, cut to ``limit`` characters: what reaches the user
    is one line (HDF5, zipfile and pickle messages can run over several)."""
    line = (text.strip().splitlines() or [""])[0].strip()
    return line if len(line) <= limit else line[:limit - 3] + "..."


def check_count(option: str, value) -> None:
    """The one check of a count (`epochs`, `batch_size`, ...): a whole number, at least 1."""
    if value < 1:
        raise UserError(f"{option} must be at least 1, got {value}")


class Problems:
    """Every problem of one input, reported together: check each part in ``with problems.each():``
    (a UserError there is recorded and the next part still checked), then ``problems.check()``."""

    def __init__(self):
        self.found: list[str] = []

    @contextlib.contextmanager
    def each(self):
        try:
            yield
        except UserError as e:
            self.found += e.lines()

    def add(self, message: str) -> None:
        self.found.append(message)

    def check(self) -> None:
        if self.found:
            raise UserError(self.found[0], self.found[1:])
