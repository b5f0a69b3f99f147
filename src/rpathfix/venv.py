"""Write a per-binary venv from plan entries (the action behind `rpathfix venv`).

Layout: pyvenv.cfg, bin/python -> the base interpreter (the only absolute link: the
interpreter lives outside anything that is moved), bin/python3 and bin/pythonX.Y ->
python, and the entries under their kinds' directories. Every other link is relative,
computed from OUT's final real location, so OUT can be moved together with its roots
kept in place relative to it (Bazel output trees, runfiles). A link whose text would be 60
bytes or more goes through a hub, OUT/.r/<n> -> its target's directory, so that ext4 can
keep every text in the inode (see _shorten_links); `readlink -f` shows the final file.

The whole tree is described first (a dict of relative path -> node), compared with an
existing OUT (identical: nothing is written), else built in a temp directory beside OUT
and renamed into place, so a reader never sees a half-written venv.
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import stat
import sys
from collections.abc import Sequence

from rpathfix.entrypoints import SCRIPT_GROUPS
from rpathfix.errors import UsageError
from rpathfix.launchers import entry_point_launcher, python_launcher
from rpathfix.model import PlanEntry
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Literal

LINK_MODES = ("symlink", "hardlink", "copy")
DIR_MODE = 0o755
_HARDLINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


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


def _kind_prefixes(info: PythonInfo) -> dict[str, str]:
    """Each kind's directory relative to OUT ("" is OUT itself)."""
    v = info.version_short
    return {
        "site-packages": f"lib/python{v}/site-packages",
        "bin": "bin",
        "include": f"include/site/python{v}",  # where pip puts headers in a venv
        "data": "",
    }


def kind_dirs(out: str, info: PythonInfo) -> dict[str, str]:
    return {k: posixpath.join(out, p) if p else out for k, p in _kind_prefixes(info).items()}


# ---------------------------------------------------------------- the tree as data


class _Node(NamedTuple):
    kind: Literal["dir", "link", "file", "data"]
    link: str | None = None  # link text
    source: str | None = None  # file to hard-link or copy
    how: Literal["hardlink", "copy"] = "copy"
    data: bytes | None = None
    mode: int = DIR_MODE


_DIR = _Node("dir")


