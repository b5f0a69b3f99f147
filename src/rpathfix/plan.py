"""Where every file of every distribution lands in one per-binary venv (`rpathfix plan`).

A pure function over a FileTree: distribution roots in, model.PlanEntry list out.

The rules, and why:
- A directory is linked whole only when nothing needs it real: one distribution
  provides it, and no native library's `$ORIGIN/..` (ELF) climbs through it to reach
  files that another distribution provides. The kernel resolves `..` from a symlinked
  directory's target (LOADERS.md rules 17 and 26), so a linked `torch/` would send
  `$ORIGIN/../../nvidia` back into torch's own root. A climb that only reaches the
  library's own distribution works through a link and needs nothing real.
- Files whose loader takes their origin from their resolved path are copied (PlanEntry
  method "copy") when an origin-relative entry reaches what another distribution provides,
  or leaves the kind's directory: Mach-O images (dyld's `@loader_path` is the real path,
  rule 31) and ELF executables (the kernel's `$ORIGIN` for the main program is
  /proc/self/exe, rule 18). Through a symlink such a file looks everything up in its own
  root, which holds only its own distribution; no "the climb stays in its directory"
  shortcut applies to them: a shared directory (two wheels installing into `pkg/`) is
  already more than the root holds. Executables are looked for in bin/ and data/ too
  (`.data/scripts` programs land in the venv's bin/, where pip puts them).
- Directories shared by several distributions (nvidia/, nvidia/cu13/lib) are real and
  merged entry by entry, recursively.
- The same path from several distributions: identical content is one entry; namespace
  `__init__.py` markers (empty, pkgutil or pkg_resources shims) are not conflicts;
  anything else is an error unless a precedence list names the winner. A cached .pyc
  follows the distribution whose source won.

Only what decides the layout is read: each root's native files are found from its
RECORD (the installer's list of every file; a root without one is walked), and a
directory is listed only when it is shared or must be real. Everything else is one
link, whatever it holds: torch's 1,330 directories cost no listing at all.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

from rpathfix.environment import file_digest, is_executable
from rpathfix.errors import PlanError
from rpathfix.fstree import read_small, regular_file, resolve
from rpathfix.fstree import scan as fs_scan
from rpathfix.model import ElfInfo, PlanEntry
from rpathfix.record import MAX_RECORD_BYTES, record_paths
from rpathfix.roots import KIND_DIRS, Root
from rpathfix.sniff import looks_like_library, may_be_native, read_binary_in, remember_binary
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Literal

    from rpathfix.fstree import FileTree
    from rpathfix.model import BinaryInfo

KIND_ORDER = {k: i for i, (k, _) in enumerate(KIND_DIRS)}
_ORIGIN = re.compile(r"^\$(ORIGIN|\{ORIGIN\})(?=/|$)")
_LOADER = "@loader_path"
MARKER_MAX = 4096
# A bound on a walk of a root without RECORD, so a symlink loop cannot make it run forever.
MAX_WALK_ENTRIES = 2_000_000


class _Node:
    """One name in a merged directory: who provides it as a directory, who as a file."""

    __slots__ = ("dirs", "files")

    def __init__(self) -> None:
        self.dirs: dict[str, str] = {}  # dist -> absolute dir
        self.files: dict[str, str] = {}  # dist -> absolute file (or link)


class RealDir(NamedTuple):
    """A directory the venv must hold for real, and why."""

    kind: str
    venv_path: str
    reasons: tuple[str, ...]


class Binary(NamedTuple):
    """A native file of a distribution: where it lands, what it is."""

    dist: str
    rel: str  # its path under its kind's directory (site-packages, bin, ...), in the roots and in the venv
    real: str  # the physical file in the root
    info: BinaryInfo
    kind: str = "site-packages"


class Plan(NamedTuple):
    entries: list[PlanEntry]
    real_dirs: list[RealDir]
    notes: list[str]
    # The native files the venv will hold (those whose distribution won their path): every
    # one of site-packages, and the executables of bin/ and data/ (Binary.kind says which
    # directory `rel` is under). What a check of the planned venv loads, without walking it.
    binaries: list[Binary]


def make_plan(tree: FileTree, roots: Sequence[Root], *, precedence: Sequence[str] = ()) -> Plan:
    """Merge distribution roots into one venv layout; PlanError on unresolvable conflicts."""
    roots = _check_roots(roots)
    notes: list[str] = []
    entries: list[PlanEntry] = []
    real_dirs: list[RealDir] = []
    binaries: list[Binary] = []
    for kind, _ in KIND_DIRS:
        dirs = {r.dist: d for r in roots if (d := r.dir_for(kind)) is not None}
        force: dict[str, list[str]] = {}
        copies: dict[str, str] = {}
        if kind == "include":
            # .data/headers: pip and pypa/installer put each distribution's headers in a
            # directory of its own, include/site/pythonX.Y/<dist>/, so two distributions
            # that ship config.h never meet. One entry per root, nothing to merge.
            entries += [PlanEntry(kind="include", venv_path=headers_dir_name(tree, r), target=dirs[r.dist],
                                  dist=r.dist) for r in sorted(roots, key=lambda r: r.dist) if r.dist in dirs]
            continue
        found: list[Binary] = []
        for r in sorted(roots, key=lambda r: r.dist):
            if r.dist in dirs:
                found += _binaries_of(tree, kind, r, dirs[r.dist])
        _native_requirements(tree, kind, dirs, found, force, copies, notes)
        binaries += found
        _emit(tree, kind, dirs, "", force, copies, precedence, entries, real_dirs, notes)
    entries.sort(key=lambda e: (KIND_ORDER[e.kind], e.venv_path))
    real_dirs.sort(key=lambda d: (KIND_ORDER[d.kind], d.venv_path))
    return Plan(entries, real_dirs, notes, _placed(entries, binaries))


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


def headers_dir_name(tree: FileTree, root: Root) -> str:
    """The name of a distribution's headers directory in include/site/pythonX.Y/: the
    distribution as its wheel file and .dist-info directory spell it (`foo_bar`), which is
    what pypa/installer uses; the root's normalized name without a single .dist-info."""
    site = root.dir_for("site-packages")
    names = [n[:-len(".dist-info")].split("-", 1)[0] for n in tree.listdir(site) if n.endswith(".dist-info")] \
        if site is not None else []
    return names[0] if len(names) == 1 and names[0] not in ("", ".", "..") else root.dist


