"""Read a wheel (a zip) safely, and write a repaired copy of it.

Reading: the central directory is parsed here, not by `zipfile`, because the writer needs the
raw records (to copy a member's local record byte for byte) and because a wheel from an index
is untrusted input: every offset and size is checked against the file, each local header must
name the same member as the central directory, local records may not overlap (the trick behind
zip bombs and zip-parser confusion), names may not escape the install root, a name appears
once, and nothing is encrypted or spread over several disks. Any of these is a FormatError.

Writing (`rewrite_wheel`): members are written in the input's order, RECORD last (the wheel
spec puts it last; signatures of the old RECORD are dropped, they no longer match).
- An unchanged member is copied as its whole local record (header, compressed bytes, data
  descriptor) without decompressing: the kernel copies the bytes (copy_file_range), so a
  2 GB wheel with one patched library costs one pass over the patched member, not the wheel.
- A changed member (a patched library, METADATA, WHEEL, RECORD) is streamed through its edit:
  the edit reads the old content from a ByteSource (random access, bounded reads) and writes
  the new content to a sink that hashes, checksums and deflates it chunk by chunk, straight
  into the output. Memory stays bounded whatever the member's size. It keeps the old member's
  date, time, attributes and mode; only its content changes.
- The output depends only on the input and the edits: no clock, umask, TZ or locale is read,
  so two runs give identical bytes. It is written beside its destination and renamed into
  place (fileio), so nothing half-written is ever visible.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence

from rpathfix.errors import FormatError, UsageError
from rpathfix.source import MAX_READ
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Union

    from rpathfix.deflate import Spool
    from rpathfix.model import BytePatch
    from rpathfix.source import ByteSource, SupportsWrite

    # A member's new content: the whole bytes, a function streaming it from the old content,
    # or a patch of the old content (a binary edit: spliced into the old deflate stream).
    MemberEdit = Union[bytes, Callable[[ByteSource, SupportsWrite], None], BytePatch]

# ---------------------------------------------------------------- zip records

_LOCAL = struct.Struct("<4s5H3L2H")  # 30 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # 46 bytes
_EOCD = struct.Struct("<4s4H2LH")  # 22 bytes
_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_LOCAL_SIG = b"PK\x03\x04"
_CENTRAL_SIG = b"PK\x01\x02"
_EOCD_SIG = b"PK\x05\x06"
_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64_SIG = b"PK\x06\x06"
_DESCRIPTOR_SIG = b"PK\x07\x08"
_ZIP64_ID = 0x0001
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
FLAG_ENCRYPTED = 0x1
FLAG_DESCRIPTOR = 0x8
FLAG_UTF8 = 0x800
STORED = 0
DEFLATED = 8

# Bounds that no real wheel comes near (torch: 16,000 members, a 2 MB central directory).
MAX_ENTRIES = 1_000_000
MAX_CENTRAL_DIRECTORY = 256 * 1024 * 1024
MAX_METADATA = 16 * 1024 * 1024  # METADATA, WHEEL, RECORD are read whole
_COPY_CHUNK = 1 << 20
_INFLATE_IN = 1 << 18
_INFLATE_OUT = 1 << 20
_KEEP_BEHIND = 1 << 16  # decompressed bytes kept before the last read, for readers that step back a little
# Inflater checkpoints of a deflated member (a copy of the inflater's state, 32 KiB window
# included: about 45 KB each), one every so many bytes of content, at most _MAX_POINTS per
# member: a read before the current position restarts from the nearest one, not from the
# start (the ELF planner reads the end of a file, then its start, then its end again).
_POINT_EVERY = 8 << 20
_MAX_POINTS = 64
# Spooling (WheelArchive's spool_dir): members smaller than SPOOL_MIN are cheap to inflate
# again; at most SPOOL_LIMIT bytes of content are spooled per archive (a torch-sized wheel's
# libraries hold 5 GB; past the limit a patched member is spooled when it is written).
SPOOL_MIN = 256 << 10
SPOOL_LIMIT = 4 << 30
# A spool is made only when its file system keeps this much free beside it (the output wheel
# goes there too); else the member is read in place, and a patch of it is deflated whole
# instead of spliced: slower, but a repair that fitted on the disk before spooling still fits.
SPOOL_RESERVE = 1 << 30
# 1980-01-01 00:00, the earliest a zip entry can carry: the date of a member that has no
# original to take its date from.
ZIP_EPOCH_DOS = (0, (0 << 9) | (1 << 5) | 1)


class ZipEntry(NamedTuple):
    """One member as the central directory and its local header describe it."""

    name: str
    raw_name: bytes
    version_made: int
    version_needed: int
    flags: int
    method: int
    dos_time: int
    dos_date: int
    crc: int
    compress_size: int
    file_size: int
    internal_attr: int
    external_attr: int
    central_extra: bytes  # without its zip64 field: the writer adds one where sizes need it
    comment: bytes
    header_offset: int
    data_offset: int  # first byte of the compressed data
    record_end: int  # end of the local record (data and any data descriptor)
    local_extra: bytes

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    @property
    def mode(self) -> int:
        """The Unix mode bits the zip records (0 when the archive was not made on Unix)."""
        return (self.external_attr >> 16) & 0xFFFF if self.version_made >> 8 == 3 else 0


def _extra_fields(extra: bytes) -> list[tuple[int, bytes]]:
    """(id, data) of each extra field; a truncated trailing field is kept as raw bytes (id -1)."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i + 4 <= len(extra):
        fid, flen = struct.unpack_from("<2H", extra, i)
        if i + 4 + flen > len(extra):
            break
        out.append((fid, extra[i + 4:i + 4 + flen]))
        i += 4 + flen
    if i < len(extra):
        out.append((-1, extra[i:]))
    return out


