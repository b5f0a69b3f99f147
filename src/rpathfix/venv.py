"""Write a per-binary venv from plan entries (the action behind `rpathfix venv`).

Layout: pyvenv.cfg, bin/python -> the base interpreter (the only absolute link: the
interpreter lives outside anything that is moved), bin/python3 and bin/pythonX.Y ->
python, the marker file .rpathfix-venv, and the entries under their kinds' directories
(.data/data merged into the venv's own directories, as pip installs it under the prefix;
.data/headers under include/site/pythonX.Y/<dist>/, as pip and pypa/installer put them).
Every other link is relative, computed from OUT's physical location, so OUT can be moved
together with its roots kept in place relative to it (Bazel output trees, runfiles). A
link whose text would be 60 bytes or more goes through a hub, OUT/.r/<n> -> its target's
directory, so that ext4 can keep every text in the inode (see _shorten_links).

One description, two users. describe_venv() turns the plan into a VenvTree (relative
path -> node: a directory, a link with its text, a hard link or copy of a source file, a
generated file with its bytes). The loader check before writing reads that very tree
(planned_view(): the OverlayTree the loader model walks), and write_tree() carries it out,
so what was checked is what is written, in every link mode.

Writing: an OUT that already holds exactly the tree is left untouched. Otherwise the tree
is built beside OUT (a temporary name carrying this process's pid, fileio.temp_path) and
put in place in one step: a rename when OUT is absent or an empty directory (what Bazel's
declare_directory hands over), else an exchange of the two directories (fileio.exchange),
after which the old tree is deleted. A reader never sees OUT missing or half-written. Only
a directory holding the marker .rpathfix-venv is ever replaced: a venv made by pip or any
other non-empty directory is refused. Leftovers of a killed run are removed by the next.
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import re
import stat
import sys
from collections.abc import Sequence

from rpathfix import fileio
from rpathfix.entrypoints import SCRIPT_GROUPS
from rpathfix.errors import UsageError
from rpathfix.fstree import Node, OverlayTree, Planned
from rpathfix.launchers import entry_point_launcher, is_python_script, python_launcher
from rpathfix.model import PlanEntry
from rpathfix.patch import PatchedSource
from rpathfix.source import BytesSource, FileSource
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Literal

    from rpathfix.fstree import FileTree
    from rpathfix.model import BytePatch
    from rpathfix.source import ByteSource

LINK_MODES = ("symlink", "hardlink", "copy")
DIR_MODE = 0o755
# Errors for which a hard link cannot be made but a copy can (another file system, a
# protected_hardlinks refusal, too many links, a file system without hard links).
_HARDLINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
# The marker of a venv rpathfix wrote: only a directory holding it is ever replaced.
MARKER = ".rpathfix-venv"
MARKER_TEXT = (b"Written by `rpathfix venv`. rpathfix replaces this directory only while this file is here;\n"
               b"it refuses any other directory (a venv made by pip, a directory of your own).\n")


class PythonInfo(NamedTuple):
    executable: str
    base_executable: str  # a real interpreter, not inside a venv
    version: str  # "3.11.7"
    version_short: str  # "3.11"


_PROBE = (
    "import json, sys\n"
    "print(json.dumps({'executable': sys.executable,"
    " 'base': getattr(sys, '_base_executable', None) or sys.executable,"
    " 'version': list(sys.version_info[:3])}))\n"
)


def _in_venv(exe: str) -> bool:
    """True when `exe` sits where CPython looks for a venv's pyvenv.cfg."""
    d = os.path.dirname(exe)
    return any(os.path.isfile(os.path.join(p, "pyvenv.cfg")) for p in (d, os.path.dirname(d)))


def _base_interpreter(python: str, executable: str, base: str, short: str) -> str:
    """The interpreter behind a venv: sys._base_executable, or what a venv's python resolves to.

    CPython derives _base_executable as home/<name of the venv's python>, which need not
    exist (home has python3.11 but not python); the real path of the venv's python is
    then the interpreter itself.
    """
    candidates = [base, os.path.realpath(base), os.path.realpath(executable)]
    candidates += [os.path.join(os.path.dirname(base), n) for n in (f"python{short}", "python3")]
    for c in candidates:
        if c and os.path.isabs(c) and os.path.isfile(c) and os.access(c, os.X_OK) and not _in_venv(c):
            return c
    raise UsageError(f"{python}: not a runnable Python interpreter: cannot find the base interpreter "
                     f"behind {executable}")


