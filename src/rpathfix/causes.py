"""Why a library is not found: verify's findings turned into Problems with a cause.

verify says what the loader model saw ("libcudart.so.13 not found, needed by
libtorch_cuda.so", with every directory tried). A person needs why, and what fixes it.
The causes, decided statically from the trace and the files in view:

- runpath-not-transitive: a library that loads the requester has the name on its
  DT_RUNPATH, which applies to that library's own lookups only (LOADERS.md rules 5c, 7);
- split-layout: a search-path entry of the requester (its own, or an RPATH it inherits
  from the library that loads it, rule 5a) points, relative to its site-packages, to where
  a provider sits relative to *its* site-packages, in another directory: merging the
  directories into one site-packages makes the entry reach it. The comparison is lexical
  (`normpath`), as in the per-wheel layouts of rules_python and `rpathfix unpack`, whose
  directories are real;
- inherited-rpath: the same, within one site-packages, through the loading library's RPATH
  only: the library is found whenever it is loaded as that library's dependency;
- no-path-to-provider: a provider exists but no entry leads to it, merged or not
  (onnxruntime's CUDA provider has no RPATH at all);
- missing-library: nothing in the environment provides the name.

A shadowed library (a system copy winning over the wheel's) gets the same analysis for
its fix, and both versions when they can be read: from the file name
(libfoo.so.1.2.3), from a dist-info that lists the file (CUDA toolkits installed from
NVIDIA's wheels carry them), or from a `cuda-X.Y` directory.
"""

from __future__ import annotations

import posixpath
import re
import shlex

from rpathfix.environment import NativeFile
from rpathfix.findings import FixContext, Problem, group
from rpathfix.fstree import as_cached, read_small, regular_file, resolve
from rpathfix.model import ElfInfo, MachoInfo
from rpathfix.names import canonicalize_name
from rpathfix.record import MAX_RECORD_BYTES, dist_infos, record_files
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rpathfix.environment import Environment
    from rpathfix.findings import Finding
    from rpathfix.fstree import CachedTree, FileTree
    from rpathfix.resolution import Attempt
    from rpathfix.verify import Finding as VerifyFinding
    from rpathfix.verify import Report

# Search steps whose entries come from the requester's (or its loaders') own paths.
_ENV_RULES = frozenset({"ld_library_path", "dyld_library_path", "cache", "default", "fallback", "shared_cache",
                        "loaded", "driver", "direct"})
_ORIGIN = re.compile(r"^(\$ORIGIN|\$\{ORIGIN\}|@loader_path)(?=/|$)")
_NEEDED_BY = re.compile(r"\(needed by (.+?)\)(?=;|$)")
_VERSIONED = re.compile(r"\.so\.(\d+(?:\.\d+)*)$")
_TOOLKIT = re.compile(r"/cuda-(\d+(?:\.\d+)*)/")


class DistOwners:
    """Which distribution (name, version) a file of the environment belongs to.

    A site directory holding one .dist-info (one wheel per directory, the split layout)
    owns everything under it without reading its RECORD; otherwise each RECORD is read
    once, when a file under that directory is first asked about.
    """

    def __init__(self, tree: FileTree, site_dirs: Sequence[str]) -> None:
        self.tree = tree
        self.sites = sorted(site_dirs, key=len, reverse=True)
        self._single: dict[str, tuple[str, str] | None] = {}
        self._records: dict[str, dict[str, tuple[str, str]]] = {}

    def site_of(self, path: str) -> str | None:
        for s in self.sites:
            if path.startswith(s.rstrip("/") + "/"):
                return s
        return None

    def _infos(self, site: str) -> list[tuple[str, str, str]]:
        return dist_infos(self.tree, resolve(self.tree, site) or site)

    def sole(self, site: str) -> tuple[str, str] | None:
        """The one distribution of a site directory that holds exactly one."""
        if site not in self._single:
            infos = self._infos(site)
            self._single[site] = (infos[0][1], infos[0][2]) if len(infos) == 1 else None
            if len(infos) != 1:
                owners: dict[str, tuple[str, str]] = {}
                for n, name, version in infos:
                    for path in record_files(self.tree, site, n) or ():
                        owners.setdefault(path, (name, version))
                self._records[site] = owners
        return self._single[site]

    def owner(self, path: str) -> tuple[str, str] | None:
        """The distribution of a file, or of a directory (by the files its RECORD lists in it)."""
        site = self.site_of(path)
        if site is None:
            return None
        single = self.sole(site)
        if single is not None:
            return single
        records = self._records.get(site, {})
        norm = posixpath.normpath(path)
        found = records.get(norm)
        if found is None:
            prefix = norm + "/"
            found = next((d for p, d in records.items() if p.startswith(prefix)), None)
        return found

    def label(self, path: str | None) -> str | None:
        """"name version" of the file's distribution, or None."""
        found = self.owner(path) if path else None
        return f"{found[0]} {found[1]}" if found else None


