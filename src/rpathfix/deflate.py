"""A patched copy of a deflated zip member without deflating it again: splice the new bytes
into the member's original deflate stream.

Why: repairing onnxruntime-gpu changes about 12 KB of its 284 MB CUDA provider (the program
headers at the start, new tables appended at the end). Deflating the whole patched file again
costs seconds (level 1: 2.9 s here; level 6: 11 s); copying the original compressed blocks of
the unchanged middle costs what a copy of 230 MB costs in the kernel.

How (RFC 1951): a deflate stream is a sequence of blocks, each starting at a bit position;
a block decodes to the same bytes wherever it is placed, provided the 32 KiB before it (the
window its back-references reach) are the same. A Spool inflates the original once with
zlib's Z_BLOCK (which stops at every block boundary and tells its bit position) into an
unlinked temporary file, noting the boundaries; the same spool serves the header reads that
planned the patch. The splice then decides for each unit (one or more whole blocks):
- reused, when its bytes and the 32 KiB before them are unchanged (and it is not the last
  unit, which holds the final block): its bits are copied as they are (copy_file_range for
  all but the two edge bytes);
- re-encoded otherwise: its new content (the spooled bytes through the patch) goes to a
  fresh raw deflate stream (zlib, with the preceding 32 KiB as dictionary), ended with a sync
  flush, which ends on a byte boundary.
Meanwhile a thread reads the new content back from the spool for its SHA-256 and CRC-32
(hashlib and zlib release the GIL; the kernel copies do too), so the member is inflated once
in all, and hashing overlaps copying; during a long copy, another starts the output's
writeback to the disk (fdatasync after each piece), so the fsync before the rename is short.
Bit alignment: a reused run starts at its original bit phase r. A fresh segment ends on a
byte boundary (phase 0); empty fixed-Huffman blocks (10 bits each) then bring the phase to
r when r is even; a unit at an odd phase is re-encoded instead, so the run starts at the
next one (half the boundaries qualify). After a run, an empty stored block (3 header bits,
padding, LEN 0) returns to phase 0 for the next fresh segment. The last segment is finished
with Z_FINISH: the new final block. Every block written is a valid deflate block, so any
inflater (zlib, miniz, Info-ZIP) reads the stream.

The bindings are zlib's own (ctypes, the libz.so.1 CPython's zlib module links): Python's
zlib module does not expose Z_BLOCK or the bit position. `available()` is False where the
library cannot be loaded; the caller then deflates the patched content as before.
Deterministic: the output depends only on the original member and the patch.
"""

from __future__ import annotations

import os
import zlib

from rpathfix.errors import FormatError
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import ctypes
    import threading
    from collections.abc import Callable
    from concurrent.futures import Future

    from rpathfix.model import BytePatch
    from rpathfix.patch import PatchedSource

WINDOW = 32768
_IN = 1 << 20
_OUT = 1 << 20
# Block boundaries closer than this (in content) to the last one kept are not kept: zlib's
# blocks hold 16 K symbols (tens of kilobytes), so real streams keep nearly all of theirs.
_MIN_UNIT = 16 << 10
# The kernel copies a reused run in pieces of this size; after each, the output's writeback is
# started in a thread (see splice).
PIECE = 64 << 20
Z_OK, Z_STREAM_END, Z_BUF_ERROR, Z_BLOCK = 0, 1, -5, 5


class Spliced(NamedTuple):
    crc: int  # CRC-32 of the new content
    size: int  # its size
    sha256: bytes  # its SHA-256 digest
    compress_size: int  # bytes written
    reused: int  # compressed bytes copied from the original stream


_LIB: list[object] = []


def _zlib() -> ctypes.CDLL | None:
    """zlib through ctypes (once); None when it cannot be loaded."""
    if _LIB:
        return _LIB[0]  # type: ignore[return-value]
    lib = None
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("z") or "libz.so.1"
        lib = ctypes.CDLL(name)
        lib.zlibVersion.restype = ctypes.c_char_p
        lib.inflateInit2_.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.inflate.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.inflateEnd.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        lib = None
    _LIB.append(lib)
    return lib


