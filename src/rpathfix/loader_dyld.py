"""Apple dyld (dyld4) as a pure simulation over a FileTree: an `ldd` for Mach-O.

There is no Mac here: every rule is taken from ../shared/LOADERS.md Part B (rules 28-36)
or docs/loader-rules.md (rule 41), which cite apple-oss-distributions/dyld@dyld-1378 (`d:` below). The model answers, for one
root image (a dylib, bundle, extension module or executable) and one architecture, which
file each dylib load command resolves to, and lists every candidate tried on the way.

What the model does:

- Images are loaded breadth-first in load-command order: the main executable first when
  one is given, then the root (dlopen()ed by path when `dlopen=True`, the Python-import
  case), then every dylib reached from it. The path dyld records for an image is the
  physical path of the opened file (`fcntl(F_GETPATH)`, rule 31), so `LoadedObject.path`
  and `.realpath` are both `fstree.resolve()` of the candidate.
- Candidate order for a load command P (rule 29, d:dyld/DyldProcessConfig.cpp:2376-2583,
  d:dyld/Loader.cpp:713-758): DYLD_LIBRARY_PATH + leaf(P); P expanded (@loader_path,
  @executable_path, @rpath over the rpath stack, or P itself); then the fallbacks.
- Already loaded (rule 33, d:dyld/Loader.cpp:797-820): P is first compared with every
  loaded image's recorded path and install name; each candidate path is compared with
  recorded paths and install names too; a found file is deduplicated by physical path.
- Shared cache (rules 35 and 41): a candidate that names a dylib the shared cache holds
  (SHARED_CACHE_DYLIBS and the patterns below: the system's own install names, not every
  path under /usr/lib) resolves there, whichever step produced it, before the disk is
  asked; any other candidate must exist on disk.

41. Which candidates the shared cache answers (d:dyld/Loader.cpp:836, 972-986): on a
    customer cache dyld asks the cache for every candidate path of every kind (DYLD_LIBRARY_PATH,
    @rpath and @loader_path expansions, the path itself, the fallbacks; only the
    "on disk" variants skip it) by its exact install name or an alias the cache records
    (d:dyld/DyldProcessConfig.cpp:1719-1737, 2798-2811), and stats the disk only for a path
    the cache does not hold. So a missing @rpath/libxmissing.dylib with LC_RPATH
    /usr/lib/swift is not found ("not in dyld cache"), while @rpath/libswiftCore.dylib is.

Left out: DYLD_FRAMEWORK_PATH and framework partial paths, DYLD_VERSIONED_*, root/overlay
prefixes (rule 29.2), LC_DYLD_ENVIRONMENT, the SDK-version condition on the default
fallbacks (rule 29.4: the model always applies them when DYLD_FALLBACK_LIBRARY_PATH is
unset), inode+mtime dedupe beyond the physical path, cache overrides by files on disk
(rule 35), and code signing (rule 36). dyld loads dependents depth-first; this model goes
breadth-first, so "the first image that needed it" (and hence the rpath stack of a
library needed from two places) follows load-command order level by level.
"""

from __future__ import annotations

import posixpath
import re
from collections import deque

from rpathfix.errors import FormatError
from rpathfix.fstree import resolve
from rpathfix.macho import read_macho
from rpathfix.model import MachoInfo, MachoSlice
from rpathfix.resolution import Attempt, LoadedObject, LoadResult, Resolution
from rpathfix.sniff import read_binary_in
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree

# Bounds: a hostile or huge tree cannot make the simulation loop or grow without limit.
MAX_IMAGES = 10_000
MAX_ATTEMPTS_PER_NAME = 10_000
MAX_ATTEMPTS_TOTAL = 1_000_000

# Where dyld looks for cached dylibs (mightBeInSharedCache, d:dyld/Loader.cpp:702-708): a
# missing path under these is reported "not in the dyld shared cache".
SHARED_CACHE_PREFIXES = ("/usr/lib/", "/System/Library/", "/System/iOSSupport/", "/System/DriverKit/")