def _children(tree: FileTree, dirs: dict[str, str]) -> dict[str, _Node]:
    """The merged listing of one directory that several roots (or one) provide."""
    out: dict[str, _Node] = {}
    for dist, d in dirs.items():
        for name, kind in fs_scan(tree, d):
            node = out.get(name)
            if node is None:
                node = out[name] = _Node()
            (node.dirs if kind == "dir" else node.files)[dist] = f"{d}/{name}"
    return out


# ---------------------------------------------------------------- native files


def _binaries_of(tree: FileTree, kind: str, root: Root, d: str) -> list[Binary]:
    """The native files of one root's directory of `kind` that decide the layout: every one
    in site-packages; the executables of bin/ and data/ (a program is started there; a
    library there is not what Python loads); nothing in include/."""
    if kind == "site-packages":
        return find_binaries(tree, root.dist, d, root.path)
    if kind == "include":
        return []
    return [b._replace(kind=kind) for b in _confirm(tree, root.dist, d, sorted(_walk_rels(tree, d)))
            if is_executable(b.info)]


def find_binaries(tree: FileTree, dist: str, site: str, root: str | None = None) -> list[Binary]:
    """The native files of one root's site-packages, in path order.

    A candidate is named like a library, or has no dot in its name and an exec bit (an
    executable), and is confirmed by its headers. The root's index (natives.py, written by
    `rpathfix unpack`) answers first, for every file it describes unchanged; without one,
    candidates come from the RECORD of the root's one .dist-info, and a root without a
    readable RECORD (or holding several distributions) is walked.
    """
    if root is not None and site == f"{root}/site-packages":
        indexed = _from_index(tree, dist, site, root)
        if indexed is not None:
            return indexed
    rels = _record_rels(tree, site)
    if rels is None:
        rels = _walk_rels(tree, site)
    return _confirm(tree, dist, site, sorted(set(rels)))


def _from_index(tree: FileTree, dist: str, site: str, root: str) -> list[Binary] | None:
    """The binaries the root's index lists: headers from the index while a file's size and
    mtime match it, read again otherwise. None without a usable index."""
    from rpathfix.natives import read_index

    entries = read_index(tree, root)
    if entries is None:
        return None
    out: list[Binary] = []
    for rel, size, mtime_ns, info in entries:
        found = regular_file(tree, f"{site}/{rel}")
        if found is None:
            continue
        real, node = found
        if node.size == size and node.mtime_ns == mtime_ns:
            remember_binary(tree, real, info)  # the loader model reads it from there
        else:
            fresh = read_binary_in(tree, real)
            if fresh is None:
                continue
            info = fresh
        out.append(Binary(dist, rel, real, info))
    return out


