"""Applying a planned binary edit (model.BytePatch) to a file: in place when that is safe,
else as a new file renamed over the old one; or while streaming a file somewhere else (a
wheel being written).

In place is safe when a kill -9 at any moment leaves the old file or the new one. A plan
says so by its shape (`atomic_in_place`): every write but the last lands at or beyond the
old end of the file (bytes nothing in the old file points at), and the last one, the
switch, lies inside one 4096-byte page, which a write is never cut inside (Linux checks for
a fatal signal between pages, not within one). The writes reach the file in order; the
appended bytes are flushed to disk before the switch, so even a power loss cannot leave a
switch pointing at bytes that never arrived. The switch itself is not flushed: the file is
consistent either way, and an fsync waits for whatever else the filesystem must commit
(0.6 ms on an idle disk, 0.7 s on this busy shared one), so an in-place edit is durable when
the kernel writes it back. A run killed before the switch leaves the old file with
unreferenced bytes past its old end; one that fails with an exception truncates them away
again.

A file is edited in place only when it has exactly one name: uv's cache and Bazel's
repository cache hard-link their files, and the other names must keep the old bytes. Then,
and when the plan is not atomic in place or the file cannot be opened for writing (a
running executable gives ETXTBSY), the patched bytes go to a new file beside it that is
renamed over it (fileio.replace_file: same mode and owner, new inode). That copies the
whole file, so it costs what the file's size costs.

A test hook: RPATHFIX_FAULT_AFTER_WRITES=N makes the process kill itself with SIGKILL after
its N-th write step (write, truncate, flush or rename), so tests can prove the promise
above for every N with the real loader.
"""

from __future__ import annotations

import errno
import os
import stat

from rpathfix import fileio
from rpathfix.errors import EditError
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import BinaryIO

    from rpathfix.model import BytePatch
    from rpathfix.source import ByteSource, SupportsWrite

PAGE = 4096
CHUNK = 1 << 20
FAULT_ENV = "RPATHFIX_FAULT_AFTER_WRITES"


class _Steps:
    """Counts write steps for the fault-injection hook (a no-op unless the variable is set)."""

    def __init__(self) -> None:
        raw = os.environ.get(FAULT_ENV, "")
        self.limit = int(raw) if raw.isdigit() else 0
        self.done = 0

    def __call__(self) -> None:
        if not self.limit:
            return
        self.done += 1
        if self.done >= self.limit:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def atomic_in_place(patch: BytePatch, old_size: int) -> bool:
    """Whether writing `patch` into the file itself leaves, at every moment, the old file
    (maybe with bytes past its end) or the new one: all writes but the last append, and the
    last lies within one page. A patch that only appends is atomic too."""
    if patch.size < old_size:
        return False
    if not patch.writes:
        return True
    *before, (off, data) = patch.writes
    if any(o < old_size for o, _d in before):
        return False
    return off >= old_size or not data or off // PAGE == (off + len(data) - 1) // PAGE


def pieces(old_size: int, patch: BytePatch) -> list[tuple[int, int, memoryview | None]]:
    """The new file as (offset, length, data) pieces in order; data None means "the old
    bytes at this offset" (zeros past the old end). Later writes win where writes overlap.
    The data are views of the patch's own bytes: nothing is copied."""
    out: list[tuple[int, int, memoryview | None]] = [(0, min(old_size, patch.size), None)]
    if patch.size > old_size:
        out.append((old_size, patch.size - old_size, None))
    for off, data in patch.writes:
        end = off + len(data)
        if end > patch.size:
            raise ValueError(f"a write at {off} ends beyond the patched size {patch.size}")
        nxt: list[tuple[int, int, memoryview | None]] = []
        for p_off, p_len, p_data in out:
            p_end = p_off + p_len
            if p_end <= off or p_off >= end:
                nxt.append((p_off, p_len, p_data))
                continue
            if p_off < off:
                nxt.append((p_off, off - p_off, None if p_data is None else p_data[: off - p_off]))
            if p_end > end:
                nxt.append((end, p_end - end, None if p_data is None else p_data[end - p_off:]))
        nxt.append((off, len(data), memoryview(data)))
        out = sorted((p for p in nxt if p[1] > 0), key=lambda p: p[0])
    return out


class PatchedSource:
    """A ByteSource of the file as it will be once `patch` is applied: reads are served from
    the patch's bytes and the original's. A plan is read back with the same readers (and can
    be checked with the loader model) before anything is written; the repair uses it for
    wheel members held in memory."""

    def __init__(self, src: ByteSource, patch: BytePatch) -> None:
        self._src = src
        self._patch = patch
        self._pieces = pieces(src.size, patch)
        self._starts = [p[0] for p in self._pieces]

    @property
    def name(self) -> str:
        return self._src.name

    @property
    def size(self) -> int:
        return self._patch.size

    def read_at(self, offset: int, size: int) -> bytes:
        from bisect import bisect_right

        from rpathfix.source import _check

        _check(self.name, self.size, offset, size)
        out: list[bytes | memoryview] = []
        pos, end = offset, offset + size
        i = max(0, bisect_right(self._starts, pos) - 1)
        while pos < end:
            p_off, p_len, data = self._pieces[i]
            take = min(end, p_off + p_len) - pos
            if data is not None:
                out.append(data[pos - p_off: pos - p_off + take])
            elif pos < self._src.size:
                out.append(self._src.read_at(pos, take))
            else:
                out.append(bytes(take))
            pos += take
            i += 1
        return b"".join(out)

    def close(self) -> None:
        pass


