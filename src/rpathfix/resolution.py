"""Results of a loader simulation: every directory tried, and what was found.

Both models (glibc ld.so in loader_glibc, Apple dyld in loader_dyld) return these, so
ldd, why and verify print and serialize one shape for ELF and Mach-O alike.
"""

from __future__ import annotations

from rpathfix.static import NamedTuple

# found_via / rule vocabulary (JSON values of rpathfix.ldd/1 "found_via"):
#   glibc: "rpath", "ld_library_path", "runpath", "cache", "default", "loaded", "direct", "driver"
#   dyld:  "dyld_library_path", "rpath", "loader_path", "executable_path", "absolute",
#          "fallback", "shared_cache", "loaded", "direct", "driver"


class Attempt(NamedTuple):
    """One candidate path the loader tried, and why it tried it."""

    path: str  # the candidate file path, after token expansion
    rule: str  # which search step produced it (vocabulary above)
    # "found", "missing", "no-access" (EACCES: skipped), "open-error" (another errno: glibc gives up
    # on the rest of that search list), "wrong-class", "wrong-machine", "wrong-arch", "bad-file"
    # (the loader stops), "skipped"
    result: str
    entry: str | None = None  # the raw list element before expansion, e.g. "$ORIGIN/../lib"
    contributor: str | None = None  # the object whose RPATH/RUNPATH/LC_RPATH supplied the entry
    note: str | None = None  # anything a human needs to follow the step


class Resolution(NamedTuple):
    """How one requested name (DT_NEEDED, LC_LOAD_DYLIB, dlopen) was resolved."""

    name: str
    requester: str  # path (as opened) of the object whose entry asked for the name
    path: str | None  # path as opened (glibc l_name); None when not found
    found_via: str | None
    attempts: tuple[Attempt, ...] = ()
    weak: bool = False  # a weak dylib may be missing without failing the load
    error: str | None = None  # a hard error that stops the load, as the loader words it

    @property
    def found(self) -> bool:
        return self.path is not None or self.found_via == "driver"


VERSION_NOT_FOUND = "version-not-found"
UNDEFINED_SYMBOL = "undefined-symbol"


class SymbolProblem(NamedTuple):
    """A version need or symbol import that a load cannot satisfy, so the load fails
    (bind_glibc, bind_dyld). JSON keys of the verify and ldd error records."""

    kind: str  # VERSION_NOT_FOUND or UNDEFINED_SYMBOL
    requester: str  # path (as opened) of the object that needs the version or imports the symbol
    symbol: str | None  # the symbol as stored (mangled; Mach-O names keep their leading "_")
    version: str | None  # glibc: the version needed (of the symbol, for an undefined symbol)
    provider: str | None  # the object expected to define it (glibc version: lacks the version)
    file: str | None  # the name the requester asked for it by: a version need's file, a dylib load command
    searched: tuple[str, ...] = ()  # the objects looked in, in lookup order (paths)
    loader: str = "glibc"  # "glibc" or "dyld"
    defined: tuple[str, ...] = ()  # version-not-found: the versions the provider does define

    @property
    def message(self) -> str:
        """What the loader says (dlerror), on one line."""
        if self.kind == VERSION_NOT_FOUND:
            return f"{self.provider}: version `{self.version}' not found (required by {self.requester})"
        if self.loader == "dyld":
            if self.provider is None:
                return f"symbol not found in flat namespace '{self.symbol}' (referenced from {self.requester})"
            return f"Symbol not found: {self.symbol}, referenced from {self.requester}, expected in {self.provider}"
        ver = f", version {self.version}" if self.version else ""
        return f"{self.requester}: undefined symbol: {self.symbol}{ver}"


class Step(NamedTuple):
    """One object a symbol lookup looked in (`rpathfix why FILE SYMBOL`)."""

    path: str
    scope: str  # "global" or "local"
    result: str  # "defined", "not defined", "skipped"
    note: str | None = None  # the same-named symbols that did not qualify, with why


class SymbolTrace(NamedTuple):
    """How one symbol reference of one object binds, object by object."""

    symbol: str
    version: str | None
    weak: bool
    requester: str
    referenced: bool  # the requester has an undefined reference of that name
    provider: str | None  # path of the object it binds to; None when unbound
    definition: str | None  # the definition, described (binding, type, name@version)
    steps: tuple[Step, ...]
    mode: str  # how the object was loaded, in words


class LoadedObject(NamedTuple):
    """One object in a simulated process, in load order."""

    path: str  # as opened
    realpath: str
    name: str  # the name it was requested under
    loader: str | None  # path of the object that first needed it (None for the root and dlopen)
    soname: str | None = None
    install_name: str | None = None


class LoadResult:
    """The closure of a root object, as ldd shows it, plus every resolution trace."""

    __slots__ = ("objects", "resolutions", "root")

    def __init__(self, root: str, objects: list[LoadedObject] | None = None,
                 resolutions: list[Resolution] | None = None) -> None:
        self.root = root
        self.objects = objects if objects is not None else []
        self.resolutions = resolutions if resolutions is not None else []

    @property
    def missing(self) -> list[Resolution]:
        return [r for r in self.resolutions if not r.found and not r.weak]

    @property
    def error(self) -> str | None:
        """The hard error that stopped the load (glibc: docs/loader-rules.md rule 37), if one did."""
        return next((r.error for r in self.resolutions if r.error is not None), None)
