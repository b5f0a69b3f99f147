"""The shared write helpers: atomic replace, hard links kept apart, leftovers of dead writers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rpathfix import fileio


def test_replace_keeps_mode_and_other_hard_links(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"old")
    os.chmod(a, 0o751)
    b = tmp_path / "b"
    os.link(a, b)
    fileio.write_bytes(str(a), b"new")
    assert a.read_bytes() == b"new"
    assert b.read_bytes() == b"old"  # the other link keeps its bytes
    assert os.stat(a).st_mode & 0o777 == 0o751
    assert os.stat(a).st_ino != os.stat(b).st_ino
    assert set(os.listdir(tmp_path)) == {"a", "b"}


def test_failure_leaves_destination_and_no_temp(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        fileio.replace_file(str(a), boom)
    assert a.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a"]


def test_write_if_changed_writes_nothing_when_equal(tmp_path):
    a = tmp_path / "a"
    assert fileio.write_if_changed(str(a), b"x", mode=0o644)
    before = os.stat(a)
    assert not fileio.write_if_changed(str(a), b"x", mode=0o644)
    after = os.stat(a)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert fileio.write_if_changed(str(a), b"x", mode=0o600)  # the mode differs: written
    assert os.stat(a).st_mode & 0o777 == 0o600


def test_leftovers_of_dead_writers_only(tmp_path):
    dest = str(tmp_path / "out")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".out.rpathfix-{dead}-abcd"
    stale.mkdir()
    (stale / "f").write_text("x")
    mine = fileio.temp_path(dest)
    open(mine, "w").close()
    unrelated = tmp_path / ".other.rpathfix-1-ab"
    unrelated.write_text("x")
    assert fileio.clean_leftovers(dest) == [str(stale)]
    assert not stale.exists()
    assert os.path.exists(mine)  # this process is alive
    assert unrelated.exists()  # not a leftover of `out`


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    """Two non-empty directories trade places (a rename cannot replace a non-empty one:
    the control); a missing side is an OSError naming both paths, and nothing moves."""
    import errno

    import pytest

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "one").write_text("1")
    (b / "two").write_text("2")
    with pytest.raises(OSError) as control:
        os.rename(a, b)
    assert control.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    fileio.exchange(str(a), str(b))
    assert os.listdir(a) == ["two"] and os.listdir(b) == ["one"]
    with pytest.raises(OSError) as ei:
        fileio.exchange(str(a), str(tmp_path / "missing"))
    assert ei.value.errno == errno.ENOENT and ei.value.filename2 == str(tmp_path / "missing")
    assert os.listdir(a) == ["two"]
