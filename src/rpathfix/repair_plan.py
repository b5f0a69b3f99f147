"""Which rpath entries each native file of a wheel needs to find its sibling wheels (pure).

The question is asked of the layout the wheels will have once installed together: the same
planner (`plan.make_plan`) and loader models (`loader_glibc`, `loader_dyld`) that `rpathfix venv`
uses, run over the planned venv (build_venv.planned_tree) of the wheel and its siblings. The
wheels are read in place through a FileTree (wheeltree.WheelTree); nothing is unpacked.

For every native file F of the wheel, and every name F needs:
- found inside site-packages through F's own search path: nothing to do;
- a GPU driver library or a manylinux-policy system library (systemlibs): left alone, even
  when a sibling ships a copy (never an rpath to, nor a copy of, those);
- provided by a file of the wheel or of a sibling (by file name, SONAME or install name): F
  gets the entry from where F lands to where the provider lands (`$ORIGIN/../../nvidia/cu13/lib`,
  `@loader_path/../../macdep/lib`), appended after F's existing entries, which stay in order;
- provided by nothing: left to the check below.

ELF entries go into F's own tag (DT_RUNPATH when F has it, else DT_RPATH); a file with neither
takes the tag the wheel's other libraries use, else the default (`rpath`: torch ships DT_RPATH
on purpose, so that LD_LIBRARY_PATH cannot put another CUDA under PyPI's libraries; DT_RUNPATH
would rank below LD_LIBRARY_PATH). Mach-O gets LC_RPATH commands (every slice).

Then the repaired layout is checked before a byte is written: the headers the edits will
produce are computed here ("virtual" headers: F's ElfInfo with its new rpath) and handed to the
loader model through the header memo (sniff.remember_binary), so the planner and the loader
see the repaired files as if they were written; the plan is made again with them (a new
`$ORIGIN/..` climb may need real directories in an rpathfix venv) and every native file of the
wheel is loaded. An extension module or a repaired library that would still not load is an
error (the caller refuses unless told to allow it); other files' problems are warnings.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping, Sequence

from rpathfix.fstree import CachedTree
from rpathfix.model import Edit, ElfInfo, MachoInfo, split_path_list
from rpathfix.sniff import remember_binary
from rpathfix.static import TYPE_CHECKING, NamedTuple
from rpathfix.systemlibs import system_reason

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree
    from rpathfix.model import BinaryInfo
    from rpathfix.plan import Binary, Plan
    from rpathfix.resolution import LoadResult
    from rpathfix.roots import Root
    from rpathfix.verify import Finding

RPATH_TAGS = ("rpath", "runpath")
DEFAULT_RPATH_TAG = "rpath"
# Where the planned venv of the check "is": nothing exists there, the overlay is all of it.
CHECK_ROOT = "/rpathfix-repair-check"
_SITE = f"{CHECK_ROOT}/site-packages"
_KIND_DIRS = {"site-packages": _SITE, "bin": f"{CHECK_ROOT}/bin", "include": f"{CHECK_ROOT}/include",
              "data": f"{CHECK_ROOT}/data"}


class Added(NamedTuple):
    """One new search entry, and the name that needed it."""

    name: str  # the DT_NEEDED name, or the @rpath/ install name
    entry: str  # "$ORIGIN/../../nvidia/cu13/lib" or "@loader_path/../../macdep/lib"
    provider: str  # the providing file, relative to site-packages
    dist: str  # the provider's distribution (the wheel's own for its own files)
    version: str | None


class FileRepair(NamedTuple):
    """The edits of one native file of the wheel."""

    member: str  # the wheel member
    path: str  # where it lands, relative to site-packages
    format: str  # "elf" or "macho"
    tag: str | None  # ELF: "rpath" or "runpath", where the new entries go; None for Mach-O
    edits: tuple[Edit, ...]
    added: tuple[Added, ...]
    before: BinaryInfo
    after: BinaryInfo  # the headers the edits must produce (what the check loaded)


class Skipped(NamedTuple):
    """A name no entry is added for although it is not found inside site-packages."""

    path: str
    name: str
    reason: str  # "driver" or "system"


class Requirement(NamedTuple):
    """A sibling distribution the repaired wheel now loads libraries from."""

    dist: str
    requirement: str  # "nvidia-cublas~=13.1"
    status: str  # "required" (unconditionally), "extra" (only under extras), "missing"
    extras: tuple[str, ...]  # the extras it is listed under


class RepairPlan(NamedTuple):
    wheel: str  # the wheel file (the root it is mounted as)
    dist: str
    version: str | None
    files: tuple[FileRepair, ...]  # files that get edits, in path order
    skipped: tuple[Skipped, ...]
    requirements: tuple[Requirement, ...]
    findings: tuple[Finding, ...]  # the check of the repaired layout
    checked: int  # native files of the wheel loaded by the check
    notes: tuple[str, ...]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]


def plan_repair(tree: FileTree, wheel_root: str, sibling_roots: Sequence[str], *,
                member_of: Callable[[str], str | None], metadata: bytes | None = None,
                rpath_tag_default: str = DEFAULT_RPATH_TAG,
                known: Mapping[tuple[str, str], object] | None = None) -> RepairPlan:
    """The repair of the wheel mounted at `wheel_root`, installed beside `sibling_roots`.

    `tree` answers for the wheel (and any sibling wheels) as roots (a wheeltree.WheelTree) and
    for the system; `member_of(rel)` names the wheel member installed at site-packages/`rel`;
    `metadata` is the wheel's METADATA, for the requirements it lacks; `known`, headers
    already read from `tree` (a header memo: WheelTree.read_headers). Pure: reads through
    `tree`, writes nothing. PlanError when the wheels cannot share one site-packages.
    """
    from rpathfix.plan import make_plan
    from rpathfix.roots import load_root

    if rpath_tag_default not in RPATH_TAGS:
        raise ValueError(f"rpath_tag_default must be one of {RPATH_TAGS}")
    view = CachedTree(tree, memo=dict(known or {}))
    roots = [load_root(view, p) for p in (wheel_root, *sibling_roots)]
    own = roots[0]
    plan = make_plan(view, roots)
    notes: list[str] = list(plan.notes)
    placed = [b for b in plan.binaries if b.dist == own.dist]
    notes += _unplaced(view, own, placed)
    versions = {r.dist: r.version for r in roots}
    providers = _providers(plan.binaries)
    default_tag = _wheel_tag(placed, rpath_tag_default)
    ptree = _planned(view, plan)
    repairs: list[FileRepair] = []
    skipped: list[Skipped] = []
    for b in placed:
        member = member_of(b.rel)
        if member is None:
            continue
        repair = _repair_one(ptree, b, member, providers, versions, default_tag, skipped, notes)
        if repair is not None:
            repairs.append(repair)
    # Headers read for the plan are the check's too (a deflated 500 MB library is inflated once),
    # except the repaired files': those the check sees as the edits will make them.
    check = check_repaired(tree, [wheel_root, *sibling_roots], own.dist, repairs, notes, known=view.memo)
    findings, checked = check.findings, check.checked
    needed = {d: versions.get(d) for d in check.used if d != own.dist}
    reqs = requirements(metadata or b"", needed)
    return RepairPlan(wheel_root, own.dist, own.version, tuple(repairs), tuple(skipped), tuple(reqs),
                      tuple(findings), checked, tuple(dict.fromkeys(notes)))


def plan_venv_repairs(view: CachedTree, plan: Plan, *,
                      rpath_tag_default: str = DEFAULT_RPATH_TAG) -> list[FileRepair]:
    """The repair inside a venv (`rpathfix venv --repair`): the same rules as plan_repair,
    for every native file of site-packages whatever its distribution, in the planned venv of
    `plan`. FileRepair.member is the file's physical path in its root (what gets a patched
    copy in the venv). The caller checks the venv with the copies in place, as it checks any
    venv before writing it."""
    if rpath_tag_default not in RPATH_TAGS:
        raise ValueError(f"rpath_tag_default must be one of {RPATH_TAGS}")
    providers = _providers(plan.binaries)
    ptree = _planned(view, plan)
    tags: dict[str, str] = {}
    skipped: list[Skipped] = []
    notes: list[str] = []
    out = []
    for b in plan.binaries:
        if b.kind != "site-packages":
            continue
        if b.dist not in tags:
            tags[b.dist] = _wheel_tag([x for x in plan.binaries if x.dist == b.dist], rpath_tag_default)
        repair = _repair_one(ptree, b, b.real, providers, {}, tags[b.dist], skipped, notes)
        if repair is not None:
            out.append(repair)
    return out


def _unplaced(tree: FileTree, own: Root, placed: list[Binary]) -> list[str]:
    """Notes for native files of the wheel that are left alone: in bin/ (their $ORIGIN depends
    on the environment's layout, not on site-packages), or losing their path to a sibling."""
    from rpathfix.plan import find_binaries

    notes = []
    site = own.dir_for("site-packages")
    rels = {b.rel for b in placed}
    if site is not None:
        for b in find_binaries(tree, own.dist, site, own.path):
            if b.rel not in rels:
                notes.append(f"{b.rel}: another distribution provides this path; it is not repaired")
    if own.dir_for("bin") is not None:
        notes.append("native files in the wheel's scripts are not repaired (their $ORIGIN is bin/)")
    return notes


def _planned(view: CachedTree, plan: Plan) -> CachedTree:
    """The merged site-packages of the check, over `view` (sharing its header memo).

    Not venv.describe_venv: the roots here are wheels read in place (wheeltree.WheelTree), whose
    paths exist only in `view`, and the check needs only where each entry lands and what it
    reads as: a link to its target, or (method "copy") a file with its target's bytes.
    """
    from rpathfix.fstree import OverlayTree, Planned

    entries = {posixpath.join(_KIND_DIRS[e.kind], e.venv_path):
               Planned("file", e.target, 0o755) if e.method == "copy" else Planned("link", e.target)
               for e in plan.entries}
    return CachedTree(OverlayTree(view, CHECK_ROOT, entries), memo=view.memo)


def _names(b: Binary) -> list[str]:
    out = [posixpath.basename(b.rel)]
    if isinstance(b.info, ElfInfo):
        if b.info.soname:
            out.append(b.info.soname)
    else:
        out += [posixpath.basename(s.install_name) for s in b.info.slices if s.install_name]
    return list(dict.fromkeys(out))


def _providers(binaries: Sequence[Binary]) -> dict[str, list[Binary]]:
    """name (file name, SONAME, install-name leaf) -> the placed files answering to it."""
    out: dict[str, list[Binary]] = {}
    for b in binaries:
        for n in _names(b):
            out.setdefault(n, []).append(b)
    return out


def _elf_tag(info: ElfInfo) -> str | None:
    """The tag ld.so uses: DT_RUNPATH when present (it hides DT_RPATH, LOADERS.md rule 6)."""
    if info.runpath is not None:
        return "runpath"
    if info.rpath is not None:
        return "rpath"
    return None


def _wheel_tag(placed: Sequence[Binary], default: str) -> str:
    """The tag the wheel's libraries use (the more common one; a tie or none: `default`)."""
    counts = {"rpath": 0, "runpath": 0}
    for b in placed:
        if isinstance(b.info, ElfInfo):
            tag = _elf_tag(b.info)
            if tag is not None:
                counts[tag] += 1
    if counts["rpath"] == counts["runpath"]:
        return default
    return "rpath" if counts["rpath"] > counts["runpath"] else "runpath"


def _compatible(b: Binary, p: Binary) -> bool:
    """Whether provider `p` could serve `b` (same format and machine)."""
    if isinstance(b.info, ElfInfo):
        return isinstance(p.info, ElfInfo) and (p.info.elf_class, p.info.machine) == (b.info.elf_class, b.info.machine)
    if not isinstance(p.info, MachoInfo):
        return False
    return bool({s.arch for s in b.info.slices} & {s.arch for s in p.info.slices})


def _pick(b: Binary, name: str, providers: Mapping[str, list[Binary]], notes: list[str]) -> Binary | None:
    """The provider of `name` for `b`: the wheel's own copy first, then the siblings' by
    distribution and path (several different ones: the first, with a note)."""
    cands = [p for p in providers.get(name, []) if p.rel != b.rel and _compatible(b, p)]
    if not cands:
        return None
    cands.sort(key=lambda p: (p.dist != b.dist, p.dist, p.rel))
    others = sorted({p.dist for p in cands if p.dist != cands[0].dist})
    if others:
        notes.append(f"{name}: provided by {cands[0].dist} ({cands[0].rel}) and by {', '.join(others)}; "
                     f"{b.rel} gets the path to {cands[0].dist}'s")
    return cands[0]


def _inside(path: str | None) -> bool:
    return path is not None and posixpath.normpath(path).startswith(_SITE + "/")


def _load(tree: FileTree, b: Binary) -> LoadResult | None:
    """`b` loaded by path in the planned venv, as a dlopen() or an import loads it, but without
    an interpreter (the wheel may be for another machine): the file is the root object."""
    from rpathfix.errors import FormatError

    path = f"{_SITE}/{b.rel}"
    try:
        if isinstance(b.info, ElfInfo):
            from rpathfix.loader_glibc import GlibcOptions, load_elf

            if b.info.elf_type != "dyn":
                return None
            # No ld.so.cache and no LD_LIBRARY_PATH: what this machine happens to have installed
            # must not hide a name that the installed wheels have to provide.
            return load_elf(tree, path, GlibcOptions(cache=None), dlopen=False)
        from rpathfix.loader_dyld import DyldOptions, load_macho

        return load_macho(tree, path, DyldOptions(), dlopen=False)
    except FormatError:
        return None


def _repair_one(tree: FileTree, b: Binary, member: str, providers: Mapping[str, list[Binary]],
                versions: Mapping[str, str | None], default_tag: str, skipped: list[Skipped],
                notes: list[str]) -> FileRepair | None:
    result = _load(tree, b)
    if result is None:
        return None
    path = f"{_SITE}/{b.rel}"
    # dyld names the requester by its real path (@loader_path is the real path, LOADERS.md rule 31).
    me = {path, b.real}
    is_elf = isinstance(b.info, ElfInfo)
    added: list[Added] = []
    for r in result.resolutions:
        if r.requester not in me or _inside(r.path) or r.weak:
            continue
        reason = "driver" if r.found_via == "driver" else system_reason(r.name)
        if reason is not None:
            if reason == "driver" or posixpath.basename(r.name) in providers:
                skipped.append(Skipped(b.rel, r.name, reason))  # worth saying: a wheel ships a copy
            continue
        if is_elf and "/" in r.name:
            continue  # a path, not a search: an rpath cannot change where it points
        if not is_elf:
            if not r.name.startswith("@rpath/"):
                continue  # absolute (the system's) or @loader_path/@executable_path: not an rpath search
            if r.found_via == "shared_cache":
                continue
        leaf = posixpath.basename(r.name)
        p = _pick(b, leaf, providers, notes)
        if p is None:
            continue
        rel = posixpath.relpath(posixpath.dirname(p.rel) or ".", posixpath.dirname(b.rel) or ".")
        token = "$ORIGIN" if is_elf else "@loader_path"
        entry = token if rel == "." else f"{token}/{rel}"
        added.append(Added(r.name, entry, p.rel, p.dist, versions.get(p.dist)))
    if not added:
        return None
    if isinstance(b.info, ElfInfo):
        own = _elf_tag(b.info)
        tag = own or default_tag
        current = list(split_path_list(b.info.runpath if tag == "runpath" else b.info.rpath))
        new = [e for e in dict.fromkeys(a.entry for a in added) if e not in current]
        edits = [Edit("rpath-tag", tag)] if own is None else []
        edits += [Edit("add-rpath", e) for e in new]
        value = ":".join(current + new)
        after: BinaryInfo = b.info._replace(runpath=value) if tag == "runpath" else b.info._replace(rpath=value)
        return FileRepair(member, b.rel, "elf", tag, tuple(edits), tuple(added), b.info, after) if new else None
    slices = b.info.slices
    present = set.intersection(*(set(s.rpaths) for s in slices)) if slices else set()
    new = [e for e in dict.fromkeys(a.entry for a in added) if e not in present]
    if not new:
        return None
    after = b.info._replace(slices=tuple(s._replace(rpaths=s.rpaths + tuple(e for e in new if e not in s.rpaths))
                                         for s in slices))
    return FileRepair(member, b.rel, "macho", None, tuple(Edit("add-rpath", e) for e in new), tuple(added),
                      b.info, after)


# ---------------------------------------------------------------- the check


class Check(NamedTuple):
    findings: list[Finding]
    checked: int  # native files loaded
    used: set[str]  # distributions whose files the wheel's files load (through their own paths)


def check_repaired(tree: FileTree, root_paths: Sequence[str], dist: str, repairs: Sequence[FileRepair],
                   notes: list[str] | None = None, known: Mapping[tuple[str, str], object] | None = None) -> Check:
    """Load every native file of `dist` in the planned venv of `root_paths`, its repaired files
    seen with the headers their edits produce. Files that cannot be checked get a line in
    `notes`. The distributions the wheel's files load from are what its METADATA must require.
    `known`: headers already read from `tree` (a header memo), reused for the files not repaired."""
    if notes is None:
        notes = []
    from rpathfix.plan import make_plan
    from rpathfix.roots import load_root
    from rpathfix.verify import Finding

    memo: dict[tuple[str, str], object] = dict(known or {})
    view = CachedTree(tree, memo=memo)
    roots = [load_root(view, p) for p in root_paths]
    own = roots[0]
    site = own.dir_for("site-packages")
    repaired = {fr.path for fr in repairs}
    if site is not None:
        for fr in repairs:
            real = view.resolve(f"{site}/{fr.path}")
            if real is not None:
                remember_binary(view, real, fr.after, replace=True)
    plan = make_plan(view, roots)
    ptree = _planned(view, plan)
    for fr in repairs:
        # A file the venv holds as a copy (Mach-O whose @loader_path climbs) is read there.
        real = ptree.resolve(f"{_SITE}/{fr.path}")
        if real is not None:
            remember_binary(ptree, real, fr.after, replace=True)
    providers = _providers(plan.binaries)
    owner = {f"{_SITE}/{b.rel}": b.dist for b in plan.binaries}
    used: set[str] = set()
    findings: list[Finding] = []
    checked = 0
    for b in plan.binaries:
        if b.dist != dist:
            continue
        result = _load(ptree, b)
        if result is None:
            continue
        checked += 1
        path = f"{_SITE}/{b.rel}"
        me = {path, b.real}
        is_module = _is_extension(b.info)
        must_load = is_module or b.rel in repaired
        for r in result.resolutions:
            if r.requester in me and r.path is not None and _inside(r.path):
                used.add(owner.get(posixpath.normpath(r.path), dist))
            if r.found or r.weak or system_reason(r.name) is not None:
                continue  # the system's libraries are the system's, whatever this machine has
            if not must_load and r.requester not in me:
                continue  # a dependency's own problem: reported when that file is checked
            what = "extension module" if is_module else "repaired library" if b.rel in repaired else "library"
            via = "" if r.requester in me else f" (needed by {display(r.requester)})"
            reason = r.error or f"{r.name} not found{via}"
            if r.error is None:
                have = sorted(p.rel for p in providers.get(posixpath.basename(r.name), []))
                reason += f"; {have[0]} provides it but is not on the search path" if have else \
                    "; no wheel given provides it"
            findings.append(Finding(
                "error" if must_load else "warning", "missing-library", b.rel, r.name,
                f"{what} {posixpath.basename(b.rel)} will not load: {reason}",
                tuple(a._replace(path=display(a.path), contributor=a.contributor and display(a.contributor))
                      for a in r.attempts)))
    unique = {(x.level, x.file, x.name): x for x in findings}
    return Check(sorted(unique.values(), key=lambda x: (x.level != "error", x.file, x.name or "")), checked, used)


def _is_extension(info: BinaryInfo) -> bool:
    if isinstance(info, ElfInfo):
        return info.is_extension
    return any(s.is_extension for s in info.slices)


def display(path: str) -> str:
    """A path of the check's planned venv as the user sees it: relative to site-packages."""
    if path == _SITE or path.startswith(_SITE + "/"):
        return "site-packages" + path[len(_SITE):]
    return path


# ---------------------------------------------------------------- requirements

_EXTRA = re.compile(r"""\bextra\s*==\s*['"]([^'"]+)['"]""")


def compatible_release(version: str | None) -> str:
    """The compatible-release specifier for a sibling's version: 13.1.0.3 -> "~=13.1",
    2.9.0+cu130 -> "~=2.9", 7 -> "~=7.0"; "" when the version is unknown or not PEP 440."""
    if not version:
        return ""
    from packaging.version import InvalidVersion, Version

    try:
        release = Version(version).release
    except InvalidVersion:
        return ""
    major = release[0]
    minor = release[1] if len(release) > 1 else 0
    return f"~={major}.{minor}"


def requirements(metadata: bytes, needed: Mapping[str, str | None]) -> list[Requirement]:
    """For each distribution in `needed` (name -> version), how METADATA's Requires-Dist has it:
    unconditionally ("required": markers that do not name an extra count, they describe the
    platform), only under extras ("extra"), or not at all ("missing")."""
    from packaging.requirements import InvalidRequirement
    from packaging.requirements import Requirement as Req

    from rpathfix.names import canonicalize_name
    from rpathfix.wheelfile import metadata_field

    listed: dict[str, tuple[bool, set[str]]] = {}
    for value in metadata_field(metadata, "Requires-Dist"):
        try:
            req = Req(value)
        except InvalidRequirement:
            continue
        name = canonicalize_name(req.name)
        plain, extras = listed.get(name, (False, set()))
        marker = str(req.marker) if req.marker is not None else ""
        found = _EXTRA.findall(marker)
        if found:
            extras |= {canonicalize_name(e) for e in found}
        else:
            plain = True
        listed[name] = (plain, extras)
    out = []
    for dist in sorted(needed):
        plain, extras = listed.get(dist, (False, set()))
        status = "required" if plain else "extra" if extras else "missing"
        out.append(Requirement(dist, dist + compatible_release(needed[dist]), status, tuple(sorted(extras))))
    return out


def requirements_to_add(reqs: Sequence[Requirement], extra: str | None) -> list[str]:
    """The Requires-Dist values `--add-requires[=EXTRA]` adds: every sibling the wheel does not
    require unconditionally (also those listed only under an extra, so a plain install brings
    a wheel that loads); with EXTRA, those not already under that extra either."""
    from rpathfix.names import canonicalize_name

    out = []
    for r in reqs:
        if r.status == "required":
            continue
        if extra is not None and canonicalize_name(extra) in r.extras:
            continue
        out.append(r.requirement)
    return out


__all__ = [
    "DEFAULT_RPATH_TAG",
    "Added",
    "FileRepair",
    "RepairPlan",
    "Requirement",
    "Skipped",
    "check_repaired",
    "compatible_release",
    "plan_repair",
    "plan_venv_repairs",
    "requirements",
    "requirements_to_add",
]