def _info_from(python: str, raw: dict[str, object]) -> PythonInfo:
    try:
        executable = str(raw["executable"])
        base = str(raw["base"])
        ver = [int(v) for v in raw["version"]]  # type: ignore[attr-defined]
        version = ".".join(str(v) for v in ver[:3])
        short = f"{ver[0]}.{ver[1]}"
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise UsageError(f"{python}: not a runnable Python interpreter: unexpected answer ({e})") from None
    return PythonInfo(executable, _base_interpreter(python, executable, base, short), version, short)


@functools.lru_cache(maxsize=8)
def python_info(python: str) -> PythonInfo:
    """Version, EXT_SUFFIX and base interpreter of `python` (one subprocess unless it is us)."""
    if python and os.path.abspath(python) == sys.executable:
        return _info_from(python, {
            "executable": sys.executable,
            "base": getattr(sys, "_base_executable", None) or sys.executable,
            "version": list(sys.version_info[:3]),
        })
    import json
    import subprocess

    try:
        proc = subprocess.run([python, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise UsageError(f"{python}: not a runnable Python interpreter: {e}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise UsageError(f"{python}: not a runnable Python interpreter: {last}")
    try:
        raw = json.loads(proc.stdout)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise UsageError(f"{python}: not a runnable Python interpreter: unexpected output {proc.stdout[:80]!r}")
    return _info_from(python, raw)


def kind_prefixes(v: str) -> dict[str, str]:
    """Each kind's directory relative to OUT ("" is OUT itself), for Python `v` ("3.11"):
    the one table of where a root's parts go, for the written venv and the Bazel rules'
    links venv (layout.py) alike."""
    return {
        "site-packages": f"lib/python{v}/site-packages",
        "bin": "bin",
        "include": f"include/site/python{v}",  # where pip puts headers in a venv
        "data": "",
    }


def kind_dirs(out: str, info: PythonInfo) -> dict[str, str]:
    return {k: posixpath.join(out, p) if p else out for k, p in kind_prefixes(info.version_short).items()}


def interpreter_names(v: str) -> tuple[str, ...]:
    """The names in bin/ that are the venv's own interpreter (a root's file there loses)."""
    return ("python", "python3", f"python{v}")


# ---------------------------------------------------------------- the tree as data


class VenvNode(NamedTuple):
    """One entry of a venv to write: a real directory, a symlink (its text), a regular file
    hard-linked or copied from `source`, a generated regular file holding `data`, or a
    patched copy of `source` ("patched": the file as `patch` makes it, never held in memory:
    the check reads it through patch.PatchedSource, the writer streams it)."""

    kind: Literal["dir", "link", "file", "data", "patched"]
    link: str | None = None  # link text
    source: str | None = None  # file to hard-link, copy or patch (a physical path)
    how: Literal["hardlink", "copy"] = "copy"
    data: bytes | None = None
    mode: int = DIR_MODE
    patch: BytePatch | None = None


_DIR = VenvNode("dir")


class VenvTree:
    """The venv to write, as data: relative path -> VenvNode. Parents are real
    directories; a path is given once.

    `final` is OUT's physical path (its parent resolved): the base of every relative link
    text, and where write_tree() puts the tree. `kind_dirs` maps each plan kind to its
    directory relative to OUT ("" is OUT itself).
    """

    def __init__(self, final: str, kind_dirs: dict[str, str], link_mode: str) -> None:
        self.final = final
        self.kind_dirs = kind_dirs
        self.link_mode = link_mode
        self.nodes: dict[str, VenvNode] = {"": _DIR}
        self._relpaths: dict[tuple[str, str], str] = {}  # (target dir, link's dir) -> relpath
        # (rel, target's directory, target's name) of the links standing for plan entries
        self.entry_links: list[tuple[str, str, str]] = []

    def path_of(self, kind: str, venv_path: str = "") -> str:
        """The absolute path (under `final`) of a plan entry of `kind` at `venv_path`."""
        rel = posixpath.join(self.kind_dirs[kind], venv_path) if venv_path else self.kind_dirs[kind]
        return posixpath.join(self.final, rel) if rel else self.final

    def add(self, rel: str, node: VenvNode, why: str) -> None:
        parent = rel.rpartition("/")[0]
        if rel and self.nodes.get(parent) is not _DIR:  # else its parents are in place already
            parts = rel.split("/")
            for i in range(1, len(parts)):
                p = "/".join(parts[:i])
                cur = self.nodes.setdefault(p, _DIR)
                if cur.kind != "dir":
                    raise UsageError(f"{why}: {rel} lies under {p}, which is a {cur.kind}, not a directory")
        prev = self.nodes.get(rel)
        if prev is not None and not (prev.kind == "dir" and node.kind == "dir"):
            raise UsageError(f"{why}: {rel or '.'} is written twice")
        self.nodes[rel] = node

    def link_to(self, rel: str, target: str) -> VenvNode:
        return self._link(rel, *posixpath.split(os.path.abspath(target)))

    def add_entry_link(self, rel: str, target: str, why: str) -> None:
        """A link standing for a plan entry (a candidate for a hub, and checked once written)."""
        head, name = posixpath.split(os.path.abspath(target))
        self.add(rel, self._link(rel, head, name), why)
        self.entry_links.append((rel, head, name))

    def _link(self, rel: str, head: str, name: str) -> VenvNode:
        reldir = rel.rpartition("/")[0]
        if name in ("", ".", "..") or head == "/":
            return VenvNode("link", link=os.path.relpath(posixpath.join(head, name),
                                                         posixpath.join(self.final, reldir)))
        # relpath(head/name) is relpath(head)/name; siblings share one relpath() of their
        # directory (nvidia/cu13/lib holds a hundred links into the same few roots).
        key = (head, reldir)
        up = self._relpaths.get(key)
        if up is None:
            up = self._relpaths[key] = os.path.relpath(head, posixpath.join(self.final, reldir))
        return VenvNode("link", link=name if up == "." else f"{up}/{name}")

    def children(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {r: set() for r, n in self.nodes.items() if n.kind == "dir"}
        for r in self.nodes:
            if r:
                out[posixpath.dirname(r)].add(posixpath.basename(r))
        return out

    def patched_copy(self, rel: str, source: str, patch: BytePatch, mode: int) -> None:
        """Put a patched copy of `source` at `rel` (copy-on-write, `rpathfix venv --repair`):
        every linked directory on the way becomes a real one whose entries link where the
        directory's did, so only this file is a copy and everything else stays a link."""
        parts = rel.split("/")
        for i in range(1, len(parts)):
            self._split("/".join(parts[:i]), rel)
        node = self.nodes.get(rel)
        if node is None or node.kind not in ("link", "file"):
            raise UsageError(f"{rel}: no file of the plan to patch there")
        self.nodes[rel] = VenvNode("patched", source=source, mode=mode, patch=patch)

    def _split(self, rel: str, why: str) -> None:
        """Make the link at `rel`, which leads to a directory, a real directory of links."""
        node = self.nodes.get(rel)
        if node is None or node.kind == "dir":
            return
        target = self._link_target(rel)
        if node.kind != "link" or target is None or not os.path.isdir(target):
            raise UsageError(f"{why}: {rel} is a {node.kind}, not a directory that can be made real")
        self.nodes[rel] = _DIR
        self.entry_links = [e for e in self.entry_links if e[0] != rel]
        for name in sorted(os.listdir(target)):
            self.add_entry_link(f"{rel}/{name}", posixpath.join(target, name), why)

    def _link_target(self, rel: str) -> str | None:
        """Where the link at `rel` leads (a physical path outside the venv)."""
        for r, head, name in self.entry_links:
            if r == rel:
                return posixpath.join(head, name)
        node = self.nodes[rel]
        if node.link is None:
            return None
        here = posixpath.join(self.final, posixpath.dirname(rel))
        target = posixpath.normpath(posixpath.join(here, node.link))
        return None if target == self.final or target.startswith(self.final + "/") else os.path.realpath(target)


def _clean_rel(path: str, why: str) -> str:
    norm = posixpath.normpath(path) if path else ""
    if not norm or norm == "." or posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise UsageError(f"{why}: bad venv path {path!r}")
    return norm


def _python_script(path: str) -> bytes | None:
    """The bytes of `path` when it is a Python script (a `#!...python...` first line)."""
    try:
        with open(path, "rb") as f:
            if not is_python_script(f.read(512).split(b"\n", 1)[0]):
                return None
            f.seek(0)
            return f.read()
    except OSError:
        return None


def _expand(tree: VenvTree, rel: str, target: str, how: Literal["hardlink", "copy"], why: str,
            stack: tuple[str, ...] = ()) -> None:
    """Real files (hard links or copies) for `target`, a file or a directory, at `rel`."""
    try:
        st = os.stat(target)
    except OSError as e:
        raise UsageError(f"{why}: {target}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        tree.add(rel, VenvNode("file", source=os.path.realpath(target), how=how, mode=stat.S_IMODE(st.st_mode)), why)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{why}: {target}: neither a regular file nor a directory")
    real = os.path.realpath(target)
    if real in stack:
        raise UsageError(f"{why}: {target}: symlink loop")
    tree.add(rel, _DIR, why)
    _expand_dir(tree, rel, target, "", how, why, (*stack, real))


def _expand_dir(tree: VenvTree, rel: str, top: str, sub: str, how: Literal["hardlink", "copy"], why: str,
                stack: tuple[str, ...]) -> None:
    here = posixpath.join(top, sub) if sub else top
    for name in sorted(os.listdir(here)):
        src = posixpath.join(here, name)
        sub_child = posixpath.join(sub, name) if sub else name
        dst = posixpath.join(rel, sub_child)
        if os.path.islink(src):
            text = os.readlink(src)
            inside = posixpath.normpath(posixpath.join(sub, text))
            if not posixpath.isabs(text) and inside != ".." and not inside.startswith("../"):
                tree.add(dst, VenvNode("link", link=text), why)  # stays inside the target: kept as is
            elif os.path.exists(src):
                _expand(tree, dst, src, how, why, stack)
            else:  # dangling: keep pointing where it pointed
                tree.add(dst, tree.link_to(dst, posixpath.join(here, text)), why)
        elif os.path.isdir(src):
            tree.add(dst, _DIR, why)
            _expand_dir(tree, rel, top, sub_child, how, why, stack)
        else:
            _expand(tree, dst, src, how, why, stack)


# ext4 keeps a symlink's text in the inode when it is shorter than 60 bytes; a longer one
# needs a data block, which makes creating it two to three times slower.
_INLINE_LINK = 60
_HUBS = ".r"


def _shorten_links(tree: VenvTree) -> None:
    """Route the links whose text would not fit in the inode through one hub link per target
    directory, OUT/.r/<n> -> that directory in its root: `nvidia/cu13/lib/libcublas.so.13 ->
    ../../../../../../.r/7/libcublas.so.13`. Still relative, still one place per file."""
    if _HUBS in tree.nodes:
        return  # a distribution ships OUT/.r itself: keep every link direct
    hubs: dict[str, int] = {}
    for rel, head, name in tree.entry_links:
        node = tree.nodes[rel]
        if node.link is None or len(node.link) < _INLINE_LINK:
            continue
        n = hubs.get(head, len(hubs))
        up = "../" * rel.count("/")
        text = f"{up}{_HUBS}/{n}/{name}"
        if len(text) >= len(node.link):
            continue
        hubs[head] = n
        tree.nodes[rel] = node._replace(link=text)
    for head, n in hubs.items():
        tree.add(f"{_HUBS}/{n}", tree.link_to(f"{_HUBS}/{n}", head), "hub link")


def _entry_point(value: str, why: str) -> tuple[str, str]:
    spec = value.split("[", 1)[0].strip()  # drop extras: "mod:func [extra]"
    module, sep, attr = spec.partition(":")
    module, attr = module.strip(), attr.strip()
    ok = sep and all(p.isidentifier() for p in module.split(".")) and all(p.isidentifier() for p in attr.split("."))
    if not ok:
        raise UsageError(f"{why}: {value!r} is not module:attr")
    return module, attr


def _place(tree: VenvTree, rel: str, target: str, method: str, link_mode: str, why: str) -> None:
    """The entry for `target` at `rel`: a link, or real files (hard links or copies)."""
    if method == "copy":
        _expand(tree, rel, target, "copy", why)
    elif link_mode == "symlink":
        tree.add_entry_link(rel, target, why)
    else:
        _expand(tree, rel, target, "hardlink" if link_mode == "hardlink" else "copy", why)


def _place_data(tree: VenvTree, rel: str, target: str, method: str, link_mode: str, why: str) -> None:
    """A .data/data entry, which pip installs under the venv's prefix: where the venv already
    has a directory at `rel` (lib/, bin/, include/), the entry's directory is merged into it
    name by name instead of replacing it (data/lib/pkgconfig/x.pc lands in OUT/lib/pkgconfig
    beside lib/pythonX.Y). A file where the venv already has something is written twice."""
    node = tree.nodes.get(rel)
    if node is not None and node.kind == "dir" and os.path.isdir(target):
        for name in sorted(os.listdir(target)):
            _place_data(tree, f"{rel}/{name}", posixpath.join(target, name), method, link_mode, why)
        return
    if node is not None:
        raise UsageError(f"{why}: {rel} is written twice (the venv already has it)")
    _place(tree, rel, target, method, link_mode, why)


def describe_venv(out: Path | str, entries: Sequence[PlanEntry], *, python: str, link_mode: str = "symlink",
                  entry_points: Sequence[tuple[str, str, str]] = ()) -> VenvTree:
    """The venv rpathfix would write at OUT for these plan entries, as data (nothing is
    written): what the loader check reads (planned_view) and write_tree() carries out.

    UsageError for a bad link mode, a bad entry or two entries at one path; OUT itself is
    checked with check_destination() (refused unless absent, empty or written by rpathfix).
    """
    if link_mode not in LINK_MODES:
        raise UsageError(f"link mode {link_mode!r}: expected one of {', '.join(LINK_MODES)}")
    info = python_info(python)
    final = check_destination(out).final
    prefixes = kind_prefixes(info.version_short)
    tree = VenvTree(final, prefixes, link_mode)
    short = info.version_short
    cfg = (f"home = {os.path.dirname(info.base_executable)}\n"
           "include-system-site-packages = false\n"
           f"version = {info.version}\n")
    tree.add("pyvenv.cfg", VenvNode("data", data=cfg.encode(), mode=0o644), "pyvenv.cfg")
    tree.add(MARKER, VenvNode("data", data=MARKER_TEXT, mode=0o644), MARKER)
    tree.add("bin/python", VenvNode("link", link=info.base_executable), "bin/python")
    reserved = set(interpreter_names(short))
    for name in sorted(reserved - {"python"}):
        tree.add(f"bin/{name}", VenvNode("link", link="python"), f"bin/{name}")
    tree.add(prefixes["site-packages"], _DIR, "site-packages")

    data_entries: list[tuple[str, PlanEntry, str]] = []
    for e in sorted(entries, key=lambda e: (e.kind, e.venv_path)):
        why = f"plan entry {e.kind}:{e.venv_path}"
        if e.kind not in prefixes:
            raise UsageError(f"{why}: unknown kind {e.kind!r}")
        vp = _clean_rel(e.venv_path, why)
        if e.kind == "data":
            data_entries.append((vp, e, why))  # after every directory of the venv's own is in place
            continue
        if e.kind == "bin" and vp in reserved:
            continue  # the venv's own interpreter wins
        rel = posixpath.join(prefixes[e.kind], vp)
        if e.kind == "bin" and "/" not in vp:
            script = _python_script(e.target)
            if script is not None:
                text = python_launcher(script.decode("utf-8", "surrogateescape"))
                tree.add(rel, VenvNode("data", data=text.encode("utf-8", "surrogateescape"), mode=0o755), why)
                continue
        _place(tree, rel, e.target, e.method, link_mode, why)
    for vp, e, why in data_entries:
        _place_data(tree, vp, e.target, e.method, link_mode, why)

    if link_mode == "symlink":
        _shorten_links(tree)

    for group, name, value in sorted(entry_points, key=lambda t: (t[1], t[0], t[2])):
        if group not in SCRIPT_GROUPS:
            continue
        why = f"entry point {group}:{name}"
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise UsageError(f"{why}: bad script name")
        rel = f"bin/{name}"
        if name in reserved or rel in tree.nodes:
            continue  # a launcher from a bin/ entry or an earlier group wins
        module, attr = _entry_point(value, why)
        tree.add(rel, VenvNode("data", data=entry_point_launcher(module, attr).encode(), mode=0o755), why)
    return tree


class _PlannedVenv(OverlayTree):
    """The OverlayTree of a VenvTree: generated files read as their bytes, and OUT's
    parents, which write_tree() creates when they are missing, as directories."""

    def __init__(self, base: FileTree, venv: VenvTree, entries: dict[str, Planned]) -> None:
        super().__init__(base, venv.final, entries)
        self._venv = venv

    def lstat(self, path: str) -> Node | None:
        node = super().lstat(path)
        if node is None and self.root.startswith(path.rstrip("/") + "/"):
            return Node("dir", None, DIR_MODE)
        return node

    def open(self, path: str) -> ByteSource:
        if self._inside(path):
            rel = path[len(self.root) + 1:]
            node = self._venv.nodes.get(rel)
            if node is not None and node.kind == "data" and node.data is not None:
                return BytesSource(path, node.data)
            if node is not None and node.kind == "patched" and node.source is not None and node.patch is not None:
                return _OwnedPatchedSource(self.base.open(node.source), node.patch)
        return super().open(path)


class _OwnedPatchedSource(PatchedSource):
    """patch.PatchedSource that closes the source it reads when it is closed itself."""

    def __init__(self, src: ByteSource, patch: BytePatch) -> None:
        super().__init__(src, patch)
        self._owned = src

    def close(self) -> None:
        self._owned.close()


def planned_view(venv: VenvTree, base: FileTree) -> OverlayTree:
    """The venv as it will be written, for the loader model, over `base` for everything
    outside it: links with the very texts written, hard links and copies as regular files
    whose bytes are their sources', generated files as regular files. In hardlink and copy
    mode every directory is real, in symlink mode only those the plan made real: so
    `$ORIGIN/..` climbs exactly as it will in the written tree."""
    entries: dict[str, Planned] = {}
    for rel, node in venv.nodes.items():
        path = posixpath.join(venv.final, rel) if rel else venv.final
        if node.kind == "dir":
            entries[path] = Planned("dir")
        elif node.kind == "link":
            entries[path] = Planned("link", node.link)
        elif node.kind == "file":
            entries[path] = Planned("file", node.source, node.mode)
        else:  # generated and patched files: _PlannedVenv.open reads them
            entries[path] = Planned("file", None, node.mode)
    return _PlannedVenv(base, venv, entries)


# ---------------------------------------------------------------- compare and write


class Destination(NamedTuple):
    """OUT as found: its physical path, and "absent", "empty" or "ours" (holds the marker)."""

    final: str
    state: Literal["absent", "empty", "ours"]


def check_destination(out: Path | str) -> Destination:
    """Where OUT is and whether rpathfix may write it; UsageError when not: not a
    directory, or a non-empty directory without rpathfix's marker (a venv made by pip, a
    directory of the user's: a typo must never wipe it). Nothing is written. Called before
    planning, so the user hears it first, and again right before the swap."""
    out_abs = os.path.abspath(os.fspath(out))
    parent, name = os.path.split(out_abs)
    if not name:
        raise UsageError(f"{out}: not a usable venv directory")
    final = os.path.join(os.path.realpath(parent), name)  # the parent is created by write_tree()
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return Destination(final, "absent")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{out}: exists and is not a directory; refusing to replace it")
    try:
        names = os.listdir(final)
    except OSError as e:
        raise UsageError(f"{out}: cannot list: {e.strerror}") from None
    if not names:
        return Destination(final, "empty")
    if os.path.isfile(os.path.join(final, MARKER)) and not os.path.islink(os.path.join(final, MARKER)):
        return Destination(final, "ours")
    what = "a venv that rpathfix did not write" if "pyvenv.cfg" in names else \
        "exists, is not empty and was not written by rpathfix"
    raise UsageError(f"{out}: {what} (no {MARKER}); refusing to replace it: remove it or choose another OUT")


def _same_bytes(a: str, b: str | bytes) -> bool:
    with open(a, "rb") as fa:
        if isinstance(b, bytes):
            return fa.read(len(b) + 1) == b
        with open(b, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True


def _same_patched(path: str, size: int, node: VenvNode) -> bool:
    """Whether the file at `path` holds the patched copy `node` describes (compared in 1 MB
    chunks: neither file is read whole)."""
    assert node.source is not None and node.patch is not None
    if size != node.patch.size:
        return False
    with FileSource(node.source) as src, open(path, "rb") as f:
        want = PatchedSource(src, node.patch)
        pos = 0
        while pos < size:
            n = min(1 << 20, size - pos)
            if f.read(n) != want.read_at(pos, n):
                return False
            pos += n
    return True


def _matches(out: str, tree: VenvTree) -> bool:
    """True when OUT already holds exactly `tree` (paths, kinds, link texts, bytes, modes).

    A `__pycache__/` that running the venv left in a real directory is a cache, not a
    difference (the interpreter revalidates every .pyc against its source).
    """
    children = tree.children()
    try:
        for rel, node in tree.nodes.items():
            p = os.path.join(out, rel) if rel else out
            st = os.lstat(p)
            if node.kind == "dir":
                if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != DIR_MODE:
                    return False
                if set(os.listdir(p)) - {"__pycache__"} != children[rel] - {"__pycache__"}:
                    return False
            elif node.kind == "link":
                if not stat.S_ISLNK(st.st_mode) or os.readlink(p) != node.link:
                    return False
            else:
                if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != node.mode:
                    return False
                if node.kind == "data":
                    assert node.data is not None
                    if st.st_size != len(node.data) or not _same_bytes(p, node.data):
                        return False
                elif node.kind == "patched":
                    if not _same_patched(p, st.st_size, node):
                        return False
                else:
                    assert node.source is not None
                    src = os.stat(node.source)
                    if (src.st_dev, src.st_ino) == (st.st_dev, st.st_ino):
                        continue
                    if src.st_size != st.st_size or not _same_bytes(p, node.source):
                        return False
    except OSError:
        return False
    return True


# Creating an entry is one system call. Creations in one directory take turns on that
# directory's lock, and on a file system that is slow to allocate inodes (ext4 without a
# journal skips inodes deleted in the last minutes) a call waits in the kernel. So a writer
# thread per core, each given whole directories: on 2 cores, 2 such writers build the torch
# venv 3-5 ms faster than 8 threads taking entries in turn, and 20-50 ms faster than one
# thread right after a large delete (benchmarks/README.md).
_WRITERS = max(1, min(4, os.cpu_count() or 1))
_THREADED = 64  # entries from which threads pay for themselves


def _build(root: str, tree: VenvTree) -> list[tuple[str, int]]:
    """Create the tree under `root`: directories first, in order, then every other entry,
    each directory's entries by one writer. Returns (source, errno) of each hard link that
    had to become a copy.

    Every writer has stopped when this returns or raises, also on Ctrl-C (the writers are
    told to stop after their current entry, and are waited for): the caller's cleanup
    never races a writer.
    """
    by_dir: dict[str, list[tuple[str, VenvNode]]] = {}
    for rel in sorted(tree.nodes):
        node = tree.nodes[rel]
        if node.kind == "dir":
            p = os.path.join(root, rel) if rel else root
            if rel:
                os.mkdir(p, DIR_MODE)
            os.chmod(p, DIR_MODE)
        else:
            by_dir.setdefault(posixpath.dirname(rel), []).append((os.path.join(root, rel), node))
    parts: list[list[tuple[str, VenvNode]]] = [[] for _ in range(_WRITERS)]
    for group in sorted(by_dir.values(), key=len, reverse=True):  # largest first, to the least loaded
        min(parts, key=len).extend(group)
    copied: list[tuple[str, int]] = []
    if sum(map(len, parts)) < _THREADED or len(parts) == 1:
        for part in parts:
            for p, node in part:
                _create(p, node, copied)
        return copied
    # The low-level _thread API: `import threading` would cost 1.4 ms of a 55 ms command.
    import _thread

    errors: list[BaseException] = []
    stop: list[bool] = []  # not empty: writers stop after their current entry

    def work(part: list[tuple[str, VenvNode]], done: _thread.LockType) -> None:
        try:
            for p, node in part:
                if stop:
                    break
                _create(p, node, copied)
        except BaseException as e:  # re-raised below, after every writer has stopped
            errors.append(e)
            stop.append(True)
        finally:
            done.release()

    finished: list[_thread.LockType] = []
    interrupted: BaseException | None = None
    try:
        for part in parts:
            done = _thread.allocate_lock()
            done.acquire()
            _thread.start_new_thread(work, (part, done))
            finished.append(done)
    except BaseException as e:
        stop.append(True)
        interrupted = e
    for done in finished:
        while True:
            try:
                done.acquire()  # released when that writer has stopped
                break
            except BaseException as e:  # Ctrl-C while waiting: stop the writers, keep waiting
                stop.append(True)
                interrupted = interrupted or e
    if interrupted is not None:
        raise interrupted
    if errors:
        raise errors[0]
    return copied


def _create(p: str, node: VenvNode, copied: list[tuple[str, int]]) -> None:
    """One entry that is not a directory. A hard link that cannot be made (another file
    system, EPERM...) becomes a copy and is recorded in `copied`, so the caller says so."""
    if node.kind == "link":
        assert node.link is not None
        os.symlink(node.link, p)
    elif node.kind == "patched":
        from rpathfix.patch import stream_patched

        assert node.source is not None and node.patch is not None
        with FileSource(node.source) as src, open(p, "xb") as f:
            stream_patched(src, node.patch, f)
            os.fchmod(f.fileno(), node.mode)
    elif node.kind == "data":
        assert node.data is not None
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, node.mode)
        try:
            view = memoryview(node.data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, node.mode)
        finally:
            os.close(fd)
    else:
        assert node.source is not None
        if node.how == "hardlink":
            try:
                os.link(node.source, p)
                return
            except OSError as e:
                if e.errno not in _HARDLINK_FALLBACK:
                    raise
                copied.append((node.source, e.errno or 0))
        import shutil

        shutil.copy2(node.source, p)
        os.chmod(p, node.mode)


def _check_links(root: str, tree: VenvTree) -> None:
    """The links written for plan entries lead where their targets are.

    The loader model checked the plan with absolute targets; this checks that the relative
    texts written for them lead to the same places. The temp directory is OUT's sibling,
    so a link that resolves here resolves the same from OUT. Siblings linking into one
    directory share their text up to the name, so one of each group is followed.
    """
    seen: set[tuple[str, str]] = set()
    for rel, head, name in tree.entry_links:
        group = (rel.rpartition("/")[0], head)
        if group in seen:
            continue
        if os.path.exists(os.path.join(root, rel)):
            seen.add(group)
        elif os.path.exists(posixpath.join(head, name)):
            raise UsageError(f"{os.path.join(root, rel)}: the link written for {rel} ({tree.nodes[rel].link}) "
                             "leads nowhere; was a root moved or removed while the venv was written?")


# What the earlier writer (before the marker file) left beside OUT when killed: .OUT.tmp-<hex>, .OUT.old-<hex>.
_OLD_LEFTOVER = re.compile(r"\.(tmp|old)-[0-9a-f]{12}")


def _clean_leftovers(final: str) -> None:
    """Remove what killed runs left beside OUT: temporary trees of writers that are gone
    (fileio's pid-tagged names), and the untagged .OUT.tmp-*/.OUT.old-* of the earlier
    writer (it named them without a pid; no run of it is expected beside this one)."""
    fileio.clean_leftovers(final)
    parent, name = os.path.split(final)
    prefix = f".{name}"
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        if n.startswith(prefix) and _OLD_LEFTOVER.fullmatch(n[len(prefix):]):
            fileio.remove_tree(os.path.join(parent, n))


class Written(NamedTuple):
    """What write_tree() did: whether OUT changed, and notes for the user (one line each)."""

    changed: bool
    notes: tuple[str, ...] = ()


def write_tree(tree: VenvTree) -> Written:
    """Put `tree` in place at tree.final; an identical OUT is left untouched.

    Built beside OUT, its links followed, then swapped in in one step (see the module's
    docstring): a failed or interrupted run leaves OUT as it was and nothing beside it.
    A hard link that had to become a copy is never silent: the notes say so.
    """
    parent = os.path.dirname(tree.final)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{parent}: cannot create: {e.strerror}") from None
    dest = check_destination(tree.final)
    _clean_leftovers(tree.final)
    if dest.state == "ours" and _matches(tree.final, tree):
        return Written(False)
    tmp = fileio.temp_path(tree.final)
    os.mkdir(tmp, 0o700)
    try:
        copied = _build(tmp, tree)
        _check_links(tmp, tree)
        _swap_in(tmp, tree.final)
    except BaseException:
        fileio.remove_tree(tmp)
        raise
    notes: tuple[str, ...] = ()
    if copied:
        source, err = copied[0]
        notes = (f"note: --link-mode hardlink: {len(copied)} file(s) copied instead, because a hard link was "
                 f"refused ({os.strerror(err)}; for example {source})",)
    return Written(True, notes)


def _swap_in(tmp: str, final: str) -> None:
    """Put the built tree `tmp` at `final` in one step; the old tree, if any, is deleted.

    OUT absent or an empty directory: one rename (rename(2) replaces an empty directory).
    OUT written by rpathfix: the two directories are exchanged, then the old one (now at
    `tmp`) is deleted. Before deleting, it must still hold the marker: if another program
    replaced OUT in the meantime, the exchange is undone and nothing is deleted.
    """
    if check_destination(final).state != "ours":
        try:
            os.rename(tmp, final)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        check_destination(final)  # filled in meanwhile (by another rpathfix?): refused unless ours
    try:
        fileio.exchange(tmp, final)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise UsageError(f"{final}: cannot replace it in one step on this file system "
                             f"({e.strerror}); remove it and run again") from None
        raise
    if not os.path.isfile(os.path.join(tmp, MARKER)):
        fileio.exchange(tmp, final)
        raise UsageError(f"{final}: replaced by another program while the venv was written; left as it is")
    fileio.remove_tree(tmp)


def write_venv(out: Path | str, entries: Sequence[PlanEntry], *, python: str, link_mode: str = "symlink",
               entry_points: Sequence[tuple[str, str, str]] = ()) -> Written:
    """describe_venv() then write_tree(): the venv at OUT, unchecked (build_venv checks it)."""
    return write_tree(describe_venv(out, entries, python=python, link_mode=link_mode, entry_points=entry_points))
