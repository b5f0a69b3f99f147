"""glibc's ld.so, simulated over a FileTree: which file each DT_NEEDED name opens, and why.

The rules are those of ../shared/LOADERS.md Part A (glibc 2.36, verified on this kind of
machine by experiment); each step below names its rule number. The simulation is pure:
it reads headers through a FileTree, so the same code answers for a directory on disk
and for a planned venv that does not exist yet, and it never executes anything (safe on
untrusted and foreign-architecture files).

A process is modelled as ld.so builds it: the main object (with its PT_INTERP already
loaded), then its dependencies breadth-first in DT_NEEDED order, each name first checked
against what is already loaded (rule 3), then searched (rule 5), and a found file
deduplicated by its physical identity (rule 4). A Python import is the interpreter as
main object, then dlopen(path) of the extension module (rule 9: its dependencies also
see the interpreter's DT_RPATH; rule 1: a dlopen()ed object has no l_loader).

Rules 37-40 continue ../shared/LOADERS.md's numbering; docs/loader-rules.md holds them with
their evidence (tests/test_loader_glibc.py runs each against the real ld.so; glibc 2.36
source as g:file:line):

37. A candidate that opens is checked as open_verify and _dl_map_object_from_fd do
    (g:elf/dl-load.c:1578-1790, 1245-1297). A wrong ELF class or e_machine is skipped
    (rule 11); anything else that is not a loadable shared object is a hard error that
    stops the whole load, for a DT_NEEDED search and a dlopen alike, in the first search
    directory or a later one: fewer bytes than an ELF header ("file too short"), a
    directory ("cannot read file data: Is a directory", EISDIR from read), bad magic
    ("invalid ELF header"), another e_ident, e_version or e_phentsize, an e_type other
    than ET_DYN and ET_EXEC ("only ET_DYN and ET_EXEC can be loaded"; these name the path
    tried). After the (st_dev, st_ino) check of rule 4, which reuses an object already
    loaded (never the main program: ld.so has no file id for it, g:elf/dl-load.c:958-966,
    so a DT_NEEDED that leads to the program's own file is refused, while its DT_SONAME
    matches by rule 3), an ET_EXEC file gives "cannot dynamically load executable", an ET_DYN one with
    DF_1_PIE "cannot dynamically load position-independent executable", and within a
    dlopen one with DF_1_NOOPEN "shared object cannot be dlopen()ed" (these name the name
    requested). Under ldd too, the load stops at the first of them.
38. How ld.so acts on the open() of each candidate of a search list (open_path,
    g:elf/dl-load.c:1820-1945): ENOENT and EACCES (a file the user may not read, a
    directory it may not search) go on to the next candidate. Any other errno of a
    directory's own candidate DIR/NAME, the last one tried there (ELOOP after 40 links,
    ENOTDIR through a link, ENAMETOOLONG), ends that search list: its later directories
    are not tried, even one holding the library, and the search goes on with the next
    list (the loader's DT_RPATH, LD_LIBRARY_PATH, DT_RUNPATH, the cache, the default
    directories). In a glibc-hwcaps subdirectory such an error does not end the list
    (DIR/NAME is tried after it and decides). A failed open of the cache's path goes on
    to the default directories; a name with a slash is then not found.
39. DF_1_NODEFLIB drops a cache entry whose path starts with a default directory and '/'
    (g:elf/dl-load.c:2126-2148, SYSTEM_DIRS from gen-trusted-dirs.awk), so
    /usr/lib/x86_64-linux-gnu/gconv/libJIS.so is dropped too, not only entries directly in
    a default directory.
40. ld.so.cache entries for glibc-hwcaps/<level>/ subdirectories are chosen by the levels
    the CPU supports, best first (rule 21; g:elf/dl-cache.c:254-330): a cache holding a
    x86-64-v3 variant gives that file on a v3 machine, not the baseline one. After them,
    glibc 2.36 takes the first entry of a legacy subdirectory whose hwcap bits the process
    has (tls/ always, x86_64/ on x86-64; not avx512_1/ here) before the plain entry
    (g:elf/dl-cache.c:205-211, 292-305); glibc 2.37 dropped these.
"""

from __future__ import annotations

import os
import posixpath
import re
import struct

