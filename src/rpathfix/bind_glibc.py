"""glibc's symbol binding, simulated: version needs and undefined symbols of a load.

loader_glibc decides which files a load maps; this module decides whether the load then
succeeds, as ld.so does after mapping: it checks every version an object needs
(.gnu.version_r) against the object that provides that file, then binds every undefined
symbol of every newly loaded object in that object's lookup scope. Python imports an
extension module with dlopen(path, RTLD_NOW) (`sys.getdlopenflags()`), so every
non-weak undefined symbol of every object the import maps must bind then, or the import
fails with "undefined symbol: ...".

Rules (numbered after ../shared/LOADERS.md's 1-36 and the loader models' 37-41; every rule
from 37 up is in docs/loader-rules.md with its evidence; glibc 2.36 sources, `g:` =
bminor/glibc at glibc-2.36). Each was checked against the real ld.so here by
tests/test_bind_glibc.py.

42. Version needs. After mapping, ld.so checks the needs of every object of the new
    object's search list that was not checked before (g:elf/dl-open.c:595-611; at start-up
    every object, g:elf/dl-version.c:390-400). For each .gnu.version_r entry (file F,
    version V): the object answering to the name F (g:elf/dl-version.c:29-49) must define V
    in .gnu.version_d (any of its definitions, the base version too: :86-125), else the
    load fails with "F_path: version `V' not found (required by X)" (:141-149). A need
    marked VER_FLG_WEAK may be missing (:127-139). An object without any version
    definitions satisfies every need (:70-84: only `ldd -v` mentions it).
43. The global scope is the main program's search list: the program, then its DT_NEEDED
    tree breadth-first, each object once (g:elf/dl-deps.c:156-260); objects dlopen()ed
    with RTLD_GLOBAL append their search lists' objects that are not in it yet
    (g:elf/dl-open.c:170-205). Objects dlopen()ed with RTLD_LOCAL are mapped (rule 3 finds
    them by name) but in no scope of a later load.
44. Lookup scope of an object mapped by dlopen(X): [global scope, X's search list]
    (g:elf/dl-object.c:152-177; RTLD_DEEPBIND, not modelled, swaps them). X's search list
    is X, then its DT_NEEDED tree breadth-first, each object once, including objects that
    were loaded before. In a program's initial load (`ldd`), every object's scope is the
    global scope alone.
45. Binding. Under RTLD_NOW every undefined symbol of every newly mapped object is looked
    up (g:elf/dl-open.c:630-703, objects in reverse dependency order); under RTLD_LAZY
    only those that relocations outside the PLT use, unless the object has DF_BIND_NOW,
    DF_1_NOW or DT_BIND_NOW (g:elf/dl-reloc.c:248-252). A lookup walks the scope's objects
    in order and takes the first that defines the name acceptably (g:elf/dl-lookup.c:
    775-779, 357-502). No definition: a weak reference stays 0; any other fails the load
    with "X_path: undefined symbol: S" (", version V" when versioned;
    g:elf/dl-lookup.c:781-802). A reference that is STB_LOCAL or hidden binds to its own
    object and is not looked up (g:elf/dl-reloc.c:170-172). A program's copy relocations
    (R_*_COPY: data it holds a copy of) look their symbol up in the scope without the
    program itself (g:elf/dl-lookup.c:365-367), at start-up, lazy or not.
46. An acceptable definition (check_match, g:elf/dl-lookup.c:59-163; do_lookup_x,
    :450-497): defined (not SHN_UNDEF; st_value non-zero unless SHN_ABS or TLS), of type
    NOTYPE, OBJECT, FUNC, COMMON, TLS or IFUNC, with binding GLOBAL, WEAK (a weak
    definition is as good as a global one: LD_DYNAMIC_WEAK unset) or GNU_UNIQUE (then
    shared process-wide with the first definition entered), and not hidden or internal
    (those are skipped, the walk goes on to the next object).
47. Versions in a lookup. A versioned reference (its .gnu.version index names a need or
    definition with a non-zero hash, g:elf/dl-reloc.c:187-189) matches a definition of
    the same version name; also an unversioned definition (index 0/1) when neither the
    definition (bit 15 of .gnu.version) nor the reference (vna_other bit 15) is hidden;
    an object without version tables matches any reference (:94-123). An unversioned
    reference matches an unversioned definition or the object's oldest version (index 2)
    at once; failing that, a definition with a later version when it is the only
    non-hidden one of that name in the object (:125-158, 450-454).

Not modelled: LD_PRELOAD, RTLD_DEEPBIND, DT_AUXILIARY/DT_FILTER, IFUNC
resolvers, protected-symbol subtleties, and the executable's canonical PLT entries as
definitions (elf_symbols.ElfSymbols._check_match). Objects the model does not open
(a GPU driver library, provided at run time) may define anything: a symbol or version
that could come from one is not reported.
"""