def _join_extra(fields: list[tuple[int, bytes]]) -> bytes:
    return b"".join(data if fid < 0 else struct.pack("<2H", fid, len(data)) + data for fid, data in fields)


def _without_zip64(extra: bytes) -> bytes:
    fields = _extra_fields(extra)
    if not any(fid == _ZIP64_ID for fid, _ in fields):
        return extra
    return _join_extra([(fid, data) for fid, data in fields if fid != _ZIP64_ID])


def _unsafe_name(name: str) -> str | None:
    """Why a member name could escape the install root (None when it is safe)."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        return "an absolute, empty or backslashed path"
    if len(name) > 1 and name[1] == ":":
        return "a drive letter"
    if ".." in name.rstrip("/").split("/"):
        return "a '..' component"
    return None


class WheelArchive:
    """An open wheel: its checked members, and reads of their content.

    Usable as a context manager. Raises FormatError for anything malformed or unsafe.
    """

    def __init__(self, path: str, *, spool_dir: str | None = None) -> None:
        self.path = path
        # Spooling (rpathfix.deflate.Spool): with a directory, a deflated member of at least
        # SPOOL_MIN bytes is inflated once into an unlinked file there, up to SPOOL_LIMIT bytes
        # in all; later reads and the splice of its patch read that file. A repair reads a
        # library's headers from its end and then hashes all of its new content: one inflate
        # instead of two. The directory is the output's (a disk that holds a wheel), not
        # TMPDIR (often a tmpfs: memory).
        self.spool_dir = spool_dir
        self._spools: dict[str, Spool] = {}
        self._spooled = 0
        import threading

        self._lock = threading.Lock()
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise FormatError(path, f"cannot read: {e.strerror or e}") from None
        try:
            self.size = os.fstat(self._fd).st_size
            self.comment = b""
            self.entries: list[ZipEntry] = []
            self._parse()
        except BaseException:
            os.close(self._fd)
            raise
        self.by_name = {e.name: e for e in self.entries}
        # member -> [(content offset, compressed bytes fed, CRC-32 so far, inflater copy)]
        self.points: dict[str, list[tuple[int, int, int, zlib._Decompress]]] = {}

    def close(self) -> None:
        for sp in self._spools.values():
            sp.close()
        self._spools.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> WheelArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fd(self) -> int:
        return self._fd

    def _fail(self, reason: str) -> FormatError:
        return FormatError(self.path, reason)

    def pread(self, offset: int, size: int) -> bytes:
        """Exactly `size` bytes at `offset`, else FormatError (the archive is truncated)."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise self._fail(f"truncated zip: needs bytes {offset}..{offset + size} of {self.size}")
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise self._fail(f"short read at offset {offset}")
        return data

    # ------------------------------------------------------------ parsing

    def _parse(self) -> None:
        if self.size < _EOCD.size:
            raise self._fail("not a zip archive (too short); is it a wheel?")
        tail_len = min(self.size, _EOCD.size + _U16)
        tail = self.pread(self.size - tail_len, tail_len)
        pos = tail.rfind(_EOCD_SIG)
        while pos >= 0 and _EOCD.size + struct.unpack_from("<H", tail, pos + 20)[0] != tail_len - pos:
            pos = tail.rfind(_EOCD_SIG, 0, pos)
        if pos < 0:
            raise self._fail("not a zip archive (no end of central directory); is it a wheel?")
        eocd_off = self.size - tail_len + pos
        _sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, clen = _EOCD.unpack_from(tail, pos)
        self.comment = tail[pos + _EOCD.size:pos + _EOCD.size + clen]
        cd_end = eocd_off
        if eocd_off >= _LOCATOR.size and self.pread(eocd_off - _LOCATOR.size, 4) == _LOCATOR_SIG:
            _s, _d, z64_off, _disks = _LOCATOR.unpack(self.pread(eocd_off - _LOCATOR.size, _LOCATOR.size))
            if z64_off + _EOCD64.size > eocd_off - _LOCATOR.size:
                raise self._fail("zip64 end of central directory out of place")
            rec = _EOCD64.unpack(self.pread(z64_off, _EOCD64.size))
            if rec[0] != _EOCD64_SIG:
                raise self._fail("bad zip64 end of central directory")
            disk, cd_disk, n_disk, n_total, cd_size, cd_offset = rec[4:10]
            cd_end = z64_off
        if disk != 0 or cd_disk != 0 or n_disk != n_total:
            raise self._fail("a multi-disk (split) zip archive is not a wheel")
        if cd_offset + cd_size != cd_end:
            raise self._fail("data before or inside the zip archive (central directory not where the end record says)")
        if n_total > MAX_ENTRIES or cd_size > MAX_CENTRAL_DIRECTORY:
            raise self._fail(f"{n_total} members in a {cd_size}-byte central directory: too large for a wheel")
        cd = self.pread(cd_offset, cd_size)
        seen: set[str] = set()
        i = 0
        entries: list[ZipEntry] = []
        for _ in range(n_total):
            if i + _CENTRAL.size > len(cd):
                raise self._fail("central directory ends early")
            (sig, vmade, vneed, flags, method, dtime, ddate, crc, csize, usize, n, m, k, dstart, iattr, eattr,
             offset) = _CENTRAL.unpack_from(cd, i)
            if sig != _CENTRAL_SIG:
                raise self._fail(f"bad central directory record at offset {cd_offset + i}")
            j = i + _CENTRAL.size
            if j + n + m + k > len(cd):
                raise self._fail("central directory record runs past its end")
            raw_name = cd[j:j + n]
            extra = cd[j + n:j + n + m]
            comment = cd[j + n + m:j + n + m + k]
            i = j + n + m + k
            if usize == _U32 or csize == _U32 or offset == _U32 or dstart == _U16:
                usize, csize, offset = self._zip64_values(raw_name, extra, usize, csize, offset, dstart)
            try:
                name = raw_name.decode("utf-8") if flags & FLAG_UTF8 else raw_name.decode("cp437")
            except UnicodeDecodeError:
                raise self._fail(f"member name {raw_name!r} is not valid UTF-8") from None
            why = _unsafe_name(name)
            if why is not None:
                raise self._fail(f"unsafe member name {name!r} ({why})")
            if name in seen:
                raise self._fail(f"member {name!r} appears twice")
            seen.add(name)
            if flags & FLAG_ENCRYPTED:
                raise self._fail(f"member {name!r} is encrypted")
            entries.append(self._with_local(ZipEntry(
                name, raw_name, vmade, vneed, flags, method, dtime, ddate, crc, csize, usize, iattr, eattr,
                _without_zip64(extra), comment, offset, 0, 0, b""), cd_offset))
        if i != len(cd):
            raise self._fail("central directory holds more than its end record counts")
        ordered = sorted(entries, key=lambda e: e.header_offset)
        for a, b in zip(ordered, ordered[1:]):
            if a.record_end > b.header_offset:
                raise self._fail(f"members {a.name!r} and {b.name!r} overlap")
        self.entries = entries

    def _zip64_values(self, raw_name: bytes, extra: bytes, usize: int, csize: int, offset: int,
                      dstart: int) -> tuple[int, int, int]:
        data = next((d for fid, d in _extra_fields(extra) if fid == _ZIP64_ID), None)
        if data is None:
            raise self._fail(f"member {raw_name!r}: sizes need a zip64 field and there is none")
        values = []
        for v in (usize, csize, offset):
            if v == _U32:
                if len(data) < 8:
                    raise self._fail(f"member {raw_name!r}: zip64 field too short")
                values.append(struct.unpack_from("<Q", data)[0])
                data = data[8:]
            else:
                values.append(v)
        if dstart == _U16 and (len(data) < 4 or struct.unpack_from("<L", data)[0] != 0):
            raise self._fail("a multi-disk (split) zip archive is not a wheel")
        return values[0], values[1], values[2]

    def _with_local(self, e: ZipEntry, cd_offset: int) -> ZipEntry:
        """The entry completed from its local header, checked against the central record."""
        if e.header_offset + _LOCAL.size > cd_offset:
            raise self._fail(f"member {e.name!r}: local header outside the archive")
        want = _LOCAL.size + len(e.raw_name) + 256
        head = self.pread(e.header_offset, min(want, cd_offset - e.header_offset))
        sig, _vneed, flags, method, _t, _d, _crc, _cs, _us, n, m = _LOCAL.unpack_from(head)
        if sig != _LOCAL_SIG:
            raise self._fail(f"member {e.name!r}: no local header at offset {e.header_offset}")
        if len(head) < _LOCAL.size + n + m:
            head = self.pread(e.header_offset, min(_LOCAL.size + n + m, cd_offset - e.header_offset))
            if len(head) < _LOCAL.size + n + m:
                raise self._fail(f"member {e.name!r}: local header runs into the central directory")
        if head[_LOCAL.size:_LOCAL.size + n] != e.raw_name:
            raise self._fail(f"member {e.name!r}: its local header names another file")
        if method != e.method or (flags ^ e.flags) & (FLAG_ENCRYPTED | FLAG_DESCRIPTOR):
            raise self._fail(f"member {e.name!r}: local header disagrees with the central directory")
        local_extra = head[_LOCAL.size + n:_LOCAL.size + n + m]
        data_offset = e.header_offset + _LOCAL.size + n + m
        end = data_offset + e.compress_size
        if end > cd_offset:
            raise self._fail(f"member {e.name!r}: data runs past the end of the archive")
        if e.method == STORED and e.compress_size != e.file_size:
            raise self._fail(f"member {e.name!r}: stored, but its two sizes differ")
        if flags & FLAG_DESCRIPTOR:
            big = any(fid == _ZIP64_ID for fid, _ in _extra_fields(local_extra)) or \
                max(e.compress_size, e.file_size) >= _U32
            size = 4 + (16 if big else 8)
            if end + 4 <= cd_offset and self.pread(end, 4) == _DESCRIPTOR_SIG:
                size += 4
            end += size
            if end > cd_offset:
                raise self._fail(f"member {e.name!r}: data descriptor runs past the end of the archive")
        return e._replace(data_offset=data_offset, record_end=end, local_extra=local_extra)

    # ------------------------------------------------------------ content

    def entry(self, name: str) -> ZipEntry:
        try:
            return self.by_name[name]
        except KeyError:
            raise self._fail(f"no member {name!r}") from None

    def source(self, name: str) -> ByteSource:
        """A ByteSource of one member's content (random access, bounded reads). A spooled
        member is read from its spool; other inflated members keep checkpoints in the
        archive, so later sources of the member, and reads that step back, restart near
        where they read."""
        e = self.entry(name)
        with self._lock:  # header reads run in threads (wheeltree.read_headers)
            sp = self._spools.get(name)
            if sp is None and self.spool_dir is not None and e.method == DEFLATED and e.file_size >= SPOOL_MIN \
                    and self._spooled + e.file_size <= SPOOL_LIMIT and room_for_spool(self.spool_dir, e.file_size):
                from rpathfix import deflate

                if deflate.available():
                    sp = self._spools[name] = deflate.Spool(f"{self.path}!{name}", self._fd, e.data_offset,
                                                             e.compress_size, e.file_size, e.crc, self.spool_dir)
                    self._spooled += e.file_size
        if sp is not None:
            return _SpoolView(sp)
        return MemberSource(self, e, checked=False)

    def spool(self, name: str) -> Spool | None:
        """The member's spool, when a read made one."""
        return self._spools.get(name)

    def read(self, name: str, limit: int = MAX_METADATA) -> bytes:
        """A small member's whole content (METADATA, WHEEL, RECORD)."""
        e = self.entry(name)
        if e.file_size > limit:
            raise self._fail(f"member {name!r} is {e.file_size} bytes; more than {limit} is not a metadata file")
        src = MemberSource(self, e)
        data = src.read_at(0, e.file_size) if e.file_size else b""
        src.finish()
        return data

    def dist_info(self) -> str:
        """The one `<name>-<version>.dist-info` directory at the top of the wheel."""
        from rpathfix.names import parse_dist_info_dirname, parse_wheel_filename

        tops = sorted({e.name.split("/", 1)[0] for e in self.entries
                       if "/" in e.name and e.name.split("/", 1)[0].endswith(".dist-info")})
        if len(tops) != 1:
            found = ", ".join(tops) or "none"
            raise self._fail(f"a wheel holds exactly one .dist-info directory (found: {found})")
        top = tops[0]
        try:
            name, _version = parse_wheel_filename(self.path)
        except FormatError:
            return top
        parsed = parse_dist_info_dirname(top)
        if parsed is None or parsed[0] != name:
            raise self._fail(f"{top} does not belong to the distribution the file name says ({name})")
        return top