# Rule 41: the dylibs of macOS's dyld shared cache that a wheel can name, as install names.
# Source: the install names of the macOS 14 SDK's text stubs (MacOSX.sdk/usr/lib/*.tbd, e.g.
# alexey-lysiuk/macos-sdk MacOSX14.0.sdk/usr/lib/), which list what the OS provides; since
# macOS 11 these live only in the shared cache. libSystem's parts (/usr/lib/system/*) are the
# reexported-libraries of libSystem.tbd (zig's lib/libc/darwin/libSystem.tbd). A dylib not
# listed here counts as missing: the model then errs towards "will not load".
SHARED_CACHE_DYLIBS = frozenset("/usr/lib/" + name for name in (
    "libSystem.B.dylib", "libc++.1.dylib", "libc++abi.dylib", "libobjc.A.dylib", "libz.1.dylib",
    "libiconv.2.dylib", "libcharset.1.dylib", "libresolv.9.dylib", "libsqlite3.dylib", "libxml2.2.dylib",
    "libxslt.1.dylib", "libexslt.0.dylib", "libbz2.1.0.dylib", "libcurl.4.dylib", "libedit.3.dylib",
    "libncurses.5.4.dylib", "libpanel.5.4.dylib", "libform.5.4.dylib", "libmenu.5.4.dylib", "libexpat.1.dylib",
    "libffi.dylib", "libpam.2.dylib", "libarchive.2.dylib", "libcompression.dylib", "libutil.dylib",
    "libpcap.A.dylib", "libicucore.A.dylib", "libbsm.0.dylib", "libMatch.1.dylib", "libsandbox.1.dylib",
    "libcups.2.dylib", "libDiagnosticMessagesClient.dylib", "libgcc_s.1.dylib", "libapple_nghttp2.dylib",
    "libboringssl.dylib", "libnetwork.dylib", "libobjc-trampolines.dylib", "libffi-trampolines.dylib",
))
# Names the cache records as aliases of another image (the SDK's libc.tbd, libm.tbd, ... are
# links to libSystem.tbd; dyld canonicalizes them, d:dyld/Loader.cpp:825-832).
SHARED_CACHE_ALIASES = {f"/usr/lib/{alias}.dylib": "/usr/lib/libSystem.B.dylib" for alias in (
    "libc", "libm", "libdl", "libpthread", "libinfo", "libdbm", "libpoll", "libproc", "librpcsvc", "libSystem")}
# Whole families: libSystem's parts; the Swift runtime and overlays (in the OS since macOS
# 10.14.4, SDK usr/lib/swift/libswift*.tbd); a framework's binary (Foo.framework/Foo or
# Foo.framework/Versions/A/Foo, also nested in an umbrella framework) and the lib*.dylib
# files inside frameworks (vecLib's libBLAS.dylib, OpenGL's Libraries/libGL.dylib).
_FRAMEWORKS = r"/System/Library/(?:Private)?Frameworks/(?:[^/]+\.framework/(?:Versions/[^/]+/)?Frameworks/)*"
SHARED_CACHE_PATTERN = re.compile(
    r"(?:/System/iOSSupport)?(?:/usr/lib/system/[^/]+\.dylib|/usr/lib/swift/libswift[^/]+\.dylib"
    rf"|{_FRAMEWORKS}(?P<fw>[^/]+)\.framework/(?:Versions/[^/]+/)?(?P=fw)"
    rf"|{_FRAMEWORKS}[^/]+\.framework/(?:Versions/[^/]+/)?(?:Libraries/)?lib[^/]+\.dylib)")


def shared_cache_path(path: str) -> str | None:
    """The install name of the cached dylib `path` names (rule 41), or None when the shared
    cache does not hold it."""
    alias = SHARED_CACHE_ALIASES.get(path)
    if alias is not None:
        return alias
    if path in SHARED_CACHE_DYLIBS or SHARED_CACHE_PATTERN.fullmatch(path):
        return path
    return None

# Used when DYLD_FALLBACK_LIBRARY_PATH is unset (rule 29.4, d:dyld/DyldProcessConfig.cpp:2230-2285).
DEFAULT_FALLBACK_DIRS = ("/usr/local/lib", "/usr/lib")

NO_RPATH_ERROR = "no LC_RPATH's found"