from __future__ import annotations

from rpathfix.elf_symbols import Budget, Definition, ElfSymbols, Reference, Version, gnu_hash, open_symbols
from rpathfix.errors import FormatError
from rpathfix.fstree import as_cached
from rpathfix.loader_glibc import GlibcProcess, started
from rpathfix.resolution import UNDEFINED_SYMBOL, VERSION_NOT_FOUND, Step, SymbolProblem, SymbolTrace
from rpathfix.static import TYPE_CHECKING
from rpathfix.systemlibs import DRIVER_LIBS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rpathfix.fstree import FileTree
    from rpathfix.loader_glibc import GlibcOptions, _Obj
    from rpathfix.resolution import LoadResult

MRU = 4  # providers remembered per object: most references go to the same few libraries
MAX_CACHED_REFERENCES = 200_000  # references kept in memory per run; more are read again
HOT_BUDGET = 64 << 20  # bytes of the most used libraries' symbol tables held in memory per run
MAX_OPEN = 256  # symbol-table files kept open at once


class SymbolTables:
    """Symbol tables of every object of one run, opened once, with every lookup remembered.

    A verify loads dozens of extension modules that map the same libraries; each
    (object, symbol, version) question is answered from the file once. close() closes
    the files.
    """

    def __init__(self, tree: FileTree) -> None:
        self.tree = as_cached(tree)
        self._open: dict[str, ElfSymbols] = {}
        self._unreadable: set[str] = set()
        self._refs: dict[str, tuple[Reference, ...]] = {}
        self._eager: dict[str, frozenset[int]] = {}
        self._copies: dict[str, list[Reference]] = {}
        self._hashes: dict[str, tuple[bytes, int]] = {}  # name -> (its bytes, gnu_hash)
        self._memo: dict[str, dict[object, Definition | None]] = {}  # real path -> reference key -> answer
        # Reference key -> an object that defines it acceptably. Whether a definition is
        # acceptable depends on the reference (its name and version), not on who makes it,
        # so a reference binds in any scope that contains that object.
        self.providers: dict[object, str] = {}
        self._cached_refs = 0
        self._budget = Budget(HOT_BUDGET)

    def of(self, real: str) -> ElfSymbols | None:
        """The symbol tables of the file at physical path `real`; None when unreadable. At
        most MAX_OPEN files stay open: the least recently used is closed (and opened
        again if asked again; the answers it gave are remembered)."""
        try:
            tables = self._open.pop(real)
        except KeyError:
            if real in self._unreadable:
                return None
            try:
                tables = open_symbols(self.tree.open(real))
            except FormatError:
                self._unreadable.add(real)
                return None
            tables.budget = self._budget
            if len(self._open) >= MAX_OPEN:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
        self._open[real] = tables  # most recently used last
        return tables

    def references(self, real: str) -> tuple[Reference, ...] | list[Reference]:
        cached = self._refs.get(real)
        if cached is not None:
            return cached
        tables = self.of(real)
        if tables is None:
            return ()
        try:
            refs = list(tables.references())
        except FormatError:
            return ()
        if self._cached_refs + len(refs) <= MAX_CACHED_REFERENCES:
            self._cached_refs += len(refs)
            self._refs[real] = tuple(refs)
        return refs

    def copies(self, real: str) -> list[Reference]:
        """A program's copy-relocation symbols (ElfSymbols.copy_references), read once."""
        if real not in self._copies:
            tables = self.of(real)
            try:
                self._copies[real] = tables.copy_references() if tables is not None else []
            except FormatError:
                self._copies[real] = []
        return self._copies[real]

    def eager(self, real: str) -> frozenset[int] | None:
        """Symbol indices bound at load under RTLD_LAZY; None: all of them (BIND_NOW)."""
        tables = self.of(real)
        if tables is None or tables.bind_now:
            return None
        if real not in self._eager:
            try:
                self._eager[real] = tables.eager_symbols()
            except FormatError:
                return None
        return self._eager[real]

    def lookup(self, real: str, name: str, version: Version | None) -> Definition | None:
        """What object `real` contributes for this reference (rules 46-47)."""
        return self.lookup_key(real, _key(name, version), name, version)

    def lookup_key(self, real: str, key: object, name: str, version: Version | None) -> Definition | None:
        """lookup() with the reference's memo key (_key) computed once by the caller."""
        memo = self._memo.get(real)
        if memo is None:
            memo = self._memo[real] = {}
        elif key in memo:
            return memo[key]
        tables = self.of(real)
        found = None
        if tables is not None:
            hashed = self._hashes.get(name)
            if hashed is None:
                raw = name.encode("utf-8", "surrogateescape")
                hashed = self._hashes[name] = (raw, gnu_hash(raw))
            try:
                found = tables.lookup(name, version, hashed[1], hashed[0])
            except FormatError:
                found = None
        memo[key] = found
        if found is not None:
            self.providers.setdefault(key, real)
        return found

    def close(self) -> None:
        for t in self._open.values():
            t.close()
        self._open.clear()


