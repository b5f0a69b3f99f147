"""Apple dyld's symbol binding, simulated: does every import of a load find its export?

loader_dyld decides which images a load maps; this module then resolves every bind
target of every newly mapped image as dyld4 does when it applies fixups. There is no
Mac here: the rules are read from apple-oss-distributions/dyld at dyld-1378 (`d:`), and
checked on zig-built dylibs and on real macOS wheels' extension modules at model level
(tests/test_bind_dyld.py). Numbered after ../shared/LOADERS.md's rules (1-36); every rule
from 37 up is in docs/loader-rules.md.

48. Every bind target names a library ordinal: 1..n is the image the n-th dylib load
    command (LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB, LC_LOAD_UPWARD_DYLIB,
    LC_LAZY_LOAD_DYLIB, in command order) resolved to; 0 the image itself; -1 the main
    executable; -2 a flat lookup; -3 a weak-definition lookup (d:dyld/Loader.cpp:
    2853-2866, 2914). dyld resolves every target of LC_DYLD_CHAINED_FIXUPS' imports
    table, or of the bind and lazy-bind opcode streams, in that order, and stops at the
    first failure (d:dyld/Loader.cpp:2707-2730).
49. Two-level lookup: the named image must export the symbol: its export trie (a
    re-export entry continues in the dependent it names, under the imported name), else
    its re-exported dylibs (LC_REEXPORT_DYLIB), recursively, each image once
    (d:dyld/Loader.cpp:3109-3113, 3196-3303, 3438-3453). An image without an export
    trie exports its external N_SECT nlist symbols (:3370-3404).
50. Flat lookup (-2): every loaded image in load order, each by its own exports only
    (re-export entries followed, re-exported dylibs not), skipping images dlopen()ed with
    RTLD_LOCAL except the importer itself (d:dyld/Loader.cpp:2866-2880;
    d:dyld/DyldAPIs.cpp:1407, 1462: RTLD_LOCAL hides the dlopen()ed image only). An
    extension module linked with `-undefined dynamic_lookup` imports the Python C API
    this way and finds it in the interpreter.
51. A target nothing exports: a weak import binds to 0; a lazy bind (the lazy-bind
    stream of opcode-based images) binds to an abort stub and the load goes on; a miss in
    the weak-bind stream is ignored (d:dyld/Loader.cpp:2731-2745, 2887-2906, 3119-3135).
    Any other fails the load: "Symbol not found: _S / Referenced from: X / Expected in:
    Y" (:3144-3176), or "symbol not found in flat namespace '_S'" (:2909). A target
    in a weak dylib that is not there is missing too (:3303, 3144-3148).

What the model cannot see, it does not report: images in the dyld shared cache (the OS
libraries: their exports are not on disk here) export anything asked of them; and when
the interpreter is not modelled (no Mach-O `executable`), flat lookups of the C API
(`_Py*`, `__Py*`) are taken to find it in the interpreter that imports the module.
"""

from __future__ import annotations

from rpathfix.errors import FormatError
from rpathfix.fstree import as_cached
from rpathfix.loader_dyld import DEFAULT_OPTIONS, simulate
from rpathfix.macho_symbols import FLAT_LOOKUP, MAIN_EXECUTABLE, SELF, WEAK_LOOKUP, Import, open_macho_symbols
from rpathfix.resolution import UNDEFINED_SYMBOL, LoadResult, Step, SymbolProblem, SymbolTrace
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree
    from rpathfix.loader_dyld import DyldOptions, _Image, _Simulation
    from rpathfix.macho_symbols import Export, MachoSymbols

PYTHON_API = ("_Py", "__Py")
MAX_REEXPORT_DEPTH = 64
MAX_OPEN = 256  # files kept open at once

_UNKNOWN = object()  # a lookup the model cannot answer (an image it cannot read)