class _SpoolView:
    """A reader's handle on a spool: its close() leaves the spool to the archive."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    @property
    def name(self) -> str:
        return self._spool.name

    @property
    def size(self) -> int:
        return self._spool.size

    def read_at(self, offset: int, size: int) -> bytes:
        return self._spool.read_at(offset, size)

    def close(self) -> None:
        pass


class MemberSource:
    """One member's content as a ByteSource: a stored member is read in place; a deflated one
    is inflated forward, keeping a bounded window, and inflated again from the start when a
    reader steps back further than the window (the ELF reader steps back once, a little).

    finish() reads what is left and checks the CRC-32 (and size): a streamed copy ends with it.
    """

    def __init__(self, archive: WheelArchive, entry: ZipEntry, *, checked: bool = True) -> None:
        self._arc = archive
        self._e = entry
        # Unchecked: no CRC-32 on the way (reads of headers never reach the end; a copy
        # that must be whole is checked, and finish()es).
        self._checked = checked
        self._name = f"{archive.path}!{entry.name}"
        if entry.method not in (STORED, DEFLATED):
            raise FormatError(self._name, f"compression method {entry.method} is not supported here "
                                          "(stored and deflated are)")
        self._reset()

    def _reset(self, before: int = 0) -> None:
        """Inflate again from the last checkpoint at or before content offset `before`."""
        points = self._arc.points.get(self._e.name, [])
        point = next((p for p in reversed(points) if p[0] <= before and (p[2] >= 0 or not self._checked)), None)
        if point is None:
            self._inflater = zlib.decompressobj(-15)
            self._consumed = 0  # compressed bytes fed
            self._pos = 0  # decompressed bytes produced
            self._crc = 0
        else:
            self._pos, self._consumed, self._crc, inflater = point
            self._inflater = inflater.copy()
        self._win = b""  # inflated bytes from _win_start on: a bounded window
        self._win_start = self._pos
        self._done = False
        self._every = max(_POINT_EVERY, self._e.file_size // _MAX_POINTS)

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._e.file_size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise FormatError(self._name, f"negative offset or size ({offset}, {size})")
        if size > MAX_READ:
            raise FormatError(self._name, f"refusing a {size}-byte read at offset {offset} (corrupt size field?)")
        if offset + size > self._e.file_size:
            raise FormatError(self._name, f"truncated: needs bytes {offset}..{offset + size} "
                                          f"but the member has {self._e.file_size}")
        if self._e.method == STORED:
            data = self._arc.pread(self._e.data_offset + offset, size)
            if offset == self._pos:  # contiguous from the start: checksummed on the way
                self._crc = zlib.crc32(data, self._crc)
                self._pos += size
            return data
        keep = max(offset - _KEEP_BEHIND, 0)  # the window keeps a little before the read
        if offset < self._win_start or (self._e.method == DEFLATED and offset - self._pos > self._every):
            points = self._arc.points.get(self._e.name, [])
            if offset < self._win_start or (points and points[-1][0] > self._pos and points[-1][0] <= keep):
                self._reset(keep)
        end = offset + size
        while self._pos < end:
            out = self._produce()
            if self._pos <= keep:  # wholly before what is asked: skipped, never stored
                self._win, self._win_start = b"", self._pos
                continue
            self._win += out
            if keep > self._win_start:
                self._win = self._win[keep - self._win_start:]
                self._win_start = keep
        rel = offset - self._win_start
        return self._win[rel:rel + size]

    def finish(self) -> None:
        """Read what is left and check the CRC-32 (and size): a streamed copy ends here."""
        assert self._checked, "finish() checks the CRC-32 of a checked source"
        if self._e.method == STORED:
            while self._pos < self._e.file_size:
                self.read_at(self._pos, min(_INFLATE_OUT, self._e.file_size - self._pos))
            if self._crc != self._e.crc:
                raise FormatError(self._name, "CRC-32 mismatch: the member is corrupt")
            return
        self._win, self._win_start = b"", self._pos
        while not self._done:
            self._produce()
            self._win_start = self._pos

    def _produce(self) -> bytes:
        """The next piece of the inflated content (at most _INFLATE_OUT bytes), checked."""
        e = self._e
        if self._done:
            raise FormatError(self._name, "deflated data ends before the member's declared size")
        data = self._inflater.unconsumed_tail
        if not data:
            n = min(_INFLATE_IN, e.compress_size - self._consumed)
            data = self._arc.pread(e.data_offset + self._consumed, n) if n > 0 else b""
            self._consumed += n
        try:
            out = self._inflater.decompress(data, _INFLATE_OUT) if data else self._inflater.flush()
        except zlib.error as err:
            raise FormatError(self._name, f"corrupt deflated data ({err})") from None
        if self._checked:
            self._crc = zlib.crc32(out, self._crc)
        before = self._pos
        self._pos += len(out)
        if self._pos // self._every > before // self._every and not self._inflater.eof:
            points = self._arc.points.setdefault(e.name, [])
            if not points or points[-1][0] < self._pos:
                points.append((self._pos, self._consumed, self._crc if self._checked else -1,
                               self._inflater.copy()))
        if self._pos > e.file_size:
            raise FormatError(self._name, "deflated data is longer than the member's declared size")
        if self._inflater.eof or (not data and not out):
            self._done = True
            if self._pos != e.file_size:
                raise FormatError(self._name, "deflated data ends before the member's declared size")
            if self._checked and self._crc != e.crc:
                raise FormatError(self._name, "CRC-32 mismatch: the member is corrupt")
        return out

    def close(self) -> None:
        self._win = b""

    def __enter__(self) -> MemberSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- file names


class WheelName(NamedTuple):
    """A wheel file name's parts, spelled as in the file name (PEP 427)."""

    name: str
    version: str
    build: str | None
    tags: str  # "python-abi-platform"

    @property
    def filename(self) -> str:
        build = f"-{self.build}" if self.build else ""
        return f"{self.name}-{self.version}{build}-{self.tags}.whl"


