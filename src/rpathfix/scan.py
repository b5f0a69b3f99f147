"""Inventory every native library in wheels, directories and files (`rpathfix scan`).

A file is a candidate when it is named like a library or has an exec bit, and it is
confirmed by its magic bytes, never by name alone. Wheel members are read straight
from the zip. In a directory, links within it are reported as links and not scanned
twice, and links out of it are followed (_TreeWalk). A corrupt file inside a tree
becomes a record with "error", never a crash.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from operator import attrgetter

from rpathfix.errors import FormatError, UsageError
from rpathfix.model import ElfInfo, MachoInfo, ScanRecord, split_path_list
from rpathfix.names import parse_dist_info_dirname, parse_wheel_filename
from rpathfix.record import all_plain, read_record_text, record_paths
from rpathfix.sniff import HEAD_SIZE, binary_format, looks_like_library, read_binary
from rpathfix.source import FileSource
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.model import BinaryInfo
    from rpathfix.source import ByteSource

# zipfile, csv and io are imported only where a wheel or a quoted RECORD needs them:
# scanning a directory (the common case, and the benchmark) starts without them.


class LinkRecord(NamedTuple):
    """A symlinked candidate: reported, not scanned again."""

    path: str
    target: str
    dangling: bool


class ScanResult(NamedTuple):
    files: list[ScanRecord]
    links: list[LinkRecord]


Progress = Callable[[int, int], None]


def records_for(info: BinaryInfo, path: str, wheel: str | None, dist: tuple[str, str] | None) -> list[ScanRecord]:
    """One record per ELF file, one per slice of a Mach-O file."""
    name, version = dist if dist else (None, None)
    if isinstance(info, ElfInfo):
        return [
            ScanRecord(
                path=path, wheel=wheel, format="elf", arch=info.arch, soname=info.soname,
                install_name=None, needed=info.needed, rpath=split_path_list(info.rpath),
                runpath=split_path_list(info.runpath), is_extension=info.is_extension,
                dist=name, version=version,
            )
        ]
    assert isinstance(info, MachoInfo)
    return [
        ScanRecord(
            path=path, wheel=wheel, format="macho", arch=s.arch, soname=None,
            install_name=s.install_name, needed=tuple(d.name for d in s.dylibs), rpath=s.rpaths,
            runpath=(), is_extension=s.is_extension, dist=name, version=version,
        )
        for s in info.slices
    ]


def _scan_source(src: ByteSource, path: str, wheel: str | None, dist: tuple[str, str] | None,
                 fmt_hint: str | None = None) -> list[ScanRecord]:
    name, version = dist if dist else (None, None)
    try:
        info = read_binary(src)
    except FormatError as e:
        if fmt_hint is None:
            try:  # noqa: SIM105 - contextlib is not otherwise imported on scan's start-up path
                fmt_hint = binary_format(src.read_at(0, min(HEAD_SIZE, src.size)))
            except FormatError:
                pass
        return [ScanRecord(path=path, wheel=wheel, format=fmt_hint, arch=None, soname=None, install_name=None,
                           dist=name, version=version, error=e.reason)]
    if info is None:
        return []
    return records_for(info, path, wheel, dist)


# ---------------------------------------------------------------- wheels


def scan_wheel(wheel: str, all_files: bool = False, progress: Progress | None = None) -> ScanResult:
    """Scan the members of a wheel in place (nothing is extracted to disk)."""
    import zipfile

    from rpathfix.source import ZipMemberSource

    try:
        dist = parse_wheel_filename(wheel)
    except FormatError:
        dist = None
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise UsageError(f"{wheel}: not a readable wheel ({e}); pass a .whl file, a directory or a binary") from None
    files: list[ScanRecord] = []
    links: list[LinkRecord] = []
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        members.sort(key=lambda i: i.filename)
        candidates = []
        for info in members:
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                links.append(LinkRecord(info.filename, "", dangling=True))
                continue
            if all_files or looks_like_library(info.filename) or mode & 0o111:
                candidates.append(info)
        for n, info in enumerate(candidates):
            if progress:
                progress(n, len(candidates))
            try:
                with ZipMemberSource(zf, info, f"{wheel}!{info.filename}") as src:
                    recs = _scan_source(src, info.filename, wheel, dist)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as e:
                recs = [ScanRecord(path=info.filename, wheel=wheel, format=None, arch=None, soname=None,
                                   install_name=None, error=f"cannot read zip member: {e}")]
            files.extend(recs)
    return ScanResult(files, links)


# ---------------------------------------------------------------- directories


class DistIndex:
    """Which distribution a file in a tree belongs to, from the .dist-info directories.

    A file listed in a RECORD belongs to that distribution; otherwise a file under a
    directory holding exactly one .dist-info (rules_python's one-wheel-per-directory
    layout) belongs to that one.
    """

    def __init__(self, top: str) -> None:
        self.top = os.path.abspath(top)
        self._single: dict[str, tuple[str, str] | None] = {}
        # RECORD files still to read, in the order they were added: read at the first
        # lookup, so a tree with no native library never parses torch's 12,000-line RECORD.
        self._pending: list[tuple[str, str, tuple[str, str]]] = []
        # Per RECORD, in order: (site_dir + "/", plain relative paths, other paths
        # normalized, distribution). The first RECORD listing a file claims it.
        self._records: list[tuple[str, set[str], set[str], tuple[str, str]]] = []

    def add_site_dir(self, site_dir: str, dist_infos: list[str]) -> None:
        found: list[tuple[str, str]] = []
        for d in sorted(dist_infos):
            parsed = parse_dist_info_dirname(d)
            if parsed is None:
                continue
            found.append(parsed)
            self._pending.append((site_dir, os.path.join(site_dir, d, "RECORD"), parsed))
        self._single[site_dir] = found[0] if len(found) == 1 else None

    def _read_records(self) -> None:
        pending, self._pending = self._pending, []
        for site_dir, record, parsed in pending:
            rels = record_paths(read_record_text(record))
            # A RECORD path names normpath(join(site_dir, rel)). For a plain relative path
            # (no empty, "." or ".." part, none starting with ".") under the normalized
            # site_dir that is site_dir + "/" + rel, so plain paths are kept as they are and
            # matched by prefix: no join or normpath for each of torch's 12,000 lines.
            if all_plain(rels):
                plain, odd = set(rels), set()
            else:
                plain = {rel for rel in rels if all_plain([rel])}
                odd = {os.path.normpath(os.path.join(site_dir, rel)) for rel in rels if rel not in plain}
            prefix = site_dir if site_dir.endswith("/") else site_dir + "/"
            self._records.append((prefix, plain, odd, parsed))

    def lookup(self, path: str) -> tuple[str, str] | None:
        if self._pending:
            self._read_records()
        path = os.path.abspath(path)
        for prefix, plain, odd, parsed in self._records:
            if path in odd or (path.startswith(prefix) and path[len(prefix) :] in plain):
                return parsed
        d = os.path.dirname(path)
        while len(d) >= len(self.top):
            single = self._single.get(d)
            if single:
                return single
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        return None


# Entries are opened relative to their directory's descriptor where the platform allows
# (fstatat instead of resolving the whole path again for every file of a deep tree).
_SCANDIR_FD = os.scandir in os.supports_fd and hasattr(os, "O_DIRECTORY")
_BY_NAME = attrgetter("name")


def _is_dir(e: os.DirEntry[str]) -> bool:
    """A directory, or a link to one (a venv links each .dist-info into its root)."""
    try:
        return e.is_dir()
    except OSError:
        return False


def _inside(real: str, top: str) -> bool:
    """Whether the physical path `real` is `top` or lies under it (both resolved)."""
    return real == top or real.startswith(top if top.endswith("/") else top + "/")


class _TreeWalk:
    """The walk behind scan_dir, and what it finds.

    The tree's own directories come first. A symlink is judged by where it leads:
    - a file link into the tree is listed as a link: its target is scanned where it is;
    - a file link out of the tree (a venv's per-file links into the distribution roots,
      Bazel's runfiles) is what the tree holds there: its file is scanned under the link's
      path, once per physical file;
    - a directory link out of the tree (a venv's `site-packages/torch`) is entered, and its
      files are reported under the link's path, unless other links of the tree lead
      through it (a hub such as a venv's `.r/<n>`, an alias: the files are reported where
      those links are) or its target was walked already (no loops, nothing twice);
    - a directory link into the tree is not entered: that directory is walked in place.
    Plain trees without links are walked as before, in the same order.
    """

    def __init__(self, top: str, all_files: bool, index: DistIndex) -> None:
        self.top = top
        self.real_top = os.path.realpath(top)
        self.all_files = all_files
        self.index = index
        # (path, physical path or None when dangling, is a link), in walk order
        self.candidates: list[tuple[str, str | None, bool]] = []
        self.dir_links: list[tuple[str, str]] = []  # (path, physical path) leading out of the tree
        self.own_links: list[str] = []  # the links in the tree's own directories
        self.walked: list[str] = []  # physical targets of the entered directory links
        self.entered: set[str] = set()  # the same, for exact lookups

    def run(self, start: str, real_start: str, *, own: bool) -> None:
        """Walk one directory (the tree itself: own=True, or an entered link) depth first, each
        directory's entries in name order. A directory is listed through an fd where the
        platform allows, so that each entry's stat() is relative to it."""
        S_ISREG = stat.S_ISREG
        all_files = self.all_files
        stack = [(start, real_start)]
        while stack:
            d, real_d = stack.pop()
            prefix = d if d.endswith("/") else d + "/"
            real_prefix = real_d if real_d.endswith("/") else real_d + "/"
            try:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY) if _SCANDIR_FD else -1
            except OSError:
                continue
            try:
                try:
                    with os.scandir(d if fd < 0 else fd) as it:
                        entries = sorted(it, key=_BY_NAME)
                except OSError:
                    continue
                dist_infos = [e.name for e in entries if e.name.endswith(".dist-info") and _is_dir(e)]
                if dist_infos:
                    self.index.add_site_dir(os.path.abspath(d), dist_infos)
                subdirs: list[tuple[str, str]] = []
                for e in entries:
                    name = e.name
                    try:
                        if e.is_dir(follow_symlinks=False):
                            real = real_prefix + name
                            if own or real not in self.entered:  # an entered link's target: walked once
                                subdirs.append((prefix + name, real))
                            continue
                        if e.is_symlink():
                            self._link(prefix + name, name, own, stack)
                            continue
                        if not e.is_file(follow_symlinks=False):
                            continue  # devices, fifos, sockets
                        # The listing's file type spares the lstat of what can never be a
                        # candidate; a regular file is decided by its mode.
                        mode = e.stat(follow_symlinks=False).st_mode
                    except OSError:
                        continue
                    if S_ISREG(mode) and (all_files or mode & 0o111 or (
                            # most names hold none of these, which every library name needs
                            (".so" in name or ".dylib" in name or ".bundle" in name) and looks_like_library(name))):
                        self.candidates.append((prefix + name, real_prefix + name, False))
                stack.extend(reversed(subdirs))
            finally:
                if fd >= 0:
                    os.close(fd)

    def _link(self, path: str, name: str, own: bool, stack: list[tuple[str, str]]) -> None:
        """One symlink found by the walk (see the class docstring)."""
        if own:
            self.own_links.append(path)
        wanted = self.all_files or looks_like_library(name)
        try:
            st = os.stat(path)
        except OSError:
            if wanted:
                self.candidates.append((path, None, True))  # dangling (or a loop): listed as such
            return
        if stat.S_ISDIR(st.st_mode):
            real = os.path.realpath(path)
            if _inside(real, self.real_top):
                return  # walked where it is
            if own:
                self.dir_links.append((path, real))  # entered after the tree, unless it is a hub
            elif self.enter(real):
                stack.append((path, real))
            return
        if stat.S_ISREG(st.st_mode) and (wanted or st.st_mode & 0o111):
            real = os.path.realpath(path)
            if wanted or not _inside(real, self.real_top):  # (links into the tree are listed by name)
                self.candidates.append((path, real, True))

    def enter(self, real: str) -> bool:
        """Whether a directory link leading to `real` (outside the tree) is entered: once per
        physical directory, and not inside one that is entered already."""
        if any(_inside(real, w) for w in self.walked):
            return False
        self.walked.append(real)
        self.entered.add(real)
        return True

    def hubs(self) -> set[str]:
        """The directory links that other links of the tree lead through (their texts read
        as paths in the tree, relative to top)."""
        cut = len(self.top) if self.top.endswith("/") else len(self.top) + 1
        links = {p[cut:]: p for p, _ in self.dir_links}
        out: set[str] = set()
        for path in self.own_links:
            try:
                text = os.readlink(path)
            except OSError:
                continue
            if text.startswith("/"):
                if not _inside(text, self.real_top):
                    continue
                rel = posixpath.relpath(text, self.real_top)
            else:
                rel = posixpath.normpath(posixpath.join(posixpath.dirname(path[cut:]), text))
            while rel and rel != "." and not rel.startswith("../") and rel != "..":
                if rel in links:
                    out.add(links[rel])
                rel = posixpath.dirname(rel)
        return out


def _walk_order(top: str) -> Callable[[tuple[str, str | None, bool]], tuple[tuple[int, str], ...]]:
    """The order of the walk, for paths under `top`: a directory's files by name, then its
    subdirectories (directory links among them) by name, each with all it holds."""
    cut = len(top) if top.endswith("/") else len(top) + 1

    def key(c: tuple[str, str | None, bool]) -> tuple[tuple[int, str], ...]:
        parts = c[0][cut:].split("/")
        return (*((1, p) for p in parts[:-1]), (0, parts[-1]))

    return key


def scan_dir(top: str, all_files: bool = False, progress: Progress | None = None) -> ScanResult:
    """Every native file under `top`, with links followed as _TreeWalk says: a venv that
    rpathfix wrote (directory and file links into the roots) reports what it holds, under
    its own paths."""
    index = DistIndex(top)
    walk = _TreeWalk(top, all_files, index)
    walk.run(top, walk.real_top, own=True)
    if walk.dir_links:
        hubs = walk.hubs()
        for link, target in walk.dir_links:
            if link not in hubs and walk.enter(target):
                walk.run(link, target, own=False)
        walk.candidates.sort(key=_walk_order(top))
    # Each physical file is scanned once: where the walk found it as a file, else at the
    # first link leading to it; every other path to it is listed as a link.
    chosen: dict[str, tuple[bool, str]] = {}  # physical path -> (reached by a link, path)
    for path, real, is_link in walk.candidates:
        if real is None or (is_link and _inside(real, walk.real_top)):
            continue  # dangling, or a link into the tree: listed as a link
        prev = chosen.get(real)
        if prev is None or (prev[0] and not is_link):
            chosen[real] = (is_link, path)
    files: list[ScanRecord] = []
    links: list[LinkRecord] = []
    for n, (path, real, is_link) in enumerate(walk.candidates):
        if progress:
            progress(n, len(walk.candidates))
        if real is not None and chosen.get(real, (False, None))[1] == path:
            files.extend(scan_file(path, index.lookup(path)))
        elif is_link:
            links.append(LinkRecord(path, os.readlink(path), dangling=real is None))
    return ScanResult(files, links)


def scan_file(path: str, dist: tuple[str, str] | None = None) -> list[ScanRecord]:
    try:
        src = FileSource(path)
    except FormatError as e:
        return [ScanRecord(path=path, wheel=None, format=None, arch=None, soname=None, install_name=None,
                           error=e.reason)]
    with src:
        return _scan_source(src, path, None, dist)


def scan_paths(paths: list[str], all_files: bool = False, progress: Progress | None = None) -> ScanResult:
    """Scan each PATH (wheel, directory or file); unreadable top-level inputs are UsageErrors."""
    files: list[ScanRecord] = []
    links: list[LinkRecord] = []
    for p in paths:
        if os.path.isdir(p):
            r = scan_dir(p, all_files, progress)
        elif os.path.isfile(p) and p.endswith(".whl"):
            r = scan_wheel(p, all_files, progress)
        elif os.path.isfile(p):
            try:
                with FileSource(p) as src:
                    info = read_binary(src)
            except FormatError as e:
                raise UsageError(f"{p}: {e.reason}") from None
            if info is None:
                raise UsageError(f"{p}: not an ELF or Mach-O file, a wheel or a directory")
            r = ScanResult(records_for(info, p, None, None), [])
        elif os.path.lexists(p):
            raise UsageError(f"{p}: not a regular file or directory")
        else:
            raise UsageError(f"{p}: no such file or directory")
        files.extend(r.files)
        links.extend(r.links)
    return ScanResult(files, links)


def record_to_json(r: ScanRecord) -> dict[str, object]:
    """The rpathfix.scan/1 file object: exactly the documented keys."""
    return {
        "path": r.path,
        "wheel": r.wheel,
        "format": r.format,
        "arch": r.arch,
        "soname": r.soname,
        "install_name": r.install_name,
        "needed": list(r.needed),
        "rpath": list(r.rpath),
        "runpath": list(r.runpath),
        "is_extension": r.is_extension,
        "dist": r.dist,
        "version": r.version,
        "error": r.error,
    }


def display_path(path: str) -> str:
    return posixpath.normpath(path) if path else path