class MachoTables:
    """MachoSymbols of every image of one run, opened once (keyed by path and slice)."""

    def __init__(self, tree: FileTree) -> None:
        self.tree = as_cached(tree)
        self._open: dict[tuple[str, int], MachoSymbols] = {}
        self._unreadable: set[tuple[str, int]] = set()
        self._imports: dict[tuple[str, int], tuple[Import, ...]] = {}

    def of(self, image: _Image) -> MachoSymbols | None:
        """The image's imports and exports; None for a shared-cache image or an unreadable
        file. At most MAX_OPEN files stay open (the least recently used is closed)."""
        if image.slice is None:
            return None
        key = (image.path, image.slice.offset)
        try:
            t = self._open.pop(key)
        except KeyError:
            if key in self._unreadable:
                return None
            try:
                t = open_macho_symbols(self.tree.open(image.path), image.slice)
            except FormatError:
                self._unreadable.add(key)
                return None
            if len(self._open) >= MAX_OPEN:
                self._open.pop(next(iter(self._open))).close()
        self._open[key] = t
        return t

    def imports(self, image: _Image) -> tuple[Import, ...]:
        assert image.slice is not None
        key = (image.path, image.slice.offset)
        if key not in self._imports:
            t = self.of(image)
            try:
                self._imports[key] = tuple(t.imports()) if t is not None else ()
            except FormatError:
                self._imports[key] = ()
        return self._imports[key]

    def close(self) -> None:
        for t in self._open.values():
            t.close()
        self._open.clear()


class _Process:
    """One simulated dyld process after loading: images, and each image's dependents."""

    def __init__(self, sim: _Simulation, tables: MachoTables, *, python_api: bool) -> None:
        self.sim = sim
        self.tables = tables
        self.python_api = python_api
        by_requester: dict[str, list[_Image | None]] = {}
        for r in sim.resolutions:
            dep = sim.by_path.get(r.path) if r.path is not None else None
            by_requester.setdefault(r.requester, []).append(dep)
        self.deps = by_requester

    def dependent(self, image: _Image, ordinal: int) -> _Image | None:
        deps = self.deps.get(image.path, [])
        return deps[ordinal - 1] if 0 < ordinal <= len(deps) else None

    def exported(self, image: _Image, name: str, static: bool, seen: set[int],
                 depth: int = 0) -> tuple[_Image, Export] | object | None:
        """Rule 49 (static) / 50 (shallow): the export of `name` image provides, following
        re-exports; _UNKNOWN when it leads into an image the model cannot read."""
        if id(image) in seen or depth > MAX_REEXPORT_DEPTH:
            return None
        seen.add(id(image))
        t = self.tables.of(image)
        if t is None:
            return _UNKNOWN
        try:
            e = t.export(name)
        except FormatError:
            return _UNKNOWN
        if e is not None:
            if e.reexport_ordinal is None:
                return image, e
            dep = self.dependent(image, e.reexport_ordinal)
            if dep is None:
                return None  # re-exported from a weak dylib that is not there
            target = e.imported_name or name
            if target != name:
                return self.exported(dep, target, True, set(), depth + 1)
            return self.exported(dep, target, static, seen, depth + 1)
        if static:
            unknown = False
            for ordinal in t.reexports:
                dep = self.dependent(image, ordinal)
                if dep is None:
                    continue
                found = self.exported(dep, name, True, seen, depth + 1)
                if found is _UNKNOWN:
                    unknown = True
                elif found is not None:
                    return found
            if unknown:
                return _UNKNOWN
        return None

    def flat(self, importer: _Image, name: str) -> tuple[_Image, Export] | object | None:
        """Rule 50: the first image in load order that exports `name`."""
        unknown = False
        for image in self.sim.images:
            found = self.exported(image, name, False, set())
            if found is _UNKNOWN:
                unknown = True
            elif found is not None:
                return found
        if self.python_api and name.startswith(PYTHON_API):
            return _UNKNOWN  # the interpreter's C API (module docstring)
        del unknown  # the shared cache is not flat-searched here: see the module docstring
        return None

    def check(self, image: _Image) -> list[SymbolProblem]:
        """Rules 48-51 for every bind target of one image."""
        problems: list[SymbolProblem] = []
        assert image.slice is not None
        names = [ref.name for ref in image.slice.dylibs]
        for imp in self.tables.imports(image):
            if imp.lazy or imp.weak_bind:
                continue  # rule 51: a miss does not fail the load
            found, expected, file = self.resolve(image, imp)
            if found is None and not imp.weak:
                if imp.ordinal > 0:
                    file = names[imp.ordinal - 1] if imp.ordinal <= len(names) else f"library ordinal {imp.ordinal}"
                searched: tuple[str, ...]
                if imp.ordinal == FLAT_LOOKUP or imp.ordinal == WEAK_LOOKUP:
                    searched = tuple(i.path for i in self.sim.images)
                else:
                    searched = (expected,) if expected else ()
                problems.append(SymbolProblem(UNDEFINED_SYMBOL, image.path, imp.name, None,
                                              expected if imp.ordinal != FLAT_LOOKUP else None, file, searched,
                                              loader="dyld"))
        return problems

    def resolve(self, image: _Image, imp: Import) -> tuple[object | None, str | None, str | None]:
        """(the export or _UNKNOWN or None, the path of the image expected to export it, the
        load command naming it)."""
        if imp.ordinal == FLAT_LOOKUP or imp.ordinal == WEAK_LOOKUP:
            return self.flat(image, imp.name), None, None
        if imp.ordinal == SELF:
            target: _Image | None = image
        elif imp.ordinal == MAIN_EXECUTABLE:
            target = self.sim.main
        else:
            target = self.dependent(image, imp.ordinal)
        if target is None:
            return None, "unknown", None
        return self.exported(target, imp.name, True, set()), target.path, None