def parse_wheel_name(path: str) -> WheelName:
    base = path.rsplit("/", 1)[-1]
    parts = base[:-4].split("-") if base.endswith(".whl") else []
    if len(parts) not in (5, 6) or (len(parts) == 6 and not parts[2][:1].isdigit()):
        raise FormatError(path, "not a wheel file name (expected name-version[-build]-python-abi-platform.whl)")
    build = parts[2] if len(parts) == 6 else None
    return WheelName(parts[0], parts[1], build, "-".join(parts[-3:]))


REPAIR_BUILD_SUFFIX = "rpathfix"


def repaired_name(path: str, suffix: str = REPAIR_BUILD_SUFFIX) -> WheelName:
    """The repaired wheel's name: the same name, version and tags, and a build tag that sorts
    just above the original's: its own build tag (or "0") followed by `suffix`. PEP 427 sorts
    build tags as (leading number, rest): "0rpathfix" > no tag, "1rpathfix" > "1", and an
    upstream rebuild "2" still wins over "1rpathfix". A name already ending in the suffix is
    kept (repairing a repaired wheel again changes nothing)."""
    w = parse_wheel_name(path)
    if w.build is not None and w.build.endswith(suffix):
        return w
    return w._replace(build=(w.build or "0") + suffix)


# ---------------------------------------------------------------- METADATA, WHEEL, RECORD


