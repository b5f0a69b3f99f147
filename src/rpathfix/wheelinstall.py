"""Install one wheel's files into a fresh directory: the part of `rpathfix unpack` that costs.

It writes what pypa's `installer` writes (the same files, contents, RECORD and launchers:
its own parsers, Script and RECORD writer are used for those), but in one pass over the
zip instead of two. `installer` reads every member twice (validate_record, then install),
each time through zipfile and pathlib, and compiles bytecode afterwards in one process; on
torch's 1.1 GB of content that was 21 s of the 63 s the 28-wheel torch stack took.
Here:

- the central directory is read once (wheelfile.WheelArchive, with its safety checks);
- each member is inflated once, straight from the wheel's file descriptor into its
  destination, in bounded chunks (memory does not grow with a member's size); the same
  pass hashes it for RECORD (checked against the wheel's RECORD unless told not to) and,
  where no RECORD hash checks it, checks its CRC-32;
- large members go to a thread pool, largest first (zlib and python-isal release the GIL
  while they inflate; hashing and writing release it too), while the calling thread writes
  the many small ones;
- a .py file is handed, as soon as it is written, to bytecode workers: processes of the
  target interpreter (one per core at most) running compileall.compile_file exactly as
  `compileall.compile_dir(site, ddir="site-packages")` did, so the .pyc bytes are the same
  (and, since a worker always starts the same way, they no longer depend on the state of
  the process that compiles: see Compiler._start);
- python-isal (`pip install rpathfix[fast]`) inflates about 2.4 times faster than zlib when
  it is installed; without it zlib is used (RPATHFIX_INFLATE=zlib forces zlib).

Everything is written under a directory the caller made and removes on failure; a failure
anywhere (a RECORD mismatch, a corrupt stream, Ctrl-C) stops the other threads and kills
and reaps the bytecode workers before this returns or raises.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import zlib

from rpathfix.errors import FormatError, UsageError
from rpathfix.static import TYPE_CHECKING, NamedTuple
from rpathfix.wheelfile import DEFLATED, STORED, WheelArchive, ZipEntry, record_digest

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable
    from concurrent.futures import Future, ThreadPoolExecutor
    from typing import Any

# Root-relative directory each installer scheme is written to.
SCHEME_DIRS = {
    "purelib": "site-packages",
    "platlib": "site-packages",
    "headers": "include",
    "scripts": "bin",
    "data": "data",
}
FILE_MODE = 0o644
EXEC_MODE = 0o755
DIR_MODE = 0o755
INSTALLER_NAME = b"rpathfix\n"
_IN = 1 << 18  # compressed bytes read at a time
_OUT = 1 << 20  # most inflated bytes produced at a time
# Members at least this large go to the thread pool; the rest are written by the caller's
# thread (a thread hand-off costs more than inflating a small file).
BIG = 1 << 20
# Source bytes of .py files per bytecode worker before another one is worth starting.
_PY_BYTES_PER_WORKER = 2 << 20

# Runs in the target interpreter (3.7 or later): compiles each (source, ddir) pair it is
# sent (NUL-separated on stdin) as compileall.compile_dir(site, ddir="site-packages",
# invalidation_mode=CHECKED_HASH) compiles it. Files that do not compile are skipped.
_WORKER = r"""
import compileall, os, py_compile, sys
mode = py_compile.PycInvalidationMode.CHECKED_HASH
inp = sys.stdin.buffer
rest = b""
pending = []
while True:
    chunk = inp.read1(65536)
    if not chunk:
        break
    parts = (rest + chunk).split(b"\0")
    rest = parts.pop()
    pending.extend(parts)
    while len(pending) >= 2:
        src, ddir = pending[0], pending[1]
        del pending[:2]
        compileall.compile_file(os.fsdecode(src), ddir=os.fsdecode(ddir), force=True, quiet=2,
                                invalidation_mode=mode)
