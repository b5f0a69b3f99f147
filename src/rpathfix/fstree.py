"""A file-tree view, and path resolution exactly as the kernel does it.

The loader models and the planner never touch the disk directly: they ask a FileTree.
RealTree answers from the file system; OverlayTree answers for a planned venv that
does not exist yet (its directories, symlinks and copied files), falling back to the
real tree elsewhere. So one simulation checks a layout before and after it is written.

resolve() follows symlinks component by component and applies `..` to the resolved
directory, as the kernel does: `$ORIGIN/..` under a symlinked directory climbs from
the link's target (LOADERS.md rule 17, experiment O2b).
"""

from __future__ import annotations

import os
import posixpath
import stat

from rpathfix.source import FileSource
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Literal, Protocol

    from rpathfix.source import ByteSource

    Kind = Literal["file", "dir", "link", "other"]

# Linux gives ELOOP after 40 symlinks in one resolution.
MAX_SYMLINKS = 40


class Node(NamedTuple):
    """What lstat says about one path: its kind and, for a link, its target string."""

    kind: Kind
    target: str | None = None  # symlink target, verbatim
    mode: int = 0
    size: int = 0  # of a regular file on disk (0 in a planned tree)
    mtime_ns: int = 0


if TYPE_CHECKING:  # an interface for the type checker; nothing subclasses it (static.py)

    class FileTree(Protocol):
        """The read-only questions the loader and planner ask of a tree of files."""

        def lstat(self, path: str) -> Node | None:
            """The entry at an absolute path whose parent directories are already resolved."""
            ...

        def listdir(self, path: str) -> list[str]:
            """Names in a resolved directory, sorted."""
            ...

        def open(self, path: str) -> ByteSource:
            """A byte source for a resolved regular file."""
            ...


class RealTree:
    """The real file system."""

    def lstat(self, path: str) -> Node | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            try:
                return Node("link", os.readlink(path), st.st_mode)
            except OSError:
                return None
        if stat.S_ISDIR(st.st_mode):
            return Node("dir", None, st.st_mode)
        if stat.S_ISREG(st.st_mode):
            return Node("file", None, st.st_mode, st.st_size, st.st_mtime_ns)
        return Node("other", None, st.st_mode)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def scan(self, path: str) -> list[tuple[str, Kind]]:
        """Names and kinds in one directory from readdir's d_type: no stat per entry, which
        is what makes walking torch's 20,000 files cheap."""
        out: list[tuple[str, Kind]] = []
        try:
            with os.scandir(path) as it:
                for e in it:
                    try:
                        if e.is_symlink():
                            out.append((e.name, "link"))
                        elif e.is_dir(follow_symlinks=False):
                            out.append((e.name, "dir"))
                        elif e.is_file(follow_symlinks=False):
                            out.append((e.name, "file"))
                        else:
                            out.append((e.name, "other"))
                    except OSError:
                        continue
        except OSError:
            return []
        out.sort()
        return out

    def open(self, path: str) -> ByteSource:
        return FileSource(path)


class Planned(NamedTuple):
    """One entry of a planned tree: a real directory, a symlink, or a file copied from source."""

    kind: Literal["dir", "link", "file"]
    target: str | None = None  # link target (verbatim) or, for "file", the source path to copy
    mode: int = 0o755


class OverlayTree:
    """A planned tree mounted at `root`, over a base tree that answers for everything else.

    Paths under root exist only if planned: nothing of the base shows through there, as
    in a freshly written venv.
    """

    def __init__(self, base: FileTree, root: str, entries: dict[str, Planned]) -> None:
        self.base = base
        self.root = root.rstrip("/") or "/"
        self.entries = dict(entries)
        self.entries.setdefault(self.root, Planned("dir"))
        # Every parent of a planned entry is a directory.
        for p in list(self.entries):
            parent = posixpath.dirname(p)
            while parent.startswith(self.root) and parent not in self.entries:
                self.entries[parent] = Planned("dir")
                parent = posixpath.dirname(parent)
        self._children: dict[str, list[str]] = {}
        for p in self.entries:
            if p != self.root:
                self._children.setdefault(posixpath.dirname(p), []).append(posixpath.basename(p))
        for names in self._children.values():
            names.sort()

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + "/")

    def lstat(self, path: str) -> Node | None:
        if not self._inside(path):
            return self.base.lstat(path)
        e = self.entries.get(path)
        if e is None:
            return None
        if e.kind == "link":
            return Node("link", e.target, 0o777)
        if e.kind == "dir":
            return Node("dir", None, 0o755)
        return Node("file", None, e.mode)

    def listdir(self, path: str) -> list[str]:
        if not self._inside(path):
            return self.base.listdir(path)
        return list(self._children.get(path, []))

    def scan(self, path: str) -> list[tuple[str, Kind]]:
        if not self._inside(path):
            return scan(self.base, path)
        out: list[tuple[str, Kind]] = []
        for name in self._children.get(path, []):
            node = self.lstat(posixpath.join(path, name))
            if node is not None:
                out.append((name, node.kind))
        return out

    def open(self, path: str) -> ByteSource:
        if self._inside(path):
            e = self.entries.get(path)
            if e is not None and e.kind == "file" and e.target is not None:
                return self.base.open(e.target)
        return self.base.open(path)


def scan(tree: FileTree, path: str) -> list[tuple[str, Kind]]:
    """(name, kind) of each entry of a resolved directory, sorted by name: through the
    tree's own fast `scan` when it has one, else one lstat per entry."""
    fast = getattr(tree, "scan", None)
    if fast is not None:
        result: list[tuple[str, Kind]] = fast(path)
        return result
    out: list[tuple[str, Kind]] = []
    for name in tree.listdir(path):
        node = tree.lstat(posixpath.join(path, name))
        if node is not None:
            out.append((name, node.kind))
    return out


