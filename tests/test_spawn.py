"""spawn.Output: a helper program's stdout, read later, never a hang."""

from __future__ import annotations

import time

from rpathfix.spawn import Output


def test_output_is_read_after_the_program_ran() -> None:
    out = Output(["/bin/sh", "-c", "echo one; echo two >&2; echo three"])
    assert out.text() == "one\nthree\n"  # stderr is not mixed in
    assert out.text() == "one\nthree\n"  # asked twice, answered from memory


def test_a_program_that_does_not_finish_is_killed_at_the_deadline() -> None:
    t = time.monotonic()
    assert Output(["/bin/sh", "-c", "echo partial; sleep 30"]).text(timeout=0.3) is None
    assert time.monotonic() - t < 5


def test_a_program_that_cannot_start_gives_none() -> None:
    assert Output(["/nonexistent/ld.so", "--help"]).text() is None
