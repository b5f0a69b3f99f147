"""Mach-O imports and exports: what dyld binds, read lazily from one slice.

- Imports: each symbol an image binds at load, with the library ordinal that names where
  it must come from (two-level namespace), from LC_DYLD_CHAINED_FIXUPS (its imports
  table) or from the bind, weak-bind and lazy-bind opcode streams of LC_DYLD_INFO(_ONLY).
- Exports: one name looked up in the export trie (LC_DYLD_EXPORTS_TRIE or LC_DYLD_INFO),
  node by node, so a large library's trie is never read whole; files without a trie fall
  back to the nlist symbol table's external section symbols, as dyld does
  (d:dyld/Loader.cpp:3370-3404).

Layouts are those of <mach-o/loader.h> and <mach-o/fixup-chains.h>. Every count,
offset and opcode is checked; a malformed file raises FormatError, nothing loops.
"""

from __future__ import annotations

import struct

from rpathfix.errors import FormatError
from rpathfix.macho import (
    DYLIB_KINDS,
    LC_DYLD_EXPORTS_TRIE,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
    LC_REEXPORT_DYLIB,
    LC_SYMTAB,
    MAX_NCMDS,
    MAX_SIZEOFCMDS,
    MH_MAGIC,
    MH_MAGIC_64,
    N_EXT,
    N_SECT,
    N_TYPE,
    _Slice,
)
from rpathfix.macho import _uleb as _macho_uleb
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rpathfix.model import MachoSlice
    from rpathfix.source import ByteSource

LC_DYLD_CHAINED_FIXUPS = 0x80000034

# Library ordinals with a special meaning (<mach-o/loader.h> BIND_SPECIAL_DYLIB_*).
SELF, MAIN_EXECUTABLE, FLAT_LOOKUP, WEAK_LOOKUP = 0, -1, -2, -3

BIND_OPCODE_MASK, BIND_IMMEDIATE_MASK = 0xF0, 0x0F
BIND_OPCODE_DONE, BIND_OPCODE_SET_DYLIB_ORDINAL_IMM, BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB = 0x00, 0x10, 0x20
BIND_OPCODE_SET_DYLIB_SPECIAL_IMM, BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM = 0x30, 0x40
BIND_OPCODE_SET_TYPE_IMM, BIND_OPCODE_SET_ADDEND_SLEB, BIND_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB = 0x50, 0x60, 0x70
BIND_OPCODE_ADD_ADDR_ULEB, BIND_OPCODE_DO_BIND, BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB = 0x80, 0x90, 0xA0
BIND_OPCODE_DO_BIND_ADD_ADDR_IMM_SCALED, BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB = 0xB0, 0xC0
BIND_OPCODE_THREADED = 0xD0
BIND_SYMBOL_FLAGS_WEAK_IMPORT = 0x1

EXPORT_SYMBOL_FLAGS_KIND_MASK, EXPORT_SYMBOL_FLAGS_WEAK_DEFINITION = 0x03, 0x04
EXPORT_SYMBOL_FLAGS_REEXPORT, EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER = 0x08, 0x10

MAX_BIND_INFO = 64 << 20  # bytes of one opcode stream
MAX_IMPORTS = 1 << 20
MAX_TRIE_DEPTH = 4096  # nodes walked for one name (each edge eats at least one byte)
TRIE_BLOCK = 4096
MAX_NLIST_EXPORTS = 500_000  # external symbols indexed for a file without an export trie
NLIST_CHUNK = 1 << 20


class Import(NamedTuple):
    """A symbol an image binds: its name as stored (with the leading underscore), the
    library ordinal that says where it must come from, and how missing it may be."""

    name: str
    ordinal: int  # 1..n: the n-th dylib load command; SELF, MAIN_EXECUTABLE, FLAT_LOOKUP, WEAK_LOOKUP
    weak: bool  # a weak import: binds to 0 when missing
    lazy: bool  # from the lazy-bind stream: bound to an abort stub when missing (the load works)
    weak_bind: bool = False  # from the weak-bind (coalescing) stream: a miss is never an error