class _Tree:
    """Relative path -> node; parents are real directories, a path is given once."""

    def __init__(self, final: str) -> None:
        self.final = final  # OUT's real final location: base of every relative link
        self.nodes: dict[str, _Node] = {"": _DIR}
        self._relpaths: dict[tuple[str, str], str] = {}  # (target dir, link's dir) -> relpath
        # (rel, target's directory, target's name) of the links standing for plan entries
        self.entry_links: list[tuple[str, str, str]] = []

    def add(self, rel: str, node: _Node, why: str) -> None:
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

    def link_to(self, rel: str, target: str) -> _Node:
        return self._link(rel, *posixpath.split(os.path.abspath(target)))

    def add_entry_link(self, rel: str, target: str, why: str) -> None:
        """A link standing for a plan entry (a candidate for a hub, and checked once written)."""
        head, name = posixpath.split(os.path.abspath(target))
        self.add(rel, self._link(rel, head, name), why)
        self.entry_links.append((rel, head, name))

    def _link(self, rel: str, head: str, name: str) -> _Node:
        reldir = rel.rpartition("/")[0]
        if name in ("", ".", "..") or head == "/":
            return _Node("link", link=os.path.relpath(posixpath.join(head, name), posixpath.join(self.final, reldir)))
        # relpath(head/name) is relpath(head)/name; siblings share one relpath() of their
        # directory (nvidia/cu13/lib holds a hundred links into the same few roots).
        key = (head, reldir)
        up = self._relpaths.get(key)
        if up is None:
            up = self._relpaths[key] = os.path.relpath(head, posixpath.join(self.final, reldir))
        return _Node("link", link=name if up == "." else f"{up}/{name}")

    def children(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {r: set() for r, n in self.nodes.items() if n.kind == "dir"}
        for r in self.nodes:
            if r:
                out[posixpath.dirname(r)].add(posixpath.basename(r))
        return out


def _clean_rel(path: str, why: str) -> str:
    norm = posixpath.normpath(path) if path else ""
    if not norm or norm == "." or posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise UsageError(f"{why}: bad venv path {path!r}")
    return norm


def _python_script(path: str) -> bytes | None:
    """The bytes of `path` when it is a Python script (a `#!...python...` first line)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512).split(b"\n", 1)[0]
            if not (head.startswith(b"#!") and b"python" in head):
                return None
            f.seek(0)
            return f.read()
    except OSError:
        return None


def _expand(tree: _Tree, rel: str, target: str, how: Literal["hardlink", "copy"], why: str,
            stack: tuple[str, ...] = ()) -> None:
    """Real files (hard links or copies) for `target`, a file or a directory, at `rel`."""
    try:
        st = os.stat(target)
    except OSError as e:
        raise UsageError(f"{why}: {target}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        tree.add(rel, _Node("file", source=os.path.realpath(target), how=how, mode=stat.S_IMODE(st.st_mode)), why)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{why}: {target}: neither a regular file nor a directory")
    real = os.path.realpath(target)
    if real in stack:
        raise UsageError(f"{why}: {target}: symlink loop")
    tree.add(rel, _DIR, why)
    _expand_dir(tree, rel, target, "", how, why, (*stack, real))


def _expand_dir(tree: _Tree, rel: str, top: str, sub: str, how: Literal["hardlink", "copy"], why: str,
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
                tree.add(dst, _Node("link", link=text), why)  # stays inside the target: kept as is
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


def _shorten_links(tree: _Tree) -> None:
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


def _describe(final: str, entries: Sequence[PlanEntry], info: PythonInfo, link_mode: str,
              entry_points: Sequence[tuple[str, str, str]]) -> _Tree:
    tree = _Tree(final)
    prefixes = _kind_prefixes(info)
    short = info.version_short
    cfg = (f"home = {os.path.dirname(info.base_executable)}\n"
           "include-system-site-packages = false\n"
           f"version = {info.version}\n")
    tree.add("pyvenv.cfg", _Node("data", data=cfg.encode(), mode=0o644), "pyvenv.cfg")
    tree.add("bin/python", _Node("link", link=info.base_executable), "bin/python")
    reserved = {"python", "python3", f"python{short}"}
    for name in sorted(reserved - {"python"}):
        tree.add(f"bin/{name}", _Node("link", link="python"), f"bin/{name}")
    tree.add(prefixes["site-packages"], _DIR, "site-packages")

    for e in sorted(entries, key=lambda e: (e.kind, e.venv_path)):
        why = f"plan entry {e.kind}:{e.venv_path}"
        if e.kind not in prefixes:
            raise UsageError(f"{why}: unknown kind {e.kind!r}")
        vp = _clean_rel(e.venv_path, why)
        if e.kind == "bin" and vp in reserved:
            continue  # the venv's own interpreter wins
        rel = posixpath.join(prefixes[e.kind], vp) if prefixes[e.kind] else vp
        if e.kind == "bin" and "/" not in vp:
            script = _python_script(e.target)
            if script is not None:
                text = python_launcher(script.decode("utf-8", "surrogateescape"))
                tree.add(rel, _Node("data", data=text.encode("utf-8", "surrogateescape"), mode=0o755), why)
                continue
        if e.method == "copy":
            _expand(tree, rel, e.target, "copy", why)
        elif link_mode == "symlink":
            tree.add_entry_link(rel, e.target, why)
        else:
            _expand(tree, rel, e.target, "hardlink" if link_mode == "hardlink" else "copy", why)

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
        tree.add(rel, _Node("data", data=entry_point_launcher(module, attr).encode(), mode=0o755), why)
    return tree


# ---------------------------------------------------------------- compare and write


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


def _matches(out: str, tree: _Tree) -> bool:
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


def _build(root: str, tree: _Tree) -> None:
    """Create the tree under `root`: directories first, in order, then every other entry,
    each directory's entries by one writer."""
    by_dir: dict[str, list[tuple[str, _Node]]] = {}
    for rel in sorted(tree.nodes):
        node = tree.nodes[rel]
        if node.kind == "dir":
            p = os.path.join(root, rel) if rel else root
            if rel:
                os.mkdir(p, DIR_MODE)
            os.chmod(p, DIR_MODE)
        else:
            by_dir.setdefault(posixpath.dirname(rel), []).append((os.path.join(root, rel), node))
    parts: list[list[tuple[str, _Node]]] = [[] for _ in range(_WRITERS)]
    for group in sorted(by_dir.values(), key=len, reverse=True):  # largest first, to the least loaded
        min(parts, key=len).extend(group)
    if sum(map(len, parts)) < _THREADED or len(parts) == 1:
        for part in parts:
            for p, node in part:
                _create(p, node)
        return
    # The low-level _thread API: `import threading` would cost 1.4 ms of a 55 ms command.
    import _thread

    errors: list[BaseException] = []

    def work(part: list[tuple[str, _Node]], done: _thread.LockType) -> None:
        try:
            for p, node in part:
                _create(p, node)
        except BaseException as e:  # re-raised below, after every thread has stopped
            errors.append(e)
        finally:
            done.release()

    finished = []
    try:
        for part in parts:
            done = _thread.allocate_lock()
            done.acquire()
            _thread.start_new_thread(work, (part, done))
            finished.append(done)
    finally:
        for done in finished:
            done.acquire()  # released when that writer has stopped
    if errors:
        raise errors[0]


def _create(p: str, node: _Node) -> None:
    """One entry that is not a directory."""
    if node.kind == "link":
        assert node.link is not None
        os.symlink(node.link, p)
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
        import shutil

        shutil.copy2(node.source, p)
        os.chmod(p, node.mode)


def check_destination(out: Path | str) -> tuple[str, bool]:
    """(the physical path OUT will have, whether it exists); UsageError when OUT may not be
    written: not a directory, or a non-empty directory that is not a venv (a typo must
    never wipe a real directory). Called before planning, so the user hears it first."""
    out_abs = os.path.abspath(os.fspath(out))
    parent, name = os.path.split(out_abs)
    if not name:
        raise UsageError(f"{out}: not a usable venv directory")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{parent}: cannot create: {e.strerror}") from None
    final = os.path.join(os.path.realpath(parent), name)
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return final, False
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{out}: exists and is not a directory")
    if os.listdir(final) and not os.path.isfile(os.path.join(final, "pyvenv.cfg")):
        raise UsageError(f"{out}: exists, is not empty and is not a venv; refusing to replace it")
    return final, True


def _fresh_dir(parent: str, prefix: str) -> str:
    """A new empty directory parent/prefix<random> (tempfile.mkdtemp without importing
    tempfile, random and shutil at every start)."""
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise UsageError(f"{parent}: cannot create a temporary directory {prefix}*")


def _check_links(root: str, tree: _Tree) -> None:
    """The links written for plan entries lead where their targets are.

    The loader model checked the plan with absolute targets; this checks that the relative
    texts written for them lead to the same places. The temp directory is OUT's sibling,
    so a link that resolves here resolves the same from OUT. Siblings linking into one
    directory share their text up to the name, so one of each group is followed.
    """
    seen: set[tuple[str, str]] = set()
    for rel, head, name in tree.entry_links:
        # Siblings linking into one directory share their text up to the name: one of them
        # reaching its target shows the shared part is right.
        group = (rel.rpartition("/")[0], head)
        if group in seen:
            continue
        if os.path.exists(os.path.join(root, rel)):
            seen.add(group)
        elif os.path.exists(posixpath.join(head, name)):
            raise UsageError(f"{os.path.join(root, rel)}: the link written for {rel} ({tree.nodes[rel].link}) "
                             "leads nowhere; was a root moved or removed while the venv was written?")


class PendingVenv:
    """write_venv in steps: describe (here), build() beside OUT, then commit() (rename into
    place) or discard(). A caller can build while it checks the plan elsewhere."""

    def __init__(self, out: Path | str, entries: list[PlanEntry], *, python: str, link_mode: str = "symlink",
                 entry_points: Sequence[tuple[str, str, str]] = ()) -> None:
        if link_mode not in LINK_MODES:
            raise UsageError(f"link mode {link_mode!r}: expected one of {', '.join(LINK_MODES)}")
        info = python_info(python)
        self.final, self.exists = check_destination(out)
        self.tree = _describe(self.final, entries, info, link_mode, entry_points)
        self.tmp: str | None = None
        self.unchanged = False

    def build(self) -> None:
        if self.exists and _matches(self.final, self.tree):
            self.unchanged = True
            return
        parent, name = os.path.split(self.final)
        self.tmp = _fresh_dir(parent, f".{name}.tmp-")
        _build(self.tmp, self.tree)
        _check_links(self.tmp, self.tree)

    def commit(self) -> bool:
        if self.unchanged:
            return False
        assert self.tmp is not None, "build() first"
        tmp, self.tmp = self.tmp, None
        parent, name = os.path.split(self.final)
        try:
            if self.exists:
                old = _fresh_dir(parent, f".{name}.old-")
                os.rename(self.final, old)  # onto an empty directory: allowed by rename(2)
                try:
                    os.rename(tmp, self.final)
                except BaseException:
                    os.rename(old, self.final)
                    raise
                _remove_tree(old)
            else:
                os.rename(tmp, self.final)
        except BaseException:
            _remove_tree(tmp)
            raise
        return True

    def discard(self) -> None:
        if self.tmp is not None:
            _remove_tree(self.tmp)
            self.tmp = None


def write_venv(out: Path | str, entries: list[PlanEntry], *, python: str, link_mode: str = "symlink",
               entry_points: Sequence[tuple[str, str, str]] = ()) -> bool:
    """Write the venv at OUT; True if anything changed (an identical OUT is left untouched).

    The tree is built in a temp directory beside OUT and renamed into place: a reader never
    sees a half-written OUT, and a failed build leaves nothing behind.
    """
    pending = PendingVenv(out, entries, python=python, link_mode=link_mode, entry_points=entry_points)
    try:
        pending.build()
        return pending.commit()
    finally:
        pending.discard()


def _remove_tree(path: str) -> None:
    import shutil  # not at start-up: it pulls in bz2 and lzma

    shutil.rmtree(path, ignore_errors=True)
