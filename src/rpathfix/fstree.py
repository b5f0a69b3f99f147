"""A file-tree view, and path resolution exactly as the kernel does it.

The loader models and the planner never touch the disk directly: they ask a FileTree.
RealTree answers from the file system; OverlayTree answers for a planned venv that
does not exist yet (its directories, symlinks and copied files), falling back to the
real tree elsewhere. So one simulation checks a layout before and after it is written.

lookup() is the one path resolver: it walks a path component by component as Linux's
path walk does (fs/namei.c link_path_walk), so it gives the errno open(2) would give:
ENOENT, ENOTDIR, ELOOP after 40 symlinks in one walk, EACCES for a directory that may not
be searched (or a file that may not be read) by the simulated user, ENAMETOOLONG. `..`
applies to the directory reached so far, after its symlinks are resolved: `$ORIGIN/..`
under a symlinked directory climbs from the link's target (LOADERS.md rule 17, experiment
O2b). The loader models act on each errno as the real loaders do (glibc: docs/loader-rules.md rule 38).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from rpathfix.source import FileSource
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Literal, Protocol

    from rpathfix.source import ByteSource

    Kind = Literal["file", "dir", "link", "other"]

# Linux's limits (include/linux/namei.h, include/uapi/linux/limits.h): following a 41st
# symlink in one path walk gives ELOOP (verified here: a chain of 40 links opens, 41 do not);
# a component longer than NAME_MAX bytes, or a path of PATH_MAX bytes with its NUL, gives
# ENAMETOOLONG.
MAX_SYMLINKS = 40
NAME_MAX = 255
PATH_MAX = 4096
ENOENT, ENOTDIR, ELOOP, EACCES, ENAMETOOLONG = errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.ENAMETOOLONG
SEARCH, READ = 1, 4  # permission bits: x (search a directory), r (open for reading)


class Node(NamedTuple):
    """What lstat says about one path: its kind and, for a link, its target string."""

    kind: Kind
    target: str | None = None  # symlink target, verbatim
    mode: int = 0
    size: int = 0  # of a regular file on disk (0 in a planned tree)
    mtime_ns: int = 0
    uid: int = -1  # owner; -1 (a planned entry): the simulated user's own
    gid: int = -1


DIR_NODE = Node("dir", None, 0o755)


class Credentials(NamedTuple):
    """Whose permission bits a path walk checks: the effective uid and every group (the
    kernel's fsuid and group list). A walk with None checks no bits, as for root, whom
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH let through any mode."""

    uid: int
    gids: frozenset[int]


def current_credentials() -> Credentials | None:
    """This process's credentials; None for root (no mode bit stops it)."""
    uid = os.geteuid()
    if uid == 0:
        return None
    return Credentials(uid, frozenset((os.getegid(), *os.getgroups())))


def permits(node: Node, cred: Credentials | None, bit: int) -> bool:
    """Whether `cred` has permission `bit` (SEARCH or READ) on `node`: the owner's bits for
    the owner, else the group's for a member, else the others' (generic_permission without
    ACLs)."""
    if cred is None:
        return True
    if node.uid < 0 or node.uid == cred.uid:
        mode = node.mode >> 6
    elif node.gid in cred.gids:
        mode = node.mode >> 3
    else:
        mode = node.mode
    return bool(mode & bit)


class Lookup(NamedTuple):
    """The outcome of one path walk: the physical path and its lstat, or the errno open(2)
    would give (then path and node are None)."""

    path: str | None
    node: Node | None
    error: int = 0
    links: int = 0  # symlinks followed, up to the error if there is one


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
                return Node("link", os.readlink(path), st.st_mode, 0, 0, st.st_uid, st.st_gid)
            except OSError:
                return None
        if stat.S_ISDIR(st.st_mode):
            return Node("dir", None, st.st_mode, 0, 0, st.st_uid, st.st_gid)
        if stat.S_ISREG(st.st_mode):
            return Node("file", None, st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)
        return Node("other", None, st.st_mode, 0, 0, st.st_uid, st.st_gid)

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


def lookup(tree: FileTree, path: str, cwd: str = "/", cred: Credentials | None = None, *,
           read: bool = False) -> Lookup:
    """Walk `path` (relative ones from `cwd`) as open(2) does, following every symlink.

    With `read`, the file reached must also be readable by `cred` (open with O_RDONLY).
    The one resolver: every question about where a path leads comes here.
    """
    if not path.startswith("/"):
        path = posixpath.join(cwd, path)
    if len(path) >= PATH_MAX // 4 and len(path.encode("utf-8", "surrogateescape")) >= PATH_MAX:
        return Lookup(None, None, ENAMETOOLONG)
    walker = tree.walker(cred) if isinstance(tree, CachedTree) else _Walker(tree, cred)
    found = walker.path(path)
    if read and found.node is not None and not permits(found.node, cred, READ):
        return Lookup(None, None, EACCES, found.links)
    return found


def resolve(tree: FileTree, path: str, cwd: str = "/") -> str | None:
    """The physical path `path` names, following every symlink; None when open(2) would fail
    (missing, a dangling link, a loop, a non-directory in the middle)."""
    return lookup(tree, path, cwd).path


class _Walker:
    """Linux's path walk over a FileTree for one set of credentials.

    A walk is a sequence of steps, each one component from a physical directory. A step's
    outcome depends only on (directory, component), so steps are remembered: resolving
    the 2,000 files of one directory walks its parents once. A symlink's target is walked
    from the link's directory (or from / when absolute); the links it follows add to the
    walk's count, and the 41st gives ELOOP wherever it is met. Nesting deeper than the
    limit is cut short with ELOOP (a loop, or a chain too long to ever resolve), and what
    was computed under a cut is not remembered: it would be wrong from a shallower start.
    """

    __slots__ = ("cred", "cuts", "paths", "steps", "tree")

    def __init__(self, tree: FileTree, cred: Credentials | None) -> None:
        self.tree = tree
        self.cred = cred
        self.steps: dict[tuple[str, str], Lookup] = {}
        self.paths: dict[str, Lookup] = {}
        self.cuts = 0

    def path(self, path: str) -> Lookup:
        """An absolute path, walked from /. The state of the walk after each textual prefix
        is remembered, so a new file in a known directory costs one step."""
        found = self.paths.get(path)
        if found is not None:
            return found
        # Climb to the longest prefix already walked (the root at worst)...
        pending: list[tuple[str, str]] = []  # (prefix, its last name), longest first
        prefix = path
        while True:
            cut = prefix.rfind("/")
            name = prefix[cut + 1:]
            if not name and prefix is path and len(path) > 1:
                name = "."  # "x/" must be a directory, as "x/." must
            pending.append((prefix, name))
            prefix = prefix[:cut] if cut > 0 else "/"
            found = self.root() if cut <= 0 else self.paths.get(prefix)
            if found is not None:
                break
        # ... then walk down from it, one name at a time.
        for prefix, name in reversed(pending):
            if not name:
                continue  # "a//b": nothing to walk, and "a/" is not remembered as "a" (not a dir check)
            if found.path is not None:
                step = self.step(found, name, 0)
                links = found.links + step.links
                if links > MAX_SYMLINKS:
                    found = Lookup(None, None, ELOOP, links)
                elif step.error:
                    found = Lookup(None, None, step.error, links)
                else:
                    found = Lookup(step.path, step.node, 0, links)
            self.paths[prefix] = found
        return found

    def walk(self, start: Lookup, rel: str, depth: int) -> Lookup:
        """`rel` (a symlink's target) walked from the directory `start` reached before it."""
        names = [c for c in rel.split("/") if c]
        if rel.endswith("/") and names:
            names.append(".")  # "x/" must be a directory, as "x/." must
        here, links = start, 0
        for name in names:
            step = self.step(here, name, depth)
            links += step.links
            if links > MAX_SYMLINKS:
                return Lookup(None, None, ELOOP, links)
            if step.error:
                return Lookup(None, None, step.error, links)
            here = step
        return Lookup(here.path, here.node, 0, links)

    def root(self) -> Lookup:
        found = self.paths.get("/")
        if found is None:
            node = self.tree.lstat("/")
            found = self.paths["/"] = Lookup("/", node if node is not None else DIR_NODE)
        return found

    def step(self, here: Lookup, name: str, depth: int) -> Lookup:
        assert here.path is not None
        key = (here.path, name)
        found = self.steps.get(key)
        if found is None:
            cuts = self.cuts
            found = self._step(here.path, here.node, name, depth)
            if self.cuts == cuts:
                self.steps[key] = found
        return found

    def _step(self, cur: str, node: Node | None, name: str, depth: int) -> Lookup:
        """One component from directory `cur` (may_lookup, then the lookup, then the link)."""
        if node is None or node.kind != "dir":
            return Lookup(None, None, ENOTDIR)
        if not permits(node, self.cred, SEARCH):
            return Lookup(None, None, EACCES)
        if name == ".":
            return Lookup(cur, node)
        if name == "..":
            parent = posixpath.dirname(cur)
            return Lookup(parent, self.tree.lstat(parent) or DIR_NODE)
        if len(name) > NAME_MAX // 4 and len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            return Lookup(None, None, ENAMETOOLONG)
        child = cur + name if cur == "/" else f"{cur}/{name}"
        entry = self.tree.lstat(child)
        if entry is None:
            return Lookup(None, None, ENOENT)
        if entry.kind != "link":
            return Lookup(child, entry)
        if depth >= MAX_SYMLINKS:
            self.cuts += 1
            return Lookup(None, None, ELOOP, MAX_SYMLINKS + 1)
        if not entry.target:
            return Lookup(None, None, ENOENT, 1)  # an empty symlink names nothing
        start = self.root() if entry.target.startswith("/") else Lookup(cur, node)
        found = self.walk(start, entry.target, depth + 1)
        links = found.links + 1
        if links > MAX_SYMLINKS:
            return Lookup(None, None, ELOOP, links)
        return Lookup(found.path, found.node, found.error, links)


def exists(tree: FileTree, path: str) -> bool:
    return resolve(tree, path) is not None


def regular_file(tree: FileTree, path: str) -> tuple[str, Node] | None:
    """(physical path, its lstat) when `path` names a regular file, following every link."""
    found = lookup(tree, path)
    if found.path is None or found.node is None or found.node.kind != "file":
        return None
    return found.path, found.node


def is_file(tree: FileTree, path: str) -> bool:
    return regular_file(tree, path) is not None


def is_dir(tree: FileTree, path: str) -> bool:
    node = lookup(tree, path).node
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
        self._walkers: dict[Credentials | None, _Walker] = {}
        self._scan: dict[str, list[tuple[str, Kind]]] = {}
        # Parsed headers, keyed by (kind, real path). A view of a planned venv shares the
        # roots' memo: a real path outside the venv has the same bytes in both.
        self.memo: dict[tuple[str, str], object] = {} if memo is None else memo

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

    def walker(self, cred: Credentials | None) -> _Walker:
        """The path walker of these credentials, remembering its steps for this tree's life."""
        w = self._walkers.get(cred)
        if w is None:
            w = self._walkers[cred] = _Walker(self, cred)
        return w

    def resolve(self, path: str) -> str | None:
        """resolve() of an absolute path, remembered."""
        return lookup(self, path).path


def as_cached(tree: FileTree) -> CachedTree:
    return tree if isinstance(tree, CachedTree) else CachedTree(tree)