class Export(NamedTuple):
    """One export-trie entry (or external nlist symbol)."""

    name: str
    flags: int
    reexport_ordinal: int | None  # a re-export: the dylib (by ordinal) that really defines it
    imported_name: str | None  # the name it has there ("" or None: the same name)

    @property
    def weak_definition(self) -> bool:
        return bool(self.flags & EXPORT_SYMBOL_FLAGS_WEAK_DEFINITION)

    def describe(self) -> str:
        if self.reexport_ordinal is not None:
            other = f" as {self.imported_name}" if self.imported_name and self.imported_name != self.name else ""
            return f"{self.name} re-exported from dylib #{self.reexport_ordinal}{other}"
        kind = {0: "regular", 1: "thread-local", 2: "absolute"}.get(self.flags & EXPORT_SYMBOL_FLAGS_KIND_MASK, "?")
        weak = ", weak definition" if self.weak_definition else ""
        return f"{self.name} ({kind}{weak})"


def _uleb(data: bytes, pos: int, fail: FormatError) -> tuple[int, int]:
    """macho._uleb (one reader of ULEB128), with an overrun as `fail`."""
    try:
        return _macho_uleb(data, pos)
    except ValueError:
        raise fail from None


def _sleb(data: bytes, pos: int, fail: FormatError) -> tuple[int, int]:
    """A signed LEB128: the unsigned reading, sign-extended from its last byte's bit 6."""
    value, end = _uleb(data, pos, fail)
    bits = 7 * (end - pos)
    if data[end - 1] & 0x40:
        value -= 1 << bits
    return value, end