"""


class Cancelled(Exception):
    """Another part of the same unpack failed or was interrupted: stop, clean up, say nothing."""


def inflate_module(choice: str | None = None) -> Any:
    """The module that inflates: python-isal's isal_zlib when importable, else zlib.

    `choice` (else $RPATHFIX_INFLATE): "zlib", "isal" (UsageError when not installed) or
    "auto"/None. Both give the same bytes; isal is about 2.4 times faster at inflating.
    """
    choice = choice or os.environ.get("RPATHFIX_INFLATE", "").strip() or "auto"
    if choice == "zlib":
        return zlib
    try:
        from isal import isal_zlib
    except ImportError:
        if choice == "isal":
            raise UsageError("RPATHFIX_INFLATE=isal, but python-isal is not installed "
                             "(pip install 'rpathfix[fast]')") from None
        return zlib
    if choice not in ("auto", "isal"):
        raise UsageError(f"RPATHFIX_INFLATE={choice}: expected zlib, isal or auto")
    return isal_zlib


class Member(NamedTuple):
    """One file to write: where, from which zip entry, and how it is checked."""

    entry: ZipEntry
    scheme: str
    path: str  # scheme-relative, as installer records it
    dest: str  # absolute destination
    executable: bool
    fix_shebang: bool  # a "scripts" member: "#!python" becomes "#!<interpreter>"
    record_hash: tuple[str, str] | None  # (algorithm, urlsafe-b64 digest) to check, when verifying
    record_size: int | None  # size to check, when verifying
    compile: bool  # a .py in site-packages


class Plan(NamedTuple):
    root_scheme: str
    dist_info: str
    members: list[Member]
    scripts: list[tuple[str, bytes]]  # entry-point launchers: (name in bin/, content)
    dirs: list[str]  # directories to create, parents first


def _issue_text(e: BaseException) -> str:
    issues = getattr(e, "issues", None)
    if isinstance(issues, list) and issues:
        return "; ".join(str(i) for i in issues)
    return str(e) or type(e).__name__


def check_entries(wheel: str, arc: WheelArchive) -> None:
    """FormatError for a member that is not a plain file or directory, or an unsupported method
    (paths, repeats, overlaps and encryption are checked when the archive is opened)."""
    for e in arc.entries:
        mode = e.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = "symlink" if kind == stat.S_IFLNK else f"special file (mode {mode:o})"
            raise FormatError(wheel, f"member {e.name!r} is a {what}; only regular files and directories are allowed")
        if not e.is_dir and e.method not in (STORED, DEFLATED):
            raise FormatError(wheel, f"member {e.name!r}: compression method {e.method} is not supported "
                                     "(wheels use stored or deflated)")


# Said with every RECORD refusal: the check is stricter than pip, and can be turned off.
RECORD_HINT = "pip installs it anyway; rpathfix unpack is stricter: --no-verify-record installs it too"


def plan(wheel: str, arc: WheelArchive, top: str, interpreter: str, verify_record: bool) -> Plan:
    """What installer would write, where, and how each member is checked; FormatError for a
    wheel installer refuses (and, when verifying, for RECORD problems found without reading
    contents: a member RECORD does not list, an entry without hash or size)."""
    import posixpath

    from installer.records import RecordEntry, parse_record_file
    from installer.scripts import Script
    from installer.utils import SCHEME_NAMES, parse_entrypoints, parse_metadata_file
    from installer.utils import parse_wheel_filename as installer_wheel_name

    check_entries(wheel, arc)
    dist_info = arc.dist_info()
    names = {e.name for e in arc.entries}
    for required in ("WHEEL", "RECORD"):
        if f"{dist_info}/{required}" not in names:
            raise FormatError(wheel, f"{dist_info}/{required} is missing")
    try:
        parsed = installer_wheel_name(os.path.basename(wheel))
        data_dir = f"{parsed.distribution}-{parsed.version}.data"
        meta = parse_metadata_file(arc.read(f"{dist_info}/WHEEL").decode("utf-8"))
        wv = meta["Wheel-Version"]
        if not (wv and wv.startswith("1.")):
            raise FormatError(wheel, f"Incompatible Wheel-Version {wv}, only support version 1.x wheels.")
        root_scheme = "purelib" if meta["Root-Is-Purelib"] == "true" else "platlib"
        record_path = f"{dist_info}/RECORD"
        rows = {r[0]: r for r in parse_record_file(arc.read(record_path).decode("utf-8").splitlines())}
        scripts: list[tuple[str, bytes]] = []
        if f"{dist_info}/entry_points.txt" in names:
            text = arc.read(f"{dist_info}/entry_points.txt").decode("utf-8")
            for name, module, attr, section in parse_entrypoints(text):
                scripts.append(Script(name, module, attr, section).generate(interpreter, "posix"))
    except FormatError:
        raise
    except Exception as err:  # installer's parsers: ValueError, InstallerError, csv.Error, AssertionError
        raise FormatError(wheel, _issue_text(err)) from None

    issues: list[str] = []
    members: list[Member] = []
    for e in arc.entries:
        if e.is_dir:
            continue
        row = rows.get(e.name)
        is_sig = (posixpath.commonpath([dist_info, e.name]) == dist_info
                  and e.name.rsplit("/", 1)[-1] in ("RECORD.p7s", "RECORD.jws"))
        try:
            entry = RecordEntry.from_elements(*(row or (e.name, "", "")))
        except Exception as err:
            raise FormatError(wheel, f"entry in RECORD file for {e.name} is invalid: {_issue_text(err)}") from None
        check_hash: tuple[str, str] | None = None
        check_size: int | None = None
        if verify_record and not is_sig:
            if row is None:
                issues.append(f"{e.name} is not mentioned in RECORD")
            elif e.name == record_path:
                if entry.hash_ is not None or entry.size is not None:
                    issues.append("RECORD file incorrectly contains hash / size.")
            else:
                if entry.hash_ is None or entry.size is None:
                    issues.append(f"hash / size of {e.name} is not included in RECORD")
                check_hash = (entry.hash_.name, entry.hash_.value) if entry.hash_ is not None else None
                check_size = entry.size
        elif verify_record and row is not None:
            issues.append(f"digital signature file {e.name} is incorrectly contained in RECORD.")
        path = entry.path
        if path == record_path or "__pycache__" in path.split("/")[:-1]:
            continue  # RECORD is written anew; __pycache__ members are skipped, as installer does
        scheme, spath = _scheme_of(wheel, path, data_dir, root_scheme, SCHEME_NAMES)
        sdir = os.path.join(top, SCHEME_DIRS[scheme])
        dest = os.path.normpath(os.path.join(sdir, spath))
        if not dest.startswith(sdir + os.sep):
            raise FormatError(wheel, f"Attempting to write {spath} outside of the target directory")
        mode = e.external_attr >> 16
        executable = bool(mode and stat.S_ISREG(mode) and mode & 0o111) or scheme == "scripts"
        members.append(Member(e, scheme, spath, dest, executable, scheme == "scripts", check_hash, check_size,
                              scheme in ("purelib", "platlib") and dest.endswith(".py")))
    if issues:
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise FormatError(wheel, f"{issues[0]}{more} ({RECORD_HINT})")
    dirs: set[str] = {os.path.dirname(m.dest) for m in members}
    if scripts:
        dirs.add(os.path.join(top, SCHEME_DIRS["scripts"]))
    dirs.add(os.path.join(top, SCHEME_DIRS[root_scheme], dist_info))
    return Plan(root_scheme, dist_info, members, scripts, sorted(dirs))


def _scheme_of(wheel: str, path: str, data_dir: str, root_scheme: str, scheme_names: Any) -> tuple[str, str]:
    """installer's _determine_scheme (which loops forever on a member named like the .data directory)."""
    if not path.startswith(data_dir + "/"):
        return root_scheme, path
    rest = path[len(data_dir) + 1:]
    scheme, sep, inner = rest.partition("/")
    if not sep or not inner or scheme not in scheme_names:
        raise FormatError(wheel, f"{path} is not contained in a valid .data subdirectory.")
    return scheme, inner


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Written(NamedTuple):
    scheme: str
    path: str
    digest: str  # urlsafe b64 sha256 of the written bytes
    size: int