class Context:
    """The environment as the classification sees it: files by name and by what they need."""

    def __init__(self, tree: FileTree, env: Environment, owners: DistOwners | None = None) -> None:
        self.tree: CachedTree = as_cached(tree)
        self.env = env
        self.owners = owners or DistOwners(self.tree, env.site_dirs)
        self.versions: dict[str, str | None] = {}  # system library -> its version (system_version)
        self.by_path: dict[str, NativeFile] = {f.path: f for f in env.files}
        self.by_name: dict[str, list[NativeFile]] = {}
        self.needers: dict[str, list[NativeFile]] = {}
        for f in env.files:
            for n in f.names:
                self.by_name.setdefault(n, []).append(f)
            for n in _needed(f):
                self.needers.setdefault(posixpath.basename(n), []).append(f)

    def providers(self, name: str, exclude: str | None = None) -> list[NativeFile]:
        return [f for f in self.by_name.get(posixpath.basename(name), []) if f.path != exclude]

    def parents(self, f: NativeFile) -> list[NativeFile]:
        """Files in the environment that need `f` by one of its names."""
        out: dict[str, NativeFile] = {}
        for n in f.names:
            for p in self.needers.get(n, []):
                if p.path != f.path:
                    out.setdefault(p.path, p)
        return list(out.values())

    def dist(self, path: str) -> tuple[str | None, str | None]:
        """(name, version) of the file's distribution; a file no RECORD lists (a directory
        put on sys.path by hand) is named by its top-level package, without a version."""
        found = self.owners.owner(path)
        if found:
            return found[0], found[1]
        site = self.owners.site_of(path)
        if site is None:
            return None, None
        top = path[len(site.rstrip("/")) + 1:].split("/", 1)[0]
        return canonicalize_name(top.split(".", 1)[0]) or None, None

    def label(self, path: str) -> str | None:
        """"name version" (or the name alone) of the file's distribution, as dist() finds it."""
        name, version = self.dist(path)
        return None if name is None else f"{name} {version}" if version else name

    # ------------------------------------------------------------------ causes

    def cause(self, requester: str, name: str, trace: Sequence[Attempt],
              providers: Sequence[NativeFile]) -> tuple[str, NativeFile | None]:
        """(cause code, the provider it concerns) for `name` not found from `requester`."""
        if not providers:
            return "missing-library", None
        req = self.by_path.get(requester)
        if req is not None:
            hit = self._through_parent_runpath(req, name)
            if hit is not None:
                return "runpath-not-transitive", next((p for p in providers if p.realpath == hit), providers[0])
        for contributor, target, inherited in self._targets(req, name, trace):
            site = self.owners.site_of(contributor)
            if site is None or not target.startswith(site.rstrip("/") + "/"):
                continue  # the entry climbs out of site-packages: no layout serves it
            rel_dir = posixpath.dirname(target[len(site.rstrip("/")) + 1:])
            for p in providers:
                psite = self.owners.site_of(p.path)
                if psite is None or posixpath.dirname(p.path[len(psite.rstrip("/")) + 1:]) != rel_dir:
                    continue
                if psite != site:
                    return "split-layout", p
                if inherited:
                    return "inherited-rpath", p
        return "no-path-to-provider", providers[0]

    def _through_parent_runpath(self, req: NativeFile, name: str) -> str | None:
        """The real path of `name` on the DT_RUNPATH of a library that needs `req`, if any."""
        for parent in self.parents(req):
            info = parent.info
            if not isinstance(info, ElfInfo) or not info.runpath:
                continue
            for d in _expand(info.runpath, posixpath.dirname(parent.path)):
                found = regular_file(self.tree, f"{d}/{name}")
                if found is not None:
                    return found[0]
        return None

    def _targets(self, req: NativeFile | None, name: str,
                 trace: Sequence[Attempt]) -> list[tuple[str, str, bool]]:
        """(contributor, normalized candidate path, inherited) of each relative search entry: those
        the trace tried, then the RPATHs of the libraries that load `req` (rule 5a) when the
        requester takes inherited paths (no RUNPATH of its own, rule 7)."""
        out = [(a.contributor, posixpath.normpath(a.path), False) for a in trace
               if a.contributor and a.rule not in _ENV_RULES and a.path.startswith("/")]
        if req is None or (isinstance(req.info, ElfInfo) and req.info.runpath is not None):
            return out
        for parent in self.parents(req):
            for entry in _inheritable(parent.info):
                for d in _expand(entry, posixpath.dirname(parent.path)):
                    out.append((parent.path, posixpath.normpath(f"{d}/{posixpath.basename(name)}"), True))
        return out


