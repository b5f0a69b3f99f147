"""The `rpathfix` command's exit: a normal interpreter exit, after main()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONSOLE = """
import atexit, sys
from rpathfix.cli import console
atexit.register(lambda: sys.stdout.write("atexit handler ran, its output flushed\\n"))
sys.stdout.write("buffered before exit: ")
sys.argv = ["rpathfix", "scan", sys.argv[1]]
console()
"""


def test_console_exits_normally(tmp_path: Path) -> None:
    """console() ends with a normal exit: atexit handlers run and every buffer is flushed
    (before, os._exit dropped both), and the exit code is main()'s. The control: the
    same scan's own output arrives too."""
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-c", CONSOLE, str(tmp_path / "empty")], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("buffered before exit: ")
    assert proc.stdout.endswith("atexit handler ran, its output flushed\n"), proc.stdout
    missing = subprocess.run([sys.executable, "-c", CONSOLE, str(tmp_path / "missing")], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
    assert missing.returncode == 2 and "atexit handler ran" in missing.stdout


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`rpathfix scan --json ... | head -c 1`: the pipe closes while more than a pipe's worth
    of output is still to come; exit without a traceback or a complaint at exit. The
    control: read whole, the output is larger than the pipe's 64 KiB."""
    import os

    lib = tmp_path / "libx.so"
    (tmp_path / "x.c").write_text("int x(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "x.c")], check=True)
    top = tmp_path / "many"
    top.mkdir()
    for i in range(400):
        os.link(lib, top / f"libx{i}.so")
    cmd = [sys.executable, "-m", "rpathfix", "scan", "--json", str(top)]
    whole = subprocess.run(cmd, capture_output=True)
    assert whole.returncode == 0 and len(whole.stdout) > 1 << 16  # the control
    proc = subprocess.run(" ".join(cmd) + " | head -c 1", shell=True, capture_output=True, text=True)
    assert proc.stdout == "{" and proc.stderr == "", proc.stderr
