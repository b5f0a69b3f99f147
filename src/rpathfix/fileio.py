"""The one set of write helpers every action uses (patch, repair, index, unpack, venv).

Three promises, kept here so that no action has to keep them on its own:
- nothing half-written is ever visible: a new file is written beside its destination under
  a recognizable temporary name, flushed, and renamed over the destination in one step;
- a file with other hard links (uv's cache and Bazel's repository cache link their files)
  is never changed under those links' feet: `replace_file` writes a new inode, so the other
  names keep the old bytes;
- a run that changes nothing writes nothing: `write_if_changed` compares first.

Leftovers of a killed run carry the writing process's pid in their name
(`.<name>.rpathfix-<pid>-<random>`), so `clean_leftovers` can remove exactly those whose
writer is gone, and never a file another running rpathfix is still writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

_TAG = ".rpathfix-"


def temp_path(dest: str, suffix: str = "") -> str:
    """A fresh name beside `dest` for this process: `.<name>.rpathfix-<pid>-<random><suffix>`."""
    parent, name = os.path.split(os.path.abspath(dest))
    return os.path.join(parent, f".{name}{_TAG}{os.getpid()}-{os.urandom(4).hex()}{suffix}")


def _writer_pid(entry: str, name: str) -> int | None:
    """The pid in a leftover's name when `entry` is one of `name`'s temporary names."""
    prefix = f".{name}{_TAG}"
    if not entry.startswith(prefix):
        return None
    pid, sep, _rest = entry[len(prefix):].partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def leftovers(dest: str) -> list[str]:
    """Temporary entries beside `dest` whose writing process no longer runs."""
    parent, name = os.path.split(os.path.abspath(dest))
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    out = []
    for entry in sorted(entries):
        pid = _writer_pid(entry, name)
        if pid is not None and not _alive(pid):
            out.append(os.path.join(parent, entry))
    return out


def remove_tree(path: str) -> None:
    """Remove a file, a link or a whole directory; what is already gone is not an error."""
    if os.path.isdir(path) and not os.path.islink(path):
        import shutil  # not at start-up: it pulls in bz2 and lzma

        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def clean_leftovers(dest: str) -> list[str]:
    """Remove what killed runs left beside `dest`; the removed paths."""
    gone = leftovers(dest)
    for p in gone:
        remove_tree(p)
    return gone


def exchange(a: str, b: str) -> None:
    """Swap the entries at `a` and `b` in one step: a reader sees either the old or the new
    entry at each name, never a name that is missing (two renames would leave a moment
    between them). Both must exist; directories are swapped whole, non-empty ones too.

    Linux renameat2(RENAME_EXCHANGE) or macOS renamex_np(RENAME_SWAP); OSError (ENOTSUP,
    EINVAL, ENOSYS) where the system or the file system cannot. ctypes is imported here
    only: replacing a directory is the only write that needs it.
    """
    import ctypes
    import sys

    libc = ctypes.CDLL(None, use_errno=True)
    fa, fb = os.fsencode(a), os.fsencode(b)
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(at_fdcwd, fa, at_fdcwd, fb, rename_exchange)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        fn = libc.renamex_np
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(fa, fb, rename_swap)
    else:
        raise OSError(errno.ENOTSUP, "this system cannot swap two paths in one step", a, None, b)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a, None, b)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_file(dest: str, write: Callable[[BinaryIO], object], *, mode: int | None = None,
                 like: str | None = None, durable: bool = True) -> None:
    """Write a new file with `write(f)` and rename it over `dest` in one step.

    The mode is `mode`, else that of `like` (default: `dest` itself when it exists), else
    0o644 minus nothing (umask never applies: outputs must not depend on it). The owner of
    an existing file is kept when this process may set it. The new file is always a new
    inode, so other hard links to `dest` keep the old bytes. On any failure, or Ctrl-C, the
    temporary file is removed and `dest` is as it was.
    """
    dest = os.path.abspath(dest)
    ref = like if like is not None else dest
    st: os.stat_result | None
    try:
        st = os.stat(ref)
    except FileNotFoundError:
        st = None
    final_mode = mode if mode is not None else (stat.S_IMODE(st.st_mode) if st is not None else 0o644)
    tmp = temp_path(dest)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if st is not None and like is None:
                with contextlib.suppress(OSError):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fchmod(f.fileno(), final_mode)
            if durable:
                os.fsync(f.fileno())
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(os.path.dirname(dest))


def write_bytes(dest: str, data: bytes, *, mode: int | None = None, durable: bool = True) -> None:
    """`replace_file` with the whole content given."""
    replace_file(dest, lambda f: f.write(data), mode=mode, durable=durable)


def same_content(path: str, data: bytes) -> bool:
    """True when `path` is a regular file holding exactly `data`."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False


def write_if_changed(dest: str, data: bytes, *, mode: int = 0o644, durable: bool = True) -> bool:
    """Write `data` to `dest` unless it already holds exactly that (with that mode); True when
    something was written. A run that changes nothing leaves every mtime as it was."""
    with contextlib.suppress(OSError):
        if same_content(dest, data) and stat.S_IMODE(os.stat(dest).st_mode) == mode:
            return False
    write_bytes(dest, data, mode=mode, durable=durable)
    return True


def copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int, *, piece: int = 1 << 30,
               after_piece: Callable[[], object] | None = None) -> None:
    """Copy `count` bytes between two files at the given offsets: in the kernel where it can
    (copy_file_range, `piece` bytes a call, `after_piece()` between two calls), else by hand
    in 1 MiB chunks (EXDEV on older kernels, ENOSYS, EINVAL on some file systems).
    OSError when the source ends first."""
    fast = getattr(os, "copy_file_range", None)
    while count > 0 and fast is not None:
        try:
            done = fast(src_fd, dst_fd, min(count, piece), src_off, dst_off)
        except OSError:
            break
        if done <= 0:
            break
        src_off, dst_off, count = src_off + done, dst_off + done, count - done
        if after_piece is not None and count > 0:
            after_piece()
    while count > 0:
        data = os.pread(src_fd, min(count, 1 << 20), src_off)
        if not data:
            raise OSError(f"unexpected end of input at offset {src_off}")
        pwrite_all(dst_fd, data, dst_off)
        src_off, dst_off, count = src_off + len(data), dst_off + len(data), count - len(data)


def sha256_file(path: str) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB chunks (OSError as open(2) and read(2)
    give it: callers say what the file was for)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def has_other_links(path: str) -> bool:
    """True when the file at `path` has more than one name (edit a copy, never the inode)."""
    try:
        return os.stat(path).st_nlink > 1
    except OSError:
        return False


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """os.pwrite until every byte is written (a short write is legal for regular files)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
        offset += n


__all__ = [
    "clean_leftovers",
    "exchange",
    "has_other_links",
    "leftovers",
    "pwrite_all",
    "remove_tree",
    "replace_file",
    "same_content",
    "temp_path",
    "write_bytes",
    "write_if_changed",
]
