"""spawn.Output: a helper program's stdout, read later; the program never outlives the read."""

from __future__ import annotations

import os
import signal

import pytest

from rpathfix.spawn import Output


def _reaped(pid: int) -> bool:
    """True when `pid` is no child of this process any more (it was waited for)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_output_is_read_after_the_program_ran() -> None:
    out = Output(["/bin/sh", "-c", "echo one; echo two >&2; echo three"])
    pid = out._pid
    assert pid is not None
    assert out.text() == "one\nthree\n"  # stderr is not mixed in
    assert out.text() == "one\nthree\n"  # asked twice, answered from memory
    assert _reaped(pid)


def test_a_program_that_does_not_finish_is_killed_and_reaped_at_the_deadline() -> None:
    """`sleep 30` outlives the deadline: text() gives None, and the program is gone (killed
    and waited for). The control: before the read it is a live child."""
    out = Output(["/bin/sh", "-c", "echo partial; exec sleep 30"])
    pid = out._pid
    assert pid is not None and not _reaped(pid)  # the control
    assert out.text(timeout=0.3) is None
    assert _reaped(pid)


def test_ctrl_c_during_the_read_stops_and_reaps_the_program() -> None:
    """A KeyboardInterrupt (here from a SIGALRM handler, as SIGINT raises it) while text()
    waits reaches the caller, and the program is killed and reaped first: nothing is left
    running behind an interrupted rpathfix."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    out = Output(["/bin/sh", "-c", "exec sleep 30"])
    pid = out._pid
    assert pid is not None and not _reaped(pid)
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            out.text(timeout=20)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert _reaped(pid)
    assert out.text() is None


def test_a_program_that_cannot_start_gives_none() -> None:
    assert Output(["/nonexistent/ld.so", "--help"]).text() is None
