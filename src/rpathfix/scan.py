"""Inventory every native library in wheels, directories and files (`rpathfix scan`).

A file is a candidate when it is named like a library or has an exec bit, and it is
confirmed by its magic bytes, never by name alone. Wheel members are read straight
from the zip. Symlinked files are reported as links and not scanned twice. A corrupt
file inside a tree becomes a record with "error", never a crash.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterator
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


def _walk(top: str) -> Iterator[tuple[str, str, list[os.DirEntry[str]]]]:
    """Directories in sorted order with their entries; symlinked directories are not entered.

    Yields (directory, prefix, entries): an entry's path is prefix + entry.name (what
    os.scandir(directory) gives as entry.path). Where the platform allows, a directory is
    listed through an fd, so that each entry's stat() is relative to it; the entries' stat()
    is then valid only until the next directory is requested.
    """
    stack = [top]
    while stack:
        d = stack.pop()
        prefix = d if d.endswith("/") else d + "/"
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
            yield d, prefix, entries
            stack.extend(prefix + e.name for e in reversed(entries) if e.is_dir(follow_symlinks=False))
        finally:
            if fd >= 0:
                os.close(fd)


def scan_dir(top: str, all_files: bool = False, progress: Progress | None = None) -> ScanResult:
    index = DistIndex(top)
    candidates: list[tuple[str, bool]] = []  # (path, is_link)
    S_ISLNK, S_ISREG = stat.S_ISLNK, stat.S_ISREG
    for d, prefix, entries in _walk(top):
        dist_infos = [e.name for e in entries if e.name.endswith(".dist-info") and e.is_dir(follow_symlinks=False)]
        if dist_infos:
            index.add_site_dir(os.path.abspath(d), dist_infos)
        for e in entries:
            name = e.name
            try:
                # The directory listing's file type spares the lstat of entries that can
                # never be candidates: directories, devices, fifos, sockets, and symlinks
                # without a library name. Every other entry is decided by lstat, as before.
                if not e.is_file(follow_symlinks=False) and (
                        not e.is_symlink() or not (all_files or looks_like_library(name))):
                    continue
                mode = e.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if S_ISLNK(mode):
                if all_files or looks_like_library(name):
                    candidates.append((prefix + name, True))
            elif S_ISREG(mode) and (all_files or mode & 0o111 or (
                    # most names hold none of these, which every library name needs
                    (".so" in name or ".dylib" in name or ".bundle" in name) and looks_like_library(name))):
                candidates.append((prefix + name, False))
    files: list[ScanRecord] = []
    links: list[LinkRecord] = []
    for n, (path, is_link) in enumerate(candidates):
        if progress:
            progress(n, len(candidates))
        if is_link:
            target = os.readlink(path)
            links.append(LinkRecord(path, target, dangling=not os.path.exists(path)))
            continue
        files.extend(scan_file(path, index.lookup(path)))
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