def _key(name: str, version: Version | None) -> object:
    """What a lookup's answer depends on besides the object: the name and the version."""
    return name if version is None else (name, version.name, version.hash, version.hidden)


# ---------------------------------------------------------------------------- scopes


def searchlist(proc: GlibcProcess, root: _Obj) -> list[_Obj]:
    """Rule 43/44: root, then its DT_NEEDED tree breadth-first, each object once (l_searchlist).
    Names the model did not find (or left to the GPU driver) are left out."""
    out = [root]
    seen = {id(root)}
    i = 0
    while i < len(out):
        for name in out[i].info.needed:
            dep = proc.named(name)
            if dep is not None and id(dep) not in seen:
                seen.add(id(dep))
                out.append(dep)
        i += 1
    return out


def _opaque(proc: GlibcProcess, objs: Sequence[_Obj]) -> bool:
    """Whether a DT_NEEDED name of these objects is left to the GPU driver (not modelled):
    such a library may define any symbol or version."""
    if not proc.options.driver_libs:
        return False
    return any(proc.named(n) is None and DRIVER_LIBS.match(n) for o in objs for n in o.info.needed)


class _Binder:
    """The checks of one load: rule 42 for the objects to check, rule 45 for those to bind."""

    def __init__(self, proc: GlibcProcess, tables: SymbolTables) -> None:
        self.proc = proc
        self.tables = tables
        self.problems: list[SymbolProblem] = []
        self.failed_versions: set[tuple[str, str]] = set()  # (requester path, version name)
        self.stop_at_versions = True  # dlopen; `ldd -r` goes on and reports everything

    def check_versions(self, objs: Sequence[_Obj]) -> None:
        """Rule 42: every need of each object against the object that answers to its file."""
        for obj in objs:
            tables = self.tables.of(obj.real)
            if tables is None:
                continue
            for need in tables.needs:
                provider = self._find_needed(need.file)
                if provider is None:
                    continue  # not found (already an error) or left to the GPU driver
                ptables = self.tables.of(provider.real)
                if ptables is None or ptables.provides_version(need) or need.weak:
                    continue
                self.problems.append(SymbolProblem(VERSION_NOT_FOUND, obj.path, None, need.name, provider.path,
                                                   need.file, defined=tuple(ptables.version_names())))
                self.failed_versions.add((obj.path, need.name))

    def _find_needed(self, name: str | None) -> _Obj | None:
        """find_needed (g:elf/dl-version.c:29-49): a loaded object answering to `name`."""
        if name is None:
            return None
        return self.proc.named(name)

    def bind(self, obj: _Obj, scope: Sequence[tuple[_Obj, str]], *, lazy: bool, opaque: bool) -> None:
        """Rule 45 for one object: every reference it must bind now, in `scope`; a program's
        copy relocations too, in the scope without the program."""
        refs = self.tables.references(obj.real)
        copies = self.tables.copies(obj.real) if obj.is_main else []
        if not refs and not copies:
            return
        # An object whose symbol tables cannot be read may define anything (FormatError).
        if opaque or any(self.tables.of(o.real) is None for o, _ in scope):
            return
        reals = [o.real for o, _ in scope]
        failed = self._unbound(refs, reals)
        if lazy and failed:
            # Which references the PLT defers is read from the relocations only when some do
            # not bind: scanning them costs more than binding what is bound anyway.
            eager = self.tables.eager(obj.real)
            failed = [r for r in failed if eager is None or r.symndx in eager]
        if copies:
            failed += self._unbound(copies, [r for r in reals if r != obj.real])
        if not failed:
            return
        if self.stop_at_versions:
            # A dlopen stops at a failed version need (rule 42), which names the cause; a
            # reference to that version would fail too, so it is left out.
            failed = [r for r in failed if r.version is None or (obj.path, r.version.name) not in self.failed_versions]
        if len(failed) > 1:
            tables = self.tables.of(obj.real)
            try:
                order = tables.relocation_order({r.symndx for r in failed}) if tables is not None else {}
            except FormatError:
                order = {}
            failed.sort(key=lambda r: order.get(r.symndx, len(order) + r.symndx))
        searched = tuple(o.path for o, _ in scope)
        for ref in failed:
            self.problems.append(SymbolProblem(
                UNDEFINED_SYMBOL, obj.path, ref.name, ref.version.name if ref.version else None, None,
                ref.version.file if ref.version else None, searched))

    def _unbound(self, refs: Sequence[Reference], reals: list[str]) -> list[Reference]:
        """The non-weak references that no object of `reals` defines acceptably."""
        in_scope = set(reals)
        files: dict[str, str | None] = {}  # version need file -> real path of its object in scope
        recent: list[str] = []  # providers that answered this object's last lookups
        failed: list[Reference] = []
        providers = self.tables.providers
        for ref in refs:
            if ref.weak:
                continue
            hint = None
            if ref.version is not None and ref.version.file is not None:
                f = ref.version.file
                if f not in files:
                    o = self.proc.named(f)
                    files[f] = o.real if o is not None and o.real in in_scope else None
                hint = files[f]
            key = _key(ref.name, ref.version)
            known = providers.get(key)
            if known is not None and known in in_scope:
                continue  # an earlier lookup found a definition there: acceptable for anyone
            if self._defined(ref, key, reals, recent, hint) is None:
                failed.append(ref)
        return failed

    def _defined(self, ref: Reference, key: object, reals: list[str], recent: list[str],
                 hint: str | None) -> str | None:
        """Some object of the scope that defines ref acceptably, or None. Whether a reference
        binds does not depend on the order (the walk takes the first acceptable definition
        and skips only unacceptable ones), so the likely providers are asked first: the
        file a versioned reference's version is needed from, then the providers that
        answered the object's last lookups. `why` walks the scope in order."""
        lookup = self.tables.lookup_key
        name, version = ref.name, ref.version
        if hint is not None and lookup(hint, key, name, version) is not None:
            return hint
        for real in recent:
            if lookup(real, key, name, version) is not None:
                if recent[0] != real:
                    recent.remove(real)
                    recent.insert(0, real)
                return real
        for real in reals:
            if real not in recent and real != hint and lookup(real, key, name, version) is not None:
                recent.insert(0, real)
                del recent[MRU:]
                return real
        return None