def _confirm(tree: FileTree, dist: str, site: str, rels: list[str]) -> list[Binary]:
    """The candidates (paths whose names may_be_native) that are native files, with their headers."""
    out: list[Binary] = []
    for rel in rels:
        name = rel[rel.rfind("/") + 1:]
        # A root's file may itself be a symlink (Bazel's sandbox and runfiles are made of
        # them): the binary is what it points to; its place in the venv is still `rel`.
        found = regular_file(tree, f"{site}/{rel}")
        if found is None:
            continue
        real, node = found
        if not (node.mode & 0o111 or looks_like_library(name)):
            continue
        info = read_binary_in(tree, real)
        if info is not None:
            out.append(Binary(dist, rel, real, info))
    return out


def _record_rels(tree: FileTree, site: str) -> list[str] | None:
    """Candidate paths (names that may_be_native) under `site` from its one RECORD,
    normalized; None without one."""
    infos = [n for n in tree.listdir(site) if n.endswith(".dist-info")]
    if len(infos) != 1:
        return None
    data = read_small(tree, f"{site}/{infos[0]}/RECORD", MAX_RECORD_BYTES)
    if data is None:
        return None
    out = []
    for rel in record_paths(data.decode("utf-8", "replace")):
        if not may_be_native(rel[rel.rfind("/") + 1:]):
            continue  # the common case, decided before any normalization
        if not rel or rel[0] in "./" or "/." in rel or "//" in rel:
            rel = posixpath.normpath(rel)
            if rel.startswith(("/", "../")) or rel in (".", ".."):
                continue  # outside site-packages (scripts, headers): not this kind's
        out.append(rel)
    return out


def _walk_rels(tree: FileTree, site: str) -> list[str]:
    """Every candidate path under `site`: the non-directories whose names may_be_native
    (symlinked directories are not entered)."""
    out: list[str] = []
    stack = [""]
    budget = MAX_WALK_ENTRIES
    while stack:
        rel = stack.pop()
        for name, kind in fs_scan(tree, f"{site}/{rel}" if rel else site):
            budget -= 1
            if budget < 0:
                raise PlanError(f"{site}: more than {MAX_WALK_ENTRIES} entries; is there a symlink loop?")
            child = f"{rel}/{name}" if rel else name
            if kind == "dir":
                stack.append(child)
            elif may_be_native(name):
                out.append(child)
    return out


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


def _relative_refs(info: BinaryInfo) -> tuple[str, list[str]]:
    """("elf"|"macho", the loader-relative parts) of the search entries of a native file."""
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
    rels = []
    for s in info.slices:
        for e in list(s.rpaths) + [d.name for d in s.dylibs]:
            if e == _LOADER or e.startswith(_LOADER + "/"):
                rels.append(e[len(_LOADER):].lstrip("/"))
    return "macho", sorted(set(rels))


def _native_requirements(tree: FileTree, kind: str, sites: dict[str, str], binaries: list[Binary],
                         force: dict[str, list[str]], copies: dict[str, str], notes: list[str]) -> None:
    """Which directories must be real (ELF libraries) and which files copied (Mach-O images,
    ELF executables), from the binaries' own paths."""
    macho_targets: list[tuple[str, list[str]]] = []  # (file, directories its @loader_path refs reach)
    providers: dict[str, set[str]] = {}  # venv path -> distributions providing something there

    def provided_by(target: str) -> set[str]:
        if target not in providers:
            # A site can hold site/a/b only if `a` is in its listing (which _emit reads
            # anyway): 29 torch roots, but two or three hold `nvidia`.
            top = target.split("/", 1)[0]
            providers[target] = {d for d, site in sites.items()
                                 if not target or (any(n == top for n, _ in fs_scan(tree, site))
                                                   and resolve(tree, f"{site}/{target}") is not None)}
        return providers[target]

    for b in sorted(binaries, key=lambda b: (b.rel, b.dist)):
        fmt, rels = _relative_refs(b.info)
        lib_dir = posixpath.dirname(b.rel)
        depth = len([p for p in lib_dir.split("/") if p])
        # Rules 18 and 31: the origin of these is their resolved path, not the venv's.
        from_real_path = fmt == "macho" or is_executable(b.info)
        why_copy = ("@loader_path is the real path for dyld" if fmt == "macho" else
                    "the kernel gives an executable the $ORIGIN of its resolved path")
        if fmt == "macho":
            reached = [c[0] for c in (climb(lib_dir, r) for r in rels) if c is not None]
            macho_targets.append((b.rel, reached))
        for r in rels:
            c = climb(lib_dir, r)
            if c is None:
                if from_real_path:
                    # Only a file in the venv sees the venv's own layout above its kind's
                    # directory (lib/pythonX.Y/site-packages, not the root's site-packages).
                    copies.setdefault(b.rel, f"{why_copy}: {b.rel} ({b.dist}) climbs out of {kind}/ through '{r}'")
                else:
                    notes.append(f"{b.rel} ({b.dist}): '{r}' climbs out of {kind}; no layout can serve it")
                continue
            target, lowest = c
            if not from_real_path and lowest >= depth:
                continue  # no `..` above its own directory: a symlinked parent does not matter
            if provided_by(target) <= {b.dist}:
                continue  # the reference reaches only the file's own distribution (or nothing)
            why = f"{b.rel} ({b.dist}) reaches {target or '.'} through '{r}'"
            if from_real_path:
                copies.setdefault(b.rel, f"{why_copy}: {why}")
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