def extract(wheel: str, arc: WheelArchive, m: Member, interpreter: str, inflate: Any,
            cancel: threading.Event | Either) -> Written:
    """Write one member to m.dest (O_EXCL: a second file at the same place is an error),
    inflating, hashing and checking as it goes; FormatError for a corrupt or mismatching one."""
    import hashlib

    e = m.entry
    where = f"{wheel}!{e.name}"
    try:
        fd = os.open(m.dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     EXEC_MODE if m.executable else FILE_MODE)
    except FileExistsError:
        raise FormatError(wheel, f"{m.path} is written twice (File already exists)") from None
    except (NotADirectoryError, IsADirectoryError):
        raise FormatError(wheel, f"{m.path}: a file and a directory of the same name") from None
    out_hash = hashlib.sha256()
    algo = m.record_hash[0] if m.record_hash is not None else None
    check = None if algo is None or (algo == "sha256" and not m.fix_shebang) else hashlib.new(algo)
    use_crc = m.record_hash is None  # a RECORD hash that is checked is the stronger check
    crc = 0
    produced = 0
    written = 0
    shebang = m.fix_shebang
    head = b""
    skipping_line = False
    try:
        d = inflate.decompressobj(-15) if e.method == DEFLATED else None
        consumed = 0
        pending: bytes | memoryview = b""
        while True:
            if cancel.is_set():
                raise Cancelled()
            if d is None:
                n = min(_OUT, e.compress_size - consumed)
                out: bytes = os.pread(arc.fd, n, e.data_offset + consumed) if n > 0 else b""
                if len(out) != n:
                    raise FormatError(where, "truncated zip: the member's data ends early")
                consumed += n
                done = consumed >= e.compress_size
            else:
                if not pending:
                    n = min(_IN, e.compress_size - consumed)
                    pending = os.pread(arc.fd, n, e.data_offset + consumed) if n > 0 else b""
                    if len(pending) != n:
                        raise FormatError(where, "truncated zip: the member's data ends early")
                    consumed += n
                try:
                    out = d.decompress(pending, _OUT) if pending else d.flush()
                except (zlib.error, inflate.error, ValueError, OSError) as err:
                    raise FormatError(where, f"corrupt deflated data ({err})") from None
                pending = d.unconsumed_tail
                done = d.eof or (not pending and not out and consumed >= e.compress_size)
            produced += len(out)
            if produced > e.file_size:
                raise FormatError(where, "deflated data is longer than the member's declared size")
            if out:
                if use_crc:
                    crc = inflate.crc32(out, crc)
                if check is not None:
                    check.update(out)
                if shebang:  # "#!python..." -> "#!<interpreter>\n", as installer's fix_shebang
                    head += out
                    if len(head) < 8 and not done:
                        continue
                    shebang = False
                    if head[:8] == b"#!python":
                        new = f"#!{interpreter}\n".encode()
                        out_hash.update(new)
                        _write_all(fd, new)
                        written += len(new)
                        skipping_line = True
                    out = head
                if skipping_line:
                    nl = out.find(b"\n")
                    if nl < 0:
                        out = b""
                    else:
                        out = out[nl + 1:]
                        skipping_line = False
                out_hash.update(out)
                _write_all(fd, out)
                written += len(out)
            if done:
                break
        if shebang and head:  # fewer than 8 bytes in all
            out_hash.update(head)
            _write_all(fd, head)
            written += len(head)
        if d is not None and not d.eof:
            raise FormatError(where, "deflated data ends early (truncated or corrupt)")
        if produced != e.file_size:
            raise FormatError(where, f"{produced} bytes inflated, the zip says {e.file_size}: corrupt")
        if use_crc and crc != e.crc:
            raise FormatError(where, "CRC-32 mismatch: the member is corrupt")
    finally:
        os.close(fd)
    digest = record_digest(out_hash.digest())
    if m.record_hash is not None:
        got = digest if check is None else record_digest(check.digest())
        if got != m.record_hash[1] or (m.record_size is not None and produced != m.record_size):
            raise FormatError(wheel, f"hash / size of {e.name} didn't match RECORD ({RECORD_HINT})")
    elif m.record_size is not None and produced != m.record_size:
        raise FormatError(wheel, f"hash / size of {e.name} didn't match RECORD ({RECORD_HINT})")
    return Written(m.scheme, m.path, digest, written)


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Compiler:
    """Bytecode workers for one root: processes of the target interpreter fed (source, ddir)
    pairs on stdin, each pair to the worker with the fewest source bytes queued. Started
    lazily; finish() closes their input and waits; kill() stops them; both reap them."""

    def __init__(self, python: str, max_workers: int, total_bytes: int, cancel: threading.Event) -> None:
        self.python = python
        self.want = max(1, min(max_workers, -(-total_bytes // _PY_BYTES_PER_WORKER)))
        self.cancel = cancel
        self.procs: list[subprocess.Popen[bytes]] = []
        self.load: list[int] = []
        self.lock = threading.Lock()
        self.stopped = False

    def _start(self) -> None:
        import subprocess
        import sys

        opt = ["-" + "O" * sys.flags.optimize] if sys.flags.optimize else []
        # The same process state for every worker, so that the bytes of a .pyc depend on the
        # source and the interpreter only: marshal writes a set constant in hash order (fixed
        # seed) and flags a string as interned when the process has interned it (no site:
        # only the stdlib modules the worker itself imports).
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONINSPECT")}
        env["PYTHONHASHSEED"] = "0"
        try:
            p = subprocess.Popen([self.python, "-S", *opt, "-c", _WORKER], stdin=subprocess.PIPE, bufsize=0,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        except OSError as e:
            raise UsageError(f"--python {self.python}: cannot run: {e.strerror or e}") from None
        self.procs.append(p)
        self.load.append(0)

    def add(self, src: str, site: str, size: int) -> None:
        rel_dir = os.path.relpath(os.path.dirname(src), site)
        ddir = "site-packages" if rel_dir == "." else "site-packages/" + rel_dir.replace(os.sep, "/")
        msg = os.fsencode(src) + b"\0" + os.fsencode(ddir) + b"\0"
        with self.lock:
            if self.stopped:
                raise Cancelled()
            if len(self.procs) < self.want:
                self._start()
            i = min(range(len(self.procs)), key=self.load.__getitem__)
            self.load[i] += size + 2048
            stdin = self.procs[i].stdin
            assert stdin is not None
            try:
                _write_all(stdin.fileno(), msg)
            except BrokenPipeError:
                raise UsageError(f"--python {self.python}: the bytecode compiler stopped early") from None

    def finish(self) -> None:
        """Close the workers' input and wait for them; UsageError when one failed."""
        import subprocess

        with self.lock:
            for p in self.procs:
                assert p.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    p.stdin.close()
            for p in self.procs:
                while True:
                    if self.cancel.is_set():
                        raise Cancelled()
                    try:
                        rc = p.wait(timeout=0.05)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                if rc != 0:
                    raise UsageError(f"--python {self.python}: the bytecode compiler failed (exit status {rc})")

    def stop(self) -> None:
        """Kill the workers (not waiting: kill() reaps them); no more are started."""
        self.stopped = True
        for p in list(self.procs):
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()

    def kill(self) -> None:
        """Kill the workers and reap them."""
        self.stop()
        for p in self.procs:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
            p.wait()


def install(wheel: str, arc: WheelArchive, top: str, interpreter: str, *, verify_record: bool,
            compile_bytecode: bool, pool: ThreadPoolExecutor | None, cancel: threading.Event,
            inflate: Any = None, max_compilers: int | None = None) -> None:
    """Write the wheel's files, launchers, INSTALLER, RECORD and (when asked) bytecode under
    `top` (an empty directory). `pool` takes the large members (None: all in this thread);
    `cancel` is set by the caller to stop; this sets it itself on its own failure. Every
    worker thread and process it started is finished or stopped and reaped on return."""
    from installer.records import Hash, RecordEntry
    from installer.utils import construct_record_file

    inflate = inflate if inflate is not None else inflate_module()
    p = plan(wheel, arc, top, interpreter, verify_record)
    for d in p.dirs:
        os.makedirs(d, mode=DIR_MODE, exist_ok=True)
    site = os.path.join(top, "site-packages")
    py_bytes = sum(m.entry.file_size for m in p.members if m.compile)
    compiler = (Compiler(interpreter, max_compilers or cpu_count(), py_bytes, cancel)
                if compile_bytecode and py_bytes else None)
    local = threading.Event()  # this wheel's own stop signal: the caller's, or a failure here
    done: list[Written] = []
    futures: list[Future[Written]] = []
    mine = Either(cancel, local)

    def one(m: Member) -> Written:
        w = extract(wheel, arc, m, interpreter, inflate, mine)
        if compiler is not None and m.compile:
            compiler.add(m.dest, site, m.entry.file_size)
        return w

    def pooled(m: Member) -> Written:
        try:
            return one(m)
        except BaseException:
            local.set()  # the other members stop early
            raise

    try:
        # Scripts first, then members in zip order, then INSTALLER: installer's order, so a
        # member at a launcher's path is the same error.
        records: list[tuple[str, Any]] = []
        bin_dir = os.path.join(top, SCHEME_DIRS["scripts"])
        for name, data in p.scripts:
            dest = os.path.normpath(os.path.join(bin_dir, name))
            if not dest.startswith(bin_dir + os.sep):
                raise FormatError(wheel, f"entry point {name!r}: Attempting to write {name} outside of the target "
                                         "directory")
            os.makedirs(os.path.dirname(dest), mode=DIR_MODE, exist_ok=True)
            _write_new(wheel, dest, data, EXEC_MODE)
            records.append(("scripts", _entry(RecordEntry, Hash, name, data)))
        big = sorted((m for m in p.members if pool is not None and m.entry.file_size >= BIG),
                     key=lambda m: -m.entry.compress_size)
        for m in big:
            assert pool is not None
            futures.append(pool.submit(pooled, m))
        big_set = {id(m) for m in big}
        for m in p.members:
            if id(m) not in big_set:
                done.append(one(m))
        for f in futures:
            done.append(f.result())
        installer_path = f"{p.dist_info}/INSTALLER"
        _write_new(wheel, os.path.join(top, SCHEME_DIRS[p.root_scheme], installer_path), INSTALLER_NAME, FILE_MODE)
        for w in done:
            records.append((w.scheme, RecordEntry(w.path, Hash("sha256", w.digest), w.size)))
        records.append((p.root_scheme, _entry(RecordEntry, Hash, installer_path, INSTALLER_NAME)))
        record_path = f"{p.dist_info}/RECORD"
        records.append((p.root_scheme, RecordEntry(record_path, None, None)))
        root_dir = os.path.join(top, SCHEME_DIRS[p.root_scheme])

        def prefix(scheme: str) -> str | None:
            if scheme == p.root_scheme:
                return None
            return os.path.relpath(os.path.join(top, SCHEME_DIRS[scheme]), start=root_dir) + "/"

        with construct_record_file(records, prefix) as stream:  # type: ignore[arg-type]
            _write_new(wheel, os.path.join(root_dir, record_path), stream.read(), FILE_MODE)
        if compiler is not None:
            compiler.finish()
    except BaseException as exc:
        local.set()
        for f in futures:
            f.cancel()
        if compiler is not None:
            compiler.stop()  # first: a thread blocked writing to a worker that hangs gets EPIPE
        first: BaseException | None = None
        for f in futures:
            try:
                err = f.exception()  # waits: no thread writes under `top` once this returns
            except BaseException:  # cancelled before it started
                err = None
            if first is None and err is not None and not isinstance(err, Cancelled):
                first = err
        if compiler is not None:
            compiler.kill()
        if isinstance(exc, Cancelled) and first is not None and not cancel.is_set():
            raise first from None  # a pooled member failed and stopped this thread: its error, not ours
        raise


class Either:
    """is_set() of two events: the caller's and this wheel's own."""

    __slots__ = ("a", "b")
    a: threading.Event
    b: threading.Event

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()


def _entry(record_entry: Callable[..., Any], hash_cls: Callable[..., Any], path: str, data: bytes) -> Any:
    import hashlib

    return record_entry(path, hash_cls("sha256", record_digest(hashlib.sha256(data).digest())), len(data))


def _write_new(wheel: str, dest: str, data: bytes, mode: int) -> None:
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        raise FormatError(wheel, f"{os.path.basename(dest)} is written twice (File already exists)") from None
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


__all__ = ["BIG", "RECORD_HINT", "SCHEME_DIRS", "Cancelled", "Compiler", "cpu_count", "inflate_module", "install",
           "plan"]