def global_scope(proc: GlibcProcess, global_roots: Sequence[_Obj] = ()) -> list[_Obj]:
    """Rule 43: the main program's search list, then each RTLD_GLOBAL object's new members."""
    out: list[_Obj] = []
    seen: set[int] = set()
    for root in ([proc.main] if proc.main is not None else []) + list(global_roots):
        for o in searchlist(proc, root):
            if id(o) not in seen:
                seen.add(id(o))
                out.append(o)
    return out


def check_dlopen(proc: GlibcProcess, root: _Obj, new: Sequence[_Obj], tables: SymbolTables, *,
                 lazy: bool = False, global_roots: Sequence[_Obj] = ()) -> list[SymbolProblem]:
    """Rules 42-47 for dlopen(root) in `proc`, after the loader model mapped it: `new` are
    the objects this dlopen mapped, `global_roots` the objects dlopen()ed before it with
    RTLD_GLOBAL. The problems come in the order ld.so meets them: version needs in
    search-list order, then undefined symbols in relocation order (the first one is the
    error dlopen reports)."""
    binder = _Binder(proc, tables)
    local = searchlist(proc, root)
    glob = global_scope(proc, global_roots)
    new_ids = {id(o) for o in new}
    binder.check_versions([o for o in local if id(o) in new_ids])
    scope = [(o, "global") for o in glob] + [(o, "local") for o in local]
    opaque = _opaque(proc, local) or _opaque(proc, glob)
    for obj in reversed(local):  # relocation: dependencies before the objects that need them
        if id(obj) in new_ids:
            binder.bind(obj, scope, lazy=lazy, opaque=opaque)
    return binder.problems


