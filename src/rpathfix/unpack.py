"""Install wheels into distribution roots: DIR/<name>/{site-packages,bin,include,data}.

Each wheel is installed into its own root, the layout `rpathfix.roots` reads, with the
files, launchers and RECORD that pypa's `installer` writes (wheelinstall.py: one pass
over the zip, large members in threads, bytecode in worker processes; several wheels at
once, largest first). The install is
- safe: member paths, file types and RECORD's list of members are checked before anything
  is written; each member's content against RECORD's hash and size (and its CRC-32 where
  no RECORD hash checks it) as it is written, into a directory no reader looks at;
- atomic: built in DIR/.<name>.tmp-XXXX and renamed into place, so a root is never
  half-written; a failure or Ctrl-C stops every thread and worker process, waits for them,
  and removes the temporary directory;
- bounded: members stream in chunks, memory does not grow with a member's size;
- reproducible: file modes are normalized (0755 for files the wheel marks executable and
  for scripts, 0644 otherwise, 0755 for directories); bytecode is hash-based (CHECKED_HASH)
  with root-relative source paths, compiled by workers that start the same way every time
  (so its bytes depend on the source and the interpreter only, not on this process's hash
  seed or what it imported: see wheelinstall.Compiler); with SOURCE_DATE_EPOCH set every
  mtime in the root is set to it.

A marker file, <root>/.rpathfix-wheel, names the wheel, its sha256 and the install
options; a second unpack of the same wheel with the same options writes nothing. An
index, <root>/.rpathfix-natives.json, lists the root's native files and their headers,
so that planning a venv need not find and read them again (natives.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator

from rpathfix.errors import FormatError, UsageError
from rpathfix.names import parse_wheel_filename
from rpathfix.static import TYPE_CHECKING
from rpathfix.wheelinstall import (
    DIR_MODE,
    EXEC_MODE,
    FILE_MODE,
    RECORD_HINT,
    SCHEME_DIRS,
    Cancelled,
    cpu_count,
)

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

MARKER = ".rpathfix-wheel"
_ZIP_EPOCH = 315532800  # 1980-01-01 00:00 UTC, the earliest time a zip entry can carry


def resolve_python(python: str | None) -> str:
    """The absolute interpreter path launchers name: `python` (a path or a name on PATH) or sys.executable."""
    if python is None:
        return sys.executable
    if os.sep in python:
        return os.path.abspath(python)
    found = shutil.which(python)
    if found is None:
        raise UsageError(f"--python {python}: not found on PATH")
    return os.path.abspath(found)


def _sha256(path: str) -> str:
    """The wheel's SHA-256; a wheel that cannot be read is a FormatError naming it."""
    from rpathfix.fileio import sha256_file

    try:
        return sha256_file(path)
    except IsADirectoryError:
        raise FormatError(path, "is a directory, not a wheel file") from None
    except OSError as e:
        raise FormatError(path, f"cannot read: {e.strerror or e}") from None


def _marker_text(wheel: str, digest: str, python: str, compile_bytecode: bool, verify_record: bool = True) -> str:
    # "record: not verified" only when so: markers of verified installs stay as they were,
    # and a later run that verifies does not take an unverified root as up to date.
    return (f"wheel: {os.path.basename(wheel)}\nsha256: {digest}\npython: {python}\n"
            f"bytecode: {'checked-hash' if compile_bytecode else 'none'}\nnatives-index: 1\n"
            + ("" if verify_record else "record: not verified\n"))


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _normalize_tree(top: str) -> None:
    """Fixed modes for everything in `top` (pycs and directories come out umask-dependent); SOURCE_DATE_EPOCH mtimes.

    A mode already right is left alone (most are: files are created with their final mode).
    """
    epoch_s = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    epoch = int(epoch_s) if epoch_s.isdigit() else None
    stack = [top]
    dirs = []
    while stack:
        d = stack.pop()
        dirs.append(d)
        if stat.S_IMODE(os.lstat(d).st_mode) != DIR_MODE:
            os.chmod(d, DIR_MODE)
        with os.scandir(d) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    want = EXEC_MODE if st.st_mode & 0o111 else FILE_MODE
                    if stat.S_IMODE(st.st_mode) != want:
                        os.chmod(entry.path, want)
                    if epoch is not None:
                        os.utime(entry.path, (epoch, epoch))
    if epoch is not None:
        for d in reversed(dirs):  # children before their parents: a parent's mtime is set last
            os.utime(d, (epoch, epoch))


