"""Check that every native library of a Python environment loads (`rpathfix verify`).

The same code checks a venv on disk (RealTree) and a planned venv that is not written
yet (OverlayTree), because the loader models are pure over a FileTree.

Findings:
- error "missing-library": an extension module whose closure does not resolve when
  the interpreter imports it (dlopen by path);
- error "missing-library": an executable (in site-packages or a scripts directory) that
  does not find a library the environment holds. The kernel starts it from its resolved
  path, and that is where its $ORIGIN is (LOADERS.md rule 18), so it is loaded as the
  main program of its own process, not dlopen()ed by the interpreter;
- warning "missing-library": an executable needing a library that nothing in the
  environment provides (a system library this machine lacks: it fails the same way in
  any layout), or a non-module library with such a dependency (often an optional plugin
  needing a system library: libibverbs, libmpi);
- warning "load-order": a non-module library whose dependency resolves only if some
  other library with that SONAME happens to be loaded first (what onnxruntime's
  provider libraries need LD_LIBRARY_PATH or preloading for);
- warning "assumed-loaded": a library that is not found, but that the user said the
  package loads itself at run time (LoaderOptions.assume_loaded, `--assume-loaded`):
  cupy's modules have no RPATH and cupy preloads their CUDA libraries by path;
- warning "shadowed": a name resolved outside the environment although a file inside
  provides it (the system libcudart.so.13 winning over the wheel's copy);
- warning "duplicate-soname": one SONAME provided by files with different contents
  (byte-identical copies, such as the libgfortran that numpy.libs and scipy.libs both
  vendor, are one library whichever loads first);
- error "version-not-found" / "undefined-symbol": an extension module whose closure maps
  but does not bind: a version or symbol it (or a library it loads) needs that no object
  in scope defines (bind_glibc, bind_dyld: on by default, LoaderOptions.symbols); or an
  ELF executable that will not start for the same reason (versions, then what is bound
  at start-up without LD_BIND_NOW).
"""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Sequence

from rpathfix.environment import Environment, NativeFile, collect, same_content
from rpathfix.errors import FormatError
from rpathfix.fstree import as_cached
from rpathfix.model import ElfInfo
from rpathfix.names import canonicalize_name
from rpathfix.record import dist_infos, record_files
from rpathfix.resolution import Attempt, LoadResult, Resolution
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.bind_dyld import MachoTables
    from rpathfix.bind_glibc import SymbolTables
    from rpathfix.fstree import FileTree
    from rpathfix.loader_glibc import GlibcOptions, GlibcProcess
    from rpathfix.resolution import SymbolProblem


class Finding(NamedTuple):
    level: str  # "error" or "warning"
    code: str
    file: str
    name: str | None
    message: str
    trace: tuple[Attempt, ...] = ()
    symbol: SymbolProblem | None = None  # version-not-found, undefined-symbol
    demangled: str | None = None  # the C++ symbol, demangled (demangle.py)


class LoaderOptions(NamedTuple):
    """What the simulated process looks like: interpreter, LD_LIBRARY_PATH, cache root.

    assume_loaded: names of libraries or distributions whose libraries the package loads
    itself at run time (see _Assumptions); a library they cover that is not found is a
    warning "assumed-loaded", not an error.
    """

    interpreter: str | None = None
    ld_library_path: str | None = None
    cache_root: str | None = None  # None: the host's /etc/ld.so.cache; "" : no cache
    use_cache: bool = True
    secure: bool = False  # a setuid/capability interpreter (AT_SECURE; dyld: restricted)
    assume_loaded: tuple[str, ...] = ()
    symbols: bool = True  # check versions and bind symbols of extension modules (RTLD_NOW)


class Report:
    __slots__ = ("checked", "environment", "findings", "tree")

    def __init__(self, environment: Environment, findings: list[Finding], checked: int | None = None,
                 tree: FileTree | None = None) -> None:
        self.environment = environment
        self.findings = findings
        self.checked = len(environment.files) if checked is None else checked  # files loaded
        self.tree = tree  # the view that was checked (a planned venv is not on disk)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]


