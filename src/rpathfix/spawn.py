"""Run a helper program in the background and read what it prints, without `subprocess`.

rpathfix asks `ld.so --help` which hwcaps subdirectories this machine searches. Started
first thing, the helper runs on the other core while the plan is made, and its answer is
read when the loader model needs it. os.posix_spawn and a pipe do that in a few lines;
`subprocess` would cost more to import (signal, selectors, threading) than the helper
takes to run.
"""

from __future__ import annotations

import os
import time


class Output:
    """A started program; text() waits (with a deadline) for everything it wrote to stdout."""

    def __init__(self, argv: list[str]) -> None:
        read_end, write_end = os.pipe()  # both close-on-exec; the child's stdout is a dup2 of write_end
        try:
            self._pid: int | None = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, write_end, 1),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ])
        except (OSError, AttributeError):  # cannot run it, or no posix_spawn on this platform
            os.close(read_end)
            self._pid = None
        finally:
            os.close(write_end)
        self._fd = read_end if self._pid is not None else -1
        self._text: str | None = None

    def text(self, timeout: float = 10.0) -> str | None:
        """What the program printed; None if it could not start or did not finish in time.

        However this ends (the program's end, the deadline, Ctrl-C, an error), the program
        is stopped and reaped and the pipe closed before it returns or raises.
        """
        if self._pid is None:
            return self._text
        import select

        chunks: list[bytes] = []
        finished = False
        try:
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([self._fd], [], [], left)
                if not ready:
                    continue
                data = os.read(self._fd, 1 << 16)
                if not data:
                    finished = True
                    break
                chunks.append(data)
        finally:
            pid, self._pid = self._pid, None
            os.close(self._fd)
            if not finished:
                os.kill(pid, 9)  # not reaped yet, so the pid is still this program's
            os.waitpid(pid, 0)
        self._text = b"".join(chunks).decode("utf-8", "replace") if finished else None
        return self._text
