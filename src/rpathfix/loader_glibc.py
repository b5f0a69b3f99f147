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
"""

from __future__ import annotations

import posixpath
import re

from rpathfix.errors import FormatError
from rpathfix.fstree import CachedTree, as_cached, regular_file
from rpathfix.hwcaps import DEFAULT_INTERP, host_hwcap_subdirs
from rpathfix.ldcache import LdCache, load_cache
from rpathfix.model import ElfInfo
from rpathfix.resolution import Attempt, LoadedObject, LoadResult, Resolution
from rpathfix.sniff import read_binary_in
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree

# GPU driver libraries come with the kernel driver, never with a wheel: a simulation on a
# build machine without a GPU must call them "provided by the driver", not missing.
DRIVER_LIBS = re.compile(
    r"^lib(cuda|cudadebugger|nvidia-[A-Za-z0-9_.-]+|nvcuvid|nvoptix|nvidia)\.so(\.[0-9]+)*$"
)

# $LIB and the default directories per machine (Debian multiarch; rule 5e, 16).
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "i386": "i386-linux-gnu",
             "ppc64le": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu", "arm": "arm-linux-gnueabihf",
             "riscv64": "riscv64-linux-gnu"}
MAX_OBJECTS = 10_000
DST = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def default_dirs(arch: str) -> tuple[str, ...]:
    triplet = MULTIARCH.get(arch)
    if triplet is None:
        return ("/lib", "/usr/lib")
    return (f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib")


class GlibcOptions(NamedTuple):
    """The simulated process: environment, cache, hwcaps and the main program."""

    ld_library_path: str | None = None  # rule 12: as the process saw it at start-up
    cache: LdCache | None = None  # rule 5d; None = no cache
    hwcap_subdirs: tuple[str, ...] = ()  # rule 20, in priority order, without the final ""
    platform: str | None = None  # $PLATFORM; None = the main object's arch
    cwd: str = "/"
    secure: bool = False  # AT_SECURE (rules 22-24)
    executable: str | None = None  # main program that dlopen()s the root (a Python interpreter)
    driver_libs: bool = True


def host_options(**kw: object) -> GlibcOptions:
    """Options describing this machine: its ld.so.cache and hwcaps subdirectories."""
    if "cache" not in kw:  # not setdefault: that would parse the cache even when one is given
        kw["cache"] = load_cache()
    if "hwcap_subdirs" not in kw:
        kw["hwcap_subdirs"] = host_hwcap_subdirs()
    return GlibcOptions(**kw)  # type: ignore[arg-type]


def _header(tree: CachedTree, real: str) -> ElfInfo | None:
    """The ELF headers of a physical file; None when it is not a well-formed ELF file (for
    a search candidate that is a hard error, rule 11). The read is the tree's, shared with
    the environment walk and the planner."""
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


def _found(path: str, probe: tuple[str, ElfInfo] | str | None, rule: str, attempts: list[Attempt]) -> _Found:
    if isinstance(probe, tuple):
        return path, probe[0], probe[1], rule, tuple(attempts), None
    return None, None, None, None, tuple(attempts), probe


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
        self.arch = "x86_64"
        self._deps_done: set[_Obj] = set()
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
        real = self.tree.resolve(self._abs(path))
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

    def start(self, main_path: str, *, as_ldd: bool = False) -> _Obj:
        """Map the main program, its PT_INTERP, then its dependencies (what execve + ld.so do).

        Rule 18: the main program's $ORIGIN is its fully resolved directory (/proc/self/exe);
        under `ldd FILE` (ld.so given a path) glibc < 2.42 uses the path as given: as_ldd.
        """
        real, info = self._read_root(main_path)
        self.machine = (info.elf_class, info.machine)
        self.arch = info.arch
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
            self.machine = (info.elf_class, info.machine)
            self.arch = info.arch
        res, obj = self.lookup(path, requester, is_dlopen=True)
        self.resolutions.append(res)
        if obj is not None and obj.loader is None and obj not in self._deps_done:
            self._load_deps(obj)
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

    def _load_deps(self, first: _Obj) -> None:
        """Breadth-first over DT_NEEDED, as _dl_map_object_deps does."""
        queue = [first]
        done = self._deps_done
        while queue:
            obj = queue.pop(0)
            if obj in done:
                continue
            done.add(obj)
            for name in obj.info.needed:
                res, dep = self.lookup(name, obj)
                self.resolutions.append(res)
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
            nodeflib = requester is not None and requester.info.nodeflib
            key = (name, nodeflib, tuple((rule, value, c.path if c else None, c.origin if c else None,
                                          c is not None and c.is_main) for rule, value, c in lists))
            cached = self._searches.get(key)
            if cached is None:
                cached = self._searches[key] = self._search(name, lists, nodeflib)
            found = cached
        path, real, hdr, via, attempts, err = found
        obj = None
        if path is not None and real is not None and hdr is not None:
            obj = self._map(path, real, hdr, name, requester, is_dlopen)
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
        probe = self._probe(path, "direct", None, None, attempts)
        return _found(path, probe, "direct", attempts)

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
                found = self._search_dir(d, rule, raw, contributor, attempts, name)
                if found is not None:
                    return found
        defaults = default_dirs(self.arch)
        if self.options.cache is not None and self.machine is not None:
            hit_path = self.options.cache.lookup(name, self.arch, self.machine[0])
            if hit_path is None:
                attempts.append(Attempt(name, "cache", "missing", note=f"no entry in {self.options.cache.path}"))
            elif nodeflib and posixpath.dirname(hit_path) in defaults:
                attempts.append(Attempt(hit_path, "cache", "skipped", note="DF_1_NODEFLIB"))
            else:
                probe = self._probe(hit_path, "cache", None, None, attempts)
                if probe is not None:
                    return _found(hit_path, probe, "cache", attempts)
        if not nodeflib:
            for d in defaults:
                found = self._search_dir(d, "default", None, None, attempts, name)
                if found is not None:
                    return found
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

    def _search_dir(self, d: str, rule: str, raw: str | None, contributor: _Obj | None, attempts: list[Attempt],
                    name: str) -> _Found | None:
        """Rule 11/21: the hwcaps subdirectories of d, then d itself; the first valid file wins."""
        subdirs = self._subdirs.get(d)
        if subdirs is None:
            # ld.so caches missing (dir, sub) pairs; there is nothing to show for them.
            subdirs = self._subdirs[d] = tuple(
                sub for sub in self.options.hwcap_subdirs
                if self.tree.resolve(self._abs(f"{d}/{sub}" if d else sub)) is not None)
        cpath = contributor.path if contributor and rule != "ld_library_path" else None
        for sub in subdirs:
            path = f"{d}/{sub}/{name}" if d else f"{sub}/{name}"
            probe = self._probe(path, rule, raw, cpath, attempts)
            if probe is not None:
                return _found(path, probe, rule, attempts)
        path = name if not d else f"/{name}" if d == "/" else f"{d}/{name}"
        probe = self._probe(path, rule, raw, cpath, attempts)
        return _found(path, probe, rule, attempts) if probe is not None else None

    def _probe(self, path: str, rule: str, raw: str | None, cpath: str | None,
               attempts: list[Attempt]) -> tuple[str, ElfInfo] | str | None:
        """Open one candidate: (real path, headers) when it is the one, an error message for a
        hard error that stops the load, None to go on searching. Records the attempt."""
        found = regular_file(self.tree, self._abs(path))
        if found is None:
            attempts.append(Attempt(path, rule, "missing", raw, cpath))
            return None
        real = found[0]
        hdr = _header(self.tree, real)
        if hdr is None:
            # Rule 11: any bad header other than class/machine stops the whole load.
            attempts.append(Attempt(path, rule, "bad-file", raw, cpath, "invalid ELF header: ld.so stops here"))
            return f"{path}: invalid ELF header"
        if self.machine is not None and hdr.elf_class != self.machine[0]:
            attempts.append(Attempt(path, rule, "wrong-class", raw, cpath, f"ELFCLASS{hdr.elf_class}"))
            return None
        if self.machine is not None and hdr.machine != self.machine[1]:
            attempts.append(Attempt(path, rule, "wrong-machine", raw, cpath, hdr.arch))
            return None
        attempts.append(Attempt(path, rule, "found", raw, cpath))
        return real, hdr

    def _map(self, path: str, real: str, hdr: ElfInfo, name: str, requester: _Obj | None, is_dlopen: bool) -> _Obj:
        """The object a found candidate becomes in this process."""
        existing = self.by_real.get(real)
        if existing is not None:
            self._name(existing, name)  # rule 4: same file by another path; its origin stays
            return existing
        loader = None if is_dlopen else requester  # rule 1
        # l_name is the string opened; $ORIGIN of a relative one is prefixed with getcwd() (rule 17).
        obj = _Obj(path, real, posixpath.dirname(self._abs(path)), hdr, loader, first_name=name)
        self._add(obj, (name,))
        return obj

    def _expand(self, raw: str, origin: str, for_main: bool) -> str | None:
        """Rule 16, 23, 24: expand $ORIGIN, $LIB, $PLATFORM; None drops the element."""
        if "$" not in raw:
            return raw
        if self.options.secure:
            m = DST.search(raw)
            if m and (m.group(1) or m.group(2)) == "ORIGIN" and m.start() != 0:
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
        if self.options.secure and for_main and "ORIGIN" in raw:
            trusted = any(out == d or out.startswith(d + "/") for d in default_dirs(self.arch))
            if not trusted:
                return None  # rule 24: the executable's $ORIGIN must be a trusted directory
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
    proc.start(root, as_ldd=True)
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
        obj = proc.start(requester, as_ldd=True)
    res, _ = proc.lookup(name, obj)
    return res, result