class DyldOptions(NamedTuple):
    """The process the root is simulated in.

    arch: slice to simulate ("arm64", "x86_64"); default the root's first slice, "arm64"
    when the root has one. executable: the main executable (for @executable_path and the
    bottom of the rpath stack); None makes the root the main image. restricted: a SIP,
    setuid, entitled or hardened process (rule 34): DYLD_* variables ignored,
    @executable_path not expanded, @loader_path not expanded in the main executable's
    LC_RPATHs, relative LC_RPATHs ignored.
    """

    arch: str | None = None
    executable: str | None = None
    dyld_library_path: tuple[str, ...] = ()
    dyld_fallback_library_path: tuple[str, ...] | None = None  # None = unset
    cwd: str = "/"
    restricted: bool = False


DEFAULT_OPTIONS = DyldOptions()


class _Image:
    __slots__ = ("install_name", "loader", "name", "path", "rpath_parent", "slice")

    def __init__(self, path: str, name: str, loader: _Image | None, rpath_parent: _Image | None,
                 slice: MachoSlice | None, install_name: str | None) -> None:
        self.path = path  # physical path: what dyld records (rule 31)
        self.name = name  # the string it was first requested under
        self.loader = loader  # the first image that needed it; None for the main image and dlopen
        self.rpath_parent = rpath_parent  # next image down the rpath stack (rule 30)
        self.slice = slice  # None for a shared-cache image (no headers to read)
        self.install_name = install_name


class _Found(NamedTuple):
    """The outcome of validating one candidate."""

    result: str  # Attempt.result
    physical: str | None = None
    note: str | None = None
    image: _Image | None = None  # an already-loaded image the candidate names
    slice: MachoSlice | None = None