def _needed(f: NativeFile) -> tuple[str, ...]:
    if isinstance(f.info, ElfInfo):
        return f.info.needed
    return tuple(d.name for s in f.info.slices for d in s.dylibs)


def _inheritable(info: ElfInfo | MachoInfo) -> list[str]:
    """Search entries a library passes on to what it loads: DT_RPATH when there is no
    DT_RUNPATH (rule 6), every LC_RPATH (dyld's rpath stack, rule 30)."""
    if isinstance(info, ElfInfo):
        return [info.rpath] if info.rpath and info.runpath is None else []
    return [r for s in info.slices for r in s.rpaths]


def _expand(value: str, origin: str) -> list[str]:
    """The $ORIGIN / @loader_path entries of a path list, expanded; other entries are the
    process's business (cwd, system directories), not a layout's."""
    out = []
    for entry in value.split(":"):
        m = _ORIGIN.match(entry)
        if m is not None:
            out.append(posixpath.normpath(origin + entry[m.end():]))
    return out


def requester_of(x: VerifyFinding) -> str:
    """The file whose lookup failed: verify says "(needed by R)" when it is not the file checked."""
    m = _NEEDED_BY.search(x.message)
    return m.group(1) if m else x.file


def classify(ctx: Context, findings: Sequence[VerifyFinding]) -> list[Problem]:
    """verify's findings as Problems, each with its cause; codes this module does not know
    (a kind of finding added to verify later) pass through unchanged."""
    out: list[Problem] = []
    for x in findings:
        if x.code in ("missing-library", "load-order") and x.name and not _is_hard_error(x):
            out.append(_not_found(ctx, x))
        elif x.code == "shadowed" and x.name:
            out.append(_shadowed(ctx, x))
        elif x.code == "duplicate-soname" and x.name:
            out.extend(_duplicates(ctx, x))
        elif x.code == "namespace-shadowed" and x.trace:
            dist, version = ctx.dist(x.file)
            hidden = x.trace[0].path
            out.append(Problem(x.code, x.level, x.file, dist, version, x.name, hidden, ctx.label(hidden),
                               None, "", None, x.trace))
        else:
            out.append(_passed(ctx, x))
    return out


def _is_hard_error(x: VerifyFinding) -> bool:
    """A search that stopped on a bad file (rule 11) is not a layout question."""
    return any(a.result == "bad-file" for a in x.trace)