def verify(tree: FileTree, paths: Sequence[str], options: LoaderOptions) -> Report:
    """Walk the environment at `paths`, then check every native file in it."""
    tree = as_cached(tree)  # the walk and every simulation ask the same questions: answer each once
    report = check_environment(tree, collect(tree, list(paths)), options)
    from rpathfix.namespaces import hidden_findings

    report.findings += hidden_findings(tree, report.environment.site_dirs)
    report.findings.sort(key=lambda x: (x.level != "error", x.file, x.name or "", x.code))
    return report


def check_environment(tree: FileTree, env: Environment, options: LoaderOptions, *,
                      modules_only: bool = False, providers_reachable: bool = False) -> Report:
    """Load every native file of an already collected environment with the loader models.

    modules_only loads only the extension modules and the executables (what decides
    whether the environment works: Python imports the modules, and a program that cannot
    start is broken); every file still counts as a provider in the messages. It also
    skips the duplicate-SONAME check, which decides nothing about loading and reads every
    same-size copy in full (45 MB on the torch stack): the check before `venv` writes is
    this mode; `verify` reports duplicates.

    providers_reachable (with modules_only): also load, on their own, the libraries that no
    module's load reached (plugins a package dlopen()s: onnxruntime's CUDA provider), and
    report a name they need that another file of the environment provides, but their own
    search path does not reach, as a warning whose fix is `rpathfix venv --repair` (a
    patched copy). A name nothing here provides stays the machine's business.
    """
    tree = as_cached(tree)
    interpreter = options.interpreter or env.interpreter
    sim = _Simulator(tree, options, interpreter)
    inside = _Inside(env)
    assumed = _Assumptions(tree, env, options.assume_loaded)
    findings: list[Finding] = []
    loaded = [f for f in env.files if f.is_extension or f.is_executable] if modules_only else list(env.files)
    reached: set[str] = set()
    for f in loaded:
        result = sim.load(f)
        if result is None:
            continue
        reached.update(o.realpath for o in result.objects)
        for r in result.resolutions:
            if r.found:
                findings.extend(_shadowing(f, r, inside))
                continue
            if r.weak:
                continue
            if not (f.is_extension or f.is_executable) and r.requester != f.path:
                continue  # a library's dependency's dependency is checked as a library of its own
            providers = inside.providers(r.name)
            listed = assumed.covering(f, r, providers)
            if listed is not None:
                findings.append(Finding(
                    "warning", "assumed-loaded", f.path, r.name,
                    f"{r.name} is not found{_via(f, r)}; loaded by the package at run time "
                    f"(--assume-loaded {listed})", r.attempts,
                ))
            elif f.is_extension:
                findings.append(_missing(f, r, providers, what="extension module"))
            elif f.is_executable:
                # The layout's fault when the environment holds the library: an error. A
                # library nothing here provides is the machine's (any layout fails alike).
                findings.append(_missing(f, r, providers, what="executable", error=bool(providers)))
            elif providers:
                findings.append(Finding(
                    "warning", "load-order", f.path, r.name,
                    f"{r.name} is not found through {posixpath.basename(f.path)}'s own search path; "
                    f"it loads only if {providers[0]} is loaded first (LD_LIBRARY_PATH or preloading)",
                    r.attempts,
                ))
            else:
                # A plugin library may need what only some systems have (libibverbs, libmpi):
                # nothing imports it by itself, so it is a warning, not an error.
                findings.append(_missing(f, r, providers, what="library", error=False))
    if modules_only and providers_reachable:
        # Plugins: libraries no module reaches. One that another plugin loads is judged in
        # that one's load (an RPATH it inherits there counts), the others on their own.
        plugins = [f for f in env.files if not (f.is_extension or f.is_executable) and f.realpath not in reached]
        results = [(f, sim.load(f)) for f in plugins]
        covered = {o.realpath for f, res in results if res is not None for o in res.objects if o.realpath != f.realpath}
        for f, res in results:
            if res is None or f.realpath in covered:
                continue
            loaded.append(f)
            for r in res.resolutions:
                if r.found or r.weak:
                    continue
                providers = inside.providers(r.name)
                if providers and assumed.covering(f, r, providers) is None:
                    # A warning, not a refusal: pip's site-packages holds the same files in
                    # the same places, so such a plugin fails there too (torch's own stack
                    # has three: libcufile_rdma, libcusolverMg, triton's test plugins);
                    # the warning names `rpathfix venv --repair`, which fixes it here.
                    findings.append(_missing(f, r, providers, what="library", error=False))
    sim.close()
    findings.extend(_symbol_findings(sim.symbol_problems))
    if not modules_only:
        findings.extend(_duplicates(tree, env))
    unique: dict[tuple[str, str, str | None, str], Finding] = {}
    for x in findings:
        unique.setdefault((x.level, x.code, x.name, x.file), x)  # the first trace of a name is enough
    findings = list(unique.values())
    findings.sort(key=lambda x: (x.level != "error", x.file, x.name or "", x.code))
    return Report(env, findings, len(loaded), tree)


