"""What a Python environment looks like to the loader: its sys.path directories, its
interpreter, and every native file in it.

A venv (pyvenv.cfg), a site-packages directory, or several directories that form a
sys.path (the split per-wheel layout: each root's site-packages). Directory symlinks are
followed, as Python follows them, and every file is reached through the path Python would
use, because glibc's $ORIGIN is the path as opened (LOADERS.md rule 17).

The scripts directories (a venv's bin/, a root's bin/) are walked too: a program there
runs from the path the user types, and the kernel gives it the $ORIGIN of its resolved
path (rule 18), so it loads or not depending on the layout like a module does.
"""

from __future__ import annotations

import os
import posixpath

from rpathfix.errors import UsageError
from rpathfix.fstree import is_dir, is_file, read_small, resolve
from rpathfix.fstree import scan as fs_scan
from rpathfix.model import ElfInfo, MachoInfo
from rpathfix.roots import site_packages_in
from rpathfix.sniff import looks_like_library, may_be_native, read_binary_in
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree
    from rpathfix.model import BinaryInfo

# A bound on the walk, so a hostile or accidental loop cannot make it run forever.
MAX_ENTRIES = 2_000_000
DF_1_PIE = 0x08000000  # DT_FLAGS_1: the object is a position-independent executable


def is_executable(info: BinaryInfo) -> bool:
    """A program the kernel starts (not a library some process loads).

    ELF: ET_EXEC, or ET_DYN marked DF_1_PIE (what binutils >= 2.26 writes on a PIE; glibc
    refuses to dlopen such a file), or ET_DYN with a PT_INTERP and neither a SONAME nor a
    module init (an older PIE). Mach-O: an MH_EXECUTE slice.
    """
    if isinstance(info, ElfInfo):
        if info.elf_type == "exec" or info.flags_1 & DF_1_PIE:
            return True
        return info.elf_type == "dyn" and info.interp is not None and info.soname is None and not info.is_extension
    return any(s.filetype == "execute" for s in info.slices)


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
    def is_executable(self) -> bool:
        return is_executable(self.info)

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
    # Where its programs are (a venv's bin/, each root's bin/); their native files are in
    # `files` too, with this directory as their site_dir.
    script_dirs: tuple[str, ...] = ()


class Layout(NamedTuple):
    """The directories of an environment, before any walk."""

    site_dirs: list[str]
    interpreter: str | None
    script_dirs: list[str]


def layout_of(tree: FileTree, paths: list[str]) -> Layout:
    """sys.path directories, interpreter and scripts directories for venv / site-packages /
    split-layout arguments (a root or a site-packages directory: roots.site_packages_in)."""
    dirs: list[str] = []
    scripts: list[str] = []
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
            scripts.append(posixpath.join(p, "bin"))
            continue
        site = site_packages_in(tree, p)
        if site is None:
            dirs.append(p)
        else:
            dirs.append(site)  # a distribution root
            scripts.append(posixpath.join(p, "bin"))
    scripts = [d for d in scripts if is_dir(tree, d)]
    return Layout(dirs, interpreter, scripts)


def collect(tree: FileTree, paths: list[str]) -> Environment:
    """Walk the environment and read every native file once (by real path).

    The interpreter (bin/python and its aliases) is not one of the environment's files.
    """
    layout = layout_of(tree, paths)
    dirs, interpreter = layout.site_dirs, layout.interpreter
    files: list[NativeFile] = []
    seen_real: set[str] = set()
    if interpreter is not None:
        real_python = resolve(tree, interpreter)
        if real_python is not None:
            seen_real.add(real_python)
    budget = MAX_ENTRIES
    for site in [*dirs, *layout.script_dirs]:
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
    return Environment(tuple(dirs), interpreter, tuple(files), tuple(layout.script_dirs))


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


def file_digest(tree: FileTree, path: str) -> str:
    """SHA-256 of a file's bytes (through its links), read in 1 MiB chunks: memory does not
    grow with the file. Two files with one digest are the same library to any loader."""
    import hashlib

    real = resolve(tree, path) or path
    src = tree.open(real)
    try:
        h = hashlib.sha256()
        off, chunk = 0, 1 << 20
        while off < src.size:
            n = min(chunk, src.size - off)
            h.update(src.read_at(off, n))
            off += n
        return h.hexdigest()
    finally:
        src.close()


def same_content(tree: FileTree, a: str, b: str) -> bool:
    """Whether two physical files hold the same bytes: sizes, then 64 KiB chunks side by side
    until the first difference (memory does not grow with the files; no digest to compute,
    and a difference is usually found in the first chunk). 64 KiB reads stay in the
    allocator's arena: 1 MiB ones were 3-5 times slower here, each a fresh mapping."""
    sa, sb = tree.open(a), tree.open(b)
    try:
        if sa.size != sb.size:
            return False
        off, chunk = 0, 1 << 16
        while off < sa.size:
            n = min(chunk, sa.size - off)
            if sa.read_at(off, n) != sb.read_at(off, n):
                return False
            off += n
        return True
    finally:
        sa.close()
        sb.close()


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