def _write_index(top: str) -> None:
    """<top>/.rpathfix-natives.json: the root's native files and their headers, with the size
    and mtime each file has, so `rpathfix venv` need not read them again while they match.

    Native files get a fixed mtime (SOURCE_DATE_EPOCH, else 1980-01-01, the zip epoch) so
    the index is the same bytes for the same wheel; a file patched later gets a new mtime
    and is read again. The index file and `top` follow the mode and mtime rules of the rest.
    """
    from rpathfix.fstree import RealTree
    from rpathfix.natives import INDEX, index_json
    from rpathfix.plan import find_binaries

    site = os.path.join(top, "site-packages")
    if not os.path.isdir(site):
        return
    epoch_s = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    epoch = int(epoch_s) if epoch_s.isdigit() else None
    stamp = epoch if epoch is not None else _ZIP_EPOCH
    entries = []
    for b in find_binaries(RealTree(), "", site):
        os.utime(b.real, (stamp, stamp))
        st = os.stat(b.real)
        entries.append((b.rel, st.st_size, st.st_mtime_ns, b.info))
    path = os.path.join(top, INDEX)
    with open(path, "w", encoding="utf-8") as f:
        f.write(index_json(entries))
    os.chmod(path, FILE_MODE)
    if epoch is not None:
        os.utime(path, (epoch, epoch))
        os.utime(top, (epoch, epoch))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _swap_in(tmp_root: str, root: str, name: str, into: str) -> None:
    """Rename `tmp_root` to `root`; an existing `root` is renamed aside first and deleted after."""
    if not os.path.lexists(root):
        os.rename(tmp_root, root)
        return
    old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=into)
    aside = os.path.join(old, "root")
    os.rename(root, aside)
    try:
        os.rename(tmp_root, root)
    except OSError:
        os.rename(aside, root)
        raise
    finally:
        _remove(old)


def unpack_wheel(wheel: str, into: str, *, python: str | None = None, compile_bytecode: bool = True,
                 verify_record: bool = True, inflate: str | None = None,
                 _pool: ThreadPoolExecutor | None = None, _cancel: threading.Event | None = None) -> tuple[str, bool]:
    """Install `wheel` into the root into/<canonical name>; (root path, whether anything changed).

    FormatError for a wheel that is unreadable, not a zip, unsafe, corrupt or (unless
    verify_record is False) fails RECORD checks: a member missing from RECORD, a wrong hash
    or size; UsageError for a bad --into or --python. Nothing is left behind on error.
    `inflate`: "zlib", "isal" or None (isal when installed; see wheelinstall.inflate_module).
    """
    from rpathfix.wheelinstall import inflate_module, install

    name, _version = parse_wheel_filename(wheel)
    interpreter = resolve_python(python)
    inflater = inflate_module(inflate)
    if not os.path.exists(wheel):
        raise FormatError(wheel, "no such file")
    into = os.path.abspath(into)
    try:
        os.makedirs(into, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--into {into}: {e.strerror or e}") from None
    root = os.path.join(into, name)
    digest: _Digest | None = None
    marker = ""
    if not os.path.lexists(root) and os.path.isfile(wheel):
        # Nothing to compare with: the marker's sha256 (0.5 s for torch's wheel) is computed
        # by a thread while the wheel is unpacked, and waited for before the marker is written.
        digest = _Digest(wheel)
    else:
        marker = _marker_text(wheel, _sha256(wheel), interpreter, compile_bytecode, verify_record)

    if digest is None and os.path.lexists(root):
        if not os.path.isdir(root) or os.path.islink(root):
            raise UsageError(f"{root}: exists and is not a directory; remove it or choose another --into")
        current = _read_text(os.path.join(root, MARKER))
        if current == marker:
            return root, False
        if current is None and os.listdir(root):
            raise UsageError(f"{root}: exists and was not made by `rpathfix unpack` (no {MARKER}); "
                             "remove it or choose another --into")

    from rpathfix.wheelfile import WheelArchive

    try:
        arc = WheelArchive(wheel)
    except BaseException:
        if digest is not None:
            digest.wait()
        raise
    try:
        tmp_root = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=into)
    except OSError as e:
        arc.close()
        if digest is not None:
            digest.wait()
        raise UsageError(f"--into {into}: {e.strerror or e}") from None
    own_pool = None
    try:
        with arc:
            if _pool is None and arc.size >= 4 << 20 and cpu_count() > 1:
                from concurrent.futures import ThreadPoolExecutor

                own_pool = ThreadPoolExecutor(max_workers=cpu_count(), thread_name_prefix="rpathfix-unpack")
            install(wheel, arc, tmp_root, interpreter, verify_record=verify_record,
                    compile_bytecode=compile_bytecode, pool=_pool or own_pool,
                    cancel=_cancel or threading.Event(), inflate=inflater)
        if digest is not None:
            marker = _marker_text(wheel, digest.result(), interpreter, compile_bytecode, verify_record)
        with open(os.path.join(tmp_root, MARKER), "w", encoding="utf-8") as f:
            f.write(marker)
        _normalize_tree(tmp_root)
        _write_index(tmp_root)
        _swap_in(tmp_root, root, name, into)
    except BaseException:
        _remove(tmp_root)
        raise
    finally:
        if own_pool is not None:
            own_pool.shutdown(wait=True)
        if digest is not None:
            digest.wait()
    return root, True