def stream_patched(src: ByteSource, patch: BytePatch, out: SupportsWrite) -> None:
    """Write the patched file to `out` from its first byte to its last, reading `src` in 1 MB
    chunks: memory is the chunk plus the patch's own bytes, whatever the file's size. This is
    how a patched member goes into a new wheel without a copy on disk."""
    zeros = b""
    for off, length, data in pieces(src.size, patch):
        if data is not None:
            out.write(data)
            continue
        pos, end = off, off + length
        while pos < end:
            n = min(CHUNK, end - pos)
            if pos < src.size:
                n = min(n, src.size - pos)
                out.write(src.read_at(pos, n))
            else:
                if len(zeros) < n:
                    zeros = bytes(min(CHUNK, end - pos))
                out.write(zeros[:n])
            pos += n


def _copy_patched(path: str, patch: BytePatch, out: BinaryIO, step: _Steps) -> None:
    """stream_patched for a file on disk, with the old bytes copied by the kernel
    (copy_file_range: no trip through Python; a reflink on filesystems that have them)."""
    out.flush()
    dst = out.fileno()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        old_size = os.fstat(fd).st_size
        for off, length, data in pieces(old_size, patch):
            if data is not None:
                fileio.pwrite_all(dst, data, off)
                step()
                continue
            if off >= old_size:
                continue  # zeros: the final truncate makes them
            pos, end = off, off + length
            while pos < end:
                n = _copy_range(fd, dst, pos, min(CHUNK * 64, end - pos))
                pos += n
                step()
        os.ftruncate(dst, patch.size)
        step()
    finally:
        os.close(fd)


def _copy_range(src_fd: int, dst_fd: int, off: int, n: int) -> int:
    """Copy up to n bytes at offset off between two files (same offset); how many were."""
    copy = getattr(os, "copy_file_range", None)
    if copy is not None:
        try:
            done = int(copy(src_fd, dst_fd, n, off, off))
            if done > 0:
                return done
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    data = os.pread(src_fd, min(n, CHUNK), off)
    if not data:
        raise OSError(errno.EIO, "the file shrank while being copied")
    fileio.pwrite_all(dst_fd, data, off)
    return len(data)


def is_read_only(path: str) -> bool:
    """No write bit at all: the owner made it read-only (root could write it anyway)."""
    return not stat.S_IMODE(os.stat(path).st_mode) & 0o222


def apply(path: str, patch: BytePatch, *, expect: os.stat_result | None = None, force: bool = False) -> str:
    """Write `patch` to the file at `path` (a symlink is followed: its target is edited).
    Returns "unchanged" (nothing written, mtime kept), "in-place" or "replaced" (a new file
    renamed over the old name; other hard links keep the old bytes).

    `expect` is the file's stat when the patch was planned: a file changed since is refused,
    as is a read-only file unless `force` (it stays read-only).
    """
    if patch.method == "unchanged":
        return "unchanged"
    real = os.path.realpath(path)
    st = os.stat(real)
    if not patch.writes and patch.size == st.st_size:
        return "unchanged"
    if expect is not None and (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) != (
            expect.st_ino, expect.st_dev, expect.st_size, expect.st_mtime_ns):
        raise EditError(f"{path}: changed while being planned; run again")
    if not force and is_read_only(real):
        raise EditError(f"{path}: read-only (mode {stat.S_IMODE(st.st_mode):04o}); --force edits it anyway")
    step = _Steps()
    if st.st_nlink == 1 and atomic_in_place(patch, st.st_size):
        try:
            fd = os.open(real, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            if e.errno not in (errno.ETXTBSY, errno.EACCES, errno.EPERM, errno.EROFS):
                raise
        else:
            try:
                _write_in_place(fd, st.st_size, patch, step)
            finally:
                os.close(fd)
            return "in-place"
    fileio.replace_file(real, lambda f: _copy_patched(real, patch, f, step))
    return "replaced"


def _write_in_place(fd: int, old_size: int, patch: BytePatch, step: _Steps) -> None:
    *appends, (last_off, last) = patch.writes
    switched = False
    try:
        for off, data in appends:
            fileio.pwrite_all(fd, data, off)
            step()
        if patch.size > old_size:
            os.ftruncate(fd, patch.size)  # zeros up to the new size, where no write reaches
            step()
        if appends or patch.size > old_size:
            os.fsync(fd)  # the new bytes are on disk before anything points at them
            step()
        fileio.pwrite_all(fd, last, last_off)
        switched = True
        step()
    except BaseException:
        if not switched:
            os.ftruncate(fd, old_size)
        raise


__all__ = ["PatchedSource", "apply", "atomic_in_place", "is_read_only", "pieces", "stream_patched"]
