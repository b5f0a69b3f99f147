"""A patched copy of a deflated zip member without deflating it again: splice the new bytes
into the member's original deflate stream.

Why: repairing onnxruntime-gpu changes about 12 KB of its 284 MB CUDA provider (the program
headers at the start, new tables appended at the end). Deflating the whole patched file again
costs seconds (level 1: 2.9 s here; level 6: 11 s); copying the original compressed blocks of
the unchanged middle costs what a copy of 230 MB costs in the kernel.

How (RFC 1951): a deflate stream is a sequence of blocks, each starting at a bit position;
a block decodes to the same bytes wherever it is placed, provided the 32 KiB before it (the
window its back-references reach) are the same. So one pass inflates the original with zlib's
Z_BLOCK (which stops at every block boundary and tells its bit position), produces the new
content (the old bytes with the patch's writes, plus what it appends) to hash and checksum
it, and for each original block decides:
- reused, when its bytes and the 32 KiB before them are unchanged (and it is not the final
  block): its bits are copied as they are (copy_file_range for all but the two edge bytes);
- re-encoded otherwise: its new content goes to a fresh raw deflate stream (zlib, with the
  preceding 32 KiB as dictionary), ended with a sync flush, which ends on a byte boundary.
Bit alignment: a reused run starts at its original bit phase r. A fresh segment ends on a
byte boundary (phase 0); empty fixed-Huffman blocks (10 bits each) then bring the phase to
r when r is even; a block at an odd phase is re-encoded instead, so the run starts at the
next block (half the boundaries qualify). After a run, an empty stored block (3 header bits,
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
    from collections.abc import Iterator

    from rpathfix.model import BytePatch

WINDOW = 32768
_IN = 1 << 20
_OUT = 1 << 20
# A block whose content grows past this is not kept whole for a decision: it is re-encoded
# as it streams (zlib's blocks hold at most 16 K symbols; only a hostile stream gets here).
MAX_BLOCK = 64 << 20
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


class _Blocks:
    """The original stream inflated block by block: (content, start bit, end bit, final)."""

    def __init__(self, name: str, fd: int, start: int, csize: int) -> None:
        import ctypes

        lib = _zlib()
        assert lib is not None
        self.lib = lib
        self.name, self.fd, self.start, self.csize = name, fd, start, csize
        self.strm = _stream_type()()
        version = lib.zlibVersion()
        if lib.inflateInit2_(ctypes.byref(self.strm), -15, version, ctypes.sizeof(self.strm)) != Z_OK:
            raise MemoryError("inflateInit2")
        self.inbuf = (ctypes.c_char * _IN)()
        self.outbuf = (ctypes.c_char * _OUT)()
        self.in_addr = ctypes.addressof(self.inbuf)
        self.out_addr = ctypes.addressof(self.outbuf)
        self.fed = 0

    def close(self) -> None:
        import ctypes

        self.lib.inflateEnd(ctypes.byref(self.strm))

    def _fill(self) -> None:
        import ctypes

        n = min(_IN, self.csize - self.fed)
        if n <= 0:
            raise FormatError(self.name, "deflated data ends before its last block")
        data = os.pread(self.fd, n, self.start + self.fed)
        if len(data) != n:
            raise FormatError(self.name, f"short read at offset {self.start + self.fed}")
        ctypes.memmove(self.in_addr, data, n)
        self.fed += n
        self.strm.next_in = self.in_addr
        self.strm.avail_in = n

    def __iter__(self) -> Iterator[tuple[list[bytes], int, int, bool, bool]]:
        """Each block as (pieces of its content, start bit, end bit, final, whole): `whole`
        False for pieces of a block longer than MAX_BLOCK (then never reused)."""
        import ctypes

        s = self.strm
        bit = 0
        pieces: list[bytes] = []
        held = 0
        big = False
        while True:
            if s.avail_in == 0 and self.fed < self.csize:
                self._fill()
            s.next_out = self.out_addr
            s.avail_out = _OUT
            ret = self.lib.inflate(ctypes.byref(s), Z_BLOCK)
            if ret not in (Z_OK, Z_STREAM_END, Z_BUF_ERROR):
                raise FormatError(self.name, f"corrupt deflated data ({(s.msg or b'').decode(errors='replace')})")
            n = _OUT - s.avail_out
            if n:
                pieces.append(ctypes.string_at(self.out_addr, n))
                held += n
            at_end = ret == Z_STREAM_END
            if at_end or s.data_type & 128:
                # Bits consumed: whole bytes taken, less the bits of the last one not used.
                end_bit = (self.fed - s.avail_in) * 8 - (s.data_type & 7)
                final = at_end or bool(s.data_type & 64)
                if pieces or end_bit != bit:
                    yield pieces, bit, end_bit, final, not big
                pieces, held, big = [], 0, False
                bit = end_bit
                if at_end:
                    return
            elif held > MAX_BLOCK:
                yield pieces, bit, -1, False, False
                pieces, held, big = [], 0, True
            elif n == 0 and s.avail_in == 0 and self.fed >= self.csize:
                raise FormatError(self.name, "deflated data ends before its last block")


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

    def copy_run(self, src_fd: int, src_start: int, b0: int, b1: int) -> int:
        """The original stream's bits [b0, b1) (relative to src_start), which must start at
        the current phase. Returns the bytes copied by the kernel."""
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
            _copy(src_fd, self.fd, src_start + first, self.offset, last - first)
            self.offset += last - first
            copied = last - first
        tail = b1 % 8
        if tail:
            byte = os.pread(src_fd, 1, src_start + last)[0]
            self.acc, self.nbits = byte & ((1 << tail) - 1), tail
        return copied


def _copy(src_fd: int, dst_fd: int, src_off: int, dst_off: int, n: int) -> None:
    from rpathfix.fileio import pwrite_all

    fast = getattr(os, "copy_file_range", None)
    while n > 0 and fast is not None:
        try:
            done = fast(src_fd, dst_fd, min(n, 1 << 30), src_off, dst_off)
        except OSError:
            break
        if done <= 0:
            break
        src_off, dst_off, n = src_off + done, dst_off + done, n - done
    while n > 0:
        data = os.pread(src_fd, min(n, _OUT), src_off)
        if not data:
            raise OSError(f"unexpected end of input at offset {src_off}")
        pwrite_all(dst_fd, data, dst_off)
        src_off, dst_off, n = src_off + len(data), dst_off + len(data), n - len(data)


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


class _Content:
    """The new content, produced in order from the old bytes and the patch's pieces."""

    def __init__(self, old_size: int, patch: BytePatch) -> None:
        from rpathfix.patch import pieces

        self.pieces = pieces(old_size, patch)
        self.i = 0
        self.size = patch.size

    def take(self, pos: int, old: bytes) -> bytes:
        """The new bytes at [pos, pos + len(old)), clipped to the new size, given the old ones."""
        end = min(pos + len(old), self.size)
        if end <= pos:
            return b""
        out: list[bytes] = []
        cur = pos
        while cur < end:
            while self.pieces[self.i][0] + self.pieces[self.i][1] <= cur:
                self.i += 1
            p_off, p_len, data = self.pieces[self.i]
            stop = min(end, p_off + p_len)
            out.append(old[cur - pos:stop - pos] if data is None else bytes(data[cur - p_off:stop - p_off]))
            cur = stop
        return b"".join(out)

    def tail(self, old_size: int) -> bytes:
        """What the new content holds past the old end (written pieces or zeros)."""
        if self.size <= old_size:
            return b""
        return self.take(old_size, bytes(self.size - old_size))


