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
from dataclasses import dataclass
from typing import Literal, Protocol

from rpathfix.source import ByteSource, FileSource

Kind = Literal["file", "dir", "link", "other"]

# Linux gives ELOOP after 40 symlinks in one resolution.
MAX_SYMLINKS = 40


@dataclass(frozen=True)
class Node:
    """What lstat says about one path: its kind and, for a link, its target string."""

    kind: Kind
    target: str | None = None  # symlink target, verbatim
    mode: int = 0


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
            return Node("file", None, st.st_mode)
        return Node("other", None, st.st_mode)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def open(self, path: str) -> ByteSource:
        return FileSource(path)


@dataclass(frozen=True)
class Planned:
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

    def open(self, path: str) -> ByteSource:
        if self._inside(path):
            e = self.entries.get(path)
            if e is not None and e.kind == "file" and e.target is not None:
                return self.base.open(e.target)
        return self.base.open(path)


def resolve(tree: FileTree, path: str, cwd: str = "/") -> str | None:
    """The physical path `path` names, following every symlink; None if it does not exist.

    `..` applies to the directory reached so far, after its symlinks are resolved,
    which is what open(2) does. A dangling link, a loop or a non-directory in the
    middle gives None.
    """
    if not path.startswith("/"):
        path = posixpath.join(cwd, path)
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


def is_file(tree: FileTree, path: str) -> bool:
    real = resolve(tree, path)
    if real is None:
        return False
    node = tree.lstat(real)
    return node is not None and node.kind == "file"


def is_dir(tree: FileTree, path: str) -> bool:
    real = resolve(tree, path)
    if real is None:
        return False
    node = tree.lstat(real)
    return node is not None and node.kind == "dir"


def read_small(tree: FileTree, path: str, limit: int) -> bytes | None:
    """The whole content of a regular file of at most `limit` bytes, else None."""
    real = resolve(tree, path)
    if real is None:
        return None
    node = tree.lstat(real)
    if node is None or node.kind != "file":
        return None
    src = tree.open(real)
    try:
        if src.size > limit:
            return None
        return src.read_at(0, src.size)
    finally:
        src.close()