class MachoSymbols:
    """Imports and exports of one slice of a Mach-O file, read through a ByteSource.

    Owns the source (close() closes it).
    """

    def __init__(self, src: ByteSource, sl: MachoSlice) -> None:
        self.src = src
        self.name = src.name
        s = self._s = _Slice(src, sl.offset, sl.size)
        head = s.read(0, 4)
        (magic_le,) = struct.unpack("<I", head)
        (magic_be,) = struct.unpack(">I", head)
        if magic_le in (MH_MAGIC, MH_MAGIC_64):
            s.e, magic = "<", magic_le
        elif magic_be in (MH_MAGIC, MH_MAGIC_64):
            s.e, magic = ">", magic_be
        else:
            raise s.fail("bad Mach-O magic")
        header_size = 32 if magic == MH_MAGIC_64 else 28
        _m, _cpu, _sub, _ft, ncmds, sizeofcmds, _flags = s.unpack("IiiIIII", s.read(0, 28), 0)
        if sizeofcmds > MAX_SIZEOFCMDS or ncmds > MAX_NCMDS:
            raise s.fail(f"absurd load commands ({ncmds} commands in {sizeofcmds} bytes)")
        cmds = s.read(header_size, sizeofcmds)
        self.dylib_count = 0
        self.reexports: list[int] = []  # ordinals (1-based) of LC_REEXPORT_DYLIB commands
        self._trie: tuple[int, int] | None = None
        self._dyld_info: tuple[int, ...] | None = None
        self._chained: tuple[int, int] | None = None
        self._symtab: tuple[int, int, int, int] | None = None
        pos = 0
        for i in range(ncmds):
            if pos + 8 > sizeofcmds:
                raise s.fail(f"load command {i} starts beyond sizeofcmds {sizeofcmds}")
            cmd, cmdsize = s.unpack("II", cmds, pos)
            if cmdsize < 8 or pos + cmdsize > sizeofcmds:
                raise s.fail(f"load command {i} ({cmd:#x}) has bad cmdsize {cmdsize}")
            if cmd in DYLIB_KINDS:
                self.dylib_count += 1
                if cmd == LC_REEXPORT_DYLIB:
                    self.reexports.append(self.dylib_count)
            elif cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
                fields = s.unpack("IIIIIIIIII", cmds, pos + 8)
                self._dyld_info = fields
                if fields[9] and self._trie is None:
                    self._trie = (fields[8], fields[9])
            elif cmd == LC_DYLD_EXPORTS_TRIE:
                off, size = s.unpack("II", cmds, pos + 8)
                if size:
                    self._trie = (off, size)
            elif cmd == LC_DYLD_CHAINED_FIXUPS:
                dataoff, datasize = s.unpack("II", cmds, pos + 8)
                self._chained = (dataoff, datasize)
            elif cmd == LC_SYMTAB:
                symoff, nsyms, stroff, strsize = s.unpack("IIII", cmds, pos + 8)
                self._symtab = (symoff, nsyms, stroff, strsize)
            pos += cmdsize
        self._blocks: dict[int, bytes] = {}
        self._nlist: dict[str, Export] | None = None

    # ------------------------------------------------------------------ imports

    def imports(self) -> Iterator[Import]:
        """Every bind target, once per (ordinal, name, stream), in dyld's order: the chained
        fixups' imports table, or the bind stream, then the lazy-bind stream, then the
        weak-bind stream."""
        if self._chained is not None:
            yield from self._chained_imports()
            return
        if self._dyld_info is None:
            return
        _ro, _rs, bind_off, bind_size, wb_off, wb_size, lazy_off, lazy_size, _eo, _es = self._dyld_info
        seen: set[tuple[int, str, str]] = set()
        for off, size, stream in ((bind_off, bind_size, "bind"), (lazy_off, lazy_size, "lazy"),
                                  (wb_off, wb_size, "weak")):
            if not size:
                continue
            if size > MAX_BIND_INFO:
                raise self._s.fail(f"{stream} info of {size} bytes")
            for imp in self._opcodes(self._s.read(off, size), stream):
                key = (imp.ordinal, imp.name, stream)
                if key not in seen:
                    seen.add(key)
                    if len(seen) > MAX_IMPORTS:
                        raise self._s.fail(f"more than {MAX_IMPORTS} bind targets")
                    yield imp

    def _opcodes(self, data: bytes, stream: str) -> Iterator[Import]:
        """The bind targets of one opcode stream (MachOAnalyzer::forEachBind_Opcodes)."""
        fail = self._s.fail(f"malformed {stream}-bind opcodes")
        pos = 0
        ordinal = 0
        name: str | None = None
        flags = 0
        n = len(data)
        while pos < n:
            byte = data[pos]
            pos += 1
            op, imm = byte & BIND_OPCODE_MASK, byte & BIND_IMMEDIATE_MASK
            if op == BIND_OPCODE_DONE:
                if stream != "lazy":  # the lazy stream ends each entry with DONE and goes on
                    return
            elif op == BIND_OPCODE_SET_DYLIB_ORDINAL_IMM:
                ordinal = imm
            elif op == BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB:
                ordinal, pos = _uleb(data, pos, fail)
            elif op == BIND_OPCODE_SET_DYLIB_SPECIAL_IMM:
                ordinal = 0 if imm == 0 else (imm | BIND_OPCODE_MASK) - 256  # sign-extended: -1, -2, -3
            elif op == BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM:
                end = data.find(b"\0", pos)
                if end < 0:
                    raise fail
                name = data[pos:end].decode("utf-8", "surrogateescape")
                flags = imm
                pos = end + 1
            elif op in (BIND_OPCODE_SET_TYPE_IMM, BIND_OPCODE_DO_BIND_ADD_ADDR_IMM_SCALED):
                if op == BIND_OPCODE_DO_BIND_ADD_ADDR_IMM_SCALED:
                    yield self._bound(name, ordinal, flags, stream, fail)
            elif op in (BIND_OPCODE_SET_ADDEND_SLEB,):
                _v, pos = _sleb(data, pos, fail)
            elif op in (BIND_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB, BIND_OPCODE_ADD_ADDR_ULEB):
                _v, pos = _uleb(data, pos, fail)
            elif op == BIND_OPCODE_DO_BIND:
                yield self._bound(name, ordinal, flags, stream, fail)
            elif op == BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB:
                _v, pos = _uleb(data, pos, fail)
                yield self._bound(name, ordinal, flags, stream, fail)
            elif op == BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB:
                _v, pos = _uleb(data, pos, fail)
                _v, pos = _uleb(data, pos, fail)
                yield self._bound(name, ordinal, flags, stream, fail)
            elif op == BIND_OPCODE_THREADED:
                if imm == 0:  # BIND_SUBOPCODE_THREADED_SET_BIND_ORDINAL_TABLE_SIZE_ULEB
                    _v, pos = _uleb(data, pos, fail)
                elif imm != 1:  # BIND_SUBOPCODE_THREADED_APPLY takes no operand
                    raise fail
            else:
                raise fail

    def _bound(self, name: str | None, ordinal: int, flags: int, stream: str, fail: FormatError) -> Import:
        if name is None:
            raise fail
        return Import(name, ordinal, bool(flags & BIND_SYMBOL_FLAGS_WEAK_IMPORT), stream == "lazy", stream == "weak")

    def _chained_imports(self) -> Iterator[Import]:
        """The imports table of LC_DYLD_CHAINED_FIXUPS (<mach-o/fixup-chains.h>)."""
        assert self._chained is not None
        s = self._s
        off, size = self._chained
        if size < 28:
            raise s.fail("chained fixups header too small")
        head = s.read(off, 28)
        _ver, _starts, imports_off, symbols_off, count, fmt, sym_fmt = s.unpack("IIIIIII", head, 0)
        if sym_fmt != 0:
            raise s.fail(f"compressed chained-fixup symbols (format {sym_fmt}) are not supported")
        if count > MAX_IMPORTS:
            raise s.fail(f"{count} chained-fixup imports")
        width = {1: 4, 2: 8, 3: 16}.get(fmt)
        if width is None:
            raise s.fail(f"unknown chained-fixup imports format {fmt}")
        if imports_off + count * width > size or symbols_off > size:
            raise s.fail("chained-fixup imports lie outside their LC_DYLD_CHAINED_FIXUPS data")
        table = s.read(off + imports_off, count * width)
        strings_at = off + symbols_off
        strings_size = size - symbols_off
        for i in range(count):
            if fmt == 3:
                (raw,) = s.unpack("Q", table, i * width)
                ordinal = raw & 0xFFFF
                ordinal = ordinal - 0x10000 if ordinal >= 0xFFF0 else ordinal
                weak, name_off = bool(raw >> 16 & 1), raw >> 32
            else:
                (raw,) = s.unpack("I", table, i * width)
                ordinal = raw & 0xFF
                ordinal = ordinal - 0x100 if ordinal >= 0xF0 else ordinal
                weak, name_off = bool(raw >> 8 & 1), raw >> 9
            if name_off >= strings_size:
                raise s.fail(f"chained-fixup import {i} names offset {name_off} beyond its strings")
            yield Import(self._cstring(strings_at + name_off, strings_at + strings_size), ordinal, weak, False)

    def _cstring(self, at: int, limit: int) -> str:
        out = b""
        while True:
            piece = self._s.read(at + len(out), min(256, limit - at - len(out)))
            nul = piece.find(b"\0")
            if nul >= 0:
                return (out + piece[:nul]).decode("utf-8", "surrogateescape")
            out += piece
            if not piece or len(out) > 1 << 16:
                raise self._s.fail(f"unterminated symbol name at {at}")

    # ------------------------------------------------------------------ exports

    def export(self, name: str) -> Export | None:
        """The image's own export of `name` (re-exported dylibs are the caller's business)."""
        if self._trie is not None:
            return self._trie_lookup(name)
        return self._nlist_lookup(name)

    def _trie_byte_range(self, off: int, size: int) -> bytes:
        """Bytes [off, off+size) of the trie (clipped to it), through a cache of blocks."""
        assert self._trie is not None
        base, total = self._trie
        end = min(off + size, total)
        if off >= total or off < 0:
            raise self._s.fail(f"export trie offset {off} beyond its {total} bytes")
        out = b""
        while off < end:
            block = off // TRIE_BLOCK
            data = self._blocks.get(block)
            if data is None:
                start = block * TRIE_BLOCK
                data = self._s.read(base + start, min(TRIE_BLOCK, total - start))
                if len(self._blocks) > 256:
                    self._blocks.clear()
                self._blocks[block] = data
            lo = off - block * TRIE_BLOCK
            take = min(len(data) - lo, end - off)
            out += data[lo:lo + take]
            off += take
        return out

    def _trie_lookup(self, name: str) -> Export | None:
        """Follow the trie along `name` (MachOLoaded::trieWalk), reading nodes on demand."""
        assert self._trie is not None
        want = name.encode("utf-8", "surrogateescape")
        total = self._trie[1]
        fail = self._s.fail("malformed export trie")
        node = 0
        rest = want
        for _ in range(MAX_TRIE_DEPTH):
            head = self._trie_byte_range(node, 16)
            terminal, pos = _uleb(head, 0, fail)
            if not rest:
                if terminal == 0:
                    return None
                info = self._trie_byte_range(node + pos, terminal)
                return self._terminal(name, info, fail)
            children_at = node + pos + terminal
            if children_at >= total:
                return None
            edges = self._trie_byte_range(children_at, 4096)
            count = edges[0]
            p = 1
            nxt = None
            for _child in range(count):
                end = edges.find(b"\0", p)
                while end < 0:  # a long edge label: read more
                    edges = self._trie_byte_range(children_at, len(edges) * 2)
                    end = edges.find(b"\0", p)
                    if len(edges) >= total - children_at and end < 0:
                        raise fail
                label = edges[p:end]
                if len(edges) < end + 11 and children_at + len(edges) < total:
                    edges = self._trie_byte_range(children_at, len(edges) + 4096)
                child, p = _uleb(edges, end + 1, fail)
                if label and rest.startswith(label):
                    nxt = (child, rest[len(label):])
                    break
            if nxt is None:
                return None
            if nxt[0] >= total:
                raise fail
            node, rest = nxt
        raise fail

    def _terminal(self, name: str, info: bytes, fail: FormatError) -> Export:
        flags, p = _uleb(info, 0, fail)
        if flags & EXPORT_SYMBOL_FLAGS_REEXPORT:
            ordinal, p = _uleb(info, p, fail)
            end = info.find(b"\0", p)
            imported = info[p:end].decode("utf-8", "surrogateescape") if end >= 0 else ""
            return Export(name, flags, ordinal, imported or None)
        return Export(name, flags, None, None)

    def _nlist_lookup(self, name: str) -> Export | None:
        """External N_SECT symbols of LC_SYMTAB: dyld's "old slow way" for files without a trie."""
        if self._nlist is None:
            self._nlist = {}
            if self._symtab is not None:
                self._index_nlist()
        return self._nlist.get(name)

    def _index_nlist(self) -> None:
        assert self._symtab is not None and self._nlist is not None
        s = self._s
        symoff, nsyms, stroff, strsize = self._symtab
        head = s.read(0, 4)
        is64 = struct.unpack(s.e + "I", head)[0] == MH_MAGIC_64
        entsize = 16 if is64 else 12
        fmt = s.e + ("IBBHQ" if is64 else "IBBHI")
        per = NLIST_CHUNK // entsize
        picked: list[int] = []
        for first in range(0, nsyms, per):
            n = min(per, nsyms - first)
            for n_strx, n_type, _sect, _desc, _value in struct.iter_unpack(fmt, s.read(symoff + first * entsize,
                                                                                      n * entsize)):
                if n_type & N_TYPE == N_SECT and n_type & N_EXT and n_strx < strsize:
                    picked.append(n_strx)
                    if len(picked) > MAX_NLIST_EXPORTS:
                        raise s.fail(f"more than {MAX_NLIST_EXPORTS} external symbols and no export trie")
        for n_strx in picked:
            name = self._cstring(stroff + n_strx, stroff + strsize)
            self._nlist[name] = Export(name, 0, None, None)

    def close(self) -> None:
        self.src.close()


def open_macho_symbols(src: ByteSource, sl: MachoSlice) -> MachoSymbols:
    """MachoSymbols over one slice of src (which it then owns); FormatError, with src closed,
    when malformed."""
    try:
        return MachoSymbols(src, sl)
    except FormatError:
        src.close()
        raise
    except (struct.error, ValueError, IndexError) as e:
        src.close()
        raise FormatError(src.name, f"malformed load commands ({e})") from None