def _symbol_findings(problems: list[tuple[NativeFile, SymbolProblem]]) -> list[Finding]:
    """One error per version or symbol an extension module's load (or a program's start)
    cannot bind, its C++ names demangled in one batch."""
    if not problems:
        return []
    from rpathfix.demangle import demangle
    from rpathfix.resolution import VERSION_NOT_FOUND

    names = demangle(p.symbol for _f, p in problems if p.symbol)
    out = []
    for f, p in problems:
        base = posixpath.basename
        kind, verb = ("executable", "start") if f.is_executable else ("extension module", "load")
        needer = ("the program" if f.is_executable else "the module") if p.requester == f.path else base(p.requester)
        if p.kind == VERSION_NOT_FOUND:
            version = p.version or ""
            prefix = version[:len(version) - len(version.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"))]
            same = [v for v in p.defined if v.startswith(prefix) and v[len(prefix):][:1].isdigit()]
            newest = f" (the newest {prefix.rstrip('_')} version it defines is {same[-1]})" if prefix and same else ""
            what = f"{base(p.provider or '?')} has no version {p.version}, which {needer} needs{newest}"
            name = p.version
        else:
            dem = names.get(p.symbol or "")
            sym = f"{p.symbol}{f' ({dem})' if dem else ''}{f', version {p.version}' if p.version else ''}"
            if p.loader == "dyld" and p.provider is not None:
                what = f"symbol {sym}, which {needer} imports from {base(p.provider)}, is not exported there"
            else:
                scope = ", ".join(base(x) for x in p.searched[:6]) + (", ..." if len(p.searched) > 6 else "")
                what = f"undefined symbol {sym}, needed by {needer}: no object in its scope defines it " \
                       f"(searched {len(p.searched)}: {scope})"
            name = p.symbol
        out.append(Finding("error", p.kind, f.path, name, f"{kind} {base(f.path)} will not {verb}: {what}",
                           symbol=p, demangled=names.get(p.symbol or "")))
    return out


def _via(f: NativeFile, r: Resolution) -> str:
    return "" if r.requester == f.path else f" (needed by {r.requester})"


def _missing(f: NativeFile, r: Resolution, providers: list[str], *, what: str, error: bool = True) -> Finding:
    hint = f"; {providers[0]} provides it but is not on the search path" if providers else \
        "; nothing in this environment provides it"
    msg = r.error or f"{r.name} not found{_via(f, r)}"
    verb = "start" if what == "executable" else "load"
    return Finding("error" if error else "warning", "missing-library", f.path, r.name,
                   f"{what} {posixpath.basename(f.path)} will not {verb}: {msg}{hint}", r.attempts)


class _Assumptions:
    """LoaderOptions.assume_loaded: libraries a package loads itself before it needs them.

    A NAME covers a library that is not found when
    1. NAME is the library's file name as requested (the leaf of its DT_NEEDED entry or
       install name, which is also the SONAME it is matched by once loaded:
       `libcublas.so.12`); or
    2. NAME is the distribution (compared as PEP 503 names) of the file being checked: the
       extension module, executable or library whose load fails. `cupy-cuda12x` covers
       every library cupy's own files need, whoever provides it; or
    3. NAME is the distribution of a file in the environment that provides the library
       (same file name or SONAME): `nvidia-cublas-cu12` says that distribution's
       libraries are loaded by someone at run time.
    A file's distribution is the one whose RECORD lists it; the RECORD files are read only
    when a distribution is named and a library is missing.
    """

    def __init__(self, tree: FileTree, env: Environment, names: Sequence[str]) -> None:
        self.tree = tree
        self.env = env
        self.libs = set(names)
        self.dists = {canonicalize_name(n): n for n in names}
        self._owners: dict[str, str] | None = None

    def covering(self, f: NativeFile, r: Resolution, providers: list[str]) -> str | None:
        """The listed NAME that covers the missing `r` of `f`, or None."""
        if not self.libs:
            return None
        leaf = posixpath.basename(r.name)
        if leaf in self.libs:
            return leaf
        for path in (f.path, *providers):
            owner = self._owner(path)
            if owner in self.dists:
                return self.dists[owner]
        return None

    def _owner(self, path: str) -> str | None:
        if self._owners is None:
            self._owners = self._read_owners()
        if path in self._owners:
            return self._owners[path]
        if any(path.startswith(d + "/") for d in self.env.script_dirs):
            return self._owners.get("bin/" + posixpath.basename(path))
        return None

    def _read_owners(self) -> dict[str, str]:
        """Path of each installed file -> its distribution, from the site dirs' RECORDs.
        A file outside site-packages is keyed by "bin/<name>" when its RECORD path ends so
        (scripts: `../../../bin/tool` under pip, `../bin/tool` in a root)."""
        owners: dict[str, str] = {}
        for site in self.env.site_dirs:
            inside = posixpath.normpath(site) + "/"
            for info, dist, _version in dist_infos(self.tree, site):
                for path in record_files(self.tree, site, info) or ():
                    owners.setdefault(path, dist)
                    head, name = posixpath.split(path)
                    if posixpath.basename(head) == "bin" and not path.startswith(inside):
                        owners.setdefault(f"bin/{name}", dist)
        return owners


class _Inside:
    """Which files inside the environment provide a name (file name or SONAME)."""

    def __init__(self, env: Environment) -> None:
        self.by_name: dict[str, list[str]] = {}
        self.reals: set[str] = set()
        for f in env.files:
            self.reals.add(f.realpath)
            for n in f.names:
                self.by_name.setdefault(n, []).append(f.path)
        self.site_dirs = env.site_dirs

    def providers(self, name: str) -> list[str]:
        return self.by_name.get(posixpath.basename(name), [])

    def contains(self, path: str) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in self.site_dirs)


def _shadowing(f: NativeFile, r: Resolution, inside: _Inside) -> list[Finding]:
    if r.path is None or r.found_via not in ("cache", "default", "ld_library_path", "fallback", "shared_cache"):
        return []
    if inside.contains(r.path):
        return []
    providers = inside.providers(r.name)
    if not providers:
        return []
    return [Finding(
        "warning", "shadowed", f.path, r.name,
        f"{r.name} resolves to {r.path} (via {r.found_via}) although {providers[0]} in this environment provides it",
        r.attempts,
    )]


def _duplicates(tree: FileTree, env: Environment) -> list[Finding]:
    by_soname: dict[str, list[NativeFile]] = {}
    for f in env.files:
        if isinstance(f.info, ElfInfo) and f.info.soname:
            by_soname.setdefault(f.info.soname, []).append(f)
    out = []
    for soname, files in sorted(by_soname.items()):
        reals = sorted({f.realpath for f in files})
        if len(reals) < 2:
            continue
        contents = _distinct_contents(tree, reals)
        if contents > 1:
            paths = ", ".join(f.path for f in files)
            what = f"{contents} different files" if contents == len(reals) else \
                f"{len(reals)} files with {contents} different contents"
            out.append(Finding("warning", "duplicate-soname", files[0].path, soname,
                               f"{soname} is provided by {what}: {paths}; "
                               "whichever loads first serves every later request"))
    return out


def _distinct_contents(tree: FileTree, reals: list[str]) -> int:
    """How many different contents the files `reals` have: sizes first (a stat each), then
    each file of a shared size compared with one file of each content seen so far."""
    by_size: dict[int | None, list[str]] = {}
    for real in reals:
        node = tree.lstat(real)
        by_size.setdefault(node.size if node is not None else None, []).append(real)
    count = 0
    for size, group in by_size.items():
        if size is None:
            count += len(group)
            continue
        kinds: list[str] = []  # one file of each content
        for real in group:
            if not any(same_content(tree, k, real) for k in kinds):
                kinds.append(real)
        count += len(kinds)
    return count


class _Simulator:
    """Runs the right loader model for each file, sharing one cached view of the tree."""

    def __init__(self, tree: FileTree, options: LoaderOptions, interpreter: str | None) -> None:
        self.tree = as_cached(tree)
        self.options = options
        self.interpreter = interpreter or sys.executable
        self._glibc: GlibcOptions | None = None
        self._host: GlibcProcess | None = None
        self._elf_tables: SymbolTables | None = None
        self._macho_tables: MachoTables | None = None
        self.symbol_problems: list[tuple[NativeFile, SymbolProblem]] = []

    def close(self) -> None:
        """Close the symbol tables the binding checks opened."""
        for t in (self._elf_tables, self._macho_tables):
            if t is not None:
                t.close()

    def load(self, f: NativeFile) -> LoadResult | None:
        try:
            if isinstance(f.info, ElfInfo):
                if f.is_executable:
                    return self._run_elf(f)
                if f.info.elf_type != "dyn":
                    return None  # an object file, a core: nothing loads it
                return self._load_elf(f)
            return self._load_macho(f)
        except FormatError:
            return None  # not loadable here (another architecture, no slice we simulate)

    def _glibc_options(self) -> GlibcOptions:
        if self._glibc is None:
            from rpathfix.ldcache import load_cache
            from rpathfix.loader_glibc import host_options

            cache = None
            if self.options.use_cache and self.options.cache_root != "":
                cache = load_cache(posixpath.join(self.options.cache_root or "/", "etc/ld.so.cache"))
            self._glibc = host_options(ld_library_path=self.options.ld_library_path, cache=cache,
                                       executable=self.interpreter, secure=self.options.secure)
        return self._glibc

    def _load_elf(self, f: NativeFile) -> LoadResult:
        """The interpreter dlopen()s the file by path, as an import (or a preload) does: one
        started interpreter, forked for each file."""
        from rpathfix.loader_glibc import load_elf, started

        options = self._glibc_options()
        if self._host is None:
            self._host = started(self.tree, options)  # FormatError: no interpreter to load into
        if f.is_extension and self.options.symbols:
            from rpathfix.bind_glibc import SymbolTables, load_and_bind

            self._elf_tables = self._elf_tables or SymbolTables(self.tree)
            result, problems = load_and_bind(self.tree, f.path, options, self._elf_tables, host=self._host)
            self.symbol_problems += [(f, p) for p in problems]
            return result
        return load_elf(self.tree, f.path, options, host=self._host)

    def _run_elf(self, f: NativeFile) -> LoadResult:
        """The kernel starts the program: it is the main object of its own process, with the
        $ORIGIN of its resolved path (LOADERS.md rule 18), whatever path it was run by."""
        from rpathfix.loader_glibc import GlibcProcess

        proc = GlibcProcess(self.tree, self._glibc_options())
        proc.start(f.path)
        result = proc.result(f.path)
        if self.options.symbols and not result.missing and not any(r.error for r in result.resolutions):
            from rpathfix.bind_glibc import SymbolTables, check_program

            # Started for real: versions, then lazy binding (what the PLT does not defer).
            self._elf_tables = self._elf_tables or SymbolTables(self.tree)
            problems = check_program(proc, self._elf_tables, bind=True, lazy=True, trace=False)
            self.symbol_problems += [(f, p) for p in problems]
        return result

    def _load_macho(self, f: NativeFile) -> LoadResult:
        """No macOS interpreter to load into here: the file is the main image (LOADERS.md rule 30)."""
        from rpathfix.loader_dyld import DyldOptions, load_macho

        options = DyldOptions(restricted=self.options.secure)
        if f.is_extension and self.options.symbols:
            from rpathfix.bind_dyld import MachoTables, load_and_bind

            self._macho_tables = self._macho_tables or MachoTables(self.tree)
            result, problems = load_and_bind(self.tree, f.path, options, self._macho_tables)
            self.symbol_problems += [(f, p) for p in problems]
            return result
        return load_macho(self.tree, f.path, options, dlopen=False)


def report_to_json(report: Report) -> dict[str, object]:
    def one(x: Finding) -> dict[str, object]:
        out: dict[str, object] = {
            "file": x.file, "name": x.name, "code": x.code, "message": x.message,
            "trace": [{"path": a.path, "rule": a.rule, "result": a.result, "entry": a.entry,
                       "contributor": a.contributor} for a in x.trace],
        }
        if x.symbol is not None:
            out.update(symbol_json(x.symbol, x.demangled))
        return out

    return {
        "schema": "rpathfix.verify/1",
        "site_dirs": list(report.environment.site_dirs),
        "checked": report.checked,
        "errors": [one(x) for x in report.errors],
        "warnings": [one(x) for x in report.warnings],
    }


def symbol_json(p: SymbolProblem, demangled: str | None) -> dict[str, object]:
    """The keys a version-not-found or undefined-symbol record adds (docs/schemas.md)."""
    return {"symbol": p.symbol, "demangled": demangled, "version": p.version, "required_by": p.requester,
            "provider": p.provider, "searched": list(p.searched), "loader_message": p.message}



def format_report(report: Report, *, explain: bool = False, color: bool = False, named: Sequence[str] = (),
                  roots: Sequence[tuple[str, str]] = (), what: str = "sys.path",
                  venv_repair: str | None = None) -> str:
    """The report for a person: grouped by cause, with fixes (report.py); traces with explain.

    named: the directories as the user named them (fix commands repeat them); roots:
    (distribution, directory) of distribution roots that fix commands may name (`venv`'s
    check of a planned venv knows the roots its files come from); venv_repair: that check's
    `rpathfix venv --repair ...` command, the fix where a file cannot reach its provider."""
    from rpathfix.causes import verify_findings
    from rpathfix.fstree import RealTree
    from rpathfix.report import Display, Scope, format_findings

    findings, ctx = verify_findings(report.tree or RealTree(), report, named, roots, venv_repair)
    env = report.environment
    scope = Scope(len(env.files), sum(1 for f in env.files if f.is_extension), len(env.site_dirs), what=what)
    return format_findings(findings, scope, Display(env.site_dirs, ctx.label), explain=explain, color=color)


def format_warnings(report: Report, roots: Sequence[tuple[str, str]] = (),
                    venv_repair: str | None = None) -> list[str]:
    """One line per cause of the report's warnings, then their fixes: what a check that
    passed says once (venv_repair as for format_report)."""
    from rpathfix.causes import verify_findings
    from rpathfix.fstree import RealTree
    from rpathfix.report import Display, short_lines

    findings, ctx = verify_findings(report.tree or RealTree(), report, (), roots, venv_repair)
    return short_lines(findings, Display(report.environment.site_dirs, ctx.label))