def _split_headers(text: str) -> tuple[list[str], str, str]:
    """(header lines with their line ends, the rest (blank line and body), the line end used)."""
    nl = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line in ("\n", "\r\n"):
            return lines[:i], "".join(lines[i:]), nl
    return lines, "", nl


def _header_name(line: str) -> str | None:
    if line[:1] in (" ", "\t"):
        return None  # a continuation line
    name, sep, _ = line.partition(":")
    return name.strip().lower() if sep else None


def _header_values(lines: list[str], field: str) -> list[str]:
    return [line.partition(":")[2].strip() for line in lines if _header_name(line) == field]


def metadata_field(metadata: bytes, field: str) -> list[str]:
    """The values of one header field of a METADATA or WHEEL file (case-insensitive name)."""
    lines, _rest, _nl = _split_headers(metadata.decode("utf-8", "surrogateescape"))
    return _header_values(lines, field.lower())


def _insert_after_last(lines: list[str], fields: tuple[str, ...], new: list[str]) -> list[str]:
    """`new` after the last line (and its continuations) of any of `fields`, else at the end."""
    at = None
    for i, line in enumerate(lines):
        if _header_name(line) in fields:
            at = i + 1
            while at < len(lines) and lines[at][:1] in (" ", "\t"):
                at += 1
    if at is None:
        at = len(lines)
    return lines[:at] + new + lines[at:]


def add_requires_dist(metadata: bytes, requires: Sequence[str], extra: str | None = None) -> bytes:
    """METADATA with `Requires-Dist` lines added (and `Provides-Extra: extra` when `extra` is
    given and not yet declared); every other byte stays as it was. With `extra`, each
    requirement gets the marker `extra == "<extra>"` (PEP 508)."""
    if not requires:
        return metadata
    text = metadata.decode("utf-8", "surrogateescape")
    lines, rest, nl = _split_headers(text)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += nl
    if extra is not None:
        from rpathfix.names import canonicalize_name

        declared = {canonicalize_name(v) for v in _header_values(lines, "provides-extra")}
        if canonicalize_name(extra) not in declared:
            lines = _insert_after_last(lines, ("provides-extra",), [f"Provides-Extra: {extra}{nl}"])
        new = [f'Requires-Dist: {r}; extra == "{extra}"{nl}' for r in requires]
    else:
        new = [f"Requires-Dist: {r}{nl}" for r in requires]
    lines = _insert_after_last(lines, ("requires-dist", "provides-extra"), new)
    return "".join(lines).encode("utf-8", "surrogateescape") + rest.encode("utf-8", "surrogateescape")


def set_wheel_build(wheel: bytes, build: str | None) -> bytes:
    """The WHEEL file with its `Build:` field set to `build` (added at the end of the headers
    when absent, as bdist_wheel writes it; removed for None)."""
    text = wheel.decode("utf-8", "surrogateescape")
    lines, rest, nl = _split_headers(text)
    kept = [line for line in lines if _header_name(line) != "build"]
    if build is not None:
        if kept and not kept[-1].endswith(("\n", "\r")):
            kept[-1] += nl
        kept.append(f"Build: {build}{nl}")
    return ("".join(kept) + rest).encode("utf-8", "surrogateescape")