def _placed(entries: list[PlanEntry], binaries: list[Binary]) -> list[Binary]:
    """The binaries that land in the venv: under an entry of their own distribution."""
    by_path: dict[tuple[str, str], PlanEntry] = {(e.kind, e.venv_path): e for e in entries}
    out = []
    for b in binaries:
        p = b.rel
        while True:
            e = by_path.get((b.kind, p))
            if e is not None:
                if e.dist == b.dist:
                    out.append(b)
                break
            if "/" not in p:
                break
            p = p.rsplit("/", 1)[0]
    out.sort(key=lambda b: (KIND_ORDER[b.kind], b.rel))
    return out


# ---------------------------------------------------------------- emitting entries


def _must_be_real(rel: str, node: _Node, force: dict[str, list[str]], copies: dict[str, str]) -> list[str]:
    reasons: list[str] = []
    if len(node.dirs) > 1:
        reasons.append("shared by " + ", ".join(sorted(node.dirs)))
    if rel in force:
        reasons.extend(sorted(set(force[rel])))
    prefix = rel + "/"
    copied = sorted(c for c in copies if c.startswith(prefix))
    if copied:
        more = f" and {len(copied) - 1} more" if len(copied) > 1 else ""
        reasons.append(f"holds the copied {copied[0]}{more}")
    if not reasons and any(f.startswith(prefix) for f in force):
        reasons.append("a subdirectory must be real")
    return reasons


def _emit(tree: FileTree, kind: str, dirs: dict[str, str], rel: str, force: dict[str, list[str]],
          copies: dict[str, str], precedence: Sequence[str], entries: list[PlanEntry], real_dirs: list[RealDir],
          notes: list[str]) -> None:
    """Entries for one real directory of the venv, provided by `dirs` (dist -> directory)."""
    children = _children(tree, dirs)
    winners: dict[str, str] = {}  # source file name in this dir -> winning dist (for __pycache__)
    # Files first, so that __pycache__ knows which source won.
    for name in sorted(children, key=lambda n: (not children[n].files, n)):
        child = children[name]
        crel = f"{rel}/{name}" if rel else name
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
                _emit_pycache(tree, kind, child.dirs, crel, winners, entries)
            else:
                _emit(tree, kind, child.dirs, crel, force, copies, precedence, entries, real_dirs, notes)
        else:
            (dist, target), = child.dirs.items()
            entries.append(PlanEntry(kind=kind, venv_path=crel, target=target, dist=dist))  # type: ignore[arg-type]


def _emit_pycache(tree: FileTree, kind: str, dirs: dict[str, str], rel: str, winners: dict[str, str],
                  entries: list[PlanEntry]) -> None:
    """Cached bytecode follows the distribution whose source file won."""
    children = _children(tree, dirs)
    for name in sorted(children):
        child = children[name]
        stem = name.split(".", 1)[0]
        source_winner = winners.get(stem + ".py")
        if source_winner is not None and source_winner in child.files:
            dist = source_winner
        elif source_winner is None and len(child.files) == 1:
            dist = next(iter(child.files))
        else:
            continue  # stale bytecode of a source that lost, or a directory: leave it out
        entries.append(PlanEntry(kind=kind, venv_path=f"{rel}/{name}",  # type: ignore[arg-type]
                                 target=child.files[dist], dist=dist))


def _pick_file(tree: FileTree, kind: str, rel: str, files: dict[str, str], precedence: Sequence[str],
               notes: list[str]) -> str:
    dists = sorted(files)
    if len(dists) == 1:
        return dists[0]
    groups: dict[str, list[str]] = {}
    for d in dists:
        groups.setdefault(file_digest(tree, files[d]), []).append(d)
    if len(groups) == 1:
        return dists[0]
    if posixpath.basename(rel) == "__init__.py":
        kinds = {d: namespace_marker(tree, files[d]) for d in dists}
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


_PKGUTIL = re.compile(r"pkgutil\b.*\bextend_path\b|\bextend_path\b.*pkgutil", re.S)
_PKG_RESOURCES = re.compile(r"pkg_resources\b.*\bdeclare_namespace\b", re.S)


def namespace_marker(tree: FileTree, path: str) -> str | None:
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