class _Simulation:
    def __init__(self, tree: FileTree, options: DyldOptions) -> None:
        self.tree = tree
        self.options = options
        self.cwd = options.cwd or "/"
        # Rule 34: a restricted process ignores every DYLD_* variable.
        self.library_path = () if options.restricted else options.dyld_library_path
        self.fallback_path = None if options.restricted else options.dyld_fallback_library_path
        self.arch = ""
        self.images: list[_Image] = []
        self.by_path: dict[str, _Image] = {}
        self.by_install: dict[str, _Image] = {}
        self.main: _Image | None = None
        self.resolutions: list[Resolution] = []
        self.attempts_left = MAX_ATTEMPTS_TOTAL
        self._resolved: dict[str, str | None] = {}
        self._headers: dict[str, MachoInfo | str] = {}
        self.queue: deque[_Image] = deque()  # images whose load commands are still to resolve

    # -- tree access, cached per physical path -------------------------------------------

    def physical(self, path: str) -> str | None:
        key = path if path.startswith("/") else posixpath.join(self.cwd, path)
        if key not in self._resolved:
            self._resolved[key] = resolve(self.tree, key, self.cwd)
        return self._resolved[key]

    def header(self, physical: str) -> MachoInfo | str:
        """The parsed file, or the reason it is not a Mach-O file."""
        cached = self._headers.get(physical)
        if cached is not None:
            return cached
        node = self.tree.lstat(physical)
        info: MachoInfo | str
        if node is None or node.kind != "file":
            info = "not a regular file"
        else:
            # Through the tree's header memo, as loader_glibc reads: the planner's reads are
            # reused, and the repair check sees a file as its planned edits will make it
            # (sniff.remember_binary) before anything is written.
            try:
                known = read_binary_in(self.tree, physical)
            except OSError as e:
                known = None
                info = e.strerror or str(e)
            else:
                info = known if isinstance(known, MachoInfo) else self._why_not_macho(physical)
        self._headers[physical] = info
        return info

    def _why_not_macho(self, physical: str) -> str:
        """Why a file is not a loadable Mach-O file, in read_macho's words (read again: only
        a file that fails gets here)."""
        try:
            src = self.tree.open(physical)
            try:
                read_macho(src)
            finally:
                src.close()
        except FormatError as e:
            return e.reason
        except OSError as e:
            return e.strerror or str(e)
        return "not a Mach-O file"

    def pick_slice(self, info: MachoInfo) -> MachoSlice | None:
        return next((s for s in info.slices if s.arch == self.arch), None)

    # -- images ----------------------------------------------------------------------------

    def add(self, image: _Image) -> _Image:
        self.images.append(image)
        self.by_path.setdefault(image.path, image)
        if image.install_name:
            self.by_install.setdefault(image.install_name, image)
        return image

    def load_top(self, path: str, *, main: bool) -> tuple[_Image, bool]:
        """Load the main executable or the root by path: (image, newly loaded); FormatError
        when it cannot be loaded."""
        physical = self.physical(path)
        if physical is None:
            raise FormatError(path, "no such file")
        existing = self.by_path.get(physical)
        if existing is not None:
            return existing, False
        info = self.header(physical)
        if isinstance(info, str):
            raise FormatError(path, info)
        sl = self.pick_slice(info)
        if sl is None:
            have = ", ".join(s.arch for s in info.slices)
            raise FormatError(path, f"no {self.arch} slice (has {have})")
        # Rule 30: a dlopen()ed image's dependents search [itself, ..., main executable].
        parent = None if main else self.main
        image = self.add(_Image(physical, path, None, parent, sl, sl.install_name))
        if main:
            self.main = image
        return image, True

    # -- one load command --------------------------------------------------------------------

    def check(self, candidate: str) -> _Found:
        """Validate one candidate path: loaded already, in the shared cache, or on disk with our
        arch. The cache is asked first, as on a customer cache (rule 41)."""
        loaded = self.by_path.get(candidate) or self.by_install.get(candidate)
        if loaded is not None:
            return _Found("found", loaded.path, "already loaded", image=loaded)
        cached = shared_cache_path(candidate)
        if cached is not None:
            loaded = self.by_path.get(cached)
            if loaded is not None:
                return _Found("found", loaded.path, "already loaded", image=loaded)
            return _Found("found", cached, "in the dyld shared cache (rules 35, 41)")
        physical = self.physical(candidate)
        if physical is None:
            note = "no such file, not in the dyld shared cache" if candidate.startswith(SHARED_CACHE_PREFIXES) else None
            return _Found("missing", note=note)
        loaded = self.by_path.get(physical)
        if loaded is not None:
            return _Found("found", physical, "already loaded", image=loaded)
        info = self.header(physical)
        if isinstance(info, str):
            return _Found("bad-file", physical, info)
        sl = self.pick_slice(info)
        if sl is None:
            have = ", ".join(s.arch for s in info.slices)
            return _Found("wrong-arch", physical, f"no {self.arch} slice (has {have})")
        note = None if physical == candidate else f"real path {physical}"
        return _Found("found", physical, note, slice=sl)

    def rpath_stack(self, image: _Image) -> list[_Image]:
        stack: list[_Image] = []
        seen: set[int] = set()
        cur: _Image | None = image
        while cur is not None and id(cur) not in seen and len(stack) < MAX_IMAGES:
            seen.add(id(cur))
            stack.append(cur)
            cur = cur.rpath_parent
        return stack

    def expand_token(self, value: str, owner: _Image) -> tuple[str | None, str | None]:
        """Expand a leading @loader_path/@executable_path in `value` (owner: the image holding
        the string); (expanded, None) or (None, why it is not expanded). Rules 31 and 34."""
        for token in ("@loader_path", "@executable_path"):
            if value == token or value.startswith(token + "/"):
                rest = value[len(token):].lstrip("/")
                if token == "@loader_path":
                    # d:dyld/Loader.cpp:1284-1290: not in the main executable's LC_RPATH when restricted.
                    if self.options.restricted and owner is self.main:
                        return None, "@loader_path is not expanded in the main executable when restricted"
                    base = posixpath.dirname(owner.path)
                else:
                    # d:dyld/Loader.cpp:1350-1356.
                    if self.options.restricted:
                        return None, "@executable_path is not expanded in a restricted process"
                    assert self.main is not None
                    base = posixpath.dirname(self.main.path)
                return (posixpath.join(base, rest) if rest else base), None
        return value, None

    def search(self, image: _Image, name: str, weak: bool) -> Resolution:
        """Rule 29: every candidate for load path `name` requested by `image`, in dyld's order."""
        # Rule 33: the raw string against recorded paths and install names, before expanding.
        hit = self.by_path.get(name) or self.by_install.get(name)
        if hit is not None:
            how = "recorded path" if self.by_path.get(name) is hit else "install name"
            seen = Attempt(hit.path, "loaded", "found", note=f"matches the {how} of a loaded image (rule 33)")
            return Resolution(name, image.path, hit.path, "loaded", (seen,), weak)

        attempts: list[Attempt] = []
        leaf = posixpath.basename(name)
        no_rpath = False

        def plan() -> list[tuple[str, str, str | None, str | None, str | None]]:
            # (candidate, rule, entry, contributor, skip_note)
            out: list[tuple[str, str, str | None, str | None, str | None]] = []
            nonlocal no_rpath
            # 29.1: DYLD_LIBRARY_PATH + leaf name, even for @rpath/ and absolute paths.
            for d in self.library_path:
                out.append((posixpath.join(d, leaf), "dyld_library_path", d, None, None))
            # 29.3: P expanded.
            if name.startswith("@rpath/"):
                rest = name[len("@rpath/"):]
                usable = 0
                for holder in self.rpath_stack(image):
                    assert holder.slice is not None
                    for raw in holder.slice.rpaths:
                        if len(out) >= MAX_ATTEMPTS_PER_NAME:
                            break
                        if raw.startswith("@") and not raw.startswith(("@loader_path", "@executable_path")):
                            out.append((raw, "rpath", raw, holder.path, "unknown @ token in LC_RPATH"))
                            continue
                        expanded, why = self.expand_token(raw, holder)
                        if expanded is None:
                            out.append((raw, "rpath", raw, holder.path, why))
                            continue
                        if not expanded.startswith("/"):
                            # Rule 30: relative LC_RPATHs only in unrestricted processes, against the cwd.
                            if self.options.restricted:
                                out.append((raw, "rpath", raw, holder.path,
                                            "relative LC_RPATH ignored in a restricted process"))
                                continue
                            expanded = posixpath.join(self.cwd, expanded)
                        usable += 1
                        out.append((posixpath.join(expanded, rest), "rpath", raw, holder.path, None))
                no_rpath = usable == 0
            elif name.startswith("@loader_path/") or name.startswith("@executable_path/"):
                rule = "loader_path" if name.startswith("@loader_path/") else "executable_path"
                expanded, why = self.expand_token(name, image)
                out.append((expanded or name, rule, None, None, why))
            elif name.startswith("@"):
                out.append((name, "absolute", None, None, "unknown @ token"))
            else:
                # A relative path is tried from the cwd, except in a hardened (restricted)
                # process (d:dyld/Loader.cpp:885-893).
                skip = "relative path not allowed in a restricted process" \
                    if self.options.restricted and not name.startswith("/") else None
                path = name if name.startswith("/") else posixpath.join(self.cwd, name)
                out.append((path, "absolute", None, None, skip))
            # 29.4: fallbacks.
            fallback = DEFAULT_FALLBACK_DIRS if self.fallback_path is None else self.fallback_path
            for d in fallback:
                out.append((posixpath.join(d, leaf), "fallback", d, None, None))
            return out

        for path, rule, entry, contributor, skip in plan():
            if self.attempts_left <= 0 or len(attempts) >= MAX_ATTEMPTS_PER_NAME:
                return Resolution(name, image.path, None, None, tuple(attempts), weak,
                                  error="attempt limit reached")
            self.attempts_left -= 1
            if skip is not None:
                attempts.append(Attempt(path, rule, "skipped", entry, contributor, skip))
                continue
            found = self.check(path)
            attempts.append(Attempt(path, rule, found.result, entry, contributor, found.note))
            if found.result != "found":
                continue
            assert found.physical is not None
            via = rule
            if found.image is None:
                if len(self.images) >= MAX_IMAGES:
                    return Resolution(name, image.path, None, None, tuple(attempts), weak,
                                      error=f"more than {MAX_IMAGES} images")
                if found.slice is None:  # shared cache: no headers, no dependents
                    via = "shared_cache"
                    self.add(_Image(found.physical, name, image, image, None, found.physical))
                else:
                    new = self.add(_Image(found.physical, name, image, image, found.slice,
                                          found.slice.install_name))
                    self.queue.append(new)
            return Resolution(name, image.path, found.physical, via, tuple(attempts), weak)
        error = NO_RPATH_ERROR if no_rpath else None
        return Resolution(name, image.path, None, None, tuple(attempts), weak, error=error)

    def run(self) -> None:
        while self.queue:
            image = self.queue.popleft()
            assert image.slice is not None
            for ref in image.slice.dylibs:
                self.resolutions.append(self.search(image, ref.name, ref.kind == "weak"))

    def start(self, root: str, *, with_root_closure: bool) -> _Image:
        """Load the main executable with its dependents, then the root (with its own when asked)."""
        self.queue = deque()
        self.arch = self.options.arch or self._default_arch(root)
        if self.options.executable is not None:
            exe, _ = self.load_top(self.options.executable, main=True)
            self.queue.append(exe)
            self.run()
            top, new = self.load_top(root, main=False)
        else:
            top, new = self.load_top(root, main=True)
        if new and with_root_closure:
            self.queue.append(top)
            self.run()
        return top

    def _default_arch(self, root: str) -> str:
        """The root's first slice, or arm64 when it has one."""
        physical = self.physical(root)
        if physical is None:
            raise FormatError(root, "no such file")
        info = self.header(physical)
        if isinstance(info, str):
            raise FormatError(root, info)
        arches = [s.arch for s in info.slices]
        return "arm64" if "arm64" in arches else arches[0]

    def objects(self) -> list[LoadedObject]:
        return [LoadedObject(i.path, i.path, i.name, i.loader.path if i.loader else None,
                             install_name=i.install_name) for i in self.images]


