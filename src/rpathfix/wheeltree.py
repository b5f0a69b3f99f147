"""Wheels seen as installed distribution roots, without unpacking them.

`rpathfix repair` plans against the layout the wheels will have once installed, with the same
planner and loader model `rpathfix venv` uses on roots written by `rpathfix unpack`. Unpacking
a 2 GB wheel to read the headers of its 100 libraries would cost seconds and gigabytes; so a
WheelTree mounts each wheel at its own file path, as a root directory laid out as the installer
would lay it out (`site-packages/`, `bin/`, `include/`, `data/`), and answers the planner's and
loader's questions (lstat, listdir, open) from the zip's central directory. Everything outside
a mount is answered by the base tree (the real file system: the interpreter, ld.so.cache, the
system's library directories, and sibling roots given as directories).

The root's RECORD is the one an installer would write (paths relative to site-packages), so
the planner finds the native files of a wheel whatever `.data/` scheme directory holds them.
"""

from __future__ import annotations

import posixpath
import stat

from rpathfix.errors import FormatError
from rpathfix.fstree import Node
from rpathfix.source import BytesSource
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rpathfix.fstree import FileTree, Kind
    from rpathfix.source import ByteSource
    from rpathfix.wheelfile import WheelArchive

# `<name>-<version>.data/<scheme>/...` -> the root directory the installer writes it to
# (purelib and platlib both land in site-packages: the planner's one site directory).
DATA_SCHEMES = {"purelib": "site-packages", "platlib": "site-packages", "scripts": "bin",
                "headers": "include", "data": "data"}
_DIR = Node("dir", None, stat.S_IFDIR | 0o755)
# Threads reading members' headers at once (read_headers).
READERS = 2


def install_path(member: str, data_dir: str) -> str | None:
    """Where an installer puts a wheel member, relative to the root (None: not installed, such
    as a directory entry or an unknown `.data/` scheme)."""
    if member.endswith("/"):
        return None
    if member.startswith(data_dir + "/"):
        scheme, _, rest = member[len(data_dir) + 1:].partition("/")
        kind = DATA_SCHEMES.get(scheme)
        if kind is None or not rest:
            return None
        return f"{kind}/{rest}"
    return f"site-packages/{member}"


class _Mount:
    """One wheel's root: directories, files (path -> member) and the synthesized RECORD."""

    __slots__ = ("archive", "dirs", "files", "members", "record", "record_path")

    def __init__(self, archive: WheelArchive) -> None:
        self.archive = archive
        dist_info = archive.dist_info()
        data_dir = dist_info[: -len(".dist-info")] + ".data"
        self.files: dict[str, str] = {}  # root-relative path -> member name
        self.members: dict[str, str] = {}  # member name -> root-relative path
        self.dirs: dict[str, dict[str, Kind]] = {"": {}}
        for e in archive.entries:
            rel = install_path(e.name, data_dir)
            if rel is None:
                continue
            if rel in self.files:
                raise FormatError(archive.path, f"{e.name!r} and {self.files[rel]!r} install to the same path {rel}")
            self.files[rel] = e.name
            self.members[e.name] = rel
        self.record_path = f"site-packages/{dist_info}/RECORD"
        site_rels = sorted(r[len("site-packages/"):] for r in self.files if r.startswith("site-packages/"))
        self.record = "".join(f"{r},,\n" for r in site_rels).encode("utf-8", "surrogateescape")
        self.files[self.record_path] = ""  # served from self.record
        for rel in self.files:
            parts = rel.split("/")
            for i in range(len(parts)):
                parent = "/".join(parts[:i])
                kids = self.dirs.setdefault(parent, {})
                kind: Kind = "file" if i == len(parts) - 1 else "dir"
                if kids.get(parts[i], kind) != kind:
                    raise FormatError(archive.path, f"{'/'.join(parts[:i + 1])} is both a file and a directory")
                kids[parts[i]] = kind


