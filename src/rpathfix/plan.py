"""Where every file of every distribution lands in one per-binary venv (`rpathfix plan`).

A pure function over a FileTree: distribution roots in, model.PlanEntry list out.

The rules, and why:
- A directory is linked whole only when nothing needs it real: one distribution
  provides it, and no native library's `$ORIGIN/..` (ELF) climbs through it to reach
  files that another distribution provides. The kernel resolves `..` from a symlinked
  directory's target (LOADERS.md rules 17 and 26), so a linked `torch/` would send
  `$ORIGIN/../../nvidia` back into torch's own root. A climb that only reaches the
  library's own distribution works through a link and needs nothing real.
- Mach-O: dyld takes `@loader_path` from the file's real path (rule 31), so no symlink
  carries a cross-distribution `@loader_path/..`; such files are copied.
- Directories shared by several distributions (nvidia/, nvidia/cu13/lib) are real and
  merged entry by entry, recursively.
- The same path from several distributions: identical content is one entry; namespace
  `__init__.py` markers (empty, pkgutil or pkg_resources shims) are not conflicts;
  anything else is an error unless a precedence list names the winner. A cached .pyc
  follows the distribution whose source won.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rpathfix.errors import PlanError
from rpathfix.fstree import FileTree, read_small, resolve
from rpathfix.fstree import scan as fs_scan
from rpathfix.model import ElfInfo, MachoInfo, PlanEntry
from rpathfix.roots import KIND_DIRS, Root
from rpathfix.sniff import looks_like_library, read_binary_in

KIND_ORDER = {k: i for i, (k, _) in enumerate(KIND_DIRS)}
_ORIGIN = re.compile(r"^\$(ORIGIN|\{ORIGIN\})(?=/|$)")
_LOADER = "@loader_path"
MARKER_MAX = 4096


@dataclass
class _Node:
    """A path in the merged tree: who provides it as a directory, who as a file."""

    dirs: dict[str, str] = field(default_factory=dict)  # dist -> absolute dir
    files: dict[str, str] = field(default_factory=dict)  # dist -> absolute file (or link)
    children: dict[str, _Node] = field(default_factory=dict)

    def providers(self) -> set[str]:
        """Every distribution providing something at or under this path."""
        out = set(self.dirs) | set(self.files)
        for c in self.children.values():
            out |= c.providers()
        return out


@dataclass(frozen=True)
class RealDir:
    """A directory the venv must hold for real, and why."""

    kind: str
    venv_path: str
    reasons: tuple[str, ...]


@dataclass
class Plan:
    entries: list[PlanEntry]
    real_dirs: list[RealDir]
    notes: list[str]


def make_plan(tree: FileTree, roots: Sequence[Root], *, precedence: Sequence[str] = ()) -> Plan:
    """Merge distribution roots into one venv layout; PlanError on unresolvable conflicts."""
    roots = _check_roots(roots)
    notes: list[str] = []
    entries: list[PlanEntry] = []
    real_dirs: list[RealDir] = []
    for kind, _ in KIND_DIRS:
        top = _Node()
        for r in roots:
            d = r.dir_for(kind)
            if d is not None:
                _add_tree(tree, top, r.dist, d)
        if not top.children:
            continue
        force: dict[str, list[str]] = {}
        copies: dict[str, str] = {}
        if kind == "site-packages":
            _native_requirements(tree, top, force, copies, notes)
        _emit(tree, kind, top, "", force, copies, precedence, entries, real_dirs, notes)
    entries.sort(key=lambda e: (KIND_ORDER[e.kind], e.venv_path))
    real_dirs.sort(key=lambda d: (KIND_ORDER[d.kind], d.venv_path))
    return Plan(entries, real_dirs, notes)


def _check_roots(roots: Sequence[Root]) -> list[Root]:
    """One root per distribution: two versions of one distribution are an error."""
    seen: dict[str, Root] = {}
    out: list[Root] = []
    for r in roots:
        prev = seen.get(r.dist)
        if prev is None:
            seen[r.dist] = r
            out.append(r)
        elif prev.path == r.path:
            continue
        elif prev.version != r.version:
            raise PlanError(
                f"two versions of {r.dist}: {prev.version} ({prev.path}) and {r.version} ({r.path}); "
                "pass only one of them"
            )
        else:
            raise PlanError(f"{r.dist} {r.version} given twice: {prev.path} and {r.path}; pass it once")
    return out


def _add_tree(tree: FileTree, node: _Node, dist: str, directory: str) -> None:
    node.dirs[dist] = directory
    for name, kind in fs_scan(tree, directory):
        path = posixpath.join(directory, name)
        child = node.children.setdefault(name, _Node())
        if kind == "dir":
            _add_tree(tree, child, dist, path)
        else:
            child.files[dist] = path


# ---------------------------------------------------------------- native libraries


def _iter_files(node: _Node, rel: str) -> Iterable[tuple[str, _Node]]:
    """Every node holding files, in path order (an explicit stack: torch has 20,000 files)."""
    stack: list[tuple[str, _Node]] = [(rel, node)]
    while stack:
        prefix, current = stack.pop()
        for name in sorted(current.children, reverse=True):
            child = current.children[name]
            stack.append((f"{prefix}/{name}" if prefix else name, child))
        if current is not node and current.files:
            yield prefix, current


def _lookup(top: _Node, rel: str) -> _Node | None:
    node = top
    for part in [p for p in rel.split("/") if p]:
        nxt = node.children.get(part)
        if nxt is None:
            return None
        node = nxt
    return node


def climb(lib_dir: str, relative: str) -> tuple[str, int] | None:
    """Lexically apply `relative` to venv directory `lib_dir`.

    Returns (target directory, lowest depth reached), or None when the climb leaves
    site-packages (no layout of site-packages can serve it).
    """
    parts = [p for p in lib_dir.split("/") if p]
    lowest = len(parts)
    for comp in relative.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None
            parts.pop()
            lowest = min(lowest, len(parts))
        else:
            parts.append(comp)
    return "/".join(parts), lowest


def _relative_refs(tree: FileTree, path: str) -> tuple[str, list[str]] | None:
    """("elf"|"macho", the loader-relative parts) of the search entries of a native file."""
    info = read_binary_in(tree, path)
    if isinstance(info, ElfInfo):
        effective = info.runpath if info.runpath is not None else info.rpath  # LOADERS.md rule 6
        elems = list(effective.split(":")) if effective else []
        elems += [n for n in info.needed if "/" in n]
        rels = []
        for e in elems:
            m = _ORIGIN.match(e)
            if m:
                rels.append(e[m.end():].lstrip("/"))
        return "elf", rels
    if isinstance(info, MachoInfo):
        rels = []
        for s in info.slices:
            for e in list(s.rpaths) + [d.name for d in s.dylibs]:
                if e == _LOADER or e.startswith(_LOADER + "/"):
                    rels.append(e[len(_LOADER):].lstrip("/"))
        return "macho", sorted(set(rels))
    return None


def _native_requirements(tree: FileTree, top: _Node, force: dict[str, list[str]], copies: dict[str, str],
                         notes: list[str]) -> None:
    """Which directories must be real and which Mach-O files copied, from the binaries' own paths."""
    macho_targets: list[tuple[str, list[str]]] = []  # (file, directories its @loader_path refs reach)
    for rel, node in _iter_files(top, ""):
        name = posixpath.basename(rel)
        named_like_library = looks_like_library(name)
        if not named_like_library and "." in name:
            continue  # neither a library name nor an executable's (no suffix): not native
        for dist, path in sorted(node.files.items()):
            # A root's file may itself be a symlink (Bazel's sandbox and runfiles are made of
            # them): the binary is what it points to, its place in the venv is still `rel`.
            real = resolve(tree, path)
            st = tree.lstat(real) if real is not None else None
            if real is None or st is None or st.kind != "file":
                continue
            path = real
            if not (named_like_library or st.mode & 0o111):
                continue
            refs = _relative_refs(tree, path)
            if refs is None:
                continue
            fmt, rels = refs
            lib_dir = posixpath.dirname(rel)
            if fmt == "macho":
                reached = [c[0] for c in (climb(lib_dir, r) for r in rels) if c is not None]
                macho_targets.append((rel, reached))
            for r in rels:
                c = climb(lib_dir, r)
                if c is None:
                    notes.append(f"{rel} ({dist}): '{r}' climbs out of site-packages; no layout can serve it")
                    continue
                target, lowest = c
                depth = len([p for p in lib_dir.split("/") if p])
                if lowest >= depth:
                    continue  # no `..` above its own directory: a symlinked parent does not matter
                tnode = _lookup(top, target)
                if tnode is None or tnode.providers() <= {dist}:
                    continue  # the climb reaches only the library's own distribution (or nothing)
                why = f"{rel} ({dist}) reaches {target or '.'} through '{r}'"
                if fmt == "macho":
                    copies.setdefault(rel, f"@loader_path is the real path for dyld: {why}")
                    continue
                parts = lib_dir.split("/")
                for i in range(lowest + 1, depth + 1):
                    force.setdefault("/".join(parts[:i]), []).append(why)
    # A Mach-O file whose @loader_path reaches a copied file must be a copy too: through a
    # symlink, dyld would take @loader_path from the root and load the uncopied original.
    changed = True
    while changed:
        changed = False
        copied_dirs = {posixpath.dirname(c): c for c in sorted(copies)}
        for rel, reached in macho_targets:
            if rel in copies:
                continue
            hit = next((copied_dirs[t] for t in reached if t in copied_dirs), None)
            if hit is not None:
                copies[rel] = f"@loader_path is the real path for dyld: {rel} loads the copied {hit}"
                changed = True