def available() -> bool:
    return _zlib() is not None


def _stream_type() -> type[ctypes.Structure]:
    import ctypes

    class ZStream(ctypes.Structure):
        _fields_ = [
            ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
            ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
            ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
            ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
            ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong),
        ]

    return ZStream


class Spool:
    """A deflated member's content, inflated once into an unlinked temporary file, with the
    bit positions of the original stream's block boundaries: a ByteSource whose reads never
    inflate anything twice, and what splice() needs to reuse the original's blocks.

    Why a file: the repair reads a library's headers (its dynamic section lies at its end,
    so that read inflates all of it) and then writes the patched member, whose SHA-256 needs
    all of the new content again. Inflating a 284 MB member costs 0.4 s here; reading it back
    from the page cache costs 0.03 s. The file is unlinked from the start (O_TMPFILE where
    the system has it), so an interrupted run leaves nothing behind; its pages are the
    kernel's to write back or drop, not this process's memory.

    It fills as it is read: a reader of the first kilobytes (a Mach-O header) inflates only
    those. `finish()` inflates the rest and checks the size and the CRC-32.
    """

    def __init__(self, name: str, src_fd: int, start: int, csize: int, usize: int, crc: int,
                 directory: str | None = None) -> None:
        import ctypes
        import tempfile
        from array import array

        lib = _zlib()
        assert lib is not None, "Spool needs zlib through ctypes (deflate.available())"
        self._lib = lib
        self._name = name
        self.src_fd, self.start, self.csize = src_fd, start, csize
        self._size, self._crc_want = usize, crc
        self._dir = directory or tempfile.gettempdir()
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by close())
        self._fd = self._file.fileno()
        self._strm = _stream_type()()
        if lib.inflateInit2_(ctypes.byref(self._strm), -15, lib.zlibVersion(), ctypes.sizeof(self._strm)) != Z_OK:
            self._file.close()
            raise MemoryError("inflateInit2")
        self._live = True
        self._broken = False  # a fill failed part-way: the spool cannot be trusted
        self._inbuf = (ctypes.c_char * _IN)()
        self._outbufs = ((ctypes.c_char * _OUT)(), (ctypes.c_char * _OUT)())
        self._views = tuple(memoryview(b).cast("B") for b in self._outbufs)
        self._cur = 0  # the buffer zlib inflates into
        self._strm.next_out = ctypes.addressof(self._outbufs[0])
        self._strm.avail_out = _OUT
        self._fed = 0  # compressed bytes fed to the inflater
        self._written = 0  # content bytes in the file
        self._crc = 0
        self._crc32 = _crc32()
        self._final = False  # the boundary after the final block is noted
        self._bad: str | None = None  # why the whole stream is not the declared content
        self.done = False
        # Block boundaries kept: (content offset, bit offset in the original stream), from
        # (0, 0) to the stream's end. A boundary closer than _MIN_UNIT to the last one kept is
        # skipped: its neighbours are joined into one unit (still whole blocks), so the index
        # holds at most 16 bytes per 16 KiB of content (215 KB for the 284 MB provider),
        # however tiny the stream's blocks.
        self.offsets = array("Q", [0])
        self.bits = array("Q", [0])

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._size

    @property
    def inflated(self) -> int:
        """How much of the content is in the file so far."""
        return self._written

    def read_at(self, offset: int, size: int) -> bytes:
        from rpathfix.source import _check

        _check(self._name, self._size, offset, size)
        if self._broken:
            raise self._fail("an earlier read of this member failed")
        if offset + size > self._written:
            self._fill(offset + size)
            if offset + size > self._written:
                raise self._fail(self._bad or "deflated data ends before the member's declared size")
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self._name}: short read from the spool file")
        return data

    def finish(self) -> None:
        """Inflate what is left; FormatError unless the stream ends at the declared size with
        the declared CRC-32. (Reads do not check the CRC-32, as MemberSource's header reads do
        not: a member whose stream ends inside a header read still reads as what it holds,
        and the write of its patch, which finishes the spool first, refuses it.)"""
        self._fill(None)
        if self._bad is not None:
            raise self._fail(self._bad)

    def close(self) -> None:
        """Release the inflater and the file (readers' close() is WheelArchive's business:
        they get a view whose close does nothing)."""
        import ctypes

        if self._live:
            self._live = False
            self._lib.inflateEnd(ctypes.byref(self._strm))
        self._file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, reason: str) -> FormatError:
        return FormatError(self._name, reason)

    def _store(self, chunk: memoryview, offset: int) -> None:
        """One buffer of content to the file, and into the CRC-32 (on the writer thread,
        one buffer at a time, in order)."""
        from rpathfix.fileio import pwrite_all

        self._crc = self._crc32(chunk, self._crc)
        try:
            pwrite_all(self._fd, chunk, offset)
        except OSError as e:  # a full disk: say which (the CLI prints it as one line)
            raise OSError(e.errno, e.strerror, self._dir) from None

    def _fill(self, until: int | None) -> None:
        """Inflate block by block (zlib's Z_BLOCK) until the file holds `until` bytes (None:
        all of them), noting block boundaries.

        Two output buffers: while zlib inflates into one (ctypes releases the GIL), a writer
        thread checksums and writes the other (zlib.crc32 and pwrite release it too), so
        storing costs no time beside inflating on a machine with two cores. The thread ends
        with this call; an error in it (a full disk) is raised here."""
        import ctypes
        from concurrent.futures import ThreadPoolExecutor

        if self.done:
            return
        if self._broken:
            raise self._fail("an earlier read of this member failed")
        s, lib, ref = self._strm, self._lib, ctypes.byref(self._strm)
        in_addr = ctypes.addressof(self._inbuf)
        queued = self._written  # content handed to the writer
        with ThreadPoolExecutor(1) as writer:
            pending = None

            def hand_over() -> None:
                """The current buffer to the writer; inflate into the other one, once the
                writer is done with it."""
                nonlocal pending, queued
                n = _OUT - s.avail_out
                if pending is not None:
                    pending.result()
                    pending = None
                if n:
                    pending = writer.submit(self._store, self._views[self._cur][:n], queued)
                    queued += n
                self._cur ^= 1
                s.next_out, s.avail_out = ctypes.addressof(self._outbufs[self._cur]), _OUT

            try:
                while not self.done and (until is None or queued < until):
                    if s.avail_in == 0 and self._fed < self.csize:
                        n = min(_IN, self.csize - self._fed)
                        data = os.pread(self.src_fd, n, self.start + self._fed)
                        if len(data) != n:
                            raise self._fail(f"short read at offset {self.start + self._fed}")
                        ctypes.memmove(in_addr, data, n)
                        self._fed += n
                        s.next_in, s.avail_in = in_addr, n
                    ret = lib.inflate(ref, Z_BLOCK)
                    if ret not in (Z_OK, Z_STREAM_END, Z_BUF_ERROR):
                        raise self._fail(f"corrupt deflated data ({(s.msg or b'').decode(errors='replace')})")
                    made = queued + _OUT - s.avail_out
                    if made > self._size:
                        raise self._fail("deflated data is longer than the member's declared size")
                    at_end = ret == Z_STREAM_END
                    if (at_end or s.data_type & 128) and not self._final:
                        # Bits consumed: whole bytes taken, less the bits of the last one unused.
                        bit = (self._fed - s.avail_in) * 8 - (s.data_type & 7)
                        # After the final block's end-of-block code, zlib stops once more (flag
                        # 64: that block was the last) before it reports the stream's end: that
                        # boundary ends the last unit, so the final block is never reused.
                        self._final = at_end or bool(s.data_type & 64)
                        if self._final or made - self.offsets[-1] >= _MIN_UNIT:
                            self.offsets.append(made)
                            self.bits.append(bit)
                    if at_end or s.avail_out < _OUT // 16:
                        hand_over()
                        self.done = at_end
                    elif ret == Z_BUF_ERROR and s.avail_in == 0 and self._fed >= self.csize:
                        raise self._fail("deflated data ends before its last block")
                if pending is not None:
                    pending.result()
            except BaseException:
                self._broken = True
                raise
        self._written = queued
        if self.done and self._bad is None:
            if self._written != self._size:
                self._bad = "deflated data is not as long as the member's declared size"
            elif self._crc != self._crc_want:
                self._bad = "CRC-32 mismatch: the member is corrupt"