class WheelTree:
    """A FileTree: `base`, with each wheel mounted as a root directory at its own (absolute) path."""

    def __init__(self, base: FileTree, archives: Sequence[WheelArchive]) -> None:
        self.base = base
        self._mounts: dict[str, _Mount] = {}
        for a in archives:
            self._mounts[posixpath.abspath(a.path)] = _Mount(a)

    def mount_path(self, archive: WheelArchive) -> str:
        return posixpath.abspath(archive.path)

    def read_headers(self) -> dict[tuple[str, str], object]:
        """The headers of every member that may be native (a library's name, or an exec
        bit), as a header memo for a CachedTree (sniff's keys): read once for the plans of
        all the wheels of one run. A deflated library's headers lie near its end (ELF's
        dynamic section after code and data: 284 MB in for onnxruntime-gpu's CUDA provider),
        so each read inflates most of the member (into the archive's spool, when it keeps
        one; else keeping inflater checkpoints, wheelfile.MemberSource).

        The members are read by READERS threads, the costliest first: zlib releases the GIL
        while it inflates, so two cores inflate two members at once (onnxruntime-gpu's five
        libraries: 0.43-0.61 s instead of 0.63-0.80 s here, benchmarks/README.md). Each
        member is read by one thread; what they share is the archive's file descriptor
        (pread), its spool table (locked) and the memo (one dict store per member). On an
        error or Ctrl-C the members not yet started are dropped, and the running reads end
        before it is raised."""
        from concurrent.futures import ThreadPoolExecutor

        from rpathfix.fstree import CachedTree
        from rpathfix.sniff import looks_like_library, read_binary_in

        memo: dict[tuple[str, str], object] = {}
        view = CachedTree(self, memo=memo)
        todo: list[tuple[int, str]] = []
        for root, m in self._mounts.items():
            for rel, member in m.files.items():
                if not member:
                    continue
                e = m.archive.by_name[member]
                name = rel.rsplit("/", 1)[-1]
                if looks_like_library(name) or ("." not in name and e.mode & 0o111):
                    todo.append((-e.compress_size, f"{root}/{rel}"))
        todo.sort()
        pool = ThreadPoolExecutor(READERS)
        try:
            for f in [pool.submit(read_binary_in, view, path) for _, path in todo]:
                f.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return memo

    def member(self, root: str, rel: str) -> str | None:
        """The wheel member installed at `rel` (root-relative) in the mount at `root`."""
        m = self._mounts.get(root)
        if m is None:
            return None
        name = m.files.get(rel)
        return name or None

    def _find(self, path: str) -> tuple[_Mount, str] | None:
        """(mount, root-relative path) when `path` lies in a mount."""
        i = path.find(".whl")
        while i >= 0:
            end = i + 4
            if end == len(path) or path[end] == "/":
                m = self._mounts.get(path[:end])
                if m is not None:
                    return m, path[end + 1:]
            i = path.find(".whl", end)
        return None

    def lstat(self, path: str) -> Node | None:
        found = self._find(path)
        if found is None:
            return self.base.lstat(path)
        m, rel = found
        if rel in m.dirs:
            return _DIR
        member = m.files.get(rel)
        if member is None:
            return None
        if member == "":
            return Node("file", None, stat.S_IFREG | 0o644, len(m.record))
        e = m.archive.by_name[member]
        mode = 0o755 if e.mode & 0o111 else 0o644  # what installers write (unpack.py does the same)
        return Node("file", None, stat.S_IFREG | mode, e.file_size)

    def listdir(self, path: str) -> list[str]:
        found = self._find(path)
        if found is None:
            return self.base.listdir(path)
        m, rel = found
        return sorted(m.dirs.get(rel, {}))

    def scan(self, path: str) -> list[tuple[str, Kind]]:
        found = self._find(path)
        if found is None:
            from rpathfix.fstree import scan

            return scan(self.base, path)
        m, rel = found
        return sorted(m.dirs.get(rel, {}).items())

    def open(self, path: str) -> ByteSource:
        found = self._find(path)
        if found is None:
            return self.base.open(path)
        m, rel = found
        member = m.files.get(rel)
        if member is None:
            raise FormatError(path, "no such file")
        if member == "":
            return BytesSource(path, m.record)
        return m.archive.source(member)


__all__ = ["DATA_SCHEMES", "WheelTree", "install_path"]