def _stops(ctx: Context, x: VerifyFinding) -> str | None:
    f = ctx.by_path.get(x.file)
    if x.level != "error" or f is None:
        return None
    return x.file if f.is_extension or f.is_executable else None


def _not_found(ctx: Context, x: VerifyFinding) -> Problem:
    assert x.name is not None
    requester = requester_of(x)
    providers = ctx.providers(x.name, exclude=requester)
    code, provider = ctx.cause(requester, x.name, x.trace, providers)
    owner = requester if requester in ctx.by_path else x.file
    dist, version = ctx.dist(owner)
    severity = "info" if code == "inherited-rpath" and x.level == "warning" else x.level
    return Problem(code, severity, owner, dist, version, x.name,
                   provider.path if provider else None, ctx.label(provider.path) if provider else None,
                   _stops(ctx, x), "", code, x.trace)


def _shadowed(ctx: Context, x: VerifyFinding) -> Problem:
    assert x.name is not None
    system = next((a.path for a in reversed(x.trace) if a.result == "found"), None)
    providers = ctx.providers(x.name)
    cause, _ = ctx.cause(x.file, x.name, x.trace, providers)
    provider = providers[0] if providers else None
    dist, version = ctx.dist(x.file)
    detail = ""
    if system is not None and provider is not None:
        sys_version = system_version(ctx.tree, system, ctx.versions)
        wheel = ctx.label(provider.path) or posixpath.basename(provider.path)
        detail = (f"{x.name}: {system}{f' ({sys_version})' if sys_version else ''} loads, "
                  f"not {provider.path} ({wheel})")
    return Problem("shadowed", x.level, x.file, dist, version, x.name, provider.path if provider else None,
                   ctx.label(provider.path) if provider else None, None, detail,
                   cause if cause in ("split-layout", "no-path-to-provider", "runpath-not-transitive") else None,
                   x.trace)


def _duplicates(ctx: Context, x: VerifyFinding) -> list[Problem]:
    assert x.name is not None
    files = [f for f in ctx.by_name.get(x.name, []) if isinstance(f.info, ElfInfo) and f.info.soname == x.name]
    if len(files) < 2:
        return [_passed(ctx, x)]
    where = ", ".join(f"{f.path} ({ctx.label(f.path) or '?'})" for f in files)
    return [Problem("duplicate-soname", x.level, f.path, None, None, x.name, detail=f"{x.name}: {where}")
            for f in files]


def _passed(ctx: Context, x: VerifyFinding) -> Problem:
    dist, version = ctx.dist(x.file)
    return Problem(x.code, x.level, x.file, dist, version, x.name, None, None, _stops(ctx, x), x.message,
                   None, x.trace)


def system_version(tree: FileTree, path: str, memo: dict[str, str | None] | None = None) -> str | None:
    """The version of a library outside the environment, when it can be read."""
    real = resolve(tree, path) or path
    if memo is not None and real in memo:
        return memo[real]
    m = _VERSIONED.search(posixpath.basename(real))
    if m and "." in m.group(1):
        found: str | None = m.group(1)
    else:
        found = _listed_version(tree, real)
        if found is None:
            t = _TOOLKIT.search(real)
            found = f"CUDA toolkit {t.group(1)}" if t else None
    if memo is not None:
        memo[real] = found
    return found


def _listed_version(tree: FileTree, real: str) -> str | None:
    """A dist-info near the file (a CUDA toolkit installed from wheels keeps them in
    <toolkit>/dist-info) whose RECORD lists a file of that name and size."""
    node = tree.lstat(real)
    size = node.size if node is not None else -1
    base = posixpath.basename(real)
    d = posixpath.dirname(real)
    for _ in range(3):
        for holder in (f"{d}/dist-info", d):
            if resolve(tree, holder) is None:
                continue
            for n, name, version in dist_infos(tree, holder):
                data = read_small(tree, f"{holder}/{n}/RECORD", MAX_RECORD_BYTES)
                if data is None:
                    continue
                text = data.decode("utf-8", "replace")
                if base not in text:
                    continue
                for line in text.splitlines():
                    path, _, rest = line.partition(",")
                    if posixpath.basename(path) == base and rest.rsplit(",", 1)[-1] == str(size):
                        return f"{name} {version}"
        d = posixpath.dirname(d)
    return None


