"""Python's view of a split sys.path: namespace packages hidden by a regular package, and
.pth files that will not run.

How the import system finds a package (importlib's PathFinder, PEP 420): it walks
sys.path in order; the first directory holding `pkg/__init__.py` wins at once, and only
when no entry has one do the `pkg/` directories of all entries form one namespace
package. So in a split sys.path (one directory per wheel, as rules_python lays wheels
out) a wheel that ships a regular `nvidia/__init__.py` (an empty file is a regular
package) hides `nvidia/cuda_runtime`, `nvidia/cudnn` and the rest of the other wheels,
whichever comes first on sys.path: jax then finds no CUDA library. An `__init__.py` that
extends its `__path__` (pkgutil.extend_path, pkg_resources.declare_namespace: what
rules_python writes) joins them again. In one site-packages the wheels' directories are
one directory, and nothing is hidden.

.pth files run only in site directories (site.addsitedir: site-packages, the user site);
in a directory that is merely on sys.path (PYTHONPATH) they are ignored.
"""

from __future__ import annotations

import posixpath
import re

from rpathfix.fstree import is_dir, is_file, read_small, resolve, scan
from rpathfix.plan import namespace_marker  # one answer to "does this __init__.py only mark a namespace?"
from rpathfix.resolution import Attempt
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rpathfix.fstree import FileTree
    from rpathfix.verify import Finding

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z0-9_.-]*)?\.(py|pyc|so|pyd|dylib)$")
MAX_DEPTH = 4
PTH_MAX = 1 << 20


class Hidden(NamedTuple):
    """A module or package of one sys.path entry that a regular package of another hides."""

    module: str  # dotted name: nvidia.cuda_runtime
    path: str  # where it is: <entry>/nvidia/cuda_runtime
    by: str  # the winning regular package's __init__.py
    importable: bool  # Python code (a package or module), not only data files


def hidden_modules(tree: FileTree, entries: Sequence[str]) -> list[Hidden]:
    """Every module or package that a regular package hides, for sys.path `entries` in order."""
    if len(entries) < 2:
        return []
    out: list[Hidden] = []
    _level(tree, [e for e in entries if resolve(tree, e) is not None], "", 0, out)
    seen: set[tuple[str, str]] = set()
    unique = []
    for h in out:
        if (h.module, h.path) not in seen:
            seen.add((h.module, h.path))
            unique.append(h)
    return unique


def _children(tree: FileTree, d: str) -> list[tuple[str, str]]:
    real = resolve(tree, d)
    if real is None:
        return []
    out: list[tuple[str, str]] = []
    for name, kind in scan(tree, real):
        if kind == "link":
            kind = "dir" if is_dir(tree, f"{d}/{name}") else "file"
        out.append((name, kind))
    return out


def _level(tree: FileTree, portions: list[str], prefix: str, depth: int, out: list[Hidden]) -> None:
    """Packages present in two or more of `portions` (the directories that make up package
    `prefix`, in sys.path order): which one wins, and what it hides."""
    if depth >= MAX_DEPTH or len(portions) < 2:
        return
    where: dict[str, list[str]] = {}
    for p in portions:
        for name, kind in _children(tree, p):
            if kind == "dir" and _IDENT.match(name):
                where.setdefault(name, []).append(f"{p}/{name}")
    for name in sorted(where):
        dirs = where[name]
        if len(dirs) < 2:
            continue
        dotted = f"{prefix}.{name}" if prefix else name
        regular = [d for d in dirs if is_file(tree, f"{d}/__init__.py")]
        winner = regular[0] if regular else None
        if winner is None or namespace_marker(tree, f"{winner}/__init__.py") in ("pkgutil", "pkg_resources"):
            _level(tree, dirs, dotted, depth + 1, out)  # one namespace package (or joined by the shim)
            continue
        mine = {n for n, _ in _children(tree, winner)}
        for d in dirs:
            if d == winner:
                continue
            for child, kind in _children(tree, d):
                if child in mine or child in ("__init__.py", "__pycache__"):
                    continue
                if kind == "dir" and _IDENT.match(child):
                    out.append(Hidden(f"{dotted}.{child}", f"{d}/{child}", f"{winner}/__init__.py",
                                      _has_python(tree, f"{d}/{child}")))
                elif kind == "file":
                    m = _MODULE.match(child)
                    if m is not None:
                        out.append(Hidden(f"{dotted}.{m.group(1)}", f"{d}/{child}", f"{winner}/__init__.py", True))


def _has_python(tree: FileTree, d: str) -> bool:
    return any(_MODULE.match(n) and not n.endswith(".dylib") for n, kind in _children(tree, d) if kind == "file")


def hidden_findings(tree: FileTree, entries: Sequence[str]) -> list[Finding]:
    """verify's findings for hidden packages: an error when Python code is hidden (its
    import fails), a warning when only data files are (libraries are still found by path).
    The trace holds the hidden path, so JSON readers need not parse the message. Portions
    of one distribution (two versions of setuptools on one sys.path) are not a namespace
    split over wheels, and are not reported here."""
    from rpathfix.causes import DistOwners
    from rpathfix.verify import Finding

    out: list[Finding] = []
    owners = DistOwners(tree, entries)
    for h in hidden_modules(tree, entries):
        mine, theirs = owners.owner(h.by), owners.owner(h.path)
        if mine is not None and theirs is not None and mine[0] == theirs[0]:
            continue  # two versions of one distribution, not a namespace split across wheels
        level = "error" if h.importable else "warning"
        what = "cannot be imported" if h.importable else "is not importable (data files only: still found by path)"
        out.append(Finding(level, "namespace-shadowed", h.by, h.module,
                           f"{h.module} in {h.path} {what}: {h.by} is a regular package, and Python takes the "
                           "first regular package on sys.path alone", (Attempt(h.path, "sys.path", "hidden"),)))
    return out


class PthFile(NamedTuple):
    path: str
    imports: tuple[str, ...]  # the `import` lines it would run
    adds: tuple[str, ...]  # the directories it would add to sys.path


def unrun_pth_files(tree: FileTree, entries: Sequence[str], site_dirs: Sequence[str]) -> list[PthFile]:
    """The .pth files of sys.path entries that are not site directories: Python ignores them."""
    sites = {posixpath.normpath(s) for s in site_dirs}
    out = []
    for e in entries:
        if posixpath.normpath(e) in sites:
            continue
        for name, kind in _children(tree, e):
            if not name.endswith(".pth") or kind != "file":
                continue
            data = read_small(tree, f"{e}/{name}", PTH_MAX)
            if data is None:
                continue
            imports, adds = [], []
            for line in data.decode("utf-8", "replace").splitlines():
                s = line.strip()
                if not s or s.startswith("#"):
                    continue
                if s.startswith(("import ", "import\t")):
                    imports.append(s[len("import"):].strip())
                else:
                    adds.append(s)
            out.append(PthFile(f"{e}/{name}", tuple(imports), tuple(adds)))
    return out