# ---------------------------------------------------------------- emitting entries


def _must_be_real(rel: str, node: _Node, force: dict[str, list[str]], copies: dict[str, str]) -> list[str]:
    reasons: list[str] = []
    if len(node.dirs) > 1:
        reasons.append("shared by " + ", ".join(sorted(node.dirs)))
    if rel in force:
        reasons.extend(sorted(set(force[rel])))
    prefix = rel + "/"
    if any(c.startswith(prefix) for c in copies):
        reasons.append("holds a copied Mach-O file")
    if not reasons and any(f.startswith(prefix) for f in force):
        reasons.append("a subdirectory must be real")
    return reasons


def _emit(tree: FileTree, kind: str, node: _Node, rel: str, force: dict[str, list[str]], copies: dict[str, str],
          precedence: Sequence[str], entries: list[PlanEntry], real_dirs: list[RealDir], notes: list[str]) -> None:
    winners: dict[str, str] = {}  # source file name in this dir -> winning dist (for __pycache__)
    # Files first, so that __pycache__ knows which source won.
    for name in sorted(node.children, key=lambda n: (not node.children[n].files, n)):
        child = node.children[name]
        crel = posixpath.join(rel, name) if rel else name
        if child.files and child.dirs:
            raise PlanError(
                f"{kind}/{crel} is a file in {', '.join(sorted(child.files))} "
                f"but a directory in {', '.join(sorted(child.dirs))}"
            )
        if child.files:
            dist = _pick_file(tree, kind, crel, child.files, precedence, notes)
            winners[name] = dist
            method: Literal["symlink", "copy"] = "copy" if crel in copies else "symlink"
            entries.append(PlanEntry(kind=kind, venv_path=crel, target=child.files[dist], dist=dist,  # type: ignore[arg-type]
                                     method=method, reason=copies.get(crel)))
            continue
        reasons = _must_be_real(crel, child, force, copies)
        if reasons:
            real_dirs.append(RealDir(kind, crel, tuple(reasons)))
            if name == "__pycache__":
                _emit_pycache(kind, child, crel, node, winners, entries)
            else:
                _emit(tree, kind, child, crel, force, copies, precedence, entries, real_dirs, notes)
        else:
            (dist, target), = child.dirs.items()
            entries.append(PlanEntry(kind=kind, venv_path=crel, target=target, dist=dist))  # type: ignore[arg-type]