def compact_paths(paths: Sequence[str]) -> list[str]:
    """The paths for a command line, quoted; the directories of one parent as `parent/*`, or
    `parent/*/site-packages`, when that glob gives exactly those paths (the 29 roots of a
    split layout in one word)."""
    out: list[str] = []
    groups: dict[tuple[str, str], list[str]] = {}
    for p in paths:
        groups.setdefault(_glob_key(p), []).append(p)
    done: set[tuple[str, str]] = set()
    for p in paths:
        key = _glob_key(p)
        if key in done:
            continue
        parent, tail = key
        pattern = f"{parent}/*{tail}" if parent != "." else f"*{tail}"
        if len(groups[key]) > 2 and shlex.quote(pattern.replace("*", "x")) == pattern.replace("*", "x") \
                and sorted(groups[key]) == sorted(_glob(parent, tail)):
            out.append(pattern)
            done.add(key)
            continue
        out.append(shlex.quote(p))
    return out


def _glob_key(path: str) -> tuple[str, str]:
    """(the parent that a * would replace a name in, what follows the name): ("roots",
    "/site-packages") for roots/torch/site-packages, ("roots", "") for roots/torch."""
    import os

    p = path.rstrip("/")
    if os.path.basename(p) == "site-packages":
        return os.path.dirname(os.path.dirname(p)) or ".", "/site-packages"
    return os.path.dirname(p) or ".", ""


def _glob(parent: str, tail: str) -> list[str]:
    """What the shell makes of parent/*tail (hidden names left out, as a shell does)."""
    import os

    try:
        names = sorted(n for n in os.listdir(parent) if not n.startswith("."))
    except OSError:
        return []
    prefix = "" if parent == "." else parent + "/"
    return [f"{prefix}{n}{tail}" for n in names if os.path.exists(f"{prefix}{n}{tail}")]


def choose_out() -> str:
    """A directory name for a new venv that does not exist in the working directory."""
    import os

    for name in ("venv", "rpathfix-venv", *(f"rpathfix-venv-{i}" for i in range(2, 100))):
        if not os.path.lexists(name):
            return name
    return "rpathfix-venv"


def fix_context(ctx: Context, named: Sequence[str] = (), roots: Sequence[tuple[str, str]] = (),
                venv_repair: str | None = None) -> FixContext:
    """How fix commands name the directories: as the user named them when each named
    path is one sys.path directory, else by the directories themselves; `roots` adds
    distribution roots known otherwise; `venv_repair`, the command that writes a venv being
    checked with patched copies (FixContext.venv_repair)."""
    sites = list(ctx.env.site_dirs)
    # A venv is named by its directory; what a command takes is its site-packages.
    paths = list(named) if named and len(named) == len(sites) and ctx.env.interpreter is None else sites
    known = list(roots)
    for site, path in zip(sites, paths):
        found = ctx.owners.sole(site)
        if found is not None:
            known.append((found[0], path))
    split = len(sites) > 1 and ctx.env.interpreter is None
    return FixContext(tuple(paths), split, tuple(known), choose_out() if split else "venv", tuple(sites),
                      words=tuple(compact_paths(paths)) if split else (), venv_repair=venv_repair)


def verify_findings(tree: FileTree, report: Report, named: Sequence[str] = (),
                    roots: Sequence[tuple[str, str]] = (),
                    venv_repair: str | None = None) -> tuple[list[Finding], Context]:
    """verify's report as grouped Findings with causes and fixes."""
    ctx = Context(tree, report.environment)
    return group(classify(ctx, report.findings), fix_context(ctx, named, roots, venv_repair)), ctx