from rpathfix.errors import FormatError
from rpathfix.fstree import EACCES, ENOENT, CachedTree, as_cached, current_credentials, lookup
from rpathfix.hwcaps import DEFAULT_INTERP, glibc_hwcaps_levels, host_hwcap_subdirs
from rpathfix.ldcache import LdCache, legacy_hwcap_mask, load_cache
from rpathfix.model import ElfInfo
from rpathfix.resolution import Attempt, LoadedObject, LoadResult, Resolution
from rpathfix.sniff import read_binary_in
from rpathfix.static import TYPE_CHECKING, NamedTuple
from rpathfix.systemlibs import DRIVER_LIBS

if TYPE_CHECKING:
    from rpathfix.fstree import Credentials, FileTree

# DRIVER_LIBS (systemlibs, the one list): GPU driver libraries come with the kernel driver,
# never with a wheel, so a simulation on a build machine without a GPU calls them "provided
# by the driver", not missing; the repair never adds a path for them.

# $LIB and the default directories per machine (Debian multiarch; rule 5e, 16).
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "i386": "i386-linux-gnu",
             "ppc64le": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu", "arm": "arm-linux-gnueabihf",
             "riscv64": "riscv64-linux-gnu"}
MAX_OBJECTS = 10_000
DST = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")

# What open_verify reads and checks (rule 37; g:elf/dl-load.c:1578-1790).
EHDR_SIZE = {32: 52, 64: 64}  # sizeof (ElfW(Ehdr)): fewer bytes are "file too short"
PHDR_SIZE = {32: 32, 64: 56}  # the only e_phentsize accepted
ELFOSABI_SYSV, ELFOSABI_GNU = 0, 3
LIBC_ABI_MAX = 4  # glibc 2.36 libc-abis: UNIQUE, IFUNC, ABSOLUTE (g:sysdeps/gnu/ldsodefs.h:30-32)
ET_EXEC, ET_DYN = 2, 3
DF_1_NOOPEN, DF_1_PIE = 0x40, 0x08000000