def _emit_pycache(kind: str, cache: _Node, rel: str, parent: _Node, winners: dict[str, str],
                  entries: list[PlanEntry]) -> None:
    """Cached bytecode follows the distribution whose source file won."""
    for name in sorted(cache.children):
        child = cache.children[name]
        stem = name.split(".", 1)[0]
        source_winner = winners.get(stem + ".py")
        if source_winner is not None and source_winner in child.files:
            dist = source_winner
        elif source_winner is None and len(child.files) == 1:
            dist = next(iter(child.files))
        else:
            continue  # stale bytecode of a source that lost, or a directory: leave it out
        entries.append(PlanEntry(kind=kind, venv_path=posixpath.join(rel, name),  # type: ignore[arg-type]
                                 target=child.files[dist], dist=dist))


def _pick_file(tree: FileTree, kind: str, rel: str, files: dict[str, str], precedence: Sequence[str],
               notes: list[str]) -> str:
    dists = sorted(files)
    if len(dists) == 1:
        return dists[0]
    groups: dict[str, list[str]] = {}
    for d in dists:
        groups.setdefault(_digest(tree, files[d]), []).append(d)
    if len(groups) == 1:
        return dists[0]
    if posixpath.basename(rel) == "__init__.py":
        kinds = {d: _namespace_marker(tree, files[d]) for d in dists}
        if all(kinds.values()):
            rank = {"pkgutil": 0, "pkg_resources": 1, "empty": 2}
            return min(dists, key=lambda d: (rank[kinds[d] or "empty"], d))
    for p in precedence:
        if p in files:
            notes.append(f"{kind}/{rel}: {p} wins by precedence over {', '.join(d for d in dists if d != p)}")
            return p
    a, b = (groups[g][0] for g in list(groups)[:2])
    raise PlanError(
        f"{kind}/{rel} differs between {a} ({files[a]}) and {b} ({files[b]}); "
        f"choose one with --prefer {a} or --prefer {b}"
    )