def resolve(tree: FileTree, path: str, cwd: str = "/") -> str | None:
    """The physical path `path` names, following every symlink; None if it does not exist.

    `..` applies to the directory reached so far, after its symlinks are resolved,
    which is what open(2) does. A dangling link, a loop or a non-directory in the
    middle gives None.
    """
    if not path.startswith("/"):
        path = posixpath.join(cwd, path)
    if isinstance(tree, CachedTree):
        return tree.resolve(path)
    return _walk(tree, path)


def _walk(tree: FileTree, path: str) -> str | None:
    """resolve() for an absolute path, component by component."""
    pending = [c for c in path.split("/") if c not in ("", ".")]
    pending.reverse()
    current = "/"
    links = 0
    while pending:
        comp = pending.pop()
        if comp == "..":
            current = posixpath.dirname(current) if current != "/" else "/"
            continue
        candidate = posixpath.join(current, comp)
        node = tree.lstat(candidate)
        if node is None:
            return None
        if node.kind == "link":
            links += 1
            if links > MAX_SYMLINKS or node.target is None:
                return None
            target = node.target
            if target.startswith("/"):
                current = "/"
            parts = [c for c in target.split("/") if c not in ("", ".")]
            pending.extend(reversed(parts))
            continue
        if pending and node.kind != "dir":
            return None
        current = candidate
    return current


def exists(tree: FileTree, path: str) -> bool:
    return resolve(tree, path) is not None


def regular_file(tree: FileTree, path: str) -> tuple[str, Node] | None:
    """(physical path, its lstat) when `path` names a regular file, following every link."""
    real = resolve(tree, path)
    if real is None:
        return None
    node = tree.lstat(real)
    return (real, node) if node is not None and node.kind == "file" else None


def is_file(tree: FileTree, path: str) -> bool:
    return regular_file(tree, path) is not None


def is_dir(tree: FileTree, path: str) -> bool:
    real = resolve(tree, path)
    if real is None:
        return False
    node = tree.lstat(real)
    return node is not None and node.kind == "dir"


def read_small(tree: FileTree, path: str, limit: int) -> bytes | None:
    """The whole content of a regular file of at most `limit` bytes, else None."""
    found = regular_file(tree, path)
    if found is None:
        return None
    src = tree.open(found[0])
    try:
        if src.size > limit:
            return None
        return src.read_at(0, src.size)
    finally:
        src.close()


class CachedTree:
    """A FileTree that remembers every answer of the tree below it.

    A verify asks the same questions thousands of times (the walk, then every simulated
    load), and building a venv asks them of the roots for the plan and again for the check
    of the planned venv: one cache serves them all. It assumes the tree does not change
    while it is used.
    """

    def __init__(self, base: FileTree, memo: dict[tuple[str, str], object] | None = None) -> None:
        self.base = base
        self._lstat: dict[str, Node | None] = {}
        self._resolve: dict[str, str | None] = {}
        self._scan: dict[str, list[tuple[str, Kind]]] = {}
        # Parsed headers, keyed by (kind, real path). A view of a planned venv shares the
        # roots' memo: a real path outside the venv has the same bytes in both.
        self.memo: dict[tuple[str, str], object] = {} if memo is None else memo
        self._busy: set[str] = set()

    def lstat(self, path: str) -> Node | None:
        try:
            return self._lstat[path]
        except KeyError:
            node = self._lstat[path] = self.base.lstat(path)
            return node

    def listdir(self, path: str) -> list[str]:
        return [name for name, _ in self.scan(path)] if hasattr(self.base, "scan") else self.base.listdir(path)

    def scan(self, path: str) -> list[tuple[str, Kind]]:
        try:
            return self._scan[path]
        except KeyError:
            out = self._scan[path] = scan(self.base, path)
            return out

    def open(self, path: str) -> ByteSource:
        return self.base.open(path)

    def resolve(self, path: str) -> str | None:
        """resolve() with every prefix remembered: the parent is resolved once for all its
        children, then one component is applied, as the kernel does (`..` from the parent's
        physical path)."""
        if not path.startswith("/"):
            return _walk(self, path)
        try:
            return self._resolve[path]
        except KeyError:
            pass
        if path in self._busy or len(self._busy) > MAX_SYMLINKS * 8:
            return None  # a symlink loop (ELOOP)
        self._busy.add(path)
        try:
            real = self._resolve_one(path)
        finally:
            self._busy.discard(path)
        self._resolve[path] = real
        return real

    def _resolve_one(self, path: str) -> str | None:
        parent, base = posixpath.split(path.rstrip("/"))
        if not base:
            return "/"
        rp = self.resolve(parent or "/")
        if rp is None:
            return None
        if rp != "/":
            pnode = self.lstat(rp)
            if pnode is None or pnode.kind != "dir":
                return None  # ENOTDIR
        if base == ".":
            return rp
        if base == "..":
            return posixpath.dirname(rp)
        cand = rp + base if rp == "/" else rp + "/" + base
        node = self.lstat(cand)
        if node is None:
            return None
        if node.kind == "link":
            if node.target is None or node.target == "":
                return None
            target = node.target if node.target.startswith("/") else posixpath.join(rp, node.target)
            return self.resolve(target.rstrip("/") or "/")
        return cand


def as_cached(tree: FileTree) -> CachedTree:
    return tree if isinstance(tree, CachedTree) else CachedTree(tree)