def _crc32() -> Callable[[bytes | memoryview, int], int]:
    """The CRC-32 of the module that inflates (wheelinstall.inflate_module: python-isal's,
    seven times zlib's here, when installed, unless RPATHFIX_INFLATE says zlib); the same
    values either way."""
    from rpathfix.wheelinstall import inflate_module

    crc32: Callable[[bytes | memoryview, int], int] = inflate_module().crc32
    return crc32


class _Bits:
    """The output as a bit stream, written to `fd` from `offset` on (LSB first, RFC 1951)."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.offset, self.start = fd, offset, offset
        self.buf = bytearray()
        self.acc = 0
        self.nbits = 0

    def bits(self, value: int, n: int) -> None:
        self.acc |= value << self.nbits
        self.nbits += n
        while self.nbits >= 8:
            self.buf.append(self.acc & 0xFF)
            self.acc >>= 8
            self.nbits -= 8

    def raw(self, data: bytes) -> None:
        """Bytes at a byte boundary (a fresh deflate segment)."""
        assert self.nbits == 0
        self.buf += data
        if len(self.buf) >= _OUT:
            self.flush()

    def empty_stored(self) -> None:
        """An empty stored block: back to a byte boundary from any phase."""
        self.bits(0, 3)  # BFINAL 0, BTYPE 00
        if self.nbits:
            self.bits(0, 8 - self.nbits)
        self.raw(b"\x00\x00\xff\xff")

    def empty_fixed(self) -> None:
        """An empty fixed-Huffman block: 10 bits (BFINAL 0, BTYPE 01, end-of-block 0000000)."""
        self.bits(0, 1)
        self.bits(1, 2)
        self.bits(0, 7)

    def flush(self) -> None:
        from rpathfix.fileio import pwrite_all

        if self.buf:
            pwrite_all(self.fd, bytes(self.buf), self.offset)
            self.offset += len(self.buf)
            self.buf.clear()

    def copy_run(self, src_fd: int, src_start: int, b0: int, b1: int,
                 after_piece: Callable[[], object] | None = None) -> int:
        """The original stream's bits [b0, b1) (relative to src_start), which must start at
        the current phase. Returns the bytes copied by the kernel (in pieces of at most
        PIECE bytes, calling `after_piece` between two)."""
        assert b0 % 8 == self.nbits and b1 > b0
        first, last = b0 // 8, b1 // 8
        if self.nbits:
            byte = os.pread(src_fd, 1, src_start + first)[0]
            mask = (0xFF << self.nbits) & 0xFF
            self.buf.append((self.acc | (byte & mask)) & 0xFF)
            self.acc, self.nbits = 0, 0
            first += 1
        self.flush()
        copied = 0
        if last > first:
            from rpathfix.fileio import copy_range

            copy_range(src_fd, self.fd, src_start + first, self.offset, last - first, piece=PIECE,
                       after_piece=after_piece)
            self.offset += last - first
            copied = last - first
        tail = b1 % 8
        if tail:
            byte = os.pread(src_fd, 1, src_start + last)[0]
            self.acc, self.nbits = byte & ((1 << tail) - 1), tail
        return copied


def _dirty(old_size: int, patch: BytePatch) -> list[tuple[int, int]]:
    """The ranges of the new content that differ (or may differ) from the old bytes at the
    same offsets, merged and sorted; what lies past the shorter of the two sizes is dirty."""
    spans = sorted((off, off + len(data)) for off, data in patch.writes if data)
    common = min(old_size, patch.size)
    spans.append((common, max(old_size, patch.size)))
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        elif b > a:
            out.append((a, b))
    return out


def _digest(new: PatchedSource, stop: threading.Event) -> tuple[int, bytes]:
    """CRC-32 and SHA-256 of the new content, read back from the spool through the patch
    (both release the GIL: this runs beside the writer's kernel copies)."""
    import hashlib

    sha = hashlib.sha256()
    crc = 0
    crc32 = _crc32()
    for pos in range(0, new.size, _OUT):
        if stop.is_set():
            break
        chunk = new.read_at(pos, min(_OUT, new.size - pos))
        sha.update(chunk)
        crc = crc32(chunk, crc)
    return crc & 0xFFFFFFFF, sha.digest()


def splice(spool: Spool, patch: BytePatch, out_fd: int, out_offset: int, level: int) -> Spliced:
    """Write the raw deflate stream of the patched member at `out_offset` of `out_fd`, from
    the member's original stream and its spooled content (inflated here if it is not yet).
    FormatError when the original is corrupt."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rpathfix.patch import PatchedSource

    spool.finish()
    old_size = spool.size
    new = PatchedSource(spool, patch)
    dirty = _dirty(old_size, patch)
    limit = min(old_size, patch.size)
    out = _Bits(out_fd, out_offset)
    reused = 0
    fresh_total = 0
    d = 0  # first dirty range that may still matter

    def clean(a: int, b: int) -> bool:
        nonlocal d
        while d < len(dirty) and dirty[d][1] <= a:
            d += 1
        return b <= limit and (d == len(dirty) or dirty[d][0] >= b)

    def fresh(a: int, b: int, *, last: bool) -> None:
        """New content [a, b) as a fresh deflate segment: primed with the 32 KiB before it,
        ended on a byte boundary (sync flush), or the stream's final block when `last`."""
        nonlocal fresh_total
        a, b = min(a, patch.size), min(b, patch.size)
        if out.nbits:
            out.empty_stored()
        lvl = level if fresh_total < (8 << 20) else 1
        w0 = max(0, a - WINDOW)
        window = new.read_at(w0, a - w0)
        z = zlib.compressobj(lvl, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, window) if window else \
            zlib.compressobj(lvl, zlib.DEFLATED, -15)
        for pos in range(a, b, _OUT):
            out.raw(z.compress(new.read_at(pos, min(_OUT, b - pos))))
        fresh_total += b - a
        out.raw(z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))

    stop = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        digest = pool.submit(_digest, new, stop)
        flushing: list[Future[None]] = []

        def writeback() -> None:
            """After each piece of a long copy: the output's pages so far start for the disk
            (fdatasync in the second thread, unless the last one is still at it), so the disk
            writes while the kernel copies, and the fsync before the rename (fileio) finds
            most of them written."""
            if not flushing or flushing[-1].done():
                flushing.append(pool.submit(os.fdatasync, out_fd))

        try:
            offsets, bits = spool.offsets, spool.bits
            units = len(offsets) - 1  # unit i: content [offsets[i], offsets[i+1]), bits [bits[i], bits[i+1])
            seg = 0  # where the pending fresh segment starts (content; not used inside a run)
            run = -1  # the bit where the current reused run starts
            for i in range(units):
                u0, u1, b0, b1 = offsets[i], offsets[i + 1], bits[i], bits[i + 1]
                reusable = i < units - 1 and b1 > b0 and clean(max(0, u0 - WINDOW), u1)
                if run >= 0:
                    if not reusable:
                        reused += out.copy_run(spool.src_fd, spool.start, run, b0, writeback)
                        run, seg = -1, u0
                elif reusable and (b0 % 8) % 2 == 0:
                    if min(u0, patch.size) > min(seg, patch.size):
                        fresh(seg, u0, last=False)
                    elif out.nbits:  # right after a run: back to a byte boundary first
                        out.empty_stored()
                    for _ in range((b0 % 8) // 2):
                        out.empty_fixed()
                    run = b0
            if run >= 0:  # never: the last unit is not reused
                raise AssertionError("a reused run at the end of the stream")
            fresh(seg, max(patch.size, old_size), last=True)
            out.flush()
            crc, sha = digest.result()
            for f in flushing:
                f.result()
        except BaseException:
            stop.set()
            raise
    return Spliced(crc, patch.size, sha, out.offset - out.start, reused)