def default_dirs(arch: str) -> tuple[str, ...]:
    triplet = MULTIARCH.get(arch)
    if triplet is None:
        return ("/lib", "/usr/lib")
    return (f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib")


def under_system_dir(path: str, arch: str) -> bool:
    """Whether `path` starts with a default directory and '/': ld.so's SYSTEM_DIRS test, used
    for DF_1_NODEFLIB's cache entries (rule 39) and, normalized, for rule 24's trusted dirs."""
    return any(path.startswith(d + "/") for d in default_dirs(arch))


def refused_by_dlopen(info: ElfInfo) -> bool:
    """Whether ld.so refuses to map this file as a library: an executable, PIE or not (rule 37)."""
    return info.elf_type == "exec" or bool(info.flags_1 & DF_1_PIE)


class GlibcOptions(NamedTuple):
    """The simulated process: environment, cache, hwcaps and the main program."""

    ld_library_path: str | None = None  # rule 12: as the process saw it at start-up
    cache: LdCache | None = None  # rule 5d; None = no cache
    hwcap_subdirs: tuple[str, ...] = ()  # rule 20, in priority order, without the final ""
    platform: str | None = None  # $PLATFORM; None = the main object's arch
    cwd: str = "/"
    secure: bool = False  # AT_SECURE (rules 22-24): a setuid, setgid or capability program
    executable: str | None = None  # main program that dlopen()s the root (a Python interpreter)
    driver_libs: bool = True
    credentials: Credentials | None = None  # whose permissions open() checks (rule 38); None: root's


def host_options(**kw: object) -> GlibcOptions:
    """Options describing this machine: its ld.so.cache, hwcaps subdirectories and user."""
    if "cache" not in kw:  # not setdefault: that would parse the cache even when one is given
        kw["cache"] = load_cache()
    if "hwcap_subdirs" not in kw:
        kw["hwcap_subdirs"] = host_hwcap_subdirs()
    if "credentials" not in kw:
        kw["credentials"] = current_credentials()
    return GlibcOptions(**kw)  # type: ignore[arg-type]


def _header(tree: CachedTree, real: str) -> ElfInfo | None:
    """The ELF headers of a physical file; None when it is not a well-formed ELF file. The
    read is the tree's, shared with the environment walk and the planner."""
    info = read_binary_in(tree, real)
    return info if isinstance(info, ElfInfo) else None


class _Obj:
    """One loaded object of a simulated process (identity matters: a plain class)."""

    __slots__ = ("first_name", "info", "is_main", "loader", "origin", "path", "real")

    def __init__(self, path: str, real: str, origin: str, info: ElfInfo, loader: _Obj | None,
                 is_main: bool = False, first_name: str | None = None) -> None:
        self.path = path  # l_name: the string that was opened
        self.real = real
        self.origin = origin  # $ORIGIN
        self.info = info
        self.loader = loader
        self.is_main = is_main
        self.first_name = first_name  # the name it was first requested under (what ldd prints)

    @property
    def rpath(self) -> str | None:
        """DT_RPATH as ld.so uses it: discarded entirely when DT_RUNPATH is present (rule 6)."""
        return None if self.info.runpath is not None else self.info.rpath


if TYPE_CHECKING:
    # A search's outcome: (path opened, real path, headers, found_via, attempts, hard error).
    _Found = tuple[str | None, str | None, ElfInfo | None, str | None, tuple[Attempt, ...], str | None]


class _Probe(NamedTuple):
    """One candidate opened: the file (real path and headers), or a hard error that stops the
    load (rule 37), or the errno of a failed open, ENOENT also for a skipped file (rule 38)."""

    real: str | None = None
    info: ElfInfo | None = None
    error: str | None = None
    errno: int = ENOENT

    @property
    def ends(self) -> bool:
        """The search stops here: found, or a hard error."""
        return self.real is not None or self.error is not None


def _found(path: str, probe: _Probe, rule: str, attempts: list[Attempt]) -> _Found:
    if probe.real is not None:
        return path, probe.real, probe.info, rule, tuple(attempts), None
    return None, None, None, None, tuple(attempts), probe.error


def open_verify(head: bytes, elf_class: int, little: bool, machine: int) -> tuple[str, str | None]:
    """ld.so's check of a candidate's ELF header (rule 37, g:elf/dl-load.c:1632-1757):
    ("ok", None), ("wrong-class" | "wrong-machine", None) to skip it, or ("bad-file",
    the error ld.so stops with)."""
    if len(head) < EHDR_SIZE[elf_class]:
        return "bad-file", "file too short"
    ident = head[:16]
    osabi, abiversion = ident[7], ident[8]
    if ident[:4] != b"\x7fELF":
        return "bad-file", "invalid ELF header"
    if ident[4] != (2 if elf_class == 64 else 1):
        return "wrong-class", None
    if ident[5] != (1 if little else 2):
        return "bad-file", f"ELF file data encoding not {'little' if little else 'big'}-endian"
    if ident[6] != 1:
        return "bad-file", "ELF file version ident does not match current one"
    if osabi not in (ELFOSABI_SYSV, ELFOSABI_GNU):
        return "bad-file", "ELF file OS ABI invalid"
    if not (abiversion == 0 or (osabi == ELFOSABI_GNU and abiversion < LIBC_ABI_MAX)):
        return "bad-file", "ELF file ABI version invalid"
    if any(ident[9:16]):
        return "bad-file", "nonzero padding in e_ident"
    e = "<" if little else ">"
    e_type, e_machine, e_version = struct.unpack_from(e + "HHI", head, 16)
    if e_version != 1:
        return "bad-file", "ELF file version does not match current one"
    if e_machine != machine:
        return "wrong-machine", None
    if e_type not in (ET_EXEC, ET_DYN):
        return "bad-file", "only ET_DYN and ET_EXEC can be loaded"
    (phentsize,) = struct.unpack_from(e + "H", head, 54 if elf_class == 64 else 42)
    if phentsize != PHDR_SIZE[elf_class]:
        return "bad-file", "ELF file's phentsize not the expected size"
    return "ok", None


def _head(tree: CachedTree, real: str, size: int) -> bytes:
    """The first `size` bytes of a file (fewer when it is shorter), remembered."""
    key = ("ldso-head", real)
    head = tree.memo.get(key)
    if not isinstance(head, bytes) or len(head) < size:
        src = tree.open(real)
        try:
            head = src.read_at(0, min(size, src.size))
        finally:
            src.close()
        tree.memo[key] = head
    return head[:size]


class GlibcProcess:
    """One simulated process: loaded objects and every resolution made so far."""

    def __init__(self, tree: FileTree, options: GlibcOptions) -> None:
        self.tree = as_cached(tree)
        self.options = options
        self.objects: list[_Obj] = []
        self.by_real: dict[str, _Obj] = {}
        self.main: _Obj | None = None
        self.resolutions: list[Resolution] = []
        self.machine: tuple[int, int] | None = None  # (elf_class, e_machine) of the process
        self.little = True  # the process's byte order (open_verify, rule 37)
        self.arch = "x86_64"
        self._deps_done: set[_Obj] = set()
        self.failed: Resolution | None = None  # the hard error that stopped the load (rule 37)
        self._in_dlopen = False  # within a dlopen(): DF_1_NOOPEN objects are refused
        # glibc-hwcaps levels in priority order, for the cache's variants (rule 40), and the
        # legacy hwcap bits for its tls/, x86_64/ ... entries (rule 40, glibc 2.36).
        self._cache_hwcaps = glibc_hwcaps_levels(options.hwcap_subdirs)
        self._cache_legacy: int | None = None
        # Rule 3's lookup table: l_name, requested names and SONAME -> the first object with it.
        self._by_name: dict[str, _Obj] = {}
        # Which hwcaps subdirectories exist under a search directory: a question about the
        # tree alone, so forks share the answers (ld.so keeps the same table per process).
        self._subdirs: dict[str, tuple[str, ...]] = {}
        self._searches: dict[tuple[object, ...], _Found] = {}  # shared by forks, like _subdirs

    def fork(self) -> GlibcProcess:
        """An independent copy of this process: a started interpreter, dlopen()ing one module
        per copy, as each `import` in a fresh interpreter would."""
        child = GlibcProcess.__new__(GlibcProcess)
        child.tree, child.options, child.machine, child.arch = self.tree, self.options, self.machine, self.arch
        child.little, child._cache_hwcaps, child._cache_legacy = self.little, self._cache_hwcaps, self._cache_legacy
        child.failed, child._in_dlopen = self.failed, False
        child._subdirs, child._searches = self._subdirs, self._searches
        copies: dict[int, _Obj] = {}
        for o in self.objects:
            copies[id(o)] = _Obj(o.path, o.real, o.origin, o.info, None, o.is_main, o.first_name)
        for o in self.objects:
            if o.loader is not None:
                copies[id(o)].loader = copies.get(id(o.loader), o.loader)
        child.objects = [copies[id(o)] for o in self.objects]
        child.by_real = {k: copies[id(o)] for k, o in self.by_real.items()}
        child.main = copies[id(self.main)] if self.main is not None else None
        child.resolutions = list(self.resolutions)
        child._deps_done = {copies[id(o)] for o in self._deps_done}
        child._by_name = {k: copies[id(o)] for k, o in self._by_name.items()}
        return child

    # ------------------------------------------------------------------ setup

    def _abs(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.options.cwd, path)

    def _read_root(self, path: str) -> tuple[str, ElfInfo]:
        real = lookup(self.tree, self._abs(path), cred=self.options.credentials).path
        if real is None:
            raise FormatError(path, "no such file")
        info = _header(self.tree, real)
        if info is None:
            src = self.tree.open(real)
            try:
                is_elf = src.size >= 4 and src.read_at(0, 4) == b"\x7fELF"
            finally:
                src.close()
            raise FormatError(path, "cannot read ELF headers (malformed)" if is_elf else "not an ELF file")
        return real, info

    def _set_machine(self, info: ElfInfo) -> None:
        """The process's class, machine and byte order, from its first object."""
        self.machine = (info.elf_class, info.machine)
        self.little, self.arch = info.little_endian, info.arch
        self._cache_legacy = legacy_hwcap_mask(info.arch, self.options.hwcap_subdirs)

    def start(self, main_path: str, *, as_ldd: bool = False) -> _Obj:
        """Map the main program, its PT_INTERP, then its dependencies (what execve + ld.so do).

        Rule 18: the main program's $ORIGIN is its fully resolved directory (/proc/self/exe);
        under `ldd FILE` (ld.so given a path) glibc < 2.42 uses the path as given: as_ldd.
        """
        real, info = self._read_root(main_path)
        self._set_machine(info)
        p = self._abs(main_path)
        origin = posixpath.dirname(p) if as_ldd else posixpath.dirname(real)
        main = _Obj(p, real, origin, info, None, True)
        self._add(main, (main_path,))
        self.main = main
        self._preload_interp(info)
        self._load_deps(main)
        return main

    def _preload_interp(self, info: ElfInfo) -> None:
        interp = info.interp or DEFAULT_INTERP.get(info.arch)
        if not interp:
            return
        real = self.tree.resolve(interp)
        if real is None or real in self.by_real:
            return
        hdr = _header(self.tree, real)
        if hdr is not None:
            self._add(_Obj(interp, real, posixpath.dirname(interp), hdr, None), (interp, posixpath.basename(interp)))

    def dlopen(self, path: str, caller: _Obj | None = None) -> tuple[Resolution, _Obj | None]:
        """dlopen(path) from `caller` (default: the main program): the Python import of a module."""
        requester = caller or self.main
        if self.machine is None:
            _real, info = self._read_root(path)
            self._set_machine(info)
        self._in_dlopen = True
        try:
            res, obj = self.lookup(path, requester, is_dlopen=True)
            self._record(res)
            if obj is not None and obj.loader is None and obj not in self._deps_done:
                self._load_deps(obj)
        finally:
            self._in_dlopen = False
        return res, obj

    # ------------------------------------------------------------------ loading

    def _add(self, obj: _Obj, names: tuple[str, ...] = ()) -> None:
        """A newly mapped object, answering to its l_name, `names` and its SONAME (rule 3)."""
        if len(self.objects) >= MAX_OBJECTS:
            raise FormatError(obj.path, f"more than {MAX_OBJECTS} objects in one closure")
        self.objects.append(obj)
        self.by_real[obj.real] = obj
        self._name(obj, obj.path)
        for n in names:
            self._name(obj, n)
        if obj.info.soname is not None and "/" not in obj.info.soname:
            self._name(obj, obj.info.soname)

    def _name(self, obj: _Obj, name: str) -> None:
        """Record that `obj` answers to `name` (rule 3); an earlier object keeps a name it has."""
        self._by_name.setdefault(name, obj)

    def _record(self, res: Resolution) -> None:
        self.resolutions.append(res)
        if res.error is not None and self.failed is None:
            self.failed = res

    def _load_deps(self, first: _Obj) -> None:
        """Breadth-first over DT_NEEDED, as _dl_map_object_deps does; a hard error ends the
        whole load there, also under ldd (rule 37; g:elf/dl-deps.c:232-240)."""
        queue = [first]
        done = self._deps_done
        while queue and self.failed is None:
            obj = queue.pop(0)
            if obj in done:
                continue
            done.add(obj)
            for name in obj.info.needed:
                res, dep = self.lookup(name, obj)
                self._record(res)
                if self.failed is not None:
                    return
                if dep is not None and dep not in done:
                    queue.append(dep)

    def named(self, name: str) -> _Obj | None:
        """The loaded object that answers to `name` (rule 3): what a DT_NEEDED name or a
        version need's file refers to once loaded (bind_glibc)."""
        return self._by_name.get(name)

    def _loaded(self, name: str) -> _Obj | None:
        """Rule 3: a name equal to a loaded object's l_name, a name it was requested under, or its
        SONAME (a SONAME never matches a name with a slash); the first loaded object wins."""
        return self._by_name.get(name)

    def lookup(self, name: str, requester: _Obj | None, is_dlopen: bool = False) -> tuple[Resolution, _Obj | None]:
        """Resolve one DT_NEEDED (or dlopen) name for `requester`, recording every candidate.

        Returns the Resolution and the object it maps (a new one is added to the process);
        the object is None when nothing is found or a hard error stops the load.
        """
        req_path = requester.path if requester else "<none>"
        hit = self._loaded(name)
        if hit is not None:
            return Resolution(name, req_path, hit.path, "loaded",
                              (Attempt(hit.path, "loaded", "found", note="already loaded"),)), hit
        if "/" in name:
            found = self._open_direct(name, requester)
        else:
            # Which file a search finds depends only on the name, the search lists and the
            # tree, never on what is loaded (rule 3 was checked above): forks share the answer.
            lists = self._search_lists(requester)
            # The cache and the default directories ask the requester, else the main program.
            flagged = requester or self.main
            nodeflib = flagged is not None and flagged.info.nodeflib
            key = (name, nodeflib, tuple((rule, value, c.path if c else None, c.origin if c else None,
                                          c is not None and c.is_main) for rule, value, c in lists))
            cached = self._searches.get(key)
            if cached is None:
                cached = self._searches[key] = self._search(name, lists, nodeflib)
            found = cached
        path, real, hdr, via, attempts, err = found
        obj = None
        if path is not None and real is not None and hdr is not None:
            obj, refused = self._map(path, real, hdr, name, requester, is_dlopen)
            if refused is not None:
                err = f"{name}: {refused}"
                attempts = (*attempts[:-1], attempts[-1]._replace(result="bad-file", note=f"{refused}: ld.so stops here"))
        return Resolution(name, req_path, obj.path if obj else None, via if obj or via == "driver" else None,
                          attempts, error=err), obj

    def _open_direct(self, name: str, requester: _Obj | None) -> _Found:
        """Rule 2: a name with a slash is opened as given, after DST expansion (rule 19)."""
        origin = requester.origin if requester else self.options.cwd
        expanded = self._expand(name, origin, requester is not None and requester.is_main)
        if expanded is None:
            return None, None, None, None, (Attempt(name, "direct", "skipped", note="unexpandable token"),), None
        attempts: list[Attempt] = []
        path = self._abs(expanded)
        return _found(path, self._probe(path, "direct", None, None, attempts), "direct", attempts)

    def _search(self, name: str, lists: list[tuple[str, str, _Obj | None]], nodeflib: bool) -> _Found:
        """Rule 5: the search lists, the cache, the default directories; the first valid file."""
        attempts: list[Attempt] = []
        for rule, value, contributor in lists:
            origin = contributor.origin if contributor else self.options.cwd
            is_main = contributor is not None and contributor.is_main
            for raw in _split(value, rule == "ld_library_path"):
                # An empty element is the cwd, kept relative: ld.so opens "name" itself (rule 14).
                d = self._expand(raw, origin, is_main) if raw else ""
                if d is None:
                    attempts.append(Attempt(raw, rule, "skipped", raw, contributor.path if contributor else None,
                                            "token cannot be expanded here"))
                    continue
                if d:
                    d = d.rstrip("/") or "/"  # a relative element stays relative to the cwd (rule 15)
                found, gave_up = self._search_dir(d, rule, raw, contributor, attempts, name)
                if found is not None:
                    return found
                if gave_up:
                    break  # rule 38: the rest of this list is not searched
        if self.options.cache is not None and self.machine is not None:
            hit_path = self.options.cache.lookup(name, self.arch, self.machine[0], self._cache_hwcaps,
                                                 self._cache_legacy)  # rule 40
            if hit_path is None:
                attempts.append(Attempt(name, "cache", "missing", note=f"no entry in {self.options.cache.path}"))
            elif nodeflib and under_system_dir(hit_path, self.arch):
                attempts.append(Attempt(hit_path, "cache", "skipped", note="DF_1_NODEFLIB (rule 39)"))
            else:
                probe = self._probe(hit_path, "cache", None, None, attempts)
                if probe.ends:  # any failed open goes on to the default directories (rule 38)
                    return _found(hit_path, probe, "cache", attempts)
        if not nodeflib:
            for d in default_dirs(self.arch):
                found, gave_up = self._search_dir(d, "default", None, None, attempts, name)
                if found is not None:
                    return found
                if gave_up:
                    break
        if self.options.driver_libs and DRIVER_LIBS.match(name):
            attempts.append(Attempt(name, "driver", "found", note="provided by the GPU driver at run time"))
            return None, None, None, "driver", tuple(attempts), None
        return None, None, None, None, tuple(attempts), None

    def _search_lists(self, r: _Obj | None) -> list[tuple[str, str, _Obj | None]]:
        """Rule 5: the ordered path lists searched for a name without a slash."""
        lists: list[tuple[str, str, _Obj | None]] = []
        if r is not None and r.info.runpath is None:
            # 5a, rules 7-8: the RPATH chain through every loader, then the executable's.
            seen: set[int] = set()
            x: _Obj | None = r
            while x is not None and id(x) not in seen:
                seen.add(id(x))
                if x.rpath:
                    lists.append(("rpath", x.rpath, x))
                x = x.loader
            m = self.main
            if m is not None and id(m) not in seen and m.rpath:
                lists.append(("rpath", m.rpath, m))
        elif r is None and self.main is not None and self.main.rpath:
            lists.append(("rpath", self.main.rpath, self.main))
        llp = self.options.ld_library_path
        if llp and not self.options.secure:
            lists.append(("ld_library_path", llp, self.main))  # rule 19: $ORIGIN = the executable's
        if r is not None and r.info.runpath:
            lists.append(("runpath", r.info.runpath, r))  # 5c: the requester's own, never inherited
        return lists

    def _is_dir(self, path: str) -> bool:
        """stat(path) is a directory, for the simulated user (what open_path asks, rule 38)."""
        node = lookup(self.tree, self._abs(path), cred=self.options.credentials).node
        return node is not None and node.kind == "dir"

    def _search_dir(self, d: str, rule: str, raw: str | None, contributor: _Obj | None, attempts: list[Attempt],
                    name: str) -> tuple[_Found | None, bool]:
        """Rule 11/21: the hwcaps subdirectories of d, then d itself; the first valid file wins.
        Returns (the outcome when the search ends here, whether ld.so gives up on this list)."""
        subdirs = self._subdirs.get(d)
        if subdirs is None:
            # ld.so caches missing (dir, sub) pairs; there is nothing to show for them.
            subdirs = self._subdirs[d] = tuple(
                sub for sub in self.options.hwcap_subdirs if self._is_dir(f"{d}/{sub}" if d else sub))
        cpath = contributor.path if contributor and rule != "ld_library_path" else None
        for sub in subdirs:
            path = f"{d}/{sub}/{name}" if d else f"{sub}/{name}"
            probe = self._probe(path, rule, raw, cpath, attempts)
            if probe.ends:
                return _found(path, probe, rule, attempts), False
        path = name if not d else f"/{name}" if d == "/" else f"{d}/{name}"
        probe = self._probe(path, rule, raw, cpath, attempts)
        if probe.ends:
            return _found(path, probe, rule, attempts), False
        # Rule 38: an open() error other than ENOENT and EACCES on DIR/NAME, in a directory
        # that exists, ends this search list (open_path returns, g:elf/dl-load.c:1921-1923).
        if probe.errno not in (ENOENT, EACCES) and self._is_dir(d or "."):
            last = attempts[-1]
            attempts[-1] = last._replace(note=f"{last.note}: ld.so gives up on the rest of this list (rule 38)")
            return None, True
        return None, False

    def _probe(self, path: str, rule: str, raw: str | None, cpath: str | None, attempts: list[Attempt]) -> _Probe:
        """Open one candidate as ld.so's open_verify does and record the attempt: the file when
        it is the one, a hard error that stops the load (rule 37), or why to go on (rule 38)."""
        opened = lookup(self.tree, self._abs(path), cred=self.options.credentials, read=True)
        if opened.error:
            if opened.error == ENOENT:
                attempts.append(Attempt(path, rule, "missing", raw, cpath))
            else:
                result = "no-access" if opened.error == EACCES else "open-error"
                attempts.append(Attempt(path, rule, result, raw, cpath, os.strerror(opened.error)))
            return _Probe(errno=opened.error)
        real, node = opened.path, opened.node
        assert real is not None and node is not None
        if node.kind == "dir":  # open(O_RDONLY) works, read() gives EISDIR
            return self._hard(path, rule, raw, cpath, attempts, f"cannot read file data: {os.strerror(21)}")
        if node.kind != "file":
            return self._hard(path, rule, raw, cpath, attempts, "not a regular file")
        elf_class, machine = self.machine or (64, 62)
        verdict, why = open_verify(_head(self.tree, real, EHDR_SIZE[elf_class]), elf_class, self.little, machine)
        if verdict == "bad-file":
            assert why is not None
            return self._hard(path, rule, raw, cpath, attempts, why)
        hdr = _header(self.tree, real)
        if verdict != "ok" or hdr is None:
            if hdr is None and verdict == "ok":
                return self._hard(path, rule, raw, cpath, attempts, "cannot read ELF headers (malformed)")
            note = f"ELFCLASS{hdr.elf_class}" if hdr is not None and verdict == "wrong-class" else \
                hdr.arch if hdr is not None else None
            attempts.append(Attempt(path, rule, verdict, raw, cpath, note))
            return _Probe()  # skipped silently: ld.so sets ENOENT (rule 11)
        attempts.append(Attempt(path, rule, "found", raw, cpath))
        return _Probe(real, hdr)

    @staticmethod
    def _hard(path: str, rule: str, raw: str | None, cpath: str | None, attempts: list[Attempt],
              why: str) -> _Probe:
        """Rule 37: a candidate ld.so cannot load stops the whole load, named by the path tried."""
        attempts.append(Attempt(path, rule, "bad-file", raw, cpath, f"{why}: ld.so stops here"))
        return _Probe(error=f"{path}: {why}")

    def _map(self, path: str, real: str, hdr: ElfInfo, name: str, requester: _Obj | None,
             is_dlopen: bool) -> tuple[_Obj | None, str | None]:
        """The object a found candidate becomes in this process, or why ld.so refuses to map it
        (rule 37: checked after the identity check of rule 4, as _dl_map_object_from_fd does)."""
        existing = self.by_real.get(real)
        if existing is not None and not existing.is_main:  # ld.so has no file id for the main program
            self._name(existing, name)  # rule 4: same file by another path; its origin stays
            return existing, None
        if hdr.elf_type == "exec":
            return None, "cannot dynamically load executable"
        if hdr.flags_1 & DF_1_PIE:
            return None, "cannot dynamically load position-independent executable"
        if hdr.flags_1 & DF_1_NOOPEN and self._in_dlopen:
            return None, "shared object cannot be dlopen()ed"
        loader = None if is_dlopen else requester  # rule 1
        # l_name is the string opened; $ORIGIN of a relative one is prefixed with getcwd() (rule 17).
        obj = _Obj(path, real, posixpath.dirname(self._abs(path)), hdr, loader, first_name=name)
        self._add(obj, (name,))
        return obj, None

    def _expand(self, raw: str, origin: str, for_main: bool) -> str | None:
        """Rule 16, 23, 24: expand $ORIGIN, $LIB, $PLATFORM; None drops the element."""
        if "$" not in raw:
            return raw
        if self.options.secure:
            # Rule 23 (g:elf/dl-load.c:318-345): every $ORIGIN must be the element's first
            # component: at its start and followed by '/' or the end.
            for m in DST.finditer(raw):
                if (m.group(1) or m.group(2)) == "ORIGIN" and (m.start() != 0 or raw[m.end():m.end() + 1] not in ("", "/")):
                    return None
        lib = f"lib/{MULTIARCH[self.arch]}" if self.arch in MULTIARCH else "lib"
        platform = self.options.platform or self.arch

        def sub(m: re.Match[str]) -> str:
            token = m.group(1) or m.group(2)
            if token == "ORIGIN":
                return origin
            if token == "LIB":
                return lib
            if token == "PLATFORM":
                return platform
            return m.group(0)  # unknown tokens stay literal

        out = DST.sub(sub, raw)
        # Rule 24: the executable's expanded element, normalized (without the file system:
        # is_trusted_path_normalize, g:elf/dl-load.c:127-180), must lie under a trusted dir.
        if (self.options.secure and for_main and any((m.group(1) or m.group(2)) == "ORIGIN" for m in DST.finditer(raw))
                and not under_system_dir(posixpath.normpath(out) + "/", self.arch)):
            return None
        return out

    # ------------------------------------------------------------------ results

    def result(self, root: str, skip: int = 0) -> LoadResult:
        objs = [LoadedObject(o.path, o.real, o.first_name or o.path,
                             o.loader.path if o.loader else None, o.info.soname) for o in self.objects[skip:]]
        return LoadResult(root, objs, list(self.resolutions))


def _split(value: str, is_llp: bool) -> list[str]:
    """Rule 14: ':' separates (also ';' in LD_LIBRARY_PATH); an empty element is the cwd."""
    if value == "":
        return []
    if is_llp:
        value = value.replace(";", ":")
    return value.split(":")


def started(tree: FileTree, options: GlibcOptions) -> GlibcProcess:
    """options.executable, started, with its own resolutions dropped (the interpreter's closure
    is not a module's business): fork() it for each dlopen instead of starting it again."""
    if not options.executable:
        raise ValueError("options.executable is not set")
    proc = GlibcProcess(tree, options)
    proc.start(options.executable)
    proc.resolutions.clear()
    return proc


def load_elf(tree: FileTree, root: str, options: GlibcOptions, *, dlopen: bool | None = None,
             host: GlibcProcess | None = None) -> LoadResult:
    """The closure of `root`: as `ldd root` shows it, or, with options.executable, as the
    executable's dlopen(root) loads it (a Python interpreter importing an extension module).
    `host`, from started(), saves starting the executable again for every root."""
    use_dlopen = options.executable is not None if dlopen is None else dlopen
    if use_dlopen and options.executable:
        proc = host.fork() if host is not None else started(tree, options)
        skip = len(proc.objects)
        proc.dlopen(root)
        return proc.result(root, skip)
    proc = GlibcProcess(tree, options)
    # ldd runs ld.so on the file (rule 18's as-given $ORIGIN); a secure process is the program
    # itself, started by the kernel: ldd cannot run one (AT_SECURE needs a setuid execve).
    proc.start(root, as_ldd=not options.secure)
    return proc.result(root)


def explain(tree: FileTree, requester: str, name: str, options: GlibcOptions) -> tuple[Resolution, LoadResult]:
    """How `name` is resolved when `requester` asks for it (`rpathfix why`)."""
    result = load_elf(tree, requester, options)
    for r in result.resolutions:
        if r.name == name and r.requester in (requester, posixpath.join(options.cwd, requester)):
            return r, result
    for r in result.resolutions:
        if r.name == name:
            return r, result
    # Not a dependency of requester: ask as if requester had one more DT_NEEDED entry.
    proc = GlibcProcess(tree, options)
    if options.executable:
        proc.start(options.executable)
        _res, obj = proc.dlopen(requester)
    else:
        obj = proc.start(requester, as_ldd=not options.secure)
    res, _ = proc.lookup(name, obj)
    return res, result