class _Digest:
    """The sha256 of a file, computed by a thread of its own (hashlib and reads release the
    GIL). wait() joins it, whatever happened; result() also raises what it raised."""

    __slots__ = ("error", "path", "thread", "value")

    def __init__(self, path: str) -> None:
        self.path = path
        self.value = ""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="rpathfix-wheel-sha256")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.value = _sha256(self.path)
        except BaseException as e:
            self.error = e

    def wait(self) -> None:
        self.thread.join()

    def result(self) -> str:
        self.wait()
        if self.error is not None:
            raise self.error
        return self.value


# Bytes of .py source cost about this many times a byte of wheel to install: compiling
# torch's 48 MB of .py takes more CPU than inflating, hashing and writing its 1.1 GB (from
# its 530 MB wheel). sympy (6 MB wheel, 24 MB of .py) started last by size was the tail.
_PY_WEIGHT = 16


def _cost(wheel: str) -> int:
    """A wheel's expected work, to start the costly ones first: its size, plus its .py bytes
    weighted (read from the central directory only; any error: its size, and unpack says why)."""
    import zipfile

    try:
        size = os.stat(wheel).st_size
    except OSError:
        return 0
    try:
        with zipfile.ZipFile(wheel) as zf:
            return size + _PY_WEIGHT * sum(i.file_size for i in zf.infolist() if i.filename.endswith(".py"))
    except Exception:  # not a zip, truncated, ...: unpack_wheel reports it
        return size


def iter_unpack(wheels: list[str], into: str, *, python: str | None = None, compile_bytecode: bool = True,
                verify_record: bool = True, inflate: str | None = None,
                jobs: int | None = None) -> Iterator[tuple[str, str, bool]]:
    """(wheel, root, changed) for each wheel, in the order given.

    Up to `jobs` wheels (default: the number of cores) are unpacked at once, costliest first
    (_cost: size and .py bytes),
    sharing one pool of threads for their large members. On the first failure (or Ctrl-C)
    the wheels not started are not started, the running ones are told to stop, and every
    thread and worker is waited for before the error is raised: each root is then either
    complete or absent. Roots finished before the failure stay (each is whole).
    """
    from concurrent.futures import ThreadPoolExecutor

    ncpu = cpu_count()
    jobs = max(1, jobs if jobs is not None else ncpu)
    names = [parse_wheel_filename(w)[0] for w in wheels]
    if len(set(names)) < len(names):
        jobs = 1  # two wheels of one distribution: the later replaces the earlier, in order
    if len(wheels) <= 1 or jobs == 1:
        for w in wheels:
            root, changed = unpack_wheel(w, into, python=python, compile_bytecode=compile_bytecode,
                                         verify_record=verify_record, inflate=inflate)
            yield w, root, changed
        return
    cancel = threading.Event()
    members = ThreadPoolExecutor(max_workers=ncpu, thread_name_prefix="rpathfix-member")
    outer = ThreadPoolExecutor(max_workers=min(jobs, len(wheels)), thread_name_prefix="rpathfix-wheel")

    try:
        costs = [_cost(w) for w in wheels]
        order = sorted(range(len(wheels)), key=lambda i: -costs[i])
        futures = {i: outer.submit(unpack_wheel, wheels[i], into, python=python, compile_bytecode=compile_bytecode,
                                   verify_record=verify_record, inflate=inflate, _pool=members, _cancel=cancel)
                   for i in order}
        for i, w in enumerate(wheels):
            err = futures[i].exception()
            if err is not None:
                cancel.set()
                for f in futures.values():
                    f.cancel()
                # The first failure in the order given, not a Cancelled one caused by it.
                first = next((e for e in (futures[j].exception() for j in range(len(wheels))
                                         if not futures[j].cancelled())
                              if e is not None and not isinstance(e, Cancelled)), err)
                raise first
            root, changed = futures[i].result()
            yield w, root, changed
    except BaseException:
        cancel.set()
        raise
    finally:
        outer.shutdown(wait=True, cancel_futures=True)
        members.shutdown(wait=True, cancel_futures=True)


__all__ = ["MARKER", "RECORD_HINT", "SCHEME_DIRS", "iter_unpack", "resolve_python", "unpack_wheel"]
