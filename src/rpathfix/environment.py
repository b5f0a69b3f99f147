"""What a Python environment looks like to the loader: its sys.path directories, its
interpreter, and every native file in it.

A venv (pyvenv.cfg), a site-packages directory, or several directories that form a
sys.path (the split per-wheel layout). Directory symlinks are followed, as Python
follows them, and every file is reached through the path Python would use, because
glibc's $ORIGIN is the path as opened (LOADERS.md rule 17).
"""

from __future__ import annotations

import os
import posixpath

from rpathfix.errors import UsageError
from rpathfix.fstree import is_dir, is_file, read_small, resolve
from rpathfix.fstree import scan as fs_scan
from rpathfix.model import ElfInfo, MachoInfo
from rpathfix.sniff import looks_like_library, may_be_native, read_binary_in
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree
    from rpathfix.model import BinaryInfo

# A bound on the walk, so a hostile or accidental loop cannot make it run forever.
MAX_ENTRIES = 2_000_000


class NativeFile(NamedTuple):
    """A native file as Python would reach it: its view path, real path and headers."""

    path: str
    realpath: str
    info: BinaryInfo
    site_dir: str  # the sys.path entry it was found under

    @property
    def is_extension(self) -> bool:
        if isinstance(self.info, ElfInfo):
            return self.info.is_extension
        return any(s.is_extension for s in self.info.slices)

    @property
    def names(self) -> tuple[str, ...]:
        """Names a loader could match this file by: its file name and SONAME / install name leaf."""
        out = [posixpath.basename(self.path)]
        if isinstance(self.info, ElfInfo) and self.info.soname:
            out.append(self.info.soname)
        if isinstance(self.info, MachoInfo):
            out += [posixpath.basename(s.install_name) for s in self.info.slices if s.install_name]
        return tuple(dict.fromkeys(out))


class Environment(NamedTuple):
    site_dirs: tuple[str, ...]
    interpreter: str | None  # the venv's bin/python, when the environment is a venv
    files: tuple[NativeFile, ...]


def site_dirs_of(tree: FileTree, paths: list[str]) -> tuple[list[str], str | None]:
    """sys.path directories and interpreter for venv / site-packages / split-layout arguments."""
    dirs: list[str] = []
    interpreter = None
    for p in paths:
        p = os.path.abspath(p)
        if not is_dir(tree, p):
            raise UsageError(f"{p}: not a directory; pass a venv, a site-packages or sys.path directories")
        if is_file(tree, posixpath.join(p, "pyvenv.cfg")):
            lib = posixpath.join(p, "lib")
            found = [posixpath.join(lib, n, "site-packages") for n in tree.listdir(lib) if n.startswith("python")]
            found = [d for d in found if is_dir(tree, d)]
            if not found:
                raise UsageError(f"{p}: a venv without lib/pythonX.Y/site-packages")
            dirs += found
            py = posixpath.join(p, "bin", "python")
            if interpreter is None and resolve(tree, py) is not None:
                interpreter = py
        elif is_dir(tree, posixpath.join(p, "site-packages")) and not _has_dist_info(tree, p):
            dirs.append(posixpath.join(p, "site-packages"))  # a distribution root
        else:
            dirs.append(p)
    return dirs, interpreter


def _has_dist_info(tree: FileTree, d: str) -> bool:
    return any(n.endswith(".dist-info") for n in tree.listdir(d))


def collect(tree: FileTree, paths: list[str]) -> Environment:
    """Walk the environment and read every native file once (by real path)."""
    dirs, interpreter = site_dirs_of(tree, paths)
    files: list[NativeFile] = []
    seen_real: set[str] = set()
    budget = MAX_ENTRIES
    for site in dirs:
        visited: set[str] = set()
        stack = [site]
        while stack:
            d = stack.pop()
            real_d = resolve(tree, d)
            if real_d is None or real_d in visited:
                continue
            visited.add(real_d)
            for name, kind in reversed(fs_scan(tree, real_d)):
                budget -= 1
                if budget < 0:
                    raise UsageError(f"{site}: more than {MAX_ENTRIES} entries; is there a symlink loop?")
                if kind == "file" and not may_be_native(name):
                    continue  # not a library name, and executables have no suffix: no stat needed
                path = posixpath.join(d, name)
                real: str | None = posixpath.join(real_d, name)  # the parent is already resolved
                mode = 0
                if kind == "link":  # only links need a full resolution and a stat
                    real = resolve(tree, posixpath.join(real_d, name))
                    node = tree.lstat(real) if real is not None else None
                    if node is None:
                        continue
                    kind, mode = node.kind, node.mode
                if real is None:
                    continue
                if kind == "dir":
                    stack.append(path)
                    continue
                if kind != "file" or real in seen_real:
                    continue
                if not looks_like_library(name):
                    if mode == 0:
                        node = tree.lstat(real)
                        mode = node.mode if node is not None else 0
                    if not mode & 0o111:
                        continue
                _take(tree, files, seen_real, path, real, site)
    files.sort(key=lambda f: f.path)
    return Environment(tuple(dirs), interpreter, tuple(files))


def environment_of(tree: FileTree, site_dir: str, interpreter: str | None, paths: list[str]) -> Environment:
    """The environment of one site dir whose native files are already known, without a walk.

    A planned venv is checked this way: the plan knows every native file it places, so
    walking the planned tree again would only find the same files.
    """
    files: list[NativeFile] = []
    seen_real: set[str] = set()
    for path in paths:
        real = resolve(tree, path)
        if real is not None and real not in seen_real:
            _take(tree, files, seen_real, path, real, site_dir)
    files.sort(key=lambda f: f.path)
    return Environment((site_dir,), interpreter, tuple(files))


def _take(tree: FileTree, files: list[NativeFile], seen_real: set[str], path: str, real: str, site: str) -> None:
    """Add the file at `path` (physical `real`) when it is ELF or Mach-O: once per physical file,
    under the first path Python reaches it by."""
    info = read_binary_in(tree, real)
    if info is not None:
        seen_real.add(real)
        files.append(NativeFile(path, real, info, site))


def pyvenv_home(tree: FileTree, venv: str) -> str | None:
    """The `home` key of a venv's pyvenv.cfg (where its base interpreter lives)."""
    data = read_small(tree, posixpath.join(venv, "pyvenv.cfg"), 1 << 16)
    if data is None:
        return None
    for line in data.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return value.strip()
    return None