def record_digest(digest: bytes) -> str:
    """A digest as RECORD writes it: urlsafe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def record_hash(digest: bytes) -> str:
    """A RECORD hash field: sha256=<record_digest>."""
    return "sha256=" + record_digest(digest)


def rewrite_record(record: bytes, changed: Mapping[str, tuple[str, int]], drop: Sequence[str] = ()) -> bytes:
    """RECORD with the hash and size of each changed member replaced (rows for members not yet
    listed are added before RECORD's own row) and the rows of `drop` removed; the order and
    line ends of the rest are kept."""
    import csv
    import io

    text = record.decode("utf-8", "surrogateescape")
    nl = "\r\n" if "\r\n" in text else "\n"
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    dropped = set(drop)
    out_rows: list[list[str]] = []
    seen: set[str] = set()
    own: list[list[str]] = []
    for row in rows:
        path = row[0]
        if path in dropped:
            continue
        seen.add(path)
        if path.endswith(".dist-info/RECORD"):
            own.append(row)
            continue
        if path in changed:
            digest, size = changed[path]
            row = [path, digest, str(size)]
        out_rows.append(row)
    for path in changed:
        if path not in seen:
            digest, size = changed[path]
            out_rows.append([path, digest, str(size)])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=nl)
    writer.writerows(out_rows + own)
    return buf.getvalue().encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- writing


class _Sink:
    """Takes a member's new content in chunks: CRC-32, SHA-256 and size as it goes, and the
    (deflated or stored) bytes straight into the output file at `offset`."""

    def __init__(self, fd: int, offset: int, method: int, level: int) -> None:
        import hashlib

        self.fd = fd
        self.offset = offset  # where the next compressed byte goes
        self.start = offset
        self.crc = 0
        self.size = 0
        self.sha = hashlib.sha256()
        self.method = method
        self._z = zlib.compressobj(level, zlib.DEFLATED, -15) if method == DEFLATED else None

    def write(self, data: bytes | memoryview, /) -> int:
        if not data:
            return 0
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.sha.update(data)
        self._out(self._z.compress(data) if self._z is not None else bytes(data))
        return len(data)

    def _out(self, data: bytes) -> None:
        if data:
            from rpathfix.fileio import pwrite_all

            pwrite_all(self.fd, data, self.offset)
            self.offset += len(data)

    def close(self) -> int:
        """Flush; the compressed size."""
        if self._z is not None:
            self._out(self._z.flush())
            self._z = None
        return self.offset - self.start


def room_for_spool(directory: str | None, size: int) -> bool:
    """Whether `directory` can take a spool of `size` bytes and keep SPOOL_RESERVE free."""
    if directory is None:
        return False
    import shutil

    try:
        return shutil.disk_usage(directory).free - size >= SPOOL_RESERVE
    except OSError:
        return False


def _zip64_field(values: Sequence[int]) -> bytes:
    return struct.pack("<2H", _ZIP64_ID, 8 * len(values)) + b"".join(struct.pack("<Q", v) for v in values)


class _Central(NamedTuple):
    entry: ZipEntry  # with the new values (sizes, crc, method, name)
    offset: int  # of the local header in the output


class _ZipWriter:
    """Writes a zip to a file descriptor, front to back, with pwrite (the file object's
    buffer is never used)."""

    def __init__(self, fd: int, spool_dir: str | None = None) -> None:
        self.fd = fd
        self.offset = 0
        self.central: list[_Central] = []
        self.spool_dir = spool_dir  # where a patched member not yet spooled is spooled

    def copy(self, arc: WheelArchive, e: ZipEntry) -> None:
        """The member's whole local record, byte for byte."""
        from rpathfix.fileio import copy_range

        copy_range(arc.fd, self.fd, e.header_offset, self.offset, e.record_end - e.header_offset)
        self.central.append(_Central(e, self.offset))
        self.offset += e.record_end - e.header_offset

    def add(self, template: ZipEntry, produce: Callable[[SupportsWrite], None], *, level: int,
            size_hint: int) -> tuple[str, int]:
        """A member with new content written by `produce(sink)`, keeping the template's name,
        date, attributes and extra fields; (RECORD hash, size) of the new content."""
        method = STORED if template.method == STORED else DEFLATED

        def body(offset: int) -> tuple[int, int, bytes, int]:
            sink = _Sink(self.fd, offset, method, level)
            produce(sink)
            csize = sink.close()
            return sink.crc, sink.size, sink.sha.digest(), csize

        return self._member(template, method, size_hint, body)

    def add_spliced(self, template: ZipEntry, arc: WheelArchive, patch: BytePatch, *, level: int) -> tuple[str, int]:
        """A deflated member patched by `patch`, its original deflate blocks reused where the
        patch leaves them and their window alone (rpathfix.deflate), from the archive's
        spool of it (the header reads made it) or from one made here for the member alone."""
        from rpathfix.deflate import Spool, splice

        def body(offset: int) -> tuple[int, int, bytes, int]:
            kept = arc.spool(template.name)
            sp = kept or Spool(f"{arc.path}!{template.name}", arc.fd, template.data_offset,
                               template.compress_size, template.file_size, template.crc, self.spool_dir)
            try:
                r = splice(sp, patch, self.fd, offset, level)
            finally:
                if kept is None:
                    sp.close()
            return r.crc, r.size, r.sha256, r.compress_size

        return self._member(template, DEFLATED, max(patch.size, template.file_size), body)

    def _member(self, template: ZipEntry, method: int, size_hint: int,
                body: Callable[[int], tuple[int, int, bytes, int]]) -> tuple[str, int]:
        """Write a member whose data `body(offset)` writes at `offset`, returning its CRC-32,
        size, SHA-256 and compressed size; then its local header before it."""
        from rpathfix.fileio import pwrite_all

        # zip64 sizes are reserved in the local header when the content could reach 4 GiB
        # (decided from the old size, so the same input always gets the same header).
        zip64 = size_hint + (size_hint >> 4) + (1 << 20) >= _U32
        local_extra = _without_zip64(template.local_extra)
        if zip64:
            local_extra = _zip64_field((0, 0)) + local_extra
        header_len = _LOCAL.size + len(template.raw_name) + len(local_extra)
        start = self.offset
        crc, size, sha, csize = body(start + header_len)

        if not zip64 and max(csize, size) >= _U32:
            from rpathfix.errors import EditError

            raise EditError(f"{template.name}: the new content is too large for this member's zip header")
        flags = template.flags & ~(FLAG_DESCRIPTOR | 0x6)  # no data descriptor; deflate options unset
        vneed = max(template.version_needed if template.method == method else 20, 45 if zip64 else 20)
        if zip64:
            local_extra = _zip64_field((size, csize)) + _without_zip64(template.local_extra)
        header = _LOCAL.pack(_LOCAL_SIG, vneed, flags, method, template.dos_time, template.dos_date, crc,
                             _U32 if zip64 else csize, _U32 if zip64 else size, len(template.raw_name),
                             len(local_extra)) + template.raw_name + local_extra
        pwrite_all(self.fd, header, start)
        new = template._replace(version_needed=vneed, flags=flags, method=method, crc=crc,
                                compress_size=csize, file_size=size)
        self.central.append(_Central(new, start))
        self.offset = start + header_len + csize
        return record_hash(sha), size

    def finish(self, comment: bytes) -> None:
        from rpathfix.fileio import pwrite_all

        parts: list[bytes] = []
        for c in self.central:
            e = c.entry
            wide = {"usize": e.file_size >= _U32, "csize": e.compress_size >= _U32, "off": c.offset >= _U32}
            values = [v for v, on in ((e.file_size, wide["usize"]), (e.compress_size, wide["csize"]),
                                      (c.offset, wide["off"])) if on]
            extra = (_zip64_field(values) if values else b"") + e.central_extra
            vneed = max(e.version_needed, 45) if values else e.version_needed
            parts.append(_CENTRAL.pack(
                _CENTRAL_SIG, e.version_made, vneed, e.flags, e.method, e.dos_time, e.dos_date, e.crc,
                _U32 if wide["csize"] else e.compress_size, _U32 if wide["usize"] else e.file_size,
                len(e.raw_name), len(extra), len(e.comment), 0, e.internal_attr, e.external_attr,
                _U32 if wide["off"] else c.offset) + e.raw_name + extra + e.comment)
        cd = b"".join(parts)
        cd_offset, n = self.offset, len(self.central)
        pwrite_all(self.fd, cd, cd_offset)
        end = cd_offset + len(cd)
        tail = b""
        if n >= _U16 or cd_offset >= _U32 or len(cd) >= _U32:
            tail += _EOCD64.pack(_EOCD64_SIG, _EOCD64.size - 12, 45, 45, 0, 0, n, n, len(cd), cd_offset)
            tail += _LOCATOR.pack(_LOCATOR_SIG, 0, end, 1)
            tail += _EOCD.pack(_EOCD_SIG, 0, 0, min(n, _U16), min(n, _U16), min(len(cd), _U32),
                               min(cd_offset, _U32), len(comment)) + comment
        else:
            tail += _EOCD.pack(_EOCD_SIG, 0, 0, n, n, len(cd), cd_offset, len(comment)) + comment
        pwrite_all(self.fd, tail, end)
        self.offset = end + len(tail)
        os.ftruncate(self.fd, self.offset)


class RewriteResult(NamedTuple):
    path: str  # the written wheel
    changed: tuple[str, ...]  # members with new content (RECORD included)
    dropped: tuple[str, ...]  # members left out (signatures of the old RECORD)
    written: bool  # False when `path` already held exactly these bytes (then it was left alone)


# Patched deflated members reuse their original deflate blocks (rpathfix.deflate); False
# (or RPATHFIX_NO_SPLICE=1, which benchmarks/bench_repair.py sets for its comparison)
# deflates the whole patched content instead.
SPLICE = not os.environ.get("RPATHFIX_NO_SPLICE")

# Compression of new content: level 6 (zlib's default) for metadata-sized members, 1 for large
# ones (a patched 500 MB library: level 1 deflates it several times faster, for a few percent
# more bytes).
SMALL_LEVEL = 6
LARGE_LEVEL = 1
LARGE_MEMBER = 8 * 1024 * 1024


def rewrite_wheel(src_wheel: str, out_dir: str, *, member_edits: Mapping[str, MemberEdit] | None = None,
                  requires: Sequence[str] = (), extra: str | None = None,
                  new_name: str | None = None, archive: WheelArchive | None = None) -> RewriteResult:
    """Write a copy of `src_wheel` into `out_dir` with some members' content changed.

    member_edits: archive member name -> new content (bytes), a function
        `edit(old: ByteSource, out: SupportsWrite)` that streams it (the old content is read
        with bounded reads, the new one written in chunks), or a model.BytePatch of the old
        content (a patched binary: a deflated member keeps its original compressed blocks
        where the patch leaves them, rpathfix.deflate).
    requires, extra: Requires-Dist lines to add to METADATA (under `extra` when given).
    new_name: the output's file name (default: `repaired_name`). It may differ from the source's
        only in its build tag; WHEEL's `Build:` field follows it.
    archive: `src_wheel` already open (the repair's, whose spools hold the members its
        header reads inflated); it stays open.

    RECORD gets the new hashes and sizes. Returns where the wheel was written; writes through
    fileio (beside the destination, then renamed). FormatError for a malformed source wheel.
    """
    edits: dict[str, MemberEdit] = dict(member_edits or {})
    src = parse_wheel_name(src_wheel)
    dest_name = parse_wheel_name(new_name) if new_name is not None else repaired_name(src_wheel)
    if (dest_name.name, dest_name.version, dest_name.tags) != (src.name, src.version, src.tags):
        raise UsageError(f"{dest_name.filename}: a repaired wheel keeps the name, version and tags of "
                         f"{src.filename}; only the build tag may change")
    dest = os.path.join(out_dir, dest_name.filename)
    if os.path.abspath(dest) == os.path.abspath(src_wheel):
        raise UsageError(f"{dest}: the output would replace the input wheel; choose another --out")
    import contextlib

    with contextlib.nullcontext(archive) if archive is not None else WheelArchive(src_wheel) as arc:
        if os.path.abspath(arc.path) != os.path.abspath(src_wheel):
            raise UsageError(f"{src_wheel}: the open archive given is {arc.path}")
        dist_info = arc.dist_info()
        record_name = f"{dist_info}/RECORD"
        for needed in ("METADATA", "WHEEL", "RECORD"):
            arc.entry(f"{dist_info}/{needed}")
        for name in edits:
            if name not in arc.by_name or arc.by_name[name].is_dir:
                raise UsageError(f"{src_wheel}: no member {name!r} to edit")
        if record_name in edits:
            raise UsageError(f"{src_wheel}: RECORD is rewritten from the other members, not edited")
        if requires:
            meta_name = f"{dist_info}/METADATA"
            old = edits.get(meta_name)
            base = old if isinstance(old, bytes) else arc.read(meta_name)
            edits[meta_name] = add_requires_dist(base, requires, extra)
        if dest_name.build != src.build:
            wheel_name = f"{dist_info}/WHEEL"
            old = edits.get(wheel_name)
            base = old if isinstance(old, bytes) else arc.read(wheel_name)
            edits[wheel_name] = set_wheel_build(base, dest_name.build)
        signatures = (f"{dist_info}/RECORD.jws", f"{dist_info}/RECORD.p7s")
        dropped = tuple(n for n in signatures if n in arc.by_name)
        order = [e for e in arc.entries if e.name != record_name and e.name not in dropped]
        order.append(arc.by_name[record_name])
        changed: dict[str, tuple[str, int]] = {}

        def write(f: object) -> None:
            fd = f.fileno()  # type: ignore[attr-defined]
            w = _ZipWriter(fd, arc.spool_dir or out_dir)
            for e in order:
                if e.name == record_name:
                    record = rewrite_record(arc.read(record_name), changed, dropped)
                    w.add(e, _writes(record), level=SMALL_LEVEL, size_hint=len(record))
                elif e.name in edits:
                    changed[e.name] = _write_edited(w, arc, e, edits[e.name])
                else:
                    w.copy(arc, e)
            w.finish(arc.comment)

        os.makedirs(out_dir, exist_ok=True)
        written = _publish(dest, write)
    return RewriteResult(dest, (*sorted(changed), record_name), dropped, written)


def _publish(dest: str, write: Callable[[object], None]) -> bool:
    """Write the wheel to `dest` through fileio; when `dest` already holds the same bytes, leave
    it as it is (mtime too) and return False. Two runs of one repair give the same bytes, so a
    second run writes nothing."""
    from rpathfix.fileio import replace_file, temp_path

    if not os.path.isfile(dest):
        replace_file(dest, write, mode=0o644)
        return True
    tmp = temp_path(dest, ".whl")
    try:
        replace_file(tmp, write, mode=0o644)
        if _same_file_bytes(tmp, dest):
            return False
        os.rename(tmp, dest)  # a new inode: other hard links to dest keep the old bytes
        return True
    finally:
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _same_file_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        if os.fstat(fa.fileno()).st_size != os.fstat(fb.fileno()).st_size:
            return False
        while True:
            x, y = fa.read(_COPY_CHUNK), fb.read(_COPY_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def _writes(data: bytes) -> Callable[[SupportsWrite], None]:
    def produce(sink: SupportsWrite) -> None:
        sink.write(data)

    return produce


def _write_edited(w: _ZipWriter, arc: WheelArchive, e: ZipEntry, edit: MemberEdit) -> tuple[str, int]:
    from rpathfix.model import BytePatch

    if isinstance(edit, bytes):
        return w.add(e, _writes(edit),
                     level=SMALL_LEVEL if len(edit) < LARGE_MEMBER else LARGE_LEVEL, size_hint=len(edit))
    level = SMALL_LEVEL if e.file_size < LARGE_MEMBER else LARGE_LEVEL
    if isinstance(edit, BytePatch):
        from rpathfix import deflate

        if e.method == DEFLATED and deflate.available() and SPLICE and (
                arc.spool(e.name) is not None or room_for_spool(w.spool_dir, e.file_size)):
            return w.add_spliced(e, arc, edit, level=SMALL_LEVEL)
        patch = edit

        def apply(old: ByteSource, out: SupportsWrite) -> None:
            from rpathfix.patch import stream_patched

            stream_patched(old, patch, out)

        edit = apply

    def produce(sink: SupportsWrite) -> None:
        with MemberSource(arc, e) as old:
            edit(old, sink)
            old.finish()  # the old content was whole and uncorrupted

    return w.add(e, produce, level=level, size_hint=e.file_size)


__all__ = [
    "MemberSource",
    "RewriteResult",
    "WheelArchive",
    "WheelName",
    "ZipEntry",
    "add_requires_dist",
    "metadata_field",
    "parse_wheel_name",
    "record_digest",
    "record_hash",
    "repaired_name",
    "rewrite_record",
    "rewrite_wheel",
    "set_wheel_build",
]
