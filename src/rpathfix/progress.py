"""Progress of long work (unpacking large wheels, reading big trees), on stderr and only
when stderr is a terminal: a log or a pipe gets nothing, so output stays deterministic.

One line, rewritten in place, erased when the work ends.
"""

from __future__ import annotations

import sys

from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TextIO


class Progress:
    __slots__ = ("on", "shown", "stream")

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.on = self.stream.isatty()
        except (AttributeError, ValueError, OSError):
            self.on = False
        self.shown = False

    def show(self, text: str) -> None:
        if not self.on:
            return
        self.stream.write("\r\033[K" + text[:_columns() - 1])
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _columns() -> int:
    import os

    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns if columns >= 20 else 80  # a terminal that does not say its size (a fresh pty)