def load_and_bind(tree: FileTree, root: str, options: DyldOptions, tables: MachoTables) -> tuple[LoadResult, list[SymbolProblem]]:
    """loader_dyld.load_macho, plus rules 48-51 for every image the load of `root` mapped
    (with options.executable: after the executable's own closure). No binding problems
    when an image is missing or unreadable: the load fails before binding."""
    sim, top = simulate(tree, root, options)
    result = LoadResult(root, sim.objects(), sim.resolutions)
    if result.missing or any(r.error for r in result.resolutions):
        return result, []
    first = sim.images.index(top)
    proc = _Process(sim, tables, python_api=options.executable is None)
    problems: list[SymbolProblem] = []
    for image in sim.images[first:]:
        if image.slice is not None:
            problems.extend(proc.check(image))
    return result, problems


def explain_symbol(tree: FileTree, path: str, symbol: str, options: DyldOptions = DEFAULT_OPTIONS,
                   tables: MachoTables | None = None) -> tuple[SymbolTrace, LoadResult]:
    """How the image at `path` binds `symbol` (with or without its leading underscore)."""
    own = tables is None
    tables = tables or MachoTables(tree)
    try:
        sim, top = simulate(tree, path, options)
        result = LoadResult(path, sim.objects(), sim.resolutions)
        proc = _Process(sim, tables, python_api=options.executable is None)
        imports = tables.imports(top) if top.slice is not None else ()
        imp = next((i for i in imports if i.name == symbol), None) or \
            next((i for i in imports if i.name == "_" + symbol), None)
        name = imp.name if imp is not None else (symbol if symbol.startswith("_") else "_" + symbol)
        steps: list[Step] = []
        provider = definition = None
        if imp is None or imp.ordinal in (FLAT_LOOKUP, WEAK_LOOKUP):
            for image in sim.images:
                found = proc.exported(image, name, False, set())
                if found is _UNKNOWN:
                    steps.append(Step(image.path, "flat", "unknown", "in the dyld shared cache: not readable here"))
                elif isinstance(found, tuple):
                    provider, definition = found[0].path, found[1].describe()
                    steps.append(Step(image.path, "flat", "defined", definition))
                    break
                else:
                    steps.append(Step(image.path, "flat", "not defined"))
            if provider is None and options.executable is None and name.startswith(PYTHON_API):
                steps.append(Step("<the Python interpreter>", "flat", "defined", "the C API (assumed)"))
                provider, definition = "<the Python interpreter>", "the C API (assumed)"
            mode = "flat namespace"
        else:
            found, expected, _file = proc.resolve(top, imp)
            where = "two-level" if imp.ordinal > 0 else {SELF: "self", MAIN_EXECUTABLE: "main executable"}[imp.ordinal]
            if isinstance(found, tuple):
                provider, definition = found[0].path, found[1].describe()
                steps.append(Step(expected or "?", where, "defined",
                                  definition + ("" if found[0].path == expected else f" (in {found[0].path})")))
            elif found is _UNKNOWN:
                steps.append(Step(expected or "?", where, "unknown", "in the dyld shared cache: not readable here"))
                provider = expected
            else:
                steps.append(Step(expected or "?", where, "not defined"))
            mode = f"two-level namespace, library ordinal {imp.ordinal}"
        weak = imp.weak if imp is not None else False
        trace = SymbolTrace(name, None, weak, top.path, imp is not None, provider, definition, tuple(steps), mode)
        return trace, result
    finally:
        if own:
            tables.close()