def check_program(proc: GlibcProcess, tables: SymbolTables, *, bind: bool, lazy: bool = False,
                  trace: bool = True) -> list[SymbolProblem]:
    """Rules 42-47 for a program's initial load: every object's versions; with bind, every
    object's references in the global scope (rule 44). `ldd -r` is trace mode and binds
    now: it goes on after a failure and reports everything. A program started for real
    binds lazily (lazy=True: only what relocations outside the PLT use, unless an object is
    BIND_NOW; LD_BIND_NOW unset) and stops at the first failure (trace=False: a reference
    to a missing version is not reported again)."""
    binder = _Binder(proc, tables)
    binder.stop_at_versions = not trace
    objs = list(proc.objects)
    binder.check_versions(objs)
    if bind:
        glob = global_scope(proc)
        scope = [(o, "global") for o in glob]
        opaque = _opaque(proc, glob)
        for obj in reversed(objs):  # rtld relocates from the last loaded object back
            binder.bind(obj, scope, lazy=lazy, opaque=opaque)
    return binder.problems


def load_and_bind(tree: FileTree, root: str, options: GlibcOptions, tables: SymbolTables, *,
                  host: GlibcProcess | None = None, lazy: bool = False,
                  loaded_before: Sequence[tuple[str, bool]] = ()) -> tuple[LoadResult, list[SymbolProblem]]:
    """loader_glibc.load_elf for options.executable dlopen()ing `root` (an import), plus the
    binding checks. `loaded_before` are (path, RTLD_GLOBAL?) dlopen()ed first, in order.
    When the model cannot map the whole closure (a missing library: the load fails
    before any binding), no binding problems are reported."""
    proc = host.fork() if host is not None else started(tree, options)
    global_roots: list[_Obj] = []
    for path, is_global in loaded_before:
        _res, obj = proc.dlopen(path)
        if obj is not None and is_global:
            global_roots.append(obj)
    proc.resolutions.clear()
    skip = len(proc.objects)
    _res, obj = proc.dlopen(root)
    result = proc.result(root, skip)
    if obj is None or result.missing or any(r.error for r in result.resolutions):
        return result, []
    return result, check_dlopen(proc, obj, proc.objects[skip:], tables, lazy=lazy, global_roots=global_roots)


# ---------------------------------------------------------------------------- why


def explain_symbol(tree: FileTree, path: str, symbol: str, options: GlibcOptions,
                   tables: SymbolTables | None = None) -> tuple[SymbolTrace, LoadResult]:
    """How `symbol`, referenced by the object at `path`, binds: in the scope of
    options.executable's dlopen(path) when an executable is set, else of `path` as the
    program (ldd). `symbol` may carry a version (`name@VERSION`); else the reference's own
    version is used (an object may reference one name under one version only)."""
    own = tables is None
    tables = tables or SymbolTables(tree)
    try:
        name, _at, want_version = symbol.partition("@")
        want_version = want_version.lstrip("@")
        if options.executable:
            proc = started(tree, options)
            skip = len(proc.objects)
            _res, obj = proc.dlopen(path)
            result = proc.result(path, skip)
            if obj is None:
                raise FormatError(path, "cannot be loaded")
            glob = global_scope(proc)
            local = searchlist(proc, obj)
            mode = f"dlopen(RTLD_NOW) from {options.executable}"
        else:
            proc = GlibcProcess(tree, options)
            obj = proc.start(path, as_ldd=True)
            result = proc.result(path)
            glob, local = global_scope(proc), []
            mode = "program (as ldd -r loads it)"
        ref = next((r for r in tables.references(obj.real) if r.name == name), None)
        version: Version | None = ref.version if ref is not None else None
        if want_version and (version is None or version.name != want_version):
            version = Version(0, want_version, _sysv(want_version), None)
        steps: list[Step] = []
        provider = definition = None
        for o, where in [(o, "global") for o in glob] + [(o, "local") for o in local]:
            d = tables.lookup(o.real, name, version)
            if d is not None:
                steps.append(Step(o.path, where, "defined", d.describe()))
                provider, definition = o.path, d.describe()
                break
            st = tables.of(o.real)
            others = [text for _i, text in st.named(name)] if st is not None else []
            steps.append(Step(o.path, where, "not defined", "; ".join(others) or None))
        trace = SymbolTrace(name, version.name if version else None, ref.weak if ref else False, obj.path,
                            ref is not None, provider, definition, tuple(steps), mode)
        return trace, result
    finally:
        if own:
            tables.close()


def _sysv(name: str) -> int:
    from rpathfix.elf_symbols import sysv_hash

    return sysv_hash(name.encode("utf-8", "surrogateescape"))