def splice(name: str, src_fd: int, start: int, csize: int, old_size: int, old_crc: int, patch: BytePatch,
           out_fd: int, out_offset: int, level: int) -> Spliced:
    """Write the raw deflate stream of the patched member at `out_offset` of `out_fd`, from
    the member's original stream (`csize` bytes at `start` of `src_fd`, inflating to
    `old_size` bytes with CRC-32 `old_crc`). FormatError when the original is corrupt."""
    import hashlib

    dirty = _dirty(old_size, patch)
    limit = min(old_size, patch.size)
    content = _Content(old_size, patch)
    out = _Bits(out_fd, out_offset)
    sha = hashlib.sha256()
    crc_new = crc_old = 0
    pos = 0  # uncompressed position in the old stream
    window = b""  # the last 32 KiB of new content written
    fresh: list[object] = []  # the compressor of the current fresh segment, if any
    fresh_total = 0
    run: list[int] = []  # [start bit] of the current reused run
    reused = 0
    d = 0  # first dirty range that may still matter

    def clean(a: int, b: int) -> bool:
        nonlocal d
        while d < len(dirty) and dirty[d][1] <= a:
            d += 1
        return b <= limit and (d == len(dirty) or dirty[d][0] >= b)

    def feed(data: bytes) -> None:
        nonlocal fresh_total
        if not data:
            return
        if not fresh:
            if out.nbits:
                out.empty_stored()
            lvl = level if fresh_total < (8 << 20) else 1
            fresh.append(zlib.compressobj(lvl, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, window)
                         if window else zlib.compressobj(lvl, zlib.DEFLATED, -15))
        fresh_total += len(data)
        out.raw(fresh[0].compress(data))  # type: ignore[attr-defined]

    def end_fresh() -> None:
        if fresh:
            out.raw(fresh.pop().flush(zlib.Z_SYNC_FLUSH))  # type: ignore[attr-defined]

    blocks = _Blocks(name, src_fd, start, csize)
    try:
        for parts, b0, b1, final, whole in blocks:
            old = b"".join(parts)
            crc_old = zlib.crc32(old, crc_old)
            new = content.take(pos, old)
            u0, pos = pos, pos + len(old)
            sha.update(new)
            crc_new = zlib.crc32(new, crc_new)
            reusable = whole and not final and b1 > b0 and clean(max(0, u0 - WINDOW), pos)
            if run:
                if reusable:
                    pass  # the run goes on
                else:
                    reused += out.copy_run(src_fd, start, run.pop(), b0)
                    feed(new)
            elif reusable and (b0 % 8) % 2 == 0:
                end_fresh()
                for _ in range((b0 % 8) // 2):
                    out.empty_fixed()
                run.append(b0)
            else:
                feed(new)
            window = (window + new)[-WINDOW:] if len(new) < WINDOW else new[-WINDOW:]
        if run:  # never: the final block is not reused
            raise AssertionError("a reused run at the end of the stream")
        if pos != old_size:
            raise FormatError(name, "deflated data is not as long as the member's declared size")
        if crc_old != old_crc:
            raise FormatError(name, "CRC-32 mismatch: the member is corrupt")
        rest = content.tail(old_size)
        sha.update(rest)
        crc_new = zlib.crc32(rest, crc_new)
        feed(rest)
        if not fresh:  # the new content ends where a reused run ended
            if out.nbits:
                out.empty_stored()
            fresh.append(zlib.compressobj(level, zlib.DEFLATED, -15))
        out.raw(fresh.pop().flush(zlib.Z_FINISH))  # type: ignore[attr-defined]
        out.flush()
    finally:
        blocks.close()
    return Spliced(crc_new & 0xFFFFFFFF, patch.size, sha.digest(), out.offset - out.start, reused)


__all__ = ["Spliced", "available", "splice"]
