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
        """The hard error that stopped the load (glibc: LOADERS.md rule 37), if one did."""
        return next((r.error for r in self.resolutions if r.error is not None), None)