def _digest(tree: FileTree, path: str) -> str:
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


_PKGUTIL = re.compile(r"pkgutil\b.*\bextend_path\b|\bextend_path\b.*pkgutil", re.S)
_PKG_RESOURCES = re.compile(r"pkg_resources\b.*\bdeclare_namespace\b", re.S)


def _namespace_marker(tree: FileTree, path: str) -> str | None:
    """"empty", "pkgutil" or "pkg_resources" when the __init__.py only marks a namespace."""
    data = read_small(tree, path, MARKER_MAX)
    if data is None:
        return None
    text = data.decode("utf-8", "replace")
    code = "\n".join(line for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if not code.strip() or re.fullmatch(r"\s*(['\"]{3}.*?['\"]{3}|['\"].*?['\"])\s*", code, re.S):
        return "empty"
    if _PKGUTIL.search(code):
        return "pkgutil"
    if _PKG_RESOURCES.search(code):
        return "pkg_resources"
    return None


def plan_to_json(plan: Plan) -> dict[str, object]:
    """rpathfix.plan/1: entries map one to one onto rules_python's PyInfo.venv_symlinks."""
    return {
        "schema": "rpathfix.plan/1",
        "entries": [
            {"kind": e.kind, "venv_path": e.venv_path, "link_to_path": e.target, "dist": e.dist,
             "method": e.method, "reason": e.reason}
            for e in plan.entries
        ],
        "real_directories": [{"kind": d.kind, "venv_path": d.venv_path, "reasons": list(d.reasons)}
                             for d in plan.real_dirs],
        "notes": list(plan.notes),
    }