def load_macho(tree: FileTree, root: str, options: DyldOptions = DEFAULT_OPTIONS, *,
               dlopen: bool = False) -> LoadResult:
    """Every image dyld would load for `root`, and how each load command was resolved.

    With `options.executable`, that executable is the main image and is loaded first
    (with its dependents); the root is then loaded by path: dlopen()ed when `dlopen`
    (an extension module imported by the interpreter), and its rpath stack is
    [root, ..., main executable] either way (rule 30, d:dyld/DyldAPIs.cpp:1401-1422).
    Without it the root is the main image. A root or executable that is missing, not
    Mach-O or lacks the simulated arch raises FormatError.
    """
    # With or without dlopen the root is opened at its own path and its dependents search
    # [root, ..., main executable]. Not modelled: dlopen()'s DYLD_LIBRARY_PATH + leaf lookup
    # of the root itself (rule 32) and its lack of fallbacks (rule 29.4, d:dyld/Loader.cpp:719).
    del dlopen
    sim = _Simulation(tree, options)
    sim.start(root, with_root_closure=True)
    return LoadResult(root, sim.objects(), sim.resolutions)


def simulate(tree: FileTree, root: str, options: DyldOptions = DEFAULT_OPTIONS) -> tuple[_Simulation, _Image]:
    """load_macho's whole simulation (images in load order, with their slices) and the
    root's image, for the binding model (bind_dyld)."""
    sim = _Simulation(tree, options)
    top = sim.start(root, with_root_closure=True)
    return sim, top


def explain(tree: FileTree, requester: str, name: str, options: DyldOptions = DEFAULT_OPTIONS) -> Resolution:
    """How load path `name` is resolved when `requester` asks for it (used by `rpathfix why`).

    A fresh simulation: the main executable (when given) and its dependents are loaded,
    then `requester` as the root, but none of the requester's own dependents, so the
    trace shows the full search rather than an "already loaded" shortcut.
    """
    sim = _Simulation(tree, options)
    top = sim.start(requester, with_root_closure=False)
    weak = False
    if top.slice is not None:
        weak = any(ref.name == name and ref.kind == "weak" for ref in top.slice.dylibs)
    sim.queue = deque()
    return sim.search(top, name, weak)
